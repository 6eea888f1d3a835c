//! A fleet of real OS processes sharing one organisation's limit through Redis: this binary
//! started N times (`--worker`), each process 8 callers through its own limiter and its own
//! [`RedisStore`] connection, against one loopback simulated API and one `redis-server` that this
//! binary starts (it must be installed). Runs 4 and 16 processes, 4 with Redis killed and
//! restarted mid-run, and 4 of which the last starts halfway through the run (`fleet-4-join`).
//!
//! ```sh
//! cargo run --release --features redis,reqwest --example fleet             # the figures
//! cargo run --release --features redis,reqwest --example fleet -- --check  # exit 1 on a miss
//! cargo run --release --features redis,reqwest --example fleet -- --check failed,429
//! cargo run --release --features redis,reqwest --example fleet -- --only fleet-16
//! ```
//!
//! One `fleet scenario=…` line per run: goodput against T* (the limit's refill over the run:
//! the simulated server starts empty), the share of attempts answered 429, failed calls (given
//! up after 20 attempts or an error), Redis round trips per successful request, the largest
//! deviation of a process's admitted share from its demand share (every process runs 8 callers:
//! its demand share is 1/N), and the 99th percentile of a call's time (waits and retries
//! included). `--check` holds every run to: 0 failed calls, < 1 % of attempts 429, ≥ 0.95 of
//! T*, ≤ 0.2 Redis round trips per request and shares within ±20 % of demand (the outage run:
//! 0 failed calls only, since processes pace alone while Redis is down), and the process that
//! joins mid-run to no request refused (`join`; its share is not checked, it ran half the time);
//! `--check failed,429` only the targets named. T* counts the server's refill from its start (empty) to the end of
//! the run, the seconds the workers take to start included.

#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_llm_limits::rate_limit::{Limits, RateLimitLayer, RateLimitState};
use tower_llm_limits::redis::RedisStore;
use tower_llm_limits::reqwest::ReqwestService;
use tower_llm_limits_sim::{self as sim, SimApi, message_body};

const MODEL: &str = "claude-sonnet-4-5";
/// The organisation's limit: 100 requests per second (tokens do not bind).
const RPM: u64 = 6_000;
const CALLERS: usize = 8;
const RUN: Duration = Duration::from_secs(20);
/// Leases of a second of refill, the fleet's state read every two seconds at least.
const LEASE: Duration = Duration::from_secs(1);
const REFRESH: Duration = Duration::from_secs(2);

