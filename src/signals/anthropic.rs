//! Anthropic `anthropic-ratelimit-*` and `anthropic-priority-*` headers.
//!
//! `*-limit` and `*-remaining` are integers; `*-reset` is an RFC 3339 timestamp at which the
//! bucket is fully replenished, measured here from the response's `date` header (else the local
//! clock). A proxy that rewrites the reset as delay-seconds or a Go-style duration is read too.
//! The limits are per minute, so every reading carries a 60 s window.

use std::time::{Duration, SystemTime};

use super::headers::{Raw, bucket};
use super::parse;
use super::{Dialect, Dimension, RateLimitSnapshot};

const MINUTE: Duration = Duration::from_secs(60);

fn reset(reference: SystemTime) -> impl Fn(&str) -> Option<Option<Duration>> {
    move |s| {
        parse::rfc3339_from(s, reference)
            .or_else(|| parse::relative_or_epoch(s, reference))
            .map(Some)
    }
}

pub(super) fn read(raw: &Raw<'_>, reference: SystemTime, snapshot: &mut RateLimitSnapshot) {
    for dimension in Dimension::ALL {
        if let Some(reading) = bucket(&raw.anthropic[dimension.index()], reset(reference)) {
            snapshot.offer(Dialect::Anthropic, dimension, reading.with_window(MINUTE));
        }
    }
    let [input, output] = &raw.priority;
    let priority = |slots| bucket(slots, reset(reference)).map(|r| r.with_window(MINUTE));
    snapshot.offer_priority(priority(input), priority(output));
}
