//! The live [`Snapshot`] of every shared state.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::{self, CircuitBreakerLayer};
use crate::concurrency::{AdaptiveLimiter, Limiter};
use crate::observe::emit;
use crate::rate_limit::{KeySnapshot, RateLimitKey, RateLimitState};
use crate::retry::Budget;
use crate::signals::Dimension;

/// What the layers of a stack know at one instant: per rate-limit key its limits, remaining
/// budget, cooldown, requests in flight and waiting; each breaker's state; the concurrency cap;
/// the retry budget. See the [module docs](super).
///
/// Instants are turned into durations from the moment the snapshot was taken (tokio's clock),
/// so a snapshot can be printed ([`Display`](fmt::Display)) or served as JSON
/// ([`to_json`](Self::to_json)) as it is.
///
/// It holds no secret: keys are what the key functions made of the requests (the model, the
/// host, or what your own [`KeyFn`](crate::rate_limit::KeyFn) returns), and nothing else of a
/// request is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    rate_limits: Vec<KeyStatus>,
    breakers: Vec<BreakerStatus>,
    concurrency: Option<ConcurrencyStatus>,
    retry_budget: Option<RetryBudgetStatus>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::new()
    }
}

impl Snapshot {
    /// An empty snapshot; add the parts with the `with_*` methods.
    pub fn new() -> Self {
        Snapshot {
            rate_limits: Vec::new(),
            breakers: Vec::new(),
            concurrency: None,
            retry_budget: None,
        }
    }

    /// Adds every key of a rate limiter's `state` (after those already added).
    pub fn with_rate_limit(mut self, state: &RateLimitState) -> Self {
        let now = Instant::now();
        self.rate_limits
            .extend(state.snapshot().iter().map(|k| KeyStatus::new(k, now)));
        self
    }

    /// Adds every breaker of `layer` (the unkeyed one first, then the keyed ones by key).
    pub fn with_breaker<C>(self, layer: &CircuitBreakerLayer<C>) -> Self {
        self.with_breaker_states(layer.states())
    }

    /// Adds breakers from their states, as [`CircuitBreaker::states`] or
    /// [`CircuitBreakerLayer::states`] return them (`None`: the unkeyed breaker).
    ///
    /// [`CircuitBreaker::states`]: crate::breaker::CircuitBreaker::states
    pub fn with_breaker_states(
        mut self,
        states: impl IntoIterator<Item = (Option<String>, breaker::State)>,
    ) -> Self {
        let now = Instant::now();
        let mut states: Vec<_> = states.into_iter().collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        self.breakers
            .extend(states.into_iter().map(|(key, state)| BreakerStatus {
                key,
                state,
                half_open_in: match state {
                    breaker::State::Open { until } => Some(until.saturating_duration_since(now)),
                    _ => None,
                },
            }));
        self
    }

    /// Sets the concurrency cap to a fixed [`Limiter`].
    pub fn with_concurrency(mut self, limiter: &Limiter) -> Self {
        self.concurrency = Some(ConcurrencyStatus {
            adaptive: None,
            limit: limiter.limit(),
            in_flight: limiter.in_flight(),
            waiting: limiter.waiting(),
        });
        self
    }

    /// Sets the concurrency cap to an [`AdaptiveLimiter`].
    pub fn with_adaptive_concurrency(mut self, limiter: &AdaptiveLimiter) -> Self {
        let config = limiter.config();
        self.concurrency = Some(ConcurrencyStatus {
            adaptive: Some((config.min_limit(), config.max_limit())),
            limit: limiter.limit(),
            in_flight: limiter.in_flight(),
            waiting: limiter.waiting(),
        });
        self
    }

    /// Sets the retry budget.
    pub fn with_retry_budget(mut self, budget: &Budget) -> Self {
        self.retry_budget = Some(RetryBudgetStatus {
            available: budget.available(),
            window: budget.window(),
        });
        self
    }

