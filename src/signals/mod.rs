//! Response signals: what an HTTP response (or a transport error) tells a client about the
//! server's limits, when to try again, and whether to try again at all.
//!
//! Every other layer in this crate stands on this module. It is pure and allocation-light:
//!
//! - [`RateLimitSnapshot`] normalises every rate-limit header dialect (Anthropic, OpenAI, IETF
//!   `RateLimit`/`RateLimit-Policy`, GitHub-style) into one reading per [`Dimension`];
//! - [`RetryHints`] reads `retry-after-ms`, `retry-after` (seconds or HTTP-date) and
//!   `x-should-retry`;
//! - [`Classify`] turns a response or an error into an [`Outcome`] a retry policy, rate limiter and
//!   circuit breaker can act on; [`DefaultClassifier`] knows Anthropic, OpenAI and AWS Bedrock,
//!   and the errors by which a layer of this crate ends a call itself (an open breaker, a wait
//!   too long, a retry given up), which it classifies as [`OutcomeKind::Rejected`] (they are
//!   defined here, below the layers, and each layer re-exports its own);
//! - [`ApiError`] reads a provider's JSON error body (the
//!   [`ErrorBodyLayer`](crate::error_body::ErrorBodyLayer) reads small non-2xx bodies into one
//!   and hands them back unchanged);
//! - [`ResponseSignals`] is all of that for one response, parsed once, and
//!   [`ResponseSignals::outcome_or`] the one rule by which every layer decides a response's
//!   outcome;
//! - [`StreamOutcome`] is the outcome of a streaming answer (`text/event-stream`), known when
//!   its stream ends: [`ErrorBody`](crate::error_body::ErrorBody) watches every successful
//!   stream as it passes (see [`sse`] for the parser, [`stream`] for what is reported) and the
//!   breaker and the adaptive cap count a stream's end as they count a head;
//! - [`SignalsLayer`] parses each response once and stores the [`ResponseSignals`] in its
//!   extensions, so the layers above read them instead of parsing headers again.
//!
//! Headers the crate cannot read are ignored (a `tracing` debug event names them, never printing
//! a value): a malformed header never fails a request and never panics.
//!
//! # Dialects
//!
//! | dialect | headers | reset | window |
//! |---|---|---|---|
//! | [Anthropic](Dialect::Anthropic) | `anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}`, `anthropic-priority-{input,output}-tokens-*` | RFC 3339 timestamp | 60 s |
//! | [OpenAI](Dialect::OpenAi) | `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` | Go duration (`6m0s`, `12ms`, `0.5s`); `-1`/`0` = unknown | 60 s |
//! | [IETF structured](Dialect::IetfStructured) | `RateLimit-Policy: "p";q=100;w=60;qu="tokens"`, `RateLimit: "p";r=50;t=30` | `t` seconds | `w` |
//! | [IETF legacy](Dialect::IetfLegacy) | `RateLimit-Limit` / `-Remaining` / `-Reset` (+ `RateLimit-Policy: 10;w=1`) | seconds | from the policy |
//! | [GitHub](Dialect::GitHub) | `x-ratelimit-limit` / `-remaining` / `-reset` | Unix epoch seconds | — |
//!
//! OpenAI and GitHub share the `x-ratelimit-` prefix: OpenAI's names end in `-requests` or
//! `-tokens`. A reset on the GitHub-style names is read by its shape: an integer at or above
//! 1 000 000 000 is epoch seconds, a smaller number or a Go duration is a delay (gateways reuse
//! the names that way). Several IETF policies for one dimension: the most restrictive one wins
//! (least budget left, then latest reset, then smallest quota).
//!
//! **Precedence.** A response may carry several dialects (a gateway adding its own headers to
//! the provider's). Each [`Dimension`] is read from the first dialect that reports it, in the
//! order Anthropic, OpenAI, IETF structured, IETF legacy, GitHub: the provider's own headers
//! describe the limit that matters, a gateway's are a coarser copy. The snapshot's
//! [`dialect`](RateLimitSnapshot::dialect) is the first dialect that reported anything.
//!
//! **Time and clamping.** Every reset and wait is a [`Duration`](std::time::Duration) from the
//! moment the server produced the response. Absolute times (RFC 3339, epoch seconds,
//! HTTP-dates) are measured against the response's `date` header when it is readable, which
//! cancels clock skew between server and client, else against the local clock. A time in the
//! past reads as zero. Values are never negative and never above [`MAX_HINT`] (one day;
//! [`MAX_RETRY_AFTER`], about 49.7 days, for `retry-after`/`retry-after-ms`): larger
//! values are clamped, not rejected, so a layer can still tell "the server asked for a very long
//! wait" from "no wait given". Negative, NaN, infinite and unreadable values are ignored.
//! Parsing allocates nothing on the way (the structured fields are read through `sfv`'s visitor
//! interface).

mod anthropic;
mod api_error;
mod classify;
pub(crate) mod decision;
mod github;
mod headers;
mod hints;
mod ietf;
mod layer;
mod openai;
mod parse;
mod response;
mod service;
#[cfg(feature = "tower-http")]
mod tower_http_classify;
pub(crate) mod usage;

pub mod future;
pub mod sse;
pub mod stream;

pub use api_error::ApiError;
pub use classify::{Classify, ClassifyFn, DefaultClassifier, Outcome, OutcomeKind, classify_fn};
pub use headers::{BucketReading, Dialect, Dimension, RateLimitSnapshot};
pub use hints::{MAX_HINT, MAX_RETRY_AFTER, RetryHints, WaitSource};
pub use layer::SignalsLayer;
pub use response::ResponseSignals;
pub use service::Signals;
pub use stream::{
    DEFAULT_STREAM_IDLE_TIMEOUT, StreamInterrupted, StreamOutcome, StreamStartFailed,
};
#[cfg(feature = "tower-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-http")))]
pub use tower_http_classify::OutcomesAsFailures;
