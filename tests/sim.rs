//! Acceptance tests of the simulated API, on the paused tokio clock.

mod support;

use std::time::Duration;

use http::StatusCode;
use tokio::time::advance;
use tower_llm_limits_sim::Dimension;
use tower_llm_limits_sim::{
    EventKind, Fault, Faults, HeaderDialect, HeaderTiming, InputCounting, Limits, OutputAccounting,
    SimApi, Workload, count_input_tokens, message_body,
};

use support::sim::{header, json, message, post, send};

const MODEL: &str = "claude-sonnet-4-5";

fn api(limits: Limits) -> SimApi {
    SimApi::builder()
        .model(MODEL, limits)
        .latency(Duration::ZERO, Duration::ZERO)
        .build()
}

async fn status(api: &SimApi, input: u64) -> StatusCode {
    send(api, message(MODEL, input, 100, 10))
        .await
        .unwrap()
        .status()
}

#[tokio::test(start_paused = true)]
async fn sixty_rpm_admits_one_request_per_second_after_the_burst() {
    let api = api(Limits::per_minute(60, 1_000_000, 1_000_000));
    for _ in 0..60 {
        assert_eq!(status(&api, 10).await, StatusCode::OK);
    }
    let refused = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "1");
    for second in 1..=30 {
        advance(Duration::from_millis(999)).await;
        assert_eq!(
            status(&api, 10).await,
            StatusCode::TOO_MANY_REQUESTS,
            "at {second} s - 1 ms"
        );
        advance(Duration::from_millis(1)).await;
        assert_eq!(status(&api, 10).await, StatusCode::OK, "at {second} s");
        assert_eq!(
            status(&api, 10).await,
            StatusCode::TOO_MANY_REQUESTS,
            "twice at {second} s"
        );
    }
    let c = api.counters();
    assert_eq!((c.ok(), c.rate_limited(), c.received()), (90, 61, 151));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_exactly_when_a_retry_succeeds() {
    // Input-bound: 30k ITPM refills 500 tokens/s; three 10k requests empty it.
    let api = api(Limits::per_minute(50, 30_000, 8_000));
    for _ in 0..3 {
        assert_eq!(status(&api, 10_000).await, StatusCode::OK);
    }
    let refused = send(&api, message(MODEL, 10_000, 100, 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "20");
    advance(Duration::from_secs(19)).await;
    let early = send(&api, message(MODEL, 10_000, 100, 10)).await.unwrap();
    assert_eq!(early.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&early, "retry-after"), "1");
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&api, 10_000).await, StatusCode::OK);

    // A rate that does not divide a second: 7 RPM, one request every 8.571 s → retry-after 9.
    let api = SimApi::builder()
        .default_limits(Limits::per_minute(7, 1_000_000, 1_000_000))
        .starting_fill(0.0)
        .latency(Duration::ZERO, Duration::ZERO)
        .build();
    let refused = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert_eq!(header(&refused, "retry-after"), "9");
    advance(Duration::from_secs(8)).await;
    assert_eq!(status(&api, 10).await, StatusCode::TOO_MANY_REQUESTS);
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&api, 10).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_error_body_and_headers() {
    let api = api(Limits::per_minute(1, 1_000, 1_000));
    assert_eq!(status(&api, 10).await, StatusCode::OK);
    let refused = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    let body = json(&refused);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 requests per minute")
    );
    assert_eq!(body["request_id"], header(&refused, "request-id"));
    assert!(header(&refused, "request-id").starts_with("req_sim_"));
    assert_eq!(header(&refused, "content-type"), "application/json");
    assert_eq!(header(&refused, "retry-after"), "60");
    assert_eq!(
        header(&refused, "anthropic-ratelimit-requests-remaining"),
        "0"
    );
    assert_eq!(
        header(&refused, "anthropic-ratelimit-requests-reset"),
        "2026-01-01T00:01:00Z"
    );
}

