//! The breaker's configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::signals::OutcomeKind;

use super::Transition;

/// A function that picks the breaker of a request from its head: `None` selects the unkeyed
/// breaker.
pub(crate) type KeyFn = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;
/// The transition hook.
pub(crate) type Hook = Arc<dyn Fn(&Transition) + Send + Sync>;

/// The sliding window over which the failure rate is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last `n` recorded calls.
    Count(u32),
    /// The calls recorded in the last `duration`, kept in ten buckets of a tenth of it each (so
    /// a call leaves the window between 0.9 and 1.0 × `duration` after it ended).
    Time(Duration),
}

/// How the open duration grows when the breaker trips again before it has been closed for a
/// while (see [`Policy::max_open_duration`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Growth {
    /// Always the base duration.
    Constant,
    /// Base × n on the n-th trip (Envoy's outlier ejection).
    Linear,
    /// Base × 2ⁿ⁻¹ on the n-th trip.
    Doubling,
}

/// When the breaker trips, how long it stays open and how it probes.
///
/// The defaults:
///
/// | setting | default |
/// |---|---|
/// | [`trip_on`](Self::trip_on) | [`OutcomeKind::Overloaded`] (529, 503, Bedrock `ServiceUnavailableException`) |
/// | [`failure_rate`](Self::failure_rate) | 50 % of at least 10 calls |
/// | [`window`](Self::window) | the last 20 calls |
/// | [`consecutive_failures`](Self::consecutive_failures) | 5 |
/// | [`open_duration`](Self::open_duration) | 10 s, [`Growth::Linear`] (10, 20, 30 s…), at most 300 s |
/// | [`jitter`](Self::jitter) | up to 20 % shorter |
/// | [`half_open_probes`](Self::half_open_probes) | 3 probes, all must succeed |
/// | [`max_keys`](Self::max_keys) | 1024 keyed breakers |
///
/// # Which outcomes count
///
/// Each finished call is classified (see [`crate::signals`]) and then counted as
///
/// - a **failure** when its kind is in [`trip_on`](Self::trip_on);
/// - a **success** when it is [`Success`](OutcomeKind::Success) or
///   [`ClientError`](OutcomeKind::ClientError) (a 400 proves the server is answering);
/// - **not at all** otherwise. In particular [`RateLimited`](OutcomeKind::RateLimited) (429),
///   [`SpendLimit`](OutcomeKind::SpendLimit) and [`Rejected`](OutcomeKind::Rejected) (a decision
///   of another layer, such as a rate limiter's maximum wait) say nothing about the provider's
///   health: a 429 is our own pacing problem, so any number of them neither trips the breaker nor
///   dilutes the failure rate of real overload.
///
/// 503 is in the default set because the default classifier reads it as overload, and that is
/// what it means at the providers this crate targets: AWS Bedrock answers
/// `ServiceUnavailableException` (503) when the provider side is unavailable, and gateways in
/// front of a model answer 503 when it is down or shedding load. Sending more does not help in
/// either case. Use a custom classifier if your 503s mean something else.
#[derive(Clone)]
pub struct Policy {
    pub(crate) trip_on: Vec<OutcomeKind>,
    pub(crate) window: Window,
    pub(crate) failure_rate: Option<(f64, u32)>,
    pub(crate) consecutive: u32,
    pub(crate) open_base: Duration,
    pub(crate) open_max: Duration,
    pub(crate) growth: Growth,
    pub(crate) jitter: f64,
    pub(crate) seed: Option<u64>,
    pub(crate) probes: u32,
    pub(crate) close_after: u32,
    pub(crate) max_keys: usize,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) on_transition: Option<Hook>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            trip_on: vec![OutcomeKind::Overloaded],
            window: Window::Count(20),
            failure_rate: Some((0.5, 10)),
            consecutive: 5,
            open_base: Duration::from_secs(10),
            open_max: Duration::from_secs(300),
            growth: Growth::Linear,
            jitter: 0.2,
            seed: None,
            probes: 3,
            close_after: 3,
            max_keys: 1024,
            key_fn: None,
            on_transition: None,
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("trip_on", &self.trip_on)
            .field("window", &self.window)
            .field("failure_rate", &self.failure_rate)
            .field("consecutive", &self.consecutive)
            .field("open_base", &self.open_base)
            .field("open_max", &self.open_max)
            .field("growth", &self.growth)
            .field("jitter", &self.jitter)
            .field("seed", &self.seed)
            .field("probes", &self.probes)
            .field("close_after", &self.close_after)
            .field("max_keys", &self.max_keys)
            .field("keyed", &self.key_fn.is_some())
            .field("on_transition", &self.on_transition.is_some())
            .finish()
    }
}