    /// The rate-limit keys, in the order they were added (each state's keys sorted).
    pub fn rate_limits(&self) -> &[KeyStatus] {
        &self.rate_limits
    }

    /// The rate-limit status of `key`, if the snapshot has it.
    pub fn rate_limit(&self, key: &str) -> Option<&KeyStatus> {
        self.rate_limits.iter().find(|k| k.key.as_str() == key)
    }

    /// The breakers.
    pub fn breakers(&self) -> &[BreakerStatus] {
        &self.breakers
    }

    /// The breaker of `key` (`None`: the unkeyed breaker), if the snapshot has it.
    pub fn breaker(&self, key: Option<&str>) -> Option<&BreakerStatus> {
        self.breakers.iter().find(|b| b.key.as_deref() == key)
    }

    /// The concurrency cap, if one was added.
    pub fn concurrency(&self) -> Option<&ConcurrencyStatus> {
        self.concurrency.as_ref()
    }

    /// The retry budget, if one was added.
    pub fn retry_budget(&self) -> Option<&RetryBudgetStatus> {
        self.retry_budget.as_ref()
    }

    /// Sets every gauge of the [`metrics` scheme](super#metrics) from this snapshot: remaining
    /// budget and limit per key and dimension, cooldown, in-flight and queued per key, breaker
    /// states, the concurrency limit and in-flight, the retry budget.
    ///
    /// The layers set some gauges themselves when something happens (a response, a breaker
    /// transition, an adaptive limit change), but budgets refill and requests come and go
    /// between events: call this where the metrics are scraped, or every few seconds. Without
    /// the `metrics` feature it does nothing.
    pub fn record_metrics(&self) {
        for k in &self.rate_limits {
            for d in &k.dimensions {
                emit::rate_limit_bucket(&k.key, d.dimension.as_str(), d.remaining, d.limit);
            }
            emit::rate_limit_key(
                &k.key,
                k.cooldown.unwrap_or_default(),
                k.in_flight,
                k.queued,
            );
        }
        for b in &self.breakers {
            emit::breaker_state(b.key.as_deref().unwrap_or("*"), b.state.as_str());
        }
        if let Some(c) = &self.concurrency {
            emit::concurrency(c.limit, c.in_flight);
        }
        if let Some(b) = &self.retry_budget {
            emit::retry_budget(b.available);
        }
    }

    /// The snapshot as JSON, for a status endpoint; the shape is in the
    /// [module docs](super#json).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let secs = |d: Duration| json!(d.as_secs_f64());
        let rate_limits: Vec<Value> = self
            .rate_limits
            .iter()
            .map(|k| {
                let mut dimensions = Map::new();
                for d in &k.dimensions {
                    dimensions.insert(
                        d.dimension.as_str().to_owned(),
                        json!({
                            "limit": d.limit,
                            "configured": d.configured,
                            "learned": d.learned,
                            "remaining": d.remaining,
                            "window_s": secs(d.window),
                            "full_in_s": secs(d.full_in),
                        }),
                    );
                }
                json!({
                    "key": k.key.as_str(),
                    "dimensions": dimensions,
                    "cooldown_s": k.cooldown.map(secs),
                    "in_flight": k.in_flight,
                    "queued": k.queued,
                    "input_correction": k.input_correction,
                })
            })
            .collect();
        let breakers: Vec<Value> = self
            .breakers
            .iter()
            .map(|b| {
                json!({
                    "key": b.key,
                    "state": b.state.as_str(),
                    "half_open_in_s": b.half_open_in.map(secs),
                })
            })
            .collect();
        let concurrency = self.concurrency.as_ref().map(|c| {
            json!({
                "adaptive": c.adaptive.is_some(),
                "limit": c.limit,
                "min": c.adaptive.map(|a| a.0),
                "max": c.adaptive.map(|a| a.1),
                "in_flight": c.in_flight,
                "waiting": c.waiting,
            })
        });
        let retry_budget = self.retry_budget.as_ref().map(|b| {
            json!({
                "available": b.available,
                "window_s": secs(b.window),
            })
        });
        json!({
            "rate_limits": rate_limits,
            "breakers": breakers,
            "concurrency": concurrency,
            "retry_budget": retry_budget,
        })
    }
}

