//! The state machines of all breakers of one layer, behind one mutex.
//!
//! Every call takes the lock twice (admission and outcome), for a few hash-map operations: no
//! await, no allocation on the unkeyed path. Each state change gets a fresh *epoch* from a
//! counter shared by all breakers; a permit remembers the epoch it was admitted in, so an
//! outcome that arrives after the breaker moved on (or after its breaker was evicted and
//! recreated) is not counted against the new state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::error::Open;
use super::{Policy, Reason, State, Transition, Window};
use crate::signals::{Outcome, OutcomeKind};

/// How a finished call counts for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure { retry_after: Option<Duration> },
    Ignored,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) policy: Policy,
    registry: Mutex<Registry>,
}

#[derive(Debug)]
struct Registry {
    unkeyed: Breaker,
    keyed: HashMap<Arc<str>, Breaker>,
    next_epoch: u64,
    rng: fastrand::Rng,
}

#[derive(Debug)]
struct Breaker {
    phase: Phase,
    window: SlidingWindow,
    consecutive: u32,
    trips: u32,
    closed_at: Option<Instant>,
    last_used: Instant,
    epoch: u64,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        admitted: u32,
        successes: u32,
        failures: u32,
    },
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::Closed => State::Closed,
            Phase::Open { until } => State::Open { until },
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

/// What one admission or outcome changed, applied by the caller under the lock.
struct Ctx<'a> {
    policy: &'a Policy,
    key: &'a Option<Arc<str>>,
    next_epoch: &'a mut u64,
    rng: &'a mut fastrand::Rng,
    now: Instant,
    transitions: Vec<Transition>,
}

impl Ctx<'_> {
    fn epoch(&mut self) -> u64 {
        *self.next_epoch += 1;
        *self.next_epoch
    }
}

impl Breaker {
    fn new(policy: &Policy, epoch: u64, now: Instant) -> Self {
        Breaker {
            phase: Phase::Closed,
            window: SlidingWindow::new(policy.window),
            consecutive: 0,
            trips: 0,
            closed_at: None,
            last_used: now,
            epoch,
        }
    }

    fn transition(&mut self, ctx: &mut Ctx<'_>, to: Phase, reason: Reason) {
        let from = self.phase.state();
        self.phase = to;
        self.epoch = ctx.epoch();
        ctx.transitions.push(Transition {
            key: ctx.key.clone(),
            from,
            to: to.state(),
            at: ctx.now,
            reason,
            trips: self.trips,
        });
    }

    /// Open → half-open once the open duration has elapsed.
    fn advance(&mut self, ctx: &mut Ctx<'_>) {
        if let Phase::Open { until } = self.phase
            && ctx.now >= until
        {
            let to = Phase::HalfOpen {
                admitted: 0,
                successes: 0,
                failures: 0,
            };
            self.transition(ctx, to, Reason::OpenElapsed);
        }
    }

    fn trip(&mut self, ctx: &mut Ctx<'_>, reason: Reason, retry_after: Option<Duration>) {
        let policy = ctx.policy;
        if matches!(self.phase, Phase::Closed) {
            let remembered = self
                .closed_at
                .is_some_and(|closed| ctx.now.duration_since(closed) < policy.open_max);
            if !remembered {
                self.trips = 0;
            }
        }
        self.trips = self.trips.saturating_add(1);
        let mut open_for = policy.open_duration_for(self.trips);
        if policy.jitter > 0.0 {
            open_for = open_for.mul_f64(1.0 - policy.jitter * ctx.rng.f64());
        }
        if let Some(retry_after) = retry_after {
            open_for = open_for.max(retry_after.min(policy.open_max));
        }
        self.window.reset();
        self.consecutive = 0;
        let until = later(ctx.now, open_for);
        self.transition(ctx, Phase::Open { until }, reason);
    }

    fn close(&mut self, ctx: &mut Ctx<'_>) {
        self.window.reset();
        self.consecutive = 0;
        self.closed_at = Some(ctx.now);
        self.transition(ctx, Phase::Closed, Reason::ProbesSucceeded);
    }

