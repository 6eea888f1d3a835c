//! The shared state: keys, their buckets, queues, in-flight accounting and learning.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxError;
use crate::cost::{Cost, Usage};
use crate::signals::{
    BucketReading, Dialect, Dimension, Outcome, OutcomeKind, RateLimitSnapshot, ResponseSignals,
};

use super::RateLimitKey;
use super::bucket::{Bucket, add, sub};
use super::config::{Limits, Priority, RampUp};
use super::error::{CostExceedsLimit, WaitTooLong};
use super::store::{Buckets, MemoryStore, Store};

/// The default bound on the number of keys a state keeps.
pub const DEFAULT_MAX_KEYS: usize = 1024;

/// Requests sent before anything is known about a key (the start-up probes): the others wait
/// for the first answer, which comes after the shortest of their round trips.
pub const STARTUP_PROBES: usize = 4;

/// The cooldown after a 429 that carries no `retry-after`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(1);

/// Resolution of Anthropic's `*-tokens-remaining` (rounded to the nearest thousand).
const TOKENS_REMAINING_TOLERANCE: u64 = 500;

/// Resolution of resets (RFC 3339 seconds, measured against a `date` header in seconds): the
/// true instant may lie this much before the reset read...
const RESET_BELOW: Duration = Duration::from_secs(2);
/// ...or this much after it (a server that truncates instead of rounding up).
const RESET_ABOVE: Duration = Duration::from_secs(1);
/// The longest a request is assumed to take from dispatch to the server's admission, where
/// `remaining` is read (a network round trip at most; generation comes after).
const READING_DELAY: Duration = Duration::from_millis(50);

/// Bounds and smoothing of the learned input-estimate correction.
const FACTOR_MIN: f64 = 0.5;
const FACTOR_MAX: f64 = 4.0;
const FACTOR_ALPHA: f64 = 0.25;

/// Bounds and smoothing of the learned share of `max_tokens` a request produces.
const OUTPUT_SHARE_MIN: f64 = 0.25;
const OUTPUT_SHARE_ALPHA: f64 = 0.5;

/// Cost per dimension, in [`Dimension::ALL`] order.
pub(crate) type Charge = [u64; 4];

const REQ: usize = 0;
const IN: usize = 1;
const OUT: usize = 2;
const TOK: usize = 3;

/// The state of a rate limiter, shared by every clone of the services that use it.
///
/// Build it once and hand it to several layers ([`RateLimitLayer::with_state`]) when they talk to
/// the same organisation; [`RateLimitLayer::new`] builds a fresh one per layer. Cloning it is
/// cheap and shares it.
///
/// [`RateLimitLayer::with_state`]: super::RateLimitLayer::with_state
/// [`RateLimitLayer::new`]: super::RateLimitLayer::new
#[derive(Clone)]
pub struct RateLimitState {
    shared: Arc<Shared>,
}

struct Shared {
    limits: Limits,
    key_limits: HashMap<RateLimitKey, Limits>,
    max_keys: usize,
    ramp: Option<RampUp>,
    cooldown_without_hint: Duration,
    store: Arc<dyn Store>,
    keys: Mutex<HashMap<RateLimitKey, Arc<KeyCell>>>,
    tick: AtomicU64,
}

impl fmt::Debug for RateLimitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitState")
            .field("limits", &self.shared.limits)
            .field("max_keys", &self.shared.max_keys)
            .field("ramp", &self.shared.ramp)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimitState {
    fn default() -> Self {
        RateLimitState::new()
    }
}

/// Builds a [`RateLimitState`]; see [`RateLimitState::builder`].
#[derive(Debug)]
pub struct RateLimitStateBuilder {
    limits: Limits,
    key_limits: HashMap<RateLimitKey, Limits>,
    max_keys: usize,
    ramp: Option<RampUp>,
    cooldown_without_hint: Duration,
    store: Arc<dyn Store>,
}

impl RateLimitStateBuilder {
    /// Limits configured for every key (default: none, everything is learned).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Limits configured for one key, replacing [`limits`](Self::limits) for it.
    pub fn key_limits(mut self, key: impl Into<RateLimitKey>, limits: Limits) -> Self {
        self.key_limits.insert(key.into(), limits);
        self
    }

    /// The most keys kept (default [`DEFAULT_MAX_KEYS`]); idle keys are evicted least recently
    /// used first. A key with waiters or requests in flight is never evicted, so the bound can
    /// be exceeded while every key is busy. Values below 1 are raised to 1.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Enables slow start (off by default).
    pub fn ramp_up(mut self, ramp: RampUp) -> Self {
        self.ramp = Some(ramp);
        self
    }

    /// The cooldown after a 429 without `retry-after` (default [`DEFAULT_COOLDOWN`]).
    pub fn cooldown_without_hint(mut self, cooldown: Duration) -> Self {
        self.cooldown_without_hint = cooldown;
        self
    }

    /// Where buckets live (default [`MemoryStore`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Builds the state.
    pub fn build(self) -> RateLimitState {
        RateLimitState {
            shared: Arc::new(Shared {
                limits: self.limits,
                key_limits: self.key_limits,
                max_keys: self.max_keys,
                ramp: self.ramp,
                cooldown_without_hint: self.cooldown_without_hint,
                store: self.store,
                keys: Mutex::new(HashMap::new()),
                tick: AtomicU64::new(0),
            }),
        }
    }
}

impl RateLimitState {
    /// A state with no configured limit: everything is learned from the responses.
    pub fn new() -> Self {
        RateLimitState::builder().build()
    }

    /// A state with `limits` configured for every key.
    pub fn with_limits(limits: Limits) -> Self {
        RateLimitState::builder().limits(limits).build()
    }

    /// A builder with the defaults.
    pub fn builder() -> RateLimitStateBuilder {
        RateLimitStateBuilder {
            limits: Limits::new(),
            key_limits: HashMap::new(),
            max_keys: DEFAULT_MAX_KEYS,
            ramp: None,
            cooldown_without_hint: DEFAULT_COOLDOWN,
            store: Arc::new(MemoryStore::new()),
        }
    }