fn limits() -> Limits {
    Limits::per_minute(RPM, 1_000_000_000, 1_000_000_000)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--worker") {
        worker(&args).await;
        return;
    }
    // `--check` holds every target; `--check failed,429` only those named (targets: failed,
    // 429, goodput, ops, share, join).
    let check: Option<Vec<String>> = args.iter().position(|a| a == "--check").map(|i| {
        match args.get(i + 1).filter(|a| !a.starts_with("--")) {
            Some(list) => list.split(',').map(str::to_owned).collect(),
            None => ["failed", "429", "goodput", "ops", "share", "join"]
                .map(str::to_owned)
                .to_vec(),
        }
    });
    // `--only fleet-16`: the runs named (comma-separated) alone.
    let only: Option<Vec<String>> =
        arg(&args, "--only").map(|list| list.split(',').map(str::to_owned).collect());
    let Some(mut redis) = redis_server::RedisServer::start() else {
        std::process::exit(1);
    };
    let mut missed = Vec::new();
    // `join`: the last process starts halfway through the run (its callers run the second
    // half), and must have no request refused: it paces on what the fleet knows from its first.
    for (name, processes, outage, join) in [
        ("fleet-4", 4, false, false),
        ("fleet-16", 16, false, false),
        ("fleet-4-outage", 4, true, false),
        ("fleet-4-join", 4, false, true),
    ] {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let api = SimApi::builder()
            .model(
                MODEL,
                sim::Limits::per_minute(RPM, 1_000_000_000, 1_000_000_000),
            )
            .starting_fill(0.0)
            .latency(Duration::from_millis(30), Duration::ZERO)
            .seed(7)
            .build();
        let server = sim::serve(api.clone()).await.expect("sim serves");
        let sim_started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        let exe = std::env::current_exe().expect("this binary");
        // Every worker starts its run at one instant, once all are up: a share measures the
        // limiter, not the order in which the processes started.
        let start_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            + Duration::from_millis(300 * processes as u64);
        let children: Vec<_> = (0..processes)
            .map(|i| {
                let late = join && i + 1 == processes;
                let (starts, runs) = if late {
                    (start_at + RUN / 2, RUN - RUN / 2)
                } else {
                    (start_at, RUN)
                };
                Command::new(&exe)
                    .args(["--worker", "--sim", &server.base_uri(), "--redis"])
                    .arg(redis.url())
                    .args(["--prefix", name, "--id", &i.to_string()])
                    .args(["--start-at", &starts.as_millis().to_string()])
                    .args(["--run-ms", &runs.as_millis().to_string()])
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("a worker starts")
            })
            .collect();
        let until_start = start_at.saturating_sub(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock"),
        );
        if outage {
            tokio::time::sleep(until_start + RUN / 3).await;
            redis.kill();
            tokio::time::sleep(RUN / 4).await;
            redis.restart();
        }
        let outputs: Vec<String> = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|c| {
                    let out = c.wait_with_output().expect("a worker ends");
                    String::from_utf8_lossy(&out.stdout).into_owned()
                })
                .collect()
        })
        .await
        .expect("workers");
        server.shutdown().await;
        let workers: Vec<Figures> = outputs.iter().filter_map(|o| Figures::parse(o)).collect();
        if workers.len() != processes {
            println!(
                "fleet scenario={name}: {} of {processes} workers reported",
                workers.len()
            );
            missed.push(("failed".to_owned(), format!("{name}: workers")));
            continue;
        }
        let ok: u64 = workers.iter().map(|w| w.ok).sum();
        let failed: u64 = workers.iter().map(|w| w.failed).sum();
        let attempts: u64 = workers.iter().map(|w| w.attempts).sum();
        let r429: u64 = workers.iter().map(|w| w.r429).sum();
        let ops: u64 = workers.iter().map(|w| w.ops).sum();
        // The server refilled from its start (empty) to the end of the run.
        let t_star = RPM as f64 / 60.0 * (RUN + start_at.saturating_sub(sim_started)).as_secs_f64();
        let ratio = ok as f64 / t_star;
        // The same against the refill of the run alone (the head start not counted).
        let run_ratio = ok as f64 / (RPM as f64 / 60.0 * RUN.as_secs_f64());
        let share429 = r429 as f64 / attempts.max(1) as f64;
        let per_request = ops as f64 / ok.max(1) as f64;
        let deviation = workers
            .iter()
            .map(|w| (w.ok as f64 / ok.max(1) as f64 * processes as f64 - 1.0).abs())
            .fold(0.0, f64::max);
        let p99 = workers.iter().map(|w| w.p99_ms).max().unwrap_or(0);
        // The process that joined halfway (the last one), in a `join` run.
        let joined = workers.last().filter(|_| join);
        if let Some(j) = joined {
            println!(
                "fleet scenario={name} joined: ok={} failed={} attempts={} r429={}",
                j.ok, j.failed, j.attempts, j.r429
            );
        }
        println!(
            "fleet scenario={name} processes={processes} callers={CALLERS} ok={ok} failed={failed} \
             attempts={attempts} r429={r429} ({:.2} %) ratio={ratio:.3} run_ratio={run_ratio:.3} redis_ops_per_request={per_request:.3} \
             share_deviation={:.1} % p99_wait_ms={p99}",
            100.0 * share429,
            100.0 * deviation
        );
        let mut miss = |target: &str, what: &str, bad: bool| {
            if bad {
                missed.push((target.to_owned(), format!("{name}: {what}")));
            }
        };
        miss("failed", "failed calls", failed > 0);
        if !outage {
            miss("429", "429 share >= 1 %", share429 >= 0.01);
            miss("goodput", "goodput < 0.95 of T*", ratio < 0.95);
            miss(
                "ops",
                "Redis round trips per request > 0.2",
                per_request > 0.2,
            );
            if !join {
                miss("share", "a share beyond ±20 % of demand", deviation > 0.2);
            }
        }
        if let Some(j) = joined {
            miss(
                "join",
                "the process that joined mid-run had a request refused",
                j.r429 > 0 || j.failed > 0,
            );
        }
    }
    drop(redis);
    if missed.is_empty() {
        println!("fleet check: every target met");
        return;
    }
    let all: Vec<&str> = missed.iter().map(|(_, m)| m.as_str()).collect();
    println!("fleet check: missed: {}", all.join("; "));
    if let Some(targets) = check
        && missed.iter().any(|(t, _)| targets.contains(t))
    {
        println!(
            "fleet check: a checked target ({}) was missed",
            targets.join(",")
        );
        std::process::exit(1);
    }
}

