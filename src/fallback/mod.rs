//! Fallback routing: send the work to a secondary service while the primary cannot take it.
//!
//! [`Fallback`] calls the primary service (for example Claude Sonnet, or Anthropic's API) and,
//! when the primary
//!
//! - **fails fast** because its circuit breaker is open ([`breaker::error::Open`]), or any
//!   other decision of this crate's layers (a rate limiter's maximum wait exceeded, a retry
//!   budget exhausted) — errors classified
//!   [`Rejected`](crate::signals::OutcomeKind::Rejected);
//! - **stays overloaded** after its retries: a response (or error) classified
//!   [`Overloaded`](crate::signals::OutcomeKind::Overloaded) (529, 503, Bedrock
//!   `ServiceUnavailableException`),
//!
//! sends the same request to the secondary (Claude Haiku, AWS Bedrock), optionally rewritten
//! ([`Fallback::rewrite`], [`set_json_model`]). Every response carries a [`Served`] extension
//! that says which service answered. The kinds are configurable
//! ([`Fallback::on_outcomes`]), and so is the rule for errors ([`Fallback::when_error`]).
//! Client errors (400, 401, 404, 413…) never fall back: a request the server refused as invalid
//! is invalid for the secondary too. Neither do 429s and transient 5xx by default: they belong
//! to the retry layer below.
//!
//! # Replaying the request
//!
//! The primary consumes the request, so [`Fallback`] clones it before calling the primary. The
//! body must therefore be `Clone`: `Full<Bytes>`, `Bytes` and `String` are, and cheaply
//! (`Bytes` is reference-counted). A streaming body cannot be sent twice; buffer it first.
//!
//! # Where it sits
//!
//! Outermost, above the retry layer: the secondary is used once the primary's own retries are
//! done. Give the secondary its own limiter and breaker (its limits are separate). The primary's
//! request carries [`breaker::FailFast`](crate::breaker::FailFast) whenever a breaker refusal
//! falls back (always, with the default rules), so that the retry layer below hands the refusal
//! back at once instead of waiting for the breaker to probe again; the secondary gets the request
//! without it.
//!
//! # Examples
//!
//! From Sonnet to Haiku when Sonnet is overloaded:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_limits::BoxError;
//! use tower_llm_limits::fallback::{FallbackLayer, Served, set_json_model};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An API on which Sonnet is overloaded and Haiku answers.
//! let api = service_fn(|req: http::Request<Full<Bytes>>| async move {
//!     let body = req.into_body().collect().await?.to_bytes();
//!     let json: serde_json::Value = serde_json::from_slice(&body)?;
//!     let status = if json["model"] == "claude-sonnet-4-5" { 529 } else { 200 };
//!     Ok::<_, BoxError>(http::Response::builder().status(status).body(Full::new(body))?)
//! });
//! let svc = FallbackLayer::new(api.clone())
//!     .rewrite(set_json_model("claude-haiku-4-5"))
//!     .layer(api);
//! let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"claude-sonnet-4-5","max_tokens":64}"#)))
//!     .unwrap();
//! let response = svc.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.extensions().get::<Served>(), Some(&Served::Secondary));
//! # }
//! ```
//!
//! Customised: also fall back on connection errors, to another host:
//!
//! ```
//! use tower_llm_limits::fallback::Fallback;
//! use tower_llm_limits::signals::OutcomeKind;
//!
//! # let (anthropic, bedrock) = (
//! #     tower::service_fn(|_: http::Request<String>| async {
//! #         Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new()))
//! #     }),
//! #     tower::service_fn(|_: http::Request<String>| async {
//! #         Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new()))
//! #     }),
//! # );
//! let _svc = Fallback::new(anthropic, bedrock)
//!     .on_outcomes([OutcomeKind::Overloaded, OutcomeKind::Rejected, OutcomeKind::Connection])
//!     .rewrite(|mut req: http::Request<String>| {
//!         *req.uri_mut() = "https://bedrock-runtime.us-east-1.amazonaws.com/model/invoke"
//!             .parse()
//!             .unwrap();
//!         req
//!     });
//! ```
//!
//! [`breaker::error::Open`]: crate::breaker::error::Open

mod layer;
mod rewrite;
mod service;

pub mod future;

pub use layer::FallbackLayer;
pub use rewrite::{NoRewrite, Rewrite, set_json_model};
pub use service::Fallback;

/// Stored in the extensions of every response of a [`Fallback`]: which service answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Served {
    /// The primary service.
    Primary,
    /// The secondary service.
    Secondary,
}
