//! A Redis-backed [`Store`] so that many processes share one budget.
//!
//! An organisation's limits are shared by every worker it runs; each process pacing alone sends
//! up to N times the limit. [`RedisStore`] keeps everything a key's limiter knows in one Redis
//! hash, `"{prefix}:{<key>}"`: the four buckets (requests, input, output, combined tokens), the
//! fleet's cooldown and margins, and the learned model of the server (its limits, how it counts
//! input and output, a throttle rate); a second hash, `"{prefix}:{<key>}:demand"`, holds each
//! process's demand. Both are updated only by one server-side Lua script, so every change is
//! atomic and every instant is Redis's own clock (`TIME`): host clocks do not matter. The hashes
//! expire three windows after their last settlement (`PEXPIRE`).
//!
//! The braces in the key names are a hash tag: both hashes of a key live in one slot, so the
//! script works on Redis Cluster and on Valkey as on a single Redis.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_limits::rate_limit::{Limits, RateLimitLayer, RateLimitState};
//! use tower_llm_limits::redis::{FailurePolicy, RedisStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("llm-limits:prod")
//!     .lease(Duration::from_millis(500))
//!     .timeout(Duration::from_millis(100))
//!     .on_failure(FailurePolicy::Local)
//!     .build()?;
//! let state = RateLimitState::builder()
//!     .limits(Limits::per_minute(50, 30_000, 8_000))
//!     .store(store.clone())
//!     .build();
//! let client = service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new()))
//! });
//! let service = RateLimitLayer::with_state(state).layer(client);
//! service.oneshot(http::Request::new(String::new())).await?;
//! println!("{} Redis round trips", store.stats().operations());
//! # Ok(())
//! # }
//! ```
//!
//! # Leases: round trips off the hot path
//!
//! The limiter calls its store synchronously, under a key's lock, for every admission: a round
//! trip there would serialise every request on Redis's latency. So each key of each process holds
//! a **lease** per dimension: units charged to the shared bucket ahead of use, spent locally. The
//! limiter sees a bucket whose level is the lease; a background task per key tops it up when it
//! falls under half of its size, pays back debts and returns what sits idle — one script call
//! settles all four dimensions of a key, and carries the fleet's state both ways.
//!
//! - **Lease size follows demand** ([`RedisStoreBuilder::lease`], default 500 ms). Every
//!   settlement reports this process's demand (its requests waiting or in flight); Redis keeps
//!   each process's last report for a few seconds. A process's lease is the refill of `lease` at
//!   the shared rate, times the number of processes with demand, times its share of the fleet's
//!   demand: equal demand, equal leases. A process that holds more than twice its lease gives
//!   the excess back at its next settlement. While the limiter's head waiter stays blocked with a
//!   full lease in hand (a request larger than a lease), the lease doubles, up to the capacity.
//! - **Fairness: each process's share of the budget is its share of the requests waiting or in
//!   flight across the fleet**, not who asks first or most often. While the shared bucket is
//!   below half full (the fleet wants more than the limit), each process has a *credit* in Redis
//!   that refills at its demand share times the shared rate and holds at most two leases of
//!   that rate; a grant is at most the credit, plus the process's demand share of what the
//!   shared level holds beyond every process's credit (a head start, budget a quiet process left).
//!   A new process's credit starts empty. As the shares add up to one, the credits together
//!   never exceed the shared level: a process finds its credit there whenever it asks, so
//!   asking first or more often gains nothing. A process whose grant came back short is told
//!   when its credit will hold a lease of its own rate, and asks again then (not later; it asks
//!   earlier only if something else is due). With the bucket above half full every process gets
//!   what it asks for.
//! - **Round trips follow activity.** A key tops up only below half its lease, so each round
//!   trip brings at least half a lease; a key in use also reads the fleet's state at least every
//!   [`RedisStoreBuilder::refresh`]; a key idle for two lease periods returns its lease and makes
//!   no round trip at all. A quiet fleet costs nothing; a busy one about two round trips per
//!   lease, and a saturated one (grants limited by credits) about one per lease per process: N
//!   processes at a shared rate R make about N ÷ (R × lease) round trips per request.
//! - **Leases expire with their process.** Budget is charged to Redis *before* it is spent, so
//!   processes never spend the same budget twice: the shared limit is not exceeded. A process
//!   that dies holds at most one lease (about `lease` of refill), which the shared bucket's
//!   refill makes good within that time: nothing it held is lost for longer, and its demand
//!   stops counting a few seconds after its last settlement.
//! - **Levels.** A response's readings bring the limiter's bucket in line with the server, and
//!   the store reads what changed: budget the server says is *lower* comes off the lease and, past
//!   zero, becomes a debt charged to the shared bucket, so every process learns it. Budget the
//!   server says is *higher* is not credited to the lease (the server counts every process's
//!   leases as free budget; crediting it would spend the others' share); only output reservations
//!   released to the true figure come back (at most what this process reserved in the last
//!   window). Refunds of requests and input tokens (a 429, a cancellation) stay spent.
//! - **The server's level raises the shared one.** Each reading also goes, with the next
//!   settlement, to Redis as the server's units used (the limiter's most pessimistic reading of it,
//!   this process's sends since taken off). Redis raises the shared level to it — outside the
//!   window after a restart below, never lowers it — less what the reading cannot count: what every
//!   process held, unspent, at the reading's instant, and what was charged to it since (both may
//!   reach the server later). A process's holding only falls between its settlements, so each
//!   settlement reports what the process held after the previous one, what it holds now and since
//!   when (its last spend), and Redis keeps a process's last four: its holding at the reading's
//!   instant is at most what it held after its last settlement before it, or, once it had fallen to
//!   what it held at the next one, that. The reading's instant is taken early: the request's
//!   dispatch less its round trip (what another process sent before it may still have been on its
//!   way), and the round trip to Redis. So a fleet whose server had budget before its first request
//!   (a head start, a quiet night) spends it instead of waiting a window for the shared bucket to
//!   refill, and a restarted Redis learns the level from its first answers (see the next point). A
//!   reading older than the settlements Redis keeps of some process is dropped, as is one older
//!   than half the time Redis keeps a demand or in the units of another limit (a configured ceiling
//!   below the server's). So is one older than a process's first report when what it held before is
//!   unknown: a process back from pacing alone (Redis unreachable) starts its reports over, and one
//!   Redis forgot (a restart) too. (Measured: four processes sharing 100 requests a second, with a
//!   head start of 1.2 s, spent 0.958–0.982 of the server's refill from its start, 0.979 in most
//!   runs; bounding each process's holding by its largest lease of the last seconds, 0.947–0.971.)
//! - **After a restart the server's level lowers the shared one.** For the time Redis keeps a
//!   demand after it began keeping a key again (a restart, an expiry), processes still pacing
//!   alone are in no report yet: the shared level can be above the server's and is never raised
//!   then. A reading instead **lowers** it, to the server's at the reading's most optimistic end
//!   (the server counted at least that). Nothing is added for what the processes hold: what
//!   each held is known from above only, and counting it kept the fleet 3 % below the server's
//!   refill over the outage run.

