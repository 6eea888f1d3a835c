//! tower-http's [`ClassifyResponse`] for our classifiers (feature `tower-http`).

use std::any::Any;
use std::fmt;

use http::Response;
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, NeverClassifyEos, SharedClassifier,
};

use super::{ApiError, Classify, DefaultClassifier, Outcome, OutcomeKind, RetryHints};

/// A [`Classify`] used as tower-http's [`ClassifyResponse`], so one classifier also serves
/// tower-http's `TraceLayer` (and anything else built on `tower_http::classify`).
///
/// Every outcome other than [`Success`](OutcomeKind::Success) is a failure, and the failure
/// class is our whole [`Outcome`]: its kind, status, retryability and the server's wait, which
/// tower-http's own failure classes drop. Unlike tower-http's `ServerErrorsAsFailures`, 4xx
/// responses are failures too (a [`ClientError`](OutcomeKind::ClientError) or a
/// [`RateLimited`](OutcomeKind::RateLimited) outcome is worth a log line). Streams are
/// classified from their head: an error inside a 200 event stream is not seen.
///
/// tower-http hands errors over as `E: Display + 'static` rather than as `std::error::Error`;
/// [`BoxError`](crate::BoxError), `std::io::Error` and tower's and tokio's `Elapsed` are
/// recognised and classified like [`Classify::classify_error`] does; any other error type is a
/// [`Connection`](OutcomeKind::Connection) failure.
///
/// # Examples
///
/// ```
/// use http::Response;
/// use tower_http::classify::{ClassifiedResponse, ClassifyResponse};
/// use tower_llm_limits::signals::{OutcomeKind, OutcomesAsFailures};
///
/// let response = Response::builder()
///     .status(429)
///     .header("retry-after", "3")
///     .body(())
///     .unwrap();
/// match OutcomesAsFailures::new().classify_response(&response) {
///     ClassifiedResponse::Ready(Err(outcome)) => {
///         assert_eq!(outcome.kind(), OutcomeKind::RateLimited);
///         assert_eq!(outcome.retry_after(), Some(std::time::Duration::from_secs(3)));
///     }
///     _ => unreachable!(),
/// }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct OutcomesAsFailures<C = DefaultClassifier> {
    classifier: C,
}

impl OutcomesAsFailures {
    /// With the [`DefaultClassifier`].
    pub const fn new() -> Self {
        OutcomesAsFailures {
            classifier: DefaultClassifier::new(),
        }
    }

    /// A [`MakeClassifier`](tower_http::classify::MakeClassifier) for tower-http layers, with
    /// the [`DefaultClassifier`].
    pub fn make_classifier() -> SharedClassifier<Self> {
        SharedClassifier::new(Self::new())
    }
}

impl<C> OutcomesAsFailures<C> {
    /// With a classifier of your own.
    pub const fn with_classifier(classifier: C) -> Self {
        OutcomesAsFailures { classifier }
    }

    /// The wrapped classifier.
    pub fn get_ref(&self) -> &C {
        &self.classifier
    }
}

impl<C: Classify> ClassifyResponse for OutcomesAsFailures<C> {
    type FailureClass = Outcome;
    type ClassifyEos = NeverClassifyEos<Outcome>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        let hints = RetryHints::from_headers(res.headers());
        let outcome = self.classifier.classify_response(
            res.status(),
            res.headers(),
            &hints,
            res.extensions().get::<ApiError>(),
        );
        ClassifiedResponse::Ready(if outcome.is_success() {
            Ok(())
        } else {
            Err(outcome)
        })
    }

    fn classify_error<E>(self, error: &E) -> Self::FailureClass
    where
        E: fmt::Display + 'static,
    {
        let any = error as &dyn Any;
        if let Some(e) = any.downcast_ref::<crate::BoxError>() {
            return self.classifier.classify_error(&**e);
        }
        if let Some(e) = any.downcast_ref::<std::io::Error>() {
            return self.classifier.classify_error(e);
        }
        if let Some(e) = any.downcast_ref::<tower::timeout::error::Elapsed>() {
            return self.classifier.classify_error(e);
        }
        if let Some(e) = any.downcast_ref::<tokio::time::error::Elapsed>() {
            return self.classifier.classify_error(e);
        }
        Outcome::new(OutcomeKind::Connection)
    }
}
