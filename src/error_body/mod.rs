//! Error bodies and watched answers: [`ErrorBody`] reads small non-2xx bodies into an
//! [`ApiError`], stores it in the response's extensions and hands the
//! body back unchanged; it watches successful answers as they pass.
//!
//! What is read, and what the caller gets:
//!
//! - **2xx responses are passed through** as they stream. A JSON answer is copied as it passes
//!   for its `usage` (reported to the rate limiter). A **successful event stream**
//!   (`text/event-stream`) is read up to its first event before the head is handed on (within
//!   the size and time limits below), then watched as it passes: its usage, its outcome
//!   ([`StreamOutcome`]), an idle bound
//!   ([`stream_idle_timeout`](ErrorBodyLayer::stream_idle_timeout)); a stream that breaks ends
//!   with [`StreamInterrupted`]. See [`signals::stream`].
//! - Non-2xx `text/event-stream` responses are passed through, as are bodies whose size hint
//!   announces more than the limit.
//! - Other non-2xx bodies (known size within the limit, or unknown size such as chunked
//!   encoding) are read into memory. When the whole body fits, it is parsed with
//!   [`ApiError::from_json`]; a recognised error is inserted into the response's extensions,
//!   where [`Signals`] and the classifier find it. The body is handed back
//!   byte-identical, trailers included.
//! - A body that turns out larger than the limit while being read is not parsed: the caller gets
//!   the bytes read so far followed by the rest of the original body.
//! - A body that fails while being read is not parsed: the caller gets the bytes read so far,
//!   then the body's error. Nothing is lost and nothing panics.
//! - A body that is not complete within the time limit ([`DEFAULT_ERROR_BODY_TIMEOUT`], 10 s
//!   from the head, see [`ErrorBodyLayer::read_timeout`]) is not parsed: the response is handed
//!   on without an [`ApiError`], and its body gives the bytes read so far, then the rest of the
//!   original body as (and if) it arrives. A caller that reads such a body should bound its own
//!   read.
//!
//! Reading an error body holds the response until the body is complete: the size and time
//! limits bound how much an error response can delay the caller. The time limit needs a tokio
//! runtime with the time driver (as every waiting layer of this crate).
//!
//! Its error is a [`BoxError`]: the inner service's error, boxed, as every layer of this crate
//! returns it (and [`PolledAfterCompletion`](crate::error::PolledAfterCompletion) for a future
//! polled again after it completed).
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_limits::error_body::ErrorBodyLayer;
//! use tower_llm_limits::signals::ApiError;
//!
//! const BODY: &str = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
//! let api = service_fn(|_req: Request<()>| async {
//!     let response = Response::builder()
//!         .status(529)
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from_static(BODY.as_bytes())))
//!         .unwrap();
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//! let service = ErrorBodyLayer::new().layer(api);
//!
//! let response = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::from_u16(529).unwrap());
//! let error = response.extensions().get::<ApiError>().unwrap();
//! assert_eq!(error.kind(), Some("overloaded_error"));
//! // The caller still reads the body, unchanged.
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, BODY.as_bytes());
//! # }
//! ```
//!
//! [`ApiError`]: crate::signals::ApiError
//! [`ApiError::from_json`]: crate::signals::ApiError::from_json
//! [`BoxError`]: crate::BoxError
//! [`Signals`]: crate::signals::Signals
//! [`StreamInterrupted`]: crate::signals::StreamInterrupted
//! [`StreamOutcome`]: crate::signals::StreamOutcome
//! [`signals::stream`]: crate::signals::stream

use std::time::Duration;

mod body;
mod layer;
mod service;

pub mod future;

pub use body::MaybeBuffered;
pub use layer::ErrorBodyLayer;
pub use service::ErrorBody;

/// The default limit on the size of an error body the [`ErrorBodyLayer`] reads: 64 KiB.
pub const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;

/// The default limit on the time the [`ErrorBodyLayer`] spends reading an error body: 10 s,
/// counted from the moment the response head arrives.
///
/// A provider's error body is a few hundred bytes sent with the head; one that takes longer
/// than this is stalled (a proxy or server that sent part of a chunked body and stopped), and
/// waiting for it would hold the call — and the concurrency permit above — for ever, since a
/// timeout around the client no longer applies once the head has arrived.
pub const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);
