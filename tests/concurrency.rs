//! Fixed and adaptive concurrency caps, driven by hand.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower_llm_limits::concurrency::{
    AdaptiveConcurrencyLimitLayer, AdaptiveLimiter, Aimd, ConcurrencyLimit, ConcurrencyLimitLayer,
    Limiter, PermitBody, Release,
};
use tower_llm_limits::signals::{
    ApiError, Classify, DefaultClassifier, Outcome, OutcomeKind, RetryHints,
};
use tower_test::mock;

mod support;

/// A body yielding its chunks one frame at a time (end of stream after the last one).
#[derive(Debug, Default)]
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn new(chunks: &[&'static str]) -> Self {
        Chunks(
            chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
        )
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

type Req = Request<&'static str>;
type Res = Response<Chunks>;

fn ok(chunks: &[&'static str]) -> Res {
    Response::new(Chunks::new(chunks))
}

/// A streaming answer (`content-type: text/event-stream`) made of `chunks`.
fn sse(chunks: &[&'static str]) -> Res {
    let mut response = ok(chunks);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    response
}

fn status(code: u16) -> Res {
    let mut response = ok(&["{}"]);
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}

/// Polls one frame of `body` and returns its data.
fn poll_frame(body: &mut PermitBody<Chunks>) -> Poll<Option<Bytes>> {
    let mut t = task::spawn(());
    t.enter(|cx, _| Pin::new(body).poll_frame(cx))
        .map(|frame| frame.map(|f| f.unwrap().into_data().unwrap()))
}

/// Polls `service` ready, calls it, and returns the response future and the mock's reply handle.
fn start<S>(
    service: &mut mock::Spawn<S>,
    handle: &mut mock::Handle<Req, Res>,
) -> (task::Spawn<S::Future>, mock::SendResponse<Res>)
where
    S: tower::Service<Req>,
    S::Error: std::fmt::Debug,
{
    assert_ready_ok!(service.poll_ready());
    let future = task::spawn(service.call(Request::new("request")));
    let (_, send) = assert_ready!(handle.poll_request()).expect("the call reached the mock");
    (future, send)
}

type Limited = mock::Spawn<ConcurrencyLimit<mock::Mock<Req, Res>>>;

/// Three services sharing a cap of one: the first holds the permit, the others wait in order.
fn one_holder_two_waiters() -> ([Limited; 3], mock::Handle<Req, Res>) {
    let (mut a, handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(1));
    let mut b = a.clone();
    let mut c = a.clone();
    assert_ready_ok!(a.poll_ready());
    assert_pending!(b.poll_ready());
    assert_pending!(c.poll_ready());
    ([a, b, c], handle)
}

// ---------------------------------------------------------------------------------------------
// Fixed cap
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn waiters_are_woken_in_fifo_order_and_newcomers_do_not_overtake() {
    let layer = ConcurrencyLimitLayer::new(1);
    let limiter = layer.limiter().unwrap().clone();
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut b = a.clone();
    let mut c = a.clone();
    let mut d = a.clone();

    assert_ready_ok!(a.poll_ready());
    assert_pending!(b.poll_ready());
    assert_pending!(c.poll_ready());
    assert_eq!((limiter.in_flight(), limiter.waiting()), (1, 2));

    let mut fut = task::spawn(a.call(Request::new("a")));
    let (_, send) = assert_ready!(handle.poll_request()).unwrap();
    send.send_response(ok(&[]));
    let response = assert_ready_ok!(fut.poll());
    // An empty body gives its permit back at once: the oldest waiter gets it.
    assert!(!response.body().holds_permit());
    assert!(b.is_woken());
    assert!(!c.is_woken());
    // b has not taken its permit yet, but a newcomer must not take it from it.
    assert_pending!(d.poll_ready());
    assert_eq!((limiter.in_flight(), limiter.waiting()), (1, 2));
    assert_ready_ok!(b.poll_ready());
    assert_pending!(c.poll_ready());

    // b gives its unused permit back by being dropped: c is next, then d.
    drop(b);
    assert!(c.is_woken());
    assert!(!d.is_woken());
    assert_ready_ok!(c.poll_ready());
    assert_pending!(d.poll_ready());
    drop(c);
    assert!(d.is_woken());
    assert_ready_ok!(d.poll_ready());
}

#[tokio::test]
async fn dropping_the_response_future_frees_the_permit() {
    let (mut a, _handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(1));
    let mut b = a.clone();
    assert_ready_ok!(a.poll_ready());
    let fut = a.call(Request::new("a"));
    assert_pending!(b.poll_ready());
    drop(fut);
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
    assert_eq!(b.get_ref().in_flight(), 1);
}

#[tokio::test]
async fn dropping_a_waiting_service_leaves_the_queue() {
    let ([a, b, mut c], _handle) = one_holder_two_waiters();
    drop(b);
    assert_eq!(a.get_ref().limiter().waiting(), 1);
    drop(a);
    assert!(c.is_woken());
    assert_ready_ok!(c.poll_ready());
    assert_eq!(c.get_ref().in_flight(), 1);
}

#[tokio::test]
async fn a_granted_but_untaken_permit_returns_when_the_waiter_is_dropped() {
    let ([a, b, mut c], _handle) = one_holder_two_waiters();
    drop(a); // the permit is handed to b, which never polls again
    assert!(b.is_woken());
    drop(b);
    assert!(c.is_woken());
    assert_ready_ok!(c.poll_ready());
}

#[tokio::test]
async fn errors_free_the_permit() {
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(1));
    let mut b = a.clone();
    let (mut fut, send) = start(&mut a, &mut handle);
    assert_pending!(b.poll_ready());
    send.send_error("connection reset");
    let error = fut.poll().map(Result::unwrap_err);
    assert_eq!(assert_ready!(error).to_string(), "connection reset");
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
}

#[tokio::test]
async fn clones_share_the_cap_but_not_the_permit() {
    let (mut a, _handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(2));
    assert_ready_ok!(a.poll_ready());
    let mut b = a.clone();
    let mut c = a.clone();
    assert_eq!(a.get_ref().in_flight(), 1); // cloning a ready service takes no permit
    assert_ready_ok!(b.poll_ready());
    assert_pending!(c.poll_ready());
    assert!(a.get_ref().limiter().same_as(c.get_ref().limiter()));
}

#[tokio::test]
async fn layer_constructors_share_or_not_as_documented() {
    use tower::Layer;
    let shared = ConcurrencyLimitLayer::new(3);
    let one = shared.layer(());
    let two = shared.clone().layer(());
    assert!(one.limiter().same_as(two.limiter()));

    let limiter = Limiter::new(3);
    let three = ConcurrencyLimitLayer::shared(limiter.clone()).layer(());
    assert!(three.limiter().same_as(&limiter));

    let per = ConcurrencyLimitLayer::per_service(3);
    assert!(per.limiter().is_none());
    assert!(!per.layer(()).limiter().same_as(per.layer(()).limiter()));
}

#[tokio::test]
async fn a_streaming_body_holds_the_permit_until_its_end() {
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(1));
    let mut b = a.clone();
    let (mut fut, send) = start(&mut a, &mut handle);
    send.send_response(sse(&["data: 1\n\n", "data: 2\n\n"]));
    let mut body: PermitBody<Chunks> = assert_ready_ok!(fut.poll()).into_body();
    assert!(body.holds_permit());
    assert_pending!(b.poll_ready());

    assert!(assert_ready!(poll_frame(&mut body)).is_some());
    assert!(body.holds_permit());
    assert!(!b.is_woken());
    // The last frame ends the stream: the permit goes back with it.
    assert!(assert_ready!(poll_frame(&mut body)).is_some());
    assert!(!body.holds_permit());
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
}

#[tokio::test]
async fn dropping_a_half_read_body_frees_the_permit() {
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(1));
    let mut b = a.clone();
    let (mut fut, send) = start(&mut a, &mut handle);
    send.send_response(sse(&["1", "2", "3"]));
    let mut body = assert_ready_ok!(fut.poll()).into_body();
    assert!(assert_ready!(poll_frame(&mut body)).is_some());
    assert_pending!(b.poll_ready());
    drop(body);
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
}

/// The default: a non-streaming answer gives its permit back with its head, like tower's
/// `ConcurrencyLimit`; the unread body holds nothing.
#[tokio::test]
async fn a_non_streaming_body_does_not_hold_the_permit_by_default() {
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(1));
    let mut b = a.clone();
    let (mut fut, send) = start(&mut a, &mut handle);
    assert_pending!(b.poll_ready());
    send.send_response(ok(&["{\"id\":", "\"msg_1\"}"]));
    let body = assert_ready_ok!(fut.poll()).into_body();
    assert!(!body.holds_permit());
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
}

