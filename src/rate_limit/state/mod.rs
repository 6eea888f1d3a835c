//! The shared state: keys, their buckets, queues, in-flight accounting and learning.
//!
//! - this file: the key map, its builder and the entry point ([`RateLimitState::enter`]);
//! - `key`: one key's state, admission and the queue;
//! - `learn`: what every response teaches (readings, usage, refusals, throttles);
//! - `ticket`: a request's place, from queued to answered;
//! - `snapshot`: what the limiter shows of a key.

mod accounting;
mod feedback;
mod key;
mod learn;
mod share;
mod snapshot;
#[cfg(test)]
mod tests;
mod ticket;

use accounting::{Accounting, OutputCounting};
#[cfg(feature = "redis")]
pub(crate) use feedback::MARGIN_DECAY;
use feedback::{ACCEPTED_WINDOW, Margin, Others, Ratio, Recent, SLOW_START_END, Throttle};
use key::{Anchor, Awaiting, Check, KeyCell, KeyState, OutputAnchor, Probe, Record, Reply, Waiter};
pub use snapshot::{BucketSnapshot, KeySnapshot};
use ticket::Phase;
pub(crate) use ticket::{Admission, Ticket};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxError;
use crate::cost::{Cost, Usage, UsageReport};
use crate::signals::{
    BucketReading, Dialect, Dimension, Outcome, OutcomeKind, RateLimitSnapshot, ResponseSignals,
};

use super::RateLimitKey;
use super::bucket::{Bucket, add, sub};
use super::config::{CallPlace, Limits, Priority, RampUp};
use super::error::{CostExceedsLimit, WaitTooLong};
use super::store::{Buckets, Learned, MemoryStore, ServerReading, Store};

/// The default bound on the number of keys a state keeps.
pub const DEFAULT_MAX_KEYS: usize = 1024;

/// Requests sent before anything is known about a key (the start-up probes): the others wait
/// for the first answer, which comes after the shortest of their round trips.
pub const STARTUP_PROBES: usize = 4;

/// The cooldown after a 429 that carries no `retry-after`, when the key has rate-limit headers
/// to pace on (the official SDKs' first backoff is 0.375–0.5 s).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_millis(500);

/// The longest any single answer can stop a key: a cooldown, a reset or a limit below a
/// request's cost that would hold the key longer lets one request through after this long to
/// ask the server again (and another one each interval while the server keeps refusing).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The largest limit a server's reading is believed for (10^12 units per window: no provider
/// sells a trillion tokens a minute); above it the reading is an error, and honouring it would
/// only make the arithmetic saturate.
const MAX_PLAUSIBLE_LIMIT: u64 = 1_000_000_000_000;

/// How far beyond its window a reset may lie and still be believed (a per-minute bucket cannot
/// be full later than a minute from now, give or take the reading's resolution).
const RESET_SLACK: Duration = Duration::from_secs(5);

/// Resolution of Anthropic's `*-tokens-remaining` (rounded to the nearest thousand).
const TOKENS_REMAINING_TOLERANCE: u64 = 500;

/// Resolution of resets (RFC 3339 seconds, measured against a `date` header in seconds): the
/// true instant may lie this much before the reset read...
const RESET_BELOW: Duration = Duration::from_secs(2);
/// ...or this much after it (a server that truncates instead of rounding up).
const RESET_ABOVE: Duration = Duration::from_secs(1);
/// Bounds of the learned input ratio, and the spread assumed before any evidence (estimates from
/// text are within about ±20 % for English; other content differs more and is learned).
const INPUT_RATIO_MIN: f64 = 0.2;
const INPUT_RATIO_MAX: f64 = 5.0;
const INPUT_PRIOR_SD: f64 = 0.2;

/// The least share of `max_tokens` a request is taken to produce.
const OUTPUT_SHARE_MIN: f64 = 0.01;

