use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::body::MaybeBuffered;
use super::future::ResponseFuture;
use super::{DEFAULT_ERROR_BODY_TIMEOUT, DEFAULT_MAX_ERROR_BODY, ErrorBodyLayer};
use crate::BoxError;
use crate::cost::UsageReport;
use crate::signals::DEFAULT_STREAM_IDLE_TIMEOUT;

/// Reads non-2xx response bodies up to a limit, stores the parsed
/// [`ApiError`](crate::signals::ApiError) in the response's extensions and hands the body back
/// unchanged; watches successful bodies as they pass.
///
/// See the [module documentation](super) for what is read and examples.
#[derive(Clone, Debug)]
pub struct ErrorBody<S> {
    pub(super) inner: S,
    pub(super) max: usize,
    pub(super) timeout: Duration,
    pub(super) idle: Duration,
}

impl<S> ErrorBody<S> {
    /// Wraps `inner` with the default limits ([`DEFAULT_MAX_ERROR_BODY`],
    /// [`DEFAULT_ERROR_BODY_TIMEOUT`]).
    pub fn new(inner: S) -> Self {
        ErrorBody {
            inner,
            max: DEFAULT_MAX_ERROR_BODY,
            timeout: DEFAULT_ERROR_BODY_TIMEOUT,
            idle: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }

    /// A layer with the default limit.
    pub fn layer() -> ErrorBodyLayer {
        ErrorBodyLayer::new()
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorBody<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<MaybeBuffered<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let usage = req.extensions_mut().remove::<UsageReport>();
        ResponseFuture::new(
            self.inner.call(req),
            self.max,
            self.timeout,
            self.idle,
            usage,
        )
    }
}
