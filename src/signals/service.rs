//! The [`Signals`] middleware.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::{Classify, DefaultClassifier, SignalsLayer};

/// Parses each response once into [`ResponseSignals`](super::ResponseSignals) and stores them in
/// its extensions.
///
/// Put it innermost, right above the HTTP client (below
/// [`ErrorBodyLayer`](crate::error_body::ErrorBodyLayer) when you use it, so the classifier sees
/// the error body).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_llm_limits::signals::{Dimension, OutcomeKind, ResponseSignals, SignalsLayer};
///
/// let api = service_fn(|_req: Request<()>| async {
///     let response = Response::builder()
///         .status(429)
///         .header("retry-after", "2")
///         .header("anthropic-ratelimit-requests-limit", "50")
///         .header("anthropic-ratelimit-requests-remaining", "0")
///         .body(())
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let response = SignalsLayer::new().layer(api).oneshot(Request::new(())).await.unwrap();
///
/// // Parsed once, read by every layer above.
/// let signals = ResponseSignals::of(&response);
/// assert_eq!(signals.outcome().kind(), OutcomeKind::RateLimited);
/// assert_eq!(signals.hints().retry_after(), Some(std::time::Duration::from_secs(2)));
/// let requests = signals.rate_limits().get(Dimension::Requests).unwrap();
/// assert_eq!(requests.remaining(), Some(0));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Signals<S, C = DefaultClassifier> {
    inner: S,
    classifier: C,
}

impl<S> Signals<S> {
    /// Wraps `inner` with the [`DefaultClassifier`].
    pub fn new(inner: S) -> Self {
        Signals {
            inner,
            classifier: DefaultClassifier::new(),
        }
    }

    /// A layer with the [`DefaultClassifier`].
    pub fn layer() -> SignalsLayer {
        SignalsLayer::new()
    }
}

impl<S, C> Signals<S, C> {
    /// Wraps `inner` with `classifier`.
    pub fn with_classifier(inner: S, classifier: C) -> Self {
        Signals { inner, classifier }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Signals<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: Classify + Clone + Send + Sync + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.classifier.clone())
    }
}
