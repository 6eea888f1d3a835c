use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_service::Service;

use crate::BoxError;
use crate::cost::{Cost, DefaultCost, EstimateCost};
use crate::observe::span::CallSpan;

use super::config::{CallPlace, MaxWait, Priority};
use super::future::ResponseFuture;
use super::key::{DefaultKey, KeyFn};
use super::{RateLimitKey, RateLimitLayer, RateLimitState};

/// An estimate the limiter made earlier for this request (a retry re-enters with it instead of
/// estimating again; it is still corrected by the learned factor).
#[derive(Clone, Copy, Debug)]
struct Estimated(Cost);

/// The header-aware, cost-weighted rate limiter; see the [module docs](super).
pub struct RateLimit<S, K = DefaultKey, E = DefaultCost> {
    inner: S,
    state: RateLimitState,
    key_fn: K,
    cost_fn: E,
    max_wait: Option<Duration>,
}

impl<S: std::fmt::Debug, K: std::fmt::Debug, E: std::fmt::Debug> std::fmt::Debug
    for RateLimit<S, K, E>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .field("key_fn", &self.key_fn)
            .field("cost_fn", &self.cost_fn)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

impl<S: Clone, K: Clone, E: Clone> Clone for RateLimit<S, K, E> {
    /// The clone shares the state (limits, buckets, queues, cooldowns): it never multiplies a
    /// limit.
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            state: self.state.clone(),
            key_fn: self.key_fn.clone(),
            cost_fn: self.cost_fn.clone(),
            max_wait: self.max_wait,
        }
    }
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with `state`, the default key ([`DefaultKey`]) and cost ([`DefaultCost`]).
    pub fn new(inner: S, state: RateLimitState) -> Self {
        RateLimit {
            inner,
            state,
            key_fn: DefaultKey::new(),
            cost_fn: DefaultCost::new(),
            max_wait: None,
        }
    }

    /// A layer with a fresh state and no configured limit; see [`RateLimitLayer::new`].
    pub fn layer() -> RateLimitLayer {
        RateLimitLayer::new()
    }
}

impl<S, K, E> RateLimit<S, K, E> {
    pub(crate) fn from_parts(
        inner: S,
        state: RateLimitState,
        key_fn: K,
        cost_fn: E,
        max_wait: Option<Duration>,
    ) -> Self {
        RateLimit {
            inner,
            state,
            key_fn,
            cost_fn,
            max_wait,
        }
    }

    /// The shared state.
    pub fn state(&self) -> &RateLimitState {
        &self.state
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

impl<S, K, E, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, K, E>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    K: KeyFn<ReqB>,
    E: EstimateCost<ReqB>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<ReqB>>;

    /// Always ready: the cost of a request is known only in `call`, so nothing can be reserved
    /// here. The inner service's readiness is driven by the response future once the request is
    /// admitted.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let key = match req.extensions().get::<RateLimitKey>() {
            Some(k) => k.clone(),
            None => {
                let k = self.key_fn.key_mut(&mut req);
                req.extensions_mut().insert(k.clone());
                k
            }
        };
        // The key goes into the call's span, when a retry layer above handed one down.
        if let Some(span) = req.extensions().get::<CallSpan>() {
            span.record_key(&key);
        }
        let (cost, exact) = match (
            req.extensions().get::<Cost>(),
            req.extensions().get::<Estimated>(),
        ) {
            (Some(c), _) => (*c, true),
            (None, Some(e)) => (e.0, false),
            (None, None) => {
                let c = self.cost_fn.estimate_mut(&mut req);
                req.extensions_mut().insert(Estimated(c));
                (c, false)
            }
        };
        let priority = req
            .extensions()
            .get::<Priority>()
            .copied()
            .unwrap_or_default();
        let max_wait = req
            .extensions()
            .get::<MaxWait>()
            .map(MaxWait::get)
            .or(self.max_wait);
        let place = req.extensions().get::<CallPlace>();
        match self
            .state
            .enter(&key, cost, exact, priority, max_wait, place)
        {
            Ok(mut ticket) => {
                req.extensions_mut().insert(ticket.usage_report());
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::new(ticket, inner, req)
            }
            Err(e) => ResponseFuture::failed(e),
        }
    }
}
