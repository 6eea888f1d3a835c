//! One continuously replenished bucket, GCRA-style.

use std::time::Duration;

use tokio::time::Instant;

/// The longest span a bucket computes with (about 115 days): absurd capacities, windows or
/// costs saturate here instead of overflowing.
const MAX_SPAN: Duration = Duration::from_secs(10_000_000);

/// A continuously replenished bucket: `capacity` units, refilled at `capacity / window` per
/// second, represented by the instant it would be full again (`full_at`).
///
/// `level(t) = capacity − rate × max(0, full_at − t)`; charging `c` at `t` sets
/// `full_at = max(full_at, t) + c / rate`; `c` fits at `t` exactly when
/// `full_at − t ≤ (capacity − c) / rate`. Anthropic's `*-reset` header *is* `full_at` and
/// `*-remaining` is the level: two readings of one fact.
///
/// All arithmetic is integer nanoseconds in `u128`, saturating at about 115 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    capacity: u64,
    window: Duration,
    full_at: Instant,
}

impl Bucket {
    /// A bucket of `capacity` units per `window` that is full at `full_at` (a `full_at` in the
    /// past means full now). A zero window is treated as one nanosecond.
    pub fn new(capacity: u64, window: Duration, full_at: Instant) -> Self {
        Bucket {
            capacity,
            window: window.max(Duration::from_nanos(1)),
            full_at,
        }
    }

    /// The capacity (the limit).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The window over which `capacity` replenishes.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The instant the bucket is full again.
    pub fn full_at(&self) -> Instant {
        self.full_at
    }

    /// The time `amount` units take to replenish.
    pub fn span(&self, amount: u64) -> Duration {
        span(amount, self.capacity, self.window)
    }

    /// The units available at `now`.
    pub fn level(&self, now: Instant) -> u64 {
        self.capacity.saturating_sub(self.used(now))
    }

    /// The units used at `now` (more than the capacity when charged beyond it).
    pub(crate) fn used(&self, now: Instant) -> u64 {
        self.units(self.full_at.saturating_duration_since(now))
    }

    /// Units worth `d` of replenishment, rounded up.
    pub(crate) fn span_units(&self, d: Duration) -> u64 {
        self.units(d)
    }

    /// Units worth `d` of replenishment, rounded up.
    fn units(&self, d: Duration) -> u64 {
        let ns = d.as_nanos().saturating_mul(self.capacity as u128);
        let w = self.window.as_nanos().max(1);
        u64::try_from(ns.div_ceil(w)).unwrap_or(u64::MAX)
    }

    /// The instant from which `cost` fits, when at most `usable` of the capacity may be used
    /// (`usable < capacity` during a ramp-up). `None` when `cost > usable`. The instant may be in
    /// the past (the cost fits now).
    pub fn ready_at(&self, cost: u64, usable: u64) -> Option<Instant> {
        if cost > usable.min(self.capacity) {
            return None;
        }
        let slack = self.span(usable.min(self.capacity) - cost);
        Some(sub(self.full_at, slack))
    }

    /// Charges `cost` at `now`.
    pub fn charge(&mut self, cost: u64, now: Instant) {
        self.full_at = add(self.full_at.max(now), self.span(cost));
    }

    /// Gives back `amount` at `now` (never beyond full).
    pub fn refund(&mut self, amount: u64, now: Instant) {
        if self.full_at > now {
            self.full_at = sub(self.full_at, self.span(amount)).max(now);
        }
    }

    /// Changes capacity and window at `now`, keeping the units used (a raised limit gives the
    /// difference at once, a lowered one takes it away).
    pub fn resize(&mut self, capacity: u64, window: Duration, now: Instant) {
        let used = self.used(now);
        self.capacity = capacity;
        self.window = window.max(Duration::from_nanos(1));
        self.full_at = add(now, self.span(used));
    }

    /// Sets the instant the bucket is full.
    pub fn set_full_at(&mut self, full_at: Instant) {
        self.full_at = full_at;
    }
}

/// The time `amount` units take at `capacity / window`, saturating at [`MAX_SPAN`].
pub(crate) fn span(amount: u64, capacity: u64, window: Duration) -> Duration {
    let ns = (amount as u128).saturating_mul(window.as_nanos()) / (capacity.max(1) as u128);
    if ns >= MAX_SPAN.as_nanos() {
        MAX_SPAN
    } else {
        Duration::from_nanos(ns as u64)
    }
}

/// `t + d`, saturating (tokio's `Instant` panics on overflow).
pub(crate) fn add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(MAX_SPAN))
        .unwrap_or_else(|| t.checked_add(Duration::from_secs(86_400)).unwrap_or(t))
}

/// `t − d`, saturating at the earliest instant the clock can represent.
pub(crate) fn sub(t: Instant, mut d: Duration) -> Instant {
    loop {
        if let Some(x) = t.checked_sub(d) {
            return x;
        }
        d /= 2;
        if d.is_zero() {
            return t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gcra_arithmetic() {
        let now = Instant::now();
        let mut b = Bucket::new(60, Duration::from_secs(60), now);
        assert_eq!(b.level(now), 60);
        b.charge(30, now);
        assert_eq!(b.full_at(), now + Duration::from_secs(30));
        assert_eq!(b.level(now), 30);
        assert!(b.ready_at(30, 60).unwrap() <= now);
        assert_eq!(b.ready_at(40, 60).unwrap(), now + Duration::from_secs(10));
        assert_eq!(b.ready_at(61, 60), None);
        assert_eq!(b.level(now + Duration::from_secs(10)), 40);
        b.refund(10, now);
        assert_eq!(b.level(now), 40);
        b.refund(1_000, now);
        assert_eq!(b.level(now), 60);
        b.charge(30, now);
        b.resize(120, Duration::from_secs(60), now);
        assert_eq!(b.level(now), 90);
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_values_saturate() {
        let now = Instant::now();
        let mut b = Bucket::new(1, Duration::from_secs(u64::MAX / 4), now);
        b.charge(u64::MAX, now);
        b.charge(u64::MAX, now);
        assert_eq!(b.level(now), 0);
        let mut z = Bucket::new(0, Duration::ZERO, now);
        assert_eq!(z.ready_at(1, 0), None);
        z.charge(5, now);
        assert!(z.ready_at(0, 0).is_some());
    }

    proptest::proptest! {
        /// Any sequence of operations on any values: no panic, the level stays within the
        /// capacity, and a cost that fits is admitted exactly at its ready instant.
        #[test]
        fn never_panics_and_stays_consistent(
            capacity in 0u64..=u64::MAX,
            window_ns in 0u64..=u64::MAX,
            ops in proptest::collection::vec((0u8..4, 0u64..=u64::MAX, 0u64..10_000_000_000), 1..20),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let now = Instant::now();
                let mut b = Bucket::new(capacity, Duration::from_nanos(window_ns), now);
                for (op, amount, advance_ns) in ops {
                    let t = add(now, Duration::from_nanos(advance_ns));
                    match op {
                        0 => b.charge(amount, t),
                        1 => b.refund(amount, t),
                        2 => b.resize(amount, Duration::from_nanos(advance_ns), t),
                        _ => {
                            if let Some(at) = b.ready_at(amount, b.capacity()) {
                                let at = at.max(t);
                                assert!(b.level(at) >= amount.min(b.capacity()) || b.level(at) + 1 >= amount);
                            }
                        }
                    }
                    assert!(b.level(t) <= b.capacity());
                }
            });
        }
    }
}
