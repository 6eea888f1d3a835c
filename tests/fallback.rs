//! Fallback routing: when it falls back, when it does not, the rewrite and `Served`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_llm_limits::BoxError;
use tower_llm_limits::breaker::{CircuitBreaker, Policy};
use tower_llm_limits::fallback::{Fallback, FallbackLayer, Served, set_json_model};
use tower_llm_limits::signals::OutcomeKind;

use support::upstream::{Reply, Upstream, open_loop, request};
use tower_llm_limits::retry::{Policy as RetryPolicy, Retry};
use tower_llm_limits_sim::{Fault, Faults, Limits, SimApi};

type Res = Result<Response<Full<Bytes>>, BoxError>;

async fn send<S>(svc: &mut S) -> Res
where
    S: Service<http::Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError>,
{
    svc.ready().await?.call(request("claude-sonnet-4-5")).await
}

fn served(res: &Res) -> (u16, Served) {
    let r = res.as_ref().expect("a response");
    (
        r.status().as_u16(),
        *r.extensions().get::<Served>().expect("Served"),
    )
}

fn model_of(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["model"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_healthy_primary_answers() {
    let (primary, secondary) = (Upstream::always(200), Upstream::always(200));
    let mut svc = Fallback::new(primary.clone(), secondary.clone());
    assert_eq!(served(&send(&mut svc).await), (200, Served::Primary));
    assert_eq!((primary.received(), secondary.received()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_primary_falls_back_with_the_rewritten_request() {
    for code in [529, 503] {
        let (primary, secondary) = (Upstream::always(code), Upstream::always(200));
        let mut svc = FallbackLayer::new(secondary.clone())
            .rewrite(set_json_model("claude-haiku-4-5"))
            .layer(primary.clone());
        assert_eq!(served(&send(&mut svc).await), (200, Served::Secondary));
        assert_eq!(model_of(&primary.bodies()[0]), "claude-sonnet-4-5");
        assert_eq!(model_of(&secondary.bodies()[0]), "claude-haiku-4-5");
    }
}

#[tokio::test(start_paused = true)]
async fn client_errors_rate_limits_and_server_errors_stay_with_the_primary() {
    for code in [400, 401, 404, 413, 429, 500] {
        let (primary, secondary) = (Upstream::always(code), Upstream::always(200));
        let mut svc = Fallback::new(primary.clone(), secondary.clone());
        assert_eq!(served(&send(&mut svc).await), (code, Served::Primary));
        assert_eq!(secondary.received(), 0, "status {code}");
    }
}

#[test]
#[should_panic(expected = "must not be taken on `client_error`")]
fn falling_back_on_client_errors_is_refused() {
    let _ = FallbackLayer::new(Upstream::always(200)).on_outcomes([OutcomeKind::ClientError]);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_falls_back_at_once() {
    let (primary, secondary) = (Upstream::always(529), Upstream::always(200));
    let breaker = CircuitBreaker::new(primary.clone(), Policy::new().jitter(0.0));
    // Fall back on errors only, to see the breaker's refusals.
    let mut svc = Fallback::new(breaker, secondary.clone()).on_outcomes([OutcomeKind::Rejected]);
    for _ in 0..5 {
        assert_eq!(served(&send(&mut svc).await), (529, Served::Primary));
    }
    for _ in 0..10 {
        assert_eq!(served(&send(&mut svc).await), (200, Served::Secondary));
    }
    assert_eq!((primary.received(), secondary.received()), (5, 10));
}

#[tokio::test(start_paused = true)]
async fn connection_errors_fall_back_only_when_configured() {
    let primary = Upstream::new(Duration::ZERO, |_, _| Reply::ConnectionError);
    let secondary = Upstream::always(200);
    let mut by_default = Fallback::new(primary.clone(), secondary.clone());
    assert!(send(&mut by_default).await.is_err());
    assert_eq!(secondary.received(), 0);

    let mut configured = Fallback::new(primary.clone(), secondary.clone())
        .on_outcomes([OutcomeKind::Overloaded, OutcomeKind::Connection]);
    assert_eq!(
        served(&send(&mut configured).await),
        (200, Served::Secondary)
    );

    let mut custom = Fallback::new(primary, secondary.clone()).when_error(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
    });
    assert_eq!(served(&send(&mut custom).await), (200, Served::Secondary));
}

#[tokio::test(start_paused = true)]
async fn a_failing_secondary_returns_its_own_result() {
    let (primary, secondary) = (Upstream::always(529), Upstream::always(529));
    let mut svc = Fallback::new(primary, secondary.clone());
    assert_eq!(served(&send(&mut svc).await), (529, Served::Secondary));
    assert_eq!(secondary.received(), 1);
}

#[tokio::test(start_paused = true)]
async fn during_an_overload_window_the_secondary_serves_then_the_primary_again() {
    // Primary: the crate's retries around a breaker around a simulated API overloaded from
    // 10 s to 40 s. Secondary: another, healthy, simulated API serving Haiku.
    let overload = Duration::from_secs(10)..Duration::from_secs(40);
    let limits = Limits::per_minute(100_000, 100_000_000, 100_000_000);
    let api = SimApi::builder()
        .model("claude-sonnet-4-5", limits)
        .latency(Duration::from_millis(300), Duration::ZERO)
        .faults(Faults::new().window(overload.clone(), Fault::Overloaded { probability: 1.0 }))
        .seed(42)
        .build();
    let backup = SimApi::builder()
        .model("claude-haiku-4-5", limits)
        .latency(Duration::from_millis(100), Duration::ZERO)
        .seed(43)
        .build();
    let closed_at = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = closed_at.clone();
    let start = tokio::time::Instant::now();
    let policy = Policy::new().seed(1).on_transition(move |t| {
        if t.to() == tower_llm_limits::breaker::State::Closed {
            *seen.lock().unwrap() = Some(t.at() - start);
        }
    });
    let primary = Retry::new(
        CircuitBreaker::new(api.clone(), policy),
        RetryPolicy::new().without_budget().seed(3),
    );
    let svc = FallbackLayer::new(backup.clone())
        .rewrite(set_json_model("claude-haiku-4-5"))
        .layer(primary);

    let results = open_loop(Duration::from_millis(200), 600, || {
        svc.clone()
            .oneshot(support::sim::message("claude-sonnet-4-5", 100, 64, 10))
    })
    .await;
    let closed_at = closed_at.lock().unwrap().expect("the breaker closed again");

    let mut by = std::collections::HashMap::new();
    for (at, res) in &results {
        let (code, served) = served(res);
        assert_eq!(code, 200, "request started at {at:?} failed");
        if overload.contains(at) {
            assert_eq!(served, Served::Secondary, "request started at {at:?}");
        }
        if *at < overload.start || *at > closed_at {
            assert_eq!(served, Served::Primary, "request started at {at:?}");
        }
        *by.entry(served).or_insert(0) += 1;
    }
    assert_eq!(backup.counters().ok(), by[&Served::Secondary]);
    assert_eq!(
        backup.counters().client_errors(),
        0,
        "the rewrite named a model it serves"
    );
    eprintln!(
        "served: {by:?}; breaker closed at {closed_at:?}; primary API received {}",
        api.counters().received()
    );
}
