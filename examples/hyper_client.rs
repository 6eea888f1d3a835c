//! hyper-util's legacy `Client` + the Anthropic preset. The client is already a
//! `tower::Service<http::Request<B>>`: no adapter needed.
//!
//! ```sh
//! cargo run --example hyper_client
//! ```
//!
//! This example's connector is plain `HttpConnector` (no TLS), so it always talks to the
//! simulated API on loopback. For `https://api.anthropic.com`, build the client with a TLS
//! connector instead (for instance `hyper-rustls`'s `HttpsConnector`); the stack is the same.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower_llm_limits::{BoxError, preset};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if std::env::var_os("ANTHROPIC_API_KEY").is_some() {
        println!(
            "ANTHROPIC_API_KEY is set, but this example's hyper client has no TLS connector: \
             add one (e.g. hyper-rustls) to call https://api.anthropic.com. Using the simulated \
             API instead."
        );
    }
    let target = support::Target::from_env(
        "ANTHROPIC_API_KEY",
        "https://api.anthropic.com",
        false,
        support::sim_api(),
    )
    .await?;

    let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
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
