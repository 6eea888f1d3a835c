//! API error bodies: a layer that reads small non-2xx bodies into an [`ApiError`].

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

/// The default limit on the size of an error body the [`ErrorBodyLayer`] reads: 64 KiB.
pub const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;

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
#[derive(Clone, Debug)]
pub struct ErrorBody<S> {
    inner: S,
    max: usize,
}

impl<S> ErrorBody<S> {
    /// Wraps `inner` with the default limit.
    pub fn new(inner: S) -> Self {
        ErrorBody {
            inner,
            max: DEFAULT_MAX_ERROR_BODY,
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
}

impl ErrorBodyLayer {
    /// A layer reading at most [`DEFAULT_MAX_ERROR_BODY`] bytes.
    pub fn new() -> Self {
        ErrorBodyLayer {
            max: DEFAULT_MAX_ERROR_BODY,
        }
    }

    /// Sets the largest body read; larger bodies pass through untouched.
    pub fn max_size(mut self, max: usize) -> Self {
        self.max = max;
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
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that is either the original body or the bytes [`ErrorBody`] read from it.
    #[derive(Debug)]
    pub struct MaybeBuffered<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<B> {
        Passthrough { #[pin] body: B },
        Buffered { data: Option<Bytes> },
    }
}

impl<B> MaybeBuffered<B> {
    /// The original body, untouched.
    pub fn passthrough(body: B) -> Self {
        MaybeBuffered {
            inner: Inner::Passthrough { body },
        }
    }

    /// A body made of bytes already read.
    pub fn buffered(data: Bytes) -> Self {
        MaybeBuffered {
            inner: Inner::Buffered { data: Some(data) },
        }
    }
}

impl<B> http_body::Body for MaybeBuffered<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Passthrough { body } => body.poll_frame(cx),
            InnerProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(http_body::Frame::data(d))))
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorBody<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<MaybeBuffered<ResB>>;
    type Error = S::Error;
    type Future = super::future::ErrorBodyFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        super::future::ErrorBodyFuture::new(self.inner.call(req), self.max)
    }
}
