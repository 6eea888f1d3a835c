//! Cost per call of tower-llm-limits' layers against the stacks a user would pick instead.
//!
//! The inner service is always ready and answers at once with a 200 carrying the full set of
//! Anthropic rate-limit headers (a prebuilt `HeaderMap` cloned into each response), so what is
//! measured is the middleware alone. Limits are far above what the loop can send: nothing waits.
//!
//! Two settings, side by side in one run:
//! - `current_thread`: one caller on a current-thread runtime;
//! - `two_workers`: a 2-worker multi-thread runtime, two tasks calling clones of one shared stack;
//!   the figure is the CPU time of both workers per call (contention shows as a rise over
//!   `current_thread`).
//!
//! A third group, `stream_watch`, reads one streaming answer of 200 events (one per frame) to its
//! end, bare and through `ErrorBody`, which watches it (SSE parser, usage, outcome): the
//! difference divided by 200 is the watcher's cost per event (`ns_per_event` in the summary).
//!
//! Every figure is CPU time (`clock_gettime`), not wall time: this machine's two cores are shared
//! with other jobs, and wall time would mostly measure how often the benchmark was descheduled.
//!
//! Run: `cargo bench --all-features --bench overhead -- --warm-up-time 1 --measurement-time 2`.
//! After criterion's output a summary table prints ns/call and the ratios (see BENCHMARKS.md).
//!
//! Profiling: `OVERHEAD_PROFILE=<stack> [OVERHEAD_PROFILE_CALLS=n]` skips criterion and makes `n`
//! calls (default 5,000) through one stack on the current-thread runtime, for
//! `valgrind --tool=callgrind target/release/deps/overhead-<hash>` (instruction counts are
//! repeatable on a shared machine, where times are not).

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::Full;
use tokio::runtime::{Builder, Runtime};
use tower::{Service, ServiceExt};

#[allow(dead_code)]
#[path = "../examples/goodput/ours.rs"]
mod ours;
#[allow(dead_code)]
#[path = "../examples/goodput/peers.rs"]
mod peers;

use peers::{BoxError, Req};

/// Requests per minute given to every limiter: far above what one core can send.
const HIGH_RPM: u64 = 1_000_000_000;
/// Concurrency cap given to every stack: far above the two callers.
const HIGH_CONCURRENCY: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// The inner service

/// The full set of Anthropic headers a 200 carries, with limits no loop can exhaust.
fn anthropic_headers() -> HeaderMap {
    let now = SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let reset = time::OffsetDateTime::from(now + Duration::from_secs(1))
        .replace_nanosecond(0)
        .expect("valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats");
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        h.insert(name, HeaderValue::from_str(value).expect("valid header"));
    };
    put("content-type", "application/json");
    put("date", &date);
    put("request-id", "req_011CTbenchmark0000000000");
    for (dim, limit) in [
        ("requests", "1000000000"),
        ("input-tokens", "1000000000000"),
        ("output-tokens", "1000000000000"),
        ("tokens", "2000000000000"),
    ] {
        let remaining = &limit[..limit.len() - 1];
        let limit_name: &'static str =
            Box::leak(format!("anthropic-ratelimit-{dim}-limit").into_boxed_str());
        let remaining_name: &'static str =
            Box::leak(format!("anthropic-ratelimit-{dim}-remaining").into_boxed_str());
        let reset_name: &'static str =
            Box::leak(format!("anthropic-ratelimit-{dim}-reset").into_boxed_str());
        put(limit_name, limit);
        put(remaining_name, remaining);
        put(reset_name, &reset);
    }
    h
}

/// Always ready; answers with a 200, a small Messages body and the prebuilt headers.
#[derive(Clone)]
struct Instant200 {
    headers: Arc<HeaderMap>,
    body: Bytes,
}

impl Instant200 {
    fn new() -> Self {
        Instant200 {
            headers: Arc::new(anthropic_headers()),
            body: Bytes::from_static(
                br#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":1200,"output_tokens":300}}"#,
            ),
        }
    }
}

impl Service<Req> for Instant200 {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.headers_mut() = (*self.headers).clone();
        ready(Ok(response))
    }
}

/// A realistic Messages request (~4 KB of JSON), built fresh for each call.
struct RequestTemplate {
    body: Bytes,
}

impl RequestTemplate {
    fn new() -> Self {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(90);
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": text}],
        });
        RequestTemplate {
            body: Bytes::from(serde_json::to_vec(&body).expect("serialises")),
        }
    }

    fn request(&self) -> Req {
        Request::post("https://api.anthropic.com/v1/messages")
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(self.body.clone()))
            .expect("valid request")
    }
}

