//! The stacks to copy: each is a function returning a `Layer` (or a `ServiceBuilder`) to put in
//! front of any `tower::Service<http::Request<B>>` client. `main` runs each briefly.
//!
//! ```sh
//! cargo run --features reqwest --example stacks                  # everything against the simulated API
//! ANTHROPIC_API_KEY=... OPENAI_API_KEY=... cargo run --features reqwest --example stacks
//! ```
//!
//! With `ANTHROPIC_API_KEY` the Anthropic stack calls api.anthropic.com, with `OPENAI_API_KEY`
//! the OpenAI stack calls api.openai.com; the Bedrock-style and custom stacks always run against
//! the simulated API (real Bedrock needs SigV4 request signing, outside this crate's scope).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::Body as _;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_llm_limits::BoxError;
use tower_llm_limits::breaker::{self, CircuitBreakerLayer};
use tower_llm_limits::concurrency::ConcurrencyLimitLayer;
use tower_llm_limits::concurrency::adaptive::{AdaptiveConcurrencyLimitLayer, Aimd};
use tower_llm_limits::cost::{Cost, CostFn, cost_fn};
use tower_llm_limits::preset::{self, PresetLayer};
use tower_llm_limits::rate_limit::{self, HostKey, RateLimitLayer};
use tower_llm_limits::reqwest::ReqwestService;
use tower_llm_limits::retry::{self, RetryLayer};
use tower_llm_limits::signals::SignalsLayer;

/// Anthropic: limits learned per model from `anthropic-ratelimit-*`, 429 `retry-after` honoured,
/// the breaker trips on 529 overload, 413 and other 4xx never retried.
fn anthropic_stack() -> PresetLayer {
    preset::anthropic()
}

/// OpenAI: limits learned per model from `x-ratelimit-*` (Go-style reset durations),
/// `retry-after-ms` honoured. Here with a 30 s ceiling on any wait for budget.
fn openai_stack() -> PresetLayer {
    preset::openai().max_wait(Duration::from_secs(30))
}

/// Bedrock: no rate-limit headers, so the limits are configured (here 200 requests and 200,000
/// tokens per minute per host, as a Bedrock quota would be); error kinds arrive in
/// `x-amzn-errortype` (`ThrottlingException:http://...`), which the default classifier already
/// reads: throttling is a rate limit, `ServiceUnavailableException` and `ModelNotReadyException`
/// are overload (they trip the breaker). `preset::generic` keys the limits by host and also
/// trips the breaker on other 5xx; the concurrency cap starts lower than the Anthropic preset's.
fn bedrock_stack() -> PresetLayer<HostKey> {
    let concurrency = AdaptiveConcurrencyLimitLayer::new(Aimd::new().initial(16).min(2).max(64))
        .expect("a valid AIMD configuration");
    preset::generic()
        .limits(rate_limit::Limits::per_minute(200, 200_000, 200_000))
        .concurrency(concurrency)
}

/// The cost of a request of the custom stack: one request, a quarter of the body's bytes as input
/// tokens, and 256 output tokens reserved (the most our requests ask for).
type CustomCost = CostFn<fn(&http::Request<Full<Bytes>>) -> Cost>;

fn custom_cost(request: &http::Request<Full<Bytes>>) -> Cost {
    let bytes = request.body().size_hint().exact().unwrap_or(4_096);
    Cost::new(1, bytes.div_ceil(4), 256)
}

/// A hand-composed stack: Retry → CircuitBreaker → RateLimit (configured limits, custom cost) →
/// ConcurrencyLimit (fixed at 8) → Signals.
type CustomLayers = Stack<
    SignalsLayer,
    Stack<
        ConcurrencyLimitLayer,
        Stack<
            RateLimitLayer<rate_limit::DefaultKey, CustomCost>,
            Stack<CircuitBreakerLayer, Stack<RetryLayer, Identity>>,
        >,
    >,
>;

