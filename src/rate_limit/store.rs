//! The boundary between the limiter's logic and where bucket state lives.

use std::fmt;

use crate::signals::Dimension;

use super::{Bucket, RateLimitKey};

/// Where the buckets of each key live.
///
/// The limiter keeps its queue of waiters, its in-flight accounting and its learning in the
/// process; only the four [`Bucket`]s of each key go through a store. [`MemoryStore`] (the
/// default) keeps them in memory. The limiter calls [`Buckets`] with the key's lock held, on the
/// hot path, so a store's methods are synchronous and must not block.
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
    /// budget twice) and keeps no margin after a refusal (what [`Buckets::get`] shows is this
    /// process's lease, not the server's level; a margin of the server's bucket would never fit
    /// in it).
    fn is_shared(&self) -> bool {
        false
    }
}

/// The buckets of one key, one per [`Dimension`]; `None` when the dimension's capacity is unknown
/// (it is then not limited).
pub trait Buckets: Send + fmt::Debug {
    /// The bucket of `dimension`.
    fn get(&self, dimension: Dimension) -> Option<Bucket>;
    /// Replaces the bucket of `dimension`.
    fn set(&mut self, dimension: Dimension, bucket: Option<Bucket>);
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
