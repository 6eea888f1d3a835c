//! The live status of a stack: a [`Snapshot`] of every shared state its layers keep.
//!
//! [`PresetLayer::snapshot`](crate::preset::PresetLayer::snapshot) reads every shared state of
//! a preset; the `with_*` methods build one from separate layers. It is a
//! plain value: per rate-limit key the limit of each dimension (configured, learned from the
//! headers, and the one in effect), the budget the limiter believes is left, how long until the
//! bucket is full, the cooldown left after a 429, requests in flight and waiting; each
//! breaker's state and how long until an open one lets probes through; the concurrency cap's
//! limit and permits held; the retries the retry budget allows. [`Display`](std::fmt::Display)
//! renders a compact table, [`Snapshot::to_json`] a JSON value.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::preset;
//! use tower_llm_limits_sim::{self as sim, Limits, SimApi};
//! use tower_llm_limits::signals::Dimension;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let api = SimApi::builder()
//!     .model("claude-sonnet-4-5", Limits::per_minute(50, 30_000, 8_000))
//!     .build();
//! let layer = preset::anthropic();
//! let claude = ServiceBuilder::new().layer(layer.clone()).service(api);
//!
//! let body = sim::message_body("claude-sonnet-4-5", 1_000, 256, 100);
//! let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!     .body(http_body_util::Full::new(body))?;
//! claude.oneshot(request).await?;
//!
//! let snapshot = layer.snapshot();
//! let key = snapshot.rate_limit("claude-sonnet-4-5").unwrap();
//! // Learned from the `anthropic-ratelimit-*` headers of the first response:
//! assert_eq!(key.dimension(Dimension::Requests).unwrap().learned(), Some(50));
//! assert_eq!(key.dimension(Dimension::InputTokens).unwrap().limit(), 30_000);
//! println!("{snapshot}");
//! # Ok(())
//! # }
//! ```
//!
//! prints
//!
//! ```text
//! key                dimension      remaining      limit configured    learned  full in  in flight queued cooldown
//! claude-sonnet-4-5  requests              49         50          -         50     1.2s          0      0        -
//!                    input_tokens       28500      30000          -      30000     3.0s
//!                    output_tokens       7610       8000          -       8000     2.9s
//! breaker            state          probes in
//! *                  closed                 -
//! concurrency: limit 32, in flight 0, waiting 0 (adaptive, 2..=512)
//! retry budget: 100 retries available (window 10.0s)
//! ```
//!
//! ## JSON
//!
//! ```json
//! {
//!   "rate_limits": [{
//!     "key": "claude-sonnet-4-5",
//!     "dimensions": {
//!       "requests": {"limit": 50, "configured": null, "learned": 50, "remaining": 49,
//!                    "window_s": 60.0, "full_in_s": 1.2},
//!       "input_tokens": {"limit": 30000, "configured": null, "learned": 30000,
//!                        "remaining": 28500, "window_s": 60.0, "full_in_s": 3.0},
//!       "output_tokens": {"...": "..."}
//!     },
//!     "cooldown_s": null, "in_flight": 0, "queued": 0, "input_correction": 1.0
//!   }],
//!   "breakers": [{"key": null, "state": "closed", "half_open_in_s": null}],
//!   "concurrency": {"adaptive": true, "limit": 32, "min": 2, "max": 512, "in_flight": 0, "waiting": 0},
//!   "retry_budget": {"available": 100, "window_s": 10.0}
//! }
//! ```
//!
//! Durations are seconds from the moment the snapshot was taken (tokio's clock); `null` is
//! "none" (no cooldown, a limit not configured, the unkeyed breaker). A snapshot holds no
//! secret: nothing of a request but its key is kept, and the keys are what the key functions
//! make (a model, a host).
//!

mod snapshot;

pub use snapshot::{
    BreakerStatus, ConcurrencyStatus, DimensionStatus, KeyStatus, RetryBudgetStatus, Snapshot,
};
