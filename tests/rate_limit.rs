//! Tests of the header-aware rate limiter on tokio's paused clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_limits::BoxError;
use tower_llm_limits::cost::Cost;
use tower_llm_limits::rate_limit::WaitAbsorbed;
use tower_llm_limits::rate_limit::error::{CostExceedsLimit, WaitTooLong};
use tower_llm_limits::rate_limit::{
    Limits, MaxWait, Priority, RateLimitKey, RateLimitLayer, RateLimitState, STARTUP_PROBES,
};
use tower_llm_limits::signals::Dimension;

type Log = Arc<Mutex<Vec<(String, Duration)>>>;

/// An inner service that answers at once (or after `latency`) with `status`, logging the name of
/// each request (its body) and the time it was called.
fn recorder(
    start: Instant,
    latency: Duration,
    status: StatusCode,
) -> (
    impl Service<Request<String>, Response = Response<String>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static,
    Log,
) {
    let log: Log = Arc::default();
    let l = log.clone();
    let svc = service_fn(move |req: Request<String>| {
        let l = l.clone();
        async move {
            l.lock()
                .unwrap()
                .push((req.body().clone(), start.elapsed()));
            tokio::time::sleep(latency).await;
            let mut res = Response::new(String::new());
            *res.status_mut() = status;
            Ok::<_, BoxError>(res)
        }
    });
    (svc, log)
}

fn req(name: &str, cost: Cost) -> Request<String> {
    let mut r = Request::new(name.to_string());
    r.extensions_mut().insert(cost);
    r
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[tokio::test(start_paused = true)]
async fn configured_limits_pace_requests() {
    let start = Instant::now();
    let (inner, log) = recorder(start, Duration::ZERO, StatusCode::OK);
    // 2 requests per 2 s: a burst of 2, then one per second.
    let limits = Limits::new().requests(2).window(Duration::from_secs(2));
    let svc = RateLimitLayer::with_limits(limits).layer(inner);
    let mut tasks = Vec::new();
    for i in 0..5 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(
            svc.oneshot(req(&i.to_string(), Cost::new(1, 0, 0))),
        ));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let times: Vec<Duration> = log.lock().unwrap().iter().map(|x| x.1).collect();
    assert_eq!(
        times,
        [secs(0.0), secs(0.0), secs(1.0), secs(2.0), secs(3.0)]
    );
}