#[tokio::test]
async fn release_at_body_end_holds_any_body() {
    let layer = ConcurrencyLimitLayer::new(1).release(Release::AtBodyEnd);
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut b = a.clone();
    let (mut fut, send) = start(&mut a, &mut handle);
    send.send_response(ok(&["1", "2"]));
    let body = assert_ready_ok!(fut.poll()).into_body();
    assert!(body.holds_permit());
    assert_pending!(b.poll_ready());
    drop(body);
    assert_ready_ok!(b.poll_ready());
}

#[tokio::test]
async fn release_at_headers_does_not_hold_the_permit_in_the_body() {
    let layer = ConcurrencyLimitLayer::new(1).release(Release::AtHeaders);
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut b = a.clone();
    let (mut fut, send) = start(&mut a, &mut handle);
    assert_pending!(b.poll_ready());
    send.send_response(sse(&["1", "2"]));
    let body = assert_ready_ok!(fut.poll()).into_body();
    assert!(!body.holds_permit());
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
}

#[tokio::test]
#[should_panic(expected = "without a permit")]
async fn call_without_poll_ready_panics() {
    let (mut a, _handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(1));
    drop(a.call(Request::new("a")));
}

#[tokio::test]
async fn raising_the_limit_wakes_waiters_and_lowering_it_lets_calls_finish() {
    let limiter = Limiter::new(2);
    let (mock, _handle) = mock::pair::<Req, Res>();
    let svc = ConcurrencyLimit::with_limiter(mock, limiter.clone());
    let mut held: Vec<_> = (0..4).map(|_| mock::Spawn::new(svc.clone())).collect();
    let mut waiter = mock::Spawn::new(svc);
    assert_ready_ok!(held[0].poll_ready());
    assert_ready_ok!(held[1].poll_ready());
    assert_pending!(held[2].poll_ready());
    assert_pending!(held[3].poll_ready());
    assert_pending!(waiter.poll_ready());
    limiter.set_limit(4);
    assert!(held[2].is_woken() && held[3].is_woken() && !waiter.is_woken());
    assert_ready_ok!(held[2].poll_ready());
    assert_ready_ok!(held[3].poll_ready());
    assert_eq!(limiter.in_flight(), 4);

    // Lower to 2: nobody loses a permit, and the waiter is admitted only once fewer than 2 are
    // held.
    limiter.set_limit(2);
    assert_eq!(limiter.in_flight(), 4);
    held.pop();
    held.pop();
    assert_eq!(limiter.in_flight(), 2);
    assert!(!waiter.is_woken());
    held.pop();
    assert!(waiter.is_woken());
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!((limiter.in_flight(), limiter.waiting()), (2, 0));
}

