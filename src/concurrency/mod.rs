//! Concurrency caps: a fixed one ([`ConcurrencyLimit`]) and an adaptive one
//! ([`AdaptiveConcurrencyLimit`], AIMD).
//!
//! A cap bounds how many requests are at the provider at once. Rate limits bound requests and
//! tokens *per minute*; a cap bounds the *parallelism*, which is what an overloaded provider
//! (529, 503) and its "acceleration limits" react to, and what keeps a burst of callers from
//! opening hundreds of connections at the same instant.
//!
//! # How a permit travels
//!
//! - `poll_ready` takes a permit from the shared [`Limiter`]. When none is free the service is
//!   queued and returns `Pending`; waiters are admitted **strictly in arrival order** (a released
//!   permit is handed to the oldest waiter before anyone else may take it).
//! - `call` moves the permit into the [`ResponseFuture`](future::ResponseFuture); calling without
//!   a ready `poll_ready` panics with a message saying so.
//! - The permit goes back when the call fails, when its future is dropped (cancellation), when
//!   the service holding an unused permit is dropped, when the response head arrives — and, for
//!   a streaming answer, when its body ends.
//!
//! # Streaming answers hold the permit; other answers do not
//!
//! The provider is busy until the last server-sent event of a streaming answer, not until the
//! headers; a non-streaming answer is complete at the provider when its head arrives. By default
//! ([`Release::Auto`]) a response with `content-type: text/event-stream` gets a [`PermitBody`]
//! that carries the permit and gives it back when the body yields its last frame, fails, or is
//! dropped (an empty body gives it back at once); any other response gives the permit back when
//! its head arrives, like tower's `ConcurrencyLimit`. Code that collects responses before
//! reading them (`tokio::join!` of more calls than the cap, a `JoinSet` drained before the
//! bodies are read) therefore completes.
//!
//! **Collecting unread streams can block**: a caller that holds more unread event-stream bodies
//! than the cap admits, and waits for yet another call before reading any of them, waits for
//! ever — each unread stream is a request still in flight. Read (or drop) streams as they
//! arrive. [`Release::AtHeaders`] gives every permit back at the head (the cap then bounds
//! admissions, not streams in progress); [`Release::AtBodyEnd`] holds every body's permit until
//! it ends. The adaptive cap takes its latency and outcome sample when the head arrives, whatever
//! the rule.
//!
//! # One cap, many services
//!
//! Clones of a service share its cap (a clone holds no permit of its own). Layers:
//!
//! - [`ConcurrencyLimitLayer::new(n)`](ConcurrencyLimitLayer::new): **every service the layer
//!   builds shares one cap of `n`** — unlike tower's layer of the same name, which gives each
//!   `layer()` call its own. The cap protects a provider account; a stack layered per connection
//!   or per worker must not multiply it.
//! - [`ConcurrencyLimitLayer::shared(limiter)`](ConcurrencyLimitLayer::shared): an explicit
//!   [`Limiter`] handle built once and given to several stacks (say, a streaming and a batch
//!   client of the same organisation).
//! - [`ConcurrencyLimitLayer::per_service(n)`](ConcurrencyLimitLayer::per_service): tower's
//!   behaviour, a fresh cap per `layer()` call.
//!
//! The adaptive layer always shares one [`AdaptiveLimiter`] among the services it builds;
//! [`AdaptiveConcurrencyLimitLayer::shared`] takes one built elsewhere.
//!
//! # Where in the stack
//!
//! Innermost, right above [`Signals`](crate::signals::Signals) and the HTTP client, so a permit
//! is held only while the request is really at the provider, not while a rate limiter or a retry
//! backoff makes it wait. A timeout belongs *below* the adaptive cap if its expiry should shrink
//! the limit: a future dropped by a timeout above the cap is a cancellation and teaches nothing.
//!
//! # Observability
//!
//! [`Limiter::limit`], [`Limiter::in_flight`] and [`Limiter::waiting`] (also on the services
//! and on [`AdaptiveLimiter`]). The adaptive cap emits a `tracing` event with `old`, `new` and
//! `reason` fields each time its limit changes (`info` when it shrinks, `debug` when it grows).
//!
//! # Examples
//!
//! A fixed cap of two calls shared by all clones:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::concurrency::ConcurrencyLimitLayer;
//!
//! let client = tower::service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let layer = ConcurrencyLimitLayer::new(2);
//! let service = ServiceBuilder::new().layer(layer.clone()).service(client);
//!
//! let response = service.clone().oneshot(Request::new(Full::default())).await?;
//! let limiter = layer.limiter().expect("`new` builds a shared cap");
//! assert_eq!(limiter.limit(), 2);
//! // Not a stream: the permit went back with the head.
//! assert_eq!(limiter.in_flight(), 0);
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(&body[..], b"{}");
//!
//! // A streaming answer holds its permit until its body ends.
//! let sse = tower::service_fn(|_req: Request<Full<Bytes>>| async {
//!     let response = Response::builder()
//!         .header("content-type", "text/event-stream")
//!         .body(Full::new(Bytes::from_static(b"event: message_stop\ndata: {}\n\n")))?;
//!     Ok::<_, http::Error>(response)
//! });
//! let streaming = ServiceBuilder::new().layer(layer.clone()).service(sse);
//! let response = streaming.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(limiter.in_flight(), 1);
//! response.into_body().collect().await?;
//! assert_eq!(limiter.in_flight(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! One [`Limiter`] shared by two stacks, releasing permits at the headers:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::concurrency::{ConcurrencyLimitLayer, Limiter, Release};
//!
//! let client = tower::service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let organisation = Limiter::new(16);
//! let layer = ConcurrencyLimitLayer::shared(organisation.clone()).release(Release::AtHeaders);
//! let batch = ServiceBuilder::new().layer(layer.clone()).service(client.clone());
//! let chat = ServiceBuilder::new().layer(layer).service(client);
//! assert!(batch.limiter().same_as(chat.limiter()));
//!
//! let _response = chat.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(organisation.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

mod body;
mod layer;
mod limiter;
mod service;

pub mod adaptive;
pub mod future;

pub use adaptive::{
    AdaptiveConcurrencyLimit, AdaptiveConcurrencyLimitLayer, AdaptiveLimiter, Aimd,
};
pub use body::{PermitBody, Release};
pub use layer::ConcurrencyLimitLayer;
pub use limiter::Limiter;
pub use service::ConcurrencyLimit;
