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
    /// [`ErrorBodyLayer`](crate::error_body::ErrorBodyLayer) ran) its parsed error body.
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
/// Responses, in order:
///
/// 1. a status below 400 is [`Success`](OutcomeKind::Success) (never retried);
/// 2. AWS Bedrock's `x-amzn-errortype` (the code before any `:`): `ThrottlingException`,
///    `TooManyRequestsException` → [`RateLimited`](OutcomeKind::RateLimited);
///    `ServiceUnavailableException`, `ModelNotReadyException` →
///    [`Overloaded`](OutcomeKind::Overloaded); `InternalServerException`,
///    `ModelTimeoutException` → [`ServerError`](OutcomeKind::ServerError); `ValidationException`,
///    `AccessDeniedException`, `ResourceNotFoundException`, `ServiceQuotaExceededException`, … →
///    [`ClientError`](OutcomeKind::ClientError); other codes leave the decision to the status;
/// 3. a 403 with `x-ratelimit-remaining: 0` or a `retry-after` (GitHub-style primary and
///    secondary rate limits) is [`RateLimited`](OutcomeKind::RateLimited);
/// 4. 429 is [`RateLimited`](OutcomeKind::RateLimited), unless the error body
///    ([`ApiError`], see [`ErrorBodyLayer`](crate::error_body::ErrorBodyLayer)) says
///    `enforced_spend_limit_reached`, or names a spend or quota cap (`insufficient_quota`,
///    `billing_hard_limit_reached`) and no `retry-after` came with it: then
///    [`SpendLimit`](OutcomeKind::SpendLimit);
/// 5. 529 and 503 (and any error whose body type is `overloaded_error`) are
///    [`Overloaded`](OutcomeKind::Overloaded);
/// 6. 408, 409, 500, 502, 504, other 5xx (and non-standard codes above 599) are
///    [`ServerError`](OutcomeKind::ServerError);
/// 7. other 4xx (400 including context-window overflow, 401, 402, 403, 404, 413) are
///    [`ClientError`](OutcomeKind::ClientError).
///
/// Then `x-should-retry: true`/`false` overrides whether the outcome is retryable, except for a
/// spend limit, which is never retryable. The server's wait (`retry-after-ms`, `retry-after`) is
/// carried in [`Outcome::retry_after`].
///
/// Errors: the whole [`source`](std::error::Error::source) chain is examined. A decision taken by
/// a layer of this crate anywhere in the chain makes the outcome
/// [`Rejected`](OutcomeKind::Rejected); otherwise a timeout anywhere in the chain (tower's and
/// tokio's `Elapsed`, an `io::Error` of kind `TimedOut`, hyper's and reqwest's timeouts) makes it
/// a [`Timeout`](OutcomeKind::Timeout); anything else is a
/// [`Connection`](OutcomeKind::Connection) failure: an HTTP client service fails (rather than
/// returning a response) only when the exchange itself failed, so an unknown error is treated as
/// a transport failure and retried.
///
/// # Examples
///
/// ```
/// use http::{HeaderMap, HeaderValue, StatusCode};
/// use std::time::Duration;
/// use tower_llm_limits::signals::{Classify, DefaultClassifier, OutcomeKind, RetryHints};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", HeaderValue::from_static("7"));
/// let hints = RetryHints::from_headers(&headers);
///
/// let outcome = DefaultClassifier::new().classify_response(
///     StatusCode::TOO_MANY_REQUESTS,
///     &headers,
///     &hints,
///     None,
/// );
/// assert_eq!(outcome.kind(), OutcomeKind::RateLimited);
/// assert!(outcome.is_retryable());
/// assert_eq!(outcome.retry_after(), Some(Duration::from_secs(7)));
///
/// // `x-should-retry: false` forbids retrying a 529.
/// headers.insert("x-should-retry", HeaderValue::from_static("false"));
/// let hints = RetryHints::from_headers(&headers);
/// let outcome = DefaultClassifier::new().classify_response(
///     StatusCode::from_u16(529).unwrap(),
///     &headers,
///     &hints,
///     None,
/// );
/// assert_eq!(outcome.kind(), OutcomeKind::Overloaded);
/// assert!(!outcome.is_retryable());
///
/// // A timeout returned by the inner service.
/// let error = std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out");
/// assert_eq!(DefaultClassifier::new().classify_error(&error).kind(), OutcomeKind::Timeout);
/// ```
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
        if status.as_u16() < 400 {
            return Outcome::success().with_status(status);
        }
        let kind =
            bedrock_kind(headers).unwrap_or_else(|| status_kind(status, headers, hints, api_error));
        let mut outcome = Outcome::new(kind)
            .with_status(status)
            .with_retry_after(hints.retry_after());
        if let (Some(should_retry), true) = (hints.should_retry(), kind != OutcomeKind::SpendLimit)
        {
            outcome = outcome.with_retryable(should_retry);
        }
        outcome
    }

    fn classify_error(&self, error: &(dyn StdError + 'static)) -> Outcome {
        let mut kind = OutcomeKind::Connection;
        let mut current = Some(error);
        while let Some(e) = current {
            if super::decision::is_local_decision(e) {
                return Outcome::new(OutcomeKind::Rejected);
            }
            if is_timeout(e) {
                kind = OutcomeKind::Timeout;
            }
            current = e.source();
        }
        Outcome::new(kind)
    }
}

