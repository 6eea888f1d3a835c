//! The default classifier, closures as classifiers, and error classification.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tower_llm_limits::signals::{
    ApiError, Classify, DefaultClassifier, Outcome, OutcomeKind, RetryHints, classify_fn,
};

use OutcomeKind::*;

fn classify(status: u16, headers: &[(&str, &str)], body: Option<&str>) -> Outcome {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let hints = RetryHints::from_headers(&map);
    let api_error = body.map(|b| ApiError::from_json(b.as_bytes()).expect("test body parses"));
    DefaultClassifier::new().classify_response(
        StatusCode::from_u16(status).unwrap(),
        &map,
        &hints,
        api_error.as_ref(),
    )
}

const SPEND: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#;
const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
const RATE: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
const OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
const CONTEXT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 250000 tokens > 200000 maximum"}}"#;

/// Status, headers, error body, expected kind, expected retryability.
type Row = (
    u16,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
    OutcomeKind,
    bool,
);

#[test]
fn status_table() {
    #[rustfmt::skip]
    let cases: &[Row] = &[
        (200, &[], None, Success, false),
        (201, &[("x-should-retry", "true")], None, Success, false),
        (304, &[], None, Success, false),
        (400, &[], Some(CONTEXT), ClientError, false),
        (401, &[], None, ClientError, false),
        (402, &[], None, ClientError, false),
        (403, &[], None, ClientError, false),
        (404, &[], None, ClientError, false),
        (408, &[], None, ServerError, true),
        (409, &[], None, ServerError, true),
        (413, &[], None, ClientError, false),
        (422, &[], None, ClientError, false),
        (429, &[("retry-after", "3")], Some(RATE), RateLimited, true),
        (429, &[], None, RateLimited, true),
        (429, &[], Some(SPEND), SpendLimit, false),
        (429, &[("retry-after", "60")], Some(SPEND), SpendLimit, false),
        (429, &[("x-should-retry", "true")], Some(SPEND), SpendLimit, false),
        (429, &[], Some(QUOTA), SpendLimit, false),
        (429, &[("retry-after", "20")], Some(QUOTA), RateLimited, true),
        (500, &[], None, ServerError, true),
        (502, &[], None, ServerError, true),
        (503, &[], None, Overloaded, true),
        (504, &[], None, ServerError, true),
        (507, &[], None, ServerError, true),
        (529, &[], Some(OVERLOADED), Overloaded, true),
        (500, &[], Some(OVERLOADED), Overloaded, true),
        (599, &[], None, ServerError, true),
        // x-should-retry overrides.
        (400, &[("x-should-retry", "true")], None, ClientError, true),
        (500, &[("x-should-retry", "false")], None, ServerError, false),
        (529, &[("x-should-retry", "false")], None, Overloaded, false),
        (429, &[("x-should-retry", "maybe")], None, RateLimited, true),
        // AWS Bedrock.
        (429, &[("x-amzn-errortype", "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/")], None, RateLimited, true),
        (400, &[("x-amzn-errortype", "ThrottlingException")], None, RateLimited, true),
        (429, &[("x-amzn-errortype", "TooManyRequestsException")], None, RateLimited, true),
        (429, &[("x-amzn-errortype", "ModelNotReadyException")], None, Overloaded, true),
        (503, &[("x-amzn-errortype", "ServiceUnavailableException")], None, Overloaded, true),
        (500, &[("x-amzn-errortype", "InternalServerException")], None, ServerError, true),
        (400, &[("x-amzn-errortype", "ValidationException:http://internal.amazon.com/")], None, ClientError, false),
        (403, &[("x-amzn-errortype", "AccessDeniedException")], None, ClientError, false),
        (502, &[("x-amzn-errortype", "SomethingNewException")], None, ServerError, true),
        (200, &[("x-amzn-errortype", "ThrottlingException")], None, Success, false),
    ];
    for (status, headers, body, kind, retryable) in cases {
        let outcome = classify(*status, headers, *body);
        let label = format!("{status} {headers:?} {body:?}");
        assert_eq!(outcome.kind(), *kind, "{label}");
        assert_eq!(outcome.is_retryable(), *retryable, "{label}");
        assert_eq!(
            outcome.status(),
            StatusCode::from_u16(*status).ok(),
            "{label}"
        );
    }
}

#[test]
fn retry_after_is_carried() {
    let outcome = classify(429, &[("retry-after-ms", "1500")], Some(RATE));
    assert_eq!(outcome.retry_after(), Some(Duration::from_millis(1500)));
    assert_eq!(classify(529, &[], None).retry_after(), None);
}

#[test]
fn api_error_shapes() {
    let e = ApiError::from_json(SPEND.as_bytes()).unwrap();
    assert_eq!(e.kind(), Some("rate_limit_error"));
    assert_eq!(e.code(), Some("enforced_spend_limit_reached"));
    assert_eq!(e.request_id(), Some("req_1"));
    assert!(e.message().unwrap().starts_with("You have reached"));
    let e = ApiError::from_json(QUOTA.as_bytes()).unwrap();
    assert_eq!(e.kind(), Some("insufficient_quota"));
    assert_eq!(e.code(), Some("insufficient_quota"));
    assert_eq!(e.request_id(), None);
    let e = ApiError::from_json(br#"{"error":{"code":429,"message":"x"}}"#).unwrap();
    assert_eq!(e.code(), Some("429"));
    for bad in [
        &b""[..],
        b"null",
        b"{}",
        b"{\"error\":\"text\"}",
        b"<html>",
        b"\xff\xfe",
    ] {
        assert_eq!(ApiError::from_json(bad), None, "{bad:?}");
    }
}

#[test]
fn closures_classify() {
    let c = classify_fn(
        |status: StatusCode, _: &HeaderMap, _: &RetryHints, _: Option<&ApiError>| {
            if status == StatusCode::FORBIDDEN {
                Outcome::new(RateLimited).with_status(status)
            } else {
                Outcome::success()
            }
        },
    );
    let hints = RetryHints::default();
    let outcome = c.classify_response(StatusCode::FORBIDDEN, &HeaderMap::new(), &hints, None);
    assert_eq!(outcome.kind(), RateLimited);
    assert!(outcome.is_retryable());
    // Errors fall back to the default rules.
    let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "t");
    assert_eq!(c.classify_error(&timeout).kind(), Timeout);
}

#[derive(Debug)]
struct Wrapper(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wrapped")
    }
}

impl std::error::Error for Wrapper {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test]
async fn error_table() {
    let c = DefaultClassifier::new();
    let kind = |e: &(dyn std::error::Error + 'static)| c.classify_error(e).kind();

    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(kind(&refused), Connection);
    let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "t");
    assert_eq!(kind(&timed_out), Timeout);
    assert_eq!(kind(&Wrapper(Box::new(timed_out))), Timeout);
    let tower_elapsed = tower::timeout::error::Elapsed::new();
    assert_eq!(kind(&tower_elapsed), Timeout);
    let tokio_elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
        .await
        .unwrap_err();
    assert_eq!(kind(&tokio_elapsed), Timeout);
    assert_eq!(kind(&Wrapper(Box::new(tokio_elapsed))), Timeout);
    assert_eq!(kind(&Wrapper("anything".into())), Connection);
    let outcome = c.classify_error(&refused);
    assert!(outcome.is_retryable());
    assert_eq!(outcome.status(), None);
    assert_eq!(outcome.retry_after(), None);
}
