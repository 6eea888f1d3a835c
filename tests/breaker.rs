//! Circuit breaker: every transition, keying, eviction, probe-slot release, and the overload
//! acceptance scenarios, on tokio's paused clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceExt};
use tower_llm_limits::BoxError;
use tower_llm_limits::breaker::error::Open;
use tower_llm_limits::breaker::{
    CircuitBreaker, CircuitBreakerLayer, Growth, Policy, Reason, State, Window,
};
use tower_llm_limits::signals::{Classify, DefaultClassifier, OutcomeKind, classify_fn};

use support::sim::message;
use support::upstream::{Reply, Upstream, open_loop, request};
use tower_llm_limits::retry::{Policy as RetryPolicy, Retry};
use tower_llm_limits_sim::{Fault, Faults, Limits, SimApi};

type Res = Result<Response<Full<Bytes>>, BoxError>;

/// The default policy without jitter, so open durations are exact.
fn exact() -> Policy {
    Policy::new().jitter(0.0)
}

async fn send<S>(svc: &mut S) -> Res
where
    S: Service<http::Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError>,
{
    svc.ready().await?.call(request("claude-sonnet-4-5")).await
}

fn status(res: &Res) -> Option<u16> {
    res.as_ref().ok().map(|r| r.status().as_u16())
}

