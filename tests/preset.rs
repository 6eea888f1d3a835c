//! The presets against the simulated API, on the paused clock.

use std::time::Duration;

use tower::ServiceBuilder;
use tower_llm_limits::preset;
use tower_llm_limits_sim::{Fault, Faults, Limits, SimApi, Workload};

const MODEL: &str = "claude-sonnet-4-5";

/// 300 requests from 32 callers against limits they exceed many times over.
fn burst() -> (SimApi, Workload) {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(60, 40_000, 12_000))
        .latency(Duration::from_millis(400), Duration::from_millis(2))
        .seed(11)
        .build();
    let workload = Workload::new(300, 32)
        .seed(3)
        .input_tokens(500..=4_000)
        .max_tokens(256..=2_048)
        .output_fraction(0.1..=0.6);
    (api, workload)
}

/// A burst of 32 callers against limits they exceed many times over: the preset learns the
/// limits from the first response and completes every request, with almost no 429s, close to
/// the best possible time.
#[tokio::test(start_paused = true)]
async fn anthropic_preset_paces_a_burst_to_the_learned_limits() {
    let (api, workload) = burst();
    let best = workload.theoretical_best(&api);
    let client = ServiceBuilder::new()
        .layer(preset::anthropic())
        .service(api.clone());
    let report = workload.run(client).await;
    let counters = api.counters();
    let attempts = counters.received();
    let share_429 = counters.rate_limited() as f64 / attempts as f64;
    let ratio = best.as_secs_f64() / report.elapsed().as_secs_f64();
    println!(
        "preset steady: ok={} failed={} attempts={} r429={} elapsed={:?} best={:?} ratio={:.3}",
        report.ok(),
        report.failed(),
        attempts,
        counters.rate_limited(),
        report.elapsed(),
        best,
        ratio
    );
    assert_eq!(report.failed(), 0, "every request completes");
    assert_eq!(report.ok(), 300);
    assert!(share_429 < 0.01, "429 share {share_429}");
    assert!(ratio > 0.95, "ratio to the theoretical best {ratio}");
}

/// The bare client against the same workload fails most calls: the preset's figures above are
/// not a property of the workload.
#[tokio::test(start_paused = true)]
async fn bare_client_fails_the_same_burst() {
    let (api, workload) = burst();
    let report = workload.run(api.clone()).await;
    assert!(report.failed() > 150, "bare failures: {}", report.failed());
}

/// During a window of 529s the breaker of the preset stops sending; after it the preset serves
/// again. Far fewer attempts reach the overloaded API than calls were made.
#[tokio::test(start_paused = true)]
async fn preset_breaker_shields_an_overloaded_api() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(10_000, 10_000_000, 10_000_000))
        .latency(Duration::from_millis(200), Duration::ZERO)
        .faults(Faults::new().window(
            Duration::from_secs(10)..Duration::from_secs(70),
            Fault::Overloaded { probability: 1.0 },
        ))
        .seed(5)
        .build();
    let workload = Workload::new(2_000, 16)
        .seed(9)
        .input_tokens(100..=200)
        .max_tokens(64..=64);
    let client = ServiceBuilder::new()
        .layer(preset::anthropic())
        .service(api.clone());
    let report = workload.run(client).await;
    let counters = api.counters();
    println!(
        "preset overload: ok={} failed={} received={} r529={}",
        report.ok(),
        report.failed(),
        counters.received(),
        counters.overloaded()
    );
    // The breaker keeps the 529s to a small share of the calls made during the window.
    assert!(
        counters.overloaded() < 200,
        "529s: {}",
        counters.overloaded()
    );
    assert!(report.ok() > 0);
}

/// The burst against a server that sends no `date` header, whose resets are read against the
/// local wall clock: `epoch` is the server's clock at the start. Returns (failed, 429s, ratio).
async fn burst_without_date(epoch: Option<std::time::SystemTime>) -> (usize, u64, f64) {
    let mut builder = SimApi::builder()
        .model(MODEL, Limits::per_minute(60, 40_000, 12_000))
        .latency(Duration::from_millis(400), Duration::from_millis(2))
        .seed(11);
    if let Some(epoch) = epoch {
        builder = builder.epoch(epoch);
    }
    let api = builder.build();
    let (_, workload) = burst();
    let best = workload.theoretical_best(&api);
    let client = ServiceBuilder::new()
        .layer(preset::anthropic())
        .map_response(|mut response: http::Response<_>| {
            response.headers_mut().remove(http::header::DATE);
            response
        })
        .service(api.clone());
    let report = workload.run(client).await;
    let ratio = best.as_secs_f64() / report.elapsed().as_secs_f64();
    (report.failed(), api.counters().rate_limited(), ratio)
}

