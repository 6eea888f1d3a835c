//! Configuration of the simulated API: limits, accounting, latency and the builder.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::api::SimApi;
use super::faults::Faults;

/// One model's rate limits, per minute. Each is a token bucket of that capacity, refilled
/// continuously at `limit / 60` per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
}

impl Limits {
    /// Requests, input tokens and output tokens per minute (RPM, ITPM, OTPM).
    pub const fn per_minute(requests: u64, input_tokens: u64, output_tokens: u64) -> Self {
        Limits {
            requests,
            input_tokens,
            output_tokens,
        }
    }

    /// Requests per minute.
    pub const fn requests(&self) -> u64 {
        self.requests
    }

    /// Input tokens per minute.
    pub const fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// Output tokens per minute.
    pub const fn output_tokens(&self) -> u64 {
        self.output_tokens
    }
}

/// How the output-token bucket is charged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutputAccounting {
    /// Output is charged when the response completes, for the tokens actually produced
    /// (Anthropic's current documentation). A request is admitted while the output bucket holds
    /// at least one token, so the bucket can go below zero while many requests are in flight.
    #[default]
    AsProduced,
    /// `max_tokens` is reserved when the request is admitted (the bucket must hold it) and the
    /// unused part is given back when the response completes (an older documented behaviour).
    ReserveMaxTokens,
}

/// When the `anthropic-ratelimit-*` headers of a successful answer are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderTiming {
    /// The buckets right after the request was admitted and charged (what a streaming answer
    /// sends before generating). Requests admitted after it are not in them.
    #[default]
    AtAdmission,
    /// The buckets when the answer is sent, after generation: they include the refill since
    /// admission, this request's produced output and every other request charged meanwhile.
    AtAnswer,
}

/// Which buckets the server enforces and how it reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderDialect {
    /// Anthropic's: separate requests, input-token and output-token buckets, reported as
    /// `anthropic-ratelimit-{requests,input-tokens,output-tokens}-*` plus `tokens-*` (the
    /// token bucket with the smaller share left).
    #[default]
    Separate,
    /// One combined token bucket, as OpenAI-style gateways and third-party mocks have: input
    /// and output are charged to the same bucket, whose per-minute limit is
    /// `input_tokens + output_tokens` of the model's [`Limits`]. Answers carry only
    /// `anthropic-ratelimit-requests-*` and `anthropic-ratelimit-tokens-*`.
    Combined,
    /// Bedrock-style: the buckets of [`Separate`](Self::Separate) are enforced, but no answer
    /// carries a rate-limit header, and a refusal is `429` with
    /// `x-amzn-errortype: ThrottlingException`, the body
    /// `{"message":"Too many requests, please wait before trying again."}` and no
    /// `retry-after`.
    Bedrock,
}

/// How the server counts a request's input tokens (what it charges and reports in
/// `usage.input_tokens`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum InputCounting {
    /// `ceil(text bytes / 4) + messages` ([`count_input_tokens`](super::count_input_tokens)):
    /// the same formula as the client's estimator.
    #[default]
    Text,
    /// `ceil(whole body bytes / bytes_per_token)`: the JSON keys, `model`, `max_tokens` and
    /// metadata count too.
    BodyBytes {
        /// Bytes per token (at least 0.1).
        bytes_per_token: f64,
    },
    /// Content of varying density: each request's text is counted at its own bytes per token,
    /// drawn uniformly from `min..=max` by a seeded hash of its body (the same body is always
    /// counted the same), `ceil(text bytes / ratio) + messages`.
    VaryingDensity {
        /// The densest content's bytes per token (at least 0.1).
        min_bytes_per_token: f64,
        /// The sparsest content's bytes per token.
        max_bytes_per_token: f64,
    },
}

