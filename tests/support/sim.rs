//! Helpers for tests against the simulated API (`tower_llm_limits_sim`).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_llm_limits::BoxError;
use tower_llm_limits_sim::{SimApi, message_body};

/// `POST http://sim.local/v1/messages` with `body`.
pub fn post(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("http://sim.local/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .expect("valid request")
}

/// A request the sim counts as `input` input tokens with `max_tokens` and `output` produced.
pub fn message(model: &str, input: u64, max_tokens: u64, output: u64) -> Request<Full<Bytes>> {
    post(message_body(model, input, max_tokens, output))
}

/// Sends `req` to `api` and returns its answer, the body read into bytes.
pub async fn send(api: &SimApi, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, BoxError> {
    let response = api.clone().oneshot(req).await?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, bytes))
}

/// A header as text ("" when missing).
pub fn header<'a, B>(response: &'a Response<B>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The body as JSON.
pub fn json(response: &Response<Bytes>) -> serde_json::Value {
    serde_json::from_slice(response.body()).expect("JSON body")
}
