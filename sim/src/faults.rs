//! Scripted faults on a timeline.

use std::ops::Range;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::config::Limits;

/// A fault the simulated API injects while its window is open.
///
/// Probabilities are drawn per request from the API's seeded RNG, so a run with the same seed
/// and the same arrivals repeats exactly. A probability outside `0.0..=1.0` is clamped.
///
/// When faults are decided: refusals ([`ConnectionError`](Fault::ConnectionError),
/// [`SpendLimit`](Fault::SpendLimit), [`Overloaded`](Fault::Overloaded),
/// [`ServerError`](Fault::ServerError)) are drawn when the request arrives, before admission,
/// in declaration order (the first that fires answers) and spend no budget;
/// [`Hang`](Fault::Hang) and [`Slow`](Fault::Slow) apply to admitted requests;
/// [`MalformedHeaders`](Fault::MalformedHeaders) and [`AbsurdRetryAfter`](Fault::AbsurdRetryAfter)
/// rewrite any response of a request that arrived in the window;
/// [`ClockSkew`](Fault::ClockSkew) shifts the `date` and reset headers of responses sent in the
/// window; [`LimitChange`](Fault::LimitChange) replaces every model's limits while the window is
/// open.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// `529 overloaded_error`.
    Overloaded {
        /// Share of requests refused.
        probability: f64,
    },
    /// A server error (`500 api_error`, `502`, `503`, `504 timeout_error`, ...). A status that
    /// is not a valid HTTP status becomes 500.
    ServerError {
        /// The status answered.
        status: u16,
        /// Share of requests refused.
        probability: f64,
    },
    /// The call fails with an error whose source chain holds an [`std::io::Error`] of kind
    /// `ConnectionReset`; over HTTP the connection is closed without an answer.
    ConnectionError {
        /// Share of requests failed.
        probability: f64,
    },
    /// Admitted requests take `extra` longer.
    Slow {
        /// Added latency.
        extra: Duration,
        /// Share of admitted requests slowed down.
        probability: f64,
    },
    /// Admitted requests (their budget charged) never answer until the caller drops them.
    Hang {
        /// Share of admitted requests that hang.
        probability: f64,
    },
    /// Every `anthropic-ratelimit-*` header of the response carries an unreadable value
    /// (empty, text, negative, out of range, impossible dates).
    MalformedHeaders {
        /// Share of responses affected.
        probability: f64,
    },
    /// The response carries an absurd `retry-after` (days, negative, `NaN`, text, a date in
    /// the year 9999), whatever its status.
    AbsurdRetryAfter {
        /// Share of responses affected.
        probability: f64,
    },
    /// `429 rate_limit_error` with `error.details.error_code = "enforced_spend_limit_reached"`
    /// and no `retry-after`: the monthly spend cap, which retrying cannot fix.
    SpendLimit {
        /// Share of requests refused.
        probability: f64,
    },
    /// The server's clock is off by `offset_secs` (positive: ahead): `date` and every reset
    /// header are shifted by it.
    ClockSkew {
        /// Seconds added to the server's wall clock.
        offset_secs: i64,
    },
    /// A streaming answer (`"stream": true`) breaks after its first `after_events` events
    /// (`message_start` is the first): an error event, a stall or a dropped connection, as
    /// `how` says. Drawn for admitted requests; the budget is charged as for any answer.
    StreamBreak {
        /// Events sent before the break.
        after_events: usize,
        /// How the stream breaks.
        how: super::StreamBreak,
        /// Share of streaming answers broken.
        probability: f64,
    },
    /// Every model's limits are replaced while the window is open (a tier change, a lowered
    /// workspace limit). Bucket levels are kept, capped at the new capacity.
    LimitChange {
        /// The limits in force during the window.
        limits: Limits,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Window {
    pub(crate) start: Duration,
    pub(crate) end: Duration,
    pub(crate) fault: Fault,
}

impl Window {
    fn contains(&self, t: Duration) -> bool {
        self.start <= t && t < self.end
    }
}

/// A timeline of [`Fault`]s, each active over a window of time measured from the moment
/// [`SimApiBuilder::build`](super::SimApiBuilder::build) ran (tokio clock).
///
/// ```
/// use std::time::Duration;
/// use tower_llm_limits_sim::{Fault, Faults, Limits};
///
/// let faults = Faults::new()
///     .window(Duration::from_secs(10)..Duration::from_secs(40), Fault::Overloaded { probability: 0.5 })
///     .from(Duration::from_secs(120), Fault::LimitChange { limits: Limits::per_minute(100, 60_000, 16_000) })
///     .always(Fault::ClockSkew { offset_secs: -7 });
/// # let _ = faults;
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    windows: Vec<Window>,
}