/// The default virtual epoch: 2026-01-01T00:00:00Z.
pub const DEFAULT_EPOCH_UNIX_SECS: u64 = 1_767_225_600;
/// The default body limit: 32 MB, like the Messages API.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The default context window: 200,000 input tokens.
pub const DEFAULT_CONTEXT_WINDOW: u64 = 200_000;
/// The default number of [`SimEvent`](super::SimEvent)s kept (the most recent ones).
pub const DEFAULT_EVENTS_CAPACITY: usize = 100_000;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) models: HashMap<String, Limits>,
    pub(crate) default_limits: Option<Limits>,
    pub(crate) starting_fill: f64,
    pub(crate) accounting: OutputAccounting,
    pub(crate) base_latency: Duration,
    pub(crate) per_token_latency: Duration,
    pub(crate) faults: Faults,
    pub(crate) seed: u64,
    /// Virtual wall-clock time at `build()`, since the Unix epoch.
    pub(crate) epoch: Duration,
    pub(crate) round_remaining: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) context_window: u64,
    pub(crate) events_capacity: usize,
    pub(crate) header_timing: HeaderTiming,
    pub(crate) dialect: HeaderDialect,
    pub(crate) input_counting: InputCounting,
    pub(crate) other_clients: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            models: HashMap::new(),
            default_limits: None,
            starting_fill: 1.0,
            accounting: OutputAccounting::AsProduced,
            base_latency: Duration::from_millis(300),
            per_token_latency: Duration::from_millis(2),
            faults: Faults::new(),
            seed: 0,
            epoch: Duration::from_secs(DEFAULT_EPOCH_UNIX_SECS),
            round_remaining: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            context_window: DEFAULT_CONTEXT_WINDOW,
            events_capacity: DEFAULT_EVENTS_CAPACITY,
            header_timing: HeaderTiming::AtAdmission,
            dialect: HeaderDialect::Separate,
            input_counting: InputCounting::Text,
            other_clients: 0.0,
        }
    }
}

/// Builds a [`SimApi`]. Obtained from [`SimApi::builder`].
///
/// Defaults: no model (declare some with [`model`](Self::model) or
/// [`default_limits`](Self::default_limits)), buckets full at start, output charged as produced,
/// latency 300 ms + 2 ms per output token, no faults, seed 0, virtual epoch
/// 2026-01-01T00:00:00Z, token `remaining` rounded to the nearest thousand, 32 MB body limit,
/// 200,000-token context window, the last 100,000 events kept, headers computed at admission
/// ([`HeaderTiming::AtAdmission`]) in Anthropic's dialect ([`HeaderDialect::Separate`]), input
/// counted like the client's estimator ([`InputCounting::Text`]), no other clients.
#[derive(Clone, Debug, Default)]
pub struct SimApiBuilder {
    config: Config,
}