#[tokio::test]
async fn a_limit_of_zero_admits_nothing_until_raised() {
    let (mut a, _handle) = mock::spawn_layer::<Req, Res, _>(ConcurrencyLimitLayer::new(0));
    assert_pending!(a.poll_ready());
    a.get_ref().limiter().set_limit(1);
    assert!(a.is_woken());
    assert_ready_ok!(a.poll_ready());
}

// ---------------------------------------------------------------------------------------------
// Adaptive cap
// ---------------------------------------------------------------------------------------------

fn adaptive(config: Aimd) -> (AdaptiveConcurrencyLimitLayer, AdaptiveLimiter) {
    let layer = AdaptiveConcurrencyLimitLayer::new(config).unwrap();
    let limiter = layer.limiter().clone();
    (layer, limiter)
}

#[tokio::test]
async fn invalid_configurations_are_typed_errors() {
    for (config, reason) in [
        (Aimd::new().min(0), "min must be at least 1"),
        (Aimd::new().min(10).max(5), "min must not exceed max"),
        (
            Aimd::new().initial(100),
            "initial must lie within min..=max",
        ),
        (
            Aimd::new().decrease_factor(1.0),
            "decrease_factor must lie strictly between 0 and 1",
        ),
        (
            Aimd::new().decrease_factor(f64::NAN),
            "decrease_factor must lie strictly between 0 and 1",
        ),
    ] {
        assert_eq!(AdaptiveLimiter::new(config).unwrap_err().reason(), reason);
    }
}

