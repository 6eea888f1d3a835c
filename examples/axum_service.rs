//! An axum app whose handler calls Claude through ONE shared preset stack: every request to the
//! app, however many run at once, draws on the same rate-limit budget, breaker and concurrency
//! cap. `POST /stream` relays a streaming answer (`"stream": true`) to the app's own client as it
//! arrives, through the same stack. `GET /status` serves what the stack knows right now as JSON,
//! `GET /status.txt` as a table (both from
//! [`status::Snapshot`](tower_llm_limits::status::Snapshot)).
//!
//! ```sh
//! cargo run --features reqwest --example axum_service             # self-test: 50 concurrent
//!                                                                 # requests while /status.txt is
//!                                                                 # polled, then /status
//! cargo run --features reqwest --example axum_service -- --serve  # keeps serving (prints the address)
//! ANTHROPIC_API_KEY=... cargo run --features reqwest --example axum_service -- --serve
//! ```
//!
//! Then `curl -d 'Say hello' http://ADDR/ask`, `curl -N -d 'Tell a story' http://ADDR/stream`,
//! `curl http://ADDR/status.txt` and
//! `curl http://ADDR/status`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_limits::preset::{self, Preset, PresetLayer};
use tower_llm_limits::reqwest::ReqwestService;
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

/// `POST /stream` with the prompt as the body: asks Claude for a streaming answer through the
/// shared stack and relays its events to the caller as they arrive. The stack watches the
/// stream on the way (usage, errors, stalls): a stream that breaks mid-way ends the relayed body
/// with an error, which closes the app's response early, as the provider's would have.
async fn stream(State(app): State<App>, prompt: String) -> axum::response::Response {
    let request = app.target.messages_request(&prompt, 256);
    let (parts, body) = request.into_parts();
    let bytes = tower_llm_limits::cost::BodyBytes::body_bytes(&body).unwrap_or_default();
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    json["stream"] = serde_json::Value::Bool(true);
    let body = http_body_util::Full::new(bytes::Bytes::from(json.to_string()));
    match app
        .claude
        .oneshot(http::Request::from_parts(parts, body))
        .await
    {
        Ok(response) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/event-stream")
                .to_string();
            (
                status,
                [(header::CONTENT_TYPE, content_type)],
                axum::body::Body::new(response.into_body()),
            )
                .into_response()
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// `GET /status`: the live limits, budgets, breaker and concurrency of the shared stack, as JSON.
async fn status(State(app): State<App>) -> Json<serde_json::Value> {
    Json(app.layer.snapshot().to_json())
}

/// `GET /status.txt`: the same as a table for humans.
async fn status_txt(State(app): State<App>) -> String {
    app.layer.snapshot().to_string()
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
        .route("/stream", post(stream))
        .route("/status", get(status))
        .route("/status.txt", get(status_txt))
        .with_state(App {
            claude,
            layer,
            target: Arc::new(target),
        });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "app listening on http://{addr} (POST /ask, POST /stream, GET /status, GET /status.txt)"
    );
    if serve {
        server.await??;
        return Ok(());
    }

    // Self-test: 50 concurrent users of the app; meanwhile an operator polls /status.txt and
    // sees the live limits (learned, remaining, queued, in flight) move.
    let http = reqwest::Client::new();
    let done = Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn({
        let (http, done) = (http.clone(), done.clone());
        async move {
            let mut tables = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = done.notified() => return tables,
                    _ = tick.tick() => {}
                }
                let url = format!("http://{addr}/status.txt");
                match http.get(url).send().await {
                    Ok(response) => match response.text().await {
                        Ok(table) => {
                            println!("GET /status.txt while the workload runs:\n{table}");
                            tables.push(table);
                        }
                        Err(error) => println!("reading /status.txt failed: {error}"),
                    },
                    Err(error) => println!("GET /status.txt failed: {error}"),
                }
            }
        }
    });
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
    done.notify_one();
    let tables = watcher.await?;
    println!("{ok} of 50 requests to the app succeeded, {failed} failed");

    // One streaming answer relayed by the app.
    let mut relayed = http
        .post(format!("http://{addr}/stream"))
        .body("Tell a short story.")
        .send()
        .await?;
    println!(
        "POST /stream: {} {:?}",
        relayed.status(),
        relayed.headers().get("content-type")
    );
    let (mut chunks, mut events) = (0, String::new());
    while let Some(chunk) = relayed.chunk().await? {
        chunks += 1;
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    println!(
        "POST /stream relayed {} events in {chunks} chunks",
        events.matches("event: ").count()
    );
    if !events.ends_with("data: {\"type\":\"message_stop\"}\n\n") {
        return Err("the relayed stream did not end with message_stop".into());
    }
    let status = http
        .get(format!("http://{addr}/status"))
        .send()
        .await?
        .text()
        .await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    println!("GET /status: {}", serde_json::to_string_pretty(&status)?);
    server.abort();
    if failed > 0 {
        return Err(format!("{failed} requests failed").into());
    }
    // The operator's view: the live tables showed the model's limits while the requests ran,
    // and the final JSON has the limits the headers taught.
    let live = tables.iter().filter(|t| t.contains("requests")).count();
    println!(
        "{live} of {} live /status.txt tables showed the learned limits",
        tables.len()
    );
    if live == 0 {
        return Err("/status.txt never showed the limits while the workload ran".into());
    }
    if status["rate_limits"][0]["dimensions"]["requests"]["limit"]
        .as_u64()
        .is_none()
    {
        return Err("/status has no requests limit".into());
    }
    Ok(())
}