#[tokio::test(start_paused = true)]
async fn headers_report_the_buckets_at_admission() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 30_000, 8_000))
        .latency(Duration::from_millis(300), Duration::from_millis(2))
        .build();
    let ok = send(&api, message(MODEL, 1_200, 1_024, 300)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // Answered after 300 ms + 300 × 2 ms; `date` is rounded down.
    assert_eq!(api.elapsed(), Duration::from_millis(900));
    assert_eq!(header(&ok, "date"), "Thu, 01 Jan 2026 00:00:00 GMT");
    let h = |name: &str| header(&ok, &format!("anthropic-ratelimit-{name}")).to_owned();
    assert_eq!(h("requests-limit"), "50");
    assert_eq!(h("requests-remaining"), "49");
    // One request refills in 1.2 s: full at 00:00:01.2, rounded up.
    assert_eq!(h("requests-reset"), "2026-01-01T00:00:02Z");
    assert_eq!(h("input-tokens-limit"), "30000");
    assert_eq!(h("input-tokens-remaining"), "29000"); // 28,800 to the nearest thousand
    assert_eq!(h("input-tokens-reset"), "2026-01-01T00:00:03Z"); // 1,200 / 500 per s = 2.4 s
    // Output is charged as produced, after these headers were taken.
    assert_eq!(h("output-tokens-remaining"), "8000");
    assert_eq!(h("output-tokens-reset"), "2026-01-01T00:00:00Z");
    // `tokens` repeats the more restrictive of the two.
    assert_eq!(h("tokens-limit"), "30000");
    assert_eq!(h("tokens-remaining"), "29000");
    let usage = &json(&ok)["usage"];
    assert_eq!(
        (
            usage["input_tokens"].as_u64(),
            usage["output_tokens"].as_u64()
        ),
        (Some(1_200), Some(300))
    );

    // Now the buckets themselves: the output was charged on completion.
    let levels = api.levels(MODEL).unwrap();
    assert_eq!(levels.output_tokens(), 8_000.0 - 300.0);
    assert_eq!(levels.until_full()[1], Some(Duration::from_millis(1_500)));

    // Without rounding, a reading of the buckets taken from the headers is exact.
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 30_000, 8_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .round_remaining(false)
        .output_accounting(OutputAccounting::ReserveMaxTokens)
        .build();
    advance(Duration::from_millis(500)).await;
    let ok = send(&api, message(MODEL, 1_234, 1_000, 10)).await.unwrap();
    assert_eq!(
        header(&ok, "anthropic-ratelimit-input-tokens-remaining"),
        "28766"
    );
    assert_eq!(
        header(&ok, "anthropic-ratelimit-output-tokens-remaining"),
        "7000"
    );
    // Output is the more restricted: 7,000/8,000 < 28,766/30,000.
    assert_eq!(header(&ok, "anthropic-ratelimit-tokens-limit"), "8000");
    // 1,000 output tokens at 133.3/s = 7.5 s after 0.5 s → 8 s.
    assert_eq!(
        header(&ok, "anthropic-ratelimit-output-tokens-reset"),
        "2026-01-01T00:00:08Z"
    );
    // Reservation given back on completion: 990 of 1,000.
    let levels = api.levels(MODEL).unwrap();
    assert_eq!(levels.output_tokens(), 7_990.0);
}

#[tokio::test(start_paused = true)]
async fn reservation_at_max_tokens_limits_admission() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(1_000, 1_000_000, 8_000))
        .output_accounting(OutputAccounting::ReserveMaxTokens)
        .latency(Duration::from_secs(1), Duration::ZERO)
        .build();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        calls.push(tokio::spawn(async move {
            send(&api, message(MODEL, 10, 1_024, 100))
                .await
                .unwrap()
                .status()
        }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 7);
    assert_eq!(statuses[7], StatusCode::TOO_MANY_REQUESTS);
    // Back after completion: 8,000 − 7 × 100 + 1 s of refill.
    let levels = api.levels(MODEL).unwrap();
    assert!((levels.output_tokens() - (7_300.0 + 8_000.0 / 60.0)).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_a_bucket_is_refused_for_good() {
    let api = api(Limits::per_minute(50, 1_000, 8_000));
    let refused = send(&api, message(MODEL, 1_001, 100, 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        json(&refused)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be admitted")
    );
    advance(Duration::from_secs(3600)).await;
    assert_eq!(status(&api, 1_001).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn invalid_requests() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 30_000, 8_000))
        .max_body_bytes(10_000)
        .context_window(1_000)
        .build();
    let bad = send(&api, post("{nope")).await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(&bad)["error"]["type"], "invalid_request_error");
    let unknown = send(&api, message("claude-nope", 10, 10, 1)).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(&unknown)["error"]["type"], "not_found_error");
    let large = send(&api, post(vec![b' '; 10_001])).await.unwrap();
    assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let long = send(&api, message(MODEL, 1_001, 10, 1)).await.unwrap();
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    assert!(
        json(&long)["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long")
    );
    assert_eq!(
        header(&long, "anthropic-ratelimit-requests-remaining"),
        "50"
    );
    let c = api.counters();
    assert_eq!((c.client_errors(), c.received(), c.admitted()), (4, 4, 0));
}

