//! reqwest + the Anthropic preset: a few concurrent Messages requests through one shared stack.
//!
//! ```sh
//! cargo run --features reqwest --example anthropic_reqwest    # against the simulated API
//! ANTHROPIC_API_KEY=... cargo run --features reqwest --example anthropic_reqwest
//!                                                             # against api.anthropic.com
//! ```
//!
//! Prints each call's status and number of attempts, then streams one answer
//! (`"stream": true`), printing its text deltas as they arrive, then the limits the stack learned
//! from the `anthropic-ratelimit-*` headers. The stream goes through the same stack: its usage
//! settles the rate limiter's reservation, an error in it counts for the breaker, and a stream
//! that breaks ends with a typed `StreamInterrupted` error.

mod support;

use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_limits::cost::BodyBytes;
use tower_llm_limits::reqwest::ReqwestService;
use tower_llm_limits::signals::sse::SseParser;
use tower_llm_limits::{BoxError, preset, retry};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let target = support::Target::from_env(
        "ANTHROPIC_API_KEY",
        "https://api.anthropic.com",
        true,
        support::sim_api(),
    )
    .await?;

    // Built once: every clone of `client` shares one budget, breaker and concurrency cap.
    let layer = preset::anthropic();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(ReqwestService::new(reqwest::Client::new()));

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..8 {
        let request = target.messages_request(&format!("Say hello in language #{i}."), 64);
        calls.spawn(client.clone().oneshot(request));
    }
    while let Some(joined) = calls.join_next().await {
        match joined? {
            Ok(response) => {
                let attempts = response
                    .extensions()
                    .get::<retry::Attempts>()
                    .map_or(1, |a| a.get());
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                println!(
                    "{status} after {attempts} attempt(s), {} body bytes",
                    body.len()
                );
            }
            Err(error) => println!("failed: {error}"),
        }
    }

    // One streaming answer: the text deltas printed as they arrive.
    let mut request = target.messages_request("Tell a short story.", 256);
    let bytes = BodyBytes::body_bytes(request.body()).unwrap_or_default();
    let mut json: serde_json::Value = serde_json::from_slice(&bytes)?;
    json["stream"] = serde_json::Value::Bool(true);
    *request.body_mut() = http_body_util::Full::new(bytes::Bytes::from(json.to_string()));
    let response = client.clone().oneshot(request).await?;
    println!("stream: {}", response.status());
    let mut body = std::pin::pin!(response.into_body());
    let mut parser = SseParser::new();
    let mut deltas = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        parser.feed(&data, |event| {
            if event.name() != "content_block_delta" {
                return;
            }
            let delta: serde_json::Value = serde_json::from_slice(event.data()).unwrap_or_default();
            if let Some(text) = delta["delta"]["text"].as_str() {
                deltas += 1;
                print!("{text}");
            }
        });
    }
    println!("\nstream: {deltas} text deltas");

    println!("learned limits:");
    support::print_limits(layer.get_rate_limit().state());
    support::print_sim(&target);
    Ok(())
}
