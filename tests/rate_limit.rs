//! Tests of the header-aware rate limiter on tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_limits::BoxError;
use tower_llm_limits::cost::Cost;
use tower_llm_limits::rate_limit::error::{CostExceedsLimit, WaitTooLong};
use tower_llm_limits::rate_limit::{
    Limits, MaxWait, Priority, RateLimitKey, RateLimitLayer, RateLimitState,
};
use tower_llm_limits::signals::{Dimension, WaitAbsorbed};

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
async fn without_headers_or_limits_one_probe_then_unlimited() {
    let start = Instant::now();
    let (inner, log) = recorder(start, Duration::from_secs(1), StatusCode::OK);
    let svc = RateLimitLayer::new().layer(inner);
    let mut tasks = Vec::new();
    for i in 0..3 {
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
    assert_eq!(times, [secs(0.0), secs(1.0), secs(1.0)]);
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
