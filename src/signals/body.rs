//! API error bodies: a layer that reads small non-2xx bodies into an [`ApiError`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use super::usage::UsageWatch;
use crate::BoxError;
use crate::cost::UsageReport;

/// The default limit on the size of an error body the [`ErrorBodyLayer`] reads: 64 KiB.
pub const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;

/// The default limit on the time the [`ErrorBodyLayer`] spends reading an error body: 10 s,
/// counted from the moment the response head arrives.
///
/// A provider's error body is a few hundred bytes sent with the head; one that takes longer
/// than this is stalled (a proxy or server that sent part of a chunked body and stopped), and
/// waiting for it would hold the call — and the concurrency permit above — for ever, since a
/// timeout around the client no longer applies once the head has arrived.
pub const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A provider's JSON error, e.g. Anthropic's
/// `{"type":"error","error":{"type":"rate_limit_error","message":"…"},"request_id":"…"}`,
/// OpenAI's `{"error":{"type":…,"code":…,"message":…}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiError {
    kind: Option<String>,
    message: Option<String>,
    code: Option<String>,
    request_id: Option<String>,
}

impl ApiError {
    /// Parses a provider's JSON error body. `None` when the bytes are not a recognisable error.
    ///
    /// Reads Anthropic's `{"type":"error","error":{"type","message","details":{"error_code"}},
    /// "request_id"}` and OpenAI's `{"error":{"message","type","code"}}`; a numeric `code` is
    /// kept as its decimal text. Bodies that are not JSON, or whose `error` is missing or not an
    /// object, give `None`.
    ///
    /// ```
    /// use tower_llm_limits::signals::ApiError;
    ///
    /// let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down",
    ///     "details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#;
    /// let error = ApiError::from_json(body).unwrap();
    /// assert_eq!(error.kind(), Some("rate_limit_error"));
    /// assert_eq!(error.code(), Some("enforced_spend_limit_reached"));
    /// assert_eq!(error.request_id(), Some("req_1"));
    /// assert!(ApiError::from_json(b"<html>502 Bad Gateway</html>").is_none());
    /// ```
    pub fn from_json(body: &[u8]) -> Option<Self> {
        use serde_json::Value;
        let root: Value = serde_json::from_slice(body).ok()?;
        let error = root.get("error")?.as_object()?;
        let text = |v: Option<&Value>| match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let code = text(error.get("details").and_then(|d| d.get("error_code")))
            .or_else(|| text(error.get("code")));
        Some(ApiError {
            kind: text(error.get("type")),
            message: text(error.get("message")),
            code,
            request_id: text(root.get("request_id")),
        })
    }

    /// `error.type`, e.g. `rate_limit_error`, `overloaded_error`, `invalid_request_error`.
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    /// `error.message`.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// A machine-readable code: Anthropic `error.details.error_code`
    /// (e.g. `enforced_spend_limit_reached`), OpenAI `error.code`.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// `request_id` from the body.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

/// Reads non-2xx response bodies up to a limit, stores the parsed [`ApiError`] in the response's
/// extensions and hands the body back unchanged. See [`ErrorBodyLayer`].
///
/// What is read, and what the caller gets:
///
/// - **2xx responses are never touched**: the body is passed through as it streams.
/// - `text/event-stream` responses are passed through (a stream is never buffered), as are
///   bodies whose size hint announces more than the limit.
/// - Other non-2xx bodies (known size within the limit, or unknown size such as chunked
///   encoding) are read into memory. When the whole body fits, it is parsed with
///   [`ApiError::from_json`]; a recognised error is inserted into the response's extensions,
///   where [`Signals`](super::Signals) and the classifier find it. The body is handed back
///   byte-identical, trailers included.
/// - A body that turns out larger than the limit while being read is not parsed: the caller gets
///   the bytes read so far followed by the rest of the original body.
/// - A body that fails while being read is not parsed: the caller gets the bytes read so far,
///   then the body's error. Nothing is lost and nothing panics.
/// - A body that is not complete within the time limit ([`DEFAULT_ERROR_BODY_TIMEOUT`], 10 s
///   from the head, see [`ErrorBodyLayer::read_timeout`]) is not parsed: the response is handed
///   on without an [`ApiError`], and its body gives the bytes read so far, then the rest of the
///   original body as (and if) it arrives. A caller that reads such a body should bound its own
///   read.
///
/// Reading an error body holds the response until the body is complete: the size and time
/// limits bound how much an error response can delay the caller. The time limit needs a tokio
/// runtime with the time driver (as every waiting layer of this crate).
///
/// Its error is a [`BoxError`]: the inner service's error, boxed, as every layer of this crate
/// returns it (and [`PolledAfterCompletion`](crate::error::PolledAfterCompletion) for a future
/// polled again after it completed).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_llm_limits::signals::{ApiError, ErrorBodyLayer};
///
/// const BODY: &str = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
/// let api = service_fn(|_req: Request<()>| async {
///     let response = Response::builder()
///         .status(529)
///         .header("content-type", "application/json")
///         .body(Full::new(Bytes::from_static(BODY.as_bytes())))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let service = ErrorBodyLayer::new().layer(api);
///
/// let response = service.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::from_u16(529).unwrap());
/// let error = response.extensions().get::<ApiError>().unwrap();
/// assert_eq!(error.kind(), Some("overloaded_error"));
/// // The caller still reads the body, unchanged.
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, BODY.as_bytes());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ErrorBody<S> {
    inner: S,
    max: usize,
    timeout: Duration,
}