#[tokio::test]
async fn a_wave_of_429s_shrinks_the_limit_once_per_epoch() {
    let (layer, limiter) = adaptive(Aimd::new().initial(10).max(10));
    // Bodies hold their permits here, to show a lowered limit admitting nobody.
    let layer = layer.release(Release::AtBodyEnd);
    let (first, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut services: Vec<_> = (0..11).map(|_| first.clone()).collect();
    let mut wave = Vec::new();
    for s in &mut services[..10] {
        assert_ready_ok!(s.poll_ready());
        wave.push(task::spawn(s.call(Request::new("wave"))));
    }
    assert_pending!(services[10].poll_ready());
    let mut responses = Vec::new();
    for fut in &mut wave {
        let (_, send) = assert_ready!(handle.poll_request()).unwrap();
        send.send_response(status(429));
        let response = assert_ready_ok!(fut.poll());
        assert_eq!(response.status(), 429); // responses stay responses
        responses.push(response);
    }
    // Ten 429s from one wave: one decrease, 10 → 7.
    assert_eq!(limiter.limit(), 7);
    assert_eq!(limiter.decreases(), 1);
    // The bodies still hold their permits: 10 in flight above the new limit of 7.
    assert_eq!(limiter.in_flight(), 10);
    // The waiter is admitted only once fewer than 7 are in flight.
    responses.truncate(7);
    assert_eq!(limiter.in_flight(), 7);
    assert!(!services[10].is_woken());
    responses.truncate(6);
    assert!(services[10].is_woken());
    drop(responses);
    assert_ready_ok!(services[10].poll_ready());

    // A call of the new epoch that is refused shrinks it again: 7 → 4.
    let mut fut = task::spawn(services[10].call(Request::new("next")));
    let (_, send) = assert_ready!(handle.poll_request()).unwrap();
    send.send_response(status(529));
    drop(assert_ready_ok!(fut.poll()));
    assert_eq!(limiter.limit(), 4);
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn refusals_within_a_round_trip_of_a_decrease_are_the_same_incident() {
    let (layer, limiter) = adaptive(Aimd::new().initial(10).max(10));
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut exchange = |answer: Res, latency: Duration| {
        let (mut fut, send) = start(&mut a, &mut handle);
        async move {
            tokio::time::advance(latency).await;
            send.send_response(answer);
            drop(assert_ready_ok!(fut.poll()));
        }
    };
    // A success measures the round trip: 2 s.
    exchange(ok(&[]), Duration::from_secs(2)).await;
    assert_eq!(limiter.smoothed_rtt(), Some(Duration::from_secs(2)));
    exchange(status(529), Duration::ZERO).await;
    assert_eq!(limiter.limit(), 7);
    // Sent after the decrease, but refused within a round trip of it: ignored.
    exchange(status(529), Duration::from_millis(1_999)).await;
    assert_eq!(limiter.limit(), 7);
    // A round trip later: a new incident.
    exchange(status(529), Duration::from_millis(1)).await;
    assert_eq!(limiter.limit(), 4);
    assert_eq!(limiter.decreases(), 2);
}

#[tokio::test]
async fn successes_grow_the_limit_by_one_per_limit_and_wake_waiters() {
    let (layer, limiter) = adaptive(Aimd::new().initial(2).max(3));
    let (first, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut s: Vec<_> = (0..3).map(|_| first.clone()).collect();
    assert_ready_ok!(s[0].poll_ready());
    assert_ready_ok!(s[1].poll_ready());
    assert_pending!(s[2].poll_ready());
    let mut a = task::spawn(s[0].call(Request::new("a")));
    let mut b = task::spawn(s[1].call(Request::new("b")));
    for fut in [&mut a, &mut b] {
        let (_, send) = assert_ready!(handle.poll_request()).unwrap();
        send.send_response(ok(&["x"]));
        let _body = assert_ready_ok!(fut.poll()); // the body is dropped: permit back
    }
    // Two successes at a limit of 2: +1, and the waiter is admitted.
    assert_eq!(limiter.limit(), 3);
    assert!(s[2].is_woken());
    assert_ready_ok!(s[2].poll_ready());

    // At max, more successes change nothing.
    for _ in 0..6 {
        let mut fut = task::spawn(s[2].call(Request::new("c")));
        let (_, send) = assert_ready!(handle.poll_request()).unwrap();
        send.send_response(ok(&[]));
        drop(assert_ready_ok!(fut.poll()));
        assert_ready_ok!(s[2].poll_ready());
    }
    assert_eq!(limiter.limit(), 3);
    assert_eq!(limiter.increases(), 1);
}

#[tokio::test]
async fn successes_of_an_idle_service_do_not_grow_the_limit() {
    let (layer, limiter) = adaptive(Aimd::new().initial(4));
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    for _ in 0..20 {
        let (mut fut, send) = start(&mut a, &mut handle);
        send.send_response(ok(&[]));
        drop(assert_ready_ok!(fut.poll()));
    }
    // One call at a time never uses half of a limit of 4.
    assert_eq!(limiter.limit(), 4);
}

/// Reads every error as a timeout.
#[derive(Clone, Copy, Debug)]
struct ErrorsAreTimeouts;

impl Classify for ErrorsAreTimeouts {
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &http::HeaderMap,
        hints: &RetryHints,
        api_error: Option<&ApiError>,
    ) -> Outcome {
        DefaultClassifier::new().classify_response(status, headers, hints, api_error)
    }

    fn classify_error(&self, _error: &(dyn std::error::Error + 'static)) -> Outcome {
        Outcome::new(OutcomeKind::Timeout)
    }
}

#[tokio::test]
async fn errors_are_read_through_the_classifier() {
    // Default classifier: a connection error says nothing about concurrency.
    let (layer, limiter) = adaptive(Aimd::new().initial(10));
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let (mut fut, send) = start(&mut a, &mut handle);
    send.send_error("connection reset");
    assert!(assert_ready!(fut.poll()).is_err());
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 0));

    // A classifier that reads the error as a timeout: the limit shrinks.
    let (layer, limiter) = adaptive(Aimd::new().initial(10));
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer.classifier(ErrorsAreTimeouts));
    let (mut fut, send) = start(&mut a, &mut handle);
    send.send_error("deadline elapsed");
    assert!(assert_ready!(fut.poll()).is_err());
    assert_eq!((limiter.limit(), limiter.in_flight()), (7, 0));
}

