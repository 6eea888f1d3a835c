//! The AIMD controller: [`Aimd`] (its configuration) and [`AdaptiveLimiter`] (its shared state).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::error::InvalidAimd;
use crate::concurrency::Limiter;
use crate::signals::OutcomeKind;

/// The configuration of an adaptive (AIMD) concurrency cap.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`initial`](Self::initial) | 8 | the limit before any feedback |
/// | [`min`](Self::min) / [`max`](Self::max) | 1 / 64 | bounds the limit never leaves |
/// | [`decrease_factor`](Self::decrease_factor) | 0.7 | on back-off: `limit = max(min, floor(limit × factor))` |
/// | [`backoff_on`](Self::backoff_on) | rate limited, overloaded, timeout | the outcomes that shrink the limit |
///
/// The limit grows by one for every `limit` successes (about once per round trip when the cap is
/// full), up to `max`.
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    initial: usize,
    min: usize,
    max: usize,
    decrease_factor: f64,
    backoff_on: Vec<OutcomeKind>,
}

impl Default for Aimd {
    fn default() -> Self {
        Self::new()
    }
}

impl Aimd {
    /// The default configuration (see the table above).
    pub fn new() -> Self {
        Aimd {
            initial: 8,
            min: 1,
            max: 64,
            decrease_factor: 0.7,
            backoff_on: vec![
                OutcomeKind::RateLimited,
                OutcomeKind::Overloaded,
                OutcomeKind::Timeout,
            ],
        }
    }

