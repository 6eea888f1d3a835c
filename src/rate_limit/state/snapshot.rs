//! What the limiter shows of a key: [`KeySnapshot`] and [`BucketSnapshot`], the one public
//! picture of a key that [`RateLimitState::snapshot`] returns and
//! [`status::Snapshot`](crate::status::Snapshot) lists, prints and serves as JSON.

use super::*;

impl KeyCell {
    pub(super) fn snapshot(&self, now: Instant) -> KeySnapshot {
        let st = lock(&self.state);
        KeySnapshot {
            key: self.key.clone(),
            taken_at: now,
            buckets: Dimension::ALL.map(|d| {
                st.buckets.get(d).map(|b| BucketSnapshot {
                    dimension: d,
                    capacity: b.capacity(),
                    window: b.window(),
                    level: b.level(now),
                    full_at: b.full_at(),
                    full_in: b.full_at().saturating_duration_since(now),
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
            output_counted_as_produced: st.accounting.counting.as_produced(),
            throttle_rate: st
                .throttle
                .as_ref()
                .filter(|t| !st.any_bucket() && !t.starting())
                .map(|t| t.rate(now)),
        }
    }
}

/// What the limiter knows about one key at one instant: its buckets, cooldown, requests in
/// flight and waiting, and what it has learned of the server's charges.
///
/// Instants are on tokio's clock; the durations ([`cooldown`](Self::cooldown),
/// [`BucketSnapshot::full_in`]) count from the moment the snapshot was taken
/// ([`taken_at`](Self::taken_at)), so a snapshot can be printed or served as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySnapshot {
    pub(super) key: RateLimitKey,
    pub(super) taken_at: Instant,
    pub(super) buckets: [Option<BucketSnapshot>; 4],
    pub(super) cooldown_until: Option<Instant>,
    pub(super) in_flight: usize,
    pub(super) queued: usize,
    pub(super) input_correction: f64,
    pub(super) input_reservation: f64,
    pub(super) output_share: f64,
    pub(super) output_counted_as_produced: Option<bool>,
    pub(super) throttle_rate: Option<f64>,
}

impl KeySnapshot {
    /// The key.
    pub fn key(&self) -> &RateLimitKey {
        &self.key
    }

    /// When the snapshot was taken (tokio's clock).
    pub fn taken_at(&self) -> Instant {
        self.taken_at
    }

    /// The bucket of `dimension`, when its capacity is known (configured or learned).
    pub fn bucket(&self, dimension: Dimension) -> Option<&BucketSnapshot> {
        self.buckets[dimension.index()].as_ref()
    }

    /// The buckets whose capacity is known, in [`Dimension::ALL`] order.
    pub fn buckets(&self) -> impl Iterator<Item = &BucketSnapshot> + '_ {
        self.buckets.iter().flatten()
    }

    /// When the current cooldown (after a 429, or a fixed window spent) ends, if one is
    /// running.
    pub fn cooldown_until(&self) -> Option<Instant> {
        self.cooldown_until
    }

    /// How long the current cooldown still runs from [`taken_at`](Self::taken_at), if one is
    /// running.
    pub fn cooldown(&self) -> Option<Duration> {
        self.cooldown_until
            .map(|c| c.saturating_duration_since(self.taken_at))
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

    /// What the key learned of how its server charges output: `Some(true)` counted as
    /// produced (requests in flight reserve the share of `max_tokens` answers use),
    /// `Some(false)` `max_tokens` reserved at admission, `None` not known yet (`max_tokens` is
    /// reserved, at most the whole bucket). See the rate limiter's "Output accounting" docs.
    pub fn output_counted_as_produced(&self) -> Option<bool> {
        self.output_counted_as_produced
    }
}

/// One bucket (requests, input tokens, …) in a [`KeySnapshot`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSnapshot {
    pub(super) dimension: Dimension,
    pub(super) capacity: u64,
    pub(super) window: Duration,
    pub(super) level: u64,
    pub(super) full_at: Instant,
    pub(super) full_in: Duration,
    pub(super) learned: Option<u64>,
    pub(super) configured: Option<u64>,
    pub(super) margin: u64,
    pub(super) others: f64,
}

impl BucketSnapshot {
    /// The dimension.
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// The capacity in effect: the lower of the [configured](Self::configured) and the
    /// [learned](Self::learned) limit.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The window the capacity replenishes over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The units available now: the limiter's estimate of what the server would accept.
    pub fn level(&self) -> u64 {
        self.level
    }

    /// When the bucket is full again.
    pub fn full_at(&self) -> Instant {
        self.full_at
    }

    /// How long until the bucket is full again, from the moment the snapshot was taken.
    pub fn full_in(&self) -> Duration {
        self.full_in
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
