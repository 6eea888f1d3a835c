//! reqwest + the Anthropic preset: a few concurrent Messages requests through one shared stack.
//!
//! ```sh
//! cargo run --features reqwest --example anthropic_reqwest    # against the simulated API
//! ANTHROPIC_API_KEY=... cargo run --features reqwest --example anthropic_reqwest
//!                                                             # against api.anthropic.com
//! ```
//!
//! Prints each call's status and number of attempts, then the limits the stack learned from the
//! `anthropic-ratelimit-*` headers.

mod support;

use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_limits::reqwest::ReqwestService;
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

    println!("learned limits:");
    support::print_limits(layer.get_rate_limit().state());
    support::print_sim(&target);
    Ok(())
}