impl<S> ErrorBody<S> {
    /// Wraps `inner` with the default limits ([`DEFAULT_MAX_ERROR_BODY`],
    /// [`DEFAULT_ERROR_BODY_TIMEOUT`]).
    pub fn new(inner: S) -> Self {
        ErrorBody {
            inner,
            max: DEFAULT_MAX_ERROR_BODY,
            timeout: DEFAULT_ERROR_BODY_TIMEOUT,
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

/// Layer for [`ErrorBody`].
#[derive(Clone, Copy, Debug)]
pub struct ErrorBodyLayer {
    max: usize,
    timeout: Duration,
}

impl ErrorBodyLayer {
    /// A layer reading at most [`DEFAULT_MAX_ERROR_BODY`] bytes for at most
    /// [`DEFAULT_ERROR_BODY_TIMEOUT`].
    pub fn new() -> Self {
        ErrorBodyLayer {
            max: DEFAULT_MAX_ERROR_BODY,
            timeout: DEFAULT_ERROR_BODY_TIMEOUT,
        }
    }

    /// Sets the largest body read; larger bodies pass through untouched.
    pub fn max_size(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Sets the longest time spent reading an error body, from the arrival of the head (default
    /// [`DEFAULT_ERROR_BODY_TIMEOUT`], 10 s). When it runs out the response is handed on
    /// unparsed: its body gives the bytes read so far, then the rest of the original body.
    /// Keep it well below a retry [`deadline`](crate::retry::Policy::deadline).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for ErrorBodyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ErrorBodyLayer {
    type Service = ErrorBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorBody {
            inner,
            max: self.max,
            timeout: self.timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body handed back by [`ErrorBody`]: the original body untouched, or the bytes
    /// [`ErrorBody`] read from it, followed by whatever it could not read.
    ///
    /// Every byte the server sent reaches the caller, in order: when the body outgrew the limit
    /// (or was not complete within the time limit) while being read, the bytes read so far come
    /// first, then the rest of the original body;
    /// when reading failed, the bytes read so far come first, then the body's error.
    pub struct MaybeBuffered<B>
    where
        B: http_body::Body,
    {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<B>
    where
        B: http_body::Body,
    {
        Passthrough { #[pin] body: B },
        // A successful answer passing through, copied for its `usage`.
        Watched { #[pin] body: B, watch: Option<UsageWatch> },
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
        // Outgrew the limit: the bytes read, then the rest of the original body.
        Prefixed { prefix: Option<Bytes>, body: Pin<Box<B>> },
        // Reading failed: the bytes read, then the error.
        Failed { prefix: Option<Bytes>, error: Option<B::Error> },
    }
}

impl<B: http_body::Body> std::fmt::Debug for MaybeBuffered<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.inner {
            Inner::Passthrough { .. } | Inner::Watched { .. } => "passthrough",
            Inner::Buffered { .. } => "buffered",
            Inner::Prefixed { .. } => "prefixed",
            Inner::Failed { .. } => "failed",
        };
        f.debug_struct("MaybeBuffered")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

fn non_empty(data: Bytes) -> Option<Bytes> {
    (!data.is_empty()).then_some(data)
}

impl<B: http_body::Body> MaybeBuffered<B> {
    /// The original body, untouched.
    pub fn passthrough(body: B) -> Self {
        MaybeBuffered {
            inner: Inner::Passthrough { body },
        }
    }

    /// The original body, copied for its `usage` as it passes when `watch` is set.
    pub(crate) fn watched(body: B, watch: Option<UsageWatch>) -> Self {
        match watch {
            Some(watch) => MaybeBuffered {
                inner: Inner::Watched {
                    body,
                    watch: Some(watch),
                },
            },
            None => Self::passthrough(body),
        }
    }

    /// A body made of bytes already read.
    pub fn buffered(data: Bytes) -> Self {
        Self::complete(data, None)
    }

    /// The whole body, read, with its trailers.
    pub(crate) fn complete(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        MaybeBuffered {
            inner: Inner::Buffered {
                data: non_empty(data),
                trailers,
            },
        }
    }

    /// `prefix`, then the rest of `body`.
    pub(crate) fn prefixed(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        MaybeBuffered {
            inner: Inner::Prefixed {
                prefix: non_empty(prefix),
                body,
            },
        }
    }

    /// `prefix`, then `error`.
    pub(crate) fn failed(prefix: Bytes, error: B::Error) -> Self {
        MaybeBuffered {
            inner: Inner::Failed {
                prefix: non_empty(prefix),
                error: Some(error),
            },
        }
    }

    /// `true` when the body was read into memory (completely or up to the limit).
    pub fn is_buffered(&self) -> bool {
        !matches!(
            self.inner,
            Inner::Passthrough { .. } | Inner::Watched { .. }
        )
    }
}

fn data_frame<E>(data: Bytes) -> Poll<Option<Result<Frame<Bytes>, E>>> {
    Poll::Ready(Some(Ok(Frame::data(data))))
}

impl<B> http_body::Body for MaybeBuffered<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Passthrough { body } => body.poll_frame(cx),
            InnerProj::Watched { body, watch } => {
                let frame = body.poll_frame(cx);
                match &frame {
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(w), Some(data)) = (watch.as_mut(), f.data_ref()) {
                            w.feed(data);
                        }
                    }
                    // The end: the whole answer passed.
                    Poll::Ready(None) => {
                        if let Some(w) = watch.take() {
                            w.finish();
                        }
                    }
                    // A body that fails tells nothing; what its head settled stays.
                    Poll::Ready(Some(Err(_))) => *watch = None,
                    Poll::Pending => {}
                }
                frame
            }
            InnerProj::Buffered { data, trailers } => match data.take() {
                Some(data) => data_frame(data),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            InnerProj::Prefixed { prefix, body } => match prefix.take() {
                Some(data) => data_frame(data),
                None => body.as_mut().poll_frame(cx),
            },
            InnerProj::Failed { prefix, error } => match prefix.take() {
                Some(data) => data_frame(data),
                None => Poll::Ready(error.take().map(Err)),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Passthrough { body } | Inner::Watched { body, .. } => body.is_end_stream(),
            Inner::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Inner::Prefixed { prefix, body } => prefix.is_none() && body.is_end_stream(),
            Inner::Failed { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let len = |d: &Option<Bytes>| d.as_ref().map_or(0, |d| d.len() as u64);
        match &self.inner {
            Inner::Passthrough { body } | Inner::Watched { body, .. } => body.size_hint(),
            Inner::Buffered { data, .. } => SizeHint::with_exact(len(data)),
            Inner::Prefixed { prefix, body } => {
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(len(prefix)));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(len(prefix)));
                }
                hint
            }
            Inner::Failed { prefix, .. } => SizeHint::with_exact(len(prefix)),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorBody<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<MaybeBuffered<ResB>>;
    type Error = BoxError;
    type Future = super::future::ErrorBodyFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let usage = req.extensions_mut().remove::<UsageReport>();
        super::future::ErrorBodyFuture::new(self.inner.call(req), self.max, self.timeout, usage)
    }
}