impl Faults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// `fault` is active from `range.start` (inclusive) to `range.end` (exclusive).
    pub fn window(mut self, range: Range<Duration>, fault: Fault) -> Self {
        self.windows.push(Window {
            start: range.start,
            end: range.end,
            fault,
        });
        self
    }

    /// `fault` is active from `start` on.
    pub fn from(self, start: Duration, fault: Fault) -> Self {
        self.window(start..Duration::MAX, fault)
    }

    /// `fault` is active all the time.
    pub fn always(self, fault: Fault) -> Self {
        self.from(Duration::ZERO, fault)
    }

    /// These faults, then `others` (faults are drawn in declaration order, each from the
    /// request's seeded generator: a fault declared later does not change the draws of those
    /// before it).
    pub fn then(mut self, others: Faults) -> Self {
        self.windows.extend(others.windows);
        self
    }

    /// `true` when no fault is scripted.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub(crate) fn active(&self, t: Duration) -> impl Iterator<Item = &Fault> + '_ {
        self.windows
            .iter()
            .filter(move |w| w.contains(t))
            .map(|w| &w.fault)
    }

    /// The limits a `LimitChange` imposes at `t` (the last declared active one wins).
    pub(crate) fn limits_at(&self, t: Duration) -> Option<Limits> {
        self.active(t)
            .filter_map(|f| match f {
                Fault::LimitChange { limits } => Some(*limits),
                _ => None,
            })
            .last()
    }

    /// Instants in `(after, upto]` where the limits may change, sorted.
    pub(crate) fn limit_boundaries(&self, after: Duration, upto: Duration) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .windows
            .iter()
            .filter(|w| matches!(w.fault, Fault::LimitChange { .. }))
            .flat_map(|w| [w.start, w.end])
            .filter(|b| *b > after && *b <= upto)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The clock offset in force at `t`.
    pub(crate) fn skew_at(&self, t: Duration) -> i64 {
        self.active(t)
            .map(|f| match f {
                Fault::ClockSkew { offset_secs } => *offset_secs,
                _ => 0,
            })
            .sum()
    }

    /// Draws every probabilistic fault active at `t`, in declaration order.
    pub(crate) fn decide(&self, t: Duration, rng: &mut StdRng) -> Decisions {
        let mut d = Decisions::default();
        for fault in self.active(t) {
            let mut fires = |p: f64| rng.random::<f64>() < p.clamp(0.0, 1.0);
            match fault {
                Fault::Overloaded { probability } => {
                    if fires(*probability) && d.refusal.is_none() {
                        d.refusal = Some(Refusal::Overloaded);
                    }
                }
                Fault::ServerError {
                    status,
                    probability,
                } => {
                    if fires(*probability) && d.refusal.is_none() {
                        d.refusal = Some(Refusal::ServerError(*status));
                    }
                }
                Fault::ConnectionError { probability } => {
                    if fires(*probability) && d.refusal.is_none() {
                        d.refusal = Some(Refusal::ConnectionError);
                    }
                }
                Fault::SpendLimit { probability } => {
                    if fires(*probability) && d.refusal.is_none() {
                        d.refusal = Some(Refusal::SpendLimit);
                    }
                }
                Fault::Slow { extra, probability } => {
                    if fires(*probability) {
                        d.slow = d.slow.saturating_add(*extra);
                    }
                }
                Fault::Hang { probability } => d.hang |= fires(*probability),
                Fault::MalformedHeaders { probability } => d.malformed |= fires(*probability),
                Fault::AbsurdRetryAfter { probability } => {
                    if fires(*probability) {
                        d.absurd_retry_after = Some(rng.random_range(0..ABSURD_RETRY_AFTER.len()));
                    }
                }
                Fault::StreamBreak {
                    after_events,
                    how,
                    probability,
                } => {
                    if fires(*probability) && d.stream_break.is_none() {
                        d.stream_break = Some((*how, *after_events));
                    }
                }
                Fault::ClockSkew { .. } | Fault::LimitChange { .. } => {}
            }
        }
        d
    }
}

/// Values used by [`Fault::AbsurdRetryAfter`].
pub(crate) const ABSURD_RETRY_AFTER: [&str; 6] = [
    "86400000",
    "-1",
    "NaN",
    "soon",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "1e12",
];

/// Values used by [`Fault::MalformedHeaders`].
pub(crate) const MALFORMED: [&str; 7] = [
    "",
    "abc",
    "-5",
    "18446744073709551616",
    "2026-13-45T99:99:99Z",
    "NaN",
    "1,2",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Overloaded,
    ServerError(u16),
    ConnectionError,
    SpendLimit,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Decisions {
    pub(crate) refusal: Option<Refusal>,
    pub(crate) slow: Duration,
    pub(crate) hang: bool,
    pub(crate) malformed: bool,
    pub(crate) absurd_retry_after: Option<usize>,
    pub(crate) stream_break: Option<(super::StreamBreak, usize)>,
}
