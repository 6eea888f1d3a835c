//! The [`Retry`] service and its layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::{Policy, ReplayBody};
use crate::BoxError;
use crate::signals::{Classify, DefaultClassifier};

/// What every service made from one policy shares: the policy (its budget is itself a shared
/// handle) and the call counter that seeds the jitter.
#[derive(Debug)]
pub(crate) struct Shared<C> {
    pub(crate) policy: Policy<C>,
    calls: AtomicU64,
}

impl<C> Shared<C> {
    pub(crate) fn new(policy: Policy<C>) -> Arc<Self> {
        Arc::new(Shared {
            policy,
            calls: AtomicU64::new(0),
        })
    }

    pub(crate) fn rng(&self) -> fastrand::Rng {
        match self.policy.seed {
            Some(seed) => {
                let n = self.calls.fetch_add(1, Ordering::Relaxed);
                fastrand::Rng::with_seed(seed.wrapping_add(n))
            }
            None => fastrand::Rng::new(),
        }
    }
}

/// Retries requests as the official SDKs do, honouring the server's `retry-after`, within a
/// ceiling, a deadline and a shared budget. See the [module docs](super).
#[derive(Debug)]
pub struct Retry<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Retry<S, C> {
    /// A clone shares the policy, its budget and the jitter seed sequence.
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, C> Retry<S, C> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: Policy<C>) -> Self {
        Retry {
            inner,
            shared: Shared::new(policy),
        }
    }

    /// A layer that wraps services with `policy`; every service it makes shares the policy's
    /// budget.
    pub fn layer(policy: Policy<C>) -> RetryLayer<C> {
        RetryLayer::new(policy)
    }

    /// The policy.
    pub fn policy(&self) -> &Policy<C> {
        &self.shared.policy
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

impl<S, C, B, ResB> Service<Request<B>> for Retry<S, C>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    C: Classify,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The service that was polled ready serves the first attempt; the future keeps it for the
        // retries, which drive its readiness themselves.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        if let Some(budget) = &self.shared.policy.budget {
            budget.deposit();
        }
        let rng = self.shared.rng();
        crate::observe::emit::call();
        // One span per call; the rate limiter below records the key in it, through the handle
        // every attempt carries in its extensions.
        let span = tracing::info_span!("llm_call", attempt = 1u32, key = tracing::field::Empty);
        request
            .extensions_mut()
            .insert(crate::observe::span::CallSpan::new(span.clone()));
        // Every attempt keeps the place of the call's first arrival in the rate limiter's queue.
        request
            .extensions_mut()
            .insert(crate::rate_limit::CallPlace::default());
        ResponseFuture::new(service, request, Arc::clone(&self.shared), rng, span)
    }
}

/// Layer for [`Retry`]. Clones of the layer, and every service it makes, share one policy and
/// one budget.
#[derive(Debug)]
pub struct RetryLayer<C = DefaultClassifier> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Default for RetryLayer {
    /// [`Policy::new`]: the SDK defaults.
    fn default() -> Self {
        RetryLayer::new(Policy::new())
    }
}

impl<C> RetryLayer<C> {
    /// A layer with `policy`.
    pub fn new(policy: Policy<C>) -> Self {
        RetryLayer {
            shared: Shared::new(policy),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy<C> {
        &self.shared.policy
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}
