//! Shared by the examples: where to send (the simulated API or the real one) and how to print
//! what the stack learned. Not an example itself (`cargo` only builds `examples/*.rs`).
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower_llm_limits::rate_limit::RateLimitState;
use tower_llm_limits::signals::Dimension;
use tower_llm_limits_sim::{self as sim, Limits, SimApi, SimServer};

/// The model the examples ask for (`ANTHROPIC_MODEL` overrides it on the real API).
pub const MODEL: &str = "claude-sonnet-4-5";

/// The model asked for on the real OpenAI API (`OPENAI_MODEL` overrides it).
pub const OPENAI_MODEL: &str = "gpt-4o-mini";

/// Where requests go: a real API (with its key) or the simulated one on loopback.
pub struct Target {
    /// `https://api.anthropic.com`, or the sim's `http://127.0.0.1:port`.
    pub base_uri: String,
    /// The API key, when calling the real API. Never printed.
    pub key: Option<String>,
    /// The model to ask for.
    pub model: String,
    /// The running simulated API (kept alive while the example runs).
    pub sim: Option<(SimApi, SimServer)>,
    /// Whether requests are OpenAI chat completions (real OpenAI API) rather than Anthropic
    /// Messages (the real Anthropic API, and the simulated API in every case).
    pub openai: bool,
}

impl Target {
    /// The real API when `key_var` is set (and `real` is allowed), else the simulated API
    /// serving `api` on loopback. Says which on stdout.
    pub async fn from_env(
        key_var: &str,
        real_base: &str,
        real: bool,
        api: SimApi,
    ) -> std::io::Result<Target> {
        match std::env::var(key_var).ok().filter(|k| !k.is_empty()) {
            Some(key) if real => {
                println!("{key_var} is set: calling the real API at {real_base} (key not shown)");
                let openai = key_var == "OPENAI_API_KEY";
                let (model_var, default_model) = if openai {
                    ("OPENAI_MODEL", OPENAI_MODEL)
                } else {
                    ("ANTHROPIC_MODEL", MODEL)
                };
                Ok(Target {
                    base_uri: real_base.to_string(),
                    key: Some(key),
                    model: std::env::var(model_var).unwrap_or_else(|_| default_model.into()),
                    sim: None,
                    openai,
                })
            }
            _ => {
                print!("no {key_var}: ");
                Target::sim(api).await
            }
        }
    }

    /// The simulated API serving `api` on loopback. Says so on stdout.
    pub async fn sim(api: SimApi) -> std::io::Result<Target> {
        let server = sim::serve(api.clone()).await?;
        println!(
            "calling the simulated API on {} (no key needed)",
            server.base_uri()
        );
        Ok(Target {
            base_uri: server.base_uri(),
            key: None,
            model: MODEL.to_string(),
            sim: Some((api, server)),
            openai: false,
        })
    }

    /// A request asking for at most `max_tokens` tokens: an Anthropic Messages request, or an
    /// OpenAI chat completion on the real OpenAI API.
    pub fn messages_request(&self, prompt: &str, max_tokens: u32) -> http::Request<Full<Bytes>> {
        let body = serde_json::json!({
            "model": self.model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        });
        let path = if self.openai {
            "/v1/chat/completions"
        } else {
            "/v1/messages"
        };
        let mut request = http::Request::post(format!("{}{path}", self.base_uri))
            .header("content-type", "application/json");
        match (&self.key, self.openai) {
            (Some(key), true) => request = request.header("authorization", format!("Bearer {key}")),
            (Some(key), false) => request = request.header("x-api-key", key),
            (None, _) => {}
        }
        if !self.openai {
            request = request.header("anthropic-version", "2023-06-01");
        }
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request")
    }
}

/// A small simulated organisation: 600 requests, 100,000 input and 20,000 output tokens per
/// minute for [`MODEL`], starting with 5 % of each bucket (so a burst of 50 requests is paced
/// for a couple of seconds instead of being refused), answers in 50 ms plus 0.2 ms per token.
pub fn sim_api() -> SimApi {
    SimApi::builder()
        .model(MODEL, Limits::per_minute(600, 100_000, 20_000))
        .starting_fill(0.05)
        .latency(Duration::from_millis(50), Duration::from_micros(200))
        .seed(8)
        .build()
}

/// Prints what a rate-limit state has learned, one line per key.
pub fn print_limits(state: &RateLimitState) {
    for key in state.snapshot() {
        print!("  {:<20}", key.key().as_str());
        for (name, dimension) in [
            ("requests", Dimension::Requests),
            ("input", Dimension::InputTokens),
            ("output", Dimension::OutputTokens),
        ] {
            if let Some(bucket) = key.bucket(dimension) {
                print!(" {name} {}/{}", bucket.level(), bucket.capacity());
                if let Some(learned) = bucket.learned() {
                    print!(" (learned {learned})");
                }
            }
        }
        println!(" in flight {}, queued {}", key.in_flight(), key.queued());
    }
}

/// Prints what the simulated API saw, when it was used.
pub fn print_sim(target: &Target) {
    if let Some((api, _)) = &target.sim {
        let c = api.counters();
        println!(
            "sim: {} requests received, {} answered 429, {} answered 529",
            c.received(),
            c.rate_limited(),
            c.overloaded()
        );
    }
}

/// Sends `n` concurrent requests made by `request` through clones of `client`; prints and
/// returns how many succeeded.
pub async fn drive<S, B>(
    name: &str,
    client: S,
    n: usize,
    request: impl Fn(usize) -> http::Request<Full<Bytes>>,
) -> usize
where
    S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let call = client.clone().oneshot(request(i));
        calls.spawn(async move {
            let response = call.await?;
            let status = response.status();
            let attempts = response
                .extensions()
                .get::<tower_llm_limits::retry::Attempts>()
                .map_or(1, |a| a.get());
            // Read the answer to the end (this also releases a concurrency permit held by it).
            let _ = response.into_body().collect().await;
            Ok::<_, S::Error>((status, attempts))
        });
    }
    let (mut ok, mut retried, mut refused, mut failed) = (0, 0, 0, 0);
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok(Ok((status, attempts))) => {
                if status.is_success() {
                    ok += 1;
                } else {
                    refused += 1;
                }
                if attempts > 1 {
                    retried += 1;
                }
            }
            Ok(Err(error)) => {
                println!("  {name}: error: {error}");
                failed += 1;
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "  {name}: {ok}/{n} succeeded, {refused} error responses, {failed} errors, \
         {retried} needed a retry, {:.1?}",
        started.elapsed()
    );
    ok
}