#[tokio::test(start_paused = true)]
async fn overload_window_answers_529() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(1_000, 1_000_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .faults(Faults::new().window(
            Duration::from_secs(10)..Duration::from_secs(40),
            Fault::Overloaded { probability: 1.0 },
        ))
        .build();
    assert_eq!(status(&api, 10).await, StatusCode::OK);
    advance(Duration::from_secs(10)).await;
    let overloaded = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert_eq!(overloaded.status().as_u16(), 529);
    assert_eq!(json(&overloaded)["error"]["type"], "overloaded_error");
    assert!(!header(&overloaded, "anthropic-ratelimit-requests-limit").is_empty());
    advance(Duration::from_secs(29)).await;
    assert_eq!(status(&api, 10).await.as_u16(), 529);
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&api, 10).await, StatusCode::OK);
    let c = api.counters();
    assert_eq!((c.ok(), c.overloaded(), c.admitted()), (2, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn spend_limit_connection_errors_and_server_errors() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(1_000, 1_000_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .faults(
            Faults::new()
                .window(
                    Duration::ZERO..Duration::from_secs(1),
                    Fault::SpendLimit { probability: 1.0 },
                )
                .window(
                    Duration::from_secs(1)..Duration::from_secs(2),
                    Fault::ConnectionError { probability: 1.0 },
                )
                .window(
                    Duration::from_secs(2)..Duration::from_secs(3),
                    Fault::ServerError {
                        status: 503,
                        probability: 1.0,
                    },
                ),
        )
        .build();
    let spend = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert_eq!(spend.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&spend, "retry-after"), "");
    assert_eq!(
        json(&spend)["error"]["details"]["error_code"],
        "enforced_spend_limit_reached"
    );
    advance(Duration::from_secs(1)).await;
    let err = send(&api, message(MODEL, 10, 100, 10)).await.unwrap_err();
    let io = err.downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&api, 10).await, StatusCode::SERVICE_UNAVAILABLE);
    let c = api.counters();
    assert_eq!(
        (
            c.spend_limited(),
            c.connection_errors(),
            c.server_errors(),
            c.rate_limited(),
            c.admitted()
        ),
        (1, 1, 1, 0, 0)
    );
    let kinds: Vec<EventKind> = api.events().iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Answered(StatusCode::TOO_MANY_REQUESTS),
            EventKind::ConnectionError,
            EventKind::Answered(StatusCode::SERVICE_UNAVAILABLE)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn hung_requests_hold_until_dropped() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(1_000, 1_000_000, 8_000))
        .output_accounting(OutputAccounting::ReserveMaxTokens)
        .faults(Faults::new().always(Fault::Hang { probability: 1.0 }))
        .build();
    let call = send(&api, message(MODEL, 10, 1_000, 10));
    let timed_out = tokio::time::timeout(Duration::from_secs(600), call).await;
    assert!(timed_out.is_err());
    let c = api.counters();
    assert_eq!((c.hung(), c.dropped(), c.in_flight(), c.ok()), (1, 1, 0, 0));
    // The reservation came back.
    assert_eq!(api.levels(MODEL).unwrap().output_tokens(), 8_000.0);
    assert_eq!(api.events()[0].kind(), EventKind::Dropped);
}

#[tokio::test(start_paused = true)]
async fn clock_skew_and_header_faults() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(60, 1_000_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .faults(
            Faults::new()
                .window(
                    Duration::ZERO..Duration::from_secs(1),
                    Fault::ClockSkew {
                        offset_secs: -3_600,
                    },
                )
                .window(
                    Duration::from_secs(1)..Duration::from_secs(2),
                    Fault::MalformedHeaders { probability: 1.0 },
                )
                .window(
                    Duration::from_secs(2)..Duration::from_secs(3),
                    Fault::AbsurdRetryAfter { probability: 1.0 },
                ),
        )
        .build();
    let skewed = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert_eq!(header(&skewed, "date"), "Wed, 31 Dec 2025 23:00:00 GMT");
    assert_eq!(
        header(&skewed, "anthropic-ratelimit-requests-reset"),
        "2025-12-31T23:00:01Z"
    );
    advance(Duration::from_secs(1)).await;
    let malformed = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert_eq!(malformed.status(), StatusCode::OK);
    assert_ne!(
        header(&malformed, "anthropic-ratelimit-requests-limit"),
        "60"
    );
    advance(Duration::from_secs(1)).await;
    let absurd = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert!(!header(&absurd, "retry-after").is_empty());
}

#[tokio::test(start_paused = true)]
async fn configurable_epoch_and_exact_remaining() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(60, 30_000, 8_000))
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .round_remaining(false)
        .latency(Duration::from_millis(1_500), Duration::ZERO)
        .build();
    let ok = send(&api, message(MODEL, 1_234, 100, 10)).await.unwrap();
    assert_eq!(header(&ok, "date"), "Sun, 09 Sep 2001 01:46:41 GMT");
    assert_eq!(
        header(&ok, "anthropic-ratelimit-input-tokens-remaining"),
        "28766"
    );
    assert_eq!(
        header(&ok, "anthropic-ratelimit-input-tokens-reset"),
        "2001-09-09T01:46:43Z"
    );
    assert_eq!(
        api.now_wall(),
        std::time::UNIX_EPOCH + Duration::from_millis(1_000_000_001_500)
    );
}

#[tokio::test(start_paused = true)]
async fn debug_output_stays_small() {
    let api = api(Limits::per_minute(1_000, 1_000_000, 1_000_000));
    for _ in 0..100 {
        status(&api, 10).await;
    }
    let debug = format!("{api:?}");
    assert!(
        debug.starts_with("SimApi {") && debug.len() < 1_000,
        "{debug}"
    );
}

