//! The stacks a Rust user would build instead of `tower-llm-limits`, configured the way the
//! benchmark's method (BENCHMARKS.md) describes. Shared by `examples/goodput.rs` and
//! `benches/overhead.rs`, so both measure the same stacks.
//!
//! - [`SdkRetry`]: the official SDKs' retry rules alone (2 retries; `retry-after` honoured when
//!   0 < v ≤ 60 s, else `min(0.5 s · 2^n, 8 s) · (1 − 0.25 · random)`), the loop users hand-write.
//! - [`tower_stack`]: tower 0.5's `Retry` (a status-based policy with exponential backoff) →
//!   `ConcurrencyLimit` → `Buffer` → `RateLimit` (requests per minute; it cannot read headers).
//! - [`resilience_stack`]: tower-resilience 0.13's `Retry` → `CircuitBreaker` → `RateLimiter` →
//!   `Bulkhead`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The error type every stack in the benchmark returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request type of the benchmark.
pub type Req = Request<Full<Bytes>>;
/// A boxed response future.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Retries a tower/tower-resilience user configures: up to this many retries after the first
/// attempt, exponential backoff from [`PEER_BACKOFF_MIN`] to [`PEER_BACKOFF_MAX`] with jitter.
pub const PEER_RETRIES: usize = 5;
/// First backoff of the peer stacks.
pub const PEER_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Largest backoff of the peer stacks.
pub const PEER_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Whether a status is worth retrying for a user who only looks at the status: 429 and 5xx
/// (529 is a 5xx).
pub fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

// ---------------------------------------------------------------------------------------------
// sdk-retry

/// The official SDKs' retry loop as a tower service (see the module docs).
#[derive(Clone, Debug)]
pub struct SdkRetry<S> {
    inner: S,
    max_retries: u32,
}

impl<S> SdkRetry<S> {
    /// The SDKs' default: 2 retries.
    pub fn new(inner: S) -> Self {
        SdkRetry {
            inner,
            max_retries: 2,
        }
    }
}

/// What the SDKs do after an attempt: `None` = return it, `Some(wait)` = retry after `wait`.
fn sdk_decision<B>(result: &Result<Response<B>, BoxError>, retries: u32) -> Option<Duration> {
    let response = match result {
        Ok(response) => response,
        // Connection errors and timeouts are retried with backoff.
        Err(_) => return Some(sdk_backoff(retries)),
    };
    let headers = response.headers();
    let status = response.status();
    let forced = headers
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let retry = match forced {
        Some("true") => true,
        Some("false") => false,
        _ => matches!(status.as_u16(), 408 | 409 | 429) || status.as_u16() >= 500,
    };
    if !retry {
        return None;
    }
    let hinted = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .or_else(|| {
            let v = headers.get("retry-after")?.to_str().ok()?.trim();
            v.parse::<f64>().ok().or_else(|| {
                // HTTP-date, measured against the response's own `date` header.
                let at = httpdate::parse_http_date(v).ok()?;
                let now = headers
                    .get("date")
                    .and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok())?;
                Some(at.duration_since(now).map_or(0.0, |d| d.as_secs_f64()))
            })
        });
    Some(match hinted {
        Some(secs) if secs > 0.0 && secs <= 60.0 => Duration::from_secs_f64(secs),
        _ => sdk_backoff(retries),
    })
}

/// `min(0.5 s · 2^n, 8 s) · (1 − 0.25 · random)`, n = retries already made.
fn sdk_backoff(retries: u32) -> Duration {
    let base = (0.5 * 2f64.powi(retries.min(16) as i32)).min(8.0);
    Duration::from_secs_f64(base * (1.0 - 0.25 * fastrand::f64()))
}

