//! Goodput against the simulated Claude API: the same workloads sent through the stacks a Rust
//! user would pick, on tokio's paused clock (minutes of traffic in seconds).
//!
//! ```text
//! cargo run --release --example goodput                          # every scenario and strategy
//! cargo run --release --example goodput -- --scenario overload   # one scenario
//! cargo run --release --example goodput -- --strategy ours       # one strategy
//! cargo run --release --example goodput -- --check                # exit 1 if `ours` misses a target
//! cargo run --release --example goodput -- --sweep --check        # the robustness sweep only
//! cargo run --release --example goodput -- --sweep --streams --check  # the sweep with streams
//! cargo run --release --example goodput -- --sweep --seed 3       # servers drawn from another seed
//! cargo run --release --example goodput -- --sweep --check-failed # its failed-call target only
//! cargo run --release --example goodput -- --all --check          # the scenarios, then the sweep
//! ```
//!
//! Scenarios: `steady` (32 callers against limits they exceed about 14 times over), `overload`
//! (the same with 30 s of 529s), `multi-model` (three models with separate limits), `limit-change`
//! (every limit doubles at t = 60 s, a tier upgrade) and `skew` (the server's clock 90 s ahead).
//! Strategies: `bare`, `sdk-retry`, `tower`, `tower-resilience`, `ours` (see BENCHMARKS.md for
//! how each is configured and why).
//!
//! `--check` compares `ours` with the goodput targets of BENCHMARKS.md in every scenario run: no
//! failed call, 429s under 1% of attempts, within 3% of T*, and ahead of every other strategy
//! run (a higher `T*/T` than each peer that completed everything, more completed calls than each
//! peer that did not). It prints each miss and exits with status 1; CI runs it. The runs are on
//! virtual time and seeded, so the check does not depend on the machine's speed or load.
//!
//! The sweep (`--sweep`, or `--all` after the scenarios; `--jobs N` runs N points at a time, the
//! figures do not depend on it): 64 seeded server behaviours with rate-limit headers and 8
//! header-less (Bedrock-style) ones, drawn across every option of the simulated API (headers
//! computed at admission or at answer, separate or combined token buckets, input counted like
//! the estimator, by whole-body bytes or at varying density, outputs 10–100 % of `max_tokens`,
//! other clients using 0–30 % of every bucket, limits of several tiers, latency, 0–3 % of 529s,
//! 8–64 callers, 200–600 requests), each run with `ours` only. One `goodput scenario=sweep-NN`
//! line per point (its parameters after `params=`), then per group the misses, the worst cases
//! and the median. `--check` holds every point with headers to 0 failed calls, under 1 % of
//! attempts answered 429 and T*/T ≥ 0.95, their median to ≥ 0.97, and every header-less point
//! to 0 failed calls, under 5 % throttled and T*/T ≥ 0.85; `--min-ratio R` replaces the 0.95.
//! T* counts what the server charges (its input counting, its combined bucket, the budget other
//! clients leave). `--seed N` draws the sweep's servers from another seed (0, the default, is
//! the sweep CI checks): servers the limiter was not built against.
//!
//! Streams in the sweep: `--streams` makes each point draw its streaming mix from a seed of its
//! own (0–60 % of its requests stream; 0–5 % of those the server breaks after 1–8 events, in
//! equal parts an in-stream `overloaded_error`, a dropped connection and a stall), `--stream-share
//! S` gives every point that share (with the same breaks); without either, nothing streams. A
//! stream broken after the caller had part of it ends in `StreamInterrupted` and is not re-sent:
//! the server broke the call, so it counts as `broken=` (at the end of the line), not `failed=`,
//! and T ends with the last call that was not broken (a stalled stream ends at the 120 s idle
//! bound, not at the client's pace).
//!
//! Give-up rules, the same for all: a call ends when its strategy returns (a response, 429s and
//! 529s included, or an error); a call is `ok` only when it ends with a 2xx. Every strategy runs
//! behind a 10-minute deadline per call (the official SDKs' default timeout); none of the
//! scenarios needs a call to wait that long when the limits are used well.

