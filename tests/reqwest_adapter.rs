//! The reqwest adapter against the simulated API's loopback server.

use std::time::Duration;

use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_llm_limits::reqwest::ReqwestService;
use tower_llm_limits::signals::{Classify, DefaultClassifier, OutcomeKind};
use tower_llm_limits_sim::{self as sim, Limits, SimApi};

#[tokio::test]
async fn adapter_round_trips_request_and_response() {
    let api = SimApi::builder()
        .model(
            "claude-sonnet-4-5",
            Limits::per_minute(1_000, 1_000_000, 1_000_000),
        )
        .latency(Duration::ZERO, Duration::ZERO)
        .build();
    let server = sim::serve(api.clone()).await.unwrap();
    let service = ReqwestService::new(reqwest::Client::new());
    let body = sim::message_body("claude-sonnet-4-5", 100, 64, 10);
    let request = http::Request::post(format!("http://{}/v1/messages", server.addr()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(body))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .contains_key("anthropic-ratelimit-requests-limit")
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["usage"]["output_tokens"], 10);
    assert_eq!(api.counters().ok(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn unparsable_uri_is_an_error_not_a_panic() {
    let service = ReqwestService::new(reqwest::Client::new());
    // A relative URI cannot become a reqwest URL.
    let request = http::Request::get("/v1/messages")
        .body(String::new())
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert!(error.to_string().contains("builder"), "{error}");
}

#[tokio::test]
async fn connection_refused_is_classified_as_connection() {
    // Bind then drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let service = ReqwestService::new(reqwest::Client::new());
    let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
        .body(String::new())
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    let outcome = DefaultClassifier::new().classify_error(&*error);
    assert_eq!(outcome.kind(), OutcomeKind::Connection);
    assert!(outcome.is_retryable());
}

#[tokio::test]
async fn client_timeout_is_classified_as_timeout() {
    let api = SimApi::builder()
        .model(
            "claude-sonnet-4-5",
            Limits::per_minute(1_000, 1_000_000, 1_000_000),
        )
        .latency(Duration::from_secs(5), Duration::ZERO)
        .build();
    let server = sim::serve(api).await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let body = sim::message_body("claude-sonnet-4-5", 100, 64, 10);
    let request = http::Request::post(format!("http://{}/v1/messages", server.addr()))
        .body(http_body_util::Full::new(body))
        .unwrap();
    let error = ReqwestService::new(client)
        .oneshot(request)
        .await
        .unwrap_err();
    let outcome = DefaultClassifier::new().classify_error(&*error);
    assert_eq!(outcome.kind(), OutcomeKind::Timeout);
    server.shutdown().await;
}

#[tokio::test]
async fn streams_from_the_loopback_server_are_chunked_and_watched_through_the_preset() {
    use tower::ServiceBuilder;
    use tower_llm_limits::preset;
    use tower_llm_limits::signals::StreamInterrupted;

    let model = "claude-sonnet-4-5";
    let start = |faults| async move {
        let api = SimApi::builder()
            .model(model, Limits::per_minute(1_000, 1_000_000, 1_000_000))
            .latency(Duration::ZERO, Duration::from_micros(200))
            .faults(faults)
            .build();
        let server = sim::serve(api.clone()).await.unwrap();
        (api, server)
    };
    let (_, server) = start(sim::Faults::new()).await;
    // Every stream of this one breaks with an overloaded_error after 6 events.
    let (broken_api, broken) = start(sim::Faults::new().always(sim::Fault::StreamBreak {
        after_events: 6,
        how: sim::StreamBreak::Overloaded,
        probability: 1.0,
    }))
    .await;
    let client = ServiceBuilder::new()
        .layer(preset::anthropic())
        .service(ReqwestService::new(reqwest::Client::new()));
    let request = |server: &sim::SimServer| {
        let body = sim::message_body(model, 100, 256, 200);
        let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["stream"] = serde_json::Value::Bool(true);
        http::Request::post(format!("http://{}/v1/messages", server.addr()))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&json).unwrap(),
            )))
            .unwrap()
    };
    let response = client.clone().oneshot(request(&server)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["transfer-encoding"].to_str().unwrap(),
        "chunked"
    );
    assert!(
        response
            .headers()
            .contains_key("anthropic-ratelimit-requests-limit")
    );
    let (frames, data, error) = read(response.into_body()).await;
    assert!(error.is_none(), "{error:?}");
    assert!(frames > 1, "{frames} frames");
    let text = String::from_utf8(data).unwrap();
    assert!(text.contains("\"output_tokens\":200"));
    assert!(text.ends_with("data: {\"type\":\"message_stop\"}\n\n"));

    let response = client.oneshot(request(&broken)).await.unwrap();
    let (_, data, error) = read(response.into_body()).await;
    let error = error.expect("the stream breaks");
    let interrupted = error
        .downcast_ref::<StreamInterrupted>()
        .unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(interrupted.outcome().kind(), OutcomeKind::Overloaded);
    assert_eq!(interrupted.bytes(), data.len() as u64);
    assert_eq!(broken_api.counters().received(), 1, "nothing re-sent");
    server.shutdown().await;
    broken.shutdown().await;
}

/// Every frame of a body: how many, the data, the error it ended with.
async fn read<B>(body: B) -> (usize, Vec<u8>, Option<tower_llm_limits::BoxError>)
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<tower_llm_limits::BoxError>,
{
    let mut body = Box::pin(body);
    let mut frames = 0;
    let mut data = Vec::new();
    loop {
        match body.frame().await {
            None => return (frames, data, None),
            Some(Ok(frame)) => {
                frames += 1;
                data.extend_from_slice(&frame.into_data().unwrap_or_default());
            }
            Some(Err(e)) => return (frames, data, Some(e.into())),
        }
    }
}
