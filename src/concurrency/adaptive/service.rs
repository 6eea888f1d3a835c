//! The [`AdaptiveConcurrencyLimit`] service.

use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::aimd::{AdaptiveLimiter, Aimd};
use super::error::InvalidAimd;
use super::future::ResponseFuture;
use super::layer::AdaptiveConcurrencyLimitLayer;
use crate::BoxError;
use crate::concurrency::{ConcurrencyLimit, PermitBody, Release};
use crate::signals::{Classify, DefaultClassifier};

/// A concurrency cap whose limit follows the provider's feedback (AIMD); see the
/// [module docs](super).
///
/// Permits behave exactly as in [`ConcurrencyLimit`]: taken in `poll_ready`, FIFO waiters, held
/// by the response future and (by default) by the response body. `Clone` shares the cap and
/// what it has learnt; a clone holds no permit.
pub struct AdaptiveConcurrencyLimit<S, C = DefaultClassifier> {
    inner: ConcurrencyLimit<S>,
    limiter: AdaptiveLimiter,
    classifier: C,
}

impl<S> AdaptiveConcurrencyLimit<S> {
    /// Wraps `inner` with a cap of its own configured by `config`, reading outcomes with the
    /// [`DefaultClassifier`].
    ///
    /// # Errors
    ///
    /// [`InvalidAimd`] when the configuration cannot work (see [`AdaptiveLimiter::new`]).
    pub fn new(inner: S, config: Aimd) -> Result<Self, InvalidAimd> {
        Ok(Self::with_limiter(inner, AdaptiveLimiter::new(config)?))
    }

    /// Wraps `inner` with a cap shared with every other holder of `limiter`.
    pub fn with_limiter(inner: S, limiter: AdaptiveLimiter) -> Self {
        AdaptiveConcurrencyLimit {
            inner: ConcurrencyLimit::with_limiter(inner, limiter.limiter().clone()),
            limiter,
            classifier: DefaultClassifier::new(),
        }
    }

    /// A layer whose services all share one adaptive cap; see
    /// [`AdaptiveConcurrencyLimitLayer::new`].
    ///
    /// # Errors
    ///
    /// [`InvalidAimd`] when the configuration cannot work.
    pub fn layer(config: Aimd) -> Result<AdaptiveConcurrencyLimitLayer, InvalidAimd> {
        AdaptiveConcurrencyLimitLayer::new(config)
    }
}

impl<S, C> AdaptiveConcurrencyLimit<S, C> {
    /// Reads outcomes of errors (and of responses no [`Signals`](crate::signals::Signals) layer
    /// classified) with `classifier`.
    pub fn classifier<C2>(self, classifier: C2) -> AdaptiveConcurrencyLimit<S, C2> {
        AdaptiveConcurrencyLimit {
            inner: self.inner,
            limiter: self.limiter,
            classifier,
        }
    }

    /// Sets when a call's permit goes back (default [`Release::Auto`]).
    pub fn release(mut self, release: Release) -> Self {
        self.inner = self.inner.release(release);
        self
    }

    /// The shared adaptive cap.
    pub fn limiter(&self) -> &AdaptiveLimiter {
        &self.limiter
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limiter.limit()
    }

    /// Permits held across all services sharing the cap.
    pub fn in_flight(&self) -> usize {
        self.limiter.in_flight()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Consumes the middleware, returning the inner service (a permit it held goes back).
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S: Clone, C: Clone> Clone for AdaptiveConcurrencyLimit<S, C> {
    /// A service sharing the cap, holding no permit and no place in the queue.
    fn clone(&self) -> Self {
        AdaptiveConcurrencyLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for AdaptiveConcurrencyLimit<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrencyLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for AdaptiveConcurrencyLimit<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
    C: Classify + Clone,
{
    type Response = Response<PermitBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let inner = self.inner.call(request);
        // The permit is held now, so the controller sees this call as in flight.
        let sent = self.limiter.sent();
        ResponseFuture::new(inner, self.limiter.clone(), self.classifier.clone(), sent)
    }
}
