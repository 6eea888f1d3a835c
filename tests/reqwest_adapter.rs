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
