//! Acceptance tests of the retry layer, on tokio's paused clock.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_limits::BoxError;
use tower_llm_limits::error_body::ErrorBodyLayer;
use tower_llm_limits::rate_limit::WaitAbsorbed;
use tower_llm_limits::retry::error::{BudgetExhausted, DeadlineExceeded, ServerWaitTooLong};
use tower_llm_limits::retry::{
    Attempts, Backoff, Budget, Jitter, Policy, Retry, RetryLayer, SendOnce,
};
use tower_llm_limits::signals::{
    ApiError, Classify, DefaultClassifier, Outcome, OutcomeKind, SignalsLayer, classify_fn,
};

use support::retry::{Scripted, respond, respond_with};
use tower_llm_limits_sim::{Fault, Faults, Limits, SimApi, Workload};

fn request() -> Request<Full<Bytes>> {
    Request::post("http://api.test/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .unwrap()
}

fn attempts<B>(response: &http::Response<B>) -> u32 {
    response.extensions().get::<Attempts>().unwrap().get()
}

/// One call with the default request through `Retry` with `policy`.
async fn send(server: &Scripted, policy: Policy) -> Result<Response<Full<Bytes>>, BoxError> {
    Retry::new(server.clone(), policy).oneshot(request()).await
}

/// A policy without budget and with the given retries, to isolate one behaviour.
fn plain(retries: u32) -> Policy {
    Policy::new().max_retries(retries).without_budget()
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_waited_exactly() {
    let server = Scripted::new(|i| match i {
        0 => respond(429, &[("retry-after", "7")]),
        _ => respond(200, &[]),
    });
    let response = send(&server, plain(2)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    let seen = server.seen();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn retry_after_ms_wins_over_retry_after() {
    let server = Scripted::new(|i| match i {
        0 => respond(429, &[("retry-after", "7"), ("retry-after-ms", "1500")]),
        _ => respond(200, &[]),
    });
    send(&server, plain(2)).await.unwrap();
    assert_eq!(server.gaps_ms(), [1500]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_measured_against_the_date_header() {
    let server = Scripted::new(|i| match i {
        0 => respond(
            503,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("retry-after", "Sun, 06 Nov 1994 08:49:49 GMT"),
            ],
        ),
        _ => respond(200, &[]),
    });
    send(&server, plain(2)).await.unwrap();
    assert_eq!(server.gaps_ms(), [12_000]);
}

#[tokio::test(start_paused = true)]
async fn backoff_sequence_without_jitter() {
    let server = Scripted::new(|_| respond(500, &[]));
    let policy = plain(6).backoff(Backoff::sdk().jitter(Jitter::None));
    let response = send(&server, policy).await.unwrap();
    // The last response is handed back as it is once the retries are used up.
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts(&response), 7);
    assert_eq!(server.gaps_ms(), [500, 1000, 2000, 4000, 8000, 8000]);
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_is_exact_and_within_bounds() {
    for jitter in [
        Jitter::Sdk,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        let server = Scripted::new(|_| respond(529, &[]));
        let backoff = Backoff::sdk().jitter(jitter);
        let policy = plain(5).backoff(backoff).seed(42);
        let service = Retry::new(server.clone(), policy);
        service.oneshot(request()).await.unwrap();

        // The first call of a policy seeded with 42 draws from Rng::with_seed(42).
        let mut rng = fastrand::Rng::with_seed(42);
        let mut previous = Duration::ZERO;
        let mut expected = Vec::new();
        for n in 0..5 {
            let wait = backoff.delay(n, previous, &mut rng);
            previous = wait;
            expected.push(wait);
        }
        let seen = server.seen();
        for (n, wait) in expected.iter().enumerate() {
            let gap = seen[n + 1].at - seen[n].at;
            // tokio's timer fires on whole milliseconds: a wait is never cut short and never
            // stretched by a millisecond or more.
            assert!(
                gap >= *wait && gap - *wait < Duration::from_millis(1),
                "{jitter:?} retry {n}: waited {gap:?}, drew {wait:?}"
            );
            let t = Backoff::sdk()
                .jitter(Jitter::None)
                .delay(n as u32, Duration::ZERO, &mut rng);
            match jitter {
                Jitter::Sdk => assert!(*wait <= t && *wait >= t.mul_f64(0.75)),
                Jitter::Full => assert!(*wait <= t),
                Jitter::Equal => assert!(*wait >= t / 2 && *wait <= t),
                _ => assert!(*wait >= backoff.base() && *wait <= backoff.max()),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_false_stops_a_503() {
    let server = Scripted::new(|_| respond(503, &[("x-should-retry", "false")]));
    let response = send(&server, plain(2)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.calls(), 1);
    assert_eq!(attempts(&response), 1);
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_true_forces_a_retry() {
    let server = Scripted::new(|i| match i {
        0 => respond(400, &[("x-should-retry", "true")]),
        _ => respond(200, &[]),
    });
    let response = send(&server, plain(2)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_retried() {
    for status in [400, 401, 402, 403, 404, 413] {
        let server = Scripted::new(move |_| respond(status, &[]));
        let response = send(&server, plain(2)).await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(server.calls(), 1, "{status} was retried");
    }
}

#[tokio::test(start_paused = true)]
async fn the_spend_cap_429_is_never_retried() {
    const SPEND_CAP: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit reached","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#;
    // The error body as an ErrorBodyLayer stores it; even `x-should-retry: true` does not make
    // the spend cap retryable.
    let server = Scripted::new(|_| {
        let mut response = respond_with(
            429,
            &[
                ("content-type", "application/json"),
                ("x-should-retry", "true"),
            ],
            SPEND_CAP,
        )?;
        let api_error = ApiError::from_json(SPEND_CAP.as_bytes()).ok_or("unreadable body")?;
        response.extensions_mut().insert(api_error);
        Ok(response)
    });
    let response = send(&server, plain(2)).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(server.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried() {
    let server = Scripted::new(|i| match i {
        0 => Err(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)) as BoxError),
        _ => respond(200, &[]),
    });
    let policy = plain(2).backoff(Backoff::constant(Duration::from_millis(250)));
    let response = send(&server, policy).await.unwrap();
    assert_eq!(attempts(&response), 2);
    assert_eq!(server.gaps_ms(), [250]);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_a_retry_storm() {
    const REQUESTS: usize = 1_000;
    const RATIO: f64 = 0.2;
    const FLOOR: u32 = 10;
    let window = Duration::from_secs(10);
    let server = Scripted::new(|_| respond(503, &[]));
    let policy = Policy::new()
        .max_retries(10)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(Budget::new(window, FLOOR, RATIO));
    let service = Retry::new(server.clone(), policy);
    let started = Instant::now();
    let calls = (0..REQUESTS).map(|_| service.clone().oneshot(request()));
    let results = futures_join_all(calls).await;
    assert!(Instant::now() - started < window);

    let exhausted = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.is::<BudgetExhausted>()))
        .count();
    let bound =
        (REQUESTS as f64 * (1.0 + RATIO)) as usize + FLOOR as usize * window.as_secs() as usize;
    println!(
        "storm: {REQUESTS} calls, {} attempts (bound {bound}), {exhausted} budget errors",
        server.calls()
    );
    assert!(
        server.calls() <= bound,
        "{} attempts > {bound}",
        server.calls()
    );
    // Without the budget the storm would have been 11 000 attempts; with it almost every
    // retry the budget allows is used, and most calls end with the typed error.
    assert!(server.calls() >= bound - 10, "{} attempts", server.calls());
    assert!(exhausted >= REQUESTS - 300, "{exhausted}");
    let error = results.into_iter().find_map(|r| r.err()).unwrap();
    let error = error.downcast_ref::<BudgetExhausted>().unwrap();
    assert_eq!(error.last_status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(error.attempts() >= 1);
}

/// `join_all` without the `futures` crate: spawn on the current runtime, await in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_respected() {
    let server = Scripted::new(|_| respond(429, &[("retry-after", "7")]));
    let policy = plain(5).deadline(Duration::from_secs(10));
    let started = Instant::now();
    let error = send(&server, policy).await.unwrap_err();
    let error = error.downcast_ref::<DeadlineExceeded>().unwrap();
    // Attempts at 0 s and 7 s; a retry at 14 s would cross the 10 s deadline: given up at 7 s.
    assert_eq!(Instant::now() - started, Duration::from_secs(7));
    assert_eq!(error.attempts(), 2);
    assert_eq!(error.last_status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(error.server_wait(), Some(Duration::from_secs(7)));
    assert_eq!(error.next_wait(), Duration::from_secs(7));
    assert_eq!(error.deadline(), Duration::from_secs(10));
    assert_eq!(server.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_server_wait_above_the_ceiling_ends_the_call_at_once() {
    let server = Scripted::new(|_| respond(429, &[("retry-after", "600")]));
    let started = Instant::now();
    let error = send(&server, plain(2)).await.unwrap_err();
    assert_eq!(Instant::now(), started);
    let error = error.downcast_ref::<ServerWaitTooLong>().unwrap();
    assert_eq!(error.wait(), Duration::from_secs(600));
    assert_eq!(error.ceiling(), Duration::from_secs(60));
    assert_eq!(error.attempts(), 1);
    assert_eq!(error.last_status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(error.to_string().contains("600s"), "{error}");
    assert_eq!(server.calls(), 1);
}

#[derive(Clone, Debug, PartialEq)]
struct Marker(&'static str);

#[tokio::test(start_paused = true)]
async fn the_request_is_replayed_byte_identical() {
    let server = Scripted::new(|i| match i {
        0 | 1 => respond(529, &[]),
        _ => respond(200, &[]),
    });
    let mut request = Request::put("http://api.test/v1/messages?beta=true")
        .version(http::Version::HTTP_11)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(String::from(
            "{\"messages\":[{\"role\":\"user\",\"content\":\"héllo\"}]}",
        ))
        .unwrap();
    request.extensions_mut().insert(Marker("key"));
    let policy = plain(2).sdk_attempt_header();
    let response = Retry::new(server.clone(), policy)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(attempts(&response), 3);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for (n, s) in seen.iter().enumerate() {
        assert_eq!(s.method, http::Method::PUT);
        assert_eq!(s.uri, "http://api.test/v1/messages?beta=true");
        assert_eq!(
            s.body,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"héllo\"}]}".as_bytes()
        );
        assert_eq!(s.headers["anthropic-version"], "2023-06-01");
        assert_eq!(s.extensions.get::<Marker>(), Some(&Marker("key")));
        let count = s.headers.get("x-stainless-retry-count");
        match n {
            0 => assert!(count.is_none()),
            n => assert_eq!(count.unwrap(), n.to_string().as_str()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_sent_once_is_not_retried() {
    let server = Scripted::new(|_| respond(503, &[]));
    let request = Request::post("http://api.test/")
        .body(SendOnce::new(Full::new(Bytes::from_static(b"stream"))))
        .unwrap();
    let response = Retry::new(server.clone(), plain(2))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_and_layers_share_one_budget() {
    let server = Scripted::new(|_| respond(503, &[]));
    // One retry in the whole window, whatever the traffic.
    let budget = Budget::new(Duration::from_secs(1), 1, 0.0);
    let policy = Policy::new()
        .max_retries(1)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(budget.clone());
    let a = Retry::new(server.clone(), policy.clone());
    let b = a.clone();
    let response = a.oneshot(request()).await.unwrap();
    assert_eq!(attempts(&response), 2);
    let error = b.oneshot(request()).await.unwrap_err();
    assert!(error.is::<BudgetExhausted>());

    // A separately built layer given the same handle shares it too …
    let c = RetryLayer::new(policy).layer(server.clone());
    assert!(
        c.oneshot(request())
            .await
            .unwrap_err()
            .is::<BudgetExhausted>()
    );
    // … while a fresh policy has a budget of its own.
    let d = RetryLayer::new(Policy::new().max_retries(1)).layer(server.clone());
    assert_eq!(attempts(&d.oneshot(request()).await.unwrap()), 2);
    assert_eq!(budget.available(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_absorbed_wait_is_not_slept_twice() {
    let server = Scripted::new(|i| match i {
        0 => {
            let mut response = respond(429, &[("retry-after", "7")])?;
            let until = Instant::now() + Duration::from_secs(7);
            response.extensions_mut().insert(WaitAbsorbed::new(until));
            Ok(response)
        }
        _ => respond(200, &[]),
    });
    let response = send(&server, plain(2)).await.unwrap();
    assert_eq!(attempts(&response), 2);
    assert_eq!(server.gaps_ms(), [0]);
}

#[tokio::test(start_paused = true)]
async fn an_absorbed_wait_still_meets_the_deadline_and_ceiling() {
    let absorbed = |secs: u64| {
        move |_| {
            let mut response = respond(429, &[])?;
            let until = Instant::now() + Duration::from_secs(secs);
            response.extensions_mut().insert(WaitAbsorbed::new(until));
            Ok(response)
        }
    };
    let server = Scripted::new(absorbed(7));
    let error = send(&server, plain(2).deadline(Duration::from_secs(5)))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<DeadlineExceeded>().unwrap();
    assert_eq!(error.server_wait(), Some(Duration::from_secs(7)));

    let server = Scripted::new(absorbed(90));
    let error = send(&server, plain(2)).await.unwrap_err();
    assert_eq!(
        error.downcast_ref::<ServerWaitTooLong>().unwrap().wait(),
        Duration::from_secs(90)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_during_backoff_cancels_the_call() {
    let server = Scripted::new(|_| respond(503, &[]));
    let budget = Budget::new(Duration::from_secs(10), 1, 0.0);
    let policy = Policy::new()
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .budget(budget.clone());
    let mut service = Retry::new(server.clone(), policy);
    std::future::poll_fn(|cx| Service::<Request<Full<Bytes>>>::poll_ready(&mut service, cx))
        .await
        .unwrap();
    let mut call = tokio_test::task::spawn(service.call(request()));
    tokio_test::assert_pending!(call.poll());
    assert_eq!(server.calls(), 1);
    // The retry was decided (one unit withdrawn), the wait is running: drop the call.
    assert_eq!(budget.available(), 9);
    drop(call);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(server.calls(), 1);
    assert_eq!(budget.available(), 9);
}

#[tokio::test(start_paused = true)]
async fn tower_retry_with_the_same_policy() {
    let server = Scripted::new(|i| match i {
        0 | 1 => respond(503, &[]),
        _ => respond(200, &[]),
    });
    let policy = plain(2)
        .backoff(Backoff::sdk().jitter(Jitter::None))
        .sdk_attempt_header();
    let service = tower::retry::RetryLayer::new(policy.into_tower()).layer(server.clone());
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 3);
    assert_eq!(server.gaps_ms(), [500, 1000]);
    let seen = server.seen();
    assert!(seen[0].headers.get("x-stainless-retry-count").is_none());
    assert_eq!(seen[2].headers["x-stainless-retry-count"], "2");
    assert!(seen.iter().all(|s| s.body == seen[0].body));
}

#[tokio::test(start_paused = true)]
async fn tower_retry_gets_the_typed_errors() {
    let server = Scripted::new(|_| respond(500, &[]));
    let policy = plain(5)
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .deadline(Duration::from_millis(2_500));
    let service = tower::retry::RetryLayer::new(policy.into_tower()).layer(server.clone());
    let started = Instant::now();
    let error = service.oneshot(request()).await.unwrap_err();
    let error = error.downcast_ref::<DeadlineExceeded>().unwrap();
    assert_eq!(error.attempts(), 3);
    assert_eq!(error.last_status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(Instant::now() - started, Duration::from_secs(2));
    assert_eq!(server.calls(), 3);
}

fn sim(limits: Limits, faults: Faults) -> SimApi {
    SimApi::builder()
        .model("claude-sonnet-4-5", limits)
        .latency(Duration::from_millis(300), Duration::ZERO)
        .faults(faults)
        .seed(9)
        .build()
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_the_load_on_an_overloaded_sim() {
    const REQUESTS: usize = 500;
    let api = sim(
        Limits::per_minute(1_000_000, 1_000_000_000, 1_000_000_000),
        Faults::new().always(Fault::Overloaded { probability: 1.0 }),
    );
    let window = Duration::from_secs(10);
    let policy = Policy::new()
        .max_retries(5)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .budget(Budget::new(window, 10, 0.2));
    let report = Workload::new(REQUESTS, REQUESTS)
        .seed(3)
        .models(["claude-sonnet-4-5"])
        .run(RetryLayer::new(policy).layer(api.clone()))
        .await;
    assert!(report.elapsed() < window, "{:?}", report.elapsed());
    assert_eq!(report.ok(), 0);
    let received = api.counters().received() as usize;
    // attempts <= requests × (1 + 20 %) + 10/s × 10 s, against 3 000 without a budget.
    let bound = REQUESTS * 12 / 10 + 100;
    println!(
        "sim storm: {REQUESTS} calls, {received} attempts (bound {bound}), {:?}",
        report.elapsed()
    );
    assert!(received <= bound, "{received} > {bound}");
    assert!(received > REQUESTS, "{received}");
}

/// A sim allowing 6 requests a minute with one left in its bucket: a second request is refused
/// with a `retry-after` of about 10 s.
fn one_request_left() -> SimApi {
    SimApi::builder()
        .model(
            "claude-sonnet-4-5",
            Limits::per_minute(6, 1_000_000, 1_000_000),
        )
        .starting_fill(1.0 / 6.0)
        .latency(Duration::from_millis(300), Duration::ZERO)
        .seed(9)
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_sim_429_is_retried_after_its_retry_after() {
    // 6 requests per minute, one available at the start: the second call is refused and told
    // to come back when the bucket has refilled.
    let api = one_request_left();
    let service = RetryLayer::new(plain(2)).layer(api.clone());
    let requests = Workload::new(2, 1)
        .models(["claude-sonnet-4-5"])
        .requests("http://sim.local");
    let mut responses = Vec::new();
    for request in requests {
        responses.push(service.clone().oneshot(request).await.unwrap());
    }
    assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(attempts(&responses[1]), 2);
    let counters = api.counters();
    assert_eq!(counters.rate_limited(), 1);
    assert_eq!(counters.received(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_sims_spend_cap_is_not_retried() {
    let api = sim(
        Limits::per_minute(1_000, 1_000_000, 1_000_000),
        Faults::new().always(Fault::SpendLimit { probability: 1.0 }),
    );
    let service = RetryLayer::new(plain(2)).layer(ErrorBodyLayer::new().layer(api.clone()));
    let request = Workload::new(1, 1)
        .models(["claude-sonnet-4-5"])
        .requests("http://sim.local")
        .remove(0);
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(api.counters().received(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_the_rate_limiter_absorbed_is_waited_once() {
    use tower_llm_limits::rate_limit::{self, RateLimitLayer};
    // The server allows 6 requests a minute and has one in its bucket; the limiter was told 60,
    // so it lets two calls go at once and the second is refused with `retry-after`.
    let api = one_request_left();
    let limiter =
        RateLimitLayer::with_limits(rate_limit::Limits::per_minute(60, 1_000_000, 1_000_000));
    let service = RetryLayer::new(plain(2)).layer(limiter.layer(api.clone()));
    let report = Workload::new(2, 2)
        .models(["claude-sonnet-4-5"])
        .run(service)
        .await;
    assert_eq!(report.ok(), 2);
    let counters = api.counters();
    assert_eq!(counters.rate_limited(), 1);
    assert_eq!(counters.received(), 3);
    // The refused call is answered right after the server's wait (about 10 s): the retry
    // re-entered at once and the limiter held it until then (the scripted tests show that the
    // retry itself does not sleep).
    let slowest = report.records().iter().map(|r| r.latency()).max().unwrap();
    assert!(
        slowest > Duration::from_secs(9) && slowest < Duration::from_secs(12),
        "{slowest:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_retry_is_traced() {
    let (events, _guard) = support::retry::capture_events();
    let server = Scripted::new(|i| match i {
        0 => respond(529, &[]),
        _ => respond(200, &[]),
    });
    let policy = plain(2).backoff(Backoff::constant(Duration::from_millis(700)));
    send(&server, policy).await.unwrap();
    let retries = events.with_message("retrying");
    assert_eq!(retries.len(), 1);
    let field = |name: &str| {
        retries[0]
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("attempt"), "2");
    assert_eq!(field("reason"), "overloaded");
    assert_eq!(field("status"), "529");
    assert_eq!(field("wait_ms"), "700");
    assert_eq!(field("source"), "backoff");
}

/// REFERENCE.md: the SDKs' defaults are 2 retries (3 attempts) and the backoff
/// `min(0.5 s × 2ⁿ, 8 s) × (1 − 0.25 × random)`; the retry-count header is opt-in here.
#[tokio::test(start_paused = true)]
async fn the_default_policy_retries_twice_with_the_sdk_backoff() {
    let server = Scripted::new(|_| respond(529, &[]));
    let response = send(&server, Policy::new()).await.unwrap();
    assert_eq!(response.status().as_u16(), 529);
    assert_eq!(attempts(&response), 3);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for (n, nominal) in [500u64, 1000].into_iter().enumerate() {
        let gap = seen[n + 1].at - seen[n].at;
        let nominal = Duration::from_millis(nominal);
        assert!(
            gap >= nominal.mul_f64(0.75) && gap <= nominal + Duration::from_millis(1),
            "retry {n}: {gap:?}"
        );
    }
    assert!(
        seen.iter()
            .all(|s| s.headers.get("x-stainless-retry-count").is_none())
    );
}

/// REFERENCE.md: connection errors *and timeouts* are retried.
#[tokio::test(start_paused = true)]
async fn timeouts_are_retried() {
    let server = Scripted::new(|i| match i {
        0 => Err(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)) as BoxError),
        1 => Err(Box::new(tower::timeout::error::Elapsed::new()) as BoxError),
        _ => respond(200, &[]),
    });
    let policy = plain(2).backoff(Backoff::constant(Duration::from_millis(100)));
    let response = send(&server, policy).await.unwrap();
    assert_eq!(attempts(&response), 3);
    assert_eq!(server.gaps_ms(), [100, 100]);
}

/// REFERENCE.md: every status >= 500 and 408/409/429 are retried, with `x-should-retry`
/// deciding first.
#[tokio::test(start_paused = true)]
async fn retryable_statuses_and_the_should_retry_header() {
    for (status, should, retried) in [
        (408, None, true),
        (409, None, true),
        (429, None, true),
        (500, None, true),
        (502, None, true),
        (503, None, true),
        (504, None, true),
        (529, None, true),
        (400, Some("true"), true),
        (529, Some("false"), false),
        (429, Some("false"), false),
    ] {
        let server = Scripted::new(move |_| match should {
            Some(v) => respond(status, &[("x-should-retry", v)]),
            None => respond(status, &[]),
        });
        let policy = plain(1).backoff(Backoff::constant(Duration::from_millis(1)));
        send(&server, policy).await.unwrap();
        let want = if retried { 2 } else { 1 };
        assert_eq!(server.calls(), want, "{status} x-should-retry={should:?}");
    }
}

/// REFERENCE.md: the default budget lets retries add 20 % of the calls plus 10 per second
/// over a 10 s window.
#[tokio::test(start_paused = true)]
async fn the_default_budget_is_twenty_percent_plus_ten_per_second_over_ten_seconds() {
    let budget = Budget::default();
    assert_eq!(budget.window(), Duration::from_secs(10));
    assert_eq!(budget.available(), 100);
    for _ in 0..50 {
        budget.deposit();
    }
    assert_eq!(budget.available(), 110);
    for _ in 0..110 {
        assert!(budget.withdraw());
    }
    assert!(!budget.withdraw());
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(budget.available(), 100);
}

/// REFERENCE.md (GitHub-style): a rate limit may come as a 403; with a `retry-after` it is
/// retried after it, a plain 403 never is.
#[tokio::test(start_paused = true)]
async fn a_github_style_403_rate_limit_is_retried_after_its_retry_after() {
    let server = Scripted::new(|i| match i {
        0 => respond(403, &[("retry-after", "3"), ("x-ratelimit-remaining", "0")]),
        _ => respond(200, &[]),
    });
    let response = send(&server, plain(2)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.gaps_ms(), [3000]);
    let server = Scripted::new(|_| respond(403, &[("x-ratelimit-remaining", "41")]));
    send(&server, plain(2)).await.unwrap();
    assert_eq!(server.calls(), 1);
}

/// Retry defaults against the official SDKs' current behaviour (issue 19, item 7); the table in
/// the preset docs and README states what these tests check.
mod sdk_parity {
    use std::time::Duration;

    use tokio::time::Instant;
    use tower::{Layer, ServiceExt};
    use tower_llm_limits::preset::{self, PresetLayer};
    use tower_llm_limits::retry::error::{DeadlineExceeded, ServerWaitTooLong};
    use tower_llm_limits::retry::{ANTHROPIC_MAX_SERVER_WAIT, OPENAI_MAX_SERVER_WAIT, Policy};

    use super::support::retry::{Scripted, respond};
    use super::{attempts, request, send};

    /// A server that answers the first call with a 429 carrying `headers`, then 200.
    fn once(headers: &'static [(&'static str, &'static str)]) -> Scripted {
        Scripted::new(move |i| match i {
            0 => respond(429, headers),
            _ => respond(200, &[]),
        })
    }

    async fn through(
        server: &Scripted,
        layer: PresetLayer,
    ) -> Result<u32, tower_llm_limits::BoxError> {
        let response = layer.layer(server.clone()).oneshot(request()).await?;
        assert_eq!(response.status(), 200);
        Ok(attempts(&response))
    }

    fn gap(server: &Scripted) -> Duration {
        let seen = server.seen();
        seen[1].at - seen[0].at
    }

    const LONG: [(&[(&str, &str)], Duration); 4] = [
        (&[("retry-after", "3600")], Duration::from_secs(3600)),
        // Two days: above the one-day clamp of the rate-limit resets.
        (&[("retry-after", "172800")], Duration::from_secs(172_800)),
        (
            &[("retry-after-ms", "90000000")],
            Duration::from_secs(90_000),
        ),
        (&[("retry-after", "1.5")], Duration::from_millis(1500)),
    ];

    #[tokio::test(start_paused = true)]
    async fn the_anthropic_policy_honours_any_positive_wait() {
        assert_eq!(
            ANTHROPIC_MAX_SERVER_WAIT,
            Duration::from_millis(4_294_967_295)
        );
        for (headers, wait) in LONG {
            let server = once(headers);
            let response = send(&server, Policy::anthropic().without_budget())
                .await
                .unwrap();
            assert_eq!(attempts(&response), 2);
            assert_eq!(gap(&server), wait, "{headers:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_anthropic_preset_honours_any_positive_wait() {
        for (headers, wait) in LONG {
            let server = once(headers);
            assert_eq!(through(&server, preset::anthropic()).await.unwrap(), 2);
            assert_eq!(gap(&server), wait, "{headers:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_openai_policy_and_preset_honour_up_to_120_s_and_do_not_retry_above() {
        assert_eq!(OPENAI_MAX_SERVER_WAIT, Duration::from_secs(120));
        let server = once(&[("retry-after", "120")]);
        send(&server, Policy::openai().without_budget())
            .await
            .unwrap();
        assert_eq!(gap(&server), Duration::from_secs(120));
        let server = once(&[("retry-after-ms", "120000")]);
        assert_eq!(through(&server, preset::openai()).await.unwrap(), 2);
        assert_eq!(gap(&server), Duration::from_secs(120));

        for over in [
            &[("retry-after", "121")][..],
            &[("retry-after-ms", "120001")][..],
        ] {
            for preset in [false, true] {
                let server = once(over);
                let started = Instant::now();
                let error = if preset {
                    through(&server, preset::openai()).await.unwrap_err()
                } else {
                    send(&server, Policy::openai()).await.unwrap_err()
                };
                assert_eq!(Instant::now(), started, "not retried, not waited");
                let error = error
                    .downcast_ref::<ServerWaitTooLong>()
                    .expect("ServerWaitTooLong");
                assert!(error.wait() > Duration::from_secs(120));
                assert_eq!(error.ceiling(), Duration::from_secs(120));
                assert_eq!(error.attempts(), 1);
                assert_eq!(server.calls(), 1);
            }
        }
    }

    /// `retry-after: 0`, `retry-after-ms: 0` and an HTTP-date at or before `date`: the backoff
    /// (0.375–0.5 s for the first retry), through the retry layer alone and through the
    /// presets (where the rate limiter sees the same zero wait).
    #[tokio::test(start_paused = true)]
    async fn a_zero_or_past_wait_falls_back_to_the_backoff() {
        const DATE: &str = "Sun, 06 Dec 2026 21:00:00 GMT";
        let zero: [&'static [(&str, &str)]; 5] = [
            &[("retry-after", "0")],
            &[("retry-after-ms", "0")],
            &[("retry-after", "0"), ("retry-after-ms", "0")],
            &[("retry-after", DATE), ("date", DATE)],
            &[
                ("retry-after", "Sun, 06 Dec 2026 20:59:00 GMT"),
                ("date", DATE),
            ],
        ];
        for headers in zero {
            for layer in [None, Some(preset::anthropic()), Some(preset::openai())] {
                let server = once(headers);
                match layer {
                    None => {
                        send(&server, Policy::new().without_budget()).await.unwrap();
                    }
                    Some(layer) => {
                        through(&server, layer).await.unwrap();
                    }
                }
                let gap = gap(&server);
                assert!(
                    (Duration::from_millis(375)..=Duration::from_millis(500)).contains(&gap),
                    "{headers:?}: {gap:?}"
                );
            }
        }
    }

    /// A 429 without `retry-after`: the retry layer alone waits its backoff; so does a retry
    /// through a preset when the server sends no rate-limit headers (the rate limiter paces such
    /// a key on a rate learned from its throttles and sets no cooldown of its own). With
    /// rate-limit headers the key's cooldown ([`DEFAULT_COOLDOWN`], the SDKs' first backoff) is
    /// what the retry waits (the preset table says why).
    #[tokio::test(start_paused = true)]
    async fn a_429_without_retry_after_waits_the_backoff_or_the_preset_cooldown() {
        let backoff = Duration::from_millis(375)..=Duration::from_millis(500);
        let server = once(&[]);
        send(&server, Policy::new().without_budget()).await.unwrap();
        let gap_alone = gap(&server);
        assert!(backoff.contains(&gap_alone), "{gap_alone:?}");
        let server = once(&[]);
        through(&server, preset::anthropic()).await.unwrap();
        assert!(backoff.contains(&gap(&server)), "{:?}", gap(&server));
        let server = once(&[
            ("anthropic-ratelimit-requests-limit", "1000"),
            ("anthropic-ratelimit-requests-remaining", "999"),
        ]);
        through(&server, preset::anthropic()).await.unwrap();
        assert_eq!(gap(&server), tower_llm_limits::rate_limit::DEFAULT_COOLDOWN);
    }

    /// With a deadline, no wait goes past it: a long `retry-after` ends the call at once with
    /// the server's wait in the error.
    #[tokio::test(start_paused = true)]
    async fn no_wait_goes_past_the_deadline() {
        for layer in [
            preset::anthropic().retry(Policy::anthropic().deadline(Duration::from_secs(30))),
            preset::openai().retry(Policy::openai().deadline(Duration::from_secs(30))),
        ] {
            let server = once(&[("retry-after", "45")]);
            let started = Instant::now();
            let error = through(&server, layer).await.unwrap_err();
            assert_eq!(Instant::now(), started, "failed fast");
            let error = error
                .downcast_ref::<DeadlineExceeded>()
                .expect("DeadlineExceeded");
            assert_eq!(error.server_wait(), Some(Duration::from_secs(45)));
            assert_eq!(error.deadline(), Duration::from_secs(30));
            assert_eq!(server.calls(), 1);
        }
        // A huge deadline does not overflow the clock.
        let server = once(&[("retry-after", "2")]);
        send(&server, Policy::anthropic().deadline(Duration::MAX))
            .await
            .unwrap();
        assert_eq!(gap(&server), Duration::from_secs(2));
    }
}

/// `Replayable` over a body whose clones share one stream (issue 19, item 5): the retry would
/// send only the leftover tail as the whole request. The layer detects the consumed stream and
/// ends the call with a typed error instead.
mod shared_stream {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::Request;
    use http_body::{Body, Frame, SizeHint};
    use tower::ServiceExt;
    use tower_llm_limits::retry::error::BodyNotReplayable;
    use tower_llm_limits::retry::{Replayable, Retry};

    use super::plain;
    use super::support::retry::{Scripted, respond};

    /// A body whose clones share one queue of chunks: what one clone reads, the others lose.
    #[derive(Clone, Default)]
    struct SharedChunks(Arc<Mutex<VecDeque<Bytes>>>);

    impl Body for SharedChunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .lock()
                    .unwrap()
                    .pop_front()
                    .map(|c| Ok(Frame::data(c))),
            )
        }

        fn is_end_stream(&self) -> bool {
            self.0.lock().unwrap().is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.lock().unwrap().iter().map(|c| c.len() as u64).sum())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayable_body_whose_clones_share_a_stream_is_refused() {
        let body = SharedChunks::default();
        body.0.lock().unwrap().extend([
            Bytes::from_static(b"{\"model\":"),
            Bytes::from_static(b"\"m\"}"),
        ]);
        let server = Scripted::new(|i| match i {
            0 => respond(529, &[]),
            _ => respond(200, &[]),
        });
        let request = Request::post("http://api.test/v1/messages")
            .body(Replayable::new(body))
            .unwrap();
        let error = Retry::new(server.clone(), plain(2))
            .oneshot(request)
            .await
            .unwrap_err();
        let error = error
            .downcast_ref::<BodyNotReplayable>()
            .expect("a typed refusal, not a retry with the tail");
        assert_eq!(error.attempts(), 1);
        assert_eq!(error.last_status().map(|s| s.as_u16()), Some(529));
        assert!(
            error.reason().reason().contains("share one stream"),
            "{error}"
        );
        // Only the first, complete body reached the server.
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(&seen[0].body[..], b"{\"model\":\"m\"}");
    }

    /// An independent copy (the documented requirement) is replayed as before.
    #[tokio::test(start_paused = true)]
    async fn a_replayable_body_with_independent_clones_is_replayed() {
        let server = Scripted::new(|i| match i {
            0 => respond(529, &[]),
            _ => respond(200, &[]),
        });
        let body = http_body_util::Full::new(Bytes::from_static(b"{\"model\":\"m\"}"));
        let request = Request::post("http://api.test/v1/messages")
            .body(Replayable::new(body))
            .unwrap();
        let response = Retry::new(server.clone(), plain(2))
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].body, seen[1].body);
    }
}

/// One outcome rule for every layer: below a `Signals` layer, the outcome it stored (decided by
/// its classifier) is the one the retry acts on, not the retry policy's own classifier's reading.
#[tokio::test(start_paused = true)]
async fn the_outcome_stored_by_signals_decides_over_the_policy_classifier() {
    // A gateway that answers 418 when its upstream is overloaded.
    let teapot_is_overload = classify_fn(|status, headers, hints, api_error| {
        if status == StatusCode::IM_A_TEAPOT {
            Outcome::new(OutcomeKind::Overloaded).with_status(status)
        } else {
            DefaultClassifier::new().classify_response(status, headers, hints, api_error)
        }
    });
    let server = Scripted::new(|i| match i {
        0 => respond(418, &[]),
        _ => respond(200, &[]),
    });
    let stack = Retry::new(
        SignalsLayer::with_classifier(teapot_is_overload).layer(server.clone()),
        plain(2),
    );
    let response = stack.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2, "the 418 was retried as an overload");

    // Without the `Signals` layer the policy's classifier (the default) decides: a 4xx is final.
    let server = Scripted::new(|_| respond(418, &[]));
    let response = send(&server, plain(2)).await.unwrap();
    assert_eq!((response.status().as_u16(), attempts(&response)), (418, 1));
}

/// A retried call keeps its place in the rate limiter's queue: behind a queue that takes a
/// refill period per request, a refused call's retry goes before the calls that arrived after it,
/// instead of waiting the whole queue again behind them.
#[tokio::test(start_paused = true)]
async fn a_retry_keeps_the_place_of_its_call_in_the_queue() {
    use tower_llm_limits::rate_limit::{self, RateLimitLayer};
    // The first request is refused; every other one is answered.
    let server = Scripted::new(|i| match i {
        0 => respond(429, &[]),
        _ => respond(200, &[]),
    });
    // Answers take a second, so that the other calls are in the queue when the refusal comes.
    let slow =
        ServiceExt::<Request<Full<Bytes>>>::map_future(server.clone(), |answer| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            answer.await
        });
    // Three requests a minute: one comes back every 20 s.
    let limiter = RateLimitLayer::with_limits(rate_limit::Limits::new().requests(3));
    let service = RetryLayer::new(plain(2)).layer(limiter.layer(slow));
    let start = Instant::now();
    // Five calls at once: three take the bucket (one of them is refused), two queue for the
    // refills, and the refused call's retry comes a second later.
    let mut calls: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            Some(Box::pin(async move {
                let response = service.oneshot(request()).await.unwrap();
                (attempts(&response), start.elapsed())
            }))
        })
        .collect();
    let mut done = Vec::new();
    std::future::poll_fn(|cx| {
        for slot in calls.iter_mut() {
            if let Some(call) = slot
                && let std::task::Poll::Ready(d) = call.as_mut().poll(cx)
            {
                done.push(d);
                *slot = None;
            }
        }
        if calls.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    // The refused call's retry came after the others had queued and goes before them, at the
    // next refill; without its place it would have waited behind them all, the last to go.
    let retried = done
        .iter()
        .find(|(a, _)| *a == 2)
        .expect("one call retried")
        .1;
    let last = done.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        retried < last,
        "retried call done at {retried:?}, the last at {last:?}"
    );
    assert!(retried < Duration::from_secs(25), "{done:?}");
}
