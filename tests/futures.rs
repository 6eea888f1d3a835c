//! Every response future whose error type is `BoxError` behaves the same when it is polled again
//! after it completed: it returns `PolledAfterCompletion`, it neither panics nor calls again.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_limits::BoxError;
use tower_llm_limits::breaker::{self, CircuitBreakerLayer};
use tower_llm_limits::concurrency::ConcurrencyLimitLayer;
use tower_llm_limits::concurrency::adaptive::{AdaptiveConcurrencyLimitLayer, Aimd};
use tower_llm_limits::error::PolledAfterCompletion;
use tower_llm_limits::error_body::ErrorBodyLayer;
use tower_llm_limits::fallback::FallbackLayer;
use tower_llm_limits::rate_limit::RateLimitLayer;
use tower_llm_limits::retry::{Policy, RetryLayer};

type Api = tower::util::BoxCloneService<Request<String>, Response<String>, BoxError>;

/// An API answering `status`, counting its calls.
fn api(status: u16, calls: &Arc<AtomicUsize>) -> Api {
    let calls = calls.clone();
    Api::new(service_fn(move |_req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(Response::builder().status(status).body(String::new())?) }
    }))
}

#[track_caller]
fn assert_polled_after_completion(error: BoxError, calls: &AtomicUsize) {
    assert!(error.is::<PolledAfterCompletion>(), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no second call");
}

#[tokio::test(start_paused = true)]
async fn retry_breaker_rate_limit_and_fallback_futures_return_the_same_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let error = poll_again(RetryLayer::new(Policy::new()).layer(api(200, &calls))).await;
    assert_polled_after_completion(error, &calls);

    let calls = Arc::new(AtomicUsize::new(0));
    let error =
        poll_again(CircuitBreakerLayer::new(breaker::Policy::new()).layer(api(200, &calls))).await;
    assert_polled_after_completion(error, &calls);

    let calls = Arc::new(AtomicUsize::new(0));
    let error = poll_again(RateLimitLayer::new().layer(api(200, &calls))).await;
    assert_polled_after_completion(error, &calls);

    // The primary's answer, and the secondary's after a 529 of the primary.
    let calls = Arc::new(AtomicUsize::new(0));
    let secondary = Arc::new(AtomicUsize::new(0));
    let fallback = FallbackLayer::new(api(200, &secondary)).layer(api(200, &calls));
    assert_polled_after_completion(poll_again(fallback).await, &calls);
    let fallback = FallbackLayer::new(api(200, &secondary)).layer(api(529, &calls));
    assert_polled_after_completion(poll_again(fallback).await, &secondary);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_refusal_is_returned_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::new(breaker::Policy::new());
    let mut service = layer.layer(api(529, &calls));
    // Overload answers until the breaker opens.
    for _ in 0..200 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(Request::new(String::new()))
            .await;
        if response.is_err() {
            break;
        }
    }
    let refused = calls.load(Ordering::SeqCst);
    let error = poll_again_err(service).await;
    assert!(error.is::<PolledAfterCompletion>(), "{error}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        refused,
        "an open breaker calls nothing"
    );
}

/// Like [`poll_again`], for a call whose first result is an error.
async fn poll_again_err<S>(mut service: S) -> BoxError
where
    S: Service<Request<String>, Response = Response<String>, Error = BoxError>,
{
    let future = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()));
    let mut future = pin!(future);
    let Err(first) = poll_fn(|cx| future.as_mut().poll(cx)).await else {
        panic!("not refused");
    };
    assert!(first.is::<breaker::error::Open>(), "{first}");
    match poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        Poll::Ready(Err(error)) => error,
        _ => panic!("not an error after completion"),
    }
}

/// Calls `service` once, polls the future to its end, then once more: that second result.
async fn poll_again<S, B>(mut service: S) -> BoxError
where
    S: Service<Request<String>, Response = Response<B>, Error = BoxError>,
{
    let future = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()));
    let mut future = pin!(future);
    let first = poll_fn(|cx| future.as_mut().poll(cx)).await;
    assert!(first.is_ok(), "{:?}", first.err());
    match poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        Poll::Ready(Err(error)) => error,
        Poll::Ready(Ok(_)) => panic!("a second response"),
        Poll::Pending => panic!("pending after completion"),
    }
}

/// An API answering `status` with a `String` body turned into `Full<Bytes>` (what `ErrorBody`
/// reads), counting its calls.
fn bytes_api(
    status: u16,
    calls: &Arc<AtomicUsize>,
) -> impl Service<Request<String>, Response = Response<Full<Bytes>>, Error = BoxError> {
    let calls = calls.clone();
    service_fn(move |_req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let body = Full::new(Bytes::from_static(b"{}"));
            Ok::<_, BoxError>(Response::builder().status(status).body(body)?)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn error_body_and_concurrency_futures_return_the_same_error() {
    // ErrorBody: an answer passed through (200) and one whose body it read (500).
    for status in [200, 500] {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = ErrorBodyLayer::new().layer(bytes_api(status, &calls));
        assert_polled_after_completion(poll_again(service).await, &calls);
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let service = ConcurrencyLimitLayer::new(2).layer(api(200, &calls));
    assert_polled_after_completion(poll_again(service).await, &calls);

    let calls = Arc::new(AtomicUsize::new(0));
    let layer = AdaptiveConcurrencyLimitLayer::new(Aimd::new()).unwrap();
    assert_polled_after_completion(poll_again(layer.layer(api(200, &calls))).await, &calls);
}