/// One rate-limit key in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq)]
pub struct KeyStatus {
    key: RateLimitKey,
    dimensions: Vec<DimensionStatus>,
    cooldown: Option<Duration>,
    in_flight: usize,
    queued: usize,
    input_correction: f64,
}

impl KeyStatus {
    fn new(k: &KeySnapshot, now: Instant) -> Self {
        KeyStatus {
            key: k.key().clone(),
            dimensions: Dimension::ALL
                .iter()
                .filter_map(|&d| {
                    k.bucket(d).map(|b| DimensionStatus {
                        dimension: d,
                        limit: b.capacity(),
                        configured: b.configured(),
                        learned: b.learned(),
                        remaining: b.level(),
                        window: b.window(),
                        full_in: b.full_at().saturating_duration_since(now),
                    })
                })
                .collect(),
            cooldown: k
                .cooldown_until()
                .map(|c| c.saturating_duration_since(now))
                .filter(|d| !d.is_zero()),
            in_flight: k.in_flight(),
            queued: k.queued(),
            input_correction: k.input_correction(),
        }
    }

    /// The key.
    pub fn key(&self) -> &RateLimitKey {
        &self.key
    }

    /// The dimensions whose limit is known (configured or learned), in [`Dimension::ALL`]
    /// order.
    pub fn dimensions(&self) -> &[DimensionStatus] {
        &self.dimensions
    }

    /// The status of `dimension`, when its limit is known.
    pub fn dimension(&self, dimension: Dimension) -> Option<&DimensionStatus> {
        self.dimensions.iter().find(|d| d.dimension == dimension)
    }

    /// How long the current cooldown (after a 429, or a fixed window spent) still runs.
    pub fn cooldown(&self) -> Option<Duration> {
        self.cooldown
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Requests waiting for budget.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The learned factor applied to input-token estimates (1.0 until learned).
    pub fn input_correction(&self) -> f64 {
        self.input_correction
    }
}

/// One dimension (requests, input tokens, …) of a [`KeyStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DimensionStatus {
    dimension: Dimension,
    limit: u64,
    configured: Option<u64>,
    learned: Option<u64>,
    remaining: u64,
    window: Duration,
    full_in: Duration,
}

impl DimensionStatus {
    /// The dimension.
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// The limit in effect: the lower of the configured and the learned one.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The configured limit, if any.
    pub fn configured(&self) -> Option<u64> {
        self.configured
    }

    /// The limit the server last reported, if any.
    pub fn learned(&self) -> Option<u64> {
        self.learned
    }

    /// The limiter's estimate of what the server would accept now.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The window the limit replenishes over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How long until the bucket is full again.
    pub fn full_in(&self) -> Duration {
        self.full_in
    }
}

/// One breaker in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerStatus {
    key: Option<String>,
    state: breaker::State,
    half_open_in: Option<Duration>,
}

impl BreakerStatus {
    /// The breaker's key, `None` for the unkeyed breaker.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Its state when the snapshot was taken.
    pub fn state(&self) -> breaker::State {
        self.state
    }

    /// How long an open breaker still stays open, from the moment the snapshot was taken
    /// (`None` unless [`Open`](breaker::State::Open)).
    pub fn half_open_in(&self) -> Option<Duration> {
        self.half_open_in
    }
}

/// The concurrency cap in a [`Snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcurrencyStatus {
    adaptive: Option<(usize, usize)>,
    limit: usize,
    in_flight: usize,
    waiting: usize,
}

impl ConcurrencyStatus {
    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Permits held.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Services waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// For an adaptive cap, the bounds the limit moves between (min, max).
    pub fn adaptive_bounds(&self) -> Option<(usize, usize)> {
        self.adaptive
    }
}

/// The retry budget in a [`Snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudgetStatus {
    available: u64,
    window: Duration,
}