#[tokio::test]
async fn backoff_outcomes_are_configurable_and_never_go_below_min() {
    let (layer, limiter) = adaptive(
        Aimd::new()
            .initial(3)
            .min(2)
            .backoff_on([OutcomeKind::Overloaded]),
    );
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    for (code, expected) in [(429, 3), (503, 2), (529, 2)] {
        let (mut fut, send) = start(&mut a, &mut handle);
        send.send_response(status(code));
        drop(assert_ready_ok!(fut.poll()));
        assert_eq!(limiter.limit(), expected, "after {code}");
    }
}

// ---------------------------------------------------------------------------------------------
// Against the simulated API
// ---------------------------------------------------------------------------------------------

mod against_the_sim {
    use http_body_util::{BodyExt, Full};
    use tokio::time::Instant;
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tower_llm_limits::BoxError;
    use tower_llm_limits_sim::{Fault, Faults, Limits, SimApi};

    use super::*;
    use crate::support::sim::message;

    const MODEL: &str = "claude-sonnet-4-5";
    const RUN: Duration = Duration::from_secs(80);
    const OVERLOAD: std::ops::Range<Duration> = Duration::from_secs(20)..Duration::from_secs(50);
    const CALLERS: usize = 40;
    /// What a caller waits after a refused call (a retry layer's backoff, simplified).
    const BACKOFF: Duration = Duration::from_secs(1);

    /// A sim whose rate limits never bind, overloaded (529 to every call) during [`OVERLOAD`];
    /// a success takes 300 ms + 2 ms × 100 output tokens = 500 ms.
    fn overloaded_sim() -> SimApi {
        SimApi::builder()
            .model(
                MODEL,
                Limits::per_minute(1_000_000, 1_000_000_000, 1_000_000_000),
            )
            .latency(Duration::from_millis(300), Duration::from_millis(2))
            .faults(Faults::new().window(OVERLOAD, Fault::Overloaded { probability: 1.0 }))
            .seed(42)
            .build()
    }

