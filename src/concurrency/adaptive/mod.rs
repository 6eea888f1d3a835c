//! The adaptive concurrency cap: AIMD driven by the classified outcome of each call.
//!
//! Nobody knows the right concurrency for a provider account in advance: it depends on the tier,
//! the model, the size of the requests and how busy the provider is right now. The adaptive cap
//! finds it the way TCP finds a path's capacity:
//!
//! - **Multiplicative decrease.** A call whose outcome is rate limited (429), overloaded (529,
//!   503) or a timeout — as read by the classifier, not merely `Err` — multiplies the limit by the
//!   [decrease factor](Aimd::decrease_factor) (0.7 by default), never below
//!   [`min`](Aimd::min).
//! - **Once per round trip.** Every decrease starts a new epoch; outcomes of calls *sent* in an
//!   earlier epoch are ignored, and so are those arriving less than one smoothed round trip
//!   (TCP-style average latency of successful calls, [`smoothed_rtt`](AdaptiveLimiter::smoothed_rtt))
//!   after the decrease. A wave of 30 calls all refused by one overload shrinks the limit once,
//!   not 30 times (0.7³⁰ would take any limit to the floor from a single incident), and neither
//!   do the waiters admitted while the wave's refusals come back; an overload that persists keeps
//!   shrinking it about once per round trip. (With the epoch rule alone, refusals that come back
//!   at once let every queued generation shrink the limit again: in the simulation one burst of
//!   40 callers took the limit from 32 to 1 in a single instant.)
//! - **Additive increase.** Each success counts; after `limit` successes of the current epoch the
//!   limit grows by one (about +1 per round trip with the cap full), up to [`max`](Aimd::max).
//!   Only calls sent while at least half the limit was in use count, so a service that is idle
//!   or lightly used does not inflate its limit to the maximum and then burst.
//! - Other outcomes (client errors, 500s, connection errors, cancellations) leave the limit
//!   alone: they say nothing about how much parallelism the provider accepts.
//!
//! Shrinking takes effect at once for newcomers: calls in flight finish, and no permit is handed
//! out until fewer than the new limit are in flight. Growing admits waiters at once, in FIFO
//! order.
//!
//! Outcomes are read from the [`ResponseSignals`](crate::signals::ResponseSignals) a
//! [`Signals`](crate::signals::Signals) layer below stored, else with this layer's classifier
//! (`C: Classify`, [`DefaultClassifier`](crate::signals::DefaultClassifier) by default); errors
//! always with the classifier's `classify_error`.
//!
//! ## Why no latency gradient
//!
//! Vegas/gradient limiters shrink when latency rises above its minimum. An LLM call's latency is
//! dominated by how many tokens it produces (a 2 000-token answer takes many times a 50-token
//! one), so latency reflects the request mix far more than the provider's queue, and the
//! providers signal overload explicitly (529, 503, 429). The simulated API used in the tests
//! makes latency a function of output size only, where a gradient would have nothing to learn
//! from. AIMD on explicit signals is the robust choice; a token-normalised latency signal is
//! possible future work.
//!
//! # Examples
//!
//! Default configuration:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::concurrency::{AdaptiveConcurrencyLimitLayer, Aimd};
//!
//! // A provider that is overloaded.
//! let client = tower::service_fn(|_req: Request<Full<Bytes>>| async {
//!     let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
//!     *response.status_mut() = StatusCode::from_u16(529).unwrap();
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//! let layer = AdaptiveConcurrencyLimitLayer::new(Aimd::new())?;
//! let limiter = layer.limiter().clone();
//! let service = ServiceBuilder::new().layer(layer).service(client);
//! assert_eq!(limiter.limit(), 8);
//!
//! let response = service.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(response.status().as_u16(), 529); // responses stay responses
//! assert_eq!(limiter.limit(), 5); // floor(8 × 0.7)
//! # Ok(())
//! # }
//! ```
//!
//! Custom bounds, a gentler decrease, only 529/503 shrink the limit, and a classifier of your
//! own:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::concurrency::{AdaptiveConcurrencyLimitLayer, AdaptiveLimiter, Aimd};
//! use tower_llm_limits::signals::{DefaultClassifier, OutcomeKind};
//!
//! let client = tower::service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let shared = AdaptiveLimiter::new(
//!     Aimd::new()
//!         .initial(1)
//!         .min(1)
//!         .max(50)
//!         .decrease_factor(0.8)
//!         .backoff_on([OutcomeKind::Overloaded]),
//! )?;
//! let layer = AdaptiveConcurrencyLimitLayer::shared(shared.clone())
//!     .classifier(DefaultClassifier::new());
//! let service = ServiceBuilder::new().layer(layer).service(client);
//!
//! // One success with the cap full (1 of 1) raises the limit by one.
//! let _response = service.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(shared.limit(), 2);
//! # Ok(())
//! # }
//! ```

mod aimd;
mod layer;
mod service;

pub mod error;
pub mod future;

pub use aimd::{AdaptiveLimiter, Aimd};
pub use layer::AdaptiveConcurrencyLimitLayer;
pub use service::AdaptiveConcurrencyLimit;