#[tokio::test(start_paused = true)]
async fn oversize_request_fails_at_once() {
    let start = Instant::now();
    let (inner, log) = recorder(start, Duration::ZERO, StatusCode::OK);
    let svc = RateLimitLayer::with_limits(Limits::per_minute(50, 1_000, 500)).layer(inner);
    let err = svc
        .oneshot(req("big", Cost::new(1, 1_001, 10)))
        .await
        .unwrap_err();
    let e = err.downcast_ref::<CostExceedsLimit>().expect("typed error");
    assert_eq!(
        (e.dimension(), e.cost(), e.limit()),
        (Dimension::InputTokens, 1_001, 1_000)
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn fifo_a_large_request_is_not_starved() {
    let start = Instant::now();
    let (inner, log) = recorder(start, Duration::ZERO, StatusCode::OK);
    // 100 input tokens per 60 s: 100/60 per second.
    let svc = RateLimitLayer::with_limits(Limits::new().input_tokens(100)).layer(inner);
    let mut tasks = Vec::new();
    for (name, input) in [("a", 80), ("b", 90), ("c", 10)] {
        tasks.push(tokio::spawn(
            svc.clone().oneshot(req(name, Cost::new(1, input, 0))),
        ));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let log = log.lock().unwrap().clone();
    // b needs 70 more tokens (42 s), c 10 more after b (6 s): c is never admitted before b.
    assert_eq!(
        log,
        [
            ("a".to_string(), secs(0.0)),
            ("b".to_string(), secs(42.0)),
            ("c".to_string(), secs(48.0))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn interactive_requests_go_before_background_ones() {
    let start = Instant::now();
    let (inner, log) = recorder(start, Duration::ZERO, StatusCode::OK);
    let svc = RateLimitLayer::with_limits(Limits::new().requests(1).window(Duration::from_secs(1)))
        .layer(inner);
    let mut tasks = Vec::new();
    for (name, p) in [
        ("first", Priority::Interactive),
        ("bg1", Priority::Background),
        ("bg2", Priority::Background),
        ("int1", Priority::Interactive),
        ("int2", Priority::Interactive),
    ] {
        let mut r = req(name, Cost::new(1, 0, 0));
        r.extensions_mut().insert(p);
        tasks.push(tokio::spawn(svc.clone().oneshot(r)));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let names: Vec<String> = log.lock().unwrap().iter().map(|x| x.0.clone()).collect();
    assert_eq!(names, ["first", "int1", "int2", "bg1", "bg2"]);
    let times: Vec<Duration> = log.lock().unwrap().iter().map(|x| x.1).collect();
    assert_eq!(
        times,
        [secs(0.0), secs(1.0), secs(2.0), secs(3.0), secs(4.0)]
    );
}

#[tokio::test(start_paused = true)]
async fn max_wait_fails_at_once_with_the_projected_wait() {
    let start = Instant::now();
    let (inner, _log) = recorder(start, Duration::ZERO, StatusCode::OK);
    let svc = RateLimitLayer::with_limits(Limits::new().input_tokens(600))
        .max_wait(Duration::from_secs(30))
        .layer(inner);
    // 10 tokens per second. The first takes everything.
    svc.clone()
        .oneshot(req("a", Cost::new(1, 600, 0)))
        .await
        .unwrap();
    // 200 tokens: 20 s, within the layer's maximum.
    let b = tokio::spawn(svc.clone().oneshot(req("b", Cost::new(1, 200, 0))));
    tokio::task::yield_now().await;
    // 200 more behind b: 40 s > 30 s — fails at once, saying which dimension and how long.
    let err = svc
        .clone()
        .oneshot(req("c", Cost::new(1, 200, 0)))
        .await
        .unwrap_err();
    let e = err.downcast_ref::<WaitTooLong>().expect("typed error");
    assert_eq!(e.dimension(), Some(Dimension::InputTokens));
    assert_eq!(e.wait(), secs(40.0));
    assert_eq!(e.max_wait(), secs(30.0));
    assert_eq!(start.elapsed(), Duration::ZERO);
    // A per-request MaxWait overrides the layer's.
    let mut r = req("d", Cost::new(1, 100, 0));
    r.extensions_mut()
        .insert(MaxWait::new(Duration::from_secs(60)));
    let d = tokio::spawn(svc.clone().oneshot(r));
    b.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), secs(20.0));
    d.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), secs(30.0));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_holds_while_waiting() {
    let start = Instant::now();
    let state = RateLimitState::builder()
        .limits(Limits::new().input_tokens(600))
        .cooldown_without_hint(Duration::from_secs(60))
        .build();
    let (ok, _) = recorder(start, Duration::ZERO, StatusCode::OK);
    let (refused, _) = recorder(start, Duration::ZERO, StatusCode::TOO_MANY_REQUESTS);
    let svc = RateLimitLayer::with_state(state.clone())
        .max_wait(Duration::from_secs(30))
        .layer(ok);
    svc.clone()
        .oneshot(req("a", Cost::new(1, 600, 0)))
        .await
        .unwrap();
    // b is projected at 20 s, within its 30 s...
    let mut b = req("b", Cost::new(1, 200, 0));
    b.extensions_mut().insert(Priority::Background);
    let b = tokio::spawn(svc.clone().oneshot(b));
    tokio::task::yield_now().await;
    // ...until a 429 elsewhere cools the key down for a minute.
    RateLimitLayer::with_state(state.clone())
        .layer(refused)
        .oneshot(req("c", Cost::new(1, 0, 0)))
        .await
        .unwrap();
    let err = b.await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), secs(30.0));
    let e = err.downcast_ref::<WaitTooLong>().expect("typed error");
    assert_eq!((e.dimension(), e.wait()), (None, secs(60.0)));
    assert_eq!(
        state
            .key_snapshot(&RateLimitKey::global())
            .unwrap()
            .queued(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn cooldown_is_shared_by_clones_and_announced() {
    let start = Instant::now();
    let state = RateLimitState::builder()
        .limits(Limits::new().requests(1_000))
        .cooldown_without_hint(Duration::from_secs(5))
        .build();
    let (limited, _) = recorder(start, Duration::ZERO, StatusCode::TOO_MANY_REQUESTS);
    let (ok, log) = recorder(start, Duration::ZERO, StatusCode::OK);
    let a = RateLimitLayer::with_state(state.clone()).layer(limited);
    let b = RateLimitLayer::with_state(state.clone()).layer(ok);
    let res = a.oneshot(req("refused", Cost::new(1, 0, 0))).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let absorbed = res.extensions().get::<WaitAbsorbed>().expect("announced");
    assert_eq!(absorbed.until(), start + secs(5.0));
    let snap = state.key_snapshot(&RateLimitKey::global()).unwrap();
    assert_eq!(snap.cooldown_until(), Some(start + secs(5.0)));
    b.clone()
        .oneshot(req("other", Cost::new(1, 0, 0)))
        .await
        .unwrap();
    assert_eq!(log.lock().unwrap()[0].1, secs(5.0));
}

#[tokio::test(start_paused = true)]
async fn per_key_buckets_are_independent() {
    let start = Instant::now();
    let (inner, log) = recorder(start, Duration::ZERO, StatusCode::OK);
    let svc = RateLimitLayer::with_limits(Limits::new().requests(1)).layer(inner);
    let keyed = |name: &str, key: &str| {
        let mut r = req(name, Cost::new(1, 0, 0));
        r.extensions_mut().insert(RateLimitKey::new(key));
        r
    };
    let t1 = tokio::spawn(svc.clone().oneshot(keyed("a1", "model-a")));
    let t2 = tokio::spawn(svc.clone().oneshot(keyed("a2", "model-a")));
    let t3 = tokio::spawn(svc.clone().oneshot(keyed("b1", "model-b")));
    for t in [t1, t2, t3] {
        t.await.unwrap().unwrap();
    }
    let mut log = log.lock().unwrap().clone();
    log.sort();
    assert_eq!(
        log,
        [
            ("a1".to_string(), secs(0.0)),
            ("a2".to_string(), secs(60.0)),
            ("b1".to_string(), secs(0.0))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn without_headers_or_limits_probes_then_starts_slowly() {
    let start = Instant::now();
    let (inner, log) = recorder(start, Duration::from_secs(1), StatusCode::OK);
    let svc = RateLimitLayer::new().layer(inner);
    let mut tasks = Vec::new();
    let n = STARTUP_PROBES + 2;
    for i in 0..n {
        tasks.push(tokio::spawn(
            svc.clone()
                .oneshot(req(&i.to_string(), Cost::new(1, 10, 10))),
        ));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let times: Vec<Duration> = log.lock().unwrap().iter().map(|x| x.1).collect();
    // The probes at once, the others after the first answer: no headers, so the key starts
    // slowly, at one request a second.
    let mut expected = vec![secs(0.0); STARTUP_PROBES];
    expected.extend([secs(1.0), secs(2.0)]);
    assert_eq!(times, expected);
}

#[tokio::test(start_paused = true)]
async fn cancellation_gives_back_what_was_reserved() {
    let start = Instant::now();
    let state = RateLimitState::with_limits(Limits::new().input_tokens(600).output_tokens(600));
    let key = RateLimitKey::global();
    let level = |d| state.key_snapshot(&key).unwrap().bucket(d).unwrap().level();
    // 1. A waiting future dropped leaves the queue and wakes the next one.
    let (inner, log) = recorder(start, Duration::ZERO, StatusCode::OK);
    let svc = RateLimitLayer::with_state(state.clone()).layer(inner);
    svc.clone()
        .oneshot(req("a", Cost::new(1, 600, 0)))
        .await
        .unwrap();
    let waiting = tokio::spawn(svc.clone().oneshot(req("big", Cost::new(1, 500, 0))));
    tokio::task::yield_now().await;
    let small = tokio::spawn(svc.clone().oneshot(req("small", Cost::new(1, 100, 0))));
    tokio::task::yield_now().await;
    assert_eq!(state.key_snapshot(&key).unwrap().queued(), 2);
    waiting.abort();
    small.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), secs(10.0));
    assert_eq!(state.key_snapshot(&key).unwrap().queued(), 0);
    assert_eq!(log.lock().unwrap().len(), 2);

    // 2. Admitted but the inner service never became ready: everything comes back.
    let (mock, mut handle) = tower_test::mock::pair::<Request<String>, Response<String>>();
    handle.allow(0);
    let svc = RateLimitLayer::with_state(state.clone()).layer(mock);
    tokio::time::advance(secs(60.0)).await;
    let mut fut = tokio_test::task::spawn(svc.clone().oneshot(req("x", Cost::new(1, 300, 200))));
    assert!(fut.poll().is_pending());
    assert_eq!(level(Dimension::InputTokens), 300);
    assert_eq!(level(Dimension::OutputTokens), 400);
    drop(fut);
    assert_eq!(level(Dimension::InputTokens), 600);
    assert_eq!(level(Dimension::OutputTokens), 600);

    // 3. Dropped while the call is in flight: input stays charged, output comes back.
    handle.allow(1);
    let mut fut = tokio_test::task::spawn(svc.clone().oneshot(req("y", Cost::new(1, 300, 200))));
    assert!(fut.poll().is_pending());
    let _sent = handle.next_request().await.unwrap();
    assert_eq!(level(Dimension::OutputTokens), 400);
    drop(fut);
    assert_eq!(level(Dimension::InputTokens), 300);
    assert_eq!(level(Dimension::OutputTokens), 600);
    assert_eq!(state.key_snapshot(&key).unwrap().in_flight(), 0);
}

/// Regression: when more keys than `max_keys` were busy at once, the state used to stay at that
/// high-water mark (one idle key evicted per new key); it shrinks back to the cap once idle.
#[tokio::test(start_paused = true)]
async fn keyed_state_shrinks_back_to_max_keys() {
    let state = RateLimitState::builder()
        .limits(Limits::new().requests(100))
        .max_keys(2)
        .build();
    let (inner, _log) = recorder(Instant::now(), secs(1.0), StatusCode::OK);
    let svc = RateLimitLayer::with_state(state.clone()).layer(inner);
    let keyed = |name: &str| {
        let mut r = req(name, Cost::new(1, 0, 0));
        r.extensions_mut().insert(RateLimitKey::new(name));
        r
    };
    let busy: Vec<_> = (0..10)
        .map(|i| tokio::spawn(svc.clone().oneshot(keyed(&format!("busy-{i}")))))
        .collect();
    for call in busy {
        call.await.unwrap().unwrap();
    }
    assert_eq!(state.snapshot().len(), 10, "busy keys are never evicted");
    svc.clone().oneshot(keyed("afterwards")).await.unwrap();
    assert_eq!(state.snapshot().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Acceptance against the simulated API.

mod acceptance {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use tower_llm_limits_sim::{
        Fault, Faults, Limits as SimLimits, OutputAccounting, SimApi, Workload,
    };

    use super::*;

    const MODEL: &str = "claude-sonnet-4-5";

    /// A test-local retry: a 429 is sent again at once (the limiter holds it until the cooldown
    /// is over). Counts the attempts.
    fn retry_429<S>(
        inner: S,
        attempts: Arc<AtomicUsize>,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static
    where
        S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        service_fn(move |req: Request<Full<Bytes>>| {
            let inner = inner.clone();
            let attempts = attempts.clone();
            async move {
                let (parts, body) = req.into_parts();
                loop {
                    let mut r = Request::new(body.clone());
                    *r.method_mut() = parts.method.clone();
                    *r.uri_mut() = parts.uri.clone();
                    *r.headers_mut() = parts.headers.clone();
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let res = inner.clone().oneshot(r).await?;
                    if res.status() != StatusCode::TOO_MANY_REQUESTS {
                        return Ok(res);
                    }
                }
            }
        })
    }

    struct Figures {
        ok: usize,
        failed: usize,
        attempts: usize,
        limited: u64,
        elapsed: Duration,
        best: Duration,
    }

    async fn run(accounting: OutputAccounting, configured: bool, n: usize) -> Figures {
        let limits = SimLimits::per_minute(50, 30_000, 8_000);
        let api = SimApi::builder()
            .model(MODEL, limits)
            .output_accounting(accounting)
            .seed(42)
            .build();
        let workload = Workload::new(n, 32)
            .seed(7)
            .models([MODEL])
            .input_tokens(200..=2_000)
            .max_tokens(256..=1_024)
            .output_fraction(0.2..=1.0);
        let state = if configured {
            RateLimitState::with_limits(Limits::per_minute(50, 30_000, 8_000))
        } else {
            RateLimitState::new()
        };
        let label = format!("{accounting:?} configured={configured}");
        run_with(&label, api, workload, state).await
    }

    async fn run_with(
        label: &str,
        api: SimApi,
        workload: Workload,
        state: RateLimitState,
    ) -> Figures {
        let limited = RateLimitLayer::with_state(state.clone()).layer(api.clone());
        let attempts = Arc::new(AtomicUsize::new(0));
        let report = workload.run(retry_429(limited, attempts.clone())).await;
        let best = workload.theoretical_best(&api);
        let f = Figures {
            ok: report.ok(),
            failed: report.failed(),
            attempts: attempts.load(Ordering::Relaxed),
            limited: api.counters().rate_limited(),
            elapsed: report.elapsed(),
            best,
        };
        let corrections: Vec<String> = state
            .snapshot()
            .iter()
            .map(|s| format!("{}: {:.3}", s.key(), s.input_correction()))
            .collect();
        println!(
            "{label}: ok {} failed {} attempts {} 429s {} ({:.2}%) \
             elapsed {:.1} s, T* {:.1} s, goodput ratio {:.3}, input correction {corrections:?}",
            f.ok,
            f.failed,
            f.attempts,
            f.limited,
            100.0 * f.limited as f64 / f.attempts as f64,
            f.elapsed.as_secs_f64(),
            f.best.as_secs_f64(),
            f.best.as_secs_f64() / f.elapsed.as_secs_f64(),
        );
        f
    }

    fn check(f: &Figures, n: usize) {
        assert_eq!((f.ok, f.failed), (n, 0));
        assert!(
            f.limited as f64 <= 0.01 * f.attempts as f64,
            "{} 429s in {} attempts",
            f.limited,
            f.attempts
        );
        assert!(
            f.elapsed.as_secs_f64() <= 1.05 * f.best.as_secs_f64(),
            "elapsed {:?} vs T* {:?}",
            f.elapsed,
            f.best
        );
    }

    #[tokio::test(start_paused = true)]
    async fn learned_limits_500_requests_32_callers() {
        let f = run(OutputAccounting::AsProduced, false, 500).await;
        check(&f, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn learned_limits_reserve_max_tokens_accounting() {
        let f = run(OutputAccounting::ReserveMaxTokens, false, 500).await;
        check(&f, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn configured_limits_500_requests_32_callers() {
        let f = run(OutputAccounting::AsProduced, true, 500).await;
        check(&f, 500);
    }

    /// The same burst when input tokens, then requests, are the binding limit.
    #[tokio::test(start_paused = true)]
    async fn input_bound_and_request_bound() {
        for (label, limits) in [
            ("input-bound", SimLimits::per_minute(500, 20_000, 200_000)),
            ("request-bound", SimLimits::per_minute(30, 200_000, 200_000)),
        ] {
            let api = SimApi::builder().model(MODEL, limits).seed(5).build();
            let workload = Workload::new(300, 32)
                .seed(13)
                .models([MODEL])
                .input_tokens(200..=2_000)
                .max_tokens(256..=1_024)
                .output_fraction(0.2..=1.0);
            let f = run_with(label, api, workload, RateLimitState::new()).await;
            check(&f, 300);
        }
    }

    /// The limits change mid-run, down then up: the newest `*-limit` wins.
    #[tokio::test(start_paused = true)]
    async fn limits_lowered_then_raised_mid_run() {
        let limits = SimLimits::per_minute(50, 30_000, 8_000);
        let api = SimApi::builder()
            .model(MODEL, limits)
            .faults(
                Faults::new()
                    .window(
                        Duration::from_secs(200)..Duration::from_secs(500),
                        Fault::LimitChange {
                            limits: SimLimits::per_minute(50, 30_000, 4_000),
                        },
                    )
                    .from(
                        Duration::from_secs(500),
                        Fault::LimitChange {
                            limits: SimLimits::per_minute(100, 60_000, 16_000),
                        },
                    ),
            )
            .seed(9)
            .build();
        let workload = Workload::new(500, 32)
            .seed(7)
            .models([MODEL])
            .input_tokens(200..=2_000)
            .max_tokens(256..=1_024)
            .output_fraction(0.2..=1.0);
        let f = run_with("limit change", api, workload, RateLimitState::new()).await;
        assert_eq!((f.ok, f.failed), (500, 0));
        assert!(
            f.limited as f64 <= 0.01 * f.attempts as f64,
            "{} 429s",
            f.limited
        );
        // 200 s at 8,000/min, 300 s at 4,000/min, then 16,000/min for the rest of 187,536.
        let output = 187_536.0 - 8_000.0 - 200.0 * 8_000.0 / 60.0 - 300.0 * 4_000.0 / 60.0;
        let best = 500.0 + output / (16_000.0 / 60.0);
        println!("limit change: best {best:.1} s");
        assert!(
            f.elapsed.as_secs_f64() <= 1.05 * best,
            "{:?} vs {best}",
            f.elapsed
        );
    }

    /// Two models with different limits (keyed by the body's `model`), and a server whose clock
    /// is an hour ahead (resets are read against its `date`).
    #[tokio::test(start_paused = true)]
    async fn several_models_and_a_skewed_server_clock() {
        let api = SimApi::builder()
            .model("model-a", SimLimits::per_minute(50, 30_000, 8_000))
            .model("model-b", SimLimits::per_minute(40, 20_000, 6_000))
            .faults(Faults::new().from(Duration::ZERO, Fault::ClockSkew { offset_secs: 3_600 }))
            .seed(3)
            .build();
        let workload = Workload::new(400, 32)
            .seed(11)
            .models(["model-a", "model-b"])
            .input_tokens(200..=2_000)
            .max_tokens(256..=1_024)
            .output_fraction(0.2..=1.0);
        let f = run_with(
            "two models, skewed clock",
            api,
            workload,
            RateLimitState::new(),
        )
        .await;
        check(&f, 400);
    }
}

// ---------------------------------------------------------------------------------------------
// Learning from each header dialect.

mod dialects {
    use super::*;
    use tower_llm_limits::rate_limit::KeySnapshot;

    /// Sends one probe (1 request, 1,000 input, 1,000 output) to a server answering `headers`,
    /// returns what the limiter learned.
    async fn learn(headers: &[(&str, &str)]) -> KeySnapshot {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let server = service_fn(move |_req: Request<String>| {
            let mut res = Response::builder();
            for (k, v) in &headers {
                res = res.header(k, v);
            }
            std::future::ready(res.body(String::new()).map_err(BoxError::from))
        });
        let state = RateLimitState::new();
        RateLimitLayer::with_state(state.clone())
            .layer(server)
            .oneshot(req("probe", Cost::new(1, 1_000, 1_000)))
            .await
            .unwrap();
        state.key_snapshot(&RateLimitKey::global()).unwrap()
    }

    fn capacity_and_level(s: &KeySnapshot, d: Dimension) -> (u64, u64) {
        let b = s.bucket(d).unwrap_or_else(|| panic!("no {d} bucket"));
        (b.capacity(), b.level())
    }

    const DATE: &str = "Thu, 01 Jan 2026 00:00:00 GMT";

    #[tokio::test(start_paused = true)]
    async fn anthropic() {
        let s = learn(&[
            ("date", DATE),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:02Z"),
            ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ("anthropic-ratelimit-input-tokens-remaining", "29000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-01-01T00:00:02Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "8000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2026-01-01T00:00:00Z",
            ),
            ("anthropic-ratelimit-tokens-limit", "30000"),
            ("anthropic-ratelimit-tokens-remaining", "29000"),
            ("anthropic-ratelimit-tokens-reset", "2026-01-01T00:00:02Z"),
        ])
        .await;
        assert_eq!(capacity_and_level(&s, Dimension::Requests), (50, 49));
        // 29,000 is rounded to the thousand: the conservative edge is 28,500.
        assert_eq!(
            capacity_and_level(&s, Dimension::InputTokens),
            (30_000, 28_500)
        );
        // No output counted yet; the probe's 1,000 reserved stay, and the reset's resolution
        // (+1 s = 134 tokens) is taken.
        assert_eq!(
            capacity_and_level(&s, Dimension::OutputTokens),
            (8_000, 8_000 - 134 - 1_000)
        );
        // `tokens` repeats the input bucket: no combined bucket.
        assert!(s.bucket(Dimension::Tokens).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn openai() {
        let s = learn(&[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "60000"),
            ("x-ratelimit-remaining-tokens", "58000"),
            ("x-ratelimit-reset-tokens", "2s"),
        ])
        .await;
        assert_eq!(capacity_and_level(&s, Dimension::Requests), (500, 499));
        // Combined tokens: the probe's output is not assumed to be in the reading.
        assert_eq!(capacity_and_level(&s, Dimension::Tokens), (60_000, 57_000));
        assert!(s.bucket(Dimension::InputTokens).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ietf_structured() {
        let s = learn(&[
            ("ratelimit-policy", "\"burst\";q=100;w=60"),
            ("ratelimit", "\"burst\";r=50;t=30"),
        ])
        .await;
        assert_eq!(capacity_and_level(&s, Dimension::Requests), (100, 50));
        assert_eq!(s.cooldown_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ietf_legacy() {
        let s = learn(&[
            ("ratelimit-limit", "10"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "7"),
        ])
        .await;
        assert_eq!(capacity_and_level(&s, Dimension::Requests), (10, 0));
        // A fixed window with nothing left: held until it resets.
        assert_eq!(s.cooldown_until(), Some(Instant::now() + secs(7.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn github() {
        let s = learn(&[
            ("date", DATE),
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "59"),
            ("x-ratelimit-reset", "1767225630"),
            ("x-ratelimit-used", "1"),
        ])
        .await;
        assert_eq!(capacity_and_level(&s, Dimension::Requests), (60, 59));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tier_upgrade_takes_effect_at_the_next_response() {
        let limit = Arc::new(Mutex::new("50"));
        let l = limit.clone();
        let server = service_fn(move |_req: Request<String>| {
            let limit = *l.lock().unwrap();
            let res = Response::builder()
                .header("anthropic-ratelimit-requests-limit", limit)
                .header("anthropic-ratelimit-requests-remaining", "0")
                .body(String::new())
                .map_err(BoxError::from);
            std::future::ready(res)
        });
        let state = RateLimitState::new();
        let svc = RateLimitLayer::with_state(state.clone()).layer(server);
        let key = RateLimitKey::global();
        svc.clone()
            .oneshot(req("a", Cost::new(1, 0, 0)))
            .await
            .unwrap();
        let cap = |s: &RateLimitState| {
            s.key_snapshot(&key)
                .unwrap()
                .bucket(Dimension::Requests)
                .unwrap()
                .capacity()
        };
        assert_eq!(cap(&state), 50);
        // Empty bucket: the next request waits 1.2 s (one request at 50/min).
        *limit.lock().unwrap() = "1000";
        let start = Instant::now();
        svc.clone()
            .oneshot(req("b", Cost::new(1, 0, 0)))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), secs(1.2));
        assert_eq!(cap(&state), 1_000);
        // Now one request every 60 ms.
        let start = Instant::now();
        svc.oneshot(req("c", Cost::new(1, 0, 0))).await.unwrap();
        assert_eq!(start.elapsed(), secs(0.06));
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, memory, ramp-up.

mod keys {
    use super::*;
    use tower_llm_limits::rate_limit::{HostKey, RampUp, key_fn};

    #[tokio::test(start_paused = true)]
    async fn default_key_is_the_model_of_a_json_body() {
        let (inner, _) = recorder(Instant::now(), Duration::ZERO, StatusCode::OK);
        let state = RateLimitState::with_limits(Limits::new().requests(10));
        let svc = RateLimitLayer::with_state(state.clone()).layer(inner);
        let body = r#"{"model":"claude-haiku-4-5","max_tokens":300,"messages":[{"role":"user","content":"0123456"}]}"#;
        svc.clone()
            .oneshot(Request::new(body.to_string()))
            .await
            .unwrap();
        svc.oneshot(Request::new("not json".to_string()))
            .await
            .unwrap();
        let keys: Vec<String> = state
            .snapshot()
            .iter()
            .map(|s| s.key().to_string())
            .collect();
        assert_eq!(keys, ["*", "claude-haiku-4-5"]);
        // The JSON estimate: 7 bytes / 3.5 + 4 per message; output = max_tokens.
        let snap = state
            .key_snapshot(&RateLimitKey::new("claude-haiku-4-5"))
            .unwrap();
        assert_eq!(snap.bucket(Dimension::Requests).unwrap().level(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn host_and_closure_keys() {
        let (inner, _) = recorder(Instant::now(), Duration::ZERO, StatusCode::OK);
        let state = RateLimitState::with_limits(Limits::new().requests(10));
        let svc = RateLimitLayer::with_state(state.clone())
            .key_fn(HostKey::new())
            .layer(inner.clone());
        let mut r = req("x", Cost::new(1, 0, 0));
        *r.uri_mut() = "https://api.anthropic.com/v1/messages".parse().unwrap();
        svc.oneshot(r).await.unwrap();
        let svc = RateLimitLayer::with_state(state.clone())
            .key_fn(key_fn(|r: &Request<String>| {
                RateLimitKey::new(format!("team-{}", r.body()))
            }))
            .layer(inner);
        svc.oneshot(req("a", Cost::new(1, 0, 0))).await.unwrap();
        let keys: Vec<String> = state
            .snapshot()
            .iter()
            .map(|s| s.key().to_string())
            .collect();
        assert_eq!(keys, ["api.anthropic.com", "team-a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_evicted_busy_ones_never() {
        let state = RateLimitState::builder()
            .limits(Limits::new().requests(1))
            .max_keys(2)
            .build();
        let (inner, _) = recorder(Instant::now(), Duration::ZERO, StatusCode::OK);
        let svc = RateLimitLayer::with_state(state.clone()).layer(inner);
        let keyed = |key: &str| {
            let mut r = req(key, Cost::new(1, 0, 0));
            r.extensions_mut().insert(RateLimitKey::new(key));
            r
        };
        svc.clone().oneshot(keyed("a")).await.unwrap();
        // b is busy: its second request waits a minute.
        svc.clone().oneshot(keyed("b")).await.unwrap();
        let waiting = tokio::spawn(svc.clone().oneshot(keyed("b")));
        tokio::task::yield_now().await;
        svc.clone().oneshot(keyed("c")).await.unwrap();
        let keys = |s: &RateLimitState| -> Vec<String> {
            s.snapshot().iter().map(|s| s.key().to_string()).collect()
        };
        // a (idle, least recently used) made room for c; b stays.
        assert_eq!(keys(&state), ["b", "c"]);
        svc.clone().oneshot(keyed("d")).await.unwrap();
        assert_eq!(keys(&state), ["b", "d"]);
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ramp_up_limits_the_first_burst() {
        let start = Instant::now();
        let state = RateLimitState::builder()
            .limits(Limits::new().requests(60))
            .ramp_up(RampUp::new(Duration::from_secs(10)).initial(0.1))
            .build();
        let (inner, log) = recorder(start, Duration::ZERO, StatusCode::OK);
        let svc = RateLimitLayer::with_state(state).layer(inner);
        let mut tasks = Vec::new();
        for i in 0..20 {
            tasks.push(tokio::spawn(
                svc.clone().oneshot(req(&i.to_string(), Cost::new(1, 0, 0))),
            ));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let times: Vec<Duration> = log.lock().unwrap().iter().map(|x| x.1).collect();
        // Without a ramp all 20 would go at once; with it only 10% of 60 go at first.
        let at_once = times.iter().filter(|t| t.is_zero()).count();
        assert_eq!(at_once, 6);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(*times.last().unwrap() <= secs(10.0));
    }
}
