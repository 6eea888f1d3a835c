//! The rate limiter's decisions, re-exported as [`rate_limit::error`](crate::rate_limit::error).

use std::fmt;
use std::time::Duration;

use crate::signals::Dimension;

/// The request would wait longer than its maximum wait (the layer's
/// [`max_wait`](crate::rate_limit::RateLimitLayer::max_wait) or the request's [`MaxWait`](crate::rate_limit::MaxWait)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitTooLong {
    dimension: Option<Dimension>,
    wait: Duration,
    max_wait: Duration,
}

impl WaitTooLong {
    pub(crate) fn new(dimension: Option<Dimension>, wait: Duration, max_wait: Duration) -> Self {
        WaitTooLong {
            dimension,
            wait,
            max_wait,
        }
    }

    /// The dimension that is short; `None` when the wait is a cooldown the server asked for
    /// (`retry-after`) or the start-up probe.
    pub fn dimension(&self) -> Option<Dimension> {
        self.dimension
    }

    /// How long the request would have waited in all (projected from the queue ahead of it).
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The maximum wait that was exceeded.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

impl fmt::Display for WaitTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.dimension.map_or("cooldown", Dimension::as_str);
        write!(
            f,
            "rate limit: request would wait {:?} for {what} (maximum wait {:?})",
            self.wait, self.max_wait
        )
    }
}

impl std::error::Error for WaitTooLong {}

/// The request costs more than a bucket can ever hold: it can never be admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostExceedsLimit {
    dimension: Dimension,
    cost: u64,
    limit: u64,
}

impl CostExceedsLimit {
    pub(crate) fn new(dimension: Dimension, cost: u64, limit: u64) -> Self {
        CostExceedsLimit {
            dimension,
            cost,
            limit,
        }
    }

    /// The dimension whose capacity is too small.
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// What the request costs in that dimension.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// The bucket's capacity.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl fmt::Display for CostExceedsLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit: request costs {} {} but the limit is {}",
            self.cost, self.dimension, self.limit
        )
    }
}

impl std::error::Error for CostExceedsLimit {}