    /// A snapshot of every key, in key order.
    pub fn snapshot(&self) -> Vec<KeySnapshot> {
        let cells: Vec<Arc<KeyCell>> = lock(&self.shared.keys).values().cloned().collect();
        let now = Instant::now();
        let mut out: Vec<KeySnapshot> = cells.iter().map(|c| c.snapshot(now)).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// A snapshot of one key, if the state knows it.
    pub fn key_snapshot(&self, key: &RateLimitKey) -> Option<KeySnapshot> {
        let cell = lock(&self.shared.keys).get(key).cloned();
        cell.map(|c| c.snapshot(Instant::now()))
    }

    /// The cell of `key`, created (evicting the least recently used idle key when full) if
    /// missing.
    fn cell(&self, key: &RateLimitKey) -> Arc<KeyCell> {
        let tick = self.shared.tick.fetch_add(1, Ordering::Relaxed);
        let mut keys = lock(&self.shared.keys);
        if let Some(cell) = keys.get(key) {
            cell.last_used.store(tick, Ordering::Relaxed);
            return cell.clone();
        }
        if keys.len() >= self.shared.max_keys {
            // Idle = referenced only by the map: no waiter, nothing admitted or in flight
            // (every ticket holds the cell). Evict as many as needed to get back under the
            // bound: after a burst of busy keys the map shrinks again instead of staying at its
            // high-water mark.
            let excess = keys.len() + 1 - self.shared.max_keys;
            let mut idle: Vec<(u64, RateLimitKey)> = keys
                .iter()
                .filter(|(_, c)| Arc::strong_count(c) == 1)
                .map(|(k, c)| (c.last_used.load(Ordering::Relaxed), k.clone()))
                .collect();
            idle.sort_unstable_by_key(|(last_used, _)| *last_used);
            for (_, victim) in idle.into_iter().take(excess) {
                keys.remove(&victim);
                tracing::debug!(key = %victim, "rate limit: evicted idle key");
            }
        }
        let limits = self
            .shared
            .key_limits
            .get(key)
            .copied()
            .unwrap_or(self.shared.limits);
        let now = Instant::now();
        let mut buckets = self.shared.store.open(key);
        let configured = Dimension::ALL.map(|d| limits.get(d));
        for d in Dimension::ALL {
            if buckets.get(d).is_none()
                && let Some(cap) = configured[d.index()]
            {
                buckets.set(d, Some(Bucket::new(cap, limits.get_window(), now)));
            }
        }
        let cell = Arc::new(KeyCell {
            key: key.clone(),
            last_used: AtomicU64::new(tick),
            state: Mutex::new(KeyState {
                buckets,
                configured,
                window: limits.get_window(),
                learned: [None; 4],
                server: [None; 4],
                probe: Probe::Idle,
                probes: 0,
                cooldown_until: None,
                dispatched: [0; 4],
                dispatch_seq: 0,
                refunds: VecDeque::new(),
                raw_input: 0,
                outstanding_output: 0,
                completed_output: 0,
                known_output: 0,
                unknown_reserved: 0,
                output_share: 1.0,
                output_anchor: None,
                in_flight: 0,
                queue: BTreeMap::new(),
                queued: [[0; 4]; 2],
                next_seq: 0,
                input_factor: 1.0,
                anchor: None,
                ramp: self.shared.ramp,
                ramp_from: None,
                last_admit: None,
                cooldown_without_hint: self.shared.cooldown_without_hint,
            }),
        });
        keys.insert(key.clone(), cell.clone());
        cell
    }

    /// Enters the limiter: admits at once when the queue is empty and the cost fits, else
    /// queues (or fails at once when the cost can never fit or the projected wait is too long).
    pub(crate) fn enter(
        &self,
        key: &RateLimitKey,
        cost: Cost,
        exact: bool,
        priority: Priority,
        max_wait: Option<Duration>,
    ) -> Result<Ticket, BoxError> {
        let cell = self.cell(key);
        let now = Instant::now();
        let mut st = lock(&cell.state);
        let (charge, raw) = st.charge_of(cost, exact);
        let class = priority.class();
        // Fast path: nobody of the same or a higher class waits.
        if st.queue.keys().next().is_none_or(|k| k.0 > class) {
            match st.check(&charge, now) {
                Check::Fits => {
                    let record = st.admit(charge, raw, now);
                    drop(st);
                    return Ok(Ticket {
                        cell,
                        phase: Phase::Admitted(record),
                    });
                }
                Check::Never(e) => return Err(cost_exceeds(&cell.key, e)),
                Check::Until(..) | Check::Probe => {}
            }
        } else if let Check::Never(e) = st.check(&charge, now) {
            return Err(cost_exceeds(&cell.key, e));
        }
        let (at, dimension) = st.project(&charge, class, now);
        let wait = at.saturating_duration_since(now);
        if let Some(max) = max_wait
            && wait > max
        {
            tracing::info!(key = %cell.key, dimension = st.reason(dimension),
                wait_ms = wait.as_millis() as u64, max_wait_ms = max.as_millis() as u64,
                "rate limit: refused, projected wait exceeds the maximum");
            crate::observe::emit::rate_limit_refused(&cell.key, "wait_too_long");
            return Err(WaitTooLong::new(dimension, wait, max).into());
        }
        let id = (class, st.next_seq);
        st.next_seq += 1;
        st.queue.insert(
            id,
            Waiter {
                charge,
                waker: None,
            },
        );
        for (q, c) in st.queued[class].iter_mut().zip(charge) {
            *q = q.saturating_add(c);
        }
        let reason = st.reason(dimension);
        tracing::debug!(key = %cell.key, dimension = reason,
            amount = dimension.map_or(0, |d| charge[d.index()]), wait_ms = wait.as_millis() as u64,
            queued = st.queue.len(), "rate limit: waiting");
        drop(st);
        Ok(Ticket {
            cell,
            phase: Phase::Queued {
                id,
                charge,
                raw,
                since: now,
                deadline: max_wait.map(|m| add(now, m)),
                max_wait,
                reason,
            },
        })
    }
}

/// Traces and counts a request whose cost can never fit.
fn cost_exceeds(key: &RateLimitKey, e: CostExceedsLimit) -> BoxError {
    tracing::warn!(key = %key, dimension = e.dimension().as_str(), amount = e.cost(),
        limit = e.limit(), "rate limit: refused, cost exceeds the limit");
    crate::observe::emit::rate_limit_refused(key, "cost_exceeds_limit");
    e.into()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves the state half-updated in a way that matters more than
    // refusing every later request would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct KeyCell {
    key: RateLimitKey,
    last_used: AtomicU64,
    state: Mutex<KeyState>,
}

impl KeyCell {
    fn snapshot(&self, now: Instant) -> KeySnapshot {
        let st = lock(&self.state);
        KeySnapshot {
            key: self.key.clone(),
            buckets: Dimension::ALL.map(|d| {
                st.buckets.get(d).map(|b| BucketSnapshot {
                    capacity: b.capacity(),
                    window: b.window(),
                    level: b.level(now),
                    full_at: b.full_at(),
                    learned: st.learned[d.index()].map(|l| l.0),
                    configured: st.configured[d.index()],
                })
            }),
            cooldown_until: st.cooldown_until.filter(|c| *c > now),
            in_flight: st.in_flight,
            queued: st.queue.len(),
            input_correction: st.input_factor,
            output_share: st.output_share,
        }
    }
}

/// What the limiter knows about one key at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySnapshot {
    key: RateLimitKey,
    buckets: [Option<BucketSnapshot>; 4],
    cooldown_until: Option<Instant>,
    in_flight: usize,
    queued: usize,
    input_correction: f64,
    output_share: f64,
}

impl KeySnapshot {
    /// The key.
    pub fn key(&self) -> &RateLimitKey {
        &self.key
    }

    /// The bucket of `dimension`, when its capacity is known.
    pub fn bucket(&self, dimension: Dimension) -> Option<&BucketSnapshot> {
        self.buckets[dimension.index()].as_ref()
    }

    /// When the current cooldown ends, if one is running.
    pub fn cooldown_until(&self) -> Option<Instant> {
        self.cooldown_until
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

    /// The learned share of `max_tokens` a request is taken to produce when its response
    /// carries no [`Usage`] (1.0 until learned).
    pub fn output_share(&self) -> f64 {
        self.output_share
    }
}

/// One bucket in a [`KeySnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSnapshot {
    capacity: u64,
    window: Duration,
    level: u64,
    full_at: Instant,
    learned: Option<u64>,
    configured: Option<u64>,
}

impl BucketSnapshot {
    /// The capacity in effect.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The window the capacity replenishes over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The units available now.
    pub fn level(&self) -> u64 {
        self.level
    }

    /// When the bucket is full again.
    pub fn full_at(&self) -> Instant {
        self.full_at
    }

    /// The limit last reported by the server, if any.
    pub fn learned(&self) -> Option<u64> {
        self.learned
    }

