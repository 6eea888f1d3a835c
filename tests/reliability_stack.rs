//! The full preset under cancellation, faults and secrets, on tokio's paused clock against the
//! simulated API. See RELIABILITY.md for the figures and the commands.

use std::error::Error as StdError;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_llm_limits::BoxError;
use tower_llm_limits::breaker::State;
use tower_llm_limits::preset::{self, PresetLayer};
use tower_llm_limits::retry;
use tower_llm_limits::sim::{self, Fault, Faults, Limits, SimApi};

const MODEL: &str = "claude-sonnet-4-5";
const API_KEY: &str = "sk-ant-api03-SECRETSECRETSECRET-0123456789";
const BEARER: &str = "Bearer sk-proj-TOPSECRETTOKEN-9876543210";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(model: &str, input: u64, max_tokens: u64, output: u64) -> http::Request<Full<Bytes>> {
    http::Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", API_KEY)
        .header("authorization", BEARER)
        .body(Full::new(sim::message_body(model, input, max_tokens, output)))
        .expect("a valid request")
}

/// What a call through the stack ended in.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    http_error: u64,
    breaker_open: u64,
    rate_limit_refused: u64,
    retry_gave_up: u64,
    connection: u64,
    timeout: u64,
    cancelled: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok
            + self.http_error
            + self.breaker_open
            + self.rate_limit_refused
            + self.retry_gave_up
            + self.connection
            + self.timeout
            + self.cancelled
    }

    /// Files an error under the first typed error of its source chain; panics on an untyped one.
    fn error(&mut self, error: &BoxError) {
        let mut current: Option<&(dyn StdError + 'static)> = Some(&**error);
        while let Some(e) = current {
            if e.is::<tower_llm_limits::breaker::error::Open>() {
                self.breaker_open += 1;
                return;
            }
            if e.is::<tower_llm_limits::rate_limit::error::WaitTooLong>()
                || e.is::<tower_llm_limits::rate_limit::error::CostExceedsLimit>()
            {
                self.rate_limit_refused += 1;
                return;
            }
            if e.is::<retry::error::BudgetExhausted>()
                || e.is::<retry::error::DeadlineExceeded>()
                || e.is::<retry::error::WaitTooLong>()
            {
                self.retry_gave_up += 1;
                return;
            }
            if e.is::<tower::timeout::error::Elapsed>() {
                self.timeout += 1;
                return;
            }
            if e.is::<io::Error>() {
                self.connection += 1;
                return;
            }
            current = e.source();
        }
        panic!("an untyped error reached the caller: {error:?}");
    }

    fn result<B>(&mut self, result: Result<http::Response<B>, BoxError>) {
        match result {
            Ok(response) if response.status().is_success() => self.ok += 1,
            Ok(_) => self.http_error += 1,
            Err(error) => self.error(&error),
        }
    }
}

/// Everything the layer's shared state holds for calls in progress.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Held {
    rate_limit_in_flight: usize,
    rate_limit_queued: usize,
    permits_in_flight: usize,
    permits_waiting: usize,
}

fn held(layer: &PresetLayer) -> Held {
    let keys = layer.get_rate_limit().state().snapshot();
    let limiter = layer.get_concurrency().limiter();
    Held {
        rate_limit_in_flight: keys.iter().map(|k| k.in_flight()).sum(),
        rate_limit_queued: keys.iter().map(|k| k.queued()).sum(),
        permits_in_flight: limiter.in_flight(),
        permits_waiting: limiter.waiting(),
    }
}

const NOTHING_HELD: Held = Held {
    rate_limit_in_flight: 0,
    rate_limit_queued: 0,
    permits_in_flight: 0,
    permits_waiting: 0,
};

fn budget_available(layer: &PresetLayer) -> u64 {
    layer
        .get_retry()
        .policy()
        .get_budget()
        .expect("the preset has a retry budget")
        .available()
}

