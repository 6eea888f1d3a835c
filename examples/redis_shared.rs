//! Four independent limiter instances (each its own layer, state and Redis connection) drive one
//! simulated limit through one shared budget, beside the same run with per-process local
//! limiters. Starts its own `redis-server` (it must be installed).
//!
//! `cargo run --release --example redis_shared --features redis`

#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod support;

#[cfg(not(feature = "redis"))]
fn main() {
    eprintln!("run with `--features redis`");
}

#[cfg(feature = "redis")]
#[tokio::main]
async fn main() {
    use std::time::Duration;

    use support::RedisServer;
    use support::drive;
    use tower_llm_limits::rate_limit::{Limits, RateLimitState};
    use tower_llm_limits::redis::RedisStore;

    const RPM: u64 = 1_200;
    const INSTANCES: usize = 4;
    const CONCURRENCY: usize = 8;
    let duration = Duration::from_secs(15);
    let limits =
        || RateLimitState::builder().limits(Limits::per_minute(RPM, 10_000_000, 10_000_000));

    let Some(server) = RedisServer::start() else {
        std::process::exit(1);
    };
    println!(
        "{INSTANCES} instances x {CONCURRENCY} callers, one simulated limit of {RPM} RPM ({:.0}/s), {} s per run",
        RPM as f64 / 60.0,
        duration.as_secs()
    );
    println!();
    println!(
        "| limiters | lease | goodput (req/s) | of the limit | attempts | 429 share | Redis ops/request |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str, lease: &str, run: &drive::Run, ops: Option<u64>| {
        println!(
            "| {name} | {lease} | {:.1} | {:.0}% | {} | {:.1}% | {} |",
            run.goodput(),
            100.0 * run.goodput() / (RPM as f64 / 60.0),
            run.attempts.len(),
            100.0 * run.share_429(),
            ops.map_or("—".to_owned(), |o| format!(
                "{:.3}",
                o as f64 / run.ok().max(1) as f64
            )),
        );
    };

    let api = drive::api(RPM);
    let states = (0..INSTANCES).map(|_| limits().build()).collect();
    let local = drive::run(&api, states, CONCURRENCY, duration).await;
    row("local, per process", "—", &local, None);

    for (i, lease_ms) in [100u64, 250, 500, 1_000, 2_000].into_iter().enumerate() {
        let api = drive::api(RPM);
        let stores: Vec<RedisStore> = (0..INSTANCES)
            .map(|_| {
                RedisStore::builder(server.url())
                    .prefix(format!("example-{i}"))
                    .lease(Duration::from_millis(lease_ms))
                    .build()
                    .expect("valid URL")
            })
            .collect();
        let states = stores
            .iter()
            .map(|s| limits().store(s.clone()).build())
            .collect();
        let run = drive::run(&api, states, CONCURRENCY, duration).await;
        let ops = stores.iter().map(|s| s.stats().operations()).sum();
        row("shared, Redis", &format!("{lease_ms} ms"), &run, Some(ops));
    }
}