impl Policy {
    /// The default policy (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// The outcome kinds that count as failures, replacing the default
    /// ([`OutcomeKind::Overloaded`]). Add [`ServerError`](OutcomeKind::ServerError),
    /// [`Timeout`](OutcomeKind::Timeout) or [`Connection`](OutcomeKind::Connection) to trip on
    /// other 5xx, timeouts or connection errors.
    ///
    /// # Panics
    ///
    /// When `kinds` holds [`Success`](OutcomeKind::Success),
    /// [`RateLimited`](OutcomeKind::RateLimited), [`SpendLimit`](OutcomeKind::SpendLimit),
    /// [`ClientError`](OutcomeKind::ClientError) or [`Rejected`](OutcomeKind::Rejected): none of
    /// them says the provider is unhealthy.
    pub fn trip_on(mut self, kinds: impl IntoIterator<Item = OutcomeKind>) -> Self {
        let kinds: Vec<OutcomeKind> = kinds.into_iter().collect();
        for kind in &kinds {
            assert!(
                !matches!(
                    kind,
                    OutcomeKind::Success
                        | OutcomeKind::RateLimited
                        | OutcomeKind::SpendLimit
                        | OutcomeKind::ClientError
                        | OutcomeKind::Rejected
                ),
                "a circuit breaker must not trip on `{kind}` outcomes"
            );
        }
        self.trip_on = kinds;
        self
    }

    /// Trips when at least `threshold` (a share, `0.0 < threshold <= 1.0`) of the calls in the
    /// [`window`](Self::window) failed, once the window holds at least `min_calls` calls.
    ///
    /// # Panics
    ///
    /// When `threshold` is not in `(0, 1]` or `min_calls` is zero.
    pub fn failure_rate(mut self, threshold: f64, min_calls: u32) -> Self {
        assert!(
            threshold > 0.0 && threshold <= 1.0,
            "failure-rate threshold must be in (0, 1], got {threshold}"
        );
        assert!(min_calls > 0, "min_calls must be at least 1");
        self.failure_rate = Some((threshold, min_calls));
        self
    }

    /// Turns the failure-rate rule off (only [`consecutive_failures`](Self::consecutive_failures)
    /// trips the breaker).
    pub fn without_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// The sliding window of the failure-rate rule.
    ///
    /// # Panics
    ///
    /// When the window is empty (`Count(0)` or a zero duration).
    pub fn window(mut self, window: Window) -> Self {
        match window {
            Window::Count(n) => assert!(n > 0, "a count window needs at least one call"),
            Window::Time(d) => assert!(!d.is_zero(), "a time window needs a non-zero duration"),
        }
        self.window = window;
        self
    }

