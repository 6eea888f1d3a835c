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
const AUTH: &str = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_2"}"#;
const BILLING: &str = r#"{"type":"error","error":{"type":"billing_error","message":"billing"}}"#;
const PERMISSION: &str = r#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#;
const NOT_FOUND: &str =
    r#"{"type":"error","error":{"type":"not_found_error","message":"model: x"}}"#;
const CONFLICT: &str = r#"{"type":"error","error":{"type":"conflict_error","message":"conflict"}}"#;
const TOO_LARGE: &str = r#"{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}"#;
const API: &str =
    r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;
const TIMEOUT: &str =
    r#"{"type":"error","error":{"type":"timeout_error","message":"Request timed out"}}"#;
const SELF_SPEND: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified workspace API usage limits."}}"#;
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
        // REFERENCE.md, Anthropic status table, with the documented error bodies.
        (400, &[], Some(SELF_SPEND), ClientError, false),
        (401, &[], Some(AUTH), ClientError, false),
        (402, &[], Some(BILLING), ClientError, false),
        (403, &[], Some(PERMISSION), ClientError, false),
        (404, &[], Some(NOT_FOUND), ClientError, false),
        (409, &[], Some(CONFLICT), ServerError, true),
        (413, &[], Some(TOO_LARGE), ClientError, false),
        (413, &[("retry-after", "1")], None, ClientError, false),
        (500, &[], Some(API), ServerError, true),
        (504, &[], Some(TIMEOUT), ServerError, true),
        (529, &[("retry-after", "5")], Some(OVERLOADED), Overloaded, true),
        (429, &[("retry-after-ms", "2000")], Some(SPEND), SpendLimit, false),
        (429, &[("anthropic-ratelimit-requests-remaining", "0")], Some(SPEND), SpendLimit, false),
        // GitHub-style: a rate-limit response may be a 403.
        (403, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1795425300")], None, RateLimited, true),
        (403, &[("x-ratelimit-remaining", "12")], None, ClientError, false),
        (403, &[("retry-after", "60")], None, RateLimited, true),
        (403, &[("x-ratelimit-remaining", "0"), ("x-should-retry", "false")], None, RateLimited, false),
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
    assert!(c.classify_error(&timed_out).is_retryable());
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

mod error_body {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::{HeaderMap, Request, Response, StatusCode};
    use http_body::{Body, Frame};
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt, service_fn};
    use tower_llm_limits::error_body::{ErrorBodyLayer, MaybeBuffered};
    use tower_llm_limits::signals::ApiError;

    const ERROR: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_9"}"#;

    /// A body of scripted frames with no size hint (like chunked encoding).
    struct Chunks(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Chunks {
        fn of(parts: &[&str]) -> Self {
            Chunks(
                parts
                    .iter()
                    .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p.as_bytes()))))
                    .collect(),
            )
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    async fn call(
        status: u16,
        content_type: &str,
        body: Chunks,
        max: usize,
    ) -> Response<MaybeBuffered<Chunks>> {
        let body = std::sync::Mutex::new(Some(body));
        let content_type = content_type.to_owned();
        let api = service_fn(move |_: Request<()>| {
            let body = body.lock().unwrap().take().unwrap();
            let response = Response::builder()
                .status(status)
                .header("content-type", content_type.as_str())
                .body(body)
                .unwrap();
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        ErrorBodyLayer::new()
            .max_size(max)
            .layer(api)
            .oneshot(Request::new(()))
            .await
            .unwrap()
    }

    /// Every frame of the body: data (concatenated), then the error if one came.
    async fn drain(
        mut body: MaybeBuffered<Chunks>,
    ) -> (Vec<u8>, Option<String>, Option<HeaderMap>) {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Err(e) => return (data, Some(e.to_string()), trailers),
            }
        }
        (data, None, trailers)
    }

    #[tokio::test]
    async fn an_error_body_is_parsed_and_returned_byte_identical() {
        let (a, b) = ERROR.split_at(40);
        let response = call(429, "application/json", Chunks::of(&[a, b]), 64 * 1024).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let error = response.extensions().get::<ApiError>().expect("parsed");
        assert_eq!(error.code(), Some("enforced_spend_limit_reached"));
        assert_eq!(error.request_id(), Some("req_9"));
        assert!(response.body().is_buffered());
        let (data, err, _) = drain(response.into_body()).await;
        assert_eq!(data, ERROR.as_bytes());
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn a_non_json_error_body_is_returned_without_api_error() {
        let html = "<html><body>502 Bad Gateway</body></html>";
        let response = call(502, "text/html", Chunks::of(&[html]), 1024).await;
        assert!(response.extensions().get::<ApiError>().is_none());
        assert_eq!(drain(response.into_body()).await.0, html.as_bytes());
    }

    #[tokio::test]
    async fn success_bodies_are_never_touched() {
        let response = call(200, "application/json", Chunks::of(&[ERROR]), 1024).await;
        assert!(!response.body().is_buffered());
        assert!(response.extensions().get::<ApiError>().is_none());
        assert_eq!(drain(response.into_body()).await.0, ERROR.as_bytes());
    }

    #[tokio::test]
    async fn event_streams_pass_through() {
        let events = "event: error\ndata: {\"type\":\"error\"}\n\n";
        let response = call(
            500,
            "text/event-stream; charset=utf-8",
            Chunks::of(&[events]),
            1024,
        )
        .await;
        assert!(!response.body().is_buffered());
        assert_eq!(drain(response.into_body()).await.0, events.as_bytes());
    }

    #[tokio::test]
    async fn a_body_announced_too_large_passes_through() {
        let api = service_fn(|_: Request<()>| async {
            let body = http_body_util::Full::new(Bytes::from(vec![b'x'; 100]));
            Ok::<_, std::convert::Infallible>(Response::builder().status(500).body(body).unwrap())
        });
        let response = ErrorBodyLayer::new()
            .max_size(99)
            .layer(api)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert!(!response.body().is_buffered());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 100);
    }

    #[tokio::test]
    async fn a_body_that_outgrows_the_limit_is_returned_whole() {
        let parts = ["0123456789", "abcdefghij", "KLMNOPQRST", "uvwxyz"];
        let response = call(500, "application/json", Chunks::of(&parts), 15).await;
        assert!(response.extensions().get::<ApiError>().is_none());
        assert!(response.body().is_buffered());
        let (data, err, _) = drain(response.into_body()).await;
        assert_eq!(data, parts.concat().as_bytes());
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn a_body_error_reaches_the_caller_after_the_bytes_read() {
        let mut body = Chunks::of(&["{\"error\":", "{\"type\""]);
        body.0
            .push_back(Err(std::io::Error::other("connection reset")));
        let response = call(503, "application/json", body, 1024).await;
        assert!(response.extensions().get::<ApiError>().is_none());
        let (data, err, _) = drain(response.into_body()).await;
        assert_eq!(data, b"{\"error\":{\"type\"");
        assert_eq!(err.as_deref(), Some("connection reset"));
    }

    #[tokio::test]
    async fn trailers_are_kept() {
        let mut body = Chunks::of(&[ERROR]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        body.0.push_back(Ok(Frame::trailers(trailers.clone())));
        let response = call(400, "application/json", body, 1024).await;
        assert!(response.extensions().get::<ApiError>().is_some());
        let (data, err, got) = drain(response.into_body()).await;
        assert_eq!(data, ERROR.as_bytes());
        assert!(err.is_none());
        assert_eq!(got, Some(trailers));
    }

    #[tokio::test]
    async fn an_empty_error_body() {
        let response = call(404, "application/json", Chunks::of(&[]), 1024).await;
        assert!(response.extensions().get::<ApiError>().is_none());
        assert!(response.body().is_end_stream());
        assert!(drain(response.into_body()).await.0.is_empty());
    }

    /// A body fed through a channel: what the test sends, when it sends it; ends when the
    /// sender is dropped.
    struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    /// A 500 whose chunked body sends a few bytes and stalls: the response is handed on after
    /// the time limit (10 s by default), unparsed; its body gives the bytes read, then the rest
    /// when it comes.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_error_body_is_handed_on_unparsed_after_the_time_limit() {
        for (layer, limit) in [
            (
                ErrorBodyLayer::new(),
                tower_llm_limits::error_body::DEFAULT_ERROR_BODY_TIMEOUT,
            ),
            (
                ErrorBodyLayer::new().read_timeout(std::time::Duration::from_secs(2)),
                std::time::Duration::from_secs(2),
            ),
        ] {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let body = std::sync::Mutex::new(Some(Fed(rx)));
            let api = service_fn(move |_: Request<()>| {
                let body = body.lock().unwrap().take().unwrap();
                let response = Response::builder()
                    .status(500)
                    .header("content-type", "application/json")
                    .body(body)
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let (head, tail) = ERROR.split_at(25);
            tx.send(Bytes::from_static(head.as_bytes())).unwrap();
            let started = tokio::time::Instant::now();
            let response = tokio::time::timeout(
                std::time::Duration::from_secs(3600),
                layer.layer(api).oneshot(Request::new(())),
            )
            .await
            .expect("a stalled error body does not hang the call")
            .unwrap();
            assert_eq!(started.elapsed(), limit);
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(response.extensions().get::<ApiError>().is_none());
            // The rest arrives late: the caller reads every byte, in order.
            tx.send(Bytes::from_static(tail.as_bytes())).unwrap();
            drop(tx);
            let body = response.into_body();
            let data = body.collect().await.unwrap().to_bytes();
            assert_eq!(data, ERROR.as_bytes());
        }
    }
}

#[cfg(feature = "tower-http")]
mod tower_http_adapter {
    use http::Response;
    use tower_http::classify::{ClassifiedResponse, ClassifyResponse};
    use tower_llm_limits::BoxError;
    use tower_llm_limits::signals::{ApiError, OutcomeKind, OutcomesAsFailures};

    fn kind(response: &Response<()>) -> Option<OutcomeKind> {
        match OutcomesAsFailures::new().classify_response(response) {
            ClassifiedResponse::Ready(Ok(())) => None,
            ClassifiedResponse::Ready(Err(outcome)) => Some(outcome.kind()),
            ClassifiedResponse::RequiresEos(_) => unreachable!("never waits for the end"),
        }
    }

    #[test]
    fn responses() {
        let status = |s: u16| Response::builder().status(s).body(()).unwrap();
        assert_eq!(kind(&status(200)), None);
        assert_eq!(kind(&status(404)), Some(OutcomeKind::ClientError));
        assert_eq!(kind(&status(529)), Some(OutcomeKind::Overloaded));
        let mut spend = status(429);
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        spend
            .extensions_mut()
            .insert(ApiError::from_json(body).unwrap());
        assert_eq!(kind(&spend), Some(OutcomeKind::SpendLimit));
    }

    #[test]
    fn errors() {
        let c = OutcomesAsFailures::new();
        let boxed: BoxError = Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        assert_eq!(c.classify_error(&boxed).kind(), OutcomeKind::Timeout);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "r");
        assert_eq!(c.classify_error(&io).kind(), OutcomeKind::Connection);
        let elapsed = tower::timeout::error::Elapsed::new();
        assert_eq!(c.classify_error(&elapsed).kind(), OutcomeKind::Timeout);
        assert_eq!(c.classify_error(&"text").kind(), OutcomeKind::Connection);
    }
}