#[allow(dead_code)] // shared with benches/overhead.rs
#[path = "goodput/ours.rs"]
mod ours;
#[allow(dead_code)] // shared with benches/overhead.rs
#[path = "goodput/peers.rs"]
mod peers;
#[path = "goodput/sweep.rs"]
mod sweep;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::timeout::Timeout;
use tower::{Service, ServiceExt};
use tower_llm_limits_sim::{
    CallRecord, Fault, Faults, HeaderDialect, HeaderTiming, InputCounting, Limits,
    OutputAccounting, Report, SimApi, Workload,
};

use peers::{BoxError, BoxFut, Req};

/// The deadline of every call, whatever the strategy (the SDKs' default timeout).
const CALL_DEADLINE: Duration = Duration::from_secs(600);
/// Seeds: the sim, the workload, and the strategies' jitter.
const SEED: u64 = 42;
/// Requests a call may ask for, shared by every scenario.
const INPUT_TOKENS: std::ops::RangeInclusive<u64> = 200..=2_000;
const MAX_TOKENS: std::ops::RangeInclusive<u64> = 256..=1_024;
const OUTPUT_FRACTION: std::ops::RangeInclusive<f64> = 0.2..=1.0;
/// The peers' concurrency cap (tower's `ConcurrencyLimit`, tower-resilience's bulkhead).
const PEER_CONCURRENCY: usize = 16;

// ---------------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy, Debug)]
struct Model {
    name: &'static str,
    rpm: u64,
    itpm: u64,
    otpm: u64,
}

impl Model {
    fn limits(&self, factor: u64) -> Limits {
        Limits::per_minute(self.rpm * factor, self.itpm * factor, self.otpm * factor)
    }

    /// What a user of a requests-per-minute limiter configures: the documented limits converted
    /// to requests per minute with the workload's average request (mean input, mean max_tokens ×
    /// mean share produced).
    fn as_rpm(&self) -> u64 {
        let mean = |r: &std::ops::RangeInclusive<u64>| (r.start() + r.end()) as f64 / 2.0;
        let fraction = (OUTPUT_FRACTION.start() + OUTPUT_FRACTION.end()) / 2.0;
        let by_input = self.itpm as f64 / mean(&INPUT_TOKENS);
        let by_output = self.otpm as f64 / (mean(&MAX_TOKENS) * fraction);
        (self.rpm as f64)
            .min(by_input)
            .min(by_output)
            .floor()
            .max(1.0) as u64
    }
}

const SONNET: Model = Model {
    name: "claude-sonnet-4-5",
    rpm: 200,
    itpm: 150_000,
    otpm: 50_000,
};
const HAIKU: Model = Model {
    name: "claude-haiku-4-5",
    rpm: 300,
    itpm: 200_000,
    otpm: 60_000,
};
const OPUS: Model = Model {
    name: "claude-opus-4-1",
    rpm: 100,
    itpm: 100_000,
    otpm: 40_000,
};

#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    models: Vec<Model>,
    requests: usize,
    callers: usize,
    faults: Faults,
    /// At this time every model's limits are multiplied by this factor (`api.set_limits`).
    upgrade: Option<(Duration, u64)>,
    /// How the simulated server behaves beyond its limits and faults.
    server: Server,
    /// The sizes of the workload's requests.
    sizes: Sizes,
}

/// The simulated server's behaviour (the defaults: the sim's, as the named scenarios use it).
#[derive(Clone, Debug, Default)]
struct Server {
    timing: HeaderTiming,
    dialect: HeaderDialect,
    counting: InputCounting,
    /// Share of every bucket other clients of the organisation use.
    other_clients: f64,
    /// `(base, per output token)`; `None`: the sim's default.
    latency: Option<(Duration, Duration)>,
    /// Share of requests answered 529, all along.
    overloaded: f64,
    /// How the output bucket is charged (the sim's default: as produced).
    accounting: OutputAccounting,
}

