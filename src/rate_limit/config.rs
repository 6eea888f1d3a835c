//! Configuration values: limits, ramp-up, and the per-request extensions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::signals::Dimension;

/// The default window of a limit: one minute (Anthropic and OpenAI limits are per minute).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Configured limits: a capacity per [`Dimension`] over a window (default one minute).
///
/// Configured limits are the **starting point** before anything is learned (no start-up probe is
/// needed for a key with a configured limit) and a **ceiling** afterwards: a learned limit above
/// the configured one is ignored, a learned limit below it wins (a workspace limit, a lowered
/// tier). A dimension left unset is not limited until a response reports it. A capacity of 0
/// refuses every request that costs anything in that dimension with
/// [`CostExceedsLimit`](super::error::CostExceedsLimit).
///
/// # Examples
///
/// ```
/// use tower_llm_limits::rate_limit::Limits;
/// use tower_llm_limits::signals::Dimension;
///
/// let limits = Limits::per_minute(50, 30_000, 8_000).tokens(36_000);
/// assert_eq!(limits.get(Dimension::InputTokens), Some(30_000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    capacity: [Option<u64>; 4],
    window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new()
    }
}

impl Limits {
    /// No configured limit (everything learned from headers).
    pub const fn new() -> Self {
        Limits {
            capacity: [None; 4],
            window: DEFAULT_WINDOW,
        }
    }

    /// Requests, input tokens and output tokens per minute.
    pub const fn per_minute(requests: u64, input_tokens: u64, output_tokens: u64) -> Self {
        Limits::new()
            .requests(requests)
            .input_tokens(input_tokens)
            .output_tokens(output_tokens)
    }

    /// Sets the requests per window.
    pub const fn requests(mut self, n: u64) -> Self {
        self.capacity[0] = Some(n);
        self
    }

    /// Sets the input tokens per window.
    pub const fn input_tokens(mut self, n: u64) -> Self {
        self.capacity[1] = Some(n);
        self
    }

    /// Sets the output tokens per window.
    pub const fn output_tokens(mut self, n: u64) -> Self {
        self.capacity[2] = Some(n);
        self
    }

    /// Sets the combined (input + output) tokens per window.
    pub const fn tokens(mut self, n: u64) -> Self {
        self.capacity[3] = Some(n);
        self
    }

    /// Sets the window the capacities replenish over (default [`DEFAULT_WINDOW`]).
    pub const fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The configured capacity of `dimension`.
    pub const fn get(&self, dimension: Dimension) -> Option<u64> {
        self.capacity[dimension.index()]
    }

    /// The window.
    pub const fn get_window(&self) -> Duration {
        self.window
    }

    /// `true` when no dimension is configured.
    pub const fn is_empty(&self) -> bool {
        matches!(self.capacity, [None, None, None, None])
    }
}

/// Slow start: after a cold start or a long idle, only part of each bucket may be used, growing
/// linearly to all of it, so a sudden burst does not trip a provider's acceleration limits.
///
/// The usable share starts at [`initial`](Self::initial) (default 10%) and reaches 100% after
/// [`period`](Self::period); it restarts when a key has admitted nothing for
/// [`idle`](Self::idle) (default: the period). The refill rate is never reduced: a ramp only
/// limits the burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RampUp {
    period: Duration,
    initial: f64,
    idle: Duration,
}

impl RampUp {
    /// A ramp reaching the full capacity after `period`.
    pub fn new(period: Duration) -> Self {
        RampUp {
            period: period.max(Duration::from_millis(1)),
            initial: 0.1,
            idle: period,
        }
    }

    /// The share of each bucket usable at the start of the ramp (clamped to `0.0..=1.0`).
    pub fn initial(mut self, share: f64) -> Self {
        self.initial = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.1
        };
        self
    }

    /// How long a key must admit nothing before the ramp restarts.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// The ramp's length.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The share of capacity usable `elapsed` after the ramp started.
    pub(crate) fn share(&self, elapsed: Duration) -> f64 {
        let x = elapsed.as_secs_f64() / self.period.as_secs_f64();
        (self.initial + (1.0 - self.initial) * x).min(1.0)
    }

    pub(crate) fn idle_after(&self) -> Duration {
        self.idle
    }
}

/// A request extension: whether the request is interactive (the default: someone is waiting for
/// it) or background work. When both wait for budget, interactive requests go first; within a
/// class, order is strict FIFO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Someone waits for the answer (the default).
    #[default]
    Interactive,
    /// Batch or background work: admitted only when no interactive request waits.
    Background,
}

impl Priority {
    pub(crate) fn class(self) -> usize {
        match self {
            Priority::Interactive => 0,
            Priority::Background => 1,
        }
    }
}

/// A request extension: the longest this request may wait for budget (overrides the layer's
/// [`max_wait`](super::RateLimitLayer::max_wait)). Beyond it the request fails with
/// [`WaitTooLong`](super::error::WaitTooLong).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaxWait(Duration);

impl MaxWait {
    /// A maximum wait of `d`.
    pub const fn new(d: Duration) -> Self {
        MaxWait(d)
    }

    /// The maximum wait.
    pub const fn get(&self) -> Duration {
        self.0
    }
}

/// A call's place in the rate limiter's queues: the order in which its first attempt arrived.
/// The retry layer puts one in each call's extensions, so every attempt carries it: a retry
/// keeps the place of the call's first arrival instead of going to the back of a queue (behind
/// a queue minutes deep, a refused request's retry would wait it all again).
#[derive(Clone, Debug, Default)]
pub(crate) struct CallPlace(Arc<AtomicU64>);

impl CallPlace {
    /// The order of the call's first arrival, once it arrived.
    pub(crate) fn get(&self) -> Option<u64> {
        self.0.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Records the order of the call's first arrival.
    pub(crate) fn set(&self, order: u64) {
        self.0.store(order.saturating_add(1), Ordering::Relaxed);
    }
}
