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

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use super::headers::{Raw, bucket};
use super::parse;
use super::{Dialect, Dimension, RateLimitSnapshot};

const MINUTE: Duration = Duration::from_secs(60);

/// How far outside `[now, now + 60 s]` an RFC 3339 reset measured against the local clock (no
/// `date` header) may fall before it is taken as clock skew and dropped.
pub(crate) const SKEW_TOLERANCE: Duration = Duration::from_secs(2);

/// Reads a reset; `dated` says whether `reference` is the server's `date` header.
/// A reset value (up to 32 bytes, and its length) and what it read as.
type LastReset = ([u8; 32], usize, Option<Option<Duration>>);

fn reset(reference: SystemTime, dated: bool) -> impl Fn(&str) -> Option<Option<Duration>> {
    // The same timestamp usually comes on several lines: against the `date` header (no clock
    // involved, nothing logged) the last one read is remembered.
    let last: Cell<Option<LastReset>> = Cell::new(None);
    move |s| {
        if dated
            && let Some((bytes, len, value)) = last.get()
            && bytes.get(..len) == Some(s.as_bytes())
        {
            return value;
        }
        let value = reset_uncached(s, reference, dated);
        if dated && s.len() <= 32 {
            let mut bytes = [0; 32];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            last.set(Some((bytes, s.len(), value)));
        }
        value
    }
}

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

pub(super) fn read(
    raw: &Raw<'_>,
    reference: SystemTime,
    dated: bool,
    snapshot: &mut RateLimitSnapshot,
) {
    let reset = reset(reference, dated);
    for dimension in Dimension::ALL {
        if let Some(reading) = bucket(&raw.anthropic[dimension.index()], &reset) {
            snapshot.offer(Dialect::Anthropic, dimension, reading.with_window(MINUTE));
        }
    }
    let [input, output] = &raw.priority;
    let priority = |slots| bucket(slots, &reset).map(|r| r.with_window(MINUTE));
    snapshot.offer_priority(priority(input), priority(output));
}
