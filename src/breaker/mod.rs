//! Circuit breaker: stop sending to an overloaded provider, fail fast, probe for recovery.
//!
//! When a provider answers 529 (`overloaded_error`, "high traffic across all users"), retrying
//! harder makes it worse and keeps users waiting. [`CircuitBreaker`] counts the outcomes of the
//! calls that go through it and, once the provider looks overloaded, **opens**: calls fail at
//! once with [`error::Open`], which says when the breaker will probe again, and no request
//! reaches the service below. After the open duration it is **half-open**: a few probe calls go
//! through (the others still fail fast); if they succeed it **closes**, else it opens again,
//! for longer.
//!
//! ```text
//!            trip rule met                  open duration elapsed
//!  Closed ─────────────────────▶ Open ───────────────────────────▶ HalfOpen
//!    ▲                             ▲                                   │
//!    │                             └────────── a probe failed ─────────┤
//!    └──────────────────────── enough probes succeeded ────────────────┘
//! ```
//!
//! - **What counts** — the [`Policy`] decides: by default only
//!   [`OutcomeKind::Overloaded`](crate::signals::OutcomeKind::Overloaded) (529, 503, Bedrock
//!   `ServiceUnavailableException`) is a failure; 5xx, timeouts and connection errors can be
//!   added. A 429 is our own pacing problem: it is never counted, so any number of them never
//!   opens the breaker (see [`Policy`] for the full rule). Outcomes are read from the
//!   [`ResponseSignals`](crate::signals::ResponseSignals) a
//!   [`Signals`](crate::signals::Signals) layer stored, else classified by the breaker's
//!   classifier.
//! - **When it trips** — a failure rate over a sliding [`Window`] (the last *n* calls or the
//!   last *d* seconds) once a minimum number of calls was seen, or *n* consecutive failures.
//! - **How long it stays open** — a base duration that grows with repeated trips
//!   ([`Growth`]), capped, shortened by a random jitter so clients do not all probe at once, and
//!   never shorter than the `retry-after` that came with the tripping overload.
//! - **Probes** — [`Policy::half_open_probes`] calls go through when half-open. A probe whose
//!   future is dropped (a timeout above, a cancelled request) frees its slot.
//! - **Keys** — [`Policy::key_fn`] keeps one breaker per model, host or anything the request
//!   head tells; memory is bounded ([`Policy::max_keys`], idle closed breakers go first).
//! - **Observability** — [`CircuitBreaker::state`] / [`state_of`](CircuitBreaker::state_of),
//!   `tracing` events on every transition (`warn` when it opens, `info` otherwise) and refusal
//!   (`debug`), and the [`Policy::on_transition`] hook.
//!
//! # Where it sits, and why it is always ready
//!
//! The breaker sits **above** the rate limiter and the concurrency cap and **below** the retry
//! layer: each retry attempt is checked, and a refused call spends no rate-limit budget and
//! holds no permit. To make that true, [`CircuitBreaker`]'s `poll_ready` is always ready and
//! does not touch the inner service: `call` decides, and an admitted call's future drives the
//! inner service's readiness itself (on a clone of it) before calling it. A refused call's
//! future is an immediately ready [`error::Open`]. The inner service must therefore be `Clone`
//! (every layer of this crate is). [`error::Open`] is a decision of this crate: it classifies
//! as [`Rejected`](crate::signals::OutcomeKind::Rejected), so it is never counted against the
//! server, and the [`Fallback`](crate::fallback::Fallback) layer takes over.
//!
//! # Waiting for the breaker instead of failing
//!
//! A [`Retry`](crate::retry::Retry) layer above treats [`error::Open`] like a server's
//! `retry-after`: it waits until the breaker probes again (a half-open refusal: a jittered
//! backoff) and sends the call then, when that is at most
//! [`Policy::max_breaker_wait`](crate::retry::Policy::max_breaker_wait) away (60 s by
//! default), without spending a retry or retry budget — the refused call never reached the
//! server. For a longer open duration, or for a request that carries the [`FailFast`] extension (the
//! [`Fallback`](crate::fallback::Fallback) layer sets it, so that it can route at once), the
//! refusal goes back to the caller as it is.
//!
//! Unlike the circuit breakers of other Rust crates, this one runs on tokio's clock, so its
//! behaviour over minutes is tested exactly on the paused clock.
//!
//! # Shared state
//!
//! Clones of a [`CircuitBreaker`] share its breakers, and so do all the services one
//! [`CircuitBreakerLayer`] wraps: build one layer per upstream. An outcome that arrives after
//! its breaker changed state (a slow call admitted while closed that ends during half-open) is
//! not counted against the new state.
//!
//! # Examples
//!
//! The default policy around a service that is overloaded:
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_llm_limits::BoxError;
//! use tower_llm_limits::breaker::{CircuitBreaker, Policy, State, error::Open};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! tokio::time::pause();
//! let overloaded = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     let response = http::Response::builder().status(529).body(Full::new(Bytes::new()))?;
//!     Ok::<_, BoxError>(response)
//! });
//! let mut svc = CircuitBreaker::new(overloaded, Policy::new());
//! for _ in 0..5 {
//!     let response = svc.ready().await.unwrap().call(http::Request::new(Full::default())).await;
//!     assert_eq!(response.unwrap().status(), 529);
//! }
//! // Five overloads in a row: open. The next call fails at once.
//! assert!(matches!(svc.state(), State::Open { .. }));
//! let error = svc.ready().await.unwrap().call(http::Request::new(Full::default())).await.unwrap_err();
//! let open = error.downcast_ref::<Open>().unwrap();
//! assert!(open.retry_after() <= Duration::from_secs(10));
//! # }
//! ```
//!
//! A customised policy, one breaker per model (read from a header here), as a layer:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_llm_limits::breaker::{CircuitBreakerLayer, Growth, Policy, Window};
//! use tower_llm_limits::signals::OutcomeKind;
//!
//! let policy = Policy::new()
//!     .trip_on([OutcomeKind::Overloaded, OutcomeKind::ServerError, OutcomeKind::Timeout])
//!     .window(Window::Time(Duration::from_secs(30)))
//!     .failure_rate(0.5, 20)
//!     .consecutive_failures(10)
//!     .open_duration(Duration::from_secs(5))
//!     .growth(Growth::Linear)
//!     .max_open_duration(Duration::from_secs(120))
//!     .half_open_probes(2)
//!     .key_fn(|head| Some(head.headers.get("x-model")?.to_str().ok()?.to_owned()))
//!     .max_keys(64)
//!     .on_transition(|t| eprintln!("{:?}: {} -> {}", t.key(), t.from(), t.to()));
//! let layer = CircuitBreakerLayer::new(policy);
//! let _svc = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(tower::service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new()))
//!     }));
//! assert_eq!(layer.state_of("claude-sonnet-4-5"), tower_llm_limits::breaker::State::Closed);
//! ```

mod layer;
mod policy;
mod registry;
mod service;
mod state;

pub mod error;
pub mod future;

pub use layer::CircuitBreakerLayer;
pub use policy::{Growth, Policy, Window};
pub use service::CircuitBreaker;
pub use state::{Reason, State, Transition};

/// A request extension that asks the layers above the breaker to hand its refusal
/// ([`error::Open`]) back at once instead of waiting for the breaker to let the request through.
///
/// The [`Fallback`](crate::fallback::Fallback) layer inserts it into every request it sends to
/// its primary service; insert it yourself when the caller prefers an immediate error to a wait.
///
/// ```
/// use tower_llm_limits::breaker::FailFast;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(FailFast);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailFast;