//! # What the fleet learns together
//!
//! - **Joining.** A key's first settlement happens as soon as the key opens, and the key's
//!   requests wait for it (at most twice the [`timeout`](RedisStoreBuilder::timeout)): one round
//!   trip brings the limits, a lease, the cooldown, the margins and the model, so a process
//!   started mid-run paces from its first request instead of probing the server.
//! - **Limits** known to one process (configured, or a new `*-limit` learned from a response)
//!   are published with its next settlement; newest wins.
//! - **Cooldowns.** A 429 (its `retry-after`, or the limiter's default cooldown) is sent at once
//!   and kept in Redis as the fleet's cooldown, extended by later ones: while it runs Redis
//!   grants no lease. Redis also **pushes** it: the script publishes a raised cooldown on the
//!   key's channel (`{prefix}:{<key>}:cooldown`, same hash tag), to which every store subscribes
//!   over a second connection (RESP3, Redis 6 or later, resubscribed after a reconnection), and
//!   every process's limiter honours it at its next decision — within milliseconds, without a
//!   round trip (measured: a process holding budget stopped within 100 ms of another's 429; it
//!   sent for 1.5 s more without the push). Where the subscription is refused (no RESP3) or lost,
//!   each process adopts the cooldown at its next round trip (within
//!   [`refresh`](RedisStoreBuilder::refresh), sooner when its lease runs low). A re-check
//!   answered in any process (see [`RECHECK_INTERVAL`](crate::rate_limit::RECHECK_INTERVAL))
//!   ends it in Redis; the others adopt the end with their next round trip, and their waiting
//!   requests go at their own next decision. The end is not pushed: a process's waiting
//!   requests sleep until the cooldown's end or their own re-check and would not look at news
//!   before, and since the raise is pushed, every process's re-check goes within milliseconds of
//!   the others'. A Redis restart forgets the cooldown, and the processes give it back: a
//!   settlement that finds the versions Redis keeps lower than it read before sends the cooldown
//!   its limiter still honours, the fleet's margins as it last read them and its model.
//! - **Margins: the fleet's answer to an unpredicted 429.** A refusal the model did not predict
//!   raises the limiter's margin (see [`Store::is_shared`]); the store sends it at once and Redis
//!   keeps that share of every shared bucket free for all processes, decaying as the limiter's
//!   margins do. Processes learn no share of "other clients": the fleet is what the shared
//!   buckets count. A margin raised while the process paced alone, or within the time Redis
//!   keeps a demand after it came back, is not sent: those refusals answer what the processes
//!   sent alone, not the shared model, and a margin kept free of a restarted, empty shared
//!   bucket held every process for its whole refill (measured: 15 s without a request after a
//!   restart, four processes sharing 20 requests a second).
//! - **The model** (limits, the input and output ratios, the output accounting once a response
//!   proved it, a throttle rate for a server without rate-limit headers) is published with each
//!   settlement once it changed; newest wins, and every process adopts another's at its next
//!   settlement (the output accounting only while it has no proof of its own: a process joining
//!   a fleet whose server counts output as produced does not start by reserving `max_tokens`).
//!   A throttle rate (a server without rate-limit headers) is kept as the fleet's: a process
//!   publishes the rate it reached divided by its share of the fleet's demand, and adopts the
//!   fleet's times its own share, so the processes together pace at the rate one learned for
//!   all.
//!
//! # When Redis is slow or down
//!
//! Every call is bounded by [`RedisStoreBuilder::timeout`] (default 200 ms). A failed or late
//! call marks the store degraded (a `warn` event, once per transition) and each key switches, at
//! its next settlement, to the [`FailurePolicy`]:
//!
//! - [`FailurePolicy::Local`] (default): each process paces alone with the last known limits,
//!   starting from the lease it held: requests keep flowing, the shared limit may be exceeded up
//!   to the number of processes (the limiter's learning from headers still corrects it);
//! - [`FailurePolicy::Closed`]: every request fails at once with the limiter's
//!   [`CostExceedsLimit`], limit 0, dimension
//!   requests ([`is_unavailable`] recognises it); it never waits for Redis.
//!
//! Settlements keep being retried (every [`RedisStoreBuilder::retry_every`], the connection
//! manager reconnecting underneath); the first success marks the store recovered (an `info`
//! event) and the keys share again. Nothing waits on Redis on the hot path: never a hang.
//!
//! A key Redis does not know (first use, expiry, a restart without persistence) starts
//! **empty** and refills at the limit's rate: the server's level is unknown, and after an outage
//! the processes pacing alone have usually emptied it (measured: starting from the processes'
//! local levels instead kept 10–20% of attempts answered 429 for seconds after a restart;
//! starting empty, none). Readings then lower it while processes may still be pacing alone, and
//! raise it after (see *Levels* above), so what the server really holds is not lost. (Measured,
//! `tests/redis.rs`: from two seconds after a restart, 0 of about 125 attempts refused in each of
//! 10 runs; without the lowering, one refusal in half of them.)
//!
//! # Why `redis` rather than `fred`
//!
//! `redis` (redis-rs) is the reference client: its `ConnectionManager` reconnects transparently,
//! `Script` handles `EVALSHA` with the `NOSCRIPT` fallback after a restart, and its tokio support
//! is a few features without a custom runtime layer. `fred` offers pools, cluster routing and
//! client-side caching, none of which this one-script, one-connection-per-process store needs,
//! for a larger dependency.

