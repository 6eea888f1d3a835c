//! Observability: metrics through the `metrics` facade (feature `metrics`) and the `tracing`
//! spans and events of the layers; the live snapshot of every shared state is
//! [`status::Snapshot`](crate::status::Snapshot).
//!
//! When a service is slow its operators must see why at a glance: which limit is short, how
//! long requests wait, how often the server refused, whether the breaker is open. The three
//! parts answer at three grains: the snapshot is *now* (serve it on a status endpoint), the
//! metrics are *over time* (dashboards, alerts), the traces are *each call* (why this request
//! took 40 s).
//!
//! Every layer reports through this module; the snapshot, which reads every layer, lives apart
//! in [`status`](crate::status), so no layer depends on the module that reads it.
//!
//! # Metrics
//!
//! With the `metrics` feature the layers report through the [`metrics`](https://docs.rs/metrics)
//! facade to whatever recorder the application installs (Prometheus, StatsD, …). Without it
//! every emission compiles to nothing. Names are `llm_limits_<part>_<what>`, counters end in
//! `_total`, durations are in seconds; labels: `key` (the rate-limit or breaker key, `*` for
//! "every request"), `dimension` (`requests`, `input_tokens`, `output_tokens`, `tokens`, or for
//! a wait `cooldown` / `probe`), `kind` and `reason` (an
//! [`OutcomeKind::as_str`](crate::signals::OutcomeKind::as_str) name). The constants are in
//! [`names`].
//!
//! | name | type | labels | when |
//! |---|---|---|---|
//! | `llm_limits_calls_total` | counter | | a call enters `Retry` |
//! | `llm_limits_call_outcomes_total` | counter | `kind` | a call ends (its last attempt's outcome) |
//! | `llm_limits_call_attempts` | histogram | | a call ends: attempts it took |
//! | `llm_limits_retries_total` | counter | `reason`, `source` | a retry is decided (`source`: `retry-after`, `retry-after-ms`, `retry-after-date`, `backoff`, `absorbed`, `classifier`) |
//! | `llm_limits_retry_gave_up_total` | counter | `why` | a retryable call ends in an error: `budget`, `wait_too_long`, `deadline` |
//! | `llm_limits_retry_budget_available` | gauge | | snapshot |
//! | `llm_limits_rate_limit_responses_total` | counter | `key`, `kind` | the limiter learns from a response (`kind="rate_limited"`: the server's 429s) |
//! | `llm_limits_rate_limit_refused_total` | counter | `key`, `reason` | the limiter refuses a request itself: `wait_too_long`, `cost_exceeds_limit` |
//! | `llm_limits_rate_limit_wait_seconds` | histogram | `key`, `dimension` | a request that waited for budget is admitted |
//! | `llm_limits_rate_limit_remaining` | gauge | `key`, `dimension` | snapshot |
//! | `llm_limits_rate_limit_limit` | gauge | `key`, `dimension` | snapshot |
//! | `llm_limits_rate_limit_cooldown_seconds` | gauge | `key` | a 429; snapshot |
//! | `llm_limits_rate_limit_in_flight` | gauge | `key` | snapshot |
//! | `llm_limits_rate_limit_queued` | gauge | `key` | snapshot |
//! | `llm_limits_breaker_state` | gauge | `key` | a transition; snapshot (0 closed, 1 half-open, 2 open) |
//! | `llm_limits_breaker_transitions_total` | counter | `key`, `to`, `reason` | a transition |
//! | `llm_limits_breaker_rejected_total` | counter | `key` | the breaker fails a call at once |
//! | `llm_limits_concurrency_limit` | gauge | | an adaptive change; snapshot |
//! | `llm_limits_concurrency_in_flight` | gauge | | snapshot |
//! | `llm_limits_concurrency_limit_changes_total` | counter | `direction`, `reason` | the adaptive limit moves |
//! | `llm_limits_fallbacks_total` | counter | `reason` | a request goes to the secondary |
//!
//! "snapshot" means [`Snapshot::record_metrics`](crate::status::Snapshot::record_metrics):
//! budgets refill and requests come and go between events, so the gauges that move continuously
//! are set from a snapshot. Call it where the metrics are scraped (or from a task every few
//! seconds).
//!
//! Cost: one counter or histogram update per event, outside the layers' locks; a keyed metric
//! allocates its label list (the key itself is shared), and only with the feature on. Per call
//! that is `calls`, `call_outcomes`, `call_attempts` and one `rate_limit_responses` per attempt;
//! with the feature on and no recorder installed, the overhead benchmark shows no difference
//! beyond its noise. The gauges that would change on every request are left to
//! [`Snapshot::record_metrics`](crate::status::Snapshot::record_metrics) instead of being set
//! on the hot path.
//!
//! # Tracing
//!
//! [`Retry`](crate::retry::Retry) (outermost in the presets) opens an `INFO` span `llm_call`
//! per call, with the fields `attempt` (updated on each retry) and `key` (recorded by the rate
//! limiter below it, which finds the span in the request's extensions, where the retry layer
//! put a handle to it). Every event of the layers below is inside it, so each carries the
//! attempt and the key. Durations are milliseconds in `*_ms` fields (`wait_ms` a wait decided
//! or projected, `waited_ms` a wait measured); reasons are
//! [`OutcomeKind::as_str`](crate::signals::OutcomeKind::as_str) names. No event carries a
//! header, a body or an API key.
//!
//! | level | message | fields | layer |
//! |---|---|---|---|
//! | DEBUG | `rate limit: waiting` | `key`, `dimension`, `amount`, `wait_ms`, `queued` | rate limit |
//! | DEBUG | `rate limit: admitted after waiting` | `key`, `dimension`, `waited_ms` | rate limit |
//! | INFO | `rate limit: refused, projected wait exceeds the maximum` | `key`, `dimension`, `wait_ms`, `max_wait_ms` | rate limit |
//! | WARN | `rate limit: refused, cost exceeds the limit` | `key`, `dimension`, `amount`, `limit` | rate limit |
//! | INFO | `rate limit: 429, cooling down every request of this key` | `key`, `wait_ms`, `cooldown_ms` | rate limit |
//! | INFO | `rate limit: limit learned` | `key`, `dimension`, `old`, `new`, `window_s` | rate limit |
//! | INFO | `retrying` | `attempt` (the next), `reason`, `status`, `wait_ms`, `sleep_ms`, `source` | retry |
//! | DEBUG | `waiting for the circuit breaker` | `attempt`, `key`, `half_open`, `wait_ms`, `waited_ms` | retry |
//! | DEBUG | `circuit breaker open: not waiting` | `attempts`, `key`, `waited_ms` | retry |
//! | DEBUG | `not retrying` | `attempts`, `reason`, `status`, `why` | retry |
//! | INFO | `giving up` | `attempts`, `reason`, `status`, `server_wait_ms`, `why` (`budget`, `wait_too_long`, `deadline`), `error` | retry |
//! | WARN | `circuit breaker opened` | `key`, `from`, `reason`, `trips`, `open_for_ms` | breaker |
//! | INFO | `circuit breaker half-open`, `circuit breaker closed` | `key`, `from`, `reason` | breaker |
//! | DEBUG | `circuit breaker refused a call` | `key`, `half_open`, `retry_after_ms` | breaker |
//! | INFO | `adaptive concurrency limit decreased` | `old`, `new`, `reason` | adaptive concurrency |
//! | DEBUG | `adaptive concurrency limit increased` | `old`, `new`, `reason` | adaptive concurrency |
//! | INFO | `fallback: sending the request to the secondary` | `reason` | fallback |
//!
//! The breaker's `key` is `*` for the unkeyed breaker, like the rate limiter's global key.
//! Lower-level details (header parsing, error bodies, corrections of the limiter's estimates,
//! key eviction) are `DEBUG` events of their modules.

pub(crate) mod emit;
pub mod names;
pub(crate) mod span;
