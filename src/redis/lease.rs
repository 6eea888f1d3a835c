//! A key's buckets backed by Redis: leases spent locally, settled in the background.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::rate_limit::{Bucket, Buckets, Estimate, Learned, RateLimitKey, ServerReading};
use crate::signals::Dimension;

use super::script::SCRIPT;
use super::{FailurePolicy, Inner};
use crate::rate_limit::MARGIN_DECAY;

/// How long a joining key's requests wait between looks at whether the shared state was read.
const LOADING_POLL: Duration = Duration::from_millis(5);

/// How a key's buckets behave right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Leases from Redis.
    Shared,
    /// Redis unreachable: local buckets with the last known limits.
    Local,
    /// Redis unreachable, failing closed: every request fails at once.
    Closed,
}

/// One dimension of a key.
#[derive(Debug)]
struct Dim {
    /// Capacity and window (capacity 0 = unknown).
    cap: u64,
    window: Duration,
    /// Units leased and not yet spent; negative = spent beyond the lease (a debt to charge).
    lease: i64,
    /// The bucket last shown to the limiter, to read what `set` changed.
    shown: Option<Bucket>,
    /// A limit learned locally, to publish.
    announce: bool,
    /// Lease size in units.
    target: u64,
    /// How many times the fair lease the limiter's head waiter needs (a request larger than a
    /// lease), doubled while it stalls.
    boost: u64,
    /// What this process reserved recently and may legitimately get back (output only).
    refundable: u64,
    refundable_at: Instant,
    /// The local bucket while Redis is unreachable.
    local: Option<Bucket>,
    /// When the lease last fell (a spend, or the server saying there is less).
    fell_at: Instant,
    /// The server's last reading (its bucket at the reading's most pessimistic and most
    /// optimistic ends), the earliest instant it may count from and when it came, to send with
    /// the next settlement.
    reading: Option<(Bucket, Bucket, Instant, Instant)>,
}

impl Dim {
    fn new(now: Instant) -> Self {
        Dim {
            cap: 0,
            window: Duration::from_secs(60),
            lease: 0,
            shown: None,
            announce: false,
            target: 1,
            boost: 1,
            refundable: 0,
            refundable_at: now,
            local: None,
            fell_at: now,
            reading: None,
        }
    }

    fn span(&self, units: u64) -> Duration {
        Bucket::new(self.cap, self.window, Instant::now()).span(units)
    }

    /// Units worth `d` of refill, rounded to the nearest.
    fn units(&self, d: Duration) -> u64 {
        let ns = d.as_nanos().saturating_mul(self.cap as u128);
        let w = self.window.as_nanos().max(1);
        u64::try_from(ns.saturating_add(w / 2) / w).unwrap_or(u64::MAX)
    }

    /// The lease size for `lease` of refill.
    fn base_target(&self, lease: Duration) -> u64 {
        if self.cap == 0 {
            return 0;
        }
        let ns = lease.as_nanos().saturating_mul(self.cap as u128);
        let w = self.window.as_nanos().max(1);
        u64::try_from(ns.div_ceil(w))
            .unwrap_or(u64::MAX)
            .clamp(1, self.cap)
    }

    /// The lease size by demand: `lease` of the shared rate times the number of processes with
    /// demand times this process's share of it — a lease of `lease` each when every process
    /// wants the same, more for a process whose requests wait more — times the stall boost.
    fn fair_target(&self, lease: Duration, active: u64, share: f64) -> u64 {
        let base = self.base_target(lease) as f64;
        let fair = (base * active as f64 * share).ceil();
        let fair = if fair.is_finite() && fair >= 1.0 {
            fair.min(self.cap as f64) as u64
        } else {
            1
        };
        fair.saturating_mul(self.boost).clamp(1, self.cap.max(1))
    }

    /// Below this many units held, the lease is topped up (half the target: each round trip
    /// brings at least half a lease).
    fn low_water(&self) -> u64 {
        self.target.div_ceil(2).max(1)
    }

    /// The local bucket the limiter sees when sharing: its level is the lease.
    fn leased_bucket(&self, now: Instant) -> Bucket {
        // `cap` is a server's number: `u64::MAX as i64` is -1, and `clamp(0, -1)` panics.
        let held = self.lease.clamp(0, to_i64(self.cap)) as u64;
        let mut b = Bucket::new(self.cap, self.window, now);
        // Half a unit's refill (at most 0.5 ms) early: the limiter compares with its own `now`,
        // taken a moment before this one, and must see the whole lease there.
        let slack = self.span(1).min(Duration::from_millis(1)) / 2;
        b.set_full_at(later(now, self.span(self.cap - held).saturating_sub(slack)));
        if self.lease < 0 {
            b.charge(self.lease.unsigned_abs(), now);
        }
        b
    }

    /// Output reservations older than a window can no longer come back.
    fn decay_refundable(&mut self, now: Instant) {
        let gone = self.units(now.saturating_duration_since(self.refundable_at));
        if gone > 0 {
            self.refundable = self.refundable.saturating_sub(gone);
            self.refundable_at = now;
        }
    }
}

/// A key's lease state, shared by its [`RedisBuckets`] and its background task.
#[derive(Debug)]
pub(super) struct KeyLease {
    mode: Mode,
    dims: [Dim; 4],
    /// The limiter looked at the buckets since the last settlement (it wants budget).
    looked: bool,
    /// The limiter spent since the last settlement.
    spent: bool,
    /// Last time the limiter looked or spent.
    active_at: Instant,
    closed: bool,
    /// News that must go at once (a cooldown or a margin raised here): the next settlement does
    /// not wait out a short grant's wait.
    urgent: bool,
    /// Whether a settlement has read the key's shared state since the buckets were opened.
    joined: bool,
    /// Whether the key paced alone (Redis unreachable) since its last settlement: what it sent
    /// then is in none of its reports.
    alone: bool,
    /// When a settlement last found Redis again after the key paced alone.
    back_at: Option<Instant>,
    opened_at: Instant,
    /// What the fleet knows besides the buckets (see [`Fleet`]).
    fleet: Fleet,
}

