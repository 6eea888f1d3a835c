//! hyper-util's legacy `Client` + the Anthropic preset. The client is already a
//! `tower::Service<http::Request<B>>`: no adapter needed.
//!
//! ```sh
//! cargo run --example hyper_client
//! ```
//!
//! ```sh
//! ANTHROPIC_API_KEY=... cargo run --example hyper_client   # the real API, over TLS
//! ```
//!
//! The connector is `hyper-rustls`'s `HttpsConnector` with Mozilla's root certificates: it
//! speaks TLS to `https://api.anthropic.com` and plain HTTP to the simulated API on loopback.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower_llm_limits::{BoxError, preset};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let target = support::Target::from_env(
        "ANTHROPIC_API_KEY",
        "https://api.anthropic.com",
        true,
        support::sim_api(),
    )
    .await?;

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let hyper_client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);
    let layer = preset::anthropic();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper_client);

    let ok = support::drive("hyper", client, 40, |i| {
        target.messages_request(&format!("Summarise document #{i}."), 64)
    })
    .await;
    println!("learned limits:");
    support::print_limits(layer.get_rate_limit().state());
    support::print_sim(&target);
    if ok < 40 {
        return Err(format!("{} of 40 calls failed", 40 - ok).into());
    }
    Ok(())
}