/// Without a `date` header, a server clock far behind ours (the sim's default epoch is
/// 2026-01-01) puts every reset in the past: read as "full now" they would send bursts into
/// 429s. They are recognised as skew and dropped; `remaining` alone paces.
#[tokio::test(start_paused = true)]
async fn without_a_date_header_a_skewed_server_clock_does_not_derail_pacing() {
    let (failed, rate_limited, ratio) = burst_without_date(None).await;
    assert_eq!((failed, rate_limited), (0, 0));
    assert!(ratio > 0.95, "{ratio}");
}

/// Without a `date` header and on tokio's paused clock, our wall clock stands still while the
/// server's advances: its resets drift ever further ahead of our clock. Read as they are, they
/// would hold every request for minutes; they are dropped once outside the minute ahead.
#[tokio::test(start_paused = true)]
async fn without_a_date_header_a_frozen_local_clock_does_not_stall_pacing() {
    let (failed, rate_limited, ratio) =
        burst_without_date(Some(std::time::SystemTime::now())).await;
    assert_eq!((failed, rate_limited), (0, 0));
    assert!(ratio > 0.95, "{ratio}");
}

/// Every request body type the crate documents goes through every preset (issue 19, item 4):
/// each stack is built, called, and the body reaches the client; a body whose bytes are at hand
/// is keyed by its `model`.
mod body_types {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
    use http_body_util::{BodyExt, Empty, Full};
    use tower::{Layer, ServiceExt, service_fn};
    use tower_llm_limits::cost::BodyBytes;
    use tower_llm_limits::preset::{self, PresetLayer};
    use tower_llm_limits::rate_limit::KeyFn;
    use tower_llm_limits::retry::{ReplayBody, Replayable, SendOnce};
    use tower_llm_limits::{BoxError, cost::DefaultCost};

    const JSON: &str = r#"{"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

    /// Calls `layer` over a client that accepts any body of type `B`; returns the rate-limit
    /// keys the layer learned.
    async fn through<B, K>(layer: PresetLayer<K, DefaultCost>, body: B) -> Vec<String>
    where
        B: BodyBytes + ReplayBody + Send + 'static,
        K: KeyFn<B> + Clone,
    {
        let client = service_fn(|_req: Request<B>| async {
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        });
        let request = Request::post("https://api.example.com/v1/messages")
            .body(body)
            .unwrap();
        let response = layer.layer(client).oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        layer
            .get_rate_limit()
            .state()
            .snapshot()
            .iter()
            .map(|k| k.key().as_str().to_owned())
            .collect()
    }

    async fn every_preset<B>(body: impl Fn() -> B, keyed: bool)
    where
        B: BodyBytes + ReplayBody + Send + 'static,
    {
        for layer in [preset::anthropic(), preset::openai()] {
            let keys = through(layer, body()).await;
            if keyed {
                assert_eq!(keys, ["claude-haiku-4-5"]);
            }
        }
        through(preset::generic(), body()).await;
    }

    fn full() -> Full<Bytes> {
        Full::new(Bytes::from_static(JSON.as_bytes()))
    }

    #[tokio::test(start_paused = true)]
    async fn every_documented_body_type_goes_through_every_preset() {
        every_preset(full, true).await;
        every_preset(Empty::<Bytes>::new, false).await;
        every_preset(|| Bytes::from_static(JSON.as_bytes()), true).await;
        every_preset(|| JSON.to_owned(), true).await;
        every_preset(|| JSON.as_bytes().to_vec(), true).await;
        every_preset(|| JSON, true).await;
        every_preset(|| (), false).await;
        every_preset(|| Replayable::new(full()), true).await;
        every_preset(|| Replayable::new(JSON.to_owned()), true).await;
        every_preset(|| SendOnce::new(full()), true).await;
        every_preset(|| SendOnce::new(JSON.to_owned()), true).await;
        every_preset(
            || SendOnce::new(BoxBody::new(full().map_err(|e| -> BoxError { match e {} }))),
            false,
        )
        .await;
        every_preset(
            || {
                SendOnce::new(UnsyncBoxBody::new(
                    full().map_err(|e| -> BoxError { match e {} }),
                ))
            },
            false,
        )
        .await;
    }
}