/// A cooldown change to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CooldownOp {
    None,
    /// This process's limiter set a cooldown lasting until then.
    Raise(Instant),
    /// This process's limiter ended the fleet's cooldown (its re-check was answered).
    Clear,
}

/// The part of a key's state that is not budget: the cooldown, margins, the learned model and
/// this process's demand, both as this process publishes them and as the fleet has them.
#[derive(Debug)]
struct Fleet {
    /// The model last handed to the store by the limiter, and whether it is still to be sent.
    model: Option<Model>,
    model_dirty: bool,
    /// The latest model version seen in Redis.
    seen_version: u64,
    cooldown_op: CooldownOp,
    /// A raise not yet acknowledged by a settlement: news must not undo it.
    raising: Option<Instant>,
    /// The fleet's cooldown as the last settlement read it, and its version.
    cooldown: Option<Instant>,
    cooldown_version: u64,
    /// Margins (share of capacity) to send, and the fleet's as last read.
    margin_out: [Option<f64>; 4],
    /// The limiter's margins at its last publication, to tell a raise.
    local_margins: [f64; 4],
    /// The limiter's cooldown as it last published it (to give Redis again after a restart).
    local_cooldown: Option<Instant>,
    margins: [f64; 4],
    margins_at: Instant,
    /// What to hand the limiter at its next look.
    news: Option<Learned>,
    /// Requests waiting or in flight in this process.
    demand: u64,
    /// Processes with demand, and this one's share of it (1.0 alone).
    active: u64,
    share: f64,
}

impl Fleet {
    /// A cooldown another process raised, pushed by Redis as it was raised: the limiter
    /// honours it at its next decision, without waiting for a round trip.
    fn pushed(&mut self, version: u64, until: Instant, now: Instant) {
        if version <= self.cooldown_version || until <= now {
            return;
        }
        self.cooldown = Some(self.cooldown.map_or(until, |c| c.max(until)));
        self.cooldown_version = version;
        let cooldown_until = self.cooldown.max(self.raising);
        match &mut self.news {
            Some(news) => news.cooldown_until = news.cooldown_until.max(cooldown_until),
            None => {
                self.news = Some(Learned {
                    limits: [None; 4],
                    cooldown_until,
                    margins: std::array::from_fn(|i| self.margin(i, now)),
                    input: None,
                    output: None,
                    throttle_rate: None,
                    output_counted_as_produced: None,
                })
            }
        }
    }

    fn new(now: Instant) -> Self {
        Fleet {
            model: None,
            model_dirty: false,
            seen_version: 0,
            cooldown_op: CooldownOp::None,
            raising: None,
            cooldown: None,
            cooldown_version: 0,
            margin_out: [None; 4],
            local_margins: [0.0; 4],
            local_cooldown: None,
            margins: [0.0; 4],
            margins_at: now,
            news: None,
            demand: 0,
            active: 1,
            share: 1.0,
        }
    }

    /// The fleet's margin of dimension `i` at `now` (decayed as the limiter's margins do).
    fn margin(&self, i: usize, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.margins_at).as_secs_f64();
        self.margins[i] * (-age / MARGIN_DECAY.as_secs_f64()).exp()
    }
}

/// What the learned model looks like in Redis (`mb`, JSON): limits (units, window in µs), the
/// two ratios (log mean, log variance, samples), the throttle rate (the fleet's: requests per
/// second across all processes), the output accounting once proved (absent in a model written
/// by an older version: no proof).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Model {
    limits: [Option<(u64, u64)>; 4],
    input: Option<(f64, f64, u32)>,
    output: Option<(f64, f64, u32)>,
    throttle: Option<f64>,
    #[serde(default)]
    counted_as_produced: Option<bool>,
}

impl Model {
    /// The model of `l`, learned by a process whose share of the fleet's demand is `share`: its
    /// throttle rate is its share of the fleet's.
    fn of(l: &Learned, share: f64) -> Self {
        let e = |e: Option<Estimate>| e.map(|e| (e.log_mean, e.log_var, e.samples));
        Model {
            limits: l
                .limits
                .map(|l| l.map(|(c, w)| (c, u64::try_from(w.as_micros()).unwrap_or(u64::MAX)))),
            input: e(l.input),
            output: e(l.output),
            throttle: l.throttle_rate.map(|r| r / share.max(1e-3)),
            counted_as_produced: l.output_counted_as_produced,
        }
    }

    fn estimate(e: Option<(f64, f64, u32)>) -> Option<Estimate> {
        e.map(|(log_mean, log_var, samples)| Estimate {
            log_mean,
            log_var,
            samples,
        })
    }
}

pub(super) struct Shared {
    lease: Mutex<KeyLease>,
    notify: Notify,
}

/// The keys of a store by cooldown channel, for the subscriber connection's messages.
#[derive(Clone, Default)]
pub(super) struct Channels(Arc<Mutex<HashMap<String, Vec<Weak<Shared>>>>>);