fn open_error(res: Res) -> Open {
    match res {
        Ok(r) => panic!("expected an Open error, got {}", r.status()),
        Err(e) => match e.downcast::<Open>() {
            Ok(open) => *open,
            Err(e) => panic!("expected an Open error, got {e}"),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_overloads_open_it_and_nothing_reaches_the_api_while_open() {
    let api = Upstream::always(529);
    let mut svc = CircuitBreaker::new(api.clone(), exact());
    for _ in 0..4 {
        assert_eq!(status(&send(&mut svc).await), Some(529));
        assert_eq!(svc.state(), State::Closed);
    }
    assert_eq!(status(&send(&mut svc).await), Some(529));
    let t0 = Instant::now();
    assert_eq!(
        svc.state(),
        State::Open {
            until: t0 + Duration::from_secs(10)
        }
    );
    for _ in 0..100 {
        let open = open_error(send(&mut svc).await);
        assert_eq!(open.key(), None);
        assert_eq!(open.until(), t0 + Duration::from_secs(10));
        assert_eq!(open.retry_after(), Duration::from_secs(10));
        assert!(!open.is_half_open());
    }
    assert_eq!(api.received(), 5);
}

#[tokio::test(start_paused = true)]
async fn rate_limits_spend_limits_and_client_errors_never_open_it() {
    for code in [429, 400, 401, 404, 413] {
        let api = Upstream::always(code);
        let mut svc = CircuitBreaker::new(api.clone(), exact().failure_rate(0.01, 1));
        for _ in 0..1_000 {
            assert_eq!(status(&send(&mut svc).await), Some(code));
        }
        assert_eq!(svc.state(), State::Closed, "status {code}");
        assert_eq!(api.received(), 1_000);
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limits_neither_break_nor_extend_a_run_of_overloads() {
    // 4 × 529, then many 429s, then one 529: the fifth overload in a row trips it.
    let api = Upstream::new(Duration::ZERO, |_, n| match n {
        0..=3 => Reply::Status(529),
        4..=53 => Reply::Status(429),
        _ => Reply::Status(529),
    });
    let mut svc = CircuitBreaker::new(api, exact().without_failure_rate());
    for _ in 0..54 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(svc.state(), State::Closed);
    send(&mut svc).await.unwrap();
    assert!(matches!(svc.state(), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_success_breaks_the_run() {
    let api = Upstream::new(Duration::ZERO, |_, n| {
        if n % 5 == 4 {
            Reply::Status(200)
        } else {
            Reply::Status(529)
        }
    });
    let mut svc = CircuitBreaker::new(api, exact().without_failure_rate());
    for _ in 0..100 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(svc.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window_needs_the_minimum_calls() {
    // Alternating 200/529: 50 % failures.
    let api = Upstream::new(Duration::ZERO, |_, n| {
        if n % 2 == 0 {
            Reply::Status(200)
        } else {
            Reply::Status(529)
        }
    });
    let policy = exact()
        .consecutive_failures(0)
        .window(Window::Count(10))
        .failure_rate(0.5, 10);
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let seen = transitions.clone();
    let policy = policy.on_transition(move |t| seen.lock().unwrap().push(t.reason()));
    let mut svc = CircuitBreaker::new(api, policy);
    for _ in 0..9 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(svc.state(), State::Closed, "9 calls are below the minimum");
    send(&mut svc).await.unwrap();
    assert!(matches!(svc.state(), State::Open { .. }));
    assert_eq!(
        *transitions.lock().unwrap(),
        [Reason::FailureRate {
            failures: 5,
            calls: 10
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_count_window_forgets_old_calls() {
    // 4 failures, 6 successes, 4 failures: 8 of 14 calls failed (57 %), but only 4 of the
    // last 10 (40 %).
    let api = Upstream::new(Duration::ZERO, |_, n| match n {
        0..=3 | 10..=13 => Reply::Status(529),
        _ => Reply::Status(200),
    });
    let policy = exact()
        .consecutive_failures(0)
        .window(Window::Count(10))
        .failure_rate(0.5, 10);
    let mut svc = CircuitBreaker::new(api, policy);
    for _ in 0..14 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(svc.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_calls() {
    let api = Upstream::always(529);
    let policy = exact()
        .consecutive_failures(0)
        .window(Window::Time(Duration::from_secs(10)))
        .failure_rate(0.5, 3);
    let mut svc = CircuitBreaker::new(api, policy);
    // Two failures every 10 s never make three in the window.
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
        send(&mut svc).await.unwrap();
        advance(Duration::from_secs(10)).await;
        assert_eq!(svc.state(), State::Closed);
    }
    // Three within 10 s do.
    send(&mut svc).await.unwrap();
    advance(Duration::from_secs(5)).await;
    send(&mut svc).await.unwrap();
    advance(Duration::from_secs(4)).await;
    assert_eq!(svc.state(), State::Closed);
    send(&mut svc).await.unwrap();
    assert!(matches!(svc.state(), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn half_open_probes_close_it() {
    // Overloaded for the first 5 calls, healthy afterwards.
    let api = Upstream::new(Duration::from_millis(100), |_, n| {
        if n < 5 {
            Reply::Status(529)
        } else {
            Reply::Status(200)
        }
    });
    let hook = Arc::new(Mutex::new(Vec::new()));
    let seen = hook.clone();
    let policy = exact()
        .half_open_probes(2)
        .on_transition(move |t| seen.lock().unwrap().push((t.from(), t.to(), t.reason())));
    let svc = CircuitBreaker::new(api.clone(), policy);
    for _ in 0..5 {
        send(&mut svc.clone()).await.unwrap();
    }
    let opened = Instant::now();
    advance(Duration::from_secs(10)).await;
    assert_eq!(svc.state(), State::HalfOpen);

    // Two probes go through; a third call meanwhile fails fast.
    let p1 = tokio::spawn(send_owned(svc.clone()));
    let p2 = tokio::spawn(send_owned(svc.clone()));
    tokio::task::yield_now().await;
    let third = open_error(send(&mut svc.clone()).await);
    assert!(third.is_half_open());
    assert_eq!(status(&p1.await.unwrap()), Some(200));
    assert_eq!(status(&p2.await.unwrap()), Some(200));
    assert_eq!(svc.state(), State::Closed);
    assert_eq!(api.received(), 7);

    let until = opened + Duration::from_secs(10);
    assert_eq!(
        *hook.lock().unwrap(),
        [
            (
                State::Closed,
                State::Open { until },
                Reason::ConsecutiveFailures(5)
            ),
            (State::Open { until }, State::HalfOpen, Reason::OpenElapsed),
            (State::HalfOpen, State::Closed, Reason::ProbesSucceeded),
        ]
    );
}

async fn send_owned<S>(mut svc: S) -> Res
where
    S: Service<http::Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError>,
{
    send(&mut svc).await
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_it_for_longer() {
    // By default the open duration grows linearly (Envoy's rule): 10 s, 20 s, 30 s, then the
    // cap; doubling gives 10 s, 20 s, then the cap.
    let linear = exact();
    let doubling = exact().growth(Growth::Doubling);
    for (policy, open_fors) in [(linear, [10, 20, 30, 35]), (doubling, [10, 20, 35, 35])] {
        let api = Upstream::always(529);
        let mut svc = CircuitBreaker::new(
            api.clone(),
            policy
                .open_duration(Duration::from_secs(10))
                .max_open_duration(Duration::from_secs(35)),
        );
        for _ in 0..5 {
            send(&mut svc).await.unwrap();
        }
        for (open_for, received) in open_fors.into_iter().zip(6..) {
            let at = Instant::now();
            assert_eq!(
                svc.state(),
                State::Open {
                    until: at + Duration::from_secs(open_for)
                }
            );
            advance(Duration::from_secs(open_for)).await;
            assert_eq!(status(&send(&mut svc).await), Some(529), "the probe");
            assert_eq!(api.received(), received);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn linear_growth_and_close_after_fewer_successes() {
    let api = Upstream::new(Duration::ZERO, |_, n| match n {
        0..=5 => Reply::Status(529),
        _ => Reply::Status(200),
    });
    let policy = exact()
        .growth(Growth::Linear)
        .half_open_probes(3)
        .close_after(1);
    let mut svc = CircuitBreaker::new(api, policy);
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    advance(Duration::from_secs(10)).await;
    // With close_after(1) of 3 probes, closing stays possible after two failures: a single
    // failed probe does not reopen it…
    assert_eq!(status(&send(&mut svc).await), Some(529));
    assert_eq!(svc.state(), State::HalfOpen);
    // …and one success closes it.
    assert_eq!(status(&send(&mut svc).await), Some(200));
    assert_eq!(svc.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_trip_soon_after_closing_continues_the_growth_a_late_one_restarts_it() {
    let api = Upstream::new(Duration::ZERO, |t, _| {
        let s = t.as_secs();
        if s < 5 || (20..25).contains(&s) || s >= 400 {
            Reply::Status(529)
        } else {
            Reply::Status(200)
        }
    });
    let mut svc = CircuitBreaker::new(api, exact().half_open_probes(1));
    let trip = |svc: &CircuitBreaker<Upstream>| match svc.state() {
        State::Open { until } => until - Instant::now(),
        s => panic!("expected open, got {s:?}"),
    };
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(trip(&svc), Duration::from_secs(10));
    advance(Duration::from_secs(10)).await;
    send(&mut svc).await.unwrap(); // probe at 10 s succeeds
    assert_eq!(svc.state(), State::Closed);
    advance(Duration::from_secs(10)).await; // 20 s: overloaded again, 10 s after closing
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(trip(&svc), Duration::from_secs(20), "second trip in a row");
    advance(Duration::from_secs(20)).await;
    send(&mut svc).await.unwrap(); // probe at 40 s succeeds
    assert_eq!(svc.state(), State::Closed);
    advance(Duration::from_secs(360)).await; // 400 s: longer than the 300 s memory
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(trip(&svc), Duration::from_secs(10), "growth restarted");
}

/// The default classifier plus a test-local reading of `retry-after` (whole seconds).
fn with_retry_after() -> impl Classify + Clone {
    classify_fn(|status, headers, hints, api_error| {
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(Duration::from_secs);
        DefaultClassifier::new()
            .classify_response(status, headers, hints, api_error)
            .with_retry_after(retry_after)
    })
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_the_overload_keeps_it_open_at_least_that_long() {
    let api = Upstream::new(Duration::ZERO, |_, _| Reply::StatusRetryAfter(529, 42));
    let mut svc = CircuitBreaker::with_classifier(api, exact(), with_retry_after());
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    let open = open_error(send(&mut svc).await);
    assert_eq!(open.retry_after(), Duration::from_secs(42));

    // An absurd retry-after is capped at the maximum open duration.
    let api = Upstream::new(Duration::ZERO, |_, _| Reply::StatusRetryAfter(529, 86_400));
    let mut svc = CircuitBreaker::with_classifier(api, exact(), with_retry_after());
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    let open = open_error(send(&mut svc).await);
    assert_eq!(open.retry_after(), Duration::from_secs(300));
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_the_open_duration_within_bounds() {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..20 {
        let mut svc = CircuitBreaker::new(Upstream::always(529), Policy::new().seed(seed));
        for _ in 0..5 {
            send(&mut svc).await.unwrap();
        }
        let open = open_error(send(&mut svc).await).retry_after();
        assert!(
            open > Duration::from_secs(8) && open <= Duration::from_secs(10),
            "{open:?}"
        );
        seen.insert(open);
    }
    assert!(seen.len() > 10, "jitter varies: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot() {
    let api = Upstream::new(Duration::ZERO, |_, n| match n {
        0..=4 => Reply::Status(529),
        5 => Reply::Hang,
        _ => Reply::Status(200),
    });
    let mut svc = CircuitBreaker::new(api.clone(), exact().half_open_probes(1));
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    advance(Duration::from_secs(10)).await;
    let mut probe = tokio_test::task::spawn(send_owned(svc.clone()));
    assert!(probe.poll().is_pending());
    assert_eq!(api.received(), 6, "the probe is in flight");
    assert!(open_error(send(&mut svc).await).is_half_open());
    drop(probe);
    assert_eq!(
        status(&send(&mut svc).await),
        Some(200),
        "the slot was freed"
    );
    assert_eq!(svc.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_from_an_earlier_state_is_not_counted() {
    // A slow call admitted while closed ends with 529 after the breaker tripped and half-opened:
    // it must not count as a failed probe.
    let api = Upstream::new(Duration::ZERO, |_, n| match n {
        0 => Reply::StatusRetryAfter(529, 0),
        1..=5 => Reply::Status(529),
        _ => Reply::Status(200),
    });
    let slow = tower::service_fn({
        let api = api.clone();
        move |req| {
            let mut api = api.clone();
            async move {
                let first = api.received() == 0;
                let res = api.call(req).await;
                if first {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                }
                res
            }
        }
    });
    let svc = CircuitBreaker::new(slow, exact().half_open_probes(1));
    let slow_call = tokio::spawn(send_owned(svc.clone()));
    tokio::task::yield_now().await;
    for _ in 0..5 {
        send(&mut svc.clone()).await.unwrap();
    }
    assert!(matches!(svc.state(), State::Open { .. }));
    advance(Duration::from_secs(10)).await;
    assert_eq!(svc.state(), State::HalfOpen);
    advance(Duration::from_secs(5)).await;
    assert_eq!(status(&slow_call.await.unwrap()), Some(529));
    assert_eq!(
        svc.state(),
        State::HalfOpen,
        "the late 529 did not reopen it"
    );
    send(&mut svc.clone()).await.unwrap();
    assert_eq!(svc.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_breaker() {
    let layer = CircuitBreakerLayer::new(exact());
    let api = Upstream::always(529);
    let a = tower::Layer::layer(&layer, api.clone());
    let b = tower::Layer::layer(&layer, api.clone());
    for i in 0..5 {
        let mut svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        send(&mut svc).await.unwrap();
    }
    assert!(matches!(layer.state(), State::Open { .. }));
    open_error(send(&mut b.clone()).await);
    open_error(send(&mut a.clone()).await);
    // A breaker of its own does not share.
    let mut own = CircuitBreaker::new(api.clone(), exact());
    assert_eq!(status(&send(&mut own).await), Some(529));
}

#[tokio::test(start_paused = true)]
async fn one_breaker_per_host() {
    let a = Upstream::always(529);
    let b = Upstream::always(200);
    let route = tower::service_fn({
        let (a, b) = (a.clone(), b.clone());
        move |req: http::Request<Full<Bytes>>| {
            let mut target = if req.uri().host() == Some("a.example") {
                a.clone()
            } else {
                b.clone()
            };
            async move { target.call(req).await }
        }
    });
    let mut svc = CircuitBreaker::new(route, exact().key_by_host());
    let to = |host: &str| {
        let mut req = request("m");
        *req.uri_mut() = format!("http://{host}/v1/messages").parse().unwrap();
        req
    };
    for _ in 0..5 {
        svc.ready()
            .await
            .unwrap()
            .call(to("a.example"))
            .await
            .unwrap();
        svc.ready()
            .await
            .unwrap()
            .call(to("b.example"))
            .await
            .unwrap();
    }
    let open = open_error(svc.ready().await.unwrap().call(to("a.example")).await);
    assert_eq!(open.key(), Some("a.example"));
    assert!(matches!(svc.state_of("a.example"), State::Open { .. }));
    assert_eq!(svc.state_of("b.example"), State::Closed);
    assert_eq!(
        svc.state(),
        State::Closed,
        "the unkeyed breaker is untouched"
    );
    let ok = svc
        .ready()
        .await
        .unwrap()
        .call(to("b.example"))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!((a.received(), b.received()), (5, 6));
}

#[tokio::test(start_paused = true)]
async fn idle_closed_breakers_are_evicted_first() {
    let api = Upstream::new(Duration::ZERO, |_, _| Reply::Status(529));
    let policy = exact().max_keys(2).key_fn(|parts| {
        parts
            .headers
            .get("x-model")
            .map(|v| v.to_str().unwrap().to_owned())
    });
    let mut svc = CircuitBreaker::new(api, policy);
    let mut call = async |model: &str| {
        let mut req = request(model);
        req.headers_mut().insert("x-model", model.parse().unwrap());
        svc.ready().await.unwrap().call(req).await
    };
    for _ in 0..5 {
        call("open").await.unwrap();
    }
    advance(Duration::from_secs(1)).await;
    call("old").await.unwrap();
    advance(Duration::from_secs(1)).await;
    // A third key: "open" is the least recently used but open, so "old" goes.
    call("new").await.unwrap();
    let keys: std::collections::HashSet<_> =
        svc.states().into_iter().filter_map(|(k, _)| k).collect();
    assert_eq!(keys, ["open".to_owned(), "new".to_owned()].into());
    assert!(matches!(svc.state_of("open"), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn other_failures_trip_it_only_when_configured() {
    for (reply, kind) in [
        (Reply::Status(500), OutcomeKind::ServerError),
        (Reply::ConnectionError, OutcomeKind::Connection),
    ] {
        let api = Upstream::new(Duration::ZERO, move |_, _| reply);
        let mut by_default = CircuitBreaker::new(api.clone(), exact());
        for _ in 0..20 {
            let _ = send(&mut by_default).await;
        }
        assert_eq!(by_default.state(), State::Closed, "{reply:?}");
        let mut configured =
            CircuitBreaker::new(api, exact().trip_on([OutcomeKind::Overloaded, kind]));
        for _ in 0..5 {
            let _ = send(&mut configured).await;
        }
        assert!(
            matches!(configured.state(), State::Open { .. }),
            "{reply:?}"
        );
    }
}

#[test]
#[should_panic(expected = "must not trip on `rate_limited`")]
fn tripping_on_rate_limits_is_refused() {
    let _ = Policy::new().trip_on([OutcomeKind::RateLimited]);
}

#[tokio::test(start_paused = true)]
async fn an_open_error_is_a_local_decision() {
    let mut svc = CircuitBreaker::new(Upstream::always(529), exact());
    for _ in 0..5 {
        send(&mut svc).await.unwrap();
    }
    let error = send(&mut svc).await.unwrap_err();
    assert_eq!(
        DefaultClassifier::new().classify_error(&*error).kind(),
        OutcomeKind::Rejected
    );
    assert!(
        error.to_string().contains("probing again in 10.000s"),
        "{error}"
    );
    // A breaker below does not count another breaker's refusals.
    let mut outer = CircuitBreaker::new(svc, exact());
    for _ in 0..20 {
        assert!(send(&mut outer).await.is_err());
    }
    assert_eq!(outer.state(), State::Closed);
}

// ---------------------------------------------------------------------------------------------
// Acceptance, against the simulated API: an overload window (`Fault::Overloaded`, every request
// refused with 529) from 10 s to 40 s, open-loop traffic of one request every 200 ms for two
// minutes, 300 ms latency, the crate's retry layer (the SDKs' 2 retries, 0.5 s doubling
// backoff, no retry budget) above the breaker.

const OVERLOAD: std::ops::Range<Duration> = Duration::from_secs(10)..Duration::from_secs(40);
const EVERY: Duration = Duration::from_millis(200);
const REQUESTS: u32 = 600;
const MODEL: &str = "claude-sonnet-4-5";

fn overloaded_sim() -> SimApi {
    SimApi::builder()
        .model(MODEL, Limits::per_minute(100_000, 100_000_000, 100_000_000))
        .latency(Duration::from_millis(300), Duration::ZERO)
        .faults(Faults::new().window(OVERLOAD, Fault::Overloaded { probability: 1.0 }))
        .seed(42)
        .build()
}

/// SDK-like retries: 2 retries, 0.5 s doubling backoff, and no budget (the SDKs have none).
fn sdk_retry<S>(inner: S) -> Retry<S> {
    Retry::new(inner, RetryPolicy::new().without_budget().seed(3))
}

/// Transitions seen by the hook: (time since start, from, to, requests the API had received).
type Log = Arc<Mutex<Vec<(Duration, State, State, u64)>>>;

fn logging(policy: Policy, api: &SimApi) -> (Policy, Log) {
    let log: Log = Arc::default();
    let (seen, api, start) = (log.clone(), api.clone(), Instant::now());
    let policy = policy.on_transition(move |t| {
        seen.lock()
            .unwrap()
            .push((t.at() - start, t.from(), t.to(), api.counters().received()))
    });
    (policy, log)
}

#[tokio::test(start_paused = true)]
async fn overload_window_opens_it_keeps_the_api_untouched_and_probes_close_it_after() {
    let api = overloaded_sim();
    let (policy, log) = logging(Policy::new().seed(1), &api);
    let breaker = CircuitBreaker::new(api.clone(), policy);
    let svc = sdk_retry(breaker.clone());
    let results = open_loop(EVERY, REQUESTS, || {
        svc.clone().oneshot(message(MODEL, 100, 64, 10))
    })
    .await;
    let log = log.lock().unwrap().clone();

    // Opens within the window, shortly after it starts (five overloads in a row).
    let (opened, from, to, _) = log[0];
    assert_eq!(
        (from, matches!(to, State::Open { .. })),
        (State::Closed, true)
    );
    assert!(OVERLOAD.contains(&opened) && opened < OVERLOAD.start + Duration::from_secs(2));

    // Nothing reaches the API while open: its count is the same when the breaker half-opens.
    let mut openings = 0;
    for pair in log.windows(2) {
        if let [
            (_, _, State::Open { .. }, before),
            (_, State::Open { .. }, State::HalfOpen, after),
        ] = pair
        {
            assert_eq!(before, after, "{log:?}");
            openings += 1;
        }
    }
    assert!(openings >= 2, "{log:?}");

    // Closes only after the window ended, through the probes of the first half-open state
    // after it (within their latency), and stays closed.
    let [
        ..,
        (half_open, _, State::HalfOpen, _),
        (closed, State::HalfOpen, State::Closed, _),
    ] = log[..]
    else {
        panic!("expected half-open then closed at the end: {log:?}")
    };
    assert!(half_open >= OVERLOAD.end, "{log:?}");
    assert!(closed - half_open < Duration::from_secs(1), "{log:?}");
    assert!(
        log.iter()
            .all(|(at, _, to, _)| *to != State::Closed || *at >= OVERLOAD.end)
    );
    for (at, res) in &results {
        if *at >= closed {
            assert_eq!(status(res), Some(200), "request started at {at:?}");
        }
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(api.counters().rate_limited(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_the_breaker_the_overloaded_api_gets_at_most_a_tenth_of_the_attempts() {
    let alone = overloaded_sim();
    let svc = sdk_retry(alone.clone());
    open_loop(EVERY, REQUESTS, || {
        svc.clone().oneshot(message(MODEL, 100, 64, 10))
    })
    .await;

    let guarded = overloaded_sim();
    let svc = sdk_retry(CircuitBreaker::new(guarded.clone(), Policy::new().seed(1)));
    open_loop(EVERY, REQUESTS, || {
        svc.clone().oneshot(message(MODEL, 100, 64, 10))
    })
    .await;

    let (without, with) = (
        alone.counters().overloaded(),
        guarded.counters().overloaded(),
    );
    eprintln!(
        "529s sent by the overloaded API: retry alone {without}, retry + breaker {with} \
         (requests received {} vs {})",
        alone.counters().received(),
        guarded.counters().received()
    );
    // 150 requests start inside the window; alone, each makes 3 attempts (a few of them
    // outside the window).
    assert!(without > 400, "{without}");
    assert!(with * 10 <= without, "{with} vs {without}");
}

fn overloaded() -> Response<Full<Bytes>> {
    Response::builder()
        .status(529)
        .body(Full::default())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_never_polls_the_inner_service_and_an_admitted_call_waits_for_it() {
    let (mock, mut handle) =
        tower_test::mock::pair::<http::Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let mock = tower::util::MapErr::new(mock, |e: BoxError| e);
    let mut svc = CircuitBreaker::new(mock, exact().half_open_probes(1));

    // The inner service is not ready: the admitted call's future waits for it.
    handle.allow(0);
    let mut call = tokio_test::task::spawn(svc.ready().await.unwrap().call(request("m")));
    assert!(call.poll().is_pending());
    handle.allow(1);
    assert!(call.is_woken());
    assert!(call.poll().is_pending());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(overloaded());
    assert_eq!(status(&call.await), Some(529));

    for _ in 0..4 {
        handle.allow(1);
        // The call is sent when its future is polled.
        let fut = tokio::spawn(svc.ready().await.unwrap().call(request("m")));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(overloaded());
        fut.await.unwrap().unwrap();
    }
    assert!(matches!(svc.state(), State::Open { .. }));

    // Open: ready at once, refused at once, and the inner service is neither polled nor called
    // (the mock would panic on a call beyond its allowance).
    handle.allow(0);
    let mut ready = tokio_test::task::spawn(svc.ready());
    assert!(ready.poll().is_ready());
    drop(ready);
    for _ in 0..10 {
        open_error(svc.call(request("m")).await);
    }
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn when_no_breaker_is_closed_the_least_recently_used_goes() {
    let api = Upstream::always(529);
    let policy = exact().max_keys(2).key_fn(|parts| {
        parts
            .headers
            .get("x-model")
            .map(|v| v.to_str().unwrap().to_owned())
    });
    let layer = CircuitBreakerLayer::new(policy);
    let mut svc = tower::Layer::layer(&layer, api);
    for model in ["a", "b", "c"] {
        for _ in 0..5 {
            let mut req = request(model);
            req.headers_mut().insert("x-model", model.parse().unwrap());
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        advance(Duration::from_secs(1)).await;
    }
    let states = layer.states();
    assert_eq!(
        states.len(),
        3,
        "the unkeyed breaker and two keys: {states:?}"
    );
    assert_eq!(states[0], (None, State::Closed));
    assert_eq!(layer.state_of("a"), State::Closed, "forgotten");
    assert!(matches!(layer.state_of("b"), State::Open { .. }));
    assert!(matches!(layer.state_of("c"), State::Open { .. }));
}

// ---------------------------------------------------------------------------------------------
// A retry layer above the breaker waits for it instead of failing the call.

/// A breaker (exact policy: open 10 s) tripped at t = 0 by five overloads of an upstream that
/// is overloaded during the first `overload` and answers after `latency`.
async fn tripped(
    latency: Duration,
    overload: Duration,
    policy: Policy,
) -> (CircuitBreaker<Upstream>, Upstream) {
    let api = Upstream::overloaded_during(latency, Duration::ZERO..overload);
    let mut breaker = CircuitBreaker::new(api.clone(), policy);
    for _ in 0..5 {
        assert_eq!(status(&send(&mut breaker).await), Some(529));
    }
    assert!(matches!(breaker.state(), State::Open { .. }));
    (breaker, api)
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_the_open_breaker_and_sends_the_call_when_it_probes() {
    let (breaker, api) = tripped(Duration::ZERO, Duration::from_secs(5), exact()).await;
    let budget = tower_llm_limits::retry::Budget::default();
    let retry = Retry::new(
        breaker.clone(),
        RetryPolicy::new().budget(budget.clone()).seed(7),
    );
    let start = Instant::now();
    let response = retry.oneshot(request(MODEL)).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(response.status(), 200);
    // Until the breaker probes again (10 s), plus a jitter of at most a tenth, capped at 1 s.
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(11),
        "{waited:?}"
    );
    // The refused attempt never reached the API and is not counted as an attempt.
    assert_eq!(api.received(), 6);
    let attempts = response
        .extensions()
        .get::<tower_llm_limits::retry::Attempts>()
        .unwrap()
        .get();
    assert_eq!(attempts, 1);
    // The call was the first of the three successful probes that close it.
    assert_eq!(breaker.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_open_longer_than_the_allowed_wait_is_returned_at_once() {
    let (breaker, api) = tripped(Duration::ZERO, Duration::from_secs(5), exact()).await;
    let retry = Retry::new(
        breaker,
        RetryPolicy::new().max_breaker_wait(Duration::from_secs(9)),
    );
    let start = Instant::now();
    let open = open_error(retry.oneshot(request(MODEL)).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(open.retry_after(), Duration::from_secs(10));
    assert_eq!(api.received(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_reopened_breaker_beyond_the_allowed_wait_ends_the_wait() {
    // Overloaded for 100 s: the probe at 10 s fails and the breaker reopens for 20 s, more
    // than the 15 s allowed for one wait.
    let (breaker, api) = tripped(Duration::ZERO, Duration::from_secs(100), exact()).await;
    let retry = Retry::new(
        breaker,
        RetryPolicy::new()
            .max_breaker_wait(Duration::from_secs(15))
            .without_budget()
            .seed(7),
    );
    let start = Instant::now();
    let result = retry.oneshot(request(MODEL)).await;
    let waited = start.elapsed();
    // The probe at 10 s got a 529, retried after the SDK backoff into the reopened breaker,
    // whose 20 s exceed the ceiling: the refusal comes back right then.
    let open = open_error(result);
    assert!(!open.is_half_open());
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
        "{waited:?}"
    );
    assert_eq!(api.received(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_fail_fast_request_gets_the_refusal_at_once() {
    let (breaker, api) = tripped(Duration::ZERO, Duration::from_secs(5), exact()).await;
    let retry = Retry::new(breaker, RetryPolicy::new());
    let mut request = request(MODEL);
    request
        .extensions_mut()
        .insert(tower_llm_limits::breaker::FailFast);
    let start = Instant::now();
    let open = open_error(retry.oneshot(request).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(open.retry_after(), Duration::from_secs(10));
    assert_eq!(api.received(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_refusal_is_retried_after_a_backoff_until_the_probe_closes_it() {
    // One probe slot; the upstream answers after 2 s. A first call takes the probe
    // slot; a second call, refused as half-open, backs off and goes through once the probe
    // succeeded and closed the breaker, 2 s later.
    let (breaker, api) = tripped(
        Duration::from_secs(2),
        Duration::from_secs(9),
        exact().half_open_probes(1),
    )
    .await;
    // The five trips each took 2 s: the breaker opened at 10 s and probes at 20 s.
    let State::Open { .. } = breaker.state() else {
        panic!("open")
    };
    let until = Instant::now() + Duration::from_secs(10);
    tokio::time::sleep_until(until).await;
    let probe = tokio::spawn(breaker.clone().oneshot(request(MODEL)));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let retry = Retry::new(breaker.clone(), RetryPolicy::new().without_budget().seed(7));
    let start = Instant::now();
    let response = retry.oneshot(request(MODEL)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(probe.await.unwrap().unwrap().status(), 200);
    // Backoffs of 0.5, 1 and 2 s (less up to a quarter each): through between 2 s (the probe
    // closed it) and 3.5 s (+ its own 2 s latency).
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took <= Duration::from_millis(5_500),
        "{took:?}"
    );
    assert_eq!(api.received(), 7);
}

#[tokio::test(start_paused = true)]
async fn the_waits_for_a_half_open_breaker_add_up_to_at_most_ten_ceilings() {
    // Five overloads open the breaker for 10 s; its one probe then hangs, so it stays half-open
    // and refuses every other call. A call backs off (8 s at most each time, the ceiling) until
    // its waits would pass 10 × 8 s, then gets the refusal.
    let api = Upstream::new(Duration::ZERO, |_, n| {
        if n < 5 {
            Reply::Status(529)
        } else {
            Reply::Hang
        }
    });
    let mut breaker = CircuitBreaker::new(api.clone(), exact().half_open_probes(1));
    for _ in 0..5 {
        assert_eq!(status(&send(&mut breaker).await), Some(529));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let _probe = tokio::spawn(breaker.clone().oneshot(request(MODEL)));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);

    let retry = Retry::new(
        breaker,
        RetryPolicy::new()
            .max_breaker_wait(Duration::from_secs(8))
            .without_budget()
            .seed(7),
    );
    let start = Instant::now();
    let open = open_error(retry.oneshot(request(MODEL)).await);
    let waited = start.elapsed();
    assert!(open.is_half_open());
    // Backoffs of 0.5, 1, 2, 4 s then 8 s each (less up to a quarter): the total stays within
    // 80 s and stops less than one wait short of it.
    assert!(
        waited > Duration::from_secs(72) && waited <= Duration::from_secs(80),
        "{waited:?}"
    );
    assert_eq!(api.received(), 6);
}

/// REFERENCE.md (Resilience4j): by default the breaker trips at a 50 % failure rate once the
/// count window (the last 20 calls) holds at least 10 calls, and not below 50 %.
#[tokio::test(start_paused = true)]
async fn the_default_failure_rate_rule_is_half_of_at_least_ten_calls() {
    for (fail_every, trips_at) in [(2u64, Some(10)), (3, None)] {
        // Every `fail_every`-th call (1-based) is a 529: never 5 in a row.
        let api = Upstream::new(Duration::ZERO, move |_, n| {
            if (n + 1).is_multiple_of(fail_every) {
                Reply::Status(529)
            } else {
                Reply::Status(200)
            }
        });
        let mut svc = CircuitBreaker::new(api.clone(), exact());
        let mut tripped = None;
        for call in 1..=40 {
            send(&mut svc).await.unwrap();
            if matches!(svc.state(), State::Open { .. }) {
                tripped = Some(call);
                break;
            }
        }
        assert_eq!(tripped, trips_at, "one failure in {fail_every}");
    }
}

/// An open duration too large for the clock (a configured `Duration::MAX`, which a server's
/// huge `retry-after` is clamped to) saturates instead of overflowing `Instant` (issue 19,
/// item 3).
#[tokio::test(start_paused = true)]
async fn an_open_duration_too_large_for_the_clock_does_not_overflow() {
    let api = Upstream::always(529);
    let policy = exact()
        .open_duration(Duration::MAX)
        .max_open_duration(Duration::MAX);
    let mut svc = CircuitBreaker::new(api.clone(), policy);
    for _ in 0..5 {
        assert_eq!(status(&send(&mut svc).await), Some(529));
    }
    assert!(matches!(svc.state(), State::Open { .. }));
    let open = open_error(send(&mut svc).await);
    assert!(open.retry_after() > Duration::from_secs(365 * 24 * 60 * 60));
}
