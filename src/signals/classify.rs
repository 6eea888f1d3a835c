//! Outcome classification.

use std::error::Error as StdError;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::{ApiError, RetryHints};

/// What kind of result a call had, from the point of view of a client that paces, retries and
/// breaks circuits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// A 1xx/2xx/3xx response.
    Success,
    /// The client exceeded a rate limit (429, Bedrock `ThrottlingException`). Our own pacing
    /// problem: retry after the server's wait, never trip a breaker.
    RateLimited,
    /// The provider is overloaded for everybody (529, 503, Bedrock
    /// `ServiceUnavailableException`/`ModelNotReadyException`). Retry with backoff; this is what a
    /// circuit breaker is for.
    Overloaded,
    /// A transient server error: 500, 502, 504, 408, 409 and other 5xx.
    ServerError,
    /// The request timed out on the client side.
    Timeout,
    /// The connection failed (refused, reset, closed early).
    Connection,
    /// The organisation's spend limit is reached (429 with `enforced_spend_limit_reached`):
    /// retrying cannot help.
    SpendLimit,
    /// A client error that retrying cannot fix: 400 (including context-window overflow), 401,
    /// 402, 403, 404, 413 and other 4xx.
    ClientError,
    /// A decision taken by a layer of this crate (breaker open, maximum wait exceeded, retry
    /// budget exhausted, …): final, never retried by this crate and never counted against the
    /// server.
    Rejected,
}

impl OutcomeKind {
    /// A short stable name for logs and metrics (`success`, `rate_limited`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::RateLimited => "rate_limited",
            OutcomeKind::Overloaded => "overloaded",
            OutcomeKind::ServerError => "server_error",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::Connection => "connection",
            OutcomeKind::SpendLimit => "spend_limit",
            OutcomeKind::ClientError => "client_error",
            OutcomeKind::Rejected => "rejected",
        }
    }

    /// Whether this kind is retried by default (before `x-should-retry` is considered).
    pub const fn is_retryable_by_default(self) -> bool {
        matches!(
            self,
            OutcomeKind::RateLimited
                | OutcomeKind::Overloaded
                | OutcomeKind::ServerError
                | OutcomeKind::Timeout
                | OutcomeKind::Connection
        )
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified result: its kind, the status (for responses), whether retrying makes sense and
/// how long the server asked to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    kind: OutcomeKind,
    status: Option<StatusCode>,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Outcome {
    /// An outcome of `kind`, retryable when the kind is retryable by default.
    pub fn new(kind: OutcomeKind) -> Self {
        Outcome {
            kind,
            status: None,
            retryable: kind.is_retryable_by_default(),
            retry_after: None,
        }
    }

    /// A successful outcome.
    pub fn success() -> Self {
        Outcome::new(OutcomeKind::Success)
    }

    /// Sets the response status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Overrides whether the outcome may be retried.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Sets the wait the server asked for.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The kind of outcome.
    pub fn kind(&self) -> OutcomeKind {
        self.kind
    }

    /// The response status, when the outcome came from a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Whether a retry may succeed (after `x-should-retry` was taken into account).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The wait the server asked for (`retry-after-ms`, `retry-after`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// `true` for [`OutcomeKind::Success`].
    pub fn is_success(&self) -> bool {
        self.kind == OutcomeKind::Success
    }
}

/// Turns a response or an error into an [`Outcome`].
///
/// Implement it for your own rules, or wrap a closure with [`classify_fn`].
pub trait Classify {
    /// Classifies a response from its status, headers, parsed retry hints and (when
    /// [`ErrorBodyLayer`](super::ErrorBodyLayer) ran) its parsed error body.
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        hints: &RetryHints,
        api_error: Option<&ApiError>,
    ) -> Outcome;

    /// Classifies an error returned by the inner service. The default recognises timeouts,
    /// connection errors and this crate's own typed errors.
    fn classify_error(&self, error: &(dyn StdError + 'static)) -> Outcome {
        DefaultClassifier::new().classify_error(error)
    }
}

/// The default classifier for Anthropic, OpenAI, AWS Bedrock and generic HTTP APIs.
///
/// In order: `x-should-retry` overrides retryability; Bedrock's `x-amzn-errortype` is read;
/// 429 is rate limited unless the error body says `enforced_spend_limit_reached`; 529 and 503 are
/// overload; 408, 409, 500, 502, 504 and other 5xx are transient server errors; other 4xx are
/// final client errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier {
    _priv: (),
}

impl DefaultClassifier {
    /// The default classifier.
    pub const fn new() -> Self {
        DefaultClassifier { _priv: () }
    }
}

impl Classify for DefaultClassifier {
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        hints: &RetryHints,
        api_error: Option<&ApiError>,
    ) -> Outcome {
        let _ = (headers, api_error);
        let kind = if status.as_u16() < 400 {
            OutcomeKind::Success
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            OutcomeKind::RateLimited
        } else if status.as_u16() == 529 || status == StatusCode::SERVICE_UNAVAILABLE {
            OutcomeKind::Overloaded
        } else if status.is_server_error() {
            OutcomeKind::ServerError
        } else {
            OutcomeKind::ClientError
        };
        Outcome::new(kind)
            .with_status(status)
            .with_retry_after(hints.retry_after())
    }

    fn classify_error(&self, error: &(dyn StdError + 'static)) -> Outcome {
        if crate::error::is_local_decision(error) {
            return Outcome::new(OutcomeKind::Rejected);
        }
        Outcome::new(OutcomeKind::Connection)
    }
}

/// A [`Classify`] made from a closure; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

/// Makes a classifier from a closure over the response's status, headers, hints and error body.
/// Errors are classified as by [`DefaultClassifier`].
pub fn classify_fn<F>(f: F) -> ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap, &RetryHints, Option<&ApiError>) -> Outcome,
{
    ClassifyFn { f }
}

impl<F> Classify for ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap, &RetryHints, Option<&ApiError>) -> Outcome,
{
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        hints: &RetryHints,
        api_error: Option<&ApiError>,
    ) -> Outcome {
        (self.f)(status, headers, hints, api_error)
    }
}