    /// The configured limit, if any.
    pub fn configured(&self) -> Option<u64> {
        self.configured
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// Nothing known, no probe out: the next request probes.
    Idle,
    /// Requests are out to learn the limits (at most [`STARTUP_PROBES`]); the others wait for
    /// the first answer.
    InFlight,
    /// Responses carry no rate-limit headers and nothing is configured: not limited.
    Unlimited,
}

struct Waiter {
    charge: Charge,
    waker: Option<Waker>,
}

/// An output reading, for [`KeyState::learn_output_share`]: the server's `full_at` and the
/// finished output (known, and reserved but unknown) before the request was sent.
#[derive(Clone, Copy, Debug)]
struct OutputAnchor {
    full_at: Instant,
    known: u64,
    unknown: u64,
}

#[derive(Clone, Copy, Debug)]
struct Anchor {
    full_at: Instant,
    raw_after: u64,
}

struct KeyState {
    buckets: Box<dyn Buckets>,
    configured: [Option<u64>; 4],
    window: Duration,
    learned: [Option<(u64, Duration)>; 4],
    /// The server's own bucket, per dimension, while a configured ceiling is below the limit it
    /// reports: the ceiling (in `buckets`) counts this key's own usage at the configured rate,
    /// this one the server's level at the server's rate, corrected from its readings. A request
    /// must fit both.
    server: [Option<Bucket>; 4],
    probe: Probe,
    /// Probes in flight.
    probes: usize,
    cooldown_until: Option<Instant>,
    /// Cumulative charge at dispatch, per dimension (monotone).
    dispatched: Charge,
    /// Dispatches so far: the position of each request in dispatch order.
    dispatch_seq: u64,
    /// Requests charged in `dispatched` and then given back (refused with a 429, or admitted
    /// but never sent), with their dispatch position: a reading must not count them as charged
    /// after it. The most recent [`MAX_REFUNDS`] are kept.
    refunds: VecDeque<(u64, Charge)>,
    /// Cumulative raw (uncorrected) input estimate at dispatch.
    raw_input: u64,
    /// Output reserved by requests in flight.
    outstanding_output: u64,
    /// Cumulative output of finished requests (their true output when known, else their
    /// reservation): what a server counting output as produced may have charged since.
    completed_output: u64,
    /// Cumulative true output of finished requests whose output is known (a [`Usage`], or
    /// refused: none).
    known_output: u64,
    /// Cumulative reservation of finished requests whose output is unknown.
    unknown_reserved: u64,
    /// The learned share of its reservation a request produces, when its output is unknown
    /// (1.0 until learned): what such a request is taken to have charged.
    output_share: f64,
    output_anchor: Option<OutputAnchor>,
    in_flight: usize,
    queue: BTreeMap<(usize, u64), Waiter>,
    /// Queued charge per priority class.
    queued: [Charge; 2],
    next_seq: u64,
    input_factor: f64,
    anchor: Option<Anchor>,
    ramp: Option<RampUp>,
    ramp_from: Option<Instant>,
    last_admit: Option<Instant>,
    cooldown_without_hint: Duration,
}

pub(crate) enum Check {
    Fits,
    Until(Instant),
    Probe,
    Never(CostExceedsLimit),
}

/// What a response says, as the limiter reads it.
struct Reply<'a> {
    snapshot: &'a RateLimitSnapshot,
    outcome: &'a Outcome,
    received: Instant,
    usage: Option<Usage>,
}

/// How many given-back requests a key remembers for [`KeyState::refunded_after`].
const MAX_REFUNDS: usize = 256;

/// What a dispatched request charged, and the counters right after its dispatch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    seq: u64,
    charge: Charge,
    after: Charge,
    raw_after: u64,
    completed_before: u64,
    known_before: u64,
    unknown_before: u64,
    at: Instant,
    probe: bool,
}

impl KeyState {
    fn charge_of(&self, cost: Cost, exact: bool) -> (Charge, u64) {
        let raw = cost.input_tokens();
        let input = if exact {
            raw
        } else {
            let x = (raw as f64 * self.input_factor).ceil();
            if x >= u64::MAX as f64 {
                u64::MAX
            } else {
                x as u64
            }
        };
        let out = cost.output_tokens();
        (
            [cost.requests(), input, out, input.saturating_add(out)],
            raw,
        )
    }

    fn capacity(&self, d: Dimension) -> Option<(u64, Duration)> {
        let i = d.index();
        match (self.configured[i], self.learned[i]) {
            (Some(c), Some((l, w))) => Some((c.min(l), if l <= c { w } else { self.window })),
            (Some(c), None) => Some((c, self.window)),
            (None, Some(l)) => Some(l),
            (None, None) => None,
        }
    }

