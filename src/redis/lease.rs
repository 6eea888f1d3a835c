//! A key's buckets backed by Redis: leases spent locally, settled in the background.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::rate_limit::{Bucket, Buckets, RateLimitKey};
use crate::signals::Dimension;

use super::script::SCRIPT;
use super::{FailurePolicy, Inner};

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
    /// What this process reserved recently and may legitimately get back (output only).
    refundable: u64,
    refundable_at: Instant,
    /// The local bucket while Redis is unreachable.
    local: Option<Bucket>,
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
            refundable: 0,
            refundable_at: now,
            local: None,
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

    /// The local bucket the limiter sees when sharing: its level is the lease.
    fn leased_bucket(&self, now: Instant) -> Bucket {
        // `cap` is a server's number: `u64::MAX as i64` is -1, and `clamp(0, -1)` panics.
        let held = self.lease.clamp(0, to_i64(self.cap)) as u64;
        let mut b = Bucket::new(self.cap, self.window, now);
        b.set_full_at(later(now, self.span(self.cap - held)));
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
}

pub(super) struct Shared {
    lease: Mutex<KeyLease>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, KeyLease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
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
            }),
            notify: Notify::new(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(settle_loop(
                    Arc::downgrade(&shared),
                    inner.clone(),
                    inner.redis_key(key),
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
                let low = dim.lease < to_i64(dim.target.div_ceil(2).max(1));
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
}

/// What one settlement asks for a dimension.
#[derive(Clone, Copy, Debug, Default)]
struct Ask {
    cap: u64,
    window_us: u64,
    want: u64,
    debt: u64,
    back: u64,
    used: u64,
}

/// The background task of a key: keeps its leases topped up, pays debts, returns what is idle,
/// watches Redis's health. Ends (returning its leases) when the key's buckets are dropped.
async fn settle_loop(shared: std::sync::Weak<Shared>, inner: Arc<Inner>, redis_key: String) {
    let tick = (inner.lease / 2).max(Duration::from_millis(10));
    let min_gap = (inner.lease / 16).max(Duration::from_millis(2));
    let mut not_before = Instant::now();
    loop {
        let Some(sh) = shared.upgrade() else { return };
        let closed = sh.lock().closed;
        if !closed {
            tokio::select! {
                _ = sh.notify.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
            tokio::time::sleep_until(not_before).await;
        }
        let now = Instant::now();
        let (asks, closing) = {
            let mut st = sh.lock();
            let closing = st.closed;
            let idle = now.saturating_duration_since(st.active_at) > inner.lease.saturating_mul(2);
            let stalled = st.looked && !st.spent;
            let mode = st.mode;
            let asks = st.dims.each_mut().map(|d| {
                if d.cap == 0 {
                    return Ask::default();
                }
                let mut ask = Ask {
                    cap: if d.announce { d.cap } else { 0 },
                    window_us: d.window.as_micros() as u64,
                    ..Ask::default()
                };
                let base = d.base_target(inner.lease);
                if mode == Mode::Shared {
                    if stalled && d.lease >= to_i64(d.target) {
                        // The limiter looks but does not spend: its head waiter needs more
                        // than one lease.
                        d.target = d.target.saturating_mul(2).min(d.cap);
                    } else if !stalled && d.target > base {
                        d.target = (d.target / 2).max(base);
                    }
                    if d.lease < 0 {
                        ask.debt = d.lease.unsigned_abs();
                    }
                    let held = d.lease.max(0) as u64;
                    if closing || idle {
                        ask.back = held;
                    } else if held > d.target.saturating_mul(2) {
                        ask.back = held - d.target;
                    } else if held < d.target {
                        ask.want = d.target - held;
                    }
                    ask.used = d.cap;
                } else {
                    // Degraded: probe Redis, publishing the limits again.
                    ask.cap = d.cap;
                    ask.used = d.cap;
                }
                ask
            });
            st.looked = false;
            st.spent = false;
            (asks, closing)
        };
        drop(sh);
        let idle = |a: &Ask| a.cap == 0 && a.want == 0 && a.debt == 0 && a.back == 0;
        if asks.iter().all(|a| a.window_us == 0 || idle(a)) {
            // Nothing known about this key yet, or nothing to settle: no round trip.
            if closing {
                return;
            }
            continue;
        }
        let result = settle(&inner, &redis_key, &asks).await;
        let Some(sh) = shared.upgrade() else {
            return;
        };
        not_before = later(Instant::now(), min_gap);
        let mut st = sh.lock();
        match result {
            Ok(replies) => {
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
                    if granted < ask.want && wait_us > 0 {
                        // The shared bucket is short: ask again once a lease period has refilled
                        // it, not sooner (the others compete for the same refill: asking more
                        // often would only add round trips).
                        not_before = not_before.max(later(Instant::now(), inner.lease));
                    }
                }
                if was != Mode::Shared {
                    st.looked = true;
                }
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
                not_before = later(Instant::now(), inner.retry_every);
            }
        }
    }
}

/// One round trip: the settlement script, bounded by the store's timeout.
async fn settle(inner: &Inner, redis_key: &str, asks: &[Ask; 4]) -> Result<[[u64; 4]; 4], ()> {
    let mut invocation = SCRIPT.key(redis_key);
    let ttl_ms = asks
        .iter()
        .map(|a| a.window_us / 1000)
        .max()
        .unwrap_or(60_000)
        .saturating_mul(3)
        .max(1_000);
    invocation.arg(ttl_ms);
    for a in asks {
        invocation
            .arg(a.cap)
            .arg(a.window_us)
            .arg(a.want)
            .arg(a.debt)
            .arg(a.back)
            .arg(a.used);
    }
    let mut conn: ConnectionManager = inner.conn.clone();
    inner.ops.fetch_add(1, Ordering::Relaxed);
    let call = invocation.invoke_async::<Vec<Vec<i64>>>(&mut conn);
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
    let mut out = [[0u64; 4]; 4];
    for (o, r) in out.iter_mut().zip(reply) {
        for (x, v) in o.iter_mut().zip(r) {
            *x = v.max(0) as u64;
        }
    }
    Ok(out)
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
}