fn custom_stack() -> ServiceBuilder<CustomLayers> {
    let limits = rate_limit::Limits::per_minute(300, 60_000, 20_000);
    ServiceBuilder::new()
        .layer(RetryLayer::new(retry::Policy::new().max_retries(4)))
        .layer(CircuitBreakerLayer::new(
            breaker::Policy::new().consecutive_failures(3),
        ))
        .layer(
            RateLimitLayer::with_limits(limits)
                .cost_fn(cost_fn(
                    custom_cost as fn(&http::Request<Full<Bytes>>) -> Cost,
                ))
                .max_wait(Duration::from_secs(20)),
        )
        .layer(ConcurrencyLimitLayer::new(8))
        .layer(SignalsLayer::new())
}

/// The simulated API as Bedrock would answer: 429 `ThrottlingException` and 503
/// `ServiceUnavailableException` in `x-amzn-errortype`, no rate-limit headers.
fn bedrock_like(response: http::Response<Full<Bytes>>) -> http::Response<Full<Bytes>> {
    let (mut parts, body) = response.into_parts();
    let rate_limit_headers: Vec<_> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("anthropic-ratelimit-"))
        .cloned()
        .collect();
    for name in rate_limit_headers {
        parts.headers.remove(name);
    }
    let error_type = match parts.status.as_u16() {
        429 => Some("ThrottlingException"),
        529 => {
            parts.status = StatusCode::SERVICE_UNAVAILABLE;
            Some("ServiceUnavailableException")
        }
        _ => None,
    };
    if let Some(error_type) = error_type {
        parts.headers.insert(
            "x-amzn-errortype",
            http::HeaderValue::from_static(error_type),
        );
    }
    http::Response::from_parts(parts, body)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let http = || ReqwestService::new(reqwest::Client::new());

    println!("Anthropic (preset::anthropic):");
    let target = support::Target::from_env(
        "ANTHROPIC_API_KEY",
        "https://api.anthropic.com",
        true,
        support::sim_api(),
    )
    .await?;
    let client = ServiceBuilder::new()
        .layer(anthropic_stack())
        .service(http());
    let mut ok = support::drive("anthropic", client, 40, |i| {
        target.messages_request(&format!("Question {i}"), 64)
    })
    .await;

    println!("OpenAI (preset::openai):");
    let target = support::Target::from_env(
        "OPENAI_API_KEY",
        "https://api.openai.com",
        true,
        support::sim_api(),
    )
    .await?;
    if target.sim.is_some() {
        println!("  (the simulated API speaks Anthropic's dialect; the stack reads either)");
    }
    let client = ServiceBuilder::new().layer(openai_stack()).service(http());
    ok += support::drive("openai", client, 40, |i| {
        target.messages_request(&format!("Question {i}"), 64)
    })
    .await;

    println!(
        "Bedrock-style (preset::generic: x-amzn-errortype read by the default classifier, configured limits):"
    );
    let api = support::sim_api();
    let bedrock = tower::ServiceBuilder::new()
        .map_response(bedrock_like)
        .service(api.clone());
    // In process (no loopback server): the host only names the rate-limit key.
    let target = support::Target {
        base_uri: "https://bedrock-runtime.us-east-1.amazonaws.com".into(),
        key: None,
        model: support::MODEL.into(),
        sim: None,
        openai: false,
    };
    let client = ServiceBuilder::new()
        .layer(bedrock_stack())
        .service(bedrock);
    ok += support::drive("bedrock", client, 40, |i| {
        target.messages_request(&format!("Question {i}"), 64)
    })
    .await;

    println!("Custom (Retry → CircuitBreaker → RateLimit → ConcurrencyLimit → Signals):");
    // A fresh organisation whose buckets start full.
    let api = tower_llm_limits_sim::SimApi::builder()
        .model(
            support::MODEL,
            tower_llm_limits_sim::Limits::per_minute(600, 100_000, 20_000),
        )
        .seed(9)
        .build();
    let target = support::Target::sim(api).await?;
    let client = custom_stack().service(http());
    ok += support::drive("custom", client, 40, |i| {
        target.messages_request(&format!("Question {i}"), 64)
    })
    .await;
    if ok < 160 {
        return Err(format!("{} of 160 calls failed", 160 - ok).into());
    }
    Ok(())
}