    /// What a wait is for, for the traces: a dimension, the cooldown or the start-up probe.
    fn reason(&self, dimension: Option<Dimension>) -> &'static str {
        match dimension {
            Some(d) => d.as_str(),
            None if self.probing() => "probe",
            None => "cooldown",
        }
    }

    /// Nothing known and every start-up probe out: wait for the first answer.
    fn probing(&self) -> bool {
        self.probe == Probe::InFlight && self.probes >= STARTUP_PROBES && !self.any_bucket()
    }

    /// A probe ended (answered, failed or dropped).
    fn probe_done(&mut self) {
        self.probes = self.probes.saturating_sub(1);
        if self.probes == 0 && self.probe == Probe::InFlight {
            self.probe = Probe::Idle;
        }
    }

    fn any_bucket(&self) -> bool {
        Dimension::ALL
            .iter()
            .any(|d| self.buckets.get(*d).is_some())
    }

    fn usable(&self, capacity: u64, now: Instant) -> u64 {
        match (self.ramp, self.ramp_from) {
            (Some(r), Some(from)) => {
                let share = r.share(now.saturating_duration_since(from));
                ((capacity as f64 * share).ceil() as u64).clamp(1, capacity.max(1))
            }
            _ => capacity,
        }
    }

    fn ramp_end(&self) -> Option<Instant> {
        Some(add(self.ramp_from?, self.ramp?.period()))
    }

    fn check(&self, charge: &Charge, now: Instant) -> Check {
        for d in Dimension::ALL {
            if let Some(b) = self.buckets.get(d)
                && charge[d.index()] > b.capacity()
            {
                return Check::Never(CostExceedsLimit::new(d, charge[d.index()], b.capacity()));
            }
        }
        if self.probing() {
            return Check::Probe;
        }
        let (at, _) = self.ready_at(charge, None, now);
        if at > now {
            Check::Until(at)
        } else {
            Check::Fits
        }
    }

    /// The instant `charge` fits after `ahead` (queued charge before it) is admitted.
    fn ready_at(
        &self,
        charge: &Charge,
        ahead: Option<&Charge>,
        now: Instant,
    ) -> (Instant, Option<Dimension>) {
        let mut at = now;
        let mut dim = None;
        if let Some(c) = self.cooldown_until
            && c > at
        {
            at = c;
        }
        for d in Dimension::ALL {
            let Some(mut b) = self.buckets.get(d) else {
                continue;
            };
            let i = d.index();
            if let Some(ahead) = ahead {
                b.charge(ahead[i], now);
            }
            let t = match b.ready_at(charge[i], self.usable(b.capacity(), now)) {
                Some(t) => t,
                // Only a ramp makes a cost that fits the capacity not fit the usable share:
                // wait for its end at the latest.
                None => self.ramp_end().map_or(now, |e| {
                    e.max(b.ready_at(charge[i], b.capacity()).unwrap_or(e))
                }),
            };
            // Under a ceiling the server's own bucket must hold the cost too (it is larger
            // than the ceiling, so the cost always fits it eventually).
            let t = match self.server[i] {
                Some(mut s) => {
                    if let Some(ahead) = ahead {
                        s.charge(ahead[i], now);
                    }
                    s.ready_at(charge[i], s.capacity()).map_or(t, |u| t.max(u))
                }
                None => t,
            };
            if t > at {
                at = t;
                dim = Some(d);
            }
        }
        (at, dim)
    }

    /// The projected admission instant of a new waiter of `class` (exact under FIFO: every
    /// waiter of the same or a higher class goes first).
    fn project(&self, charge: &Charge, class: usize, now: Instant) -> (Instant, Option<Dimension>) {
        let mut ahead = [0u64; 4];
        for q in &self.queued[..=class] {
            for (a, c) in ahead.iter_mut().zip(q) {
                *a = a.saturating_add(*c);
            }
        }
        self.ready_at(charge, Some(&ahead), now)
    }

    fn admit(&mut self, charge: Charge, raw: u64, now: Instant) -> Record {
        if let Some(r) = self.ramp
            && self
                .last_admit
                .is_none_or(|l| now.saturating_duration_since(l) >= r.idle_after())
        {
            self.ramp_from = Some(now);
        }
        self.last_admit = Some(now);
        for d in Dimension::ALL {
            if let Some(mut b) = self.buckets.get(d) {
                if d == Dimension::InputTokens && b.full_at() <= now {
                    // The bucket was full: refill was lost, successive readings would
                    // understate what the server charged in between.
                    self.anchor = None;
                }
                if d == Dimension::OutputTokens && b.full_at() <= now {
                    self.output_anchor = None;
                }
                b.charge(charge[d.index()], now);
                self.buckets.set(d, Some(b));
            }
            if let Some(s) = &mut self.server[d.index()] {
                s.charge(charge[d.index()], now);
            }
        }
        for (c, x) in self.dispatched.iter_mut().zip(charge) {
            *c = c.saturating_add(x);
        }
        self.raw_input = self.raw_input.saturating_add(raw);
        self.dispatch_seq += 1;
        self.outstanding_output = self.outstanding_output.saturating_add(charge[OUT]);
        self.in_flight += 1;
        let probe = !self.any_bucket() && self.probe != Probe::Unlimited;
        if probe {
            self.probe = Probe::InFlight;
            self.probes += 1;
        }
        Record {
            seq: self.dispatch_seq,
            charge,
            after: self.dispatched,
            raw_after: self.raw_input,
            completed_before: self.completed_output,
            known_before: self.known_output,
            unknown_before: self.unknown_reserved,
            at: now,
            probe,
        }
    }

    /// Notes that `record`'s whole charge was given back, for the readings of requests
    /// dispatched before it.
    fn note_refund(&mut self, record: &Record) {
        if self.refunds.len() == MAX_REFUNDS {
            self.refunds.pop_front();
        }
        self.refunds.push_back((record.seq, record.charge));
    }

    /// What requests dispatched after `record` charged and then got back.
    fn refunded_after(&self, record: &Record) -> Charge {
        let mut sum: Charge = [0; 4];
        for (_, charge) in self.refunds.iter().filter(|(seq, _)| *seq > record.seq) {
            for (s, c) in sum.iter_mut().zip(charge) {
                *s = s.saturating_add(*c);
            }
        }
        sum
    }

    fn refund(&mut self, dims: &[usize], amounts: &Charge, now: Instant) {
        for &i in dims {
            let d = Dimension::ALL[i];
            if let Some(mut b) = self.buckets.get(d) {
                b.refund(amounts[i], now);
                self.buckets.set(d, Some(b));
            }
            if let Some(s) = &mut self.server[i] {
                s.refund(amounts[i], now);
            }
        }
    }

    /// The request is no longer in flight; the server may have charged `output` for it.
    fn finish(&mut self, record: &Record, output: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.outstanding_output = self.outstanding_output.saturating_sub(record.charge[OUT]);
        self.completed_output = self.completed_output.saturating_add(output);
    }

    /// Gives back the output reserved by a request that will never report (an error, or a
    /// future dropped while the call was in flight).
    fn release_output(&mut self, record: &Record, now: Instant) {
        self.finish(record, 0);
        let out = record.charge[OUT];
        self.refund(&[OUT, TOK], &[0, 0, out, out], now);
        if record.probe {
            self.probe_done();
        }
        self.wake_head();
    }

    /// Gives back everything a request charged (admitted but never sent).
    fn unadmit(&mut self, record: &Record, now: Instant) {
        self.finish(record, 0);
        self.refund(&[REQ, IN, OUT, TOK], &record.charge, now);
        self.note_refund(record);
        if record.probe {
            self.probe_done();
        }
        self.wake_head();
    }

    fn wake_head(&mut self) {
        if let Some((_, w)) = self.queue.iter_mut().next()
            && let Some(waker) = w.waker.take()
        {
            waker.wake();
        }
    }

    fn dequeue(&mut self, id: (usize, u64)) {
        if let Some(w) = self.queue.remove(&id) {
            for (q, c) in self.queued[id.0].iter_mut().zip(w.charge) {
                *q = q.saturating_sub(c);
            }
        }
        self.wake_head();
    }

    /// Learns from a response to a request dispatched with `record`; returns the cooldown to
    /// announce when the response was a 429.
    fn complete(
        &mut self,
        key: &RateLimitKey,
        record: &Record,
        response: Reply<'_>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let Reply {
            snapshot,
            outcome,
            received,
            usage,
        } = response;
        let limited = outcome.kind() == OutcomeKind::RateLimited;
        let mut absorbed = None;
        if limited {
            // The server refused the request: it charged nothing for it.
            self.refund(&[REQ, IN, OUT, TOK], &record.charge, now);
            self.note_refund(record);
            let wait = outcome.retry_after().unwrap_or(self.cooldown_without_hint);
            let until = add(received, wait);
            let until = self.cooldown_until.map_or(until, |c| c.max(until));
            self.cooldown_until = Some(until);
            absorbed = Some(until);
            tracing::info!(key = %key, wait_ms = wait.as_millis() as u64,
                cooldown_ms = until.saturating_duration_since(now).as_millis() as u64,
                "rate limit: 429, cooling down every request of this key");
        }
        // What the server charged (or will charge) for this request's output: nothing when it
        // refused it, the true figure when a `Usage` says, else the learned share of the
        // reservation.
        let reserved = record.charge[OUT];
        let own_output = match (limited, usage) {
            (true, _) => 0,
            (false, Some(u)) => u.output_tokens().min(reserved),
            (false, None) => ((reserved as f64 * self.output_share).ceil() as u64).min(reserved),
        };
        if limited || usage.is_some() {
            self.known_output = self.known_output.saturating_add(own_output);
        } else {
            self.unknown_reserved = self.unknown_reserved.saturating_add(reserved);
        }
        self.finish(record, own_output);
        if !limited {
            // Settle the reservation at once, before the reading is compared (neither
            // accounting charges the unused part of `max_tokens` for long); an estimate that
            // was too low shows in the next readings, which correct the level.
            let back = reserved - own_output;
            self.refund(&[OUT, TOK], &[0, 0, back, back], now);
        }
        if snapshot.is_empty() {
            if record.probe {
                self.probe_done();
                let ok = outcome.is_success() && !self.any_bucket();
                if ok {
                    self.probe = Probe::Unlimited;
                    tracing::debug!(key = %key, "rate limit: no rate-limit headers; not limited");
                }
            }
        } else {
            if record.probe {
                self.probes = self.probes.saturating_sub(1);
            }
            if self.probe != Probe::Unlimited {
                self.probe = if self.probes > 0 {
                    Probe::InFlight
                } else {
                    Probe::Idle
                };
            }
            let dialect = snapshot.dialect();
            for (d, reading) in snapshot.iter() {
                if d == Dimension::Tokens && duplicates_a_token_bucket(snapshot, reading) {
                    continue;
                }
                self.learn(key, d, reading, dialect, record, received, now);
            }
        }
        self.wake_head();
        absorbed
    }

    #[allow(clippy::too_many_arguments)]
    fn learn(
        &mut self,
        key: &RateLimitKey,
        d: Dimension,
        reading: &BucketReading,
        dialect: Option<Dialect>,
        record: &Record,
        received: Instant,
        now: Instant,
    ) {
        let i = d.index();
        if let Some(limit) = reading.limit() {
            let window = reading.window().unwrap_or(self.window);
            if self.learned[i] != Some((limit, window)) {
                tracing::info!(key = %key, dimension = d.as_str(), old = ?self.learned[i].map(|l| l.0),
                    new = limit, window_s = window.as_secs_f64(), "rate limit: limit learned");
                self.learned[i] = Some((limit, window));
            }
        }
        let Some((cap, window)) = self.capacity(d) else {
            return;
        };
        let b = match self.buckets.get(d) {
            Some(mut b) => {
                if (b.capacity(), b.window()) != (cap, window) {
                    b.resize(cap, window, now);
                }
                b
            }
            None => Bucket::new(cap, window, now),
        };
        // The server's `full_at`, as an interval of local instants, from each reading.
        let server_cap = self.learned[i].map_or(cap, |l| l.0);
        let server_window = self.learned[i].map_or(window, |l| l.1);
        let server = Bucket::new(server_cap, server_window, now);
        // The bucket the reading corrects: the local one, or under a configured ceiling below
        // the server's limit the server's own bucket. The ceiling counts this key's own usage at
        // the configured rate; the server's units used (everyone's, refilled at the server's
        // rate) say nothing about it, and converting them into the smaller bucket turned a
        // nearly empty server bucket into a wait of many minutes.
        let ceiling = cap < server_cap;
        let mut target = if ceiling {
            match self.server[i] {
                Some(mut s) => {
                    if (s.capacity(), s.window()) != (server_cap, server_window) {
                        s.resize(server_cap, server_window, now);
                    }
                    s
                }
                None => server,
            }
        } else {
            self.server[i] = None;
            b
        };
        self.buckets.set(d, Some(b));
        let dispatched = record.at.min(received);
        // `remaining` is the level right after the server admitted this request: at dispatch,
        // plus the time the request takes to reach the server (at most `READING_DELAY` is
        // assumed; the rounding tolerance covers more). Anthropic rounds token counts to the
        // nearest thousand.
        let read_at = received.min(add(dispatched, READING_DELAY));
        let tol = if dialect == Some(Dialect::Anthropic) && d != Dimension::Requests {
            TOKENS_REMAINING_TOLERANCE
        } else {
            0
        };
        let from_remaining = reading.remaining().map(|r| {
            let used = server_cap.saturating_sub(r);
            (
                add(dispatched, server.span(used.saturating_sub(tol))),
                add(
                    read_at,
                    server.span(used.saturating_add(tol).min(server_cap)),
                ),
            )
        });
        // A reset is measured against the response's `date` (so from the receipt): a reset
        // rounded up and a date rounded down put the true instant up to 2 s before it.
        let full_at_reset = matches!(dialect, Some(Dialect::Anthropic) | Some(Dialect::OpenAi));
        let from_reset = reading.reset().filter(|_| full_at_reset).map(|r| {
            (
                sub(add(received, r), RESET_BELOW),
                add(received, r + RESET_ABOVE),
            )
        });
        let (lo, hi) = match (from_remaining, from_reset) {
            (Some(a), Some(b)) => {
                let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
                if lo <= hi { (lo, hi) } else { (hi, lo) }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => {
                if ceiling {
                    self.server[i] = Some(target);
                } else {
                    self.buckets.set(d, Some(target));
                }
                return;
            }
        };
        if d == Dimension::InputTokens {
            let level_hi = server_cap
                .saturating_sub(server.span_units(hi.saturating_duration_since(dispatched)));
            self.learn_input_factor(key, &server, lo, hi, level_hi, record);
        }
        if d == Dimension::OutputTokens {
            let level_hi = server_cap
                .saturating_sub(server.span_units(hi.saturating_duration_since(dispatched)));
            self.learn_output_share(key, &server, lo, hi, level_hi, record);
        }
        // What this key charged that the reading cannot contain. Input and requests:
        // everything dispatched after this request. Output: everything in flight, and everything
        // that finished since this request left (this one included), which a server counting
        // output as produced charged after taking this reading.
        // Requests refused or never sent since then were given back: they are not charged.
        let refunded = self.refunded_after(record);
        let after_input = self.dispatched[IN]
            .saturating_sub(record.after[IN])
            .saturating_sub(refunded[IN]);
        let output = self.outstanding_output.saturating_add(
            self.completed_output
                .saturating_sub(record.completed_before),
        );
        let not_in_reading = match d {
            Dimension::Requests => self.dispatched[REQ]
                .saturating_sub(record.after[REQ])
                .saturating_sub(refunded[REQ]),
            Dimension::InputTokens => after_input,
            Dimension::OutputTokens => output,
            _ => after_input.saturating_add(output),
        };
        // The target has the server's capacity and window (the server's own bucket, or a local
        // bucket without a ceiling below the server's limit): add what the reading misses.
        let shift = |t: Instant| add(t.max(now), target.span(not_in_reading));
        let (lo_at, hi_at) = (shift(lo), shift(hi));
        let old = target.full_at();
        if old < lo_at || old > hi_at {
            target.set_full_at(hi_at);
            tracing::debug!(key = %key, dimension = d.as_str(), ceiling,
                old_level = Bucket::new(server_cap, server_window, old).level(now),
                new_level = target.level(now), server_remaining = ?reading.remaining(),
                "rate limit: level corrected from the server's reading");
        }
        if ceiling {
            self.server[i] = Some(target);
        } else {
            self.buckets.set(d, Some(target));
        }
        if !full_at_reset
            && reading.remaining() == Some(0)
            && let Some(reset) = reading.reset()
        {
            // Fixed windows: nothing left until the window resets.
            let until = add(received, reset);
            self.cooldown_until = Some(self.cooldown_until.map_or(until, |c| c.max(until)));
        }
    }

    /// Compares what the server charged between two readings with the raw estimates of the
    /// requests dispatched in between, and folds the ratio into the input correction factor.
    fn learn_input_factor(
        &mut self,
        key: &RateLimitKey,
        server: &Bucket,
        lo: Instant,
        hi: Instant,
        level_hi: u64,
        record: &Record,
    ) {
        if level_hi + server.capacity() / 20 >= server.capacity() {
            // The server's bucket may have been full: refill lost, no comparison possible.
            self.anchor = None;
            return;
        }
        let here = Anchor {
            full_at: lo + hi.saturating_duration_since(lo) / 2,
            raw_after: record.raw_after,
        };
        let Some(a) = self.anchor else {
            self.anchor = Some(here);
            return;
        };
        if here.raw_after <= a.raw_after {
            return;
        }
        let estimated = (here.raw_after - a.raw_after) as f64;
        if estimated < server.capacity() as f64 {
            return;
        }
        let charged = server.span_units(here.full_at.saturating_duration_since(a.full_at)) as f64;
        let sample = (charged / estimated).clamp(FACTOR_MIN, FACTOR_MAX);
        let old = self.input_factor;
        let new =
            (old * (1.0 - FACTOR_ALPHA) + sample * FACTOR_ALPHA).clamp(FACTOR_MIN, FACTOR_MAX);
        if sample.is_finite() {
            self.input_factor = new;
            tracing::debug!(key = %key, old, new, sample, "rate limit: input estimate correction learned");
        }
        self.anchor = Some(here);
    }

    /// Compares what the server charged for output between two readings with what the
    /// requests that finished in between reserved, and folds the share into the output
    /// estimate of requests whose true output is unknown.
    fn learn_output_share(
        &mut self,
        key: &RateLimitKey,
        server: &Bucket,
        lo: Instant,
        hi: Instant,
        level_hi: u64,
        record: &Record,
    ) {
        if level_hi + server.capacity() / 20 >= server.capacity() {
            // The server's bucket may have been full: refill lost, no comparison possible.
            self.output_anchor = None;
            return;
        }
        let here = OutputAnchor {
            full_at: lo + hi.saturating_duration_since(lo) / 2,
            known: record.known_before,
            unknown: record.unknown_before,
        };
        let Some(a) = self.output_anchor else {
            self.output_anchor = Some(here);
            return;
        };
        if here.unknown <= a.unknown || here.full_at <= a.full_at {
            return;
        }
        // At least a quarter of the bucket in between, so that the readings' resolution (about
        // a thousand tokens) stays a small part of the comparison.
        let unknown = (here.unknown - a.unknown) as f64;
        if unknown < (server.capacity() / 4) as f64 {
            return;
        }
        let known = here.known.saturating_sub(a.known) as f64;
        let charged = server.span_units(here.full_at.saturating_duration_since(a.full_at)) as f64;
        let sample = ((charged - known) / unknown).clamp(OUTPUT_SHARE_MIN, 1.0);
        let old = self.output_share;
        let new = (old * (1.0 - OUTPUT_SHARE_ALPHA) + sample * OUTPUT_SHARE_ALPHA)
            .clamp(OUTPUT_SHARE_MIN, 1.0);
        if sample.is_finite() {
            self.output_share = new;
            tracing::debug!(key = %key, old, new, sample, "rate limit: output share learned");
        }
        self.output_anchor = Some(here);
    }
}

