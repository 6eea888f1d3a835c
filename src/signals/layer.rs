//! The [`Signals`] middleware and the [`ResponseSignals`] it stores.

use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{ApiError, Classify, DefaultClassifier, Outcome, RateLimitSnapshot, RetryHints};

/// Everything a response says to a client that paces, retries and breaks circuits, parsed once.
///
/// [`Signals`] stores one in every response's extensions; the other layers of this crate read it
/// from there (see [`ResponseSignals::of`]) and compute it themselves only when it is missing.
#[derive(Clone, Debug)]
pub struct ResponseSignals {
    status: StatusCode,
    rate_limits: RateLimitSnapshot,
    hints: RetryHints,
    outcome: Outcome,
    received_at: Instant,
}

impl ResponseSignals {
    /// Parses a response's status, headers and (when present in its extensions) [`ApiError`]
    /// with `classifier`. `received_at` is taken from tokio's clock.
    pub fn parse<C: Classify + ?Sized>(
        status: StatusCode,
        headers: &HeaderMap,
        api_error: Option<&ApiError>,
        classifier: &C,
    ) -> Self {
        // One pass over the headers, and at most one reading of the clock for both: only
        // when an absolute time has no `date` header to be measured against.
        let mut raw = super::headers::Raw::default();
        raw.fill(headers);
        let clock = std::cell::OnceCell::new();
        let now = || *clock.get_or_init(std::time::SystemTime::now);
        let rate_limits = RateLimitSnapshot::from_raw(headers, &raw, now);
        let hints = RetryHints::from_raw(&raw, now);
        let outcome = classifier.classify_response(status, headers, &hints, api_error);
        ResponseSignals {
            status,
            rate_limits,
            hints,
            outcome,
            received_at: Instant::now(),
        }
    }

    /// Parses a response with `classifier`.
    pub fn from_response<B, C: Classify + ?Sized>(response: &Response<B>, classifier: &C) -> Self {
        Self::parse(
            response.status(),
            response.headers(),
            response.extensions().get::<ApiError>(),
            classifier,
        )
    }

    /// The signals stored in `response` by [`Signals`], or parsed now with the
    /// [`DefaultClassifier`] when no [`Signals`] layer ran.
    pub fn of<B>(response: &Response<B>) -> std::borrow::Cow<'_, ResponseSignals> {
        match response.extensions().get::<ResponseSignals>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => {
                std::borrow::Cow::Owned(Self::from_response(response, &DefaultClassifier::new()))
            }
        }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The normalised rate-limit headers.
    pub fn rate_limits(&self) -> &RateLimitSnapshot {
        &self.rate_limits
    }

    /// The retry hints.
    pub fn hints(&self) -> &RetryHints {
        &self.hints
    }

    /// The classified outcome.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// When the response was received, on tokio's clock: the reference point for every
    /// duration in [`rate_limits`](Self::rate_limits) and [`hints`](Self::hints).
    pub fn received_at(&self) -> Instant {
        self.received_at
    }
}

/// Parses each response once into [`ResponseSignals`] and stores them in its extensions.
///
/// Put it innermost, right above the HTTP client (below [`ErrorBodyLayer`](super::ErrorBodyLayer)
/// when you use it, so the classifier sees the error body).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_llm_limits::signals::{Dimension, OutcomeKind, ResponseSignals, SignalsLayer};
///
/// let api = service_fn(|_req: Request<()>| async {
///     let response = Response::builder()
///         .status(429)
///         .header("retry-after", "2")
///         .header("anthropic-ratelimit-requests-limit", "50")
///         .header("anthropic-ratelimit-requests-remaining", "0")
///         .body(())
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let response = SignalsLayer::new().layer(api).oneshot(Request::new(())).await.unwrap();
///
/// // Parsed once, read by every layer above.
/// let signals = ResponseSignals::of(&response);
/// assert_eq!(signals.outcome().kind(), OutcomeKind::RateLimited);
/// assert_eq!(signals.hints().retry_after(), Some(std::time::Duration::from_secs(2)));
/// let requests = signals.rate_limits().get(Dimension::Requests).unwrap();
/// assert_eq!(requests.remaining(), Some(0));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Signals<S, C = DefaultClassifier> {
    inner: S,
    classifier: C,
}

impl<S> Signals<S> {
    /// Wraps `inner` with the [`DefaultClassifier`].
    pub fn new(inner: S) -> Self {
        Signals {
            inner,
            classifier: DefaultClassifier::new(),
        }
    }

    /// A layer with the [`DefaultClassifier`].
    pub fn layer() -> SignalsLayer {
        SignalsLayer::new()
    }
}

impl<S, C> Signals<S, C> {
    /// Wraps `inner` with `classifier`.
    pub fn with_classifier(inner: S, classifier: C) -> Self {
        Signals { inner, classifier }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Layer for [`Signals`].
#[derive(Clone, Debug, Default)]
pub struct SignalsLayer<C = DefaultClassifier> {
    classifier: C,
}

impl SignalsLayer {
    /// A layer with the [`DefaultClassifier`].
    pub fn new() -> Self {
        SignalsLayer {
            classifier: DefaultClassifier::new(),
        }
    }
}

impl<C> SignalsLayer<C> {
    /// A layer with a custom classifier.
    pub fn with_classifier(classifier: C) -> Self {
        SignalsLayer { classifier }
    }
}

impl<S, C: Clone> Layer<S> for SignalsLayer<C> {
    type Service = Signals<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Signals {
            inner,
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Signals<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: Classify + Clone,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = super::future::ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        super::future::ResponseFuture::new(self.inner.call(req), self.classifier.clone())
    }
}

/// Stored in a response's extensions by a pacing layer (the rate limiter) that has taken the
/// server's wait upon itself: every request that passes through that layer again is held until
/// [`until`](Self::until). A retry layer above that sees it re-enters at once instead of sleeping
/// the same wait a second time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitAbsorbed {
    until: Instant,
}

impl WaitAbsorbed {
    /// A notice that requests will be held until `until`.
    pub fn new(until: Instant) -> Self {
        WaitAbsorbed { until }
    }

    /// When the pacing layer lets requests through again.
    pub fn until(&self) -> Instant {
        self.until
    }
}