impl RetryBudgetStatus {
    /// How many retries the budget allows now.
    pub fn available(&self) -> u64 {
        self.available
    }

    /// The budget's sliding window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// A duration for humans: `850ms`, `4.2s`, `3m05s`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let s = if d < Duration::from_secs(1) {
            format!("{}ms", d.as_millis())
        } else if d < Duration::from_secs(60) {
            format!("{:.1}s", d.as_secs_f64())
        } else {
            format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
        };
        f.pad(&s)
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl fmt::Display for Snapshot {
    /// A compact table, one line per key and dimension, then the breakers, the concurrency cap
    /// and the retry budget (parts the snapshot does not have are left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut table = String::new();
        self.render(&mut table)?;
        for line in table.lines() {
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

impl Snapshot {
    fn render(&self, f: &mut String) -> fmt::Result {
        use std::fmt::Write;
        let width = self
            .rate_limits
            .iter()
            .map(|k| k.key.as_str().len())
            .chain(
                self.breakers
                    .iter()
                    .map(|b| b.key.as_deref().map_or(1, str::len)),
            )
            .max()
            .unwrap_or(0)
            .max("breaker".len());
        if !self.rate_limits.is_empty() {
            writeln!(
                f,
                "{:<width$}  {:<13} {:>10} {:>10} {:>10} {:>10} {:>8}  {:>9} {:>6} {:>8}",
                "key",
                "dimension",
                "remaining",
                "limit",
                "configured",
                "learned",
                "full in",
                "in flight",
                "queued",
                "cooldown",
            )?;
        }
        for k in &self.rate_limits {
            let cooldown = k
                .cooldown
                .map_or_else(|| "-".to_owned(), |c| Human(c).to_string());
            if k.dimensions.is_empty() {
                writeln!(
                    f,
                    "{:<width$}  {:<13} {:>10} {:>10} {:>10} {:>10} {:>8}  {:>9} {:>6} {:>8}",
                    k.key.as_str(),
                    "(unknown)",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    k.in_flight,
                    k.queued,
                    cooldown,
                )?;
            }
            for (i, d) in k.dimensions.iter().enumerate() {
                let (in_flight, queued, cooldown) = if i == 0 {
                    (
                        k.in_flight.to_string(),
                        k.queued.to_string(),
                        cooldown.clone(),
                    )
                } else {
                    (String::new(), String::new(), String::new())
                };
                writeln!(
                    f,
                    "{:<width$}  {:<13} {:>10} {:>10} {:>10} {:>10} {:>8}  {:>9} {:>6} {:>8}",
                    if i == 0 { k.key.as_str() } else { "" },
                    d.dimension.as_str(),
                    d.remaining,
                    d.limit,
                    opt(d.configured),
                    opt(d.learned),
                    Human(d.full_in),
                    in_flight,
                    queued,
                    cooldown,
                )?;
            }
        }
        if !self.breakers.is_empty() {
            writeln!(
                f,
                "{:<width$}  {:<13} {:>10}",
                "breaker", "state", "probes in"
            )?;
            for b in &self.breakers {
                let reopen = b
                    .half_open_in
                    .map_or_else(|| "-".to_owned(), |d| Human(d).to_string());
                writeln!(
                    f,
                    "{:<width$}  {:<13} {:>10}",
                    b.key.as_deref().unwrap_or("*"),
                    b.state.as_str(),
                    reopen
                )?;
            }
        }
        if let Some(c) = &self.concurrency {
            write!(
                f,
                "concurrency: limit {}, in flight {}, waiting {}",
                c.limit, c.in_flight, c.waiting
            )?;
            match c.adaptive {
                Some((min, max)) => writeln!(f, " (adaptive, {min}..={max})")?,
                None => writeln!(f, " (fixed)")?,
            }
        }
        if let Some(b) = &self.retry_budget {
            writeln!(
                f,
                "retry budget: {} retries available (window {})",
                b.available,
                Human(b.window)
            )?;
        }
        Ok(())
    }
}
