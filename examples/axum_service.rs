//! An axum app whose handler calls Claude through ONE shared preset stack: every request to the
//! app, however many run at once, draws on the same rate-limit budget, breaker and concurrency
//! cap. `GET /status` serves what the stack knows right now.
//!
//! ```sh
//! cargo run --example axum_service            # self-test: 50 concurrent requests, then /status
//! cargo run --example axum_service -- --serve # keeps serving (prints the address)
//! ANTHROPIC_API_KEY=... cargo run --example axum_service -- --serve
//! ```
//!
//! Then `curl -d 'Say hello' http://ADDR/ask` and `curl http://ADDR/status`.

mod support;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_limits::preset::{self, Preset, PresetLayer};
use tower_llm_limits::reqwest::ReqwestService;
use tower_llm_limits::signals::Dimension;
use tower_llm_limits::{BoxError, retry};

/// What every handler shares: the stack (cheap to clone, one shared state) and the layer it was
/// built from (to read that state for `/status`).
#[derive(Clone)]
struct App {
    claude: Preset<ReqwestService>,
    layer: PresetLayer,
    target: Arc<support::Target>,
}

/// `POST /ask` with the prompt as the body: forwards it to Claude through the shared stack.
async fn ask(State(app): State<App>, prompt: String) -> impl IntoResponse {
    let request = app.target.messages_request(&prompt, 128);
    match app.claude.oneshot(request).await {
        Ok(response) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let attempts = response
                .extensions()
                .get::<retry::Attempts>()
                .map_or(1, |a| a.get());
            match response.into_body().collect().await {
                Ok(body) => (
                    status,
                    [
                        (header::CONTENT_TYPE, "application/json".to_string()),
                        (
                            header::HeaderName::from_static("x-attempts"),
                            attempts.to_string(),
                        ),
                    ],
                    body.to_bytes(),
                )
                    .into_response(),
                Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
            }
        }
        // A local decision (breaker open, wait too long, retry budget spent) or a transport error.
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// `GET /status`: the live limits, breaker state and concurrency of the shared stack.
async fn status(State(app): State<App>) -> Json<serde_json::Value> {
    let keys: Vec<_> = app
        .layer
        .get_rate_limit()
        .state()
        .snapshot()
        .into_iter()
        .map(|key| {
            let bucket = |d| {
                key.bucket(d).map(|b| {
                    serde_json::json!({
                        "capacity": b.capacity(),
                        "level": b.level(),
                        "learned": b.learned(),
                        "configured": b.configured(),
                    })
                })
            };
            serde_json::json!({
                "key": key.key().as_str(),
                "requests": bucket(Dimension::Requests),
                "input_tokens": bucket(Dimension::InputTokens),
                "output_tokens": bucket(Dimension::OutputTokens),
                "in_flight": key.in_flight(),
                "queued": key.queued(),
            })
        })
        .collect();
    let limiter = app.layer.get_concurrency().limiter();
    Json(serde_json::json!({
        "rate_limits": keys,
        "breaker": app.layer.get_breaker().state().as_str(),
        "concurrency": {
            "limit": limiter.limit(),
            "in_flight": limiter.in_flight(),
            "waiting": limiter.waiting(),
        },
    }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve = std::env::args().any(|a| a == "--serve");
    let target = support::Target::from_env(
        "ANTHROPIC_API_KEY",
        "https://api.anthropic.com",
        true,
        support::sim_api(),
    )
    .await?;

    // Built once, cloned into the state: one budget for the whole app.
    let layer = preset::anthropic();
    let claude = ServiceBuilder::new()
        .layer(layer.clone())
        .service(ReqwestService::new(reqwest::Client::new()));
    let app = Router::new()
        .route("/ask", post(ask))
        .route("/status", get(status))
        .with_state(App {
            claude,
            layer,
            target: Arc::new(target),
        });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("app listening on http://{addr} (POST /ask, GET /status)");
    if serve {
        server.await??;
        return Ok(());
    }

    // Self-test: 50 concurrent users of the app, then the app's view of the limits.
    let http = reqwest::Client::new();
    let mut users = tokio::task::JoinSet::new();
    for i in 0..50 {
        let request = http
            .post(format!("http://{addr}/ask"))
            .body(format!("Write a haiku about request #{i}."));
        users.spawn(async move { request.send().await });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(joined) = users.join_next().await {
        match joined? {
            Ok(response) if response.status().is_success() => ok += 1,
            Ok(response) => {
                println!("app answered {}", response.status());
                failed += 1;
            }
            Err(error) => {
                println!("request to the app failed: {error}");
                failed += 1;
            }
        }
    }
    println!("{ok} of 50 requests to the app succeeded, {failed} failed");
    let status = http
        .get(format!("http://{addr}/status"))
        .send()
        .await?
        .text()
        .await?;
    println!("GET /status: {status}");
    server.abort();
    if failed > 0 {
        return Err(format!("{failed} requests failed").into());
    }
    Ok(())
}
