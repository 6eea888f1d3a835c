//! The names of the metrics the layers report with the `metrics` feature; the
//! [module docs](super#metrics) list their kinds, labels and when they are emitted.
//!
//! The names are here without the feature too, so that dashboards and tests can refer to them.

/// Counter: calls entering [`Retry`](crate::retry::Retry) (one per call, whatever the attempts).
pub const CALLS: &str = "llm_limits_calls_total";
/// Counter, label `kind`: how calls ended, the outcome of their last attempt
/// ([`OutcomeKind::as_str`](crate::signals::OutcomeKind::as_str)).
pub const CALL_OUTCOMES: &str = "llm_limits_call_outcomes_total";
/// Histogram: attempts per call (1 when it was not retried).
pub const CALL_ATTEMPTS: &str = "llm_limits_call_attempts";
/// Counter, labels `reason` (the outcome retried) and `source` (where the wait came from:
/// `retry-after`, `retry-after-ms`, `retry-after-date`, `backoff`, `absorbed`, …).
pub const RETRIES: &str = "llm_limits_retries_total";
/// Counter, label `why` (`budget`, `wait_too_long`, `deadline`): calls on which the retry layer
/// gave up with an error although the outcome was retryable.
pub const RETRY_GAVE_UP: &str = "llm_limits_retry_gave_up_total";
/// Gauge: retries the retry budget allows now (set by
/// [`Snapshot::record_metrics`](crate::status::Snapshot::record_metrics)).
pub const RETRY_BUDGET_AVAILABLE: &str = "llm_limits_retry_budget_available";
/// Counter, labels `key` and `kind`: responses the rate limiter learned from, by outcome (`kind
/// = "rate_limited"` counts the server's 429s).
pub const RATE_LIMIT_RESPONSES: &str = "llm_limits_rate_limit_responses_total";
/// Counter, labels `key` and `reason` (`wait_too_long`, `cost_exceeds_limit`): requests the
/// rate limiter refused itself, without sending them.
pub const RATE_LIMIT_REFUSED: &str = "llm_limits_rate_limit_refused_total";
/// Histogram (seconds), labels `key` and `dimension` (what the request waited for: a
/// dimension, `cooldown` or `probe`): the wait of each request that had to wait for budget.
pub const RATE_LIMIT_WAIT_SECONDS: &str = "llm_limits_rate_limit_wait_seconds";
/// Gauge, labels `key` and `dimension`: the limiter's estimate of the budget left (set by
/// [`Snapshot::record_metrics`](crate::status::Snapshot::record_metrics)).
pub const RATE_LIMIT_REMAINING: &str = "llm_limits_rate_limit_remaining";
/// Gauge, labels `key` and `dimension`: the limit in effect (configured or learned; set by
/// [`Snapshot::record_metrics`](crate::status::Snapshot::record_metrics)).
pub const RATE_LIMIT_LIMIT: &str = "llm_limits_rate_limit_limit";
/// Gauge (seconds), label `key`: how long the key's cooldown still runs (0 when none).
pub const RATE_LIMIT_COOLDOWN_SECONDS: &str = "llm_limits_rate_limit_cooldown_seconds";
/// Gauge, label `key`: requests admitted and not finished.
pub const RATE_LIMIT_IN_FLIGHT: &str = "llm_limits_rate_limit_in_flight";
/// Gauge, label `key`: requests waiting for budget.
pub const RATE_LIMIT_QUEUED: &str = "llm_limits_rate_limit_queued";
/// Gauge, label `key` (`*` for the unkeyed breaker): 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "llm_limits_breaker_state";
/// Counter, labels `key`, `to` (`open`, `half_open`, `closed`) and `reason`: breaker
/// transitions.
pub const BREAKER_TRANSITIONS: &str = "llm_limits_breaker_transitions_total";
/// Counter, label `key`: calls an open (or busy half-open) breaker failed at once.
pub const BREAKER_REJECTED: &str = "llm_limits_breaker_rejected_total";
/// Gauge: the concurrency limit (the adaptive one moves).
pub const CONCURRENCY_LIMIT: &str = "llm_limits_concurrency_limit";
/// Gauge: concurrency permits held.
pub const CONCURRENCY_IN_FLIGHT: &str = "llm_limits_concurrency_in_flight";
/// Counter, labels `direction` (`decrease`, `increase`) and `reason`: adaptive limit changes.
pub const CONCURRENCY_LIMIT_CHANGES: &str = "llm_limits_concurrency_limit_changes_total";
/// Counter, label `reason` (an outcome kind, or `error`): requests sent to the secondary by a
/// [`Fallback`](crate::fallback::Fallback).
pub const FALLBACKS: &str = "llm_limits_fallbacks_total";