impl Channels {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Weak<Shared>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, channel: &str, shared: &Arc<Shared>) {
        let mut map = self.lock();
        let keys = map.entry(channel.to_owned()).or_default();
        keys.retain(|k| k.strong_count() > 0);
        keys.push(Arc::downgrade(shared));
    }

    /// A message of the subscriber connection: a key's cooldown raised by some process
    /// (`<version>:<µs left>`), honoured here at once.
    pub(super) fn deliver(&self, push: redis::PushInfo) {
        if push.kind != redis::PushKind::Message {
            return;
        }
        let text = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        let channel = text(push.data.first());
        let payload = text(push.data.get(1));
        let Some((version, left)) = payload
            .split_once(':')
            .and_then(|(v, l)| Some((v.parse::<u64>().ok()?, l.parse::<u64>().ok()?)))
        else {
            return;
        };
        let keys: Vec<Arc<Shared>> = self
            .lock()
            .get(&channel)
            .map(|keys| keys.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        let now = Instant::now();
        for key in keys {
            let mut st = key.lock();
            if st.mode == Mode::Shared {
                st.fleet
                    .pushed(version, later(now, Duration::from_micros(left)), now);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, KeyLease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next settlement must go now (urgent news, or the buckets were dropped).
    fn must_go(&self) -> bool {
        let st = self.lock();
        st.urgent || st.closed
    }
}

/// The buckets of one key in a [`RedisStore`](super::RedisStore).
pub(super) struct RedisBuckets {
    shared: Arc<Shared>,
    key: RateLimitKey,
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("RedisBuckets")
            .field("key", &self.key)
            .field("mode", &st.mode)
            .field("leases", &st.dims.each_ref().map(|d| d.lease))
            .finish()
    }
}

impl RedisBuckets {
    pub(super) fn open(inner: Arc<Inner>, key: &RateLimitKey) -> Self {
        let now = Instant::now();
        let healthy = !inner.degraded.load(Ordering::Relaxed);
        let mode = if healthy {
            Mode::Shared
        } else {
            inner.policy.degraded_mode()
        };
        let shared = Arc::new(Shared {
            lease: Mutex::new(KeyLease {
                mode,
                dims: std::array::from_fn(|_| Dim::new(now)),
                looked: true,
                spent: false,
                active_at: now,
                closed: false,
                urgent: false,
                joined: false,
                alone: mode != Mode::Shared,
                back_at: None,
                opened_at: now,
                fleet: Fleet::new(now),
            }),
            notify: Notify::new(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let keys = inner.redis_keys(key);
                inner
                    .channels
                    .register(&Inner::cooldown_channel(&keys[0]), &shared);
                handle.spawn(settle_loop(
                    Arc::downgrade(&shared),
                    inner.clone(),
                    inner.redis_keys(key),
                ));
            }
            Err(_) => {
                tracing::warn!(key = %key, "redis store: no tokio runtime; this key is limited locally");
                shared.lock().mode = inner.policy.degraded_mode();
            }
        }
        RedisBuckets {
            shared,
            key: key.clone(),
            inner,
        }
    }
}

impl Drop for RedisBuckets {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.notify.notify_one();
    }
}

impl FailurePolicy {
    fn degraded_mode(self) -> Mode {
        match self {
            FailurePolicy::Local => Mode::Local,
            FailurePolicy::Closed => Mode::Closed,
        }
    }
}

impl Buckets for RedisBuckets {
    fn get(&self, dimension: Dimension) -> Option<Bucket> {
        let now = Instant::now();
        let mut st = self.shared.lock();
        st.looked = true;
        st.active_at = now;
        let mode = st.mode;
        let dim = &mut st.dims[dimension.index()];
        match mode {
            Mode::Local => dim.local,
            Mode::Closed => {
                if dim.cap == 0 && dimension != Dimension::Requests {
                    return None;
                }
                // Capacity 0: every request fails at once with `CostExceedsLimit` (limit 0).
                Some(Bucket::new(0, dim.window, now))
            }
            Mode::Shared => {
                if dim.cap == 0 {
                    return None;
                }
                let b = dim.leased_bucket(now);
                dim.shown = Some(b);
                let low = dim.lease < to_i64(dim.low_water());
                drop(st);
                if low {
                    self.shared.notify.notify_one();
                }
                Some(b)
            }
        }
    }

    fn set(&mut self, dimension: Dimension, bucket: Option<Bucket>) {
        let Some(b) = bucket else {
            return;
        };
        let now = Instant::now();
        let mut st = self.shared.lock();
        st.active_at = now;
        let mode = st.mode;
        let lease_for = self.inner.lease;
        let dim = &mut st.dims[dimension.index()];
        let reshaped = (b.capacity(), b.window()) != (dim.cap, dim.window);
        if reshaped && b.capacity() > 0 {
            if dim.cap != 0 {
                tracing::debug!(key = %self.key, dimension = dimension.as_str(), old = dim.cap,
                    new = b.capacity(), "redis store: limit learned locally, publishing");
            }
            dim.cap = b.capacity();
            dim.window = b.window();
            dim.announce = true;
            dim.target = dim.base_target(lease_for);
        }
        let mut spent = false;
        match mode {
            Mode::Local | Mode::Closed => {
                dim.local = Some(b);
            }
            Mode::Shared => {
                let shown = dim.shown.unwrap_or_else(|| dim.leased_bucket(now));
                if reshaped {
                    // `resize` keeps the units used: the lease stays as it was.
                } else if b.full_at() >= shown.full_at() {
                    // Spent (a charge) or the server says there is less: both come off the lease.
                    let units = dim.units(b.full_at() - shown.full_at());
                    dim.lease = dim.lease.saturating_sub(to_i64(units));
                    if units > 0 {
                        dim.fell_at = now;
                    }
                    if matches!(dimension, Dimension::OutputTokens | Dimension::Tokens) {
                        dim.decay_refundable(now);
                        dim.refundable = dim.refundable.saturating_add(units).min(dim.cap);
                    }
                    spent = units > 0;
                } else {
                    // Given back (a refund) or the server says there is more. The server's reading
                    // counts every process's leases as free budget, so only what this process
                    // reserved itself may come back: output reservations released to the true
                    // figure. Requests and input refunds (a 429, a cancellation) stay spent.
                    let units = dim.units(shown.full_at() - b.full_at());
                    if matches!(dimension, Dimension::OutputTokens | Dimension::Tokens) {
                        dim.decay_refundable(now);
                        let back = units.min(dim.refundable);
                        dim.refundable -= back;
                        dim.lease = dim.lease.saturating_add(to_i64(back));
                    }
                }
                dim.shown = Some(dim.leased_bucket(now));
            }
        }
        if spent {
            st.spent = true;
        }
    }

    fn set_learned(&mut self, learned: &Learned) {
        let now = Instant::now();
        let mut st = self.shared.lock();
        let shared = st.mode == Mode::Shared;
        // Back from pacing alone less than a demand's lifetime ago, the refusals this process
        // meets answer what the fleet sent alone (in no report yet: after a restart the script
        // lets readings only lower the shared level then, for the same reason), not the shared
        // model.
        let aftermath = st
            .back_at
            .is_some_and(|t| now < later(t, demand_lifetime(self.inner.lease)));
        let f = &mut st.fleet;
        // Margins raised here since the last call, beyond the fleet's: news for every process,
        // at once. Raised while Redis was unreachable or in the aftermath (the processes pacing
        // alone meet the server's refusals of their sum), they say nothing of the shared model:
        // not sent. Sent, they would keep the restarted shared bucket shut while it refills
        // through them.
        let mut urgent = false;
        for (i, m) in learned.margins.iter().enumerate() {
            let raised = m.is_finite() && *m > f.local_margins[i] * 1.05 + 1e-3;
            f.local_margins[i] = if m.is_finite() { *m } else { 0.0 };
            let fleet = f.margin(i, now).max(f.margin_out[i].unwrap_or(0.0));
            if shared && !aftermath && raised && *m > fleet * 1.05 + 1e-3 {
                f.margin_out[i] = Some(m.min(0.5));
                urgent = true;
            }
        }
        if !shared {
            return;
        }
        f.local_cooldown = learned.cooldown_until.filter(|c| *c > now);
        let model = Model::of(learned, f.share);
        if f.model.as_ref() != Some(&model) {
            f.model = Some(model);
            f.model_dirty = true;
        }
        // The cooldown: a later one than the fleet's is news for every process, at once; none
        // while the fleet has one means this process's re-check was answered.
        match learned.cooldown_until.filter(|c| *c > now) {
            Some(until)
                if f.cooldown
                    .is_none_or(|c| until > later(c, Duration::from_millis(50)))
                    && f.raising.is_none_or(|r| until > r) =>
            {
                f.cooldown_op = CooldownOp::Raise(until);
                f.raising = Some(until);
                urgent = true;
            }
            None if f.cooldown.is_some_and(|c| c > now) && f.raising.is_none() => {
                f.cooldown_op = CooldownOp::Clear;
                urgent = true;
            }
            _ => {}
        }
        if urgent {
            st.urgent = true;
        }
        drop(st);
        if urgent {
            self.shared.notify.notify_one();
        }
    }

    fn learned(&mut self) -> Option<Learned> {
        self.shared.lock().fleet.news.take()
    }

    fn loading(&self, now: Instant) -> Option<Instant> {
        let st = self.shared.lock();
        let bound = later(st.opened_at, self.inner.timeout.saturating_mul(2));
        (st.mode == Mode::Shared && !st.joined && now < bound).then(|| later(now, LOADING_POLL))
    }

    fn refill_at(&self, now: Instant) -> Option<Instant> {
        let st = self.shared.lock();
        (st.mode == Mode::Shared && st.joined).then(|| later(now, settle_tick(self.inner.lease)))
    }

    fn demand(&mut self, requests: usize) {
        self.shared.lock().fleet.demand = requests as u64;
    }

    fn server_reading(&mut self, dimension: Dimension, reading: ServerReading) {
        let ServerReading {
            most_used,
            least_used,
            sent,
        } = reading;
        let now = Instant::now();
        let mut st = self.shared.lock();
        if st.mode == Mode::Shared {
            // The server counted the request between its dispatch and now; what another process
            // sent up to one network crossing earlier may have reached it after: the reading
            // counts what was sent before the dispatch less the request's round trip, at best.
            let from = sent
                .checked_sub(now.saturating_duration_since(sent))
                .unwrap_or(sent);
            st.dims[dimension.index()].reading = Some((most_used, least_used, from, now));
        }
    }
}

/// What one settlement asks for a dimension.
#[derive(Clone, Copy, Debug, Default)]
struct Ask {
    cap: u64,
    window_us: u64,
    want: u64,
    /// Ask for a lease's worth of the shared rate (the dimension is unknown here: joining).
    auto: bool,
    debt: u64,
    back: u64,
    used: u64,
    /// Units of the lease held now, and output reserved lately that may come back to it.
    held: u64,
    /// µs since the lease last fell: it held `held` since.
    held_for_us: u64,
    /// The server's units used as its last reading says, now, at its most pessimistic (−1: no
    /// reading) and at its most optimistic, and the µs since the earliest instant that reading
    /// may count from, as Redis's clock will see it.
    seen_used: i64,
    seen_least: i64,
    seen_age_us: u64,
}

/// What one settlement sends besides the buckets.
#[derive(Clone, Debug, Default)]
struct FleetAsk {
    /// 0 none, 1 raise (`cooldown_arg` µs from now), 2 clear (`cooldown_arg` = version seen).
    cooldown_op: u8,
    cooldown_arg: u64,
    /// Millionths of the capacity, −1 when there is no news.
    margins: [i64; 4],
    model: Option<Model>,
    seen_version: u64,
    demand: u64,
    /// Where this process's reports start: 0 they go on, 1 a key new here, 2 back from pacing
    /// alone.
    start: u8,
}

/// What one settlement answers besides the buckets.
#[derive(Debug, Default)]
struct FleetReply {
    cooldown_left_us: u64,
    cooldown_version: u64,
    margins_ppm: [u64; 4],
    model_version: u64,
    model: Option<Model>,
    active: u64,
    share_ppm: u64,
}

/// The background task of a key: reads what the fleet knows as soon as the key opens (its
/// limits, a lease, the cooldown, margins and model), keeps its leases topped up, pays debts,
/// returns what is idle, publishes what this process learned and its demand, watches Redis's
/// health. Ends (returning its leases) when the key's buckets are dropped.
async fn settle_loop(shared: std::sync::Weak<Shared>, inner: Arc<Inner>, keys: [String; 2]) {
    let tick = settle_tick(inner.lease);
    let min_gap = (inner.lease / 16).max(Duration::from_millis(2));
    let mut not_before = Instant::now();
    let mut first = true;
    let subscription = Arc::new(std::sync::atomic::AtomicU8::new(SUB_NONE));
    let mut settled_at = Instant::now();
    // The longest recent round trip to Redis (decaying by an eighth per settlement): a bound on
    // how much later than it was sent a settlement runs there.
    let mut round_trip = Duration::ZERO;
    loop {
        let Some(sh) = shared.upgrade() else { return };
        let closed = sh.lock().closed;
        if !closed && !first {
            tokio::select! {
                _ = sh.notify.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
            // A short grant's wait, cut short by news that must go at once.
            while Instant::now() < not_before && !sh.must_go() {
                tokio::select! {
                    _ = sh.notify.notified() => {}
                    _ = tokio::time::sleep_until(not_before) => {}
                }
            }
        }
        first = false;
        let now = Instant::now();
        let (asks, fleet_ask, closing, joined, refresh) = {
            let mut st = sh.lock();
            st.urgent = false;
            let closing = st.closed;
            let joined = st.joined;
            let alone = st.alone;
            // An active key reads what the fleet knows (a cooldown, margins) at least this
            // often, even when its lease needs nothing.
            let refresh = now.saturating_duration_since(st.active_at) < inner.refresh
                && now.saturating_duration_since(settled_at) >= inner.refresh;
            let idle = now.saturating_duration_since(st.active_at) > inner.lease.saturating_mul(2);
            let stalled = st.looked && !st.spent;
            let mode = st.mode;
            let (active, share) = (st.fleet.active.max(1), st.fleet.share);
            let asks = st.dims.each_mut().map(|d| {
                if d.cap == 0 {
                    // Unknown here: a process joining asks for what the fleet knows.
                    return Ask {
                        auto: mode == Mode::Shared && !joined && !closing,
                        seen_used: -1,
                        ..Ask::default()
                    };
                }
                let mut ask = Ask {
                    cap: if d.announce { d.cap } else { 0 },
                    window_us: d.window.as_micros() as u64,
                    seen_used: -1,
                    ..Ask::default()
                };
                if mode == Mode::Shared {
                    if stalled && d.lease >= to_i64(d.target) {
                        // The limiter looks but does not spend: its head waiter needs more
                        // than one lease.
                        d.boost = d.boost.saturating_mul(2).min(d.cap.max(1));
                    } else if !stalled && d.boost > 1 {
                        d.boost /= 2;
                    }
                    d.target = d.fair_target(inner.lease, active, share);
                    if d.lease < 0 {
                        ask.debt = d.lease.unsigned_abs();
                    }
                    let held = d.lease.max(0) as u64;
                    if closing || idle {
                        ask.back = held;
                    } else if held > d.target.saturating_mul(2) {
                        ask.back = held - d.target;
                    } else if held < d.low_water() || (stalled && held < d.target) {
                        ask.want = d.target - held;
                    }
                    ask.used = d.cap;
                    // What this process holds, and since when (Redis reads it as of the
                    // settlement's arrival, a little later: it then claims the holding from
                    // later than it began, which only counts more). Output reserved lately may
                    // come back before the next settlement (only output dimensions keep any).
                    d.decay_refundable(now);
                    ask.held = held.saturating_add(d.refundable);
                    ask.held_for_us = micros(now.saturating_duration_since(d.fell_at));
                    // A reading younger than the time Redis keeps a process's demand (see
                    // `demand_lifetime`), in the units of the shared bucket. Its age as Redis
                    // will see it: this settlement reaches Redis up to a round trip later.
                    if let Some((b, least, from, at)) = d.reading.take()
                        && now.saturating_duration_since(at) <= demand_lifetime(inner.lease) / 2
                        && (b.capacity(), b.window()) == (d.cap, d.window)
                    {
                        ask.seen_used = to_i64(d.cap.saturating_sub(b.level(now)));
                        ask.seen_least = to_i64(d.cap.saturating_sub(least.level(now)));
                        ask.seen_age_us = micros(
                            now.saturating_duration_since(from)
                                .saturating_add(round_trip),
                        );
                    }
                } else {
                    // Degraded: probe Redis, publishing the limits again.
                    ask.cap = d.cap;
                    ask.used = d.cap;
                }
                ask
            });
            st.looked = false;
            st.spent = false;
            let f = &mut st.fleet;
            let mut fleet_ask = FleetAsk {
                margins: [-1; 4],
                seen_version: f.seen_version,
                demand: f.demand,
                start: match (joined, alone) {
                    (_, true) => 2,
                    (false, false) => 1,
                    (true, false) => 0,
                },
                ..FleetAsk::default()
            };
            if mode == Mode::Shared {
                match f.cooldown_op {
                    CooldownOp::None => {}
                    CooldownOp::Raise(until) => {
                        fleet_ask.cooldown_op = 1;
                        fleet_ask.cooldown_arg =
                            until.saturating_duration_since(now).as_micros() as u64;
                    }
                    CooldownOp::Clear => {
                        fleet_ask.cooldown_op = 2;
                        fleet_ask.cooldown_arg = f.cooldown_version;
                    }
                }
                for (m, out) in fleet_ask.margins.iter_mut().zip(&f.margin_out) {
                    if let Some(share) = out {
                        *m = (share * 1e6).round() as i64;
                    }
                }
                if f.model_dirty {
                    fleet_ask.model = f.model.clone();
                }
            }
            (asks, fleet_ask, closing, joined, refresh)
        };
        drop(sh);
        // A reading rides along with a settlement that is due anyway: it makes none.
        let idle = |a: &Ask| a.cap == 0 && a.want == 0 && a.debt == 0 && a.back == 0 && !a.auto;
        let news_to_send = fleet_ask.cooldown_op != 0
            || fleet_ask.margins.iter().any(|m| *m >= 0)
            || fleet_ask.model.is_some();
        if joined && !news_to_send && !refresh && asks.iter().all(|a| a.window_us == 0 || idle(a)) {
            // Nothing to settle: no round trip.
            if closing {
                return;
            }
            continue;
        }
        let result = settle(&inner, &keys, &asks, &fleet_ask).await;
        tracing::trace!(key = %keys[0], ?asks, ?fleet_ask, ?result, "redis store: settled");
        let Some(sh) = shared.upgrade() else {
            return;
        };
        let received = Instant::now();
        if result.is_ok() {
            round_trip = received
                .saturating_duration_since(now)
                .max(round_trip - round_trip / 8);
        }
        settled_at = received;
        not_before = later(received, min_gap);
        let shared_now = {
            let mut st = sh.lock();
            match result {
                Ok((replies, fleet)) => {
                    inner.healthy();
                    let was = st.mode;
                    st.mode = Mode::Shared;
                    for ((d, ask), reply) in st.dims.iter_mut().zip(asks).zip(replies) {
                        if was != Mode::Shared {
                            d.lease = 0;
                            d.local = None;
                            d.shown = None;
                        }
                        let [granted, cap, window_us, wait_us] = reply;
                        if cap > 0 && window_us > 0 {
                            if ask.cap > 0 || !d.announce {
                                d.announce = false;
                            }
                            if (cap, window_us) != (d.cap, d.window.as_micros() as u64) {
                                d.cap = cap;
                                d.window = Duration::from_micros(window_us);
                                d.target = d.base_target(inner.lease);
                            }
                        } else if d.cap > 0 {
                            // Redis forgot the key (restart, expiry): publish ours again.
                            d.announce = true;
                        }
                        if was == Mode::Shared {
                            d.lease = d
                                .lease
                                .saturating_add(to_i64(ask.debt))
                                .saturating_sub(to_i64(ask.back));
                        }
                        d.lease = d.lease.saturating_add(to_i64(granted));
                        let want = if ask.auto { d.target } else { ask.want };
                        if granted < want && wait_us > 0 {
                            // The shared bucket is short (or the fleet cools down): ask again when
                            // the rest is there, within a lease period (the others compete for the
                            // same refill: asking more often would only add round trips).
                            let wait = Duration::from_micros(wait_us).clamp(min_gap, inner.lease);
                            not_before = not_before.max(later(received, wait));
                        }
                    }
                    if was != Mode::Shared {
                        st.looked = true;
                        st.back_at = Some(received);
                    }
                    let first_join = !st.joined;
                    st.joined = true;
                    st.alone = false;
                    st.fleet.read(&fleet_ask, fleet, received, first_join);
                    if closing {
                        return;
                    }
                }
                Err(()) => {
                    if closing {
                        return;
                    }
                    let mode = inner.policy.degraded_mode();
                    if st.mode == Mode::Shared {
                        let now = Instant::now();
                        for d in st.dims.iter_mut().filter(|d| d.cap > 0) {
                            // Pace alone from what this process held, at the full rate.
                            d.local = Some(d.leased_bucket(now));
                            d.shown = None;
                            d.lease = 0;
                        }
                    }
                    st.mode = mode;
                    st.alone = true;
                    not_before = later(Instant::now(), inner.retry_every);
                }
            }
            st.mode == Mode::Shared
        };
        drop(sh);
        if shared_now && subscription.load(Ordering::Relaxed) == SUB_NONE {
            // Once Redis answers: the subscription to the key's cooldowns, in its own task (a
            // slow or refusing server must not hold settlements up; the subscriber connection
            // renews it after a reconnection). Tried again after the next settlement when the
            // connection failed; not after the server refused it (no RESP3, before Redis 6):
            // cooldowns travel with settlements anyway.
            subscription.store(SUB_PENDING, Ordering::Relaxed);
            let (inner, subscription) = (inner.clone(), subscription.clone());
            let channel = Inner::cooldown_channel(&keys[0]);
            tokio::spawn(async move {
                let mut sub = inner.subscriber.clone();
                let next = match tokio::time::timeout(inner.timeout, sub.subscribe(&channel)).await
                {
                    Ok(Ok(())) => SUB_DONE,
                    Ok(Err(e))
                        if e.is_io_error()
                            || e.is_connection_refusal()
                            || e.is_connection_dropped()
                            || e.is_timeout() =>
                    {
                        tracing::debug!(channel, error = %e, "redis store: no cooldown subscription yet");
                        SUB_NONE
                    }
                    Ok(Err(e)) => {
                        tracing::info!(channel, error = %e,
                            "redis store: no cooldown subscription; cooldowns travel with settlements");
                        SUB_DONE
                    }
                    Err(_) => {
                        tracing::debug!(channel, "redis store: cooldown subscription timed out");
                        SUB_NONE
                    }
                };
                subscription.store(next, Ordering::Relaxed);
            });
        }
    }
}

/// The states of a key's cooldown subscription.
const SUB_NONE: u8 = 0;
const SUB_PENDING: u8 = 1;
const SUB_DONE: u8 = 2;

impl Fleet {
    /// Folds in what a settlement read, and prepares the news for the limiter.
    fn read(&mut self, sent: &FleetAsk, reply: FleetReply, received: Instant, first_join: bool) {
        let mut changed = first_join;
        // What was sent is acknowledged (unless it changed since: then it goes next time).
        if sent.cooldown_op != 0 {
            if let (1, CooldownOp::Raise(_)) = (sent.cooldown_op, self.cooldown_op) {
                self.raising = None;
            }
            if matches!(
                (sent.cooldown_op, self.cooldown_op),
                (1, CooldownOp::Raise(_)) | (2, CooldownOp::Clear)
            ) {
                self.cooldown_op = CooldownOp::None;
            }
        }
        for (i, m) in sent.margins.iter().enumerate() {
            if *m >= 0 && self.margin_out[i].is_some_and(|o| (o * 1e6).round() as i64 == *m) {
                self.margin_out[i] = None;
            }
        }
        if sent.model.is_some() && sent.model == self.model {
            self.model_dirty = false;
        }
        // Redis forgot the key (a restart without persistence): what this process knows goes
        // back with its next settlement — the cooldown it honours, its margins, the model.
        if reply.cooldown_version < self.cooldown_version || reply.model_version < self.seen_version
        {
            if let Some(until) = self.local_cooldown.filter(|c| *c > received) {
                self.cooldown_op = CooldownOp::Raise(until);
                self.raising = Some(until);
            }
            // The fleet's margins as last read (this process's own, raised while it paced alone
            // through an outage, say nothing of the shared model).
            let fleet: [f64; 4] = std::array::from_fn(|i| self.margin(i, received));
            for (out, m) in self.margin_out.iter_mut().zip(fleet) {
                if m > 1e-6 && out.is_none() {
                    *out = Some(m.min(0.5));
                }
            }
            self.model_dirty = self.model.is_some();
        }
        let cooldown = (reply.cooldown_left_us > 0)
            .then(|| later(received, Duration::from_micros(reply.cooldown_left_us)));
        if cooldown.is_some() != self.cooldown.is_some()
            || reply.cooldown_version != self.cooldown_version
        {
            changed = true;
        }
        self.cooldown = cooldown;
        self.cooldown_version = reply.cooldown_version;
        let margins = reply.margins_ppm.map(|m| m as f64 / 1e6);
        for (i, m) in margins.iter().enumerate() {
            if *m > self.margin(i, received) * 1.05 + 1e-3 {
                changed = true;
            }
        }
        self.margins = margins;
        self.margins_at = received;
        // What Redis holds now (lower after a restart: it forgot the model).
        self.seen_version = reply.model_version;
        let fresh = reply.model;
        changed |= fresh.is_some();
        self.active = reply.active.max(1);
        self.share = (reply.share_ppm as f64 / 1e6).clamp(0.0, 1.0);
        if !changed {
            return;
        }
        let cooldown_until = match (self.cooldown, self.raising) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.news = Some(Learned {
            limits: fresh.as_ref().map_or([None; 4], |m| {
                m.limits
                    .map(|l| l.map(|(c, w)| (c, Duration::from_micros(w))))
            }),
            cooldown_until,
            margins,
            input: fresh.as_ref().and_then(|m| Model::estimate(m.input)),
            output: fresh.as_ref().and_then(|m| Model::estimate(m.output)),
            // The fleet's rate, divided by demand: this process's share of it.
            throttle_rate: fresh
                .as_ref()
                .and_then(|m| m.throttle)
                .map(|r| r * self.share),
            output_counted_as_produced: fresh.as_ref().and_then(|m| m.counted_as_produced),
        });
    }
}

/// One round trip: the settlement script, bounded by the store's timeout.
async fn settle(
    inner: &Inner,
    keys: &[String; 2],
    asks: &[Ask; 4],
    fleet: &FleetAsk,
) -> Result<([[u64; 4]; 4], FleetReply), ()> {
    let mut invocation = SCRIPT.key(&keys[0]);
    invocation.key(&keys[1]);
    let window_ms = asks
        .iter()
        .map(|a| a.window_us / 1000)
        .max()
        .filter(|w| *w > 0)
        .unwrap_or(60_000);
    invocation
        .arg(window_ms.saturating_mul(3).max(1_000))
        .arg(inner.lease.as_micros() as u64)
        .arg(&inner.id)
        .arg(fleet.seen_version)
        .arg(fleet.cooldown_op)
        .arg(fleet.cooldown_arg)
        .arg(MARGIN_DECAY.as_micros() as u64);
    for m in fleet.margins {
        invocation.arg(m);
    }
    let model = fleet
        .model
        .as_ref()
        .and_then(|m| serde_json::to_string(m).ok())
        .unwrap_or_default();
    invocation
        .arg(model)
        .arg(fleet.demand)
        .arg(demand_lifetime(inner.lease).as_micros() as u64)
        .arg(fleet.start);
    for a in asks {
        invocation
            .arg(a.cap)
            .arg(a.window_us)
            .arg(if a.auto { -1 } else { to_i64(a.want) })
            .arg(a.debt)
            .arg(a.back)
            .arg(a.used)
            .arg(a.held)
            .arg(a.held_for_us)
            .arg(a.seen_used)
            .arg(a.seen_least)
            .arg(a.seen_age_us);
    }
    let mut conn: ConnectionManager = inner.conn.clone();
    inner.ops.fetch_add(1, Ordering::Relaxed);
    let call = invocation.invoke_async::<Vec<redis::Value>>(&mut conn);
    let reply = match tokio::time::timeout(inner.timeout, call).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            inner.unhealthy(&e.to_string());
            return Err(());
        }
        Err(_) => {
            inner.unhealthy("timed out");
            return Err(());
        }
    };
    let int = |i: usize| match reply.get(i) {
        Some(redis::Value::Int(v)) => (*v).max(0) as u64,
        _ => 0,
    };
    let text = |i: usize| match reply.get(i) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    };
    let mut out = [[0u64; 4]; 4];
    for (d, o) in out.iter_mut().enumerate() {
        for (j, x) in o.iter_mut().enumerate() {
            *x = int(d * 4 + j);
        }
    }
    let model = text(24);
    let fleet = FleetReply {
        cooldown_left_us: int(16),
        cooldown_version: int(17),
        margins_ppm: [int(18), int(19), int(20), int(21)],
        model_version: int(22),
        // A model this version cannot read is ignored (a newer version of the crate may write
        // more): the limiter keeps its own.
        model: (!model.is_empty())
            .then(|| serde_json::from_str(&model).ok())
            .flatten(),
        active: int(25),
        share_ppm: int(26),
    };
    Ok((out, fleet))
}

