//! The header-aware, cost-weighted rate limiter: pace requests so the server never has to refuse
//! them, using the limits the server itself reports.
//!
//! [`RateLimit`] charges each request a [`Cost`](crate::cost::Cost) (requests, input tokens,
//! output tokens) against the buckets of its key (by default the model), waits when the cost does
//! not fit, and after every response brings its buckets in line with the rate-limit headers (every
//! dialect [`signals`](crate::signals) reads: Anthropic, OpenAI, IETF, GitHub).
//!
//! # Examples
//!
//! Configured limits (they also work against a server that sends no rate-limit headers):
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_limits::rate_limit::{Limits, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let client = service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new()))
//! });
//! // 50 requests, 30,000 input tokens and 8,000 output tokens per minute.
//! let layer = RateLimitLayer::with_limits(Limits::per_minute(50, 30_000, 8_000))
//!     .max_wait(Duration::from_secs(120));
//! let service = layer.layer(client);
//! let body = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,
//!                "messages":[{"role":"user","content":"Hello"}]}"#;
//! let response = service.oneshot(http::Request::new(body.to_string())).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! Learned limits: with nothing configured, the first request of each key goes alone (a probe)
//! and the limits come from its response's headers; a [`RateLimitState`] can be shared by several
//! stacks that talk to the same organisation:
//!
//! ```
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_limits::rate_limit::{RateLimitKey, RateLimitLayer, RateLimitState};
//! use tower_llm_limits::signals::Dimension;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let client = service_fn(|_req: http::Request<String>| async {
//!     let response = http::Response::builder()
//!         .header("anthropic-ratelimit-requests-limit", "50")
//!         .header("anthropic-ratelimit-requests-remaining", "49")
//!         .body(String::new())?;
//!     Ok::<_, tower_llm_limits::BoxError>(response)
//! });
//! let state = RateLimitState::new();
//! let service = RateLimitLayer::with_state(state.clone()).layer(client);
//! let mut request = http::Request::new(String::new());
//! request.extensions_mut().insert(RateLimitKey::new("claude-sonnet-4-5"));
//! service.oneshot(request).await?;
//! let snapshot = state.key_snapshot(&RateLimitKey::new("claude-sonnet-4-5")).unwrap();
//! let requests = snapshot.bucket(Dimension::Requests).unwrap();
//! assert_eq!((requests.capacity(), requests.level()), (50, 49));
//! # Ok(())
//! # }
//! ```
//!
//! A custom cost function (a request's own [`Cost`](crate::cost::Cost) extension still wins):
//!
//! ```
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_limits::cost::{Cost, cost_fn};
//! use tower_llm_limits::rate_limit::{Limits, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let client = service_fn(|_req: http::Request<Vec<u8>>| async {
//!     Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new()))
//! });
//! // Our prompts are Japanese: about one token per 1.5 bytes; answers at most 500 tokens.
//! let layer = RateLimitLayer::with_limits(Limits::per_minute(50, 30_000, 8_000))
//!     .cost_fn(cost_fn(|req: &http::Request<Vec<u8>>| {
//!         Cost::new(1, (req.body().len() as u64 * 2).div_ceil(3), 500)
//!     }));
//! let service = layer.layer(client);
//! service.oneshot(http::Request::new(vec![0; 3_000])).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The bucket model
//!
//! Each dimension ([`Dimension`](crate::signals::Dimension): requests, input tokens, output
//! tokens, combined tokens = input + output) of each key is a continuously replenished bucket of
//! capacity `C` refilled at `r = C / window` (one minute unless the dialect says otherwise) — the
//! providers' own model. A [`Bucket`] is stored GCRA-style as the single instant `full_at` at
//! which it would be full: `level(t) = C − r·max(0, full_at − t)`, charging `c` moves `full_at`
//! to `max(full_at, t) + c/r`, and `c` fits from exactly `full_at − (C − c)/r`. Anthropic's
//! `*-reset` header *is* `full_at` and `*-remaining` is the level: two readings of one fact. The
//! arithmetic is integer nanoseconds (`u128`), saturating on absurd values.
//!
//! # Limits: configured, learned, or both
//!
//! Configured [`Limits`] are the starting point (a key with one needs no probe) **and a
//! ceiling**: a limit the server reports above the configured one does not raise it, one below it
//! wins (a workspace limit, a lowered tier). While a ceiling is below the server's limit the two
//! are kept apart: the ceiling's bucket counts this key's own usage at the configured rate, and
//! an in-memory bucket at the server's capacity takes the server's readings (everyone's usage,
//! refilled at the server's rate); a request must fit both. A nearly empty server bucket then
//! means a wait of the server's refill time, not of the ceiling's. The server's readings say
//! nothing about this key's own share, so the ceiling learns nothing from them: without a
//! [`Usage`](crate::cost::Usage) it counts each request's output at its reservation. Without
//! configuration, the newest `*-limit` a response
//! reports is the capacity (a tier upgrade takes effect at the next response; the units already
//! used are kept).
//!
//! **Start-up.** Before anything is known about a key (no configured limit, no response yet),
//! the first [`STARTUP_PROBES`] requests (4) go — the probes — and the others wait for the first
//! answer: sending everything at once would get most of it refused, and waiting costs one round
//! trip, the shortest of the probes' (a model's answer takes longer the more it writes, so a few
//! probes answer sooner than one; a handful of requests fits any real tier). If every probe fails
//! without headers, the next request probes. If a successful response carries no rate-limit header and
//! nothing is configured, the key is not limited (except by cooldowns).
//!
//! **Ramp-up** ([`RampUp`], off by default, [`RateLimitStateBuilder::ramp_up`]): after a cold
//! start or a long idle only a share of each bucket may be used, growing linearly to all of it,
//! against providers' acceleration limits. It is off by default because it only limits the
//! burst, and the burst is what makes the start of a run fast.
//!
//! # Learning from every response
//!
//! A reading describes the server right after it charged *this* request (or, for a 429, without
//! it: the limiter gives back the refused request's charge). Whatever this key dispatched after
//! it is not in the reading. The limiter keeps per key a monotone counter of the cost dispatched
//! per dimension and stores in each request the counter value at its dispatch: the cost "after"
//! is one subtraction, `O(1)`, and a response that arrives out of order is read correctly.
//!
//! Output tokens are different: a server may count them as they are produced (current Anthropic
//! docs) or reserve `max_tokens` up front (older docs). The limiter assumes the reading holds no
//! output of any request still in flight, nor of any request that finished after this one was
//! dispatched (this one included) — a second monotone counter, of finished output, makes that
//! `O(1)` too. A finished request counts its [`Usage`](crate::cost::Usage) when the response
//! carries one, else the learned share of its reservation (below), and its reservation is
//! settled to that figure at once. This is exact for a server that counts output as produced
//! and conservative for one that reserves; an estimate that was too low shows in the next
//! readings, which correct the level.
//!
//! Both readings are coarse: Anthropic rounds `*-tokens-remaining` to the nearest thousand;
//! resets have one-second resolution and are measured against the response's `date` (so skew
//! between the server's clock and ours cancels); `remaining` is the level right after the
//! server admitted the request, so it is read at the request's dispatch plus the trip to the
//! server (at most 50 ms assumed; the rounding tolerance absorbs more), not at the response's
//! receipt, which for a model's answer comes seconds later. The limiter turns `remaining` and
//! `reset` into two intervals of local instants for the server's `full_at`, intersects them,
//! adds the cost not in the reading, and compares the local bucket with the result:
//!
//! - local state **inside** the interval: kept (the local model is finer than the reading);
//! - the server says there is **less** budget: the local bucket moves to the interval's
//!   conservative edge at once;
//! - the server says there is **more** (an output reservation larger than the real output, an
//!   over-estimated input): the local bucket moves up, but only to the conservative edge, so a
//!   rounding error never turns into a burst.
//!
//! The errors these corrections leave are constant offsets of the bucket's level, not rates: as
//! long as the binding bucket never fills, the requests still go out at the server's refill rate.
//! Against the simulated API (`cargo test --test rate_limit acceptance -- --nocapture`), 500
//! requests from 32 callers finish within 1–2% of the theoretical best with no 429.
//!
//! Anthropic's `tokens` reading is "the most restrictive token limit in effect": when its limit
//! is the input or output limit it is the same bucket read twice and is skipped; otherwise (a
//! workspace limit, OpenAI's `tokens`) it is a combined bucket charged input + output.
//!
//! **Estimation error.** Successive readings of the input bucket (at least a whole capacity of
//! estimated tokens apart, and never across an instant the bucket may have been full) tell what
//! the server really charged for the requests in between: the distance between the two
//! `full_at`s times the refill rate. The ratio to the limiter's raw
//! estimates feeds an EWMA (weight 0.25) clamped to `0.5..=4`, applied to later input estimates
//! (not to a caller's explicit [`Cost`](crate::cost::Cost), which is taken as exact). The factor
//! is visible in [`KeySnapshot::input_correction`].
//!
//! **Output share.** Without a [`Usage`](crate::cost::Usage) a finished request's output is
//! unknown, and counting its whole `max_tokens` keeps the output bucket's level below the
//! server's by the unused part of every reservation since the last reading. Successive output
//! readings (at least a quarter of the capacity of finished reservations apart, never across an
//! instant the bucket may have been full) tell what the server charged for the requests that
//! finished in between; its ratio to their reservations feeds an EWMA (weight 0.5) clamped to
//! `0.25..=1`, the share a finished request is taken to have produced. Other users of the same
//! limit only raise it. It is visible in [`KeySnapshot::output_share`].
//!
//! Fixed-window dialects (IETF, GitHub): the reset is the end of a window, not `full_at`, so only
//! `remaining` corrects the level, and `remaining: 0` holds the key until the reset.
//!
//! # Cooldown
//!
//! A 429 ([`OutcomeKind::RateLimited`](crate::signals::OutcomeKind::RateLimited)) holds **every**
//! request of the key — every clone, every layer sharing the state — until its `retry-after`
//! ([`DEFAULT_COOLDOWN`] when absent). The response gets a
//! [`WaitAbsorbed`] in its extensions so a retry layer above
//! re-enters at once instead of sleeping the same wait again. After the cooldown the waiters are
//! released one by one as their cost fits the (corrected) buckets: at the refill rate, never as a
//! herd. A spend-limit 429 does not cool down: waiting cannot help.
//!
//! # Waiting
//!
//! Unlike tower's `RateLimit`, [`poll_ready`](tower_service::Service::poll_ready) reserves nothing
//! and is always ready: the cost of a request is only known in `call`. `call` works out the key
//! and cost, then admits at once (one lock) or queues; the response future waits for admission,
//! **then** drives the inner service's readiness and calls it, so a concurrency cap below holds a
//! permit only while the request is in flight.
//!
//! Each key has one queue: strict FIFO within a [`Priority`] class (a large request is not
//! starved by small ones), interactive before background. Only the head waiter sleeps, on one
//! timer set to the exact instant its cost fits every bucket and the cooldown is over — no
//! polling, no round numbers; once admitted it wakes the next head at once, so many small
//! requests can go at the same instant. A reading that changes the state wakes the head to
//! recompute. Admission is `O(log n)` in the queue length.
//!
//! **Maximum wait** ([`RateLimitLayer::max_wait`], or a request's [`MaxWait`]): when a request is
//! queued its admission instant is projected from the cost queued ahead of it plus its own (exact
//! under FIFO, as long as the server's readings do not change the picture; a background request
//! can also be overtaken by later interactive ones); beyond the maximum it fails at once with [`error::WaitTooLong`] (which dimension
//! is short, how long the wait would be). The deadline is also enforced while waiting. A cost
//! larger than a bucket's capacity fails at once with [`error::CostExceedsLimit`]: it never waits
//! forever.
//!
//! # Cancellation
//!
//! - A future dropped while waiting leaves the queue (and wakes the next head).
//! - A future dropped after admission but before the inner call (or whose inner service failed
//!   to become ready) gives back its whole charge: the server never saw it.
//! - After the inner call started, the requests and input charge stay (the server may have seen
//!   the request), the output reservation is given back (no output will be produced for us).
//!   An inner error is treated the same way.
//!
//! # Keys and memory
//!
//! The key is a request's [`RateLimitKey`] extension, else the layer's [`KeyFn`]: [`DefaultKey`]
//! (the `model` of a JSON body, else one global key), [`HostKey`], or a
//! closure ([`key_fn`]). The limiter stores the key and the cost estimate in the request's
//! extensions, so a retry re-enters with the same ones. A state keeps at most
//! [`DEFAULT_MAX_KEYS`] keys (configurable), evicting idle keys least recently used first; a key
//! with waiters or requests in flight is never evicted.
//!
//! # Store
//!
//! Buckets live behind [`Store`] ([`MemoryStore`] by default); see its docs for what a store
//! shared by several processes must provide. [`RateLimitState::snapshot`] shows every key's
//! limits, levels, cooldown, in-flight and queued requests.
//!
//! # Tracing
//!
//! `debug` events for every wait (key, dimension, amount, projected wait), every admission after
//! waiting (waited), every correction (old and new level); `info` events for every limit learned
//! and every cooldown.

mod absorbed;
mod bucket;
mod config;
mod key;
mod layer;
mod service;
mod state;
mod store;

pub mod error;
pub mod future;

pub use absorbed::WaitAbsorbed;
pub use bucket::Bucket;
pub use config::{DEFAULT_WINDOW, Limits, MaxWait, Priority, RampUp};
pub use key::{DefaultKey, HostKey, KeyFn, KeyFnClosure, RateLimitKey, key_fn};
pub use layer::RateLimitLayer;
pub use service::RateLimit;
pub use state::{
    BucketSnapshot, DEFAULT_COOLDOWN, DEFAULT_MAX_KEYS, KeySnapshot, RateLimitState,
    RateLimitStateBuilder, STARTUP_PROBES,
};
pub use store::{Buckets, MemoryStore, Store};