    /// Runs [`CALLERS`] callers in a loop through `service` for [`RUN`], each reading its body to
    /// the end and waiting [`BACKOFF`] after a refusal. Calls `sample(s)` once per second (at
    /// s + 250 ms) and returns how many calls succeeded after the overload window.
    async fn drive<S>(service: S, mut sample: impl FnMut(Duration)) -> usize
    where
        S: Service<Request<Full<Bytes>>, Response = Response<PermitBody<Full<Bytes>>>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        let start = Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..CALLERS {
            let service = service.clone();
            callers.spawn(async move {
                let mut ok_after = 0;
                while start.elapsed() < RUN {
                    let response = service
                        .clone()
                        .oneshot(message(MODEL, 500, 200, 100))
                        .await
                        .map_err(Into::into)
                        .expect("the sim answers");
                    let status = response.status();
                    response.into_body().collect().await.expect("body");
                    if status.is_success() {
                        ok_after += usize::from(start.elapsed() > OVERLOAD.end);
                    } else {
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
                ok_after
            });
        }
        for second in 0..=RUN.as_secs() {
            // A quarter past each second: every call starts and ends on a multiple of 500 ms,
            // so a sample never races with one.
            let at = Duration::from_secs(second) + Duration::from_millis(250);
            tokio::time::sleep_until(start + at).await;
            sample(Duration::from_secs(second));
        }
        callers.join_all().await.into_iter().sum()
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_cap_drops_during_an_overload_window_and_recovers_after_it() {
        let api = overloaded_sim();
        let layer =
            AdaptiveConcurrencyLimitLayer::new(Aimd::new().initial(16).min(1).max(32)).unwrap();
        let limiter = layer.limiter().clone();
        let service = ServiceBuilder::new().layer(layer).service(api.clone());

        let mut trace = Vec::new();
        let ok_after = drive(service, |t| trace.push((t.as_secs(), limiter.limit()))).await;
        println!("limit per second: {trace:?}");
        println!(
            "adaptive: ok after the window {ok_after}, 529s {}, decreases {}, increases {}",
            api.counters().overloaded(),
            limiter.decreases(),
            limiter.increases()
        );
        let at = |s: u64| trace[s as usize].1;

        // Before the window: grown from 16 to its maximum.
        assert_eq!(at(0), 16);
        assert_eq!(at(19), 32);
        // During it: about one decrease per second (the callers' backoff), ×0.7 each:
        // 32 → 22 → 15 → 10 → 7 → 4 → 2 → 1, then held at the minimum.
        assert_eq!(
            &trace[20..=27].iter().map(|&(_, l)| l).collect::<Vec<_>>(),
            &[22, 15, 10, 7, 4, 2, 1, 1]
        );
        for s in 26..=50 {
            assert_eq!(at(s), 1, "at {s} s");
        }
        // After it: growing again, back at the maximum well before the end.
        assert!(at(55) > 1, "recovering: {}", at(55));
        assert_eq!(at(75), 32);
        assert_eq!(at(80), 32);
        assert_eq!(limiter.in_flight(), 0);
    }

    /// The same run behind a fixed cap of 32, for comparison (the figures in the report).
    #[tokio::test(start_paused = true)]
    async fn a_fixed_cap_under_the_same_overload() {
        let api = overloaded_sim();
        let layer = ConcurrencyLimitLayer::new(32);
        let limiter = layer.limiter().unwrap().clone();
        let service = ServiceBuilder::new().layer(layer).service(api.clone());
        let mut busiest = 0;
        let ok_after = drive(service, |_| busiest = busiest.max(limiter.in_flight())).await;
        // 40 callers behind a cap of 32: the cap is full, never exceeded.
        assert_eq!(busiest, 32);
        println!(
            "fixed 32: ok after the window {ok_after}, 529s {}",
            api.counters().overloaded()
        );
        assert_eq!(limiter.limit(), 32);
        assert_eq!(limiter.in_flight(), 0);
    }
}

/// Collects the `message`, `old`, `new` and `reason` fields of every event.
#[derive(Clone, Default)]
struct Events(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0.trim_end().to_owned());
    }
}

