//! OpenAI `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers.
//!
//! Resets are relative Go-style durations (`6m0s`, `1s`, `12ms`, `0.5s`, `1h30m`); some
//! compatible gateways send `-1` or `0` for "unknown", read here as no reset. Plain
//! delay-seconds are accepted too. The limits are per minute (60 s window).

use std::time::Duration;

use super::headers::{Raw, bucket};
use super::parse;
use super::{Dialect, Dimension, RateLimitSnapshot};

fn reset(s: &str) -> Option<Option<Duration>> {
    if s == "0" || s.starts_with('-') {
        // A gateway's "unknown" (`-1`, `0`); other negative values are nonsense: no reset.
        return Some(None);
    }
    parse::go_duration(s)
        .or_else(|| parse::decimal(s).and_then(parse::secs_f64))
        .map(Some)
}

pub(super) fn read(raw: &Raw<'_>, snapshot: &mut RateLimitSnapshot) {
    let dimensions = [Dimension::Requests, Dimension::Tokens];
    for (slots, dimension) in raw.openai.iter().zip(dimensions) {
        if let Some(reading) = bucket(slots, reset) {
            let reading = reading.with_window(Duration::from_secs(60));
            snapshot.offer(Dialect::OpenAi, dimension, reading);
        }
    }
}