    /// Trips after `n` failures in a row (no success between them; uncounted outcomes such as
    /// 429s neither break nor extend the run). `0` turns the rule off.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive = n;
        self
    }

    /// How long the breaker stays open after its first trip.
    ///
    /// # Panics
    ///
    /// When `base` is zero.
    pub fn open_duration(mut self, base: Duration) -> Self {
        assert!(!base.is_zero(), "the open duration must not be zero");
        self.open_base = base;
        self
    }

    /// The longest the breaker stays open, whatever the growth or the server's `retry-after`.
    /// It is also the memory of past trips: a trip that comes less than this long after the
    /// breaker closed continues the growth, a later one starts again from the base duration.
    ///
    /// # Panics
    ///
    /// When `max` is zero.
    pub fn max_open_duration(mut self, max: Duration) -> Self {
        assert!(!max.is_zero(), "the maximum open duration must not be zero");
        self.open_max = max;
        self
    }

    /// How the open duration grows with repeated trips (default [`Growth::Linear`]).
    ///
    /// Linear growth, Envoy's rule, is the default because the breaker's probe after an outage
    /// ends decides how soon traffic resumes: the open duration in effect when the provider
    /// recovers is, on average, half lost. Against a 30 s window of 529s in the `overload`
    /// scenario of BENCHMARKS.md, the preset completed its workload in 0.952 of the best time
    /// with linear growth and 0.889 with doubling (its third opening, 40 s, overshot the
    /// outage), for the same number of 529s. Probes are a few requests per opening: growing
    /// linearly rather than exponentially adds little load during a long outage.
    pub fn growth(mut self, growth: Growth) -> Self {
        self.growth = growth;
        self
    }

    /// Shortens each open duration by a random share of up to `jitter` (`0.0 <= jitter < 1.0`),
    /// so that many clients do not probe at the same instant. `0.0` makes it exact. A
    /// `retry-after` that came with the tripping failure is a lower bound after jitter.
    ///
    /// # Panics
    ///
    /// When `jitter` is not in `[0, 1)`.
    pub fn jitter(mut self, jitter: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&jitter),
            "jitter must be in [0, 1), got {jitter}"
        );
        self.jitter = jitter;
        self
    }

    /// Seeds the jitter's random numbers (for reproducible runs).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Lets `probes` calls through in the half-open state; the breaker closes when all of them
    /// succeed. Use [`close_after`](Self::close_after) to close after fewer successes.
    ///
    /// # Panics
    ///
    /// When `probes` is zero.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        assert!(probes > 0, "half-open needs at least one probe");
        self.probes = probes;
        self.close_after = probes;
        self
    }

    /// Closes the half-open breaker after `successes` successful probes (at most the number of
    /// probes; larger values are clamped). It reopens as soon as closing has become impossible,
    /// that is after more than `probes − successes` failed probes.
    ///
    /// # Panics
    ///
    /// When `successes` is zero.
    pub fn close_after(mut self, successes: u32) -> Self {
        assert!(successes > 0, "closing needs at least one successful probe");
        self.close_after = successes;
        self
    }

    /// The most keyed breakers kept in memory. When a new key arrives and the limit is reached,
    /// the least recently used closed breaker is forgotten (a closed breaker that has seen no
    /// call for the longest time); only when none is closed is the least recently used breaker
    /// forgotten, whatever its state. The unkeyed breaker does not count.
    ///
    /// # Panics
    ///
    /// When `max` is zero.
    pub fn max_keys(mut self, max: usize) -> Self {
        assert!(max > 0, "max_keys must be at least 1");
        self.max_keys = max;
        self
    }

    /// One breaker per key: `f` picks the key of each request from its head (method, URI,
    /// headers, extensions — for example a model name a cost layer stored there); `None` selects
    /// the unkeyed breaker.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// One breaker per host (the URI's authority); requests without one use the unkeyed
    /// breaker.
    pub fn key_by_host(self) -> Self {
        self.key_fn(|parts| parts.uri.authority().map(|a| a.as_str().to_owned()))
    }

    /// Calls `f` on every state change, after the breaker's lock is released (so `f` may
    /// inspect the breaker). Keep it cheap: it runs on the caller's task.
    pub fn on_transition<F>(mut self, f: F) -> Self
    where
        F: Fn(&Transition) + Send + Sync + 'static,
    {
        self.on_transition = Some(Arc::new(f));
        self
    }

    /// The open duration of the `trip`-th trip (1-based) before jitter and `retry-after`.
    pub(crate) fn open_duration_for(&self, trip: u32) -> Duration {
        let n = trip.max(1);
        let d = match self.growth {
            Growth::Constant => self.open_base,
            Growth::Linear => self.open_base.saturating_mul(n),
            Growth::Doubling => {
                let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                self.open_base.saturating_mul(factor)
            }
        };
        d.min(self.open_max)
    }

    pub(crate) fn probes_to_close(&self) -> u32 {
        self.close_after.min(self.probes)
    }
}