    /// Sets the limit before any feedback.
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial;
        self
    }

    /// Sets the lowest limit (at least 1).
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// Sets the highest limit.
    pub fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Sets the factor the limit is multiplied by on back-off, in `(0, 1)`.
    pub fn decrease_factor(mut self, factor: f64) -> Self {
        self.decrease_factor = factor;
        self
    }

    /// Sets the outcomes that shrink the limit (default: [`OutcomeKind::RateLimited`],
    /// [`OutcomeKind::Overloaded`] — 529 and 503 — and [`OutcomeKind::Timeout`]).
    pub fn backoff_on(mut self, kinds: impl IntoIterator<Item = OutcomeKind>) -> Self {
        self.backoff_on = kinds.into_iter().collect();
        self
    }

    /// The limit before any feedback.
    pub fn initial_limit(&self) -> usize {
        self.initial
    }

    /// The lowest limit.
    pub fn min_limit(&self) -> usize {
        self.min
    }

    /// The highest limit.
    pub fn max_limit(&self) -> usize {
        self.max
    }

    /// The back-off factor.
    pub fn factor(&self) -> f64 {
        self.decrease_factor
    }

    /// Whether an outcome of `kind` shrinks the limit.
    pub fn backs_off_on(&self, kind: OutcomeKind) -> bool {
        self.backoff_on.contains(&kind)
    }

    fn validate(&self) -> Result<(), InvalidAimd> {
        if self.min == 0 {
            return Err(InvalidAimd::new("min must be at least 1"));
        }
        if self.min > self.max {
            return Err(InvalidAimd::new("min must not exceed max"));
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(InvalidAimd::new("initial must lie within min..=max"));
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            return Err(InvalidAimd::new(
                "decrease_factor must lie strictly between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// The shared state of an adaptive cap: the [`Limiter`] whose limit the controller moves, and
/// the controller's bookkeeping.
///
/// Cloning the handle shares the cap and what it has learnt. Build it once and give it to every
/// service that talks to the same provider account with
/// [`AdaptiveConcurrencyLimitLayer::shared`](super::AdaptiveConcurrencyLimitLayer::shared).
///
/// # Examples
///
/// ```
/// use tower_llm_limits::concurrency::{AdaptiveLimiter, Aimd};
///
/// let limiter = AdaptiveLimiter::new(Aimd::new().initial(4).max(32))?;
/// assert_eq!(limiter.limit(), 4);
/// assert_eq!(limiter.in_flight(), 0);
/// # Ok::<(), tower_llm_limits::concurrency::adaptive::error::InvalidAimd>(())
/// ```
#[derive(Clone)]
pub struct AdaptiveLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    limiter: Limiter,
    config: Aimd,
    control: Mutex<Control>,
}

struct Control {
    /// Bumped at each back-off: a call sent before it cannot cause another one.
    epoch: u64,
    /// When the last back-off happened.
    last_decrease: Option<Instant>,
    /// Smoothed latency of successful calls (the round trip), when one was seen.
    rtt: Option<Duration>,
    /// Successes counted towards the next increase.
    successes: usize,
    decreases: u64,
    increases: u64,
}

/// What the controller needs to remember about a call when it is sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    epoch: u64,
    at: Instant,
    /// The cap was at least half used when the call was sent: its success shows demand.
    busy: bool,
}

impl AdaptiveLimiter {
    /// A cap starting at `config`'s initial limit.
    ///
    /// # Errors
    ///
    /// [`InvalidAimd`] when `min` is 0, the bounds are out of order or the decrease factor is
    /// not strictly between 0 and 1.
    pub fn new(config: Aimd) -> Result<Self, InvalidAimd> {
        config.validate()?;
        Ok(AdaptiveLimiter {
            shared: Arc::new(Shared {
                limiter: Limiter::new(config.initial),
                config,
                control: Mutex::new(Control {
                    epoch: 0,
                    last_decrease: None,
                    rtt: None,
                    successes: 0,
                    decreases: 0,
                    increases: 0,
                }),
            }),
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.limiter.limit()
    }

    /// Permits held: calls in flight (and streaming bodies holding theirs) plus services polled
    /// ready but not called yet.
    pub fn in_flight(&self) -> usize {
        self.shared.limiter.in_flight()
    }

    /// Services waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.shared.limiter.waiting()
    }

    /// How many times the limit was lowered.
    pub fn decreases(&self) -> u64 {
        self.control().decreases
    }

    /// How many times the limit was raised.
    pub fn increases(&self) -> u64 {
        self.control().increases
    }

    /// The configuration.
    pub fn config(&self) -> &Aimd {
        &self.shared.config
    }

    pub(crate) fn limiter(&self) -> &Limiter {
        &self.shared.limiter
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.shared
            .control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes a call being sent (its permit is held).
    pub(crate) fn sent(&self) -> Sent {
        let control = self.control();
        let limiter = &self.shared.limiter;
        Sent {
            epoch: control.epoch,
            at: Instant::now(),
            busy: limiter.in_flight().saturating_mul(2) >= limiter.limit(),
        }
    }

    /// The smoothed latency of successful calls, once one has completed.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.control().rtt
    }

    /// Feeds the outcome of a call sent at `sent` to the controller.
    pub(crate) fn record(&self, sent: Sent, kind: OutcomeKind) {
        let config = &self.shared.config;
        let limiter = &self.shared.limiter;
        let now = Instant::now();
        let mut control = self.control();
        if kind == OutcomeKind::Success {
            let sample = now.saturating_duration_since(sent.at);
            // TCP's smoothing: srtt = 7/8 srtt + 1/8 sample.
            control.rtt = Some(control.rtt.map_or(sample, |rtt| (rtt * 7 + sample) / 8));
        }
        if sent.epoch != control.epoch {
            // Sent before the last back-off: its outcome says nothing about the new limit.
            return;
        }
        if config.backs_off_on(kind) {
            let since = control
                .last_decrease
                .map(|at| now.saturating_duration_since(at));
            if since
                .zip(control.rtt)
                .is_some_and(|(since, rtt)| since < rtt)
            {
                // Less than a round trip after the last back-off: the same incident.
                return;
            }
            control.epoch += 1;
            control.successes = 0;
            control.last_decrease = Some(now);
            let old = limiter.limit();
            // `floor(old × f) < old` for f < 1, so the limit shrinks until it reaches `min`.
            let new = ((old as f64 * config.decrease_factor).floor() as usize).max(config.min);
            if new != old {
                control.decreases += 1;
                limiter.set_limit(new);
                crate::observe::emit::concurrency_limit_changed("decrease", kind.as_str(), new);
                tracing::info!(
                    old,
                    new,
                    reason = kind.as_str(),
                    "adaptive concurrency limit decreased"
                );
            }
        } else if kind == OutcomeKind::Success && sent.busy {
            control.successes += 1;
            let old = limiter.limit();
            if control.successes >= old {
                control.successes = 0;
                if old < config.max {
                    control.increases += 1;
                    limiter.set_limit(old + 1);
                    crate::observe::emit::concurrency_limit_changed("increase", "success", old + 1);
                    tracing::debug!(
                        old,
                        new = old + 1,
                        reason = "success",
                        "adaptive concurrency limit increased"
                    );
                }
            }
        }
    }
}

impl fmt::Debug for AdaptiveLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimiter")
            .field("limiter", &self.shared.limiter)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