// ---------------------------------------------------------------------------------------------
// Drivers

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn two_workers() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// CPU time consumed so far by this thread (`Thread`) or the whole process (`Process`).
///
/// The benchmarks report CPU time, not wall time: on a machine shared with other jobs, wall time
/// mostly measures how often the benchmark was descheduled.
#[derive(Clone, Copy)]
enum Cpu {
    Thread,
    Process,
}

impl Cpu {
    fn now(self) -> Duration {
        use rustix::time::{ClockId, clock_gettime};
        let id = match self {
            Cpu::Thread => ClockId::ThreadCPUTime,
            Cpu::Process => ClockId::ProcessCPUTime,
        };
        let t = clock_gettime(id);
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    }

    fn since(self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
}

/// One caller, `iters` calls in one `block_on`; the CPU time of the calling thread (the
/// current-thread runtime runs everything on it).
fn bench_single<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    template: &RequestTemplate,
    mut svc: S,
) where
    S: Service<Req, Response = Response<B>, Error = BoxError>,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let svc = &mut svc;
            rt.block_on(async move {
                let start = Cpu::Thread.now();
                for _ in 0..iters {
                    let ready = svc.ready().await.expect("ready");
                    let response = ready.call(template.request()).await.expect("response");
                    black_box(response);
                }
                Cpu::Thread.since(start)
            })
        })
    });
}

/// Two tasks on two workers, each making `iters` calls on its own clone of one shared stack; the
/// process's CPU time over both workers, halved: CPU per call, contention included.
fn bench_pair<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    template: &Arc<RequestTemplate>,
    svc: S,
) where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Cpu::Process.now();
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        let mut svc = svc.clone();
                        let template = Arc::clone(template);
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                let ready = svc.ready().await.expect("ready");
                                let response =
                                    ready.call(template.request()).await.expect("response");
                                black_box(response);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
                Cpu::Process.since(start) / 2
            })
        })
    });
}

fn resilience_config() -> peers::ResilienceConfig {
    peers::ResilienceConfig {
        per_minute: HIGH_RPM as usize,
        concurrency: HIGH_CONCURRENCY,
        breaker_open: Duration::from_secs(30),
        opened: None,
    }
}

fn governor_limiter() -> governor::DefaultDirectRateLimiter {
    governor::RateLimiter::direct(governor::Quota::per_second(
        std::num::NonZeroU32::new(u32::MAX).expect("non-zero"),
    ))
}

// ---------------------------------------------------------------------------------------------
// The benchmarks

struct Single<'a, 'g> {
    group: &'a mut BenchmarkGroup<'g, WallTime>,
    rt: &'a Runtime,
    template: &'a RequestTemplate,
}

impl ours::Visit for Single<'_, '_> {
    fn visit<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        bench_single(self.group, name, self.rt, self.template, svc);
    }
}

struct Pair<'a, 'g> {
    group: &'a mut BenchmarkGroup<'g, WallTime>,
    rt: &'a Runtime,
    template: &'a Arc<RequestTemplate>,
}

impl ours::Visit for Pair<'_, '_> {
    fn visit<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        bench_pair(self.group, name, self.rt, self.template, svc);
    }
}

