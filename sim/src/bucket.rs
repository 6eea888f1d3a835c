//! Continuously replenished token buckets in exact integer arithmetic.
//!
//! A bucket of `limit` per minute refills `limit` tokens every 60 s, i.e. `limit` units per
//! nanosecond when the level is counted in token·(nanoseconds per minute). Keeping the level in
//! those units makes refill, waits and resets exact: no floating-point drift, so a `retry-after`
//! computed from a bucket is exactly when the request fits.

use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds in a minute: one token in level units.
pub(crate) const UNIT: i128 = 60_000_000_000;

#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    limit: u64,
    /// Tokens per minute other clients take continuously (`floor(share × limit)`, below
    /// `limit` when `limit > 0`): the net refill is `limit − drain`.
    drain: u64,
    share: f64,
    /// Tokens × [`UNIT`]; may be negative (output charged as produced).
    level: i128,
    updated: Instant,
}

fn ceil_div(a: i128, b: i128) -> i128 {
    debug_assert!(a >= 0 && b > 0);
    (a + b - 1) / b
}

fn drain(limit: u64, share: f64) -> u64 {
    ((share * limit as f64).floor() as u64).min(limit.saturating_sub(1))
}

fn nanos(d: i128) -> Duration {
    Duration::from_nanos(u64::try_from(d.max(0)).unwrap_or(u64::MAX))
}

impl Bucket {
    /// A bucket `fill` full; other clients take `share` (`0.0..1.0`) of its refill.
    pub(crate) fn new(limit: u64, fill: f64, share: f64, at: Instant) -> Self {
        let tokens = (fill * limit as f64).floor().clamp(0.0, limit as f64) as i128;
        Bucket {
            limit,
            drain: drain(limit, share),
            share,
            level: tokens * UNIT,
            updated: at,
        }
    }

    /// The net refill per minute: the limit less what other clients take.
    fn rate(&self) -> i128 {
        i128::from(self.limit - self.drain)
    }

    fn capacity(&self) -> i128 {
        i128::from(self.limit) * UNIT
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Refills up to `to` (never backwards).
    pub(crate) fn advance(&mut self, to: Instant) {
        if to <= self.updated {
            return;
        }
        let dt = (to - self.updated).as_nanos() as i128;
        let cap = self.capacity();
        if self.level < cap {
            self.level = (self.level + dt * self.rate()).min(cap);
        }
        self.updated = to;
    }

    /// Changes the capacity and refill rate; the level is kept, capped at the new capacity.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
        self.drain = drain(limit, self.share);
        self.level = self.level.min(self.capacity());
    }

    /// How long until the bucket holds `tokens` (zero if it does now); `None` when it never
    /// will under the current limit (`tokens` above the limit, or a zero limit).
    pub(crate) fn wait_for(&self, tokens: u64) -> Option<Duration> {
        let need = i128::from(tokens) * UNIT;
        if self.level >= need {
            return Some(Duration::ZERO);
        }
        if tokens > self.limit || self.limit == 0 {
            return None;
        }
        Some(nanos(ceil_div(need - self.level, self.rate())))
    }

    pub(crate) fn charge(&mut self, tokens: u64) {
        self.level -= i128::from(tokens) * UNIT;
    }

    pub(crate) fn refund(&mut self, tokens: u64) {
        self.level = (self.level + i128::from(tokens) * UNIT).min(self.capacity());
    }

    /// Whole tokens left (rounded down, never negative).
    pub(crate) fn remaining(&self) -> u64 {
        u64::try_from(self.level.max(0) / UNIT).unwrap_or(u64::MAX)
    }

    /// The exact level in tokens (may be fractional or negative).
    pub(crate) fn level(&self) -> f64 {
        self.level as f64 / UNIT as f64
    }

    /// How long until the bucket is full; `None` if never (a zero limit below zero).
    pub(crate) fn until_full(&self) -> Option<Duration> {
        let cap = self.capacity();
        if self.level >= cap {
            return Some(Duration::ZERO);
        }
        if self.limit == 0 {
            return None;
        }
        // From the refill rate the server knows: what other clients will take is not known
        // in advance (a real server's reset cannot predict it either).
        Some(nanos(ceil_div(cap - self.level, i128::from(self.limit))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn exact_refill_and_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, 1.0, 0.0, t0);
        for _ in 0..60 {
            assert_eq!(b.wait_for(1), Some(Duration::ZERO));
            b.charge(1);
        }
        assert_eq!(b.wait_for(1), Some(Duration::from_secs(1)));
        assert_eq!(b.until_full(), Some(Duration::from_secs(60)));
        b.advance(t0 + Duration::from_millis(999));
        assert_eq!(b.remaining(), 0);
        assert_eq!(b.wait_for(1), Some(Duration::from_millis(1)));
        b.advance(t0 + Duration::from_secs(1));
        assert_eq!(b.remaining(), 1);
        assert_eq!(b.wait_for(61), None);
        b.advance(t0 + Duration::from_secs(600));
        assert_eq!(b.remaining(), 60);
        b.set_limit(10);
        assert_eq!(b.remaining(), 10);
        b.charge(25);
        assert_eq!(b.level(), -15.0);
        assert_eq!(b.until_full(), Some(Duration::from_secs(150)));
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rates_round_up() {
        let t0 = Instant::now();
        let mut b = Bucket::new(7, 0.0, 0.0, t0);
        // 7 per minute: one token every 60/7 s = 8.571428572 s (rounded up to the nanosecond).
        assert_eq!(b.wait_for(1), Some(Duration::from_nanos(8_571_428_572)));
        b.advance(t0 + Duration::from_nanos(8_571_428_571));
        assert_eq!(b.remaining(), 0);
        b.advance(t0 + Duration::from_nanos(8_571_428_572));
        assert_eq!(b.remaining(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn other_clients_drain_the_refill() {
        let t0 = Instant::now();
        // 60 per minute, a quarter taken by others: 45 per minute net.
        let mut b = Bucket::new(60, 0.0, 0.25, t0);
        assert_eq!(b.wait_for(3), Some(Duration::from_secs(4)));
        b.advance(t0 + Duration::from_secs(60));
        assert_eq!(b.remaining(), 45);
        // The reset is what the refill the server knows (60 per minute) takes: 15 s.
        assert_eq!(b.until_full(), Some(Duration::from_secs(15)));
        b.set_limit(120);
        assert_eq!(b.wait_for(120), Some(Duration::from_secs(50)));
    }
}
