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
//!   circuit breaker can act on; [`DefaultClassifier`] knows Anthropic, OpenAI and AWS Bedrock;
//! - [`ErrorBodyLayer`] reads small non-2xx bodies into an [`ApiError`] and hands them back
//!   unchanged;
//! - [`SignalsLayer`] parses each response once and stores the [`Signals`] in its extensions, so
//!   the layers above read them instead of parsing headers again.
//!
//! Headers the crate cannot read are ignored (a `tracing` debug event names them): a malformed
//! header never fails a request and never panics.

mod body;
mod classify;
mod headers;
mod hints;
mod layer;

pub mod future;

pub use body::{ApiError, DEFAULT_MAX_ERROR_BODY, ErrorBody, ErrorBodyLayer, MaybeBuffered};
pub use classify::{Classify, ClassifyFn, DefaultClassifier, Outcome, OutcomeKind, classify_fn};
pub use headers::{BucketReading, Dialect, Dimension, RateLimitSnapshot};
pub use hints::{MAX_HINT, RetryHints, WaitSource};
pub use layer::{ResponseSignals, Signals, SignalsLayer, WaitAbsorbed};
