//! The boundary between the limiter's logic and where bucket state lives.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::signals::Dimension;

use super::{Bucket, RateLimitKey};

/// Where what the limiter knows of each key lives.
///
/// The limiter keeps its queue of waiters and its in-flight accounting in the process. What it
/// knows of the server goes through a store: the four [`Bucket`]s of each key (limits and
/// levels), and what it learned besides ([`Learned`]: the server's limits, the cooldown, how the
/// server counts, margins, a throttle rate). The limiter keeps a working copy of the model under
/// the key's lock, publishes it after every answer ([`Buckets::set_learned`]) and adopts what the
/// store brings from elsewhere ([`Buckets::learned`]) before every decision. [`MemoryStore`] (the
/// default) keeps the buckets in memory and has nothing to bring: the working copy is the model.
/// The limiter calls [`Buckets`] with the key's lock held, on the hot path, so a store's methods
/// are synchronous and must not block.
///
/// # What a remote store must provide
///
/// A store shared by several processes (Redis) cannot make a round trip under that lock.
/// It should instead **lease** budget: hand each process a local [`Bucket`] and settle with the
/// shared one in the background — charge the remote bucket in batches ahead of use (a lease of,
/// say, a few seconds of refill), return what is unused when the lease ends, and fold the
/// server's readings (which [`set`](Buckets::set) delivers) into the shared state so every
/// process learns them. The arithmetic of [`Bucket`] (GCRA, `full_at` only) makes the shared
/// state one timestamp per key and dimension, updated atomically with a compare-and-set or a
/// script.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The buckets of a key the limiter sees for the first time (or again after evicting it).
    fn open(&self, key: &RateLimitKey) -> Box<dyn Buckets>;

    /// Whether the buckets are shared with other processes (default `false`). The limiter then
    /// learns no share of "other clients" from the readings (the other processes of the fleet
    /// are what the shared buckets already count: charging them again would spend the fleet's
    /// budget twice) and applies no margin to the buckets it sees (what [`Buckets::get`] shows
    /// is this process's lease, not the server's level: a margin of the server's bucket would
    /// never fit in it). It still raises its margins after a refusal and publishes them
    /// ([`Learned::margins`]): a shared store keeps them free in the shared bucket, for the
    /// whole fleet.
    fn is_shared(&self) -> bool {
        false
    }
}

/// The buckets of one key, one per [`Dimension`]; `None` when the dimension's capacity is unknown
/// (it is then not limited). Also carries the key's [`Learned`] model both ways.
pub trait Buckets: Send + fmt::Debug {
    /// The bucket of `dimension`.
    fn get(&self, dimension: Dimension) -> Option<Bucket>;
    /// Replaces the bucket of `dimension`.
    fn set(&mut self, dimension: Dimension, bucket: Option<Bucket>);

    /// What the limiter learned of the key, after an answer taught it something. A shared store
    /// shares it with the other processes (default: kept nowhere, the limiter's own copy is the
    /// model).
    fn set_learned(&mut self, learned: &Learned) {
        let _ = learned;
    }

    /// What other processes taught since the last call, if anything (default `None`). The
    /// limiter adopts it: limits, the cooldown, margins and how the server counts.
    fn learned(&mut self) -> Option<Learned> {
        None
    }

    /// While the store is still reading the key's shared state (a process joining a fleet),
    /// the instant to look again: no request of the key is admitted before the store knows
    /// what the fleet knows (default `None`, nothing to read). A store must bound this (by its
    /// timeout): a store that cannot read says `None` and the limiter goes on with what it
    /// knows.
    fn loading(&self, now: Instant) -> Option<Instant> {
        let _ = now;
        None
    }

    /// When the store expects to have topped up the buckets it shows (a shared store's lease,
    /// settled in the background): a wait for budget ends no later than then, to look again
    /// (default `None`: the buckets change only through the limiter).
    fn refill_at(&self, now: Instant) -> Option<Instant> {
        let _ = now;
        None
    }