/// Anthropic's `tokens` reading is "the most restrictive token limit in effect": when its limit
/// is the input or the output limit it is another reading of that bucket, not a combined one.
fn duplicates_a_token_bucket(snapshot: &RateLimitSnapshot, reading: &BucketReading) -> bool {
    snapshot.dialect() == Some(Dialect::Anthropic)
        && [Dimension::InputTokens, Dimension::OutputTokens]
            .iter()
            .any(|d| snapshot.get(*d).and_then(BucketReading::limit) == reading.limit())
}

/// A request's place in the limiter: queued, admitted, in flight. Dropping it gives back what it
/// holds (see the module docs on cancellation).
pub(crate) struct Ticket {
    cell: Arc<KeyCell>,
    phase: Phase,
}

enum Phase {
    Queued {
        id: (usize, u64),
        charge: Charge,
        raw: u64,
        since: Instant,
        deadline: Option<Instant>,
        max_wait: Option<Duration>,
        /// What it waits for (a dimension, `cooldown`, `probe`), for traces and metrics.
        reason: &'static str,
    },
    Admitted(Record),
    Dispatched(Record),
    Done,
}

pub(crate) enum Admission {
    /// Admitted: call the service.
    Admitted,
    /// Wait: sleep until the instant (if any) or until woken.
    Wait(Option<Instant>),
    /// Failed (cost never fits, or the deadline passed).
    Failed(BoxError),
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Queued { .. } => "queued",
            Phase::Admitted(_) => "admitted",
            Phase::Dispatched(_) => "dispatched",
            Phase::Done => "done",
        };
        f.debug_struct("Ticket")
            .field("key", &self.cell.key)
            .field("phase", &phase)
            .finish()
    }
}