/// The kind for an error status without a recognised Bedrock error code.
fn status_kind(
    status: StatusCode,
    headers: &HeaderMap,
    hints: &RetryHints,
    api_error: Option<&ApiError>,
) -> OutcomeKind {
    match status.as_u16() {
        403 if is_github_rate_limit(headers, hints) => OutcomeKind::RateLimited,
        429 if is_spend_limit(api_error, hints) => OutcomeKind::SpendLimit,
        429 => OutcomeKind::RateLimited,
        503 | 529 => OutcomeKind::Overloaded,
        _ if api_error.and_then(ApiError::kind) == Some("overloaded_error") => {
            OutcomeKind::Overloaded
        }
        408 | 409 => OutcomeKind::ServerError,
        400..=499 => OutcomeKind::ClientError,
        // 5xx and anything above: the SDKs retry every status >= 500.
        _ => OutcomeKind::ServerError,
    }
}

/// GitHub-style APIs answer a rate limit with 403 (or 429): `x-ratelimit-remaining: 0` for the
/// primary limit, a `retry-after` for the secondary one.
fn is_github_rate_limit(headers: &HeaderMap, hints: &RetryHints) -> bool {
    hints.retry_after().is_some()
        || headers
            .get("x-ratelimit-remaining")
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"0")
}

/// Anthropic's monthly spend cap (`error.details.error_code = "enforced_spend_limit_reached"`),
/// or, without a `retry-after`, an error type or code naming a spend or quota cap
/// (OpenAI's `insufficient_quota`, `billing_hard_limit_reached`).
fn is_spend_limit(api_error: Option<&ApiError>, hints: &RetryHints) -> bool {
    let Some(error) = api_error else { return false };
    if error.code() == Some("enforced_spend_limit_reached") {
        return true;
    }
    const CAPS: [&str; 4] = [
        "enforced_spend_limit_reached",
        "spend_limit_reached",
        "insufficient_quota",
        "billing_hard_limit_reached",
    ];
    hints.retry_after().is_none()
        && [error.code(), error.kind()]
            .into_iter()
            .flatten()
            .any(|c| CAPS.contains(&c))
}

/// AWS Bedrock's `x-amzn-errortype` (`ThrottlingException:http://internal.amazon.com/...`): the
/// code before the first `:`. `None` for codes without a rule of their own (the status decides).
fn bedrock_kind(headers: &HeaderMap) -> Option<OutcomeKind> {
    let value = headers.get("x-amzn-errortype")?;
    let value = std::str::from_utf8(value.as_bytes()).ok()?;
    let code = value.split(':').next().unwrap_or(value).trim();
    Some(match code {
        "ThrottlingException" | "TooManyRequestsException" | "ThrottledException" => {
            OutcomeKind::RateLimited
        }
        "ServiceUnavailableException" | "ModelNotReadyException" => OutcomeKind::Overloaded,
        "InternalServerException" | "InternalFailure" | "ModelTimeoutException" => {
            OutcomeKind::ServerError
        }
        "ValidationException"
        | "AccessDeniedException"
        | "ResourceNotFoundException"
        | "ServiceQuotaExceededException"
        | "ModelErrorException"
        | "UnrecognizedClientException"
        | "ExpiredTokenException" => OutcomeKind::ClientError,
        _ => return None,
    })
}

/// Whether `error` itself (not its sources) is a timeout.
fn is_timeout(error: &(dyn StdError + 'static)) -> bool {
    if error.is::<tower::timeout::error::Elapsed>() || error.is::<tokio::time::error::Elapsed>() {
        return true;
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return io.kind() == std::io::ErrorKind::TimedOut;
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = error.downcast_ref::<reqwest::Error>() {
        return e.is_timeout();
    }
    false
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