/// Request sizes of a workload.
#[derive(Clone, Debug)]
struct Sizes {
    input_tokens: std::ops::RangeInclusive<u64>,
    max_tokens: std::ops::RangeInclusive<u64>,
    output_fraction: std::ops::RangeInclusive<f64>,
    /// The share of requests that stream (`"stream": true`), read to their end.
    stream_share: f64,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            input_tokens: INPUT_TOKENS,
            max_tokens: MAX_TOKENS,
            output_fraction: OUTPUT_FRACTION,
            stream_share: 0.0,
        }
    }
}

fn scenarios() -> Vec<Scenario> {
    let base = Scenario {
        name: "steady".into(),
        models: vec![SONNET],
        requests: 400,
        callers: 32,
        faults: Faults::new(),
        upgrade: None,
        server: Server::default(),
        sizes: Sizes::default(),
    };
    vec![
        base.clone(),
        Scenario {
            name: "overload".into(),
            faults: Faults::new().window(
                Duration::from_secs(45)..Duration::from_secs(75),
                Fault::Overloaded { probability: 1.0 },
            ),
            ..base.clone()
        },
        Scenario {
            name: "multi-model".into(),
            models: vec![SONNET, HAIKU, OPUS],
            requests: 900,
            callers: 48,
            ..base.clone()
        },
        Scenario {
            name: "limit-change".into(),
            requests: 500,
            upgrade: Some((Duration::from_secs(60), 2)),
            ..base.clone()
        },
        Scenario {
            name: "skew".into(),
            faults: Faults::new().always(Fault::ClockSkew { offset_secs: 90 }),
            ..base
        },
    ]
}

impl Scenario {
    fn api(&self) -> SimApi {
        let server = &self.server;
        // The server's 529s first: the scenario's own faults (a sweep point's broken streams)
        // do not change which requests they refuse.
        let mut faults = Faults::new();
        if server.overloaded > 0.0 {
            faults = faults.always(Fault::Overloaded {
                probability: server.overloaded,
            });
        }
        let faults = faults.then(self.faults.clone());
        let mut builder = SimApi::builder()
            .faults(faults)
            .seed(SEED)
            .header_timing(server.timing)
            .header_dialect(server.dialect)
            .input_counting(server.counting)
            .other_clients(server.other_clients)
            .output_accounting(server.accounting);
        if let Some((base, per_token)) = server.latency {
            builder = builder.latency(base, per_token);
        }
        for m in &self.models {
            builder = builder.model(m.name, m.limits(1));
        }
        builder.build()
    }

    fn workload(&self) -> Workload {
        Workload::new(self.requests, self.callers)
            .seed(SEED)
            .models(self.models.iter().map(|m| m.name))
            .input_tokens(self.sizes.input_tokens.clone())
            .max_tokens(self.sizes.max_tokens.clone())
            .output_fraction(self.sizes.output_fraction.clone())
            .stream_share(self.sizes.stream_share)
    }

    /// T*, the best possible completion time. The sim computes it for fixed limits (the refill
    /// bound plus the shortest answer, see `Workload::theoretical_best`); across an upgrade that
    /// multiplies every limit by `k` at `t_c`, the binding bucket refills `k` times faster from
    /// then on (the sim keeps bucket levels), so the refill bound becomes
    /// `t_c + (T₁ − t_c) / k` when the fixed-limit bound `T₁` is later than `t_c`; the answer's
    /// latency does not scale.
    fn best(&self, workload: &Workload, api: &SimApi) -> Duration {
        let latency = workload.shortest_latency(api);
        let fixed = workload.theoretical_best(api).saturating_sub(latency);
        let refill = match self.upgrade {
            Some((at, k)) if fixed > at => at + (fixed - at) / k as u32,
            _ => fixed,
        };
        refill + latency
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

const STRATEGIES: &[&str] = &["bare", "sdk-retry", "tower", "tower-resilience", "ours"];

/// Routes each request to the stack of its model: the per-model limiters a user of tower or
/// tower-resilience sets up (their limiters know nothing of models). The model is read from the
/// JSON body, which the caller built and knows.
#[derive(Clone)]
struct PerModel<S> {
    routes: Arc<HashMap<&'static str, S>>,
}

impl<S> PerModel<S> {
    fn new(models: &[Model], mut stack: impl FnMut(&Model) -> S) -> Self {
        let routes = models.iter().map(|m| (m.name, stack(m))).collect();
        PerModel {
            routes: Arc::new(routes),
        }
    }
}

impl<S, B> Service<Req> for PerModel<S>
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFut<Response<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let routes = Arc::clone(&self.routes);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes)?;
            let model = json["model"].as_str().unwrap_or_default();
            let svc = routes
                .get(model)
                .cloned()
                .ok_or_else(|| format!("no stack for model {model:?}"))?;
            svc.oneshot(Request::from_parts(parts, Full::new(bytes)))
                .await
        })
    }
}