/// Records the most of each kind of state held at any 20 ms tick.
async fn watch(layer: PresetLayer, max: Arc<Mutex<Held>>) {
    loop {
        let now = held(&layer);
        {
            let mut max = max.lock().unwrap();
            max.rate_limit_in_flight = max.rate_limit_in_flight.max(now.rate_limit_in_flight);
            max.rate_limit_queued = max.rate_limit_queued.max(now.rate_limit_queued);
            max.permits_in_flight = max.permits_in_flight.max(now.permits_in_flight);
            max.permits_waiting = max.permits_waiting.max(now.permits_waiting);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls dropped at random moments — before their first poll, while waiting for rate-limit
/// budget, for a concurrency permit, during retry backoff and during the inner call — give back
/// everything: no reservation, queue entry, permit, probe slot or retry budget stays held, and the
/// stack serves new calls normally afterwards.
#[tokio::test(start_paused = true)]
async fn cancelled_calls_give_everything_back() {
    let seeds = env_or("RELIABILITY_SEEDS", 12);
    let seen = Arc::new(Mutex::new(NOTHING_HELD));
    let mut totals = Tally::default();
    let mut inner_cancelled = 0;
    let mut retried = 0;
    for seed in 0..seeds {
        let faults = Faults::new()
            .window(
                Duration::ZERO..Duration::from_secs(40),
                Fault::Overloaded { probability: 0.15 },
            )
            .window(
                Duration::ZERO..Duration::from_secs(40),
                Fault::ServerError { status: 500, probability: 0.1 },
            )
            .window(
                Duration::ZERO..Duration::from_secs(40),
                Fault::ConnectionError { probability: 0.05 },
            )
            .window(
                Duration::ZERO..Duration::from_secs(40),
                Fault::Slow { extra: Duration::from_secs(3), probability: 0.2 },
            );
        let api = SimApi::builder()
            .model(MODEL, Limits::per_minute(40, 200_000, 40_000))
            .latency(Duration::from_millis(400), Duration::from_millis(1))
            .faults(faults)
            .seed(seed)
            .build();
        let layer = preset::anthropic()
            .max_concurrency(3)
            .retry(retry::Policy::new().seed(seed));
        let budget_start = budget_available(&layer);
        let client = layer.layer(api.clone());

        let mut rng = fastrand::Rng::with_seed(seed);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..80 {
            let client = client.clone();
            let start = Duration::from_millis(rng.u64(0..20_000));
            // A third runs to completion; the others are dropped after 0 ms (one poll) to 10 s.
            let deadline = (rng.u8(0..3) != 0).then(|| Duration::from_millis(rng.u64(0..10_000)));
            let req = request(MODEL, rng.u64(100..3_000), 512, rng.u64(10..500));
            calls.spawn(async move {
                tokio::time::sleep(start).await;
                let call = client.oneshot(req);
                match deadline {
                    Some(deadline) => tokio::time::timeout(deadline, call).await.ok(),
                    None => Some(call.await),
                }
            });
        }
        // Watch the shared state while the calls run, to show the drops hit every wait.
        let watcher = tokio::spawn(watch(layer.clone(), seen.clone()));
        let mut tally = Tally::default();
        while let Some(joined) = calls.join_next().await {
            match joined.expect("no call panics") {
                Some(result) => tally.result(result),
                None => tally.cancelled += 1,
            }
        }
        watcher.abort();
        let counters = api.counters();
        retried += counters.overloaded() + counters.server_errors() + counters.connection_errors();
        inner_cancelled += counters.dropped();
        // Let every window, cooldown and breaker timer run out.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(held(&layer), NOTHING_HELD, "seed {seed}: state left held");
        assert_eq!(budget_available(&layer), budget_start, "seed {seed}: retry budget");
        // The stack serves normally: no leaked permit or probe slot.
        for _ in 0..5 {
            let response = client
                .clone()
                .oneshot(request(MODEL, 200, 64, 20))
                .await
                .expect("the stack serves after the drops");
            assert_eq!(response.status(), 200, "seed {seed}");
        }
        assert_eq!(layer.get_breaker().state(), State::Closed, "seed {seed}");
        assert_eq!(held(&layer), NOTHING_HELD, "seed {seed}: after the checks");
        totals.ok += tally.ok;
        totals.http_error += tally.http_error;
        totals.breaker_open += tally.breaker_open;
        totals.rate_limit_refused += tally.rate_limit_refused;
        totals.retry_gave_up += tally.retry_gave_up;
        totals.connection += tally.connection;
        totals.timeout += tally.timeout;
        totals.cancelled += tally.cancelled;
    }
    let seen = *seen.lock().unwrap();
    println!(
        "cancellation: seeds={seeds} {totals:?} dropped_in_inner_call={inner_cancelled} \
         retryable_faults={retried} max_held={seen:?}"
    );
    assert_eq!(totals.total(), seeds * 80, "every call is accounted for");
    assert!(totals.cancelled > seeds * 20, "{totals:?}");
    assert!(inner_cancelled > 0, "some drops hit the inner call");
    assert!(retried > 0, "some calls were in retry backoff");
    assert!(seen.rate_limit_queued > 0, "some calls waited for budget");
    assert!(seen.permits_waiting > 0, "some calls waited for a permit");
}
