//! GitHub-style `x-ratelimit-limit` / `-remaining` / `-reset` headers.
//!
//! Told apart from OpenAI's by the name (no `-requests` / `-tokens` suffix). The reset is Unix
//! epoch seconds on GitHub; gateways that reuse the names with a relative reset are recognised by
//! the value's shape: an integer at or above 1 000 000 000 is an epoch, a smaller number or a
//! Go-style duration is a delay. The window is not stated (GitHub's is an hour), so it is left
//! unset. The limit counts requests.

use std::time::SystemTime;

use super::headers::{Raw, bucket};
use super::parse;
use super::{Dialect, Dimension, RateLimitSnapshot};

pub(super) fn read(raw: &Raw<'_>, reference: SystemTime, snapshot: &mut RateLimitSnapshot) {
    let reset = |s: &str| parse::relative_or_epoch(s, reference).map(Some);
    if let Some(reading) = bucket(&raw.github, reset) {
        snapshot.offer(Dialect::GitHub, Dimension::Requests, reading);
    }
}