mod lease;
mod script;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::rate_limit::error::CostExceedsLimit;
use crate::rate_limit::{Buckets, RateLimitKey, Store};
use crate::signals::Dimension;

/// Default [`RedisStoreBuilder::lease`].
pub const DEFAULT_LEASE: Duration = Duration::from_millis(500);
/// Default [`RedisStoreBuilder::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// Default [`RedisStoreBuilder::refresh`].
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// Default [`RedisStoreBuilder::retry_every`].
pub const DEFAULT_RETRY_EVERY: Duration = Duration::from_millis(500);
/// Default [`RedisStoreBuilder::prefix`].
pub const DEFAULT_PREFIX: &str = "tower-llm-limits";

/// What the limiter does while Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Each process paces alone with the last known limits (default).
    #[default]
    Local,
    /// Every request fails at once (see [`is_unavailable`]).
    Closed,
}

/// Whether `error` is the limiter's refusal while a [`RedisStore`] with
/// [`FailurePolicy::Closed`] cannot reach Redis.
pub fn is_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<CostExceedsLimit>()
        .is_some_and(|e| e.limit() == 0 && e.dimension() == Dimension::Requests)
}

/// Figures of a [`RedisStore`] (shared by its clones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisStats {
    operations: u64,
    failures: u64,
    degraded: bool,
}

