//! A simulated Claude-like Messages API for tests, demos and benchmarks.
//!
//! This crate is to `tower-llm-limits` what `tower-test` is to `tower`: the tool its tests,
//! examples and benchmarks run against, kept out of the library so the library's docs and API
//! show the middleware alone. It does not depend on `tower-llm-limits`; any
//! `tower::Service<http::Request<B>>` client can be tested against it.
//!
//! [`SimApi`] is an in-process `tower::Service<http::Request<B>>` that rate-limits like
//! Anthropic's Messages API: per model, three continuously replenished token buckets, 429s with
//! an exact `retry-after`, the full `anthropic-ratelimit-*` header set on every response, latency
//! that grows with the output, and scripted [`Faults`] driven by a seeded RNG. It runs on
//! tokio's clock: under `tokio::time::pause` a ten-minute workload runs in milliseconds, and the
//! same seed gives the same trace. [`Workload`] sends seeded requests through any service and
//! reports them against the theoretical best completion time. [`serve`] puts the same service
//! behind a loopback HTTP/1 server for real clients (reqwest, hyper-util) and other processes.
//!
//! # Testing a stack against the sim
//!
//! A tower `RateLimit` of one request per second in front of a 60-requests-per-minute API is
//! never refused, but it ignores the burst the full bucket offers at the start: 120 requests
//! take two minutes where the limits allow one.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_llm_limits_sim::{Limits, SimApi, Workload};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let api = SimApi::builder()
//!     .model("claude-sonnet-4-5", Limits::per_minute(60, 1_000_000, 1_000_000))
//!     .seed(1)
//!     .build();
//! let stack = ServiceBuilder::new()
//!     .buffer(64)
//!     .rate_limit(1, Duration::from_secs(1))
//!     .service(api.clone());
//!
//! let workload = Workload::new(120, 8).seed(7);
//! let report = workload.run(stack).await; // two simulated minutes, a few real milliseconds
//!
//! assert_eq!(report.ok(), 120);
//! assert_eq!(api.counters().rate_limited(), 0);
//! // The best possible: 60 requests at once, then the other 60 at one per second, and the
//! // last one's answer (at least the shortest of the workload's).
//! let best = workload.theoretical_best(&api);
//! assert_eq!(best, Duration::from_secs(60) + workload.shortest_latency(&api));
//! assert!(report.elapsed() >= Duration::from_secs(119));
//! assert!(report.efficiency(best) < 0.51);
//! # }
//! ```
//!
//! # What the sim counts
//!
//! - **Requests**: each HTTP request costs 1 from the `requests` bucket.
//! - **Input tokens** ([`count_input_tokens`]): `ceil(B / 4) + M`, with `B` the UTF-8 bytes of
//!   all text in `system` and `messages[].content` (strings or `text` blocks) and `M` the number
//!   of messages. [`message_body`] builds bodies of an exact count. That is also what the
//!   client's estimator computes; [`SimApiBuilder::input_counting`] makes the server count
//!   otherwise ([`InputCounting`]: whole-body bytes at a ratio, or content of varying density),
//!   and `usage.input_tokens` always reports what was charged ([`SimApi::input_tokens_of`]).
//! - **Output tokens**: `metadata.sim_output_tokens` (a sim-only hint, see
//!   [`OUTPUT_HINT_FIELD`]) capped at `max_tokens`; without it a seeded function of the body
//!   within `max(1, max_tokens / 5)..=max_tokens`.
//!
//! # Admission
//!
//! Each bucket holds up to its per-minute limit and refills continuously at `limit / 60` per
//! second, in exact integer arithmetic. A request is admitted only if every bucket holds its
//! cost at once: 1 request, its input tokens, and for output either `max_tokens`
//! ([`OutputAccounting::ReserveMaxTokens`]: reserved now, the unused part given back when the
//! answer is sent) or one token ([`OutputAccounting::AsProduced`]: the produced output is charged
//! when the answer is sent, so the bucket may go negative). Under [`HeaderDialect::Combined`]
//! input and output are charged to one token bucket of `input + output` limit instead. Other
//! clients of the organisation ([`SimApiBuilder::other_clients`]) drain a share of every
//! bucket's refill. Otherwise the answer is
//! `429 rate_limit_error` with `retry-after` = the seconds until this request would be admitted,
//! rounded **up**: retrying exactly then succeeds if nothing else used the budget meanwhile. A
//! request larger than a bucket's capacity can never be admitted; its 429 says so and carries
//! the time until that bucket is full.
//!
//! # Headers
//!
//! Every answer carries `content-type: application/json`, a deterministic `request-id` and a
//! `date`; every answer for a known model (successes, 429s, 529s, 5xx, too-long prompts) also
//! carries `anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}`:
//!
//! - they describe the buckets **when the request was admitted or refused**, right after its
//!   charge, like Anthropic's: requests admitted after it and still in flight are not in them
//!   ([`HeaderTiming::AtAnswer`] takes them when a successful answer is sent instead);
//! - `*-remaining` is the whole tokens left, rounded down; token buckets' `remaining` is then
//!   rounded to the nearest thousand (half up) unless [`SimApiBuilder::round_remaining`] is off;
//! - `*-reset` is when the bucket would be full, as RFC 3339 with a `Z` and no fraction,
//!   rounded **up** to the second (at that instant the bucket is full);
//! - `tokens-*` repeats the input or output bucket, whichever has the smaller share left
//!   ([`HeaderDialect::Combined`]: only `requests-*` and `tokens-*`, the combined bucket;
//!   [`HeaderDialect::Bedrock`]: no rate-limit header at all, and a refusal is a 429 with
//!   `x-amzn-errortype: ThrottlingException` and no `retry-after`);
//! - wall-clock times are a virtual epoch ([`SimApiBuilder::epoch`], default
//!   2026-01-01T00:00:00Z) plus the tokio time elapsed since `build()`, plus any
//!   [`Fault::ClockSkew`]. `date` is sent when the answer is sent and is rounded **down** to the
//!   second (as every HTTP-date), so converting a reset against `date` overestimates the wait by
//!   less than two seconds, and never underestimates it.
//!
//! Errors use Anthropic's body `{"type":"error","error":{"type":..,"message":..},"request_id":..}`:
//! 400 `invalid_request_error` (bad JSON, missing fields, prompt above the context window), 404
//! `not_found_error` (unknown model, any path other than `POST /v1/messages`,
//! `POST /v1/chat/completions` and `POST /v1/messages/count_tokens`, which answers
//! `{"input_tokens": n}` without touching the buckets), 413
//! `request_too_large`, 429 `rate_limit_error`, 529 `overloaded_error`, scripted 5xx.
//!
//! # Streaming
//!
//! A request whose body says `"stream": true` is answered with `content-type:
//! text/event-stream` ([`SimBody`]) in Anthropic's event sequence: `message_start` (with
//! `usage.input_tokens`), `content_block_start`, a `ping`, one `content_block_delta` per
//! 8 output tokens, each sent after the per-token latency of its tokens, `content_block_stop`,
//! `message_delta` (with the final `usage.output_tokens`) and `message_stop`. The head goes after
//! the base latency (and any [`Fault::Slow`]) with the rate-limit headers of the admission; the
//! output is charged (the rest of a `max_tokens` reservation given back) when the stream ends,
//! with what it produced. A caller that drops the stream disconnects: generation stops and the
//! reservation is given back, as for a dropped non-streaming call. [`Fault::StreamBreak`] breaks
//! streams after a number of events: an `overloaded_error` or `api_error` event, a stall, or a
//! dropped connection ([`StreamBreak`]). Over [`serve`] the stream is sent chunked.
//!
//! # OpenAI chat completions
//!
//! `POST /v1/chat/completions` takes the same body (`model`, `messages`, `max_tokens` or
//! `max_completion_tokens`), is limited, counted and faulted the same, and answers in OpenAI's
//! shape: a `chat.completion` with `usage.prompt_tokens` / `completion_tokens`, or, streaming,
//! `data:` chunks of `chat.completion.chunk` (the role, one content delta per 8 tokens, the
//! `finish_reason`), then — when the request says `"stream_options": {"include_usage": true}` —
//! a final chunk with empty `choices` and the `usage`, and `data: [DONE]`. A broken stream's
//! error is a `data: {"error":{…}}` chunk. Headers, refusals and error bodies stay as above
//! (choose the dialect with [`SimApiBuilder::header_dialect`]).
//!
//! # Time
//!
//! An admitted request is answered `base + per_output_token × output + slow` after admission
//! ([`SimApiBuilder::latency`]); refusals are answered at once. Everything uses
//! `tokio::time`, so the sim must run inside a tokio runtime; with the clock paused and a
//! current-thread runtime every run is exactly repeatable. The [`SimApi::events`] timeline
//! (arrival, answer time, status, tokens of every request) is what a demo charts admissions and
//! refusals from; it keeps the most recent [`SimApiBuilder::events_capacity`] events. A request
//! dropped before its answer gives back its output reservation and is charged no output.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod api;
mod body;
mod bucket;
mod config;
mod counters;
mod faults;
mod response;
mod server;
mod stream;
mod workload;

pub mod future;

pub use api::{EventKind, Levels, SimApi, SimEvent};
pub use body::{MESSAGE_OVERHEAD_TOKENS, OUTPUT_HINT_FIELD, count_input_tokens, message_body};
pub use config::{
    DEFAULT_CONTEXT_WINDOW, DEFAULT_EPOCH_UNIX_SECS, DEFAULT_EVENTS_CAPACITY,
    DEFAULT_MAX_BODY_BYTES, HeaderDialect, HeaderTiming, InputCounting, Limits, OutputAccounting,
    SimApiBuilder,
};
pub use counters::Counters;
pub use faults::{Fault, Faults};
pub use server::{DEFAULT_GRACE, SimServer, serve, serve_on};
pub use stream::{SimBody, StreamBreak};
pub use workload::{Bound, CallRecord, DEFAULT_MODEL, Dimension, Report, RequestSpec, Workload};

/// Alias for a type-erased error type (the same as `tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