#[tokio::test]
async fn limit_changes_are_traced_with_old_new_and_reason() {
    use tracing_subscriber::layer::SubscriberExt;
    let events = Events::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    // A test on another thread may have registered these callsites while no subscriber was
    // interested, which caches them as disabled: recompute with this subscriber installed.
    tracing::callsite::rebuild_interest_cache();

    let (layer, _limiter) = adaptive(Aimd::new().initial(1).max(2));
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    for answer in [ok(&[]), status(429)] {
        let (mut fut, send) = start(&mut a, &mut handle);
        send.send_response(answer);
        drop(assert_ready_ok!(fut.poll()));
    }
    assert_eq!(
        *events.0.lock().unwrap(),
        [
            "message=adaptive concurrency limit increased old=1 new=2 reason=\"success\"",
            "message=adaptive concurrency limit decreased old=2 new=1 reason=\"rate_limited\"",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Collecting responses before reading them (issue 19, item 1)
// ---------------------------------------------------------------------------------------------

mod collecting_responses {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_llm_limits::preset;
    use tower_llm_limits_sim::{Limits, SimApi};

    use super::support::sim::message;

    const MODEL: &str = "claude-sonnet-4-5";

    fn api() -> SimApi {
        SimApi::builder()
            .model(MODEL, Limits::per_minute(100_000, 100_000_000, 100_000_000))
            .latency(Duration::from_millis(300), Duration::from_millis(5))
            .seed(19)
            .build()
    }

    /// `tokio::join!` of three calls through a cap of two: the third call needs a permit that
    /// one of the first two holds; both responses are only read after all three arrive. On the
    /// paused clock a deadlock shows as the timeout firing.
    #[tokio::test(start_paused = true)]
    async fn join_of_three_calls_through_max_concurrency_two_completes() {
        let layer = preset::anthropic().max_concurrency(2);
        let client = ServiceBuilder::new().layer(layer.clone()).service(api());
        let call = || client.clone().oneshot(message(MODEL, 100, 64, 16));
        let (a, b, c) = tokio::time::timeout(Duration::from_secs(600), async {
            tokio::join!(call(), call(), call())
        })
        .await
        .expect("three calls through a cap of two complete without reading the bodies");
        for response in [a, b, c] {
            let response = response.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
    }

    /// 40 calls through the default preset (adaptive cap starting at 32), every response
    /// collected from a `JoinSet` before any body is read.
    #[tokio::test(start_paused = true)]
    async fn collecting_40_responses_from_a_join_set_with_the_default_preset_completes() {
        let layer = preset::anthropic();
        let client = ServiceBuilder::new().layer(layer.clone()).service(api());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..40 {
            calls.spawn(client.clone().oneshot(message(MODEL, 100, 64, 16)));
        }
        let responses = tokio::time::timeout(Duration::from_secs(600), async {
            let mut responses = Vec::new();
            while let Some(done) = calls.join_next().await {
                responses.push(done.unwrap().unwrap());
            }
            responses
        })
        .await
        .expect("all 40 calls complete before their bodies are read");
        assert_eq!(responses.len(), 40);
        for response in responses {
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
    }
}

/// A streaming answer holds its permit until its body ends, and the adaptive cap still takes
/// its sample (outcome and latency) when the head arrives.
#[tokio::test(start_paused = true)]
async fn the_adaptive_cap_samples_a_stream_at_its_head_and_holds_its_permit_to_the_end() {
    let (layer, limiter) = adaptive(Aimd::new().initial(1).min(1).max(4));
    let (mut a, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut b = a.clone();
    let (mut fut, send) = start(&mut a, &mut handle);
    tokio::time::advance(Duration::from_millis(250)).await;
    send.send_response(sse(&[
        "event: message_start\n\n",
        "event: message_stop\n\n",
    ]));
    let mut body = assert_ready_ok!(fut.poll()).into_body();
    // Sampled at the head: one success with the cap full grows the limit, the latency is known.
    assert_eq!(limiter.smoothed_rtt(), Some(Duration::from_millis(250)));
    assert_eq!(limiter.limit(), 2);
    assert!(body.holds_permit());
    assert_eq!(limiter.in_flight(), 1);
    assert!(assert_ready!(poll_frame(&mut body)).is_some());
    assert!(assert_ready!(poll_frame(&mut body)).is_some());
    assert!(!body.holds_permit());
    assert_eq!(limiter.in_flight(), 0);
    assert_ready_ok!(b.poll_ready());
}
