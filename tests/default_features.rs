//! What a user gets from `tower-llm-limits = "0.1"` without features: the preset keys each model
//! separately and charges the JSON estimate of the body, as its docs promise.
//!
//! This file runs twice in `.ci/run`: here (where the crate's tests also see the
//! dev-dependencies' features of shared crates, such as tokio's `full`), and from
//! `ci/default-user`, a downstream crate that depends on this one with default features only and
//! compiles this very file, so the build a user gets is the build tested. It uses nothing but
//! the default features, `http`, `tower` and `tokio`.

use std::sync::{Arc, Mutex};

use tower::{Layer, ServiceExt, service_fn};
use tower_llm_limits::cost::{Cost, DefaultCost, EstimateCost, IMAGE_TOKENS, inspect_json};
use tower_llm_limits::preset;
use tower_llm_limits::rate_limit::{DefaultKey, KeyFn, Limits, RateLimitKey, RateLimitState};
use tower_llm_limits::signals::Dimension;

fn messages(model: &str, max_tokens: u64) -> String {
    // 35 bytes of text in one message: ceil(35 / 3.5) = 10 tokens, + 4 for the message.
    format!(
        r#"{{"model":"{model}","max_tokens":{max_tokens},
            "messages":[{{"role":"user","content":"Say hello in exactly eleven words."}}]}}"#
    )
}

fn request(body: String) -> http::Request<String> {
    http::Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

#[test]
fn the_default_key_is_the_model_and_the_default_cost_the_json_estimate() {
    let req = request(messages("claude-sonnet-4-5", 300));
    assert_eq!(
        DefaultKey::new().key(&req),
        RateLimitKey::new("claude-sonnet-4-5")
    );
    assert_eq!(DefaultCost::new().estimate(&req), Cost::new(1, 10 + 4, 300));

    let info = inspect_json(req.body().as_bytes()).expect("a JSON object");
    assert_eq!(info.model(), Some("claude-sonnet-4-5"));
    assert_eq!((info.input_tokens(), info.max_tokens()), (14, Some(300)));

    // An image block is a fixed charge, not the length of its base64 data.
    let image = r#"{"model":"m","messages":[{"role":"user","content":[
        {"type":"image","source":{"type":"base64","data":"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="}}]}]}"#;
    assert_eq!(
        DefaultCost::new().estimate(&request(image.into())),
        Cost::new(1, IMAGE_TOKENS + 4, 4096)
    );
}

#[tokio::test(start_paused = true)]
async fn the_preset_charges_each_model_its_own_buckets_with_the_json_estimate() {
    let state = RateLimitState::with_limits(Limits::per_minute(50, 30_000, 8_000));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let seen = seen.clone();
        service_fn(move |req: http::Request<String>| {
            let key = req.extensions().get::<RateLimitKey>().cloned();
            seen.lock().unwrap().push(key);
            async { Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new())) }
        })
    };
    let stack = preset::anthropic()
        .rate_limit_state(state.clone())
        .layer(client);

    for (model, max_tokens) in [("claude-sonnet-4-5", 300), ("claude-haiku-4-5", 1_000)] {
        let response = stack
            .clone()
            .oneshot(request(messages(model, max_tokens)))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    let keys: Vec<_> = seen.lock().unwrap().iter().flatten().cloned().collect();
    assert_eq!(
        keys,
        [
            RateLimitKey::new("claude-sonnet-4-5"),
            RateLimitKey::new("claude-haiku-4-5")
        ]
    );
    for (model, input, output) in [
        ("claude-sonnet-4-5", 14, 300),
        ("claude-haiku-4-5", 14, 1_000),
    ] {
        let key = state
            .key_snapshot(&RateLimitKey::new(model))
            .unwrap_or_else(|| panic!("{model} has buckets of its own"));
        let level = |d| key.bucket(d).unwrap().level();
        assert_eq!(level(Dimension::Requests), 50 - 1, "{model}");
        // The estimate, reserved at the high quantile of what the server may charge for it
        // (nothing is learned yet: the prior's spread).
        let reserved = (input as f64 * key.input_reservation()).ceil() as u64;
        assert!(
            reserved > input,
            "{model}: the reservation covers the estimate's spread"
        );
        assert_eq!(level(Dimension::InputTokens), 30_000 - reserved, "{model}");
        // No usage or headers in the answer: the reservation of `max_tokens` stands.
        assert_eq!(level(Dimension::OutputTokens), 8_000 - output, "{model}");
    }
    assert!(state.key_snapshot(&RateLimitKey::global()).is_none());
}