type ReportFuture<'a> = Pin<Box<dyn Future<Output = Report> + 'a>>;

/// Receives our full stack from [`ours::full`] and starts the workload on it.
struct RunOurs<'a> {
    workload: &'a Workload,
    run: Option<ReportFuture<'a>>,
}

impl<'a> ours::Visit for RunOurs<'a> {
    fn visit<S, B>(&mut self, _name: &'static str, svc: S)
    where
        S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let workload = self.workload;
        self.run = Some(Box::pin(async move {
            workload.run(Timeout::new(svc, CALL_DEADLINE)).await
        }));
    }
}

// ---------------------------------------------------------------------------------------------
// One run

struct Row {
    scenario: String,
    strategy: &'static str,
    ok: usize,
    /// Calls that ended without a 2xx, except the broken streams.
    failed: usize,
    /// Streams the server broke after the caller had part of the answer (they end in
    /// `StreamInterrupted`, nothing is re-sent): the server's failures, not the client's.
    broken: usize,
    attempts: u64,
    r429: u64,
    r529: u64,
    elapsed: Duration,
    best: Duration,
    p50: Duration,
    p99: Duration,
    breaker_opened: usize,
    /// Why calls failed: (reason, count), most frequent first.
    failures: Vec<(String, usize)>,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.best.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// An error message with every number replaced by `#`, so failures group by kind.
fn without_numbers(message: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in message.chars().take(120) {
        let digit = c.is_ascii_digit() || (in_number && c == '.');
        if digit && !in_number {
            out.push('#');
        } else if !digit {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Whether a call ended in a stream the server broke after the head: `StreamInterrupted`
/// (its message, at the end of the error chain). Such a call is not re-sent (the caller had
/// part of the answer), so it counts apart from `failed`: the server broke it.
fn is_broken(r: &CallRecord) -> bool {
    !r.is_ok()
        && r.error()
            .is_some_and(|e| e.contains("event stream interrupted"))
}

/// T: until the end of the last call, not counting the broken streams' (a stalled stream ends
/// at the idle bound, 120 s after its last event: the server's stall, not the client's pace).
fn elapsed(report: &Report) -> Duration {
    if !report.records().iter().any(is_broken) {
        return report.elapsed();
    }
    report
        .records()
        .iter()
        .filter(|r| !is_broken(r))
        .map(|r| r.finished())
        .max()
        .unwrap_or_default()
}

/// Runs `scenario` with `strategy` on a fresh paused current-thread runtime; `None` when the
/// strategy is not available in this build.
fn run(scenario: &Scenario, strategy: &'static str) -> Option<Row> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        fastrand::seed(SEED);
        let api = scenario.api();
        let workload = scenario.workload();
        let best = scenario.best(&workload, &api);
        if let Some((at, factor)) = scenario.upgrade {
            let api = api.clone();
            let models = scenario.models.clone();
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                for m in &models {
                    api.set_limits(m.name, m.limits(factor));
                }
            });
        }
        let opened = Arc::new(AtomicUsize::new(0));
        let report = match strategy {
            "bare" => workload.run(Timeout::new(api.clone(), CALL_DEADLINE)).await,
            "sdk-retry" => {
                let svc = peers::SdkRetry::new(api.clone());
                workload.run(Timeout::new(svc, CALL_DEADLINE)).await
            }
            "tower" => {
                let svc = PerModel::new(&scenario.models, |m| {
                    peers::tower_stack(api.clone(), m.as_rpm(), PEER_CONCURRENCY)
                });
                workload.run(Timeout::new(svc, CALL_DEADLINE)).await
            }
            "tower-resilience" => {
                let svc = PerModel::new(&scenario.models, |m| {
                    let config = peers::ResilienceConfig {
                        per_minute: m.as_rpm() as usize,
                        concurrency: PEER_CONCURRENCY,
                        // Its open-state timer reads the wall clock (`std::time::Instant`),
                        // which barely moves while the paused tokio clock runs minutes: any
                        // positive wait would keep it open for the rest of the run. Zero makes
                        // it half-open at once after tripping (3 probes, the rest refused),
                        // kinder to it than its 30 s preset would be at real speed.
                        breaker_open: Duration::ZERO,
                        opened: Some(Arc::clone(&opened)),
                    };
                    peers::resilience_stack(api.clone(), config)
                });
                workload.run(Timeout::new(svc, CALL_DEADLINE)).await
            }
            _ => {
                let mut visitor = RunOurs {
                    workload: &workload,
                    run: None,
                };
                ours::full(api.clone(), &mut visitor);
                visitor.run?.await
            }
        };
        let broken = report.records().iter().filter(|r| is_broken(r)).count();
        let mut failures: HashMap<String, usize> = HashMap::new();
        for r in report
            .records()
            .iter()
            .filter(|r| !r.is_ok() && !is_broken(r))
        {
            let reason = match (r.status(), r.error()) {
                (Some(status), _) => format!("HTTP {}", status.as_u16()),
                (None, Some(e)) => without_numbers(e),
                (None, None) => "unknown".to_string(),
            };
            *failures.entry(reason).or_default() += 1;
        }
        let mut failures: Vec<(String, usize)> = failures.into_iter().collect();
        failures.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let counters = api.counters();
        let mut latencies: Vec<Duration> = report.records().iter().map(|r| r.latency()).collect();
        latencies.sort();
        Some(Row {
            scenario: scenario.name.clone(),
            strategy,
            ok: report.ok(),
            failed: report.failed() - broken,
            broken,
            attempts: counters.received(),
            r429: counters.rate_limited(),
            r529: counters.overloaded(),
            elapsed: elapsed(&report),
            best,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            breaker_opened: opened.load(Ordering::Relaxed),
            failures,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Main

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
        if let Some(v) = a.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
            return Some(v.to_string());
        }
    }
    None
}

/// The goodput targets, for `--check`: what `ours` misses in each scenario, one line per miss.
fn misses(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for ours in rows.iter().filter(|r| r.strategy == "ours") {
        let name = &ours.scenario;
        if ours.failed > 0 {
            out.push(format!("{name}: {} failed calls", ours.failed));
        }
        if ours.r429 * 100 >= ours.attempts.max(1) {
            out.push(format!(
                "{name}: {} 429s in {} attempts (target: under 1%)",
                ours.r429, ours.attempts
            ));
        }
        if ours.ratio() < 0.97 {
            out.push(format!(
                "{name}: T*/T = {:.3} (target: within 3% of T*)",
                ours.ratio()
            ));
        }
        for peer in rows
            .iter()
            .filter(|r| &r.scenario == name && r.strategy != "ours")
        {
            let behind = if peer.failed == 0 {
                ours.failed > 0 || ours.ratio() <= peer.ratio()
            } else {
                ours.ok <= peer.ok
            };
            if behind {
                out.push(format!(
                    "{name}: not ahead of `{}` (ok {} vs {}, T*/T {:.3} vs {:.3})",
                    peer.strategy,
                    ours.ok,
                    peer.ok,
                    ours.ratio(),
                    peer.ratio()
                ));
            }
        }
    }
    out
}

/// Runs the named scenarios and prints their table; with `check`, `false` when `ours` misses a
/// target.
fn named(check: bool) -> bool {
    let only_scenario = arg("--scenario");
    let only_strategy = arg("--strategy");
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for scenario in scenarios() {
        if only_scenario.as_deref().is_some_and(|s| s != scenario.name) {
            continue;
        }
        for &strategy in STRATEGIES {
            if only_strategy.as_deref().is_some_and(|s| s != strategy) {
                continue;
            }
            match run(&scenario, strategy) {
                Some(row) => rows.push(row),
                None => eprintln!(
                    "goodput: `{strategy}` skipped in `{}`: {}",
                    scenario.name,
                    ours::MISSING
                ),
            }
        }
    }

    println!(
        "{:<13} {:<17} {:>5} {:>6} {:>8} {:>6} {:>6} {:>8} {:>7} {:>6} {:>7} {:>7}",
        "scenario",
        "strategy",
        "ok",
        "failed",
        "attempts",
        "429s",
        "529s",
        "time s",
        "T* s",
        "T*/T",
        "p50 s",
        "p99 s"
    );
    for r in &rows {
        println!(
            "{:<13} {:<17} {:>5} {:>6} {:>8} {:>6} {:>6} {:>8.1} {:>7.1} {:>6.3} {:>7.1} {:>7.1}",
            r.scenario,
            r.strategy,
            r.ok,
            r.failed,
            r.attempts,
            r.r429,
            r.r529,
            r.elapsed.as_secs_f64(),
            r.best.as_secs_f64(),
            r.ratio(),
            r.p50.as_secs_f64(),
            r.p99.as_secs_f64()
        );
    }
    println!();
    for r in rows.iter().filter(|r| r.failed > 0) {
        let reasons: Vec<String> = r
            .failures
            .iter()
            .map(|(why, n)| format!("{n}× {why}"))
            .collect();
        println!(
            "failures {} / {}: {}",
            r.scenario,
            r.strategy,
            reasons.join("; ")
        );
    }
    for r in rows.iter().filter(|r| r.breaker_opened > 0) {
        println!(
            "note: tower-resilience's circuit breaker opened {} time(s) in `{}` (open wait set \
             to zero: its timer runs on the wall clock, see BENCHMARKS.md)",
            r.breaker_opened, r.scenario
        );
    }
    println!();
    for r in &rows {
        println!(
            "goodput scenario={} strategy={} ok={} failed={} attempts={} r429={} r529={} ratio={:.3}",
            r.scenario,
            r.strategy,
            r.ok,
            r.failed,
            r.attempts,
            r.r429,
            r.r529,
            r.ratio()
        );
    }
    eprintln!(
        "goodput: {} runs in {:.1} s of wall-clock time",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if check {
        let misses = misses(&rows);
        if !rows.iter().any(|r| r.strategy == "ours") {
            eprintln!("goodput check: no `ours` run to check");
            return false;
        }
        if misses.is_empty() {
            println!("goodput check: `ours` meets every target in every scenario run");
        } else {
            for m in &misses {
                println!("goodput check: missed: {m}");
            }
            return false;
        }
    }
    true
}

/// Runs the sweep with `ours` on `jobs` threads (each run on its own paused runtime, so the
/// figures do not depend on `jobs`), prints one line per point and the summary; with `check`,
/// `false` when a point or the median misses its target.
fn run_sweep(check: bool, jobs: usize) -> bool {
    let started = std::time::Instant::now();
    let only_point = arg("--point");
    // `--streams`: each point draws its streaming mix (streams and broken streams);
    // `--stream-share 0.3`: that share of every point's requests stream. Neither: no streams.
    let stream_share = match arg("--stream-share").and_then(|s| s.parse().ok()) {
        Some(share) => Some(share),
        None if std::env::args().any(|a| a == "--streams") => None,
        None => Some(0.0),
    };
    // `--seed N`: another draw of the sweep's servers (0, the default, is the one CI checks).
    let seed = arg("--seed").and_then(|s| s.parse().ok()).unwrap_or(0);
    if seed != 0 {
        println!("sweep seed {seed}: servers drawn apart from the ones CI checks");
    }
    let points = sweep::points(stream_share, seed);
    let next = AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Row>>> =
        std::sync::Mutex::new((0..points.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(point) = points.get(i) else { break };
                    if only_point
                        .as_ref()
                        .is_some_and(|p| *p != point.scenario.name)
                    {
                        continue;
                    }
                    let row = run(&point.scenario, "ours");
                    if let Some(r) = &row {
                        eprintln!(
                            "goodput: {} ok={} failed={} r429={} ratio={:.3} broken={}",
                            r.scenario,
                            r.ok,
                            r.failed,
                            r.r429,
                            r.ratio(),
                            r.broken
                        );
                        for (reason, n) in &r.failures {
                            eprintln!("goodput: {} failed {n}× {reason}", r.scenario);
                        }
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = row;
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut rows = Vec::new();
    for (point, row) in points.into_iter().zip(results) {
        let Some(r) = row else {
            eprintln!("goodput: `ours` skipped in the sweep: {}", ours::MISSING);
            return false;
        };
        println!(
            "goodput scenario={} strategy=ours ok={} failed={} attempts={} r429={} r529={} \
             ratio={:.3} params={} broken={}",
            r.scenario,
            r.ok,
            r.failed,
            r.attempts,
            r.r429,
            r.r529,
            r.ratio(),
            point.params,
            r.broken
        );
        rows.push((r, point.headerless, point.params));
    }
    println!();
    for (r, _, _) in rows.iter().filter(|(r, _, _)| r.failed > 0) {
        let reasons: Vec<String> = r
            .failures
            .iter()
            .map(|(why, n)| format!("{n}× {why}"))
            .collect();
        println!("failures {} / ours: {}", r.scenario, reasons.join("; "));
    }
    println!();
    let min_ratio = arg("--min-ratio").and_then(|r| r.parse().ok());
    let mut misses = sweep::summarise(&rows, min_ratio);
    if std::env::args().any(|a| a == "--check-failed") {
        // The failed-call misses, as `summarise` words them.
        misses.retain(|m| m.contains(" failed calls ("));
    }
    eprintln!(
        "goodput: sweep of {} points in {:.1} s of wall-clock time",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if !check {
        return true;
    }
    if misses.is_empty() {
        if std::env::args().any(|a| a == "--check-failed") {
            println!("goodput check: no failed call in any sweep point");
        } else {
            println!("goodput check: `ours` meets every target in every sweep point");
        }
        return true;
    }
    for m in &misses {
        println!("goodput check: missed: {m}");
    }
    false
}

/// Trace timestamps on the paused clock: seconds since the first event of the run (wall-clock
/// times say nothing on virtual time).
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
        let now = tokio::time::Instant::now();
        let start = *START.get_or_init(|| now);
        write!(
            w,
            "{:>9.3}s",
            now.saturating_duration_since(start).as_secs_f64()
        )
    }
}

fn main() {
    let flag = |name: &str| std::env::args().any(|a| a == name);
    // `GOODPUT_TRACE=info` (or `debug`) prints the crate's tracing events: what the limiter
    // learned and why it waited, for one point (`--sweep --point sweep-20`).
    if let Ok(level) = std::env::var("GOODPUT_TRACE") {
        let level = level.parse().unwrap_or(tracing::Level::INFO);
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_timer(VirtualTime)
            .init();
    }
    // `--check-failed`: the sweep's failed-call target only (for sweeps whose other targets are
    // printed, not held: another `--seed`, an experiment).
    let check = flag("--check") || flag("--check-failed");
    let jobs = arg("--jobs").and_then(|j| j.parse().ok()).unwrap_or(1);
    let mut ok = true;
    if !flag("--sweep") {
        ok &= named(check);
    }
    if flag("--sweep") || flag("--all") {
        ok &= run_sweep(check, jobs);
    }
    if !ok {
        std::process::exit(1);
    }
}
