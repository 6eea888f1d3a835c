//! Tower middleware that keeps an HTTP client inside the limits of a rate-limited API: first of
//! all the Anthropic Claude API, then OpenAI, AWS Bedrock and any API that sends rate-limit
//! headers.
//!
//! A client calling Claude meets 429s (requests, input or output tokens per minute exceeded, with
//! a `retry-after` and `anthropic-ratelimit-*` headers saying where the budget stands), 529s (the
//! provider is overloaded for everybody), 413s that no retry can fix, bursts from many workers and
//! retry storms. The layers of this crate read what the server says on every response, pace
//! requests before the server has to refuse them, retry only what is worth retrying and stop
//! sending while the provider is overloaded.
//!
//! # Quick start
//!
//! [`preset::anthropic`] stacks every layer in the right order with the SDKs' defaults; put it in
//! front of any `tower::Service<http::Request<B>>` client (hyper-util's `Client`,
//! `reqwest::ReqwestService` with the `reqwest` feature, …). Here the client is
//! the simulated API of the companion crate `tower-llm-limits-sim` (like `tower-test` beside
//! `tower`), on tokio's paused clock:
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::preset;
//! use tower_llm_limits_sim::{self as sim, Limits, SimApi};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let api = SimApi::builder()
//!     .model("claude-sonnet-4-5", Limits::per_minute(50, 30_000, 8_000))
//!     .build();
//! // Built once; every clone shares one budget, breaker and concurrency cap.
//! let layer = preset::anthropic();
//! let claude = ServiceBuilder::new().layer(layer.clone()).service(api);
//!
//! for _ in 0..3 {
//!     let body = sim::message_body("claude-sonnet-4-5", 200, 64, 32);
//!     let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!         .header("content-type", "application/json")
//!         .body(http_body_util::Full::new(body))?;
//!     let response = claude.clone().oneshot(request).await?;
//!     assert_eq!(response.status(), 200);
//! }
//! // What the stack learned from the `anthropic-ratelimit-*` headers, per model:
//! for key in layer.get_rate_limit().state().snapshot() {
//!     println!("{key:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The README has the same for reqwest, hyper and axum, and `examples/` has runnable programs
//! (each works without an API key against the simulated API): `cargo run --example demo`.
//!
//! # The layers
//!
//! | layer | what it does |
//! |---|---|
//! | [`preset`] | every layer below, in order, as one `Layer`; each part adjustable |
//! | [`signals::SignalsLayer`] | parses every response once: rate-limit headers (Anthropic, OpenAI, IETF, GitHub), `retry-after`, `x-should-retry`, error bodies, outcome |
//! | [`error_body::ErrorBodyLayer`] | reads small error bodies into an `ApiError`, watches successful answers (JSON `usage`, event streams' first event and outcome) as they pass |
//! | [`rate_limit::RateLimitLayer`] | header-aware, cost-weighted pacing: learns limits and remaining budget from the headers, paces requests before the server refuses them |
//! | [`retry::RetryLayer`] | retries what the official SDKs retry, honours `retry-after`/`retry-after-ms`, jittered backoff, bounded attempts, a retry budget |
//! | [`concurrency::ConcurrencyLimitLayer`], [`concurrency::adaptive`] | a fixed or adaptive (AIMD) concurrency cap |
//! | [`breaker::CircuitBreakerLayer`] | trips on 529 overload (never on 429), fails fast, probes in half-open |
//! | [`fallback::FallbackLayer`] | routes to a secondary service while the primary is unavailable |
//! | [`status`] | not a layer: a live snapshot of every shared state (limits, budgets, breakers) |
//! | [`observe`] | not a layer: metrics (feature `metrics`) and the tracing fields |
//!
//! Outermost first: retry, breaker, rate limit, concurrency, signals, client; the [`preset`]
//! module explains why.
//!
//! # Feature flags
//!
//! None is on by default, and none is needed for what the presets promise: the JSON cost
//! estimate and the per-model key of Anthropic / OpenAI bodies are always built in.
//!
//! | feature | enables |
//! |---|---|
//! | `reqwest` | `reqwest::ReqwestService`, the adapter from `reqwest::Client` |
//! | `redis` | a Redis-backed rate-limit store, so many processes share one budget |
//! | `metrics` | counters, histograms and gauges through the `metrics` facade (names in `observe`) |
//! | `tower-http` | tower-http's `ClassifyResponse` for the outcome classifier |
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88 (edition 2024).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod concurrency;
pub mod cost;
pub mod error;
pub mod error_body;
pub mod fallback;
pub mod observe;
pub mod preset;
pub mod rate_limit;
pub mod retry;
pub mod signals;
pub mod status;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;

pub use error::BoxError;

/// The README's snippets, compiled as doc-tests (two of them use the reqwest adapter).
#[cfg(all(doctest, feature = "reqwest"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