impl RedisStats {
    /// Round trips to Redis so far (script calls; the one subscription per key is not counted).
    pub fn operations(&self) -> u64 {
        self.operations
    }
    /// Calls that failed or timed out.
    pub fn failures(&self) -> u64 {
        self.failures
    }
    /// Whether the store is degraded now (its last call failed).
    pub fn degraded(&self) -> bool {
        self.degraded
    }
}

/// Builds a [`RedisStore`].
///
/// Its `Debug` output shows the Redis URL with the password replaced by `***` (in the userinfo,
/// `redis://user:***@host`, and in a `pass`/`password` query parameter), so a builder can be
/// logged.
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    lease: Duration,
    timeout: Duration,
    retry_every: Duration,
    refresh: Duration,
    policy: FailurePolicy,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .field("retry_every", &self.retry_every)
            .field("refresh", &self.refresh)
            .field("policy", &self.policy)
            .finish()
    }
}

/// `url` with its password replaced by `***`: the password of the userinfo
/// (`redis://user:secret@host` → `redis://user:***@host`) and the value of a `pass` or
/// `password` query parameter. A URL without `://` is not shown at all.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "<redacted>".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("pass")
                            || name.eq_ignore_ascii_case("password") =>
                    {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}{}{fragment}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

impl RedisStoreBuilder {
    /// The prefix of every key (default [`DEFAULT_PREFIX`]): one per organisation or environment.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease size, as time of refill (default [`DEFAULT_LEASE`]; at least 1 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// The bound on every Redis call (default [`DEFAULT_TIMEOUT`]; at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How often a degraded key tries Redis again (default [`DEFAULT_RETRY_EVERY`]).
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry_every = every.max(Duration::from_millis(1));
        self
    }

    /// How often a key in use reads the fleet's cooldown and margins when its lease needs no
    /// round trip (default [`DEFAULT_REFRESH`]; at least 1 ms). A cooldown set by another
    /// process is honoured at this key's next round trip: within this interval, or sooner when
    /// the lease runs low. Shorter: faster; more round trips per request.
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(1));
        self
    }

    /// What happens while Redis is unreachable (default [`FailurePolicy::Local`]).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The store. Connects lazily: an unreachable Redis is not an error here (the store starts
    /// degraded and recovers when Redis answers); only an invalid URL is. Call it inside a tokio
    /// runtime.
    pub fn build(self) -> Result<RedisStore, redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.retry_every);
        let conn = ConnectionManager::new_lazy_with_config(client, config.clone())?;
        // A second connection, RESP3, for the fleet's cooldowns pushed as they are raised (a
        // server without RESP3, before Redis 6, refuses the subscription: cooldowns then travel
        // with the settlements alone).
        let info = self.url.as_str().into_connection_info()?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let sub_client = redis::Client::open(info.set_redis_settings(resp3))?;
        let channels = lease::Channels::default();
        let pushed = channels.clone();
        let sub_config = config
            .set_push_sender(move |push: redis::PushInfo| {
                pushed.deliver(push);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        let subscriber = ConnectionManager::new_lazy_with_config(sub_client, sub_config)?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                id: format!("{:016x}", fastrand::u64(..)),
                conn,
                subscriber,
                channels,
                prefix: self.prefix,
                lease: self.lease,
                timeout: self.timeout,
                retry_every: self.retry_every,
                refresh: self.refresh,
                policy: self.policy,
                degraded: AtomicBool::new(false),
                ops: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        })
    }
}