impl Ticket {
    pub(crate) fn is_admitted(&self) -> bool {
        matches!(self.phase, Phase::Admitted(_))
    }

    /// Tries to admit a queued request; registers `waker` otherwise.
    pub(crate) fn poll_admit(&mut self, waker: &Waker) -> Admission {
        let Phase::Queued {
            id,
            charge,
            raw,
            since,
            deadline,
            max_wait,
            reason,
        } = self.phase
        else {
            return Admission::Admitted;
        };
        let now = Instant::now();
        let mut st = lock(&self.cell.state);
        let head = st.queue.keys().next() == Some(&id);
        let check = if head {
            st.check(&charge, now)
        } else {
            Check::Probe
        };
        let fail = |st: &mut KeyState, e: BoxError| {
            st.dequeue(id);
            Admission::Failed(e)
        };
        match check {
            Check::Fits => {
                st.dequeue(id);
                let record = st.admit(charge, raw, now);
                drop(st);
                let waited = now.saturating_duration_since(since);
                tracing::debug!(key = %self.cell.key, dimension = reason,
                    waited_ms = waited.as_millis() as u64, "rate limit: admitted after waiting");
                crate::observe::emit::rate_limit_waited(&self.cell.key, reason, waited);
                self.phase = Phase::Admitted(record);
                Admission::Admitted
            }
            Check::Never(e) => {
                let r = fail(&mut st, cost_exceeds(&self.cell.key, e));
                drop(st);
                self.phase = Phase::Done;
                r
            }
            Check::Until(..) | Check::Probe => {
                if let (Some(deadline), Some(max)) = (deadline, max_wait)
                    && now >= deadline
                {
                    let (at, dim) = if head {
                        st.ready_at(&charge, None, now)
                    } else {
                        st.project(&charge, id.0, now)
                    };
                    let wait = at.saturating_duration_since(since).max(max);
                    tracing::info!(key = %self.cell.key, dimension = st.reason(dim),
                        wait_ms = wait.as_millis() as u64, max_wait_ms = max.as_millis() as u64,
                        "rate limit: refused, projected wait exceeds the maximum");
                    crate::observe::emit::rate_limit_refused(&self.cell.key, "wait_too_long");
                    let r = fail(&mut st, WaitTooLong::new(dim, wait, max).into());
                    drop(st);
                    self.phase = Phase::Done;
                    return r;
                }
                if let Some(w) = st.queue.get_mut(&id) {
                    match &mut w.waker {
                        Some(old) => old.clone_from(waker),
                        slot => *slot = Some(waker.clone()),
                    }
                }
                let until = match check {
                    Check::Until(at) => Some(at),
                    _ => None,
                };
                Admission::Wait(match (until, deadline) {
                    (Some(a), Some(d)) => Some(a.min(d)),
                    (a, d) => a.or(d),
                })
            }
        }
    }

    /// The inner call started: from now on the server may have seen the request.
    pub(crate) fn dispatched(&mut self) {
        if let Phase::Admitted(r) = self.phase {
            self.phase = Phase::Dispatched(r);
        }
    }

    /// The inner call answered: learn from the response. Returns the cooldown to announce.
    pub(crate) fn complete(
        &mut self,
        signals: &ResponseSignals,
        usage: Option<Usage>,
    ) -> Option<Instant> {
        self.complete_with(Reply {
            snapshot: signals.rate_limits(),
            outcome: signals.outcome(),
            received: signals.received_at(),
            usage,
        })
    }

