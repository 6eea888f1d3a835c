//! The breaker's observable state and its transitions.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

/// The state of one breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls fail at once with [`Open`](super::error::Open) until `until`, when the breaker
    /// becomes half-open.
    Open {
        /// When the breaker lets probes through.
        until: Instant,
    },
    /// A limited number of probe calls go through; the others fail at once.
    HalfOpen,
}

impl State {
    /// A short stable name for logs and metrics (`closed`, `open`, `half_open`).
    pub const fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The failure rate over the window reached the threshold.
    FailureRate {
        /// Failures in the window.
        failures: u32,
        /// Counted calls in the window.
        calls: u32,
    },
    /// This many failures in a row.
    ConsecutiveFailures(u32),
    /// The open duration elapsed.
    OpenElapsed,
    /// Enough probes succeeded.
    ProbesSucceeded,
    /// Too many probes failed.
    ProbeFailed,
}

impl Reason {
    /// A short stable name for logs and metrics.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Reason::FailureRate { .. } => "failure_rate",
            Reason::ConsecutiveFailures(_) => "consecutive_failures",
            Reason::OpenElapsed => "open_elapsed",
            Reason::ProbesSucceeded => "probes_succeeded",
            Reason::ProbeFailed => "probe_failed",
        }
    }
}

/// A state change of one breaker, passed to the
/// [`on_transition`](super::Policy::on_transition) hook.
#[derive(Clone, Debug)]
pub struct Transition {
    pub(crate) key: Option<Arc<str>>,
    pub(crate) from: State,
    pub(crate) to: State,
    pub(crate) at: Instant,
    pub(crate) reason: Reason,
    pub(crate) trips: u32,
}

impl Transition {
    /// The breaker's key, `None` for the unkeyed breaker.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The state before.
    pub fn from(&self) -> State {
        self.from
    }

    /// The state after.
    pub fn to(&self) -> State {
        self.to
    }

    /// When it happened (tokio's clock).
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Why it happened.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// How many trips in a row the breaker has made, this one included (0 once it has closed):
    /// the exponent of the open duration's growth.
    pub fn trips(&self) -> u32 {
        self.trips
    }
}
