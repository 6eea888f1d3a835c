//! Metric emission, one function per event. Without the `metrics` feature every function is an
//! empty `#[inline]` body: the calls compile to nothing.
//!
//! Label values that are `&'static str` are borrowed and a rate-limit key's name is shared (a
//! reference count), so an emission allocates only the label list of its key. Emissions
//! happen outside the locks of the layers.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

#[cfg(feature = "metrics")]
use super::names;

/// A breaker key (rare events: a copy).
#[cfg(feature = "metrics")]
fn owned(key: &str) -> metrics::SharedString {
    metrics::SharedString::from(key.to_owned())
}

/// A rate-limit key as a metric label, shared. Implemented by
/// [`RateLimitKey`](crate::rate_limit::RateLimitKey) in its own module: this module, which
/// every layer reports through, names none of them.
pub(crate) trait KeyLabel {
    /// The key's name as a label value (a reference count, not a copy).
    #[cfg(feature = "metrics")]
    fn label(&self) -> metrics::SharedString;
}

/// A rate-limit key, shared.
#[cfg(feature = "metrics")]
fn shared(key: &impl KeyLabel) -> metrics::SharedString {
    key.label()
}

/// A call entered the retry layer.
#[inline]
pub(crate) fn call() {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::CALLS).increment(1);
}

/// A call ended after `attempts` attempts with an outcome of `kind`.
#[inline]
pub(crate) fn call_done(kind: &'static str, attempts: u32) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(names::CALL_OUTCOMES, "kind" => kind).increment(1);
        metrics::histogram!(names::CALL_ATTEMPTS).record(f64::from(attempts));
    }
}

/// A retry was decided.
#[inline]
pub(crate) fn retry(reason: &'static str, source: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::RETRIES, "reason" => reason, "source" => source).increment(1);
}

/// The retry layer gave up on a retryable outcome.
#[inline]
pub(crate) fn retry_gave_up(why: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::RETRY_GAVE_UP, "why" => why).increment(1);
}

/// The rate limiter learned from a response of outcome `kind`.
#[inline]
pub(crate) fn rate_limit_response(key: &impl KeyLabel, kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::RATE_LIMIT_RESPONSES, "key" => shared(key), "kind" => kind)
        .increment(1);
}

/// The rate limiter refused a request itself.
#[inline]
pub(crate) fn rate_limit_refused(key: &impl KeyLabel, reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::RATE_LIMIT_REFUSED, "key" => shared(key), "reason" => reason)
        .increment(1);
}

/// A request waited `waited` for `dimension` before admission.
#[inline]
pub(crate) fn rate_limit_waited(key: &impl KeyLabel, dimension: &'static str, waited: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(names::RATE_LIMIT_WAIT_SECONDS, "key" => shared(key), "dimension" => dimension)
        .record(waited.as_secs_f64());
}

/// A 429's cooldown started.
#[inline]
pub(crate) fn rate_limit_cooldown(key: &impl KeyLabel, cooldown: Duration) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(names::RATE_LIMIT_COOLDOWN_SECONDS, "key" => shared(key))
        .set(cooldown.as_secs_f64());
}

/// The limiter's view of one bucket.
#[inline]
pub(crate) fn rate_limit_bucket(
    key: &impl KeyLabel,
    dimension: &'static str,
    remaining: u64,
    limit: u64,
) {
    #[cfg(feature = "metrics")]
    {
        let key = shared(key);
        metrics::gauge!(names::RATE_LIMIT_REMAINING, "key" => key.clone(), "dimension" => dimension)
            .set(remaining as f64);
        metrics::gauge!(names::RATE_LIMIT_LIMIT, "key" => key, "dimension" => dimension)
            .set(limit as f64);
    }
}

/// A key's cooldown, in-flight and queued counts.
#[inline]
pub(crate) fn rate_limit_key(
    key: &impl KeyLabel,
    cooldown: Duration,
    in_flight: usize,
    queued: usize,
) {
    #[cfg(feature = "metrics")]
    {
        let key = shared(key);
        metrics::gauge!(names::RATE_LIMIT_COOLDOWN_SECONDS, "key" => key.clone())
            .set(cooldown.as_secs_f64());
        metrics::gauge!(names::RATE_LIMIT_IN_FLIGHT, "key" => key.clone()).set(in_flight as f64);
        metrics::gauge!(names::RATE_LIMIT_QUEUED, "key" => key).set(queued as f64);
    }
}

/// The gauge value of a breaker state name.
#[cfg(feature = "metrics")]
fn breaker_level(state: &str) -> f64 {
    match state {
        "open" => 2.0,
        "half_open" => 1.0,
        _ => 0.0,
    }
}

/// A breaker's state (`closed`, `half_open`, `open`).
#[inline]
pub(crate) fn breaker_state(key: &str, state: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(names::BREAKER_STATE, "key" => owned(key)).set(breaker_level(state));
}

/// A breaker changed state.
#[inline]
pub(crate) fn breaker_transition(key: &str, to: &'static str, reason: &'static str) {
    #[cfg(feature = "metrics")]
    {
        let k = owned(key);
        metrics::counter!(names::BREAKER_TRANSITIONS, "key" => k.clone(), "to" => to, "reason" => reason)
            .increment(1);
        metrics::gauge!(names::BREAKER_STATE, "key" => k).set(breaker_level(to));
    }
}

/// A breaker failed a call at once.
#[inline]
pub(crate) fn breaker_rejected(key: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::BREAKER_REJECTED, "key" => owned(key)).increment(1);
}

/// The concurrency cap's limit and permits held.
#[inline]
pub(crate) fn concurrency(limit: usize, in_flight: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!(names::CONCURRENCY_LIMIT).set(limit as f64);
        metrics::gauge!(names::CONCURRENCY_IN_FLIGHT).set(in_flight as f64);
    }
}

/// The adaptive concurrency limit moved to `new`.
#[inline]
pub(crate) fn concurrency_limit_changed(direction: &'static str, reason: &'static str, new: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(names::CONCURRENCY_LIMIT_CHANGES, "direction" => direction, "reason" => reason)
            .increment(1);
        metrics::gauge!(names::CONCURRENCY_LIMIT).set(new as f64);
    }
}

/// The retry budget's balance.
#[inline]
pub(crate) fn retry_budget(available: u64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(names::RETRY_BUDGET_AVAILABLE).set(available as f64);
}

/// A request went to the secondary.
#[inline]
pub(crate) fn fallback(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::FALLBACKS, "reason" => reason).increment(1);
}