    fn admit(&mut self, ctx: &mut Ctx<'_>) -> Result<(u64, bool), Open> {
        self.last_used = ctx.now;
        self.advance(ctx);
        match &mut self.phase {
            Phase::Closed => Ok((self.epoch, false)),
            Phase::Open { until } => Err(Open::new(ctx.key.clone(), *until, false)),
            Phase::HalfOpen { admitted, .. } => {
                if *admitted < ctx.policy.probes {
                    *admitted += 1;
                    Ok((self.epoch, true))
                } else {
                    Err(Open::new(ctx.key.clone(), ctx.now, true))
                }
            }
        }
    }

    fn record(&mut self, ctx: &mut Ctx<'_>, epoch: u64, verdict: Verdict) {
        if epoch != self.epoch {
            // Admitted in an earlier state. A late overload answer may still lengthen the
            // current opening if the server asked for a longer wait.
            if let (
                Phase::Open { until },
                Verdict::Failure {
                    retry_after: Some(ra),
                },
            ) = (&mut self.phase, verdict)
            {
                let wanted = later(ctx.now, ra.min(ctx.policy.open_max));
                if wanted > *until {
                    *until = wanted;
                    tracing::debug!(
                        key = ctx.key.as_deref().unwrap_or("*"),
                        retry_after_ms = ra.as_millis() as u64,
                        "circuit breaker stays open longer: late overload with retry-after"
                    );
                }
            }
            return;
        }
        let policy = ctx.policy;
        match (&mut self.phase, verdict) {
            (Phase::Closed, Verdict::Success) => {
                self.window.record(ctx.now, false);
                self.consecutive = 0;
            }
            (Phase::Closed, Verdict::Failure { retry_after }) => {
                self.window.record(ctx.now, true);
                self.consecutive += 1;
                if policy.consecutive > 0 && self.consecutive >= policy.consecutive {
                    let reason = Reason::ConsecutiveFailures(self.consecutive);
                    self.trip(ctx, reason, retry_after);
                } else if let Some((threshold, min_calls)) = policy.failure_rate {
                    let (calls, failures) = self.window.totals(ctx.now);
                    if calls >= min_calls && f64::from(failures) >= threshold * f64::from(calls) {
                        self.trip(ctx, Reason::FailureRate { failures, calls }, retry_after);
                    }
                }
            }
            (
                Phase::HalfOpen {
                    successes,
                    failures,
                    admitted,
                },
                verdict,
            ) => match verdict {
                Verdict::Success => {
                    *successes += 1;
                    if *successes >= policy.probes_to_close() {
                        self.close(ctx);
                    }
                }
                Verdict::Failure { retry_after } => {
                    *failures += 1;
                    if *failures > policy.probes - policy.probes_to_close() {
                        self.trip(ctx, Reason::ProbeFailed, retry_after);
                    }
                }
                Verdict::Ignored => *admitted = admitted.saturating_sub(1),
            },
            _ => {}
        }
    }

    /// A probe ended without an outcome (its future was dropped): free its slot.
    fn release(&mut self, epoch: u64) {
        if epoch == self.epoch
            && let Phase::HalfOpen { admitted, .. } = &mut self.phase
        {
            *admitted = admitted.saturating_sub(1);
        }
    }
}