    fn complete_with(&mut self, reply: Reply<'_>) -> Option<Instant> {
        let Phase::Dispatched(record) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return None;
        };
        let kind = reply.outcome.kind();
        let absorbed = lock(&self.cell.state).complete(&self.cell.key, &record, reply);
        // Outside the key's lock.
        crate::observe::emit::rate_limit_response(&self.cell.key, kind.as_str());
        if let Some(until) = absorbed {
            crate::observe::emit::rate_limit_cooldown(
                &self.cell.key,
                until.saturating_duration_since(Instant::now()),
            );
        }
        absorbed
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let now = Instant::now();
        match phase {
            Phase::Queued { id, .. } => lock(&self.cell.state).dequeue(id),
            Phase::Admitted(r) => lock(&self.cell.state).unadmit(&r, now),
            Phase::Dispatched(r) => lock(&self.cell.state).release_output(&r, now),
            Phase::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RateLimitKey {
        RateLimitKey::global()
    }

    fn send(state: &RateLimitState, cost: Cost, exact: bool) -> Ticket {
        let mut t = state
            .enter(&key(), cost, exact, Priority::Interactive, None)
            .unwrap();
        assert!(t.is_admitted(), "not admitted: {t:?}");
        t.dispatched();
        t
    }

    /// Sends `cost` when it is admitted at once; else gives the place back and lets 100 ms
    /// pass.
    async fn send_or_wait(state: &RateLimitState, cost: Cost, exact: bool) -> Option<Ticket> {
        let mut t = state
            .enter(&key(), cost, exact, Priority::Interactive, None)
            .unwrap();
        if !t.is_admitted() {
            drop(t);
            tokio::time::advance(Duration::from_millis(100)).await;
            return None;
        }
        t.dispatched();
        Some(t)
    }

    fn reply(t: &mut Ticket, snapshot: &RateLimitSnapshot, outcome: Outcome) -> Option<Instant> {
        t.complete_with(Reply {
            snapshot,
            outcome: &outcome,
            received: Instant::now(),
            usage: None,
        })
    }

    fn level(state: &RateLimitState, d: Dimension) -> u64 {
        state
            .key_snapshot(&key())
            .unwrap()
            .bucket(d)
            .unwrap()
            .level()
    }

    fn reading(limit: u64, remaining: u64, reset_ms: u64) -> BucketReading {
        BucketReading::new(
            Some(limit),
            Some(remaining),
            Some(Duration::from_millis(reset_ms)),
        )
    }

    fn remaining_only(limit: u64, remaining: u64) -> BucketReading {
        BucketReading::new(Some(limit), Some(remaining), None)
    }

    #[tokio::test(start_paused = true)]
    async fn probe_then_limits_learned_from_anthropic_headers() {
        let state = RateLimitState::new();
        let mut probe = send(&state, Cost::new(1, 1_000, 500), true);
        // Nothing known: up to STARTUP_PROBES requests go, the next waits for the first answer.
        let others: Vec<Ticket> = (1..STARTUP_PROBES)
            .map(|_| send(&state, Cost::new(1, 0, 0), true))
            .collect();
        let waiting = state
            .enter(
                &key(),
                Cost::new(1, 10, 10),
                true,
                Priority::Interactive,
                None,
            )
            .unwrap();
        assert!(!waiting.is_admitted());
        let snapshot = RateLimitSnapshot::new()
            .with_dialect(Dialect::Anthropic)
            .with(Dimension::Requests, reading(50, 49, 2_000))
            .with(Dimension::InputTokens, reading(30_000, 29_000, 2_000))
            .with(Dimension::OutputTokens, reading(8_000, 8_000, 0))
            .with(Dimension::Tokens, reading(30_000, 29_000, 2_000));
        reply(&mut probe, &snapshot, Outcome::success());
        let snap = state.key_snapshot(&key()).unwrap();
        for (d, cap) in [
            (Dimension::Requests, 50),
            (Dimension::InputTokens, 30_000),
            (Dimension::OutputTokens, 8_000),
        ] {
            assert_eq!(snap.bucket(d).unwrap().capacity(), cap);
            assert_eq!(snap.bucket(d).unwrap().learned(), Some(cap));
        }
        // The `tokens` reading duplicates the input bucket: no combined bucket.
        assert!(snap.bucket(Dimension::Tokens).is_none());
        // Requests: exact (1 used, and the other probes sent after it). Input: 29,000 ± 500 and a 2 s reset (−2 s, +1 s):
        // conservative edge 1,500 used. Output: the reading holds no output of the probe, whose
        // 500 reserved stay, and the reset's +1 s (134 tokens at 8,000/min).
        assert_eq!(level(&state, Dimension::Requests), 49 - others.len() as u64);
        assert_eq!(level(&state, Dimension::InputTokens), 28_500);
        assert_eq!(level(&state, Dimension::OutputTokens), 8_000 - 134 - 500);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_are_counted_once() {
        let state = RateLimitState::with_limits(Limits::new().input_tokens(30_000));
        let mut a = send(&state, Cost::new(1, 1_000, 0), true);
        let _b = send(&state, Cost::new(1, 2_000, 0), true);
        assert_eq!(level(&state, Dimension::InputTokens), 27_000);
        // a's reading agrees with the local state once b (sent after a) is added: unchanged.
        let agree =
            RateLimitSnapshot::new().with(Dimension::InputTokens, remaining_only(30_000, 29_000));
        reply(&mut a, &agree, Outcome::success());
        assert_eq!(level(&state, Dimension::InputTokens), 27_000);
        // Someone else spent 1,000: the server says less, the local state follows at once.
        let mut c = send(&state, Cost::new(1, 1_000, 0), true);
        let less =
            RateLimitSnapshot::new().with(Dimension::InputTokens, remaining_only(30_000, 25_000));
        reply(&mut c, &less, Outcome::success());
        assert_eq!(level(&state, Dimension::InputTokens), 25_000);
    }

    #[tokio::test(start_paused = true)]
    async fn output_over_reservation_is_given_back_by_later_readings() {
        let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
        let mut a = send(&state, Cost::new(1, 0, 1_000), true);
        // Read at admission: no output counted yet. a's reservation stays.
        let first =
            RateLimitSnapshot::new().with(Dimension::OutputTokens, remaining_only(8_000, 8_000));
        reply(&mut a, &first, Outcome::success());
        assert_eq!(level(&state, Dimension::OutputTokens), 7_000);
        // b's reading shows a's true output (300): 700 come back.
        let mut b = send(&state, Cost::new(1, 0, 1_000), true);
        assert_eq!(level(&state, Dimension::OutputTokens), 6_000);
        let second =
            RateLimitSnapshot::new().with(Dimension::OutputTokens, remaining_only(8_000, 7_700));
        reply(&mut b, &second, Outcome::success());
        assert_eq!(level(&state, Dimension::OutputTokens), 6_700);
        // A response without headers but with a known usage gives back the rest.
        let mut c = send(&state, Cost::new(1, 0, 1_000), true);
        c.complete_with(Reply {
            snapshot: &RateLimitSnapshot::new(),
            outcome: &Outcome::success(),
            received: Instant::now(),
            usage: Some(Usage::new(0, 100)),
        });
        assert_eq!(level(&state, Dimension::OutputTokens), 6_600);
    }

    /// A known usage settles the reservation at the response, headers or not.
    #[tokio::test(start_paused = true)]
    async fn usage_settles_the_output_reservation_at_the_response() {
        let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
        let mut a = send(&state, Cost::new(1, 0, 1_000), true);
        let mut b = send(&state, Cost::new(1, 0, 1_000), true);
        assert_eq!(level(&state, Dimension::OutputTokens), 6_000);
        // Read at a's admission: nothing produced yet; a produced 300. The reading (± 500)
        // agrees with 6,700 left, so only the usage can give the 700 back.
        let reading = RateLimitSnapshot::new()
            .with_dialect(Dialect::Anthropic)
            .with(Dimension::OutputTokens, remaining_only(8_000, 8_000));
        a.complete_with(Reply {
            snapshot: &reading,
            outcome: &Outcome::success(),
            received: Instant::now(),
            usage: Some(Usage::new(0, 300)),
        });
        assert_eq!(level(&state, Dimension::OutputTokens), 6_700);
        b.complete_with(Reply {
            snapshot: &reading,
            outcome: &Outcome::success(),
            received: Instant::now(),
            usage: Some(Usage::new(0, 1_000)),
        });
        assert_eq!(level(&state, Dimension::OutputTokens), 6_700);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_response_refunds_and_cools_down() {
        let state = RateLimitState::with_limits(Limits::new().requests(10));
        let mut a = send(&state, Cost::new(1, 0, 0), true);
        let outcome =
            Outcome::new(OutcomeKind::RateLimited).with_retry_after(Some(Duration::from_secs(7)));
        let until = reply(&mut a, &RateLimitSnapshot::new(), outcome);
        assert_eq!(until, Some(Instant::now() + Duration::from_secs(7)));
        assert_eq!(level(&state, Dimension::Requests), 10);
        let snap = state.key_snapshot(&key()).unwrap();
        assert_eq!(snap.cooldown_until(), until);
        let t = state
            .enter(
                &key(),
                Cost::new(1, 0, 0),
                true,
                Priority::Interactive,
                None,
            )
            .unwrap();
        assert!(!t.is_admitted());
    }

    #[tokio::test(start_paused = true)]
    async fn openai_combined_tokens_and_configured_ceiling() {
        let state = RateLimitState::with_limits(Limits::new().requests(100));
        let mut a = send(&state, Cost::new(1, 1_000, 1_000), true);
        let snapshot = RateLimitSnapshot::new()
            .with_dialect(Dialect::OpenAi)
            .with(Dimension::Requests, reading(500, 499, 120))
            .with(Dimension::Tokens, reading(60_000, 58_000, 2_000));
        reply(&mut a, &snapshot, Outcome::success());
        let snap = state.key_snapshot(&key()).unwrap();
        // The configured 100 is a ceiling over the server's 500.
        assert_eq!(snap.bucket(Dimension::Requests).unwrap().capacity(), 100);
        assert_eq!(
            snap.bucket(Dimension::Requests).unwrap().learned(),
            Some(500)
        );
        assert_eq!(snap.bucket(Dimension::Tokens).unwrap().capacity(), 60_000);
        // A combined bucket is charged input + output.
        let _b = send(&state, Cost::new(1, 1_000, 1_000), true);
        assert_eq!(
            level(&state, Dimension::Tokens),
            snap.bucket(Dimension::Tokens).unwrap().level() - 2_000
        );
        // A lower limit from the server wins over the configured one.
        let mut c = send(&state, Cost::new(1, 0, 0), true);
        let lower = RateLimitSnapshot::new()
            .with_dialect(Dialect::OpenAi)
            .with(Dimension::Requests, reading(20, 10, 30_000));
        reply(&mut c, &lower, Outcome::success());
        let snap = state.key_snapshot(&key()).unwrap();
        assert_eq!(snap.bucket(Dimension::Requests).unwrap().capacity(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_window_dialect_with_nothing_left_holds_until_reset() {
        let state = RateLimitState::with_limits(Limits::new().requests(100));
        let mut a = send(&state, Cost::new(1, 0, 0), true);
        let snapshot = RateLimitSnapshot::new()
            .with_dialect(Dialect::GitHub)
            .with(Dimension::Requests, reading(100, 0, 30_000));
        reply(&mut a, &snapshot, Outcome::success());
        let snap = state.key_snapshot(&key()).unwrap();
        assert_eq!(
            snap.cooldown_until(),
            Some(Instant::now() + Duration::from_secs(30))
        );
    }

    /// A configured ceiling below the server's limit, and a server bucket nearly emptied by
    /// someone else: the wait is the server's refill time for the missing tokens (at the
    /// server's rate), not the configured bucket's, and the ceiling still counts only this key's
    /// own usage.
    #[tokio::test(start_paused = true)]
    async fn ceiling_below_server_limit_waits_for_the_server_refill() {
        let state = RateLimitState::with_limits(Limits::new().input_tokens(10_000));
        let mut a = send(&state, Cost::new(1, 1_000, 0), true);
        // Server: 150,000 ITPM (2,500 per second), 1,000 left after `a`: full again in 59.6 s.
        let snapshot = RateLimitSnapshot::new()
            .with_dialect(Dialect::Anthropic)
            .with(Dimension::InputTokens, reading(150_000, 1_000, 60_000));
        reply(&mut a, &snapshot, Outcome::success());
        assert_eq!(
            state
                .key_snapshot(&key())
                .unwrap()
                .bucket(Dimension::InputTokens)
                .unwrap()
                .capacity(),
            10_000
        );
        // 2,000 more: the server has 500..=1,500 (rounded to the thousand), so 0.2..=0.6 s of
        // its refill; our own ceiling has 9,000 left.
        let max = Duration::from_secs(2);
        let mut b = state
            .enter(
                &key(),
                Cost::new(1, 2_000, 0),
                true,
                Priority::Interactive,
                Some(max),
            )
            .expect("a 0.2-0.6 s wait is within a 2 s maximum");
        assert!(!b.is_admitted(), "the server bucket is nearly empty");
        let waker = std::task::Waker::noop();
        let Admission::Wait(Some(at)) = b.poll_admit(waker) else {
            panic!("expected a timed wait");
        };
        let wait = at.saturating_duration_since(Instant::now());
        assert!(
            wait >= Duration::from_millis(200) && wait <= Duration::from_millis(1_000),
            "wait {wait:?}"
        );
        tokio::time::advance(wait).await;
        assert!(matches!(b.poll_admit(waker), Admission::Admitted));
        // The ceiling counts this key's own usage: 1,000 + 2,000 of 10,000.
        let level = level(&state, Dimension::InputTokens);
        assert!((6_900..=7_100).contains(&level), "ceiling level {level}");
    }

    /// A server that charges 80% of the raw estimates: the correction factor converges there.
    #[tokio::test(start_paused = true)]
    async fn input_estimation_error_is_learned() {
        let window = Duration::from_secs(60);
        let state = RateLimitState::with_limits(Limits::new().input_tokens(6_000));
        let mut server = Bucket::new(6_000, window, Instant::now());
        for _ in 0..6_000 {
            let Some(mut t) = send_or_wait(&state, Cost::new(1, 500, 0), false).await else {
                continue;
            };
            let now = Instant::now();
            server.charge(400, now);
            let snapshot = RateLimitSnapshot::new().with(
                Dimension::InputTokens,
                remaining_only(6_000, server.level(now)),
            );
            reply(&mut t, &snapshot, Outcome::success());
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let factor = state.key_snapshot(&key()).unwrap().input_correction();
        assert!((0.75..=0.85).contains(&factor), "factor {factor}");
    }

    /// A server counting output as produced: the share of `max_tokens` requests really produce
    /// is learned from its readings (and stays at 1.0 when they produce all of it).
    #[tokio::test(start_paused = true)]
    async fn output_share_is_learned() {
        for (produced, range) in [(500, 0.4..=0.6), (1_000, 0.9..=1.0)] {
            let window = Duration::from_secs(60);
            let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
            let mut server = Bucket::new(8_000, window, Instant::now());
            for _ in 0..3_000 {
                let Some(mut t) = send_or_wait(&state, Cost::new(1, 0, 1_000), true).await else {
                    continue;
                };
                // Read at admission; the output is charged when the answer ends.
                let remaining = server.level(Instant::now());
                tokio::time::advance(Duration::from_millis(100)).await;
                server.charge(produced, Instant::now());
                let snapshot = RateLimitSnapshot::new()
                    .with(Dimension::OutputTokens, remaining_only(8_000, remaining));
                reply(&mut t, &snapshot, Outcome::success());
            }
            let share = state.key_snapshot(&key()).unwrap().output_share();
            assert!(range.contains(&share), "produced {produced}: share {share}");
        }
    }
}
