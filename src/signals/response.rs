//! [`ResponseSignals`]: what one response says, parsed once, and the rule that decides its
//! outcome for every layer.

use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;

use super::{
    ApiError, Classify, DefaultClassifier, Outcome, RateLimitSnapshot, RetryHints,
    StreamStartFailed,
};

/// Everything a response says to a client that paces, retries and breaks circuits, parsed once.
///
/// [`Signals`](super::Signals) stores one in every response's extensions; the other layers of
/// this crate read it from there (see [`ResponseSignals::of`] and
/// [`ResponseSignals::outcome_or`]) and compute it themselves only when it is missing.
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

    /// Parses a response with `classifier`. A successful event stream that failed before its
    /// first event ([`StreamStartFailed`] in its extensions) has that failure's outcome.
    pub fn from_response<B, C: Classify + ?Sized>(response: &Response<B>, classifier: &C) -> Self {
        let mut signals = Self::parse(
            response.status(),
            response.headers(),
            response.extensions().get::<ApiError>(),
            classifier,
        );
        if let Some(failed) = response.extensions().get::<StreamStartFailed>() {
            signals.outcome = failed.outcome(classifier);
        }
        signals
    }

    /// The signals stored in `response` by [`Signals`](super::Signals), or parsed now with the
    /// [`DefaultClassifier`] when no [`Signals`](super::Signals) layer ran: the rule of
    /// [`outcome_or`](Self::outcome_or), for a layer that has no classifier of its own.
    pub fn of<B>(response: &Response<B>) -> std::borrow::Cow<'_, ResponseSignals> {
        match response.extensions().get::<ResponseSignals>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => {
                std::borrow::Cow::Owned(Self::from_response(response, &DefaultClassifier::new()))
            }
        }
    }

    /// The outcome of `response`: **the one rule every layer of this crate follows.**
    ///
    /// The outcome a [`Signals`](super::Signals) layer stored in the response's extensions,
    /// when there is one: it was decided once, below every layer that reads it, by the
    /// classifier given to that layer, so the retry policy, the circuit breaker, the adaptive
    /// concurrency limit and the rate limiter all act on the same reading. Else `classifier`'s
    /// reading of the response's status, headers, retry hints and [`ApiError`] (when an
    /// [`ErrorBody`](crate::error_body::ErrorBody) layer stored one). A successful event
    /// stream whose first event was an error, or that failed before its first event
    /// ([`StreamStartFailed`]), has the outcome of that failure (an `overloaded_error` reads as
    /// a 529): nothing of an answer exists yet, so it is retried and counted like a failed head.
    /// What happens later in a stream is its [`StreamOutcome`](super::StreamOutcome).
    ///
    /// So a custom classifier belongs on the [`SignalsLayer`](super::SignalsLayer) when the
    /// stack has one (the presets do); a layer's own classifier decides for responses that did
    /// not pass through one, and for errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_llm_limits::signals::{
    ///     DefaultClassifier, OutcomeKind, ResponseSignals, classify_fn,
    /// };
    ///
    /// let mut response = http::Response::builder().status(529).body(()).unwrap();
    /// let everything_fails = classify_fn(|_status, _headers, _hints, _error| {
    ///     tower_llm_limits::signals::Outcome::new(OutcomeKind::ServerError)
    /// });
    /// // No `Signals` layer ran: the classifier given decides.
    /// let outcome = ResponseSignals::outcome_or(&response, &everything_fails);
    /// assert_eq!(outcome.kind(), OutcomeKind::ServerError);
    ///
    /// // A `Signals` layer stored its reading: that one holds for every layer.
    /// let stored = ResponseSignals::from_response(&response, &DefaultClassifier::new());
    /// response.extensions_mut().insert(stored);
    /// let outcome = ResponseSignals::outcome_or(&response, &everything_fails);
    /// assert_eq!(outcome.kind(), OutcomeKind::Overloaded);
    /// ```
    pub fn outcome_or<B, C: Classify + ?Sized>(response: &Response<B>, classifier: &C) -> Outcome {
        let extensions = response.extensions();
        match (
            extensions.get::<ResponseSignals>(),
            extensions.get::<StreamStartFailed>(),
        ) {
            (Some(signals), _) => signals.outcome,
            (None, Some(failed)) => failed.outcome(classifier),
            (None, None) => {
                let headers = response.headers();
                classifier.classify_response(
                    response.status(),
                    headers,
                    &RetryHints::from_headers(headers),
                    response.extensions().get::<ApiError>(),
                )
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