#[tokio::test(start_paused = true)]
async fn scheduled_and_manual_limit_changes() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(60, 1_000_000, 1_000_000))
        .starting_fill(0.0)
        .latency(Duration::ZERO, Duration::ZERO)
        .faults(Faults::new().window(
            Duration::from_secs(10)..Duration::from_secs(20),
            Fault::LimitChange {
                limits: Limits::per_minute(600, 1_000_000, 1_000_000),
            },
        ))
        .build();
    advance(Duration::from_secs(15)).await;
    // 10 s at 1/s, then 5 s at 10/s.
    let levels = api.levels(MODEL).unwrap();
    assert_eq!((levels.requests(), levels.limits().requests()), (60.0, 600));
    advance(Duration::from_secs(15)).await;
    // 110 at 20 s, capped at 60 when the window closed.
    let levels = api.levels(MODEL).unwrap();
    assert_eq!((levels.requests(), levels.limits().requests()), (60.0, 60));
    api.set_limits(MODEL, Limits::per_minute(6, 1_000_000, 1_000_000));
    assert_eq!(api.levels(MODEL).unwrap().requests(), 6.0);
    assert_eq!(
        api.configured_limits(MODEL),
        Some(Limits::per_minute(6, 1_000_000, 1_000_000))
    );
}

#[tokio::test(start_paused = true)]
async fn message_body_counts_exactly() {
    for (input, max, output) in [(1, 1, 1), (1_200, 1_024, 300), (7, 10, 50)] {
        let body = tower_llm_limits_sim::message_body(MODEL, input, max, output);
        assert_eq!(count_input_tokens(&body), Some(input));
        let api = api(Limits::per_minute(10, 100_000, 100_000));
        let ok = send(&api, post(body)).await.unwrap();
        assert_eq!(
            json(&ok)["usage"]["output_tokens"].as_u64(),
            Some(output.min(max))
        );
        assert_eq!(api.counters().output_tokens(), output.min(max));
    }
}

fn faulty(seed: u64) -> SimApi {
    SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 30_000, 8_000))
        .model("claude-haiku-4-5", Limits::per_minute(100, 50_000, 10_000))
        .starting_fill(0.5)
        .faults(
            Faults::new()
                .always(Fault::Overloaded { probability: 0.1 })
                .always(Fault::ServerError {
                    status: 500,
                    probability: 0.05,
                })
                .always(Fault::Slow {
                    extra: Duration::from_secs(2),
                    probability: 0.2,
                }),
        )
        .seed(seed)
        .build()
}

fn workload() -> Workload {
    Workload::new(200, 16)
        .seed(3)
        .models([MODEL, "claude-haiku-4-5"])
        .input_tokens(100..=1_500)
        .max_tokens(100..=800)
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_trace() {
    let a = faulty(42);
    let first = workload().run(a.clone()).await;
    let b = faulty(42);
    let second = workload().run(b.clone()).await;
    assert_eq!(first, second);
    assert_eq!(a.events(), b.events());
    assert_eq!(a.counters(), b.counters());
    let c = faulty(43);
    let third = workload().run(c.clone()).await;
    assert_ne!(first, third, "another seed gives another trace");

    // Counters add up, and agree with the report.
    let n = a.counters();
    assert_eq!(n.received(), 200);
    assert_eq!(
        n.ok() + n.rate_limited() + n.overloaded() + n.server_errors(),
        n.received()
    );
    assert!(n.overloaded() > 0 && n.server_errors() > 0 && n.rate_limited() > 0);
    assert_eq!(n.ok() as usize, first.ok());
    assert_eq!(
        first.with_status(StatusCode::TOO_MANY_REQUESTS),
        n.rate_limited() as usize
    );
    let ok_output: u64 = first
        .records()
        .iter()
        .filter(|r| r.is_ok())
        .map(|r| r.spec().output_tokens())
        .sum();
    assert_eq!(n.output_tokens(), ok_output);
    assert_eq!(a.events().len(), 200);
}

#[tokio::test(start_paused = true)]
async fn theoretical_best_per_dimension() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(1_000, 30_000, 1_000_000))
        .starting_fill(0.5)
        .build();
    let workload = Workload::new(100, 4).seed(1).input_tokens(1_000..=1_000);
    // Input-bound: 100,000 tokens − 15,000 at start, at 500/s → 170 s, plus the shortest
    // answer (300 ms + 2 ms per output token).
    let specs = workload.specs();
    let fewest = specs.iter().map(|s| s.output_tokens()).min().unwrap();
    let shortest = Duration::from_millis(300 + 2 * fewest);
    assert_eq!(workload.shortest_latency(&api), shortest);
    assert_eq!(
        workload.theoretical_best(&api),
        Duration::from_secs(170) + shortest
    );
    assert_eq!(specs.len(), 100);
    assert!(
        specs
            .iter()
            .all(|s| s.input_tokens() == 1_000 && s.output_tokens() <= s.max_tokens())
    );
    assert_eq!(workload.specs(), specs, "the plan is seeded");
    // Reservation mode adds the smallest unused reservation to the output dimension.
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(1_000, 1_000_000, 600))
        .starting_fill(0.0)
        .output_accounting(OutputAccounting::ReserveMaxTokens)
        .build();
    let workload = Workload::new(2, 1)
        .max_tokens(100..=100)
        .output_fraction(0.5..=0.5);
    // 2 × 50 + 50, at 10/s, and 300 ms + 50 × 2 ms to answer.
    assert_eq!(
        workload.theoretical_best(&api),
        Duration::from_millis(15_400)
    );
    // The unknown model is skipped.
    let other = Workload::new(2, 1).models(["claude-nope"]);
    assert_eq!(other.theoretical_best(&api), Duration::ZERO);
}

