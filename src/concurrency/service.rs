//! The [`ConcurrencyLimit`] service.

use std::fmt;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::ConcurrencyLimitLayer;
use super::body::Release;
use super::future::ResponseFuture;
use super::limiter::{Limiter, Permit, Ticket};
use crate::BoxError;

/// Admits at most a fixed number of calls at a time; see the [module docs](super).
///
/// The permit is taken in `poll_ready` (a service that is not admitted yet is `Pending` and is
/// woken in FIFO order), moves into the response future in `call`, and is given back when the
/// call fails, when its future or the service is dropped, and otherwise when the response head
/// arrives — or, for an event stream under the default [`Release::Auto`] (always under
/// [`Release::AtBodyEnd`]), when the response body ends.
///
/// `Clone` shares the cap: a clone draws from the same [`Limiter`] but holds no permit of its own.
pub struct ConcurrencyLimit<S> {
    inner: S,
    limiter: Limiter,
    release: Release,
    permit: Option<Permit>,
    ticket: Option<Ticket>,
}

impl<S> ConcurrencyLimit<S> {
    /// Wraps `inner` with its own cap of `limit` calls (0 admits nothing until the limit is
    /// raised through [`limiter`](Self::limiter)).
    pub fn new(inner: S, limit: usize) -> Self {
        Self::with_limiter(inner, Limiter::new(limit))
    }

    /// Wraps `inner` with a cap shared with every other holder of `limiter`.
    pub fn with_limiter(inner: S, limiter: Limiter) -> Self {
        ConcurrencyLimit {
            inner,
            limiter,
            release: Release::default(),
            permit: None,
            ticket: None,
        }
    }

    /// A layer whose services all share one cap of `limit` calls; see [`ConcurrencyLimitLayer`].
    pub fn layer(limit: usize) -> ConcurrencyLimitLayer {
        ConcurrencyLimitLayer::new(limit)
    }

    /// Sets when a call's permit goes back (default [`Release::Auto`]).
    pub fn release(mut self, release: Release) -> Self {
        self.release = release;
        self
    }

    /// The shared cap.
    pub fn limiter(&self) -> &Limiter {
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
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service (a permit it held goes back).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for ConcurrencyLimit<S> {
    /// A service sharing the cap, holding no permit and no place in the queue.
    fn clone(&self) -> Self {
        ConcurrencyLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            release: self.release,
            permit: None,
            ticket: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("release", &self.release)
            .field("holds_permit", &self.permit.is_some())
            .field("waiting", &self.ticket.is_some())
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
{
    type Response = Response<super::PermitBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            let permit = ready!(self.limiter.poll_acquire(cx, &mut self.ticket));
            self.permit = Some(permit);
        }
        // Like tower's limit: the permit stays with this service while the inner one gets ready.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let permit = self.permit.take().expect(
            "ConcurrencyLimit::call was called without a permit: \
             call poll_ready until it returns Ready(Ok(())) before each call",
        );
        ResponseFuture::new(self.inner.call(request), permit, self.release)
    }
}