fn overhead(c: &mut Criterion) {
    let template = Arc::new(RequestTemplate::new());

    {
        let rt = current_thread();
        let _guard = rt.enter();
        let mut group = c.benchmark_group("current_thread");
        bench_single(&mut group, "bare", &rt, &template, Instant200::new());
        let mut v = Single {
            group: &mut group,
            rt: &rt,
            template: &template,
        };
        ours::single_layers(Instant200::new, HIGH_CONCURRENCY, &mut v);
        if !ours::full(Instant200::new(), &mut v) {
            eprintln!("ours_full skipped: {}", ours::MISSING);
        }
        let tower = peers::tower_stack(Instant200::new(), HIGH_RPM, HIGH_CONCURRENCY);
        bench_single(&mut group, "tower_buffered", &rt, &template, tower);
        let tower = peers::tower_stack_unbuffered(Instant200::new(), HIGH_RPM, HIGH_CONCURRENCY);
        bench_single(&mut group, "tower_unbuffered", &rt, &template, tower);
        let resilience = peers::resilience_stack(Instant200::new(), resilience_config());
        bench_single(&mut group, "tower_resilience", &rt, &template, resilience);
        let limiter = governor_limiter();
        group.bench_function("governor_check", |b| {
            b.iter_custom(|iters| {
                let start = Cpu::Thread.now();
                for _ in 0..iters {
                    black_box(limiter.check()).ok();
                }
                Cpu::Thread.since(start)
            })
        });
        group.finish();
    }

    {
        let rt = two_workers();
        let _guard = rt.enter();
        let mut group = c.benchmark_group("two_workers");
        bench_pair(&mut group, "bare", &rt, &template, Instant200::new());
        let mut v = Pair {
            group: &mut group,
            rt: &rt,
            template: &template,
        };
        ours::single_layers(Instant200::new, HIGH_CONCURRENCY, &mut v);
        ours::full(Instant200::new(), &mut v);
        let tower = peers::tower_stack(Instant200::new(), HIGH_RPM, HIGH_CONCURRENCY);
        bench_pair(&mut group, "tower_buffered", &rt, &template, tower);
        let resilience = peers::resilience_stack(Instant200::new(), resilience_config());
        bench_pair(&mut group, "tower_resilience", &rt, &template, resilience);
        let limiter = Arc::new(governor_limiter());
        group.bench_function("governor_check", |b| {
            b.iter_custom(|iters| {
                let start = Cpu::Process.now();
                std::thread::scope(|s| {
                    for _ in 0..2 {
                        let limiter = &limiter;
                        s.spawn(move || {
                            for _ in 0..iters {
                                black_box(limiter.check()).ok();
                            }
                        });
                    }
                });
                Cpu::Process.since(start) / 2
            })
        });
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// Summary: ns/call from criterion's estimates, and the ratios

fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"))
                .join("criterion")
        })
}

/// Median ns/iteration of every benchmark of `group` measured since `since`.
fn medians(group: &str, since: SystemTime) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(criterion_dir().join(group)) else {
        return out;
    };
    for entry in entries.flatten() {
        let file = entry.path().join("new").join("estimates.json");
        let fresh = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if !fresh {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if let Some(ns) = json["median"]["point_estimate"].as_f64() {
            out.insert(entry.file_name().to_string_lossy().into_owned(), ns);
        }
    }
    out
}

fn print_summary(since: SystemTime) {
    const ORDER: &[&str] = &[
        "bare",
        "signals",
        "retry",
        "circuit_breaker",
        "rate_limit",
        "rate_limit_given_cost",
        "concurrency_limit",
        "adaptive_concurrency",
        "ours_full",
        "tower_buffered",
        "tower_unbuffered",
        "tower_resilience",
        "governor_check",
    ];
    for group in ["current_thread", "two_workers"] {
        let m = medians(group, since);
        if m.is_empty() {
            continue;
        }
        println!("\noverhead summary: {group} (median CPU ns per call)");
        println!(
            "{:<20} {:>10} {:>12} {:>12} {:>14} {:>14}",
            "stack", "ns/call", "added ns", "x bare", "x tower", "x resilience"
        );
        let bare = m.get("bare").copied();
        let tower = m.get("tower_buffered").copied();
        let resilience = m.get("tower_resilience").copied();
        let mut names: Vec<&String> = m.keys().collect();
        names.sort_by_key(|n| ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()));
        let ratio = |v: f64, base: Option<f64>| {
            base.map_or_else(|| "-".to_string(), |b| format!("{:.2}", v / b))
        };
        for name in names {
            let v = m[name];
            let added = match bare {
                Some(b) if name != "governor_check" => format!("{:.0}", v - b),
                _ => "-".to_string(),
            };
            println!(
                "{:<20} {:>10.0} {:>12} {:>12} {:>14} {:>14}",
                name,
                v,
                added,
                ratio(v, bare),
                ratio(v, tower),
                ratio(v, resilience)
            );
        }
        for (name, v) in &m {
            println!("overhead group={group} stack={name} ns={v:.1}");
        }
    }
}

/// Makes `calls` calls through the stack named `name` (see [`profile`]).
struct Profile<'a> {
    name: &'a str,
    calls: u64,
    rt: &'a Runtime,
    template: &'a RequestTemplate,
    found: bool,
}

impl Profile<'_> {
    fn run<S, B>(&mut self, name: &str, mut svc: S)
    where
        S: Service<Req, Response = Response<B>, Error = BoxError>,
    {
        if name != self.name {
            return;
        }
        self.found = true;
        let (calls, template) = (self.calls, self.template);
        self.rt.block_on(async move {
            for _ in 0..calls {
                let ready = svc.ready().await.expect("ready");
                black_box(ready.call(template.request()).await.expect("response"));
            }
        });
    }
}