impl Shared {
    pub(crate) fn new(policy: Policy) -> Self {
        let rng = match policy.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let now = Instant::now();
        let unkeyed = Breaker::new(&policy, 0, now);
        Shared {
            registry: Mutex::new(Registry {
                unkeyed,
                keyed: HashMap::new(),
                next_epoch: 0,
                rng,
            }),
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The state stays consistent at every await-free step, so a poisoned lock is usable.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the breaker of `key` (created when `create`), then reports the transitions.
    fn with<R>(
        &self,
        key: &Option<Arc<str>>,
        create: bool,
        f: impl FnOnce(&mut Breaker, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        let mut guard = self.lock();
        let Registry {
            unkeyed,
            keyed,
            next_epoch,
            rng,
        } = &mut *guard;
        let mut ctx = Ctx {
            policy: &self.policy,
            key,
            next_epoch,
            rng,
            now,
            transitions: Vec::new(),
        };
        let breaker = match key {
            None => Some(unkeyed),
            Some(k) if create && !keyed.contains_key(&**k) => {
                if keyed.len() >= self.policy.max_keys {
                    evict(keyed);
                }
                let epoch = ctx.epoch();
                Some(
                    keyed
                        .entry(k.clone())
                        .or_insert_with(|| Breaker::new(&self.policy, epoch, now)),
                )
            }
            Some(k) => keyed.get_mut(&**k),
        };
        let result = breaker.map(|b| f(b, &mut ctx));
        let transitions = ctx.transitions;
        drop(guard);
        for transition in &transitions {
            self.emit(transition);
        }
        result
    }

    /// Admits a call for `key`, or refuses it with [`Open`].
    pub(crate) fn admit(self: &Arc<Self>, key: Option<String>) -> Result<Permit, Open> {
        let key: Option<Arc<str>> = key.map(Arc::from);
        let admitted = self
            .with(&key, true, |b, ctx| b.admit(ctx))
            .expect("the breaker was just created");
        match admitted {
            Ok((epoch, probe)) => Ok(Permit {
                shared: self.clone(),
                key,
                epoch,
                probe,
                done: false,
            }),
            Err(open) => {
                let key = open.key().unwrap_or("*");
                tracing::debug!(
                    key,
                    half_open = open.is_half_open(),
                    retry_after_ms = open.retry_after().as_millis() as u64,
                    "circuit breaker refused a call"
                );
                crate::observe::emit::breaker_rejected(key);
                Err(open)
            }
        }
    }

    /// The state of the breaker of `key` (closed when it does not exist).
    pub(crate) fn state(&self, key: Option<&str>) -> State {
        let key: Option<Arc<str>> = key.map(Arc::from);
        self.with(&key, false, |b, ctx| {
            b.advance(ctx);
            b.phase.state()
        })
        .unwrap_or(State::Closed)
    }

    /// The keys with a breaker in memory and their states (the unkeyed breaker first, as
    /// `None`).
    pub(crate) fn states(&self) -> Vec<(Option<String>, State)> {
        let now = Instant::now();
        let guard = self.lock();
        let observe = |b: &Breaker| match b.phase {
            Phase::Open { until } if now >= until => State::HalfOpen,
            phase => phase.state(),
        };
        let mut states = vec![(None, observe(&guard.unkeyed))];
        states.extend(
            guard
                .keyed
                .iter()
                .map(|(k, b)| (Some(k.to_string()), observe(b))),
        );
        states
    }

    fn emit(&self, t: &Transition) {
        let key = t.key().unwrap_or("*");
        crate::observe::emit::breaker_transition(key, t.to.as_str(), t.reason.as_str());
        match t.to {
            State::Open { until } => tracing::warn!(
                key,
                from = t.from.as_str(),
                reason = t.reason.as_str(),
                trips = t.trips,
                open_for_ms = until.saturating_duration_since(t.at).as_millis() as u64,
                "circuit breaker opened"
            ),
            State::HalfOpen => tracing::info!(
                key,
                from = t.from.as_str(),
                reason = t.reason.as_str(),
                "circuit breaker half-open"
            ),
            State::Closed => tracing::info!(
                key,
                from = t.from.as_str(),
                reason = t.reason.as_str(),
                "circuit breaker closed"
            ),
        }
        if let Some(hook) = &self.policy.on_transition {
            hook(t);
        }
    }
}

/// Forgets the least recently used closed breaker, or the least recently used one when none is
/// closed.
fn evict(keyed: &mut HashMap<Arc<str>, Breaker>) {
    let victim = keyed
        .iter()
        .filter(|(_, b)| matches!(b.phase, Phase::Closed))
        .min_by_key(|(_, b)| b.last_used)
        .or_else(|| keyed.iter().min_by_key(|(_, b)| b.last_used))
        .map(|(k, _)| k.clone());
    if let Some(victim) = victim {
        tracing::debug!(key = &*victim, "circuit breaker evicted");
        keyed.remove(&victim);
    }
}

/// A call admitted by a breaker. Report its outcome with [`complete`](Self::complete); dropping
/// it unreported frees its probe slot.
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Arc<Shared>,
    key: Option<Arc<str>>,
    epoch: u64,
    probe: bool,
    done: bool,
}

impl Permit {
    /// Reports the call's outcome.
    pub(crate) fn complete(mut self, outcome: &Outcome) {
        self.done = true;
        let verdict = verdict(&self.shared.policy, outcome);
        let epoch = self.epoch;
        self.shared
            .with(&self.key, false, |b, ctx| b.record(ctx, epoch, verdict));
    }

    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }
}

/// How `outcome` counts under `policy` (see [`Policy`]'s "Which outcomes count").
pub(crate) fn verdict(policy: &Policy, outcome: &Outcome) -> Verdict {
    match outcome.kind() {
        kind if policy.trip_on.contains(&kind) => Verdict::Failure {
            retry_after: outcome.retry_after(),
        },
        OutcomeKind::Success | OutcomeKind::ClientError => Verdict::Success,
        _ => Verdict::Ignored,
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            let epoch = self.epoch;
            self.shared.with(&self.key, false, |b, _| b.release(epoch));
        }
    }
}

