//! Errors shared by the whole crate.

use std::error::Error as StdError;
use std::fmt;

/// The error type of every layer in this crate: a boxed error the caller can downcast to the
/// typed errors each layer documents (for example
/// [`retry::error::BudgetExhausted`](crate::retry)).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The error of a response future of this crate that was polled again after it completed.
///
/// Polling a completed future is a bug in the caller: the `Future` contract leaves what happens
/// unspecified, and many futures (an `async` block's among them) panic. Every future of this
/// crate whose error type is [`BoxError`] (retry, circuit breaker, rate limit, concurrency caps,
/// fallback, [`ErrorBody`](crate::error_body::ErrorBody), the reqwest adapter) answers it with this
/// error instead, so such a bug fails one call rather than the task that polls it, and calls
/// nothing again. [`Signals`](crate::signals::Signals), whose error type is the inner service's
/// own, hands the poll to the inner future (in a preset, `ErrorBody`'s).
///
/// # Examples
///
/// ```
/// use std::future::Future;
/// use std::pin::pin;
/// use std::task::{Context, Poll, Waker};
/// use tower::{Service, ServiceExt, service_fn};
/// use tower_llm_limits::error::PolledAfterCompletion;
/// use tower_llm_limits::rate_limit::RateLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let api = service_fn(|_req: http::Request<String>| async {
///     Ok::<_, tower_llm_limits::BoxError>(http::Response::new(String::new()))
/// });
/// let mut service = tower::Layer::layer(&RateLimitLayer::new(), api);
/// let request = http::Request::new(String::new());
/// let mut future = pin!(service.ready().await.unwrap().call(request));
/// let mut cx = Context::from_waker(Waker::noop());
/// assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
/// let Poll::Ready(Err(error)) = future.as_mut().poll(&mut cx) else { panic!() };
/// assert!(error.is::<PolledAfterCompletion>());
/// # }
/// ```
#[derive(Debug)]
pub struct PolledAfterCompletion {
    future: &'static str,
}

impl PolledAfterCompletion {
    /// The error of the future of `future` (a layer's name), boxed.
    pub(crate) fn boxed(future: &'static str) -> BoxError {
        Box::new(PolledAfterCompletion { future })
    }
}

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} response future polled after completion", self.future)
    }
}

impl StdError for PolledAfterCompletion {}