    /// What a server's reading says of `dimension` (see [`ServerReading`]). A shared store may
    /// raise the shared level to its most pessimistic end, less what the fleet held and the
    /// reading cannot count, or lower it to its most optimistic end (default: ignored; the
    /// limiter corrects its own buckets with the reading either way).
    fn server_reading(&mut self, dimension: Dimension, reading: ServerReading) {
        let _ = (dimension, reading);
    }

    /// This process's demand on the key: requests waiting or in flight. A shared store divides
    /// the budget between processes by it (default: ignored).
    fn demand(&mut self, requests: usize) {
        let _ = requests;
    }
}

/// What a server's reading says of one of its buckets, for [`Buckets::server_reading`]: the
/// server's own bucket (its limit and window) with what this process sent since taken off, at
/// both ends of what the reading allows (its values are rounded and its instant is unknown:
/// computed at admission or when the answer was sent).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ServerReading {
    /// At its most pessimistic: the latest instant the bucket is full again that the reading
    /// allows (the most the server may have used).
    pub most_used: Bucket,
    /// At its most optimistic: the earliest such instant (the server has used at least this).
    pub least_used: Bucket,
    /// When the request the reading answers was dispatched (the reading was taken between then
    /// and now).
    pub sent: Instant,
}

/// What a key's limiter learned besides its buckets' levels, as of one instant: the model a
/// shared store keeps for a fleet, so that a process joining paces from its first request and a
/// refusal one process meets makes every process more careful.
#[derive(Clone, Debug, PartialEq)]
pub struct Learned {
    /// Per dimension ([`Dimension::ALL`] order), the limit the server last reported and its
    /// window.
    pub limits: [Option<(u64, Duration)>; 4],
    /// When the key may send again after a refusal, if a cooldown is running.
    pub cooldown_until: Option<Instant>,
    /// Per dimension, the share of the capacity kept free since the server refused what the
    /// model admitted (0.0 to 0.5; it decays with a time constant of five minutes).
    pub margins: [f64; 4],
    /// What the server charges for input ÷ the raw estimate (`None` before any evidence).
    pub input: Option<Estimate>,
    /// The share of its reservation (`max_tokens`) a request produces (`None` before any
    /// evidence).
    pub output: Option<Estimate>,
    /// For a key whose server sends no rate-limit headers, the request rate per second learned
    /// from its throttles.
    pub throttle_rate: Option<f64>,
    /// How the server charges output, once a response proved it (see
    /// [`KeySnapshot::output_counted_as_produced`](crate::rate_limit::KeySnapshot::output_counted_as_produced)):
    /// `Some(true)` counted as produced, `Some(false)` `max_tokens` reserved at admission,
    /// `None` no proof yet.
    pub output_counted_as_produced: Option<bool>,
}

/// A learned ratio with its spread (in log space, so "twice too high" and "half too low" weigh
/// the same), see [`Learned`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Mean of the natural logarithm of the ratio.
    pub log_mean: f64,
    /// Variance of the natural logarithm of the ratio.
    pub log_var: f64,
    /// Samples folded in so far.
    pub samples: u32,
}

/// The in-memory [`Store`]: each key's buckets in a small array guarded by the key's lock.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStore {
    _priv: (),
}

impl MemoryStore {
    /// A memory store.
    pub const fn new() -> Self {
        MemoryStore { _priv: () }
    }
}

impl Store for MemoryStore {
    fn open(&self, _key: &RateLimitKey) -> Box<dyn Buckets> {
        Box::new(MemoryBuckets([None; 4]))
    }
}

#[derive(Debug)]
struct MemoryBuckets([Option<Bucket>; 4]);

impl Buckets for MemoryBuckets {
    fn get(&self, dimension: Dimension) -> Option<Bucket> {
        self.0[dimension.index()]
    }

    fn set(&mut self, dimension: Dimension, bucket: Option<Bucket>) {
        self.0[dimension.index()] = bucket;
    }
}
