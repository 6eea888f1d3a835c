//! Rate-limit header dialects → one normalised [`RateLimitSnapshot`].

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::parse::{self, read};
use super::{anthropic, github, ietf, openai};

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
/// tests on a paused clock exact); without a `date` header the local wall clock is used, and an
/// Anthropic reset that falls outside the minute ahead of it (a per-minute bucket is full again
/// within a minute) is taken as clock skew and dropped, keeping the reading's limit and remaining.
///
/// When several dialects are present, each dimension is taken from the first dialect that
/// reports it, in the order Anthropic, OpenAI, IETF structured, IETF legacy, GitHub; the
/// [`dialect`](Self::dialect) is the first of them that reported anything. See the
/// [module docs](super) for the rules of each dialect.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue};
/// use tower_llm_limits::signals::{Dialect, Dimension, RateLimitSnapshot};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("date", HeaderValue::from_static("Mon, 23 Nov 2026 09:14:00 GMT"));
/// headers.insert("anthropic-ratelimit-requests-limit", HeaderValue::from_static("50"));
/// headers.insert("anthropic-ratelimit-requests-remaining", HeaderValue::from_static("49"));
/// headers.insert(
///     "anthropic-ratelimit-requests-reset",
///     HeaderValue::from_static("2026-11-23T09:14:01Z"),
/// );
/// headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("1m30s"));
///
/// let snapshot = RateLimitSnapshot::from_headers(&headers);
/// assert_eq!(snapshot.dialect(), Some(Dialect::Anthropic));
/// let requests = snapshot.get(Dimension::Requests).unwrap();
/// assert_eq!(requests.limit(), Some(50));
/// assert_eq!(requests.remaining(), Some(49));
/// // Measured from the response's `date`, whatever the local clock says.
/// assert_eq!(requests.reset(), Some(Duration::from_secs(1)));
/// assert_eq!(requests.window(), Some(Duration::from_secs(60)));
/// // OpenAI's tokens header fills the dimension Anthropic did not report.
/// let tokens = snapshot.get(Dimension::Tokens).unwrap();
/// assert_eq!(tokens.reset(), Some(Duration::from_secs(90)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitSnapshot {
    buckets: [Option<BucketReading>; 4],
    priority_input_tokens: Option<BucketReading>,
    priority_output_tokens: Option<BucketReading>,
    dialect: Option<Dialect>,
    /// Absolute resets were measured against the local clock (no `date` header).
    undated: bool,
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
        Self::from_raw(headers, &Raw::collect(headers), || now)
    }

    /// [`from_headers_at`](Self::from_headers_at) with the headers already sorted; `now` is
    /// called only when the response has rate-limit headers and no usable `date` header.
    pub(super) fn from_raw(
        headers: &HeaderMap,
        raw: &Raw<'_>,
        now: impl FnOnce() -> SystemTime,
    ) -> Self {
        let mut snapshot = RateLimitSnapshot::default();
        if !raw.any {
            return snapshot;
        }
        let date = raw.server_date();
        snapshot.undated = date.is_none();
        let reference = date.unwrap_or_else(now);
        anthropic::read(raw, reference, date.is_some(), &mut snapshot);
        openai::read(raw, &mut snapshot);
        ietf::read_structured(headers, raw, &mut snapshot);
        ietf::read_legacy(headers, raw, reference, &mut snapshot);
        github::read(raw, reference, &mut snapshot);
        snapshot
    }

    /// Sets `reading` for `dimension` unless a dialect read earlier (higher precedence) already
    /// did; the first dialect that contributes becomes the snapshot's dialect.
    pub(super) fn offer(&mut self, dialect: Dialect, dimension: Dimension, reading: BucketReading) {
        let slot = &mut self.buckets[dimension.index()];
        if slot.is_none() {
            *slot = Some(reading);
            self.dialect.get_or_insert(dialect);
        }
    }

    /// Sets the Anthropic Priority Tier readings.
    pub(super) fn offer_priority(
        &mut self,
        input: Option<BucketReading>,
        output: Option<BucketReading>,
    ) {
        if input.is_some() || output.is_some() {
            self.dialect.get_or_insert(Dialect::Anthropic);
        }
        self.priority_input_tokens = input;
        self.priority_output_tokens = output;
    }

    /// Whether absolute resets (Anthropic's, GitHub's) were measured against the local clock
    /// because the response had no `date` header: they then carry the clocks' skew.
    pub(crate) fn undated(&self) -> bool {
        self.undated
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

/// One header line: its name (for the debug event when it cannot be read) and its value.
pub(super) type Slot<'a> = Option<(&'a HeaderName, &'a HeaderValue)>;

/// Index of `*-limit` in a `[Slot; 3]`.
pub(super) const LIMIT: usize = 0;
/// Index of `*-remaining` in a `[Slot; 3]`.
pub(super) const REMAINING: usize = 1;
/// Index of `*-reset` in a `[Slot; 3]`.
pub(super) const RESET: usize = 2;

/// The rate-limit headers of a response, sorted by dialect in one pass over the header map,
/// without reading any value yet. The first line of a repeated header wins (except for the IETF
/// structured fields, whose lines are all read).
#[derive(Default)]
pub(super) struct Raw<'a> {
    pub(super) date: Slot<'a>,
    /// `anthropic-ratelimit-{dimension}-{field}`, indexed by [`Dimension::index`], then field.
    pub(super) anthropic: [[Slot<'a>; 3]; 4],
    /// `anthropic-priority-{input,output}-tokens-{field}`.
    pub(super) priority: [[Slot<'a>; 3]; 2],
    /// `x-ratelimit-{field}-{requests,tokens}`.
    pub(super) openai: [[Slot<'a>; 3]; 2],
    /// `x-ratelimit-{limit,remaining,reset}`.
    pub(super) github: [Slot<'a>; 3],
    /// `ratelimit-{limit,remaining,reset}`.
    pub(super) legacy: [Slot<'a>; 3],
    /// A `ratelimit` header is present.
    pub(super) structured: bool,
    /// A `ratelimit-policy` header is present.
    pub(super) policy: bool,
    /// Any rate-limit header is present.
    pub(super) any: bool,
    /// `retry-after-ms` (a retry hint, not a rate-limit header: it leaves `any` alone).
    pub(super) retry_after_ms: Slot<'a>,
    /// `retry-after`.
    pub(super) retry_after: Slot<'a>,
    /// `x-should-retry`.
    pub(super) should_retry: Slot<'a>,
}

fn field(s: &str) -> Option<usize> {
    match s {
        "limit" => Some(LIMIT),
        "remaining" => Some(REMAINING),
        "reset" => Some(RESET),
        _ => None,
    }
}

/// `{dimension}-{limit,remaining,reset}` → the dimension and the field.
fn split_field(s: &str) -> Option<(&str, usize)> {
    if let Some(dim) = s.strip_suffix("-limit") {
        Some((dim, LIMIT))
    } else if let Some(dim) = s.strip_suffix("-remaining") {
        Some((dim, REMAINING))
    } else {
        s.strip_suffix("-reset").map(|dim| (dim, RESET))
    }
}

fn put<'a>(slot: &mut Slot<'a>, name: &'a HeaderName, value: &'a HeaderValue) {
    if slot.is_none() {
        *slot = Some((name, value));
    }
}

impl<'a> Raw<'a> {
    pub(super) fn collect(headers: &'a HeaderMap) -> Self {
        let mut raw = Raw::default();
        raw.fill(headers);
        raw
    }

    /// [`collect`](Self::collect) into an empty `Raw` the caller holds (no copy of the result).
    pub(super) fn fill(&mut self, headers: &'a HeaderMap) {
        let raw = self;
        for (name, value) in headers {
            let n = name.as_str();
            let slot = if n == "date" {
                put(&mut raw.date, name, value);
                continue;
            } else if let Some(rest) = n.strip_prefix("anthropic-ratelimit-") {
                // These names are read on every response: the field is cut off the end and
                // the dimensions left all differ in length, so each name costs a few word
                // compares and no call to `memcmp`.
                let Some((dim, f)) = split_field(rest) else {
                    continue;
                };
                let dim = match dim {
                    "requests" => Dimension::Requests,
                    "input-tokens" => Dimension::InputTokens,
                    "output-tokens" => Dimension::OutputTokens,
                    "tokens" => Dimension::Tokens,
                    _ => continue,
                };
                Some(&mut raw.anthropic[dim.index()][f])
            } else if let Some(rest) = n.strip_prefix("anthropic-priority-") {
                let Some((dim, f)) = split_field(rest) else {
                    continue;
                };
                let i = match dim {
                    "input-tokens" => 0,
                    "output-tokens" => 1,
                    _ => continue,
                };
                Some(&mut raw.priority[i][f])
            } else if let Some(rest) = n.strip_prefix("retry-after") {
                match rest {
                    "" => put(&mut raw.retry_after, name, value),
                    "-ms" => put(&mut raw.retry_after_ms, name, value),
                    _ => {}
                }
                continue;
            } else if n == "x-should-retry" {
                put(&mut raw.should_retry, name, value);
                continue;
            } else if let Some(rest) = n.strip_prefix("x-ratelimit-") {
                if let Some(f) = field(rest) {
                    Some(&mut raw.github[f])
                } else {
                    rest.split_once('-').and_then(|(f, dim)| {
                        let i = match dim {
                            "requests" => 0,
                            "tokens" => 1,
                            _ => return None,
                        };
                        Some(&mut raw.openai[i][field(f)?])
                    })
                }
            } else if let Some(rest) = n.strip_prefix("ratelimit") {
                match rest {
                    "" => {
                        raw.structured = true;
                        raw.any = true;
                        None
                    }
                    "-policy" => {
                        raw.policy = true;
                        raw.any = true;
                        None
                    }
                    _ => rest
                        .strip_prefix('-')
                        .and_then(field)
                        .map(|f| &mut raw.legacy[f]),
                }
            } else {
                None
            };
            if let Some(slot) = slot {
                put(slot, name, value);
                raw.any = true;
            }
        }
    }

    /// The server's clock: the `date` header, when readable. Absolute resets are measured from
    /// it (else from the local clock), which cancels clock skew between server and client.
    pub(super) fn server_date(&self) -> Option<SystemTime> {
        self.date
            .and_then(|(n, v)| read(n.as_str(), v, parse::http_date))
    }
}

/// Reads one bucket's `limit`, `remaining` and `reset` lines. `reset` returns `None` when the
/// value is unreadable (logged) and `Some(None)` when it is a documented "unknown" value.
pub(super) fn bucket(
    slots: &[Slot<'_>; 3],
    reset: impl Fn(&str) -> Option<Option<Duration>>,
) -> Option<BucketReading> {
    bucket_with(slots, |(n, v)| read(n.as_str(), v, &reset).flatten())
}

/// [`bucket`] with a reader of the `reset` line that takes the line itself.
pub(super) fn bucket_with<'a>(
    slots: &[Slot<'a>; 3],
    reset: impl FnOnce((&'a HeaderName, &'a HeaderValue)) -> Option<Duration>,
) -> Option<BucketReading> {
    if slots.iter().all(Option::is_none) {
        return None;
    }
    let number = |slot: Slot<'_>| slot.and_then(|(n, v)| parse::read_uint(n.as_str(), v));
    let limit = number(slots[LIMIT]);
    let remaining = number(slots[REMAINING]);
    let reset = slots[RESET].and_then(reset);
    if limit.is_none() && remaining.is_none() && reset.is_none() {
        return None;
    }
    Some(BucketReading::new(limit, remaining, reset))
}
