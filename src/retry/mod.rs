//! Retries that honour the server: `retry-after`, jittered backoff, a ceiling, a deadline and a
//! retry budget.
//!
//! [`Retry`] does what the official Anthropic and OpenAI SDKs do, as a Tower layer around any
//! HTTP client service, plus what they lack:
//!
//! - **Decision** through a [`Classify`](crate::signals::Classify)er (the
//!   [`DefaultClassifier`](crate::signals::DefaultClassifier) unless you set one):
//!   `x-should-retry` first (folded into [`Outcome::is_retryable`](crate::signals::Outcome)),
//!   then 429, 529, 503, 408, 409, other 5xx, connection errors and timeouts are retried. 400,
//!   401, 402, 403 (unless a GitHub-style rate limit), 404, 413, the spend-cap 429 and this
//!   crate's own decisions ([`OutcomeKind::Rejected`](crate::signals::OutcomeKind)) never are.
//!   The outcome follows the crate's one rule,
//!   [`ResponseSignals::outcome_or`](crate::signals::ResponseSignals::outcome_or): the one a
//!   [`Signals`](crate::signals::Signals) layer below stored (the headers are not parsed twice),
//!   else the policy's classifier's reading.
//! - **Wait**: the server's `retry-after-ms`, else `retry-after` (seconds or HTTP-date, measured
//!   against the response's `date`), else [`Backoff`] — by default the SDKs'
//!   `min(0.5 s × 2ⁿ, 8 s) × (1 − 0.25 × random)`; full, equal and decorrelated [`Jitter`] are
//!   available. As in every SDK, only a wait **> 0** counts: `retry-after: 0`,
//!   `retry-after-ms: 0` or an HTTP-date at or before `date` is treated as no wait and the
//!   backoff applies (0.375–0.5 s before the first retry), so repeated zero hints do not put
//!   every attempt in the same millisecond.
//! - **No double wait**: when a pacing layer below (the rate limiter) marked the response with
//!   [`WaitAbsorbed`](crate::rate_limit::WaitAbsorbed), it holds every request until the server's
//!   time anyway, so the retry re-enters at once instead of sleeping the same wait first and
//!   queueing behind it afterwards. The ceiling and the deadline are still checked against that
//!   wait.
//! - **Ceiling** on a server-dictated wait ([`Policy::max_server_wait`]): matching each
//!   provider's current SDK — [`Policy::anthropic`] honours any positive wait (up to
//!   [`ANTHROPIC_MAX_SERVER_WAIT`], ≈ 49.7 days), [`Policy::openai`] up to 120 s, [`Policy::new`]
//!   up to 60 s. Above it the call ends at once with [`error::ServerWaitTooLong`], which states the
//!   server's wait — neither a silent hang nor a silent give-up.
//! - **Open circuit breaker**: a refusal of a [circuit breaker](crate::breaker) below
//!   ([`breaker::error::Open`](crate::breaker::error::Open)) is waited out like a server's
//!   `retry-after` — until the breaker probes again, jittered — when that is at most
//!   [`Policy::max_breaker_wait`] away (60 s), spending neither a retry nor budget, since the
//!   refused attempt never reached the server. Requests marked
//!   [`breaker::FailFast`](crate::breaker::FailFast) (the [`Fallback`](crate::fallback::Fallback)
//!   layer marks its primary's) get the refusal at once.
//! - **Deadline** per call ([`Policy::deadline`]): no wait goes past it — a retry that could not
//!   start before it is not waited for, the call ends at once with [`error::DeadlineExceeded`],
//!   which states the server's wait.
//! - **Budget** ([`Budget`]): retries may add at most 20 % to the request rate over 10 s plus 10
//!   retries per second, shared by every clone, so an outage cannot multiply the load
//!   ([`error::BudgetExhausted`]).
//! - **Replay**: each attempt is rebuilt from the request's parts (method, URI, version,
//!   headers, extensions) and a [`ReplayBody`]; a body that cannot be replayed is sent once.
//!   `ReplayBody` answers only "can a fresh copy be sent again?"; whether the body's bytes can
//!   be *seen* for the rate limiter's key and cost is the separate
//!   [`BodyBytes`](crate::cost::BodyBytes). The two are independent (a
//!   [`SendOnce`]`<Full<Bytes>>` is seen and never replayed, a [`Replayable`] stream is
//!   replayed and not seen), each layer needs only its own, and a preset needs both: the
//!   [`cost` module docs](crate::cost#why-two-body-traits-bodybytes-here-replaybody-in-retry)
//!   say why they are not one trait.
//! - **Attempt header** on retries ([`Policy::sdk_attempt_header`] sends the SDKs'
//!   `x-stainless-retry-count`), and the number of attempts in every returned response's
//!   extensions ([`Attempts`]) and in every error of [`error`].
//! - A `tracing` debug event per retry (`attempt`, `reason`, `status`, `wait_ms`, `sleep_ms`,
//!   `source`: `retry-after-ms`, `retry-after`, `retry-after-date`, `classifier`, `backoff` or
//!   `absorbed`), an info event when the layer gives up.
//!
//! # What comes back
//!
//! Responses stay responses: when a retry is refused (the outcome is not retryable, the
//! retries are used up, the body cannot be replayed) the last response is returned as it is,
//! with [`Attempts`] in its extensions, and an error of the inner service is returned as it is.
//! The layer returns its own typed errors only where it ends the call itself: budget, deadline,
//! ceiling, and a body that claims to be replayable but refuses to be copied
//! ([`error::BodyNotReplayable`]: a [`Replayable`] whose clones share one stream). A breaker refusal that is not waited out is returned as it is. Those errors carry the last status, the server's wait and the number of attempts;
//! the last response's body is dropped (see [`error`]).
//!
//! # Streaming answers
//!
//! An attempt is over when its response head is handed on; a streaming answer
//! (`text/event-stream`) is handed on once its first event has arrived (the
//! [`ErrorBody`](crate::error_body::ErrorBody) layer below reads it, see
//! [`signals::stream`](crate::signals::stream)). So:
//!
//! - an error **before any byte reached the caller** — an `overloaded_error` as the first
//!   event, a connection that fails or ends before the first event — is the attempt's outcome
//!   ([`StreamStartFailed`](crate::signals::StreamStartFailed)) and is retried like any other
//!   failed attempt: the caller sees one clean stream;
//! - once the response was handed on, **nothing is re-sent**: a stream that breaks later ends
//!   its body with [`StreamInterrupted`](crate::signals::StreamInterrupted), which says how it
//!   ended and how many events and bytes the caller had received. Re-sending would produce a
//!   second, different answer that the caller could not splice onto the first.
//!
//! # Why a service of its own rather than `tower::retry::Policy`
//!
//! tower's `Retry` asks a policy, per result, for a future to wait on, and clones the policy and
//! the request. Everything here can be squeezed into that shape, but not cleanly: a typed error
//! (budget, deadline, ceiling) would have to be smuggled in by rewriting the result in place,
//! which forces the inner error type to be `BoxError`; the attempt count cannot be put on the
//! response that is finally returned without a second wrapper; the request would be cloned
//! before every attempt, even the last; and the policy clone per request would have to carry
//! the deadline and the random source. [`Retry`] owns that state in one hand-written future
//! (`pin-project-lite`, no boxing): the first attempt is sent without waiting for anything, the
//! template is kept only when the body can be replayed, and dropping the future at any point
//! releases everything.
//!
//! For stacks built on tower's `Retry`, [`Policy::into_tower`] gives the same decisions as a
//! `tower::retry::Policy` ([`TowerPolicy`]).
//!
//! # Why a budget and not only a retry count
//!
//! A count of 2 retries triples the load on a server that is failing every call, exactly when
//! it can least take it. The budget lets retries through while they are rare (most calls
//! succeed) and stops them when every call would be retried. Withdrawals are not refunded when a
//! call is cancelled during its wait: the budget limits decisions to retry.
//!
//! # Examples
//!
//! The SDK defaults:
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_limits::retry::{Attempts, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! // A server that is overloaded on the first call.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let server = service_fn(move |_req: Request<Full<Bytes>>| {
//!     let n = calls.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let status = if n == 0 { 529 } else { 200 };
//!         Ok::<_, tower_llm_limits::BoxError>(
//!             Response::builder().status(status).body(Full::new(Bytes::new()))?,
//!         )
//!     }
//! });
//!
//! let client = ServiceBuilder::new().layer(RetryLayer::default()).service(server);
//! let response = client.oneshot(Request::new(Full::new(Bytes::from("{}")))).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.extensions().get::<Attempts>().map(|a| a.get()), Some(2));
//! # Ok(())
//! # }
//! ```
//!
//! A customised policy: more retries, full jitter, a shorter ceiling, a deadline, the SDKs'
//! retry-count header and a budget shared by two separately built clients:
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceExt, service_fn};
//! use tower_llm_limits::retry::{Backoff, Budget, Jitter, Policy, Retry, error::ServerWaitTooLong};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let budget = Budget::new(Duration::from_secs(10), 5, 0.1);
//! let policy = Policy::new()
//!     .max_retries(4)
//!     .backoff(Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5))
//!         .jitter(Jitter::Full))
//!     .max_server_wait(Duration::from_secs(30))
//!     .deadline(Duration::from_secs(120))
//!     .sdk_attempt_header()
//!     .budget(budget.clone());
//!
//! // A server that asks for ten minutes.
//! let server = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Response::builder()
//!         .status(429)
//!         .header("retry-after", "600")
//!         .body(Full::new(Bytes::new()))
//! });
//! let client = Retry::new(server, policy.clone());
//! let _other_client = Retry::new(server, policy); // same budget
//!
//! let error = client.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap_err();
//! let too_long = error.downcast_ref::<ServerWaitTooLong>().expect("the server's wait is above 30 s");
//! assert_eq!(too_long.wait(), Duration::from_secs(600));
//! assert_eq!(too_long.attempts(), 1);
//! # }
//! ```

mod backoff;
mod budget;
mod policy;
mod replay;
mod service;
mod tower_policy;

pub mod error;
pub mod future;

pub use backoff::{Backoff, Jitter};
pub use budget::Budget;
pub use policy::{
    ANTHROPIC_MAX_SERVER_WAIT, Attempts, DEFAULT_MAX_BREAKER_WAIT, DEFAULT_MAX_SERVER_WAIT,
    OPENAI_MAX_SERVER_WAIT, Policy, SDK_ATTEMPT_HEADER,
};
pub use replay::{ReplayBody, ReplayRefused, Replayable, SendOnce};
pub use service::{Retry, RetryLayer};
pub use tower_policy::TowerPolicy;