/// The failure-rate window.
#[derive(Debug)]
enum SlidingWindow {
    Count {
        outcomes: VecDeque<bool>,
        size: usize,
        failures: u32,
    },
    Time {
        buckets: VecDeque<Bucket>,
        span: Duration,
        slot: Duration,
    },
}

#[derive(Debug)]
struct Bucket {
    start: Instant,
    calls: u32,
    failures: u32,
}

impl SlidingWindow {
    fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => SlidingWindow::Count {
                outcomes: VecDeque::new(),
                size: n as usize,
                failures: 0,
            },
            Window::Time(span) => SlidingWindow::Time {
                buckets: VecDeque::new(),
                span,
                slot: (span / 10).max(Duration::from_nanos(1)),
            },
        }
    }

    fn reset(&mut self) {
        match self {
            SlidingWindow::Count {
                outcomes, failures, ..
            } => {
                outcomes.clear();
                *failures = 0;
            }
            SlidingWindow::Time { buckets, .. } => buckets.clear(),
        }
    }

    fn expire(&mut self, now: Instant) {
        if let SlidingWindow::Time { buckets, span, .. } = self {
            while buckets
                .front()
                .is_some_and(|b| now.duration_since(b.start) >= *span)
            {
                buckets.pop_front();
            }
        }
    }

    fn record(&mut self, now: Instant, failed: bool) {
        self.expire(now);
        match self {
            SlidingWindow::Count {
                outcomes,
                size,
                failures,
            } => {
                outcomes.push_back(failed);
                *failures += u32::from(failed);
                if outcomes.len() > *size && outcomes.pop_front() == Some(true) {
                    *failures -= 1;
                }
            }
            SlidingWindow::Time { buckets, slot, .. } => match buckets.back_mut() {
                Some(b) if now.duration_since(b.start) < *slot => {
                    b.calls += 1;
                    b.failures += u32::from(failed);
                }
                _ => buckets.push_back(Bucket {
                    start: now,
                    calls: 1,
                    failures: u32::from(failed),
                }),
            },
        }
    }

    /// (calls, failures) in the window.
    fn totals(&mut self, now: Instant) -> (u32, u32) {
        self.expire(now);
        match self {
            SlidingWindow::Count {
                outcomes, failures, ..
            } => (outcomes.len() as u32, *failures),
            SlidingWindow::Time { buckets, .. } => buckets
                .iter()
                .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures)),
        }
    }
}

/// `now + d`, saturating at a far future instead of overflowing the clock (an `open_max` of
/// `Duration::MAX`, a server's huge `retry-after`).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 60 * 60)))
        .unwrap_or(now)
}
