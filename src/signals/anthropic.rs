//! Anthropic `anthropic-ratelimit-*` and `anthropic-priority-*` headers.
//!
//! `*-limit` and `*-remaining` are integers; `*-reset` is an RFC 3339 timestamp at which the
//! bucket is fully replenished, measured here from the response's `date` header (else the local
//! clock). A proxy that rewrites the reset as delay-seconds or a Go-style duration is read too.
//! The limits are per minute, so every reading carries a 60 s window.
//!
//! Without a `date` header the reset can only be measured against the local clock, which may be
//! skewed against the server's (or, on tokio's paused clock, not move at all). A per-minute bucket
//! is full again within a minute, so a reset further ahead than that, or already past, by more
//! than [`SKEW_TOLERANCE`], says the clocks disagree: such a reset is dropped (the reading keeps
//! its limit and remaining) rather than trusted.

use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

use super::headers::{Raw, bucket_with};
use super::parse;
use super::{Dialect, Dimension, RateLimitSnapshot};

const MINUTE: Duration = Duration::from_secs(60);

/// How far outside `[now, now + 60 s]` an RFC 3339 reset measured against the local clock (no
/// `date` header) may fall before it is taken as clock skew and dropped.
pub(crate) const SKEW_TOLERANCE: Duration = Duration::from_secs(2);

fn reset_uncached(s: &str, reference: SystemTime, dated: bool) -> Option<Option<Duration>> {
    if !dated && let Some(early) = reference.checked_sub(SKEW_TOLERANCE) {
        // Measured from `SKEW_TOLERANCE` before now: zero means "past by more than that".
        if let Some(from_early) = parse::rfc3339_from(s, early) {
            if from_early.is_zero() || from_early > MINUTE + 2 * SKEW_TOLERANCE {
                tracing::debug!(
                    reset = s,
                    "anthropic reset outside the minute ahead of the local clock and no date \
                     header: clock skew, ignored"
                );
                return Some(None);
            }
            return Some(Some(from_early.saturating_sub(SKEW_TOLERANCE)));
        }
    }
    parse::rfc3339_from(s, reference)
        .or_else(|| parse::relative_or_epoch(s, reference))
        .map(Some)
}

pub(super) fn read<'a>(
    raw: &Raw<'a>,
    reference: SystemTime,
    dated: bool,
    snapshot: &mut RateLimitSnapshot,
) {
    // The usual shape against the `date` header is read straight from the bytes (it has no
    // whitespace to trim and is plain ASCII): what `reset_uncached` reads it as. Every line of a
    // response usually carries the same timestamp: it is read once.
    let mut last: Option<(&'a [u8], Duration)> = None;
    let mut reset = |(name, value): (&'a HeaderName, &'a HeaderValue)| {
        let bytes = value.as_bytes();
        match last {
            Some((seen, read)) if seen == bytes => return Some(read),
            _ => {}
        }
        match parse::rfc3339_utc_seconds(bytes) {
            Some(secs) if dated => {
                let read = parse::until_unix_nanos(i128::from(secs) * 1_000_000_000, reference);
                last = Some((bytes, read));
                Some(read)
            }
            _ => parse::read(name.as_str(), value, |s| {
                reset_uncached(s, reference, dated)
            })
            .flatten(),
        }
    };
    for dimension in Dimension::ALL {
        if let Some(reading) = bucket_with(&raw.anthropic[dimension.index()], &mut reset) {
            snapshot.offer(Dialect::Anthropic, dimension, reading.with_window(MINUTE));
        }
    }
    let [input, output] = &raw.priority;
    let mut priority = |slots| bucket_with(slots, &mut reset).map(|r| r.with_window(MINUTE));
    let input = priority(input);
    snapshot.offer_priority(input, priority(output));
}