impl<S, B> Service<Req> for SdkRetry<S>
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFut<Response<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let max_retries = self.max_retries;
        Box::pin(async move {
            let mut retries = 0u32;
            loop {
                let mut attempt = req.clone();
                if retries > 0 {
                    svc.ready().await?;
                    attempt
                        .headers_mut()
                        .insert("x-stainless-retry-count", HeaderValue::from(retries));
                }
                let result = svc.call(attempt).await;
                match sdk_decision(&result, retries) {
                    Some(wait) if retries < max_retries => {
                        tokio::time::sleep(wait).await;
                        retries += 1;
                    }
                    _ => return result,
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// tower 0.5

/// A `tower::util::rng::Rng` drawing from fastrand's thread-local generator, so every request's
/// jitter differs (tower's `HasherRng` clones would all repeat one sequence) and a seeded run
/// repeats exactly.
#[derive(Clone, Debug, Default)]
pub struct FastRng;

impl tower::util::rng::Rng for FastRng {
    fn next_u64(&mut self) -> u64 {
        fastrand::u64(..)
    }
}

/// tower's retry policy as a user writes it: retry 429 / 5xx responses and errors up to
/// [`PEER_RETRIES`] times with tower's `ExponentialBackoff` (full jitter).
#[derive(Clone, Debug)]
pub struct TowerPolicy {
    retries_left: usize,
    backoff: tower::retry::backoff::ExponentialBackoff<FastRng>,
}

impl Default for TowerPolicy {
    fn default() -> Self {
        use tower::retry::backoff::{ExponentialBackoffMaker, MakeBackoff};
        let mut maker =
            ExponentialBackoffMaker::new(PEER_BACKOFF_MIN, PEER_BACKOFF_MAX, 1.0, FastRng)
                .expect("valid backoff");
        TowerPolicy {
            retries_left: PEER_RETRIES,
            backoff: maker.make_backoff(),
        }
    }
}

impl<B> tower::retry::Policy<Req, Response<B>, BoxError> for TowerPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Req,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        use tower::retry::backoff::Backoff;
        let again = match result {
            Ok(response) => retryable_status(response.status()),
            Err(_) => true,
        };
        if again && self.retries_left > 0 {
            self.retries_left -= 1;
            Some(self.backoff.next_backoff())
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// tower 0.5's closest equivalent: `Retry` → `ConcurrencyLimit` → `Buffer` → `RateLimit`.
/// `RateLimit` is not `Clone`, so the shared stack puts it behind a `Buffer`.
pub fn tower_stack<S, B>(
    inner: S,
    per_minute: u64,
    concurrency: usize,
) -> impl Service<Req, Response = Response<B>, Error = BoxError, Future: Send> + Clone + Send + 'static
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        .retry(TowerPolicy::default())
        .concurrency_limit(concurrency)
        .buffer(1024)
        .rate_limit(per_minute.max(1), Duration::from_secs(60))
        .service(inner)
}

/// The same layers without the `Buffer`, which only works for one service owned by one caller
/// (`RateLimit` cannot be cloned, so `Retry` sits inside it): `RateLimit` → `Retry` →
/// `ConcurrencyLimit`.
pub fn tower_stack_unbuffered<S, B>(
    inner: S,
    per_minute: u64,
    concurrency: usize,
) -> impl Service<Req, Response = Response<B>, Error = BoxError>
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone,
{
    ServiceBuilder::new()
        .rate_limit(per_minute.max(1), Duration::from_secs(60))
        .retry(TowerPolicy::default())
        .concurrency_limit(concurrency)
        .service(inner)
}

// ---------------------------------------------------------------------------------------------
// tower-resilience 0.13

/// How the tower-resilience stack is configured.
#[derive(Clone, Debug)]
pub struct ResilienceConfig {
    /// Requests per minute for its rate limiter.
    pub per_minute: usize,
    /// Bulkhead size.
    pub concurrency: usize,
    /// The breaker's wait in the open state. tower-resilience 0.13 measures it with
    /// `std::time::Instant` (wall clock), not tokio's clock.
    pub breaker_open: Duration,
    /// Counts the breaker's transitions to open, when given.
    pub opened: Option<Arc<AtomicUsize>>,
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

/// tower-resilience 0.13: `Retry` → `CircuitBreaker` → `RateLimiter` → `Bulkhead`.
///
/// - retry: [`PEER_RETRIES`] retries of errors and 429/5xx responses, exponential backoff
///   [`PEER_BACKOFF_MIN`]..[`PEER_BACKOFF_MAX`] with jitter;
/// - circuit breaker: the `standard()` preset (50% failure rate over 100 calls, 3 half-open
///   probes) counting errors and 5xx as failures, open for `breaker_open`;
/// - rate limiter: `per_minute` requests per 60 s window, waiting (backpressure) up to 10 min;
/// - bulkhead: `concurrency` calls in flight, waiting without limit.
pub fn resilience_stack<S, B>(
    inner: S,
    config: ResilienceConfig,
) -> impl Service<Req, Response = Response<B>, Error = BoxError, Future: Send> + Clone + Send + 'static
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + Sync + 'static,
{
    use tower_resilience::bulkhead::BulkheadLayer;
    use tower_resilience::circuitbreaker::{CircuitBreakerLayer, CircuitState};
    use tower_resilience::ratelimiter::RateLimiterLayer;
    use tower_resilience::retry::{ExponentialRandomBackoff, RetryLayer};

    let bulkhead = BulkheadLayer::builder()
        .max_concurrent_calls(config.concurrency)
        .build()
        .expect("valid bulkhead");
    let limiter = RateLimiterLayer::per_minute(config.per_minute.max(1))
        .timeout_duration(Duration::from_secs(600))
        .backpressure()
        .build()
        .expect("valid rate limiter");
    let opened = config.opened.clone();
    let breaker = CircuitBreakerLayer::standard()
        .wait_duration_in_open(config.breaker_open)
        .on_state_transition(move |_from, to| {
            if let (Some(opened), CircuitState::Open) = (&opened, to) {
                opened.fetch_add(1, Ordering::Relaxed);
            }
        })
        .failure_classifier(|result: &Result<Response<B>, BoxError>| match result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        })
        .build()
        .expect("valid breaker");
    let retry = RetryLayer::<Req, Response<B>, BoxError>::builder()
        .max_attempts(PEER_RETRIES + 1)
        .backoff(
            ExponentialRandomBackoff::new(PEER_BACKOFF_MIN, 0.5)
                .expect("valid backoff")
                .max_interval(PEER_BACKOFF_MAX),
        )
        .retry_on(|_e: &BoxError| true)
        .retry_on_response(|response: &Response<B>| retryable_status(response.status()))
        .build();

    ServiceBuilder::new()
        .layer(retry)
        .map_err(boxed)
        .layer(breaker)
        .map_err(boxed)
        .layer(limiter)
        .map_err(boxed)
        .layer(bulkhead)
        .service(inner)
}
