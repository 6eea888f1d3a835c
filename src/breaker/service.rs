use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::registry::Shared;
use super::{CircuitBreakerLayer, Policy, State};
use crate::BoxError;
use crate::signals::{Classify, DefaultClassifier};

/// A circuit breaker: fails calls at once while the upstream is overloaded, then probes it.
///
/// See the [module documentation](super) for the design and examples.
#[derive(Debug)]
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` in a breaker of its own with `policy` and the [`DefaultClassifier`].
    /// Clones of the result share its state.
    pub fn new(inner: S, policy: Policy) -> Self {
        Self::with_classifier(inner, policy, DefaultClassifier::new())
    }

    /// A layer whose services share one set of breakers; see [`CircuitBreakerLayer`].
    pub fn layer(policy: Policy) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(policy)
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// Like [`new`](CircuitBreaker::new) with a custom classifier for errors and for responses
    /// no [`Signals`](crate::signals::Signals) layer has classified.
    pub fn with_classifier(inner: S, policy: Policy, classifier: C) -> Self {
        Self::from_parts(inner, Arc::new(Shared::new(policy)), classifier)
    }

    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            shared,
            classifier,
        }
    }

    /// The state of the unkeyed breaker.
    pub fn state(&self) -> State {
        self.shared.state(None)
    }

    /// The state of the breaker of `key` ([`State::Closed`] for a key it does not hold).
    pub fn state_of(&self, key: &str) -> State {
        self.shared.state(Some(key))
    }

    /// Every breaker in memory with its state, the unkeyed one first (as `None`).
    pub fn states(&self) -> Vec<(Option<String>, State)> {
        self.shared.states()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for CircuitBreaker<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify + Clone,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<ReqB>, C>;

    /// Always ready: the inner service's readiness is driven by the response future of an
    /// admitted call, so a refused call never reserves anything below the breaker.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (req, key) = match &self.shared.policy.key_fn {
            Some(key_fn) => {
                let (parts, body) = req.into_parts();
                let key = key_fn(&parts);
                (Request::from_parts(parts, body), key)
            }
            None => (req, None),
        };
        match self.shared.admit(key) {
            Ok(permit) => {
                ResponseFuture::admitted(self.inner.clone(), req, permit, self.classifier.clone())
            }
            Err(open) => ResponseFuture::refused(open, self.classifier.clone()),
        }
    }
}
