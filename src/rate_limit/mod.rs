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
//! nothing is configured, the key is not limited until a throttle comes (see below).
//!
//! **Ramp-up** ([`RampUp`], off by default, [`RateLimitStateBuilder::ramp_up`]): after a cold
//! start or a long idle only a share of each bucket may be used, growing linearly to all of it,
//! against providers' acceleration limits. It is off by default because it only limits the
//! burst, and the burst is what makes the start of a run fast.
//!
//! # Learning from every response: a closed loop
//!
//! The limiter's picture of the server is a hypothesis that every answer tests. Each kind of
//! evidence moves it the way it is worth, and none can freeze a key.
//!
//! **Usage is the truth.** [`ErrorBody`](crate::error_body::ErrorBody) (in every preset) copies a
//! successful JSON answer as it passes to the caller — nothing is held back — and when the body
//! ends reports its `usage` ([`Usage::from_json`](crate::cost::Usage::from_json): Anthropic's
//! `input_tokens` + `cache_creation_input_tokens`, cache reads excluded; OpenAI's
//! `prompt_tokens`/`completion_tokens`) through a [`UsageReport`](crate::cost::UsageReport) the
//! limiter put in the request; a streaming answer's usage is read from its events
//! ([`signals::stream`](crate::signals::stream)): the input of `message_start` settles the input
//! reservation as it passes (with the head), the output of `message_delta` or OpenAI's final
//! usage chunk the output reservation when the stream ends. The request's reservation is then
//! settled to what the server charged, and two ratios are learned per key, in log space with their spread: what the server
//! charges for input ÷ the raw estimate, and the share of `max_tokens` an answer produces. The
//! first answers are averaged (an estimate 40 % off is corrected within a few), later ones
//! weighted 0.1; the spread of the first answers is their own (the distance from the prior is
//! the prior's error, not a spread of the server's counts). A reservation takes the ratio's
//! **high quantile** (mean + 2 standard deviations), not its mean, so it is rarely below what
//! the server will charge; the gap is given back at settlement. A [`Usage`](crate::cost::Usage) in the response's extensions works
//! the same. Without usage (a body never read, a stack without `ErrorBody`), the ratios are
//! learned from successive readings (below).
//!
//! **Readings are coarse, and their instant is unknown.** A reading describes the server right
//! after it charged *this* request (or, for a 429, without it: the limiter gives back the
//! refused request's charge), but whether the server computed it when it admitted the request
//! or when it sent the answer — seconds of refill and other requests apart for a long
//! generation — is not documented. The limiter turns `remaining` (± 500 for Anthropic's rounded
//! tokens) and `reset` (to the second, measured against the response's `date`) into an
//! interval of local instants for the server's `full_at` under **each** timing, adds what that
//! timing cannot contain (read at admission: everything this key dispatched since, and the
//! output it finished since; read at the answer: the output still in flight and this
//! request's own), drops a timing whose two readings contradict each other (a reset tells the
//! two apart once a generation is longer than the readings' resolution; a reset measured
//! against our own clock, without `date`, may not), and takes the union. The local bucket is
//! kept when it lies inside; otherwise it moves to the interval's conservative edge — down at
//! once when the server shows less budget, up only that far when it shows more, so a rounding
//! error never becomes a burst. Monotone per-key counters of the cost dispatched and finished
//! make "what came after this request" one subtraction; an answer that arrives out of order is
//! read correctly.
//!
//! **Other clients of the organisation** (another service, a batch job) take a share of every
//! bucket's refill that only the readings show. The model charges the learned share as time
//! passes, as if it were one more client, and a reading taken at admission is moved on by what
//! the others took since its instant. The share is learned from how far each reading puts the
//! server from what the model *expects* — its level without the cushion its input reservations
//! hold beyond their expected charge, which the server never charged (counted as other clients'
//! use, that cushion hid a quarter of the refill taken by others) — less what the previous
//! reading left uncorrected, so an error the model keeps is counted once. Only readings whose
//! interval is not much wider than their resolution are evidence, each at most what the most
//! other clients could take since the last one; the share moves by each one's evidence over a
//! minute ([`BucketSnapshot::others_share`]).
//!
//! The errors these corrections leave are offsets of the bucket's level, not rates: while the
//! binding bucket never fills, requests still go out at the server's refill rate. Anthropic's
//! `tokens` reading is "the most restrictive token limit in effect": when its limit is the input
//! or output limit it is the same bucket read twice and is skipped; otherwise (a workspace
//! limit, OpenAI's `tokens`, a gateway that reports only `tokens`) it is a combined bucket
//! charged input + output.
//!
//! **How the server charges output is learned too.** Anthropic's current documentation counts
//! output as it is produced (`max_tokens` does not count against the output limit); an older
//! version reserved `max_tokens` at admission, and gateways may still. A key starts by
//! reserving `max_tokens` for each request in flight — safe under both — but never more than
//! the whole bucket, so a `max_tokens` above the output limit (16,000 against Tier 1's 8,000 a
//! minute) waits for a full bucket and goes rather than failing. Proof that the server counts
//! output as produced — a request whose `max_tokens` exceeds the limit was answered, or a
//! reading showing less used than this key's own `max_tokens` in flight would hold under the
//! older accounting — switches its requests to reserving the high quantile of the share of
//! `max_tokens` its answers use; proof of the older accounting (a 429 with room for the request
//! but not for its `max_tokens`) switches them back, and then a `max_tokens` above the limit
//! fails at once with [`CostExceedsLimit`](error::CostExceedsLimit).
//! [`KeySnapshot::output_counted_as_produced`] says what a key learned.
//!
//! **Implausible readings are dropped**, each field on its own: a limit of 0, a `remaining`
//! above the limit, a reset further ahead than the bucket's window (plus 5 s) — which is also
//! what a `date` years off produces. Fixed-window dialects (IETF, GitHub): the reset is the end of
//! a window, so only `remaining` corrects the level, and `remaining: 0` holds the key until the
//! reset.
//!
//! **A 429 is proof the model was too optimistic.** Every refusal of a request the limiter
//! admitted raises a **margin** on the dimension the refusal's readings name (the bucket whose
//! `remaining` is below the request's cost), or on every known one when they name none: a
//! share of the bucket kept free, doubled on each refusal (at most 50 %), decaying with a 300 s
//! time constant while no refusal comes. Its first step is what the refusal lacked, and at least
//! the readings' resolution — a second of refill, or the rounding of `remaining` when that is
//! coarser — since the model cannot be kept closer to the server than that. What a refusal
//! showed was needed (the margin it had and what it lacked) decays with a one-hour time constant
//! instead, like TCP's slow-start threshold: the model's optimism against one server persists,
//! and a margin back below it within minutes is refused again (refusals about every five
//! minutes, over 1 % of the attempts of a key sending every few seconds). Refusals of requests sent
//! before the last raise are the same episode and raise nothing again. A margin is an offset of
//! the level, not a rate: it costs one delay of `margin / rate`, not throughput, which is why it
//! may be generous and relax slowly. Each bucket's margin is in
//! [`BucketSnapshot::margin`].
//!
//! **No headers at all** (Bedrock's `ThrottlingException`, Vertex, gateways that strip them):
//! the key is paced on a request rate learned from throttles alone, as the AWS SDKs' adaptive
//! mode does: after a throttle the rate drops to 0.7 of what was being sent and grows back along
//! a cubic curve to it within 20 s (or about 40 requests), then probes beyond it; requests are
//! spaced at the rate, never sent in bursts ([`KeySnapshot::throttle_rate`]). Such a throttle
//! sets no cooldown of its own unless it carries `retry-after`. Refusals in a row, of requests
//! each sent after the one before was refused, mean the server's bucket is in debt: each doubles
//! the gap (to 20 s at most) until a request sent after them is accepted. Before the first
//! throttle the key starts slowly, as TCP does: one request a second, doubling every 4 s while
//! the requests really go that fast (a concurrency cap below or few callers freeze the growth),
//! unpaced once past 256 a second — and with at most a window of requests out, 4 at first and
//! one more for each answer (TCP's congestion window): a server charging output as it is
//! produced admits everything sent before its bucket runs dry and charges it afterwards, so
//! long answers sent at the rate alone left it minutes in debt at the first throttle. A server's bucket may hold a minute of refill; callers that send unpaced
//! into it empty it within a second and have every request in flight refused with the first.
//! The pace counts requests sent, not admitted: while one admitted earlier is still held by a
//! layer below, the next waits for it.
//!
//! # Nothing blocks for ever
//!
//! A cooldown, a fixed-window reset or a limit below a request's cost that would hold a key
//! longer than [`RECHECK_INTERVAL`] (60 s) lets **one** request through after that long to ask
//! the server again, and another one each interval while the server keeps refusing; a normal
//! answer to it ends the cooldown (a tier upgrade is learned from it). Until then a request
//! whose cost exceeds a limit the server reported fails at once with
//! [`error::CostExceedsLimit`] (a configured limit below the cost always does: it is yours),
//! and one whose projected wait exceeds its maximum with [`error::WaitTooLong`].
//!
//! # Cooldown
//!
//! A 429 ([`OutcomeKind::RateLimited`](crate::signals::OutcomeKind::RateLimited)) holds **every**
//! request of the key — every clone, every layer sharing the state — until its `retry-after`
//! ([`DEFAULT_COOLDOWN`], 0.5 s like the SDKs' first backoff, when absent), at most until the
//! re-check above. The response gets a [`WaitAbsorbed`] in its
//! extensions so a retry layer above re-enters at once instead of sleeping the same wait again.
//! After the cooldown the waiters are released one by one as their cost fits the (corrected)
//! buckets: at the refill rate, never as a herd. A spend-limit 429 does not cool down: waiting
//! cannot help.
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
//! The order is the **call's**: under [`Retry`](crate::retry::Retry) every attempt of a call
//! keeps the place of its first arrival, so a refused request's retry goes before the calls
//! that arrived after it instead of waiting the whole queue again (behind a queue minutes deep,
//! that second wait ran calls past their deadline). On a key paced on throttles alone (no
//! rate-limit headers) a retry queues behind as many waiting calls as refusals came in a row,
//! and one more: a server in debt refuses in runs, and at the front one call would take every
//! refusal of a run and exhaust its retries; at the back it waited the whole queue again.
//! (Header-less sweep points of seeds 0–5, `goodput -- --sweep --seed N --point P`: at the
//! back, 2 calls of 48 points failed, one past its 10-minute deadline; now none, for 484
//! throttles of 20,377 attempts against 467 of 20,360.)
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
pub(crate) use config::CallPlace;
pub use config::{DEFAULT_WINDOW, Limits, MaxWait, Priority, RampUp};
pub use key::{DefaultKey, HostKey, KeyFn, KeyFnClosure, RateLimitKey, key_fn};
pub use layer::RateLimitLayer;
pub use service::RateLimit;
#[cfg(feature = "redis")]
pub(crate) use state::MARGIN_DECAY;
pub use state::{
    BucketSnapshot, DEFAULT_COOLDOWN, DEFAULT_MAX_KEYS, KeySnapshot, RECHECK_INTERVAL,
    RateLimitState, RateLimitStateBuilder, STARTUP_PROBES,
};
pub use store::{Buckets, Estimate, Learned, MemoryStore, ServerReading, Store};