/// A small deterministic generator for test parameters.
struct Mix(u64);

impl Mix {
    fn next(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        lo + (z ^ (z >> 31)) % (hi - lo + 1)
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_exact_across_random_limits_and_states() {
    let mut mix = Mix(2026);
    let mut refusals = 0;
    for case in 0..100 {
        let limits = Limits::per_minute(
            mix.next(1, 120),
            mix.next(1_000, 20_000),
            mix.next(1_000, 20_000),
        );
        let accounting = if mix.next(0, 1) == 0 {
            OutputAccounting::AsProduced
        } else {
            OutputAccounting::ReserveMaxTokens
        };
        let api = SimApi::builder()
            .model(MODEL, limits)
            .starting_fill(mix.next(0, 100) as f64 / 100.0)
            .output_accounting(accounting)
            .latency(Duration::ZERO, Duration::ZERO)
            .round_remaining(false)
            .build();
        for _ in 0..1_000 {
            let input = mix.next(1, limits.input_tokens() / 3);
            let max = mix.next(1, limits.output_tokens() / 3);
            let output = mix.next(0, max);
            let first = send(&api, message(MODEL, input, max, output))
                .await
                .unwrap();
            if first.status() == StatusCode::OK {
                advance(Duration::from_millis(mix.next(0, 700))).await;
                continue;
            }
            assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS, "case {case}");
            let secs: u64 = header(&first, "retry-after").parse().unwrap();
            advance(Duration::from_secs(secs - 1)).await;
            let early = send(&api, message(MODEL, input, max, output))
                .await
                .unwrap();
            assert_eq!(
                early.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "case {case}: early"
            );
            advance(Duration::from_secs(1)).await;
            let retry = send(&api, message(MODEL, input, max, output))
                .await
                .unwrap();
            assert_eq!(
                retry.status(),
                StatusCode::OK,
                "case {case}: retry after {secs} s"
            );
            refusals += 1;
            break;
        }
    }
    assert!(refusals > 90, "{refusals}");
}

#[tokio::test(start_paused = true)]
async fn count_tokens_endpoint() {
    let api = api(Limits::per_minute(1, 1_000, 1_000));
    let body = tower_llm_limits_sim::message_body(MODEL, 777, 10, 1);
    let request = http::Request::post("http://sim.local/v1/messages/count_tokens")
        .body(http_body_util::Full::new(body))
        .unwrap();
    let counted = send(&api, request).await.unwrap();
    assert_eq!(json(&counted)["input_tokens"], 777);
    assert_eq!(
        api.levels(MODEL).unwrap().requests(),
        1.0,
        "no budget spent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ten_minute_workload_runs_in_milliseconds_and_repeats() {
    use tower::ServiceBuilder;
    let run = || async {
        let api = SimApi::builder()
            .model(MODEL, Limits::per_minute(50, 30_000, 8_000))
            .seed(5)
            .build();
        let stack = ServiceBuilder::new()
            .buffer(64)
            .rate_limit(5, Duration::from_secs(6))
            .service(api.clone());
        let workload = Workload::new(500, 16)
            .seed(11)
            .input_tokens(100..=500)
            .max_tokens(100..=300);
        let report = workload.run(stack).await;
        let latency = workload.shortest_latency(&api);
        (
            report,
            workload.theoretical_best(&api) - latency,
            api.counters(),
        )
    };
    let real = std::time::Instant::now();
    let (report, best, counters) = run().await;
    let real = real.elapsed();
    assert_eq!((report.ok(), counters.rate_limited()), (500, 0));
    // (500 − 50) requests at 50 per minute, without the last answer's latency.
    assert_eq!(best, Duration::from_secs(540));
    assert!(
        report.elapsed() >= Duration::from_secs(594),
        "{:?}",
        report.elapsed()
    );
    assert!(
        report.elapsed() <= Duration::from_secs(600),
        "{:?}",
        report.elapsed()
    );
    eprintln!(
        "ten-minute workload: {:?} simulated in {real:?} real, efficiency {:.3}",
        report.elapsed(),
        report.efficiency(best)
    );
    assert!(real < Duration::from_secs(30), "{real:?}");
    assert_eq!(run().await.0, report, "exactly repeatable");
}

// ---- The loopback server, on the real clock ----

mod server {
    use std::time::Duration;

    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower_llm_limits_sim::{self as sim, Fault, Faults, Limits, SimApi, message_body};

    use super::MODEL;

    fn api(faults: Faults) -> SimApi {
        SimApi::builder()
            .model(MODEL, Limits::per_minute(3, 1_000_000, 1_000_000))
            .latency(Duration::from_millis(1), Duration::ZERO)
            .faults(faults)
            .build()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_reqwest_and_hyper_util_clients_sharing_one_budget() {
        let api = api(Faults::new());
        let server = sim::serve(api.clone()).await.unwrap();
        let url = format!("{}/v1/messages", server.base_uri());

        let reqwest = reqwest::Client::new();
        for _ in 0..2 {
            let response = reqwest
                .post(&url)
                .header("content-type", "application/json")
                .body(message_body(MODEL, 100, 50, 20))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()["anthropic-ratelimit-requests-limit"],
                "3"
            );
            let body: serde_json::Value =
                serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(body["usage"]["output_tokens"], 20);
        }

        let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = |input| {
            http::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(message_body(MODEL, input, 50, 20)))
                .unwrap()
        };
        let ok = hyper.request(request(100)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["anthropic-ratelimit-requests-remaining"], "0");
        let _ = ok.into_body().collect().await.unwrap();
        // The budget is shared by both clients: the fourth request is refused.
        let refused = hyper.request(request(100)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "20");
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error");

        let c = api.counters();
        assert_eq!((c.received(), c.ok(), c.rate_limited()), (4, 3, 1));
        server.shutdown().await;
        assert!(
            reqwest.post(&url).body("{}").send().await.is_err(),
            "stopped"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_errors_close_the_connection() {
        let api = api(Faults::new().always(Fault::ConnectionError { probability: 1.0 }));
        let server = sim::serve(api.clone()).await.unwrap();
        let url = format!("{}/v1/messages", server.base_uri());
        let error = reqwest::Client::new()
            .post(&url)
            .body(message_body(MODEL, 100, 50, 20))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_request() || error.is_connect(), "{error:?}");
        assert_eq!(api.counters().connection_errors(), 1);
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_requests_in_flight_finish() {
        let api = SimApi::builder()
            .model(MODEL, Limits::per_minute(3, 1_000_000, 1_000_000))
            .latency(Duration::from_millis(200), Duration::ZERO)
            .build();
        let server = sim::serve(api.clone()).await.unwrap();
        let url = format!("{}/v1/messages", server.base_uri());
        let call = tokio::spawn(async move {
            reqwest::Client::new()
                .post(&url)
                .body(message_body(MODEL, 100, 50, 20))
                .send()
                .await
                .map(|r| r.status())
        });
        while api.counters().in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.shutdown().await;
        assert_eq!(call.await.unwrap().unwrap(), StatusCode::OK);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_cuts_hung_requests_after_the_grace_period() {
        let api = SimApi::builder()
            .model(MODEL, Limits::per_minute(3, 1_000_000, 1_000_000))
            .faults(Faults::new().always(Fault::Hang { probability: 1.0 }))
            .build();
        let server = sim::serve(api.clone())
            .await
            .unwrap()
            .grace(Duration::from_millis(50));
        let url = format!("{}/v1/messages", server.base_uri());
        let call = tokio::spawn(async move {
            reqwest::Client::new()
                .post(&url)
                .body(message_body(MODEL, 100, 50, 20))
                .send()
                .await
        });
        while api.counters().in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.shutdown().await;
        assert!(call.await.unwrap().is_err());
        let c = api.counters();
        assert_eq!((c.hung(), c.dropped(), c.in_flight()), (1, 1, 0));
    }
}

#[tokio::test(start_paused = true)]
async fn headers_at_answer_include_refill_and_other_charges() {
    let build = |timing| {
        SimApi::builder()
            .model(MODEL, Limits::per_minute(50, 30_000, 8_000))
            .latency(Duration::from_secs(1), Duration::from_millis(10))
            .round_remaining(false)
            .header_timing(timing)
            .build()
    };
    for timing in [HeaderTiming::AtAdmission, HeaderTiming::AtAnswer] {
        let api = build(timing);
        assert_eq!(api.header_timing(), timing);
        // A: admitted at 0, 300 output tokens, answered at 1 s + 3 s = 4 s.
        let a = tokio::spawn({
            let api = api.clone();
            async move { send(&api, message(MODEL, 1_200, 1_024, 300)).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert_eq!(api.counters().admitted(), 1, "A admitted at 0");
        advance(Duration::from_secs(1)).await;
        // B: admitted at 1 s, answered at 2.01 s, while A is generating.
        let b = send(&api, message(MODEL, 6_000, 100, 1)).await.unwrap();
        assert_eq!(b.status(), StatusCode::OK);
        let a = a.await.unwrap();
        assert_eq!(a.status(), StatusCode::OK);
        assert_eq!(api.elapsed(), Duration::from_secs(4));
        assert_eq!(header(&a, "date"), "Thu, 01 Jan 2026 00:00:04 GMT");
        let h = |name: &str| header(&a, &format!("anthropic-ratelimit-{name}")).to_owned();
        match timing {
            HeaderTiming::AtAdmission => {
                assert_eq!(h("requests-remaining"), "49");
                assert_eq!(h("input-tokens-remaining"), "28800");
                assert_eq!(h("output-tokens-remaining"), "8000");
                // 1,200 tokens at 500/s from t = 0.
                assert_eq!(h("input-tokens-reset"), "2026-01-01T00:00:03Z");
            }
            _ => {
                // Requests: 49 at 0, + 0.83 − 1 (B) at 1 s, + 2.5 by 4 s: full again.
                assert_eq!(h("requests-remaining"), "50");
                // Input: 30,000 − 1,200 + 500 − 6,000 (B) + 1,500 = 24,800.
                assert_eq!(h("input-tokens-remaining"), "24800");
                // Output: B's 1 token long refilled, A's 300 charged when it is sent.
                assert_eq!(h("output-tokens-remaining"), "7700");
                // 5,200 tokens at 500/s from t = 4 s: 14.4 s, rounded up.
                assert_eq!(h("input-tokens-reset"), "2026-01-01T00:00:15Z");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn combined_dialect_charges_one_token_bucket() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 20_000, 10_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .round_remaining(false)
        .header_dialect(HeaderDialect::Combined)
        .build();
    assert_eq!(api.header_dialect(), HeaderDialect::Combined);
    let ok = send(&api, message(MODEL, 1_200, 1_024, 300)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let h = |name: &str| header(&ok, &format!("anthropic-ratelimit-{name}")).to_owned();
    assert_eq!(h("requests-limit"), "50");
    assert_eq!(h("requests-remaining"), "49");
    // One bucket of 20,000 + 10,000, charged the input at admission.
    assert_eq!(h("tokens-limit"), "30000");
    assert_eq!(h("tokens-remaining"), "28800");
    let names: Vec<&str> = ok
        .headers()
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("anthropic-ratelimit-"))
        .collect();
    assert_eq!(names.len(), 6, "only requests-* and tokens-*: {names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.contains("-requests-") || n.contains("-tokens-"))
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("input") || n.contains("output"))
    );
    // The output went to the same bucket.
    let levels = api.levels(MODEL).unwrap();
    assert_eq!(levels.input_tokens(), 30_000.0 - 1_500.0);
    // 28,000 input tokens: above the input limit of a separate bucket, within the combined one.
    let big = send(&api, message(MODEL, 28_000, 100, 10)).await.unwrap();
    assert_eq!(big.status(), StatusCode::OK);
    // 490 left; 1,000 input + 1 output need 511 more at 500/s: 1.022 s → 2 s.
    let refused = send(&api, message(MODEL, 1_000, 100, 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "2");
    assert_eq!(
        header(&refused, "anthropic-ratelimit-tokens-remaining"),
        "490"
    );
    let message = json(&refused)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("30000 tokens per minute"), "{message}");

    // T*: one Tokens bound, input + output against the combined limit.
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 20_000, 10_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .starting_fill(0.0)
        .header_dialect(HeaderDialect::Combined)
        .build();
    let workload = Workload::new(100, 4)
        .input_tokens(1_000..=1_000)
        .max_tokens(200..=200)
        .output_fraction(0.5..=0.5);
    let bounds = workload.bounds(&api);
    let dims: Vec<Dimension> = bounds.iter().map(|b| b.dimension()).collect();
    assert_eq!(dims, [Dimension::Requests, Dimension::Tokens]);
    assert_eq!(bounds[1].cost(), 110_000);
    // 110,000 tokens at 500/s (separate buckets would say 100,000 input at 333/s = 300 s).
    assert_eq!(workload.theoretical_best(&api), Duration::from_secs(220));
}

#[tokio::test(start_paused = true)]
async fn bedrock_dialect_sends_no_rate_limit_headers() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(2, 1_000_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .header_dialect(HeaderDialect::Bedrock)
        .build();
    let no_budget_headers = |r: &http::Response<bytes::Bytes>| {
        !r.headers()
            .keys()
            .any(|k| k.as_str().starts_with("anthropic-ratelimit-"))
    };
    for _ in 0..2 {
        let ok = send(&api, message(MODEL, 100, 100, 10)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(no_budget_headers(&ok));
        assert_eq!(json(&ok)["usage"]["input_tokens"], 100);
    }
    let refused = send(&api, message(MODEL, 100, 100, 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(no_budget_headers(&refused));
    assert_eq!(header(&refused, "x-amzn-errortype"), "ThrottlingException");
    assert!(refused.headers().get("retry-after").is_none());
    assert_eq!(
        json(&refused),
        serde_json::json!({"message": "Too many requests, please wait before trying again."})
    );
    assert_eq!(api.counters().rate_limited(), 1);
    // Still a token bucket underneath: one request back every 30 s.
    advance(Duration::from_secs(29)).await;
    assert_eq!(status(&api, 100).await, StatusCode::TOO_MANY_REQUESTS);
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&api, 100).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn input_counted_by_body_bytes_or_varying_density() {
    let by_bytes = SimApi::builder()
        .model(MODEL, Limits::per_minute(50, 100_000, 8_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .input_counting(InputCounting::BodyBytes {
            bytes_per_token: 2.0,
        })
        .build();
    let body = message_body(MODEL, 1_000, 100, 10);
    let expected = (body.len() as u64).div_ceil(2);
    assert!(expected > 2_000, "the JSON around the text counts too");
    assert_eq!(by_bytes.input_tokens_of(&body), Some(expected));
    let ok = send(&by_bytes, post(body.clone())).await.unwrap();
    assert_eq!(json(&ok)["usage"]["input_tokens"], expected);
    let levels = by_bytes.levels(MODEL).unwrap();
    assert_eq!(levels.input_tokens(), (100_000 - expected) as f64);
    let count = http::Request::post("http://sim.local/v1/messages/count_tokens")
        .body(http_body_util::Full::new(body.clone()))
        .unwrap();
    let counted = send(&by_bytes, count).await.unwrap();
    assert_eq!(json(&counted)["input_tokens"], expected);

    let density = InputCounting::VaryingDensity {
        min_bytes_per_token: 2.0,
        max_bytes_per_token: 5.0,
    };
    let varying = SimApi::builder()
        .model(MODEL, Limits::per_minute(1_000, 10_000_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .input_counting(density)
        .seed(5)
        .build();
    assert_eq!(varying.input_counting(), density);
    let mut ratios = Vec::new();
    for n in (1..=40).map(|i| i * 250 + 1) {
        let body = message_body(MODEL, n, 100, 10);
        let text = 4 * (n - 1);
        let charged = varying.input_tokens_of(&body).unwrap();
        assert!(
            (text.div_ceil(5) + 1..=text.div_ceil(2) + 1).contains(&charged),
            "{n}: {charged}"
        );
        // The same request is counted the same, and the answer reports it.
        let ok = send(&varying, post(body.clone())).await.unwrap();
        assert_eq!(json(&ok)["usage"]["input_tokens"], charged);
        assert_eq!(varying.input_tokens_of(&body), Some(charged));
        ratios.push(text as f64 / (charged - 1) as f64);
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    assert!(
        lo < 2.6 && hi > 4.4,
        "bytes per token vary: {lo:.2}..{hi:.2}"
    );

    // T* counts what the server charges.
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(10_000, 30_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .starting_fill(0.0)
        .input_counting(density)
        .build();
    let workload = Workload::new(50, 4).seed(3);
    let charged: u64 = workload
        .specs()
        .iter()
        .map(|s| {
            let body = message_body(MODEL, s.input_tokens(), s.max_tokens(), s.output_tokens());
            api.input_tokens_of(&body).unwrap()
        })
        .sum();
    let estimated: u64 = workload.specs().iter().map(|s| s.input_tokens()).sum();
    assert_ne!(charged, estimated);
    let bounds = workload.bounds(&api);
    assert_eq!(bounds[1].dimension(), Dimension::InputTokens);
    assert_eq!(bounds[1].cost(), charged);
    assert_eq!(
        workload.theoretical_best(&api),
        Duration::from_nanos(charged * 2_000_000)
    );
}

#[tokio::test(start_paused = true)]
async fn other_clients_drain_every_bucket() {
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(60, 1_000_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .round_remaining(false)
        .starting_fill(0.0)
        .other_clients(0.25)
        .build();
    assert_eq!(api.other_clients(), 0.25);
    advance(Duration::from_secs(60)).await;
    let levels = api.levels(MODEL).unwrap();
    assert_eq!(levels.requests(), 45.0);
    assert_eq!(levels.input_tokens(), 750_000.0);
    // 45 requests in the first minute, not 60; the 46th waits 4/3 s.
    for _ in 0..45 {
        assert_eq!(status(&api, 10).await, StatusCode::OK);
    }
    let refused = send(&api, message(MODEL, 10, 100, 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "2");
    // Headers report the full limit; the reset is at the refill the server knows (60 at
    // 60/min): what other clients will take is not known in advance.
    assert_eq!(header(&refused, "anthropic-ratelimit-requests-limit"), "60");
    assert_eq!(
        header(&refused, "anthropic-ratelimit-requests-reset"),
        "2026-01-01T00:02:00Z"
    );
    // A full bucket stays full: the refill outpaces the drain.
    advance(Duration::from_secs(600)).await;
    assert_eq!(api.levels(MODEL).unwrap().requests(), 60.0);

    // T*: 90 requests at 45 per minute from empty.
    let api = SimApi::builder()
        .model(MODEL, Limits::per_minute(60, 1_000_000, 1_000_000))
        .latency(Duration::ZERO, Duration::ZERO)
        .starting_fill(0.0)
        .other_clients(0.25)
        .build();
    let workload = Workload::new(90, 4);
    assert_eq!(workload.theoretical_best(&api), Duration::from_secs(120));
}