impl ours::Visit for Profile<'_> {
    fn visit<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.run(name, svc);
    }
}

/// `OVERHEAD_PROFILE=<stack>`: `OVERHEAD_PROFILE_CALLS` calls through that stack, no criterion.
fn profile(name: &str) {
    let calls = std::env::var("OVERHEAD_PROFILE_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let rt = current_thread();
    let _guard = rt.enter();
    let template = RequestTemplate::new();
    let mut p = Profile {
        name,
        calls,
        rt: &rt,
        template: &template,
        found: false,
    };
    p.run("bare", Instant200::new());
    ours::single_layers(Instant200::new, HIGH_CONCURRENCY, &mut p);
    ours::full(Instant200::new(), &mut p);
    p.run(
        "tower_buffered",
        peers::tower_stack(Instant200::new(), HIGH_RPM, HIGH_CONCURRENCY),
    );
    p.run(
        "tower_resilience",
        peers::resilience_stack(Instant200::new(), resilience_config()),
    );
    if !p.found {
        eprintln!("OVERHEAD_PROFILE: no stack named {name}");
        std::process::exit(2);
    }
}

// ---------------------------------------------------------------------------------------------
// The stream watcher

/// Events in the benchmarked stream: `message_start`, a content block of text deltas,
/// `message_delta`, `message_stop`, one event per frame as a server flushes them.
const STREAM_EVENTS: usize = 200;

fn anthropic_stream() -> Vec<Bytes> {
    let mut events = vec![
        Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":1234,\"output_tokens\":1}}}\n\n"),
        Bytes::from_static(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"),
    ];
    while events.len() < STREAM_EVENTS - 3 {
        events.push(Bytes::from_static(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" a few words\"}}\n\n"));
    }
    events.push(Bytes::from_static(
        b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    ));
    events.push(Bytes::from_static(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":600}}\n\n"));
    events.push(Bytes::from_static(
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ));
    events
}

/// A body yielding prebuilt frames.
struct Frames(std::collections::VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|d| Ok(http_body::Frame::data(d))))
    }
}

/// One streaming answer per iteration, read to its end, bare and through `ErrorBody` (the
/// watcher); the difference divided by [`STREAM_EVENTS`] is the watcher's CPU cost per event.
fn stream_watch(c: &mut Criterion) {
    use tower::Layer;
    let rt = current_thread();
    let events = anthropic_stream();
    let answer = move |_req: Request<()>| {
        let body = Frames(events.iter().cloned().collect());
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .expect("a response");
        ready(Ok::<_, BoxError>(response))
    };
    let mut group = c.benchmark_group("stream_watch");
    stream_row(&mut group, &rt, "bare", tower::service_fn(answer.clone()));
    stream_row(
        &mut group,
        &rt,
        "watched",
        tower_llm_limits::error_body::ErrorBodyLayer::new().layer(tower::service_fn(answer)),
    );
    group.finish();
}

/// One row of [`stream_watch`]: `iters` streams through `svc`, each read to its end.
fn stream_row<S, B>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, mut svc: S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let svc = &mut svc;
            rt.block_on(async move {
                let start = Cpu::Thread.now();
                for _ in 0..iters {
                    let response = svc.call(Request::new(())).await.expect("response");
                    black_box(response.into_body().collect().await.expect("body"));
                }
                Cpu::Thread.since(start)
            })
        })
    });
}

fn print_stream_summary(since: SystemTime) {
    let m = medians("stream_watch", since);
    if let (Some(bare), Some(watched)) = (m.get("bare"), m.get("watched")) {
        let per_event = (watched - bare) / STREAM_EVENTS as f64;
        println!(
            "\noverhead summary: stream_watch ({STREAM_EVENTS} events per stream, median CPU ns)"
        );
        println!(
            "overhead stream_watch bare_ns={bare:.0} watched_ns={watched:.0} ns_per_event={per_event:.1}"
        );
    }
}

fn main() {
    if let Ok(name) = std::env::var("OVERHEAD_PROFILE") {
        profile(&name);
        return;
    }
    let since = SystemTime::now();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .output_directory(&criterion_dir())
        .configure_from_args();
    overhead(&mut c);
    stream_watch(&mut c);
    c.final_summary();
    print_summary(since);
    print_stream_summary(since);
}