/// A [`Store`] whose buckets live in Redis, shared by every process using the same prefix (see
/// the [module docs](self)). Clones share one connection and one set of figures.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// A builder for the Redis at `url` (e.g. `redis://127.0.0.1:6379/`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            lease: DEFAULT_LEASE,
            timeout: DEFAULT_TIMEOUT,
            retry_every: DEFAULT_RETRY_EVERY,
            refresh: DEFAULT_REFRESH,
            policy: FailurePolicy::default(),
        }
    }

    /// Round trips, failures and health so far.
    pub fn stats(&self) -> RedisStats {
        RedisStats {
            operations: self.inner.ops.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            degraded: self.inner.degraded.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("lease", &self.inner.lease)
            .field("timeout", &self.inner.timeout)
            .field("policy", &self.inner.policy)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Store for RedisStore {
    fn open(&self, key: &RateLimitKey) -> Box<dyn Buckets> {
        Box::new(lease::RedisBuckets::open(self.inner.clone(), key))
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// The Redis key of a limiter key's hash: `{prefix}:{<key>}` (see [`Inner::redis_keys`]).
pub(crate) fn redis_key(prefix: &str, key: &RateLimitKey) -> String {
    format!("{prefix}:{{{}}}", key.as_str())
}

pub(crate) struct Inner {
    /// This process's store, as the other processes see it in Redis.
    id: String,
    conn: ConnectionManager,
    /// The RESP3 connection subscribed to the keys' cooldown channels, and where its messages go.
    subscriber: ConnectionManager,
    channels: lease::Channels,
    prefix: String,
    lease: Duration,
    timeout: Duration,
    retry_every: Duration,
    refresh: Duration,
    policy: FailurePolicy,
    degraded: AtomicBool,
    ops: AtomicU64,
    failures: AtomicU64,
}

impl Inner {
    /// The key's hash and the hash of the processes' demands: `{prefix}:{<key>}` and
    /// `{prefix}:{<key>}:demand`. The braces are a hash tag: on Redis Cluster (and Valkey) both
    /// live in one slot, so the settlement script may touch both.
    fn redis_keys(&self, key: &RateLimitKey) -> [String; 2] {
        let main = redis_key(&self.prefix, key);
        let demand = format!("{main}:demand");
        [main, demand]
    }

    /// The channel on which the settlement script publishes a key's raised cooldown (same hash
    /// tag as the key: `{prefix}:{<key>}:cooldown`).
    fn cooldown_channel(main: &str) -> String {
        format!("{main}:cooldown")
    }

    fn healthy(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(prefix = %self.prefix, "redis store: recovered, sharing the budget again");
        }
    }

    fn unhealthy(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(prefix = %self.prefix, reason, policy = ?self.policy,
                "redis store: Redis unreachable, degraded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis://default:hunter2@cache.internal:6379/0",
                "redis://default:***@cache.internal:6379/0",
            ),
            ("redis://:hunter2@cache:6379", "redis://:***@cache:6379"),
            ("rediss://u:p%40ss:w@host/", "rediss://u:***@host/"),
            ("redis://user@host/", "redis://user@host/"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter2#x",
                "redis+unix:///run/redis.sock?db=1&pass=***#x",
            ),
            (
                "unix:///s.sock?password=hunter2",
                "unix:///s.sock?password=***",
            ),
            ("hunter2@host", "<redacted>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