/// How often a key's background task wakes to settle (when nothing wakes it sooner).
fn settle_tick(lease: Duration) -> Duration {
    (lease / 2).max(Duration::from_millis(10))
}

/// How long a process's demand counts in Redis without being renewed by a settlement.
fn demand_lifetime(lease: Duration) -> Duration {
    lease.saturating_mul(8).max(Duration::from_secs(2))
}

/// `d` in whole µs, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `v` as an `i64`, saturating at `i64::MAX` (`as` would wrap a large server number negative).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `now + d`, saturating at a far future instead of overflowing the clock (a window or lease
/// read from Redis or configured can be huge).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 60 * 60)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's `*-limit: 18446744073709551615` reaches the lease as `cap`: the shared bucket
    /// is still built (`u64::MAX as i64` is -1, and `clamp(0, -1)` used to panic), and huge
    /// spans and windows saturate.
    #[tokio::test(start_paused = true)]
    async fn extreme_caps_and_windows_do_not_overflow() {
        let now = Instant::now();
        for cap in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            for window in [
                Duration::ZERO,
                Duration::from_nanos(1),
                Duration::from_secs(60),
                Duration::from_micros(u64::MAX),
            ] {
                for lease in [i64::MIN, -1, 0, 1, i64::MAX] {
                    let mut dim = Dim::new(now);
                    dim.cap = cap;
                    dim.window = window;
                    dim.lease = lease;
                    if cap > 0 {
                        let _ = dim.leased_bucket(now);
                    }
                    let _ = dim.units(Duration::MAX);
                    let _ = dim.base_target(Duration::MAX);
                }
            }
        }
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(7), 7);
        assert!(later(now, Duration::MAX) > now);
    }

    /// A throttle rate (a server without rate-limit headers) is the fleet's: published as the
    /// rate a process reached divided by its demand share, adopted times the adopter's share.
    #[tokio::test(start_paused = true)]
    async fn the_throttle_rate_is_divided_by_demand() {
        let now = Instant::now();
        let learned = Learned {
            limits: [None; 4],
            cooldown_until: None,
            margins: [0.0; 4],
            input: None,
            output: None,
            throttle_rate: Some(10.0),
            output_counted_as_produced: Some(true),
        };
        // A process with a quarter of the fleet's demand paced at 10/s: the fleet, at 40/s.
        let model = Model::of(&learned, 0.25);
        assert_eq!(model.throttle, Some(40.0));
        // A process with half of the demand adopts 20/s of it.
        let mut fleet = Fleet::new(now);
        let reply = FleetReply {
            model_version: 1,
            model: Some(model),
            active: 3,
            share_ppm: 500_000,
            ..FleetReply::default()
        };
        fleet.read(&FleetAsk::default(), reply, now, false);
        let news = fleet.news.take().expect("news");
        assert_eq!(news.throttle_rate, Some(20.0));
        // The output accounting goes with the model; one written before it existed has none.
        assert_eq!(news.output_counted_as_produced, Some(true));
        let old: Model = serde_json::from_str(
            r#"{"limits":[null,null,null,null],"input":null,"output":null,"throttle":2.0}"#,
        )
        .expect("an older model");
        assert_eq!(old.counted_as_produced, None);
    }

    /// After a Redis restart (the versions it keeps are lower than read before), a process gives
    /// back the cooldown its limiter honours, its margins and its model.
    #[tokio::test(start_paused = true)]
    async fn a_forgetful_redis_gets_the_fleets_state_back() {
        let now = Instant::now();
        let until = now + Duration::from_secs(3);
        let mut fleet = Fleet::new(now);
        fleet.cooldown_version = 2;
        fleet.seen_version = 5;
        fleet.cooldown = Some(until);
        fleet.local_cooldown = Some(until);
        fleet.margins = [0.1, 0.0, 0.0, 0.0];
        // Raised while pacing alone: not the fleet's.
        fleet.local_margins = [0.3, 0.3, 0.0, 0.0];
        fleet.model = Some(Model::of(
            &Learned {
                limits: [None; 4],
                cooldown_until: None,
                margins: [0.0; 4],
                input: None,
                output: None,
                throttle_rate: None,
                output_counted_as_produced: None,
            },
            1.0,
        ));
        fleet.read(&FleetAsk::default(), FleetReply::default(), now, false);
        assert_eq!(fleet.cooldown_op, CooldownOp::Raise(until));
        assert_eq!(fleet.margin_out, [Some(0.1), None, None, None]);
        assert!(fleet.model_dirty);
        // The limiter is not told the cooldown ended.
        assert_eq!(
            fleet.news.take().and_then(|n| n.cooldown_until),
            Some(until)
        );
    }
}