/// Answers whose `usage` a key waits for at most (bodies never read are forgotten oldest
/// first).
const MAX_AWAITING: usize = 1024;

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
    /// The order of calls' first arrivals, across keys (see `CallPlace`).
    arrivals: AtomicU64,
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
                arrivals: AtomicU64::new(0),
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
                pending: [0; 4],
                dispatched: [0; 4],
                dispatch_seq: 0,
                refunds: VecDeque::new(),
                raw_input: 0,
                outstanding_output: 0,
                completed_output: 0,
                completions: 0,
                output_given_back: VecDeque::new(),
                known_output: 0,
                unknown_reserved: 0,
                output: Ratio::new(1.0, 0.0, OUTPUT_SHARE_MIN, 1.0),
                accounting: Accounting::default(),
                output_anchor: None,
                in_flight: 0,
                queue: BTreeMap::new(),
                queued: [[0; 4]; 2],
                input: Ratio::new(1.0, INPUT_PRIOR_SD, INPUT_RATIO_MIN, INPUT_RATIO_MAX),
                usage_seen: false,
                awaiting_usage: BTreeMap::new(),
                input_read_through: 0,
                cushions: BTreeMap::new(),
                margin: [Margin::default(); 4],
                others: [Others::new(now); 4],
                shared_store: self.shared.store.is_shared(),
                tightened_seq: 0,
                throttle: None,
                sends: Recent::sends(),
                held: 0,
                accepted: Recent::accepted(),
                cooldown_seq: 0,
                cooldown_set: None,
                last_recheck: None,
                learned_at: [None; 4],
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
        place: Option<&CallPlace>,
    ) -> Result<Ticket, BoxError> {
        let cell = self.cell(key);
        let now = Instant::now();
        // The call's place in the queue: its first attempt's arrival (see `CallPlace`).
        let retry = place.and_then(CallPlace::get);
        let order = match retry {
            Some(order) => order,
            None => {
                let order = self.shared.arrivals.fetch_add(2, Ordering::Relaxed);
                if let Some(p) = place {
                    p.set(order);
                }
                order
            }
        };
        let mut st = lock(&cell.state);
        st.adopt(&cell.key, now);
        st.accrue_others(now);
        let (charge, raw) = st.charge_of(cost, exact);
        let class = priority.class();
        // A key paced on throttles alone is refused in runs while the server is in debt: there
        // a retry queues behind as many waiting calls as refusals came in a row, and one more,
        // so that the refusals fall on other calls' first attempts rather than on this call's
        // last, without waiting the whole queue again (orders are even: the odd one after a
        // waiting call's is free).
        let order = match &st.throttle {
            Some(t) if retry.is_some() && st.paced_on_throttles() => {
                let behind = t.streak() as usize + 1;
                st.queue
                    .keys()
                    .filter(|k| k.0 == class)
                    .nth(behind - 1)
                    .map_or_else(
                        || self.shared.arrivals.fetch_add(2, Ordering::Relaxed),
                        |k| k.1 | 1,
                    )
            }
            _ => order,
        };
        let mut id = (class, order);
        // Fast path: nobody of the same or a higher class waits ahead of this call.
        if st.queue.keys().next().is_none_or(|k| *k > id) {
            match st.check(&charge, now) {
                Check::Fits => {
                    let record = st.admit(charge, raw, exact, now);
                    drop(st);
                    return Ok(Ticket {
                        cell,
                        phase: Phase::Admitted(record),
                        reported: None,
                    });
                }
                Check::Never(e) => return Err(cost_exceeds(&cell.key, e)),
                Check::Until(..) | Check::Wake => {}
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
        if st.queue.contains_key(&id) {
            // Two attempts of one call waiting at once (a caller that clones requests, with
            // their extensions, and sends the copies together): the later one takes a new place.
            id = (class, self.shared.arrivals.fetch_add(2, Ordering::Relaxed));
        }
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
                exact,
                since: now,
                deadline: max_wait.map(|m| add(now, m)),
                max_wait,
                reason,
            },
            reported: None,
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
