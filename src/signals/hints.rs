//! Retry hints: `retry-after-ms`, `retry-after`, `x-should-retry`.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::headers::{Raw, Slot};
use super::parse::{self, read};

/// `retry-after-ms`: float milliseconds.
fn millis(s: &str) -> Option<Duration> {
    parse::decimal(s).and_then(|ms| parse::secs_f64_up_to(ms / 1000.0, MAX_RETRY_AFTER))
}

/// The largest reset any parser in this crate returns: one day. Larger server values are
/// clamped to it, so a layer can still tell "a very long wait" from "no wait given".
pub const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest `retry-after` / `retry-after-ms` wait [`RetryHints`] returns: 2³² − 1 ms, about
/// 49.7 days — the bound of the Anthropic SDKs, which honour any positive wait up to what their
/// platform's `sleep` accepts. Larger values are clamped to it. A layer that cares, such as the
/// retry layer, compares the hint with its own ceiling (120 s for OpenAI's policy) and gives up
/// with an error that states the server's wait.
pub const MAX_RETRY_AFTER: Duration = Duration::from_millis(u32::MAX as u64);

/// Which header a server-dictated wait came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WaitSource {
    /// `retry-after-ms` (float milliseconds).
    RetryAfterMs,
    /// `retry-after` as (integer or float) delay-seconds.
    RetryAfterSeconds,
    /// `retry-after` as an HTTP-date.
    RetryAfterDate,
}

/// What a response says about retrying it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryHints {
    retry_after: Option<Duration>,
    source: Option<WaitSource>,
    should_retry: Option<bool>,
}

impl RetryHints {
    /// Reads the hints from `headers`; an HTTP-date is measured against the `date` header when
    /// present, else the local clock.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_headers_at(headers, SystemTime::now())
    }

    /// Like [`from_headers`](Self::from_headers) with an explicit local wall-clock time.
    pub fn from_headers_at(headers: &HeaderMap, now: SystemTime) -> Self {
        Self::from_raw(&Raw::collect(headers), || now)
    }

    /// [`from_headers_at`](Self::from_headers_at) with the headers already sorted; `now` is
    /// called only for an HTTP-date `retry-after` on a response without a usable `date`.
    pub(super) fn from_raw<'a>(raw: &Raw<'a>, now: impl FnOnce() -> SystemTime) -> Self {
        fn header<'a>(slot: Slot<'a>) -> Option<(&'a str, &'a http::HeaderValue)> {
            slot.map(|(n, v)| (n.as_str(), v))
        }
        let retry_after = header(raw.retry_after_ms)
            .and_then(|(n, v)| read(n, v, millis))
            .map(|d| (d, WaitSource::RetryAfterMs))
            .or_else(|| {
                header(raw.retry_after).and_then(|(n, v)| {
                    read(n, v, |s| {
                        if let Some(secs) = parse::decimal(s) {
                            return parse::secs_f64_up_to(secs, MAX_RETRY_AFTER)
                                .map(|d| (d, WaitSource::RetryAfterSeconds));
                        }
                        let at = parse::http_date(s)?;
                        let reference = raw.server_date().unwrap_or_else(now);
                        let wait = parse::until_time_up_to(at, reference, MAX_RETRY_AFTER);
                        Some((wait, WaitSource::RetryAfterDate))
                    })
                })
            });
        let should_retry = header(raw.should_retry).and_then(|(n, v)| {
            read(n, v, |s| {
                if s.eq_ignore_ascii_case("true") {
                    Some(true)
                } else if s.eq_ignore_ascii_case("false") {
                    Some(false)
                } else {
                    None
                }
            })
        });
        RetryHints::new(retry_after, should_retry)
    }

    /// Hints from their parts (`retry_after` is clamped to [`MAX_RETRY_AFTER`]).
    pub fn new(retry_after: Option<(Duration, WaitSource)>, should_retry: Option<bool>) -> Self {
        RetryHints {
            retry_after: retry_after.map(|(d, _)| d.min(MAX_RETRY_AFTER)),
            source: retry_after.map(|(_, s)| s),
            should_retry,
        }
    }

    /// How long the server asked the client to wait, clamped to [`MAX_RETRY_AFTER`]. A date in
    /// the past reads as zero (and the retry layer, like the SDKs, treats a zero wait as none).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Which header [`retry_after`](Self::retry_after) came from.
    pub fn source(&self) -> Option<WaitSource> {
        self.source
    }

    /// `x-should-retry`: `Some(true)` forces a retry, `Some(false)` forbids one.
    pub fn should_retry(&self) -> Option<bool> {
        self.should_retry
    }
}