impl SimApiBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Declares a model and its limits. Requests for undeclared models get
    /// `404 not_found_error` unless [`default_limits`](Self::default_limits) is set.
    pub fn model(mut self, name: impl Into<String>, limits: Limits) -> Self {
        self.config.models.insert(name.into(), limits);
        self
    }

    /// Limits for any model not declared with [`model`](Self::model); each such model gets its
    /// own buckets.
    pub fn default_limits(mut self, limits: Limits) -> Self {
        self.config.default_limits = Some(limits);
        self
    }

    /// How full every bucket is when the API is built, from `0.0` (empty) to `1.0` (full,
    /// the default). The level is rounded down to a whole token.
    ///
    /// # Panics
    /// When `fill` is not within `0.0..=1.0`.
    pub fn starting_fill(mut self, fill: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&fill),
            "starting_fill must be within 0.0..=1.0, got {fill}"
        );
        self.config.starting_fill = fill;
        self
    }

    /// How the output-token bucket is charged (default [`OutputAccounting::AsProduced`]).
    pub fn output_accounting(mut self, accounting: OutputAccounting) -> Self {
        self.config.accounting = accounting;
        self
    }

    /// Latency of an admitted request: `base + per_output_token × output tokens produced`.
    pub fn latency(mut self, base: Duration, per_output_token: Duration) -> Self {
        self.config.base_latency = base;
        self.config.per_token_latency = per_output_token;
        self
    }

    /// The scripted faults (see [`Faults`]).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.config.faults = faults;
        self
    }

    /// The seed of every random choice (faults, request ids, output lengths without a hint).
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// The virtual wall-clock time at which the API is built (default 2026-01-01T00:00:00Z).
    /// `date` headers and resets are this plus the tokio time elapsed since `build()`.
    /// Times before the Unix epoch are taken as the epoch, times after the year 9000 as
    /// 9000-01-01.
    pub fn epoch(mut self, epoch: SystemTime) -> Self {
        const YEAR_9000: Duration = Duration::from_secs(221_845_392_000);
        self.config.epoch = epoch
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .min(YEAR_9000);
        self
    }

    /// Whether `*-tokens-remaining` headers are rounded to the nearest thousand like
    /// Anthropic's (default `true`). Request counts are never rounded.
    pub fn round_remaining(mut self, round: bool) -> Self {
        self.config.round_remaining = round;
        self
    }

    /// Bodies larger than this get `413 request_too_large` (default 32 MB).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }

    /// Prompts of more input tokens than this get `400 invalid_request_error`
    /// (default 200,000).
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.config.context_window = tokens;
        self
    }

    /// How many of the most recent [`SimEvent`](super::SimEvent)s are kept for
    /// [`SimApi::events`] (default 100,000; `0` records nothing).
    pub fn events_capacity(mut self, capacity: usize) -> Self {
        self.config.events_capacity = capacity;
        self
    }

    /// When the rate-limit headers of a successful answer are computed (default
    /// [`HeaderTiming::AtAdmission`]). Refusals are answered at once, so both timings agree on
    /// them.
    pub fn header_timing(mut self, timing: HeaderTiming) -> Self {
        self.config.header_timing = timing;
        self
    }

    /// Which buckets are enforced and which headers report them (default
    /// [`HeaderDialect::Separate`]).
    pub fn header_dialect(mut self, dialect: HeaderDialect) -> Self {
        self.config.dialect = dialect;
        self
    }

    /// How input tokens are counted (default [`InputCounting::Text`]). The count is what the
    /// input (or combined) bucket is charged, what the context window is checked against, what
    /// `usage.input_tokens` and `/v1/messages/count_tokens` report
    /// ([`SimApi::input_tokens_of`] computes it).
    ///
    /// # Panics
    /// When a bytes-per-token ratio is below 0.1 or not finite, or `min > max`.
    pub fn input_counting(mut self, counting: InputCounting) -> Self {
        let ok = |r: f64| r.is_finite() && r >= 0.1;
        match counting {
            InputCounting::Text => {}
            InputCounting::BodyBytes { bytes_per_token } => assert!(
                ok(bytes_per_token),
                "bytes_per_token must be finite and at least 0.1, got {bytes_per_token}"
            ),
            InputCounting::VaryingDensity {
                min_bytes_per_token: lo,
                max_bytes_per_token: hi,
            } => assert!(
                ok(lo) && ok(hi) && lo <= hi,
                "bytes per token must be finite, at least 0.1 and min <= max, got {lo}..={hi}"
            ),
        }
        self.config.input_counting = counting;
        self
    }

    /// Other clients of the same organisation use `share` of every bucket (default `0.0`):
    /// each bucket is drained continuously at `share × limit / 60` per second of virtual time
    /// (rounded to a whole token per minute), so it refills at `(1 − share) × limit / 60` net.
    /// Headers still report the full limit; `remaining` and `reset` show the drain.
    ///
    /// # Panics
    /// When `share` is not within `0.0..1.0`.
    pub fn other_clients(mut self, share: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&share),
            "other_clients share must be within 0.0..1.0, got {share}"
        );
        self.config.other_clients = share;
        self
    }

    /// Builds the API. Its clock starts now (tokio time): fault windows are measured from here.
    pub fn build(self) -> SimApi {
        SimApi::from_config(self.config)
    }
}
