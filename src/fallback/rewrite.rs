//! Rewriting the request for the secondary service.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Request;
use http::header::CONTENT_LENGTH;
use http_body::Body;
use http_body_util::Full;

/// Changes the request before it goes to the secondary service (another model, another host).
///
/// Implemented for closures `Fn(Request<B>) -> Request<B>` and for [`NoRewrite`].
pub trait Rewrite<B> {
    /// Returns the request to send to the secondary service.
    fn rewrite(&self, request: Request<B>) -> Request<B>;
}

/// Sends the request to the secondary service unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRewrite;

impl<B> Rewrite<B> for NoRewrite {
    fn rewrite(&self, request: Request<B>) -> Request<B> {
        request
    }
}

impl<B, F> Rewrite<B> for F
where
    F: Fn(Request<B>) -> Request<B>,
{
    fn rewrite(&self, request: Request<B>) -> Request<B> {
        self(request)
    }
}

/// A rewrite that sets the `model` field of a JSON request body (Anthropic Messages, OpenAI
/// Chat Completions) to `model`, for example to fall back from Sonnet to Haiku, and updates a
/// `content-length` header. A body that is not a JSON object is sent unchanged (a `tracing`
/// debug event says so).
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_llm_limits::fallback::{Rewrite, set_json_model};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let request = http::Request::new(Full::new(Bytes::from_static(
///     br#"{"model":"claude-sonnet-4-5","max_tokens":10}"#,
/// )));
/// let rewritten = set_json_model("claude-haiku-4-5").rewrite(request);
/// let body = rewritten.into_body().collect().await.unwrap().to_bytes();
/// let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(json["model"], "claude-haiku-4-5");
/// assert_eq!(json["max_tokens"], 10);
/// # }
/// ```
pub fn set_json_model(
    model: impl Into<String>,
) -> impl Fn(Request<Full<Bytes>>) -> Request<Full<Bytes>> + Clone + Send + Sync + 'static {
    let model: String = model.into();
    move |request| {
        let (mut parts, mut body) = request.into_parts();
        let bytes = full_bytes(&mut body);
        let rewritten = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|mut json| {
                let object = json.as_object_mut()?;
                object.insert("model".into(), serde_json::Value::String(model.clone()));
                serde_json::to_vec(&json).ok()
            });
        let bytes = match rewritten {
            Some(new) => {
                if parts.headers.contains_key(CONTENT_LENGTH) {
                    parts.headers.insert(CONTENT_LENGTH, new.len().into());
                }
                Bytes::from(new)
            }
            None => {
                tracing::debug!("fallback rewrite: the body is not a JSON object, sent unchanged");
                bytes
            }
        };
        Request::from_parts(parts, Full::new(bytes))
    }
}

/// The bytes of a `Full` body (it yields them at once, without waiting).
fn full_bytes(body: &mut Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}
