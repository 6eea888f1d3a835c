//! What the limiter shows of a key: [`KeySnapshot`] and [`BucketSnapshot`].

use super::*;

impl KeyCell {
    pub(super) fn snapshot(&self, now: Instant) -> KeySnapshot {
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
                    margin: st.margin[d.index()].get(b.capacity(), now),
                    others: st.others[d.index()].share(),
                })
            }),
            cooldown_until: st.cooldown_until.filter(|c| *c > now),
            in_flight: st.in_flight,
            queued: st.queue.len(),
            input_correction: st.input.mean(),
            input_reservation: st.input.high(),
            output_share: st.output.mean(),
            throttle_rate: st
                .throttle
                .as_ref()
                .filter(|t| !st.any_bucket() && !t.starting())
                .map(|t| t.rate(now)),
        }
    }
}

/// What the limiter knows about one key at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySnapshot {
    pub(super) key: RateLimitKey,
    pub(super) buckets: [Option<BucketSnapshot>; 4],
    pub(super) cooldown_until: Option<Instant>,
    pub(super) in_flight: usize,
    pub(super) queued: usize,
    pub(super) input_correction: f64,
    pub(super) input_reservation: f64,
    pub(super) output_share: f64,
    pub(super) throttle_rate: Option<f64>,
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

    /// The learned ratio of what the server charges for input to the raw estimate, its mean
    /// (1.0 until learned).
    pub fn input_correction(&self) -> f64 {
        self.input_correction
    }

    /// The factor a reservation applies to a raw input estimate: a high quantile of the learned
    /// ratio (its mean plus two standard deviations), so a reservation is rarely below what the
    /// server charges.
    pub fn input_reservation(&self) -> f64 {
        self.input_reservation
    }

    /// The request rate (per second) learned from throttles, for a key whose server sends no
    /// rate-limit headers; `None` before the first throttle or once limits are known.
    pub fn throttle_rate(&self) -> Option<f64> {
        self.throttle_rate
    }

    /// The learned share of `max_tokens` a request is taken to produce when its response
    /// carries no [`Usage`] (1.0 until learned).
    pub fn output_share(&self) -> f64 {
        self.output_share
    }
}

/// One bucket in a [`KeySnapshot`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSnapshot {
    pub(super) capacity: u64,
    pub(super) window: Duration,
    pub(super) level: u64,
    pub(super) full_at: Instant,
    pub(super) learned: Option<u64>,
    pub(super) configured: Option<u64>,
    pub(super) margin: u64,
    pub(super) others: f64,
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

    /// The units kept free because the server refused requests the limiter said would fit
    /// (0 until it does; decays while no refusal comes).
    pub fn margin(&self) -> u64 {
        self.margin
    }

    /// The share of the refill other clients of the organisation are taken to use, learned from
    /// the readings (0.0 until they show any).
    pub fn others_share(&self) -> f64 {
        self.others
    }
}