/// What one worker reports (one line on its stdout).
#[derive(Debug, Default)]
struct Figures {
    ok: u64,
    failed: u64,
    attempts: u64,
    r429: u64,
    ops: u64,
    p99_ms: u64,
}

impl Figures {
    fn parse(out: &str) -> Option<Self> {
        let line = out.lines().find(|l| l.starts_with("worker "))?;
        let mut f = Figures::default();
        for pair in line.split_whitespace().skip(1) {
            let (k, v) = pair.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "ok" => f.ok = v,
                "failed" => f.failed = v,
                "attempts" => f.attempts = v,
                "r429" => f.r429 = v,
                "ops" => f.ops = v,
                "p99_ms" => f.p99_ms = v,
                _ => {}
            }
        }
        Some(f)
    }
}

/// One process of the fleet: `CALLERS` callers for `RUN`, a 429 retried up to 20 attempts.
async fn worker(args: &[String]) {
    let sim = arg(args, "--sim").expect("--sim");
    let url = arg(args, "--redis").expect("--redis");
    let prefix = arg(args, "--prefix").expect("--prefix");
    let store = RedisStore::builder(url)
        .prefix(prefix)
        .lease(LEASE)
        .refresh(REFRESH)
        .build()
        .expect("valid URL");
    let state = RateLimitState::builder()
        .limits(limits())
        .store(store.clone())
        .build();
    let service =
        RateLimitLayer::with_state(state).layer(ReqwestService::new(reqwest::Client::new()));
    let start_at: u64 = arg(args, "--start-at")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(start_at.saturating_sub(now_ms))).await;
    let figures = Arc::new(Mutex::new((Figures::default(), Vec::new())));
    let run = arg(args, "--run-ms")
        .and_then(|s| s.parse().ok())
        .map_or(RUN, Duration::from_millis);
    let deadline = Instant::now() + run;
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let service = service.clone();
        let figures = figures.clone();
        let uri = format!("{sim}/v1/messages");
        callers.spawn(async move {
            while Instant::now() < deadline {
                let start = Instant::now();
                let mut done = false;
                for _ in 0..20 {
                    let request = http::Request::post(uri.as_str())
                        .header("content-type", "application/json")
                        .body(Full::new(message_body(MODEL, 100, 50, 20)))
                        .expect("request");
                    let status = service
                        .clone()
                        .oneshot(request)
                        .await
                        .ok()
                        .map(|r| r.status());
                    let mut f = figures.lock().unwrap();
                    f.0.attempts += 1;
                    if status == Some(http::StatusCode::TOO_MANY_REQUESTS) {
                        f.0.r429 += 1;
                        continue;
                    }
                    if status.is_some_and(|s| s.is_success()) {
                        f.0.ok += 1;
                        f.1.push(start.elapsed().as_millis() as u64);
                        done = true;
                    }
                    break;
                }
                if !done {
                    figures.lock().unwrap().0.failed += 1;
                }
            }
        });
    }
    while callers.join_next().await.is_some() {}
    let (mut f, mut waits) = std::mem::take(&mut *figures.lock().unwrap());
    waits.sort_unstable();
    f.p99_ms = waits
        .get((waits.len() * 99 / 100).min(waits.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    f.ops = store.stats().operations();
    println!(
        "worker ok={} failed={} attempts={} r429={} ops={} p99_ms={}",
        f.ok, f.failed, f.attempts, f.r429, f.ops, f.p99_ms
    );
}
