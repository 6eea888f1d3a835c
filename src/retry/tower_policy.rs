//! The same policy for tower's own `Retry` middleware.

use std::sync::Arc;

use http::{Request, Response};
use tokio::time::Sleep;

use super::policy::{CallState, Next};
use super::service::Shared;
use super::{Policy, ReplayBody};
use crate::BoxError;
use crate::signals::{Classify, DefaultClassifier};

/// A [`Policy`] for `tower::retry::Retry`, for stacks built around tower's middleware. Made by
/// [`Policy::into_tower`].
///
/// It takes the same decisions, waits and typed errors as [`Retry`](super::Retry) (the inner
/// error type must be [`BoxError`], so that the typed errors can replace the result), with
/// tower's costs: the request is cloned before every attempt, the last one included, and the
/// call's state (start, attempts) travels in the request's extensions. Prefer
/// [`Retry`](super::Retry) unless you need tower's.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_llm_limits::retry::{Attempts, Policy};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_llm_limits::BoxError> {
/// let server = service_fn(|_req: Request<Full<Bytes>>| async {
///     Ok::<_, tower_llm_limits::BoxError>(Response::new(Full::new(Bytes::new())))
/// });
/// let client = ServiceBuilder::new()
///     .layer(tower::retry::RetryLayer::new(Policy::new().into_tower()))
///     .service(server);
/// let response = client.oneshot(Request::new(Full::new(Bytes::new()))).await?;
/// assert_eq!(response.extensions().get::<Attempts>().map(|a| a.get()), Some(1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TowerPolicy<C = DefaultClassifier> {
    shared: Arc<Shared<C>>,
    rng: fastrand::Rng,
}

impl<C> Clone for TowerPolicy<C> {
    /// tower clones the policy for every call: each clone draws its own jitter source.
    fn clone(&self) -> Self {
        TowerPolicy {
            shared: Arc::clone(&self.shared),
            rng: self.shared.rng(),
        }
    }
}

impl<C> Policy<C> {
    /// This policy as a `tower::retry::Policy` ([`TowerPolicy`]).
    pub fn into_tower(self) -> TowerPolicy<C> {
        let shared = Shared::new(self);
        let rng = shared.rng();
        TowerPolicy { shared, rng }
    }
}

impl<B, T, C> tower::retry::Policy<Request<B>, Response<T>, BoxError> for TowerPolicy<C>
where
    B: ReplayBody,
    C: Classify,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        request: &mut Request<B>,
        result: &mut Result<Response<T>, BoxError>,
    ) -> Option<Self::Future> {
        let policy = &self.shared.policy;
        let mut call = request
            .extensions()
            .get::<CallState>()
            .copied()
            .unwrap_or_else(|| CallState::start(request.extensions()));
        // `request` is the copy tower sends next; it is replayable or tower would not ask.
        let owned = std::mem::replace(result, Err(BoxError::from("retry: decision pending")));
        let mut retry_number = None;
        match policy.after_attempt(owned, &mut call, &mut self.rng, |n| {
            retry_number = Some(n);
            true
        }) {
            Next::Done(done) => {
                *result = done;
                None
            }
            Next::Retry(sleep) => {
                if let (Some(name), Some(n)) = (&policy.attempt_header, retry_number) {
                    request
                        .headers_mut()
                        .insert(name.clone(), http::HeaderValue::from(n));
                }
                request.extensions_mut().insert(call);
                Some(tokio::time::sleep(sleep))
            }
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        let (parts, body) = clone_parts(request)?;
        let mut copy = Request::from_parts(parts, body);
        if copy.extensions().get::<CallState>().is_none() {
            // The first attempt of a call.
            if let Some(budget) = &self.shared.policy.budget {
                budget.deposit();
            }
            let call = CallState::start(copy.extensions());
            copy.extensions_mut().insert(call);
        }
        Some(copy)
    }
}

/// The request's parts and a replayed body, or `None` when the body cannot be replayed.
fn clone_parts<B: ReplayBody>(request: &Request<B>) -> Option<(http::request::Parts, B)> {
    // tower's `Retry` has no way to return an error here: a refused copy is not retried.
    let body = request.body().try_replay().ok().flatten()?;
    let mut parts = Request::new(()).into_parts().0;
    parts.method = request.method().clone();
    parts.uri = request.uri().clone();
    parts.version = request.version();
    parts.headers = request.headers().clone();
    parts.extensions = request.extensions().clone();
    Some((parts, body))
}
