//! Streaming answers (`text/event-stream`) through the whole preset: outcomes counted at the
//! stream's end, usage settled from its events, retries only before the first event, permits
//! given back however the stream ends. Scripted bodies on tokio's paused clock.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_limits::BoxError;
use tower_llm_limits::breaker::State as BreakerState;
use tower_llm_limits::preset::{self, PresetLayer};
use tower_llm_limits::rate_limit::Limits;
use tower_llm_limits::retry::Attempts;
use tower_llm_limits::signals::{Dimension, OutcomeKind, StreamInterrupted};
use tower_llm_limits_sim as sim;

const MODEL: &str = "claude-sonnet-4-5";

/// One step of a scripted body.
#[derive(Clone, Debug)]
enum Step {
    Data(&'static str),
    Wait(Duration),
    /// The connection fails.
    Fail,
    /// Nothing more, ever.
    Stall,
}

/// A body that plays its steps, waiting on tokio's clock.
struct Script {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Script {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                std::task::ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            return match self.steps.pop_front() {
                None => Poll::Ready(None),
                Some(Step::Data(d)) => {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(d.as_bytes())))))
                }
                Some(Step::Wait(d)) => {
                    self.sleep = Some(Box::pin(tokio::time::sleep(d)));
                    continue;
                }
                Some(Step::Fail) => Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset",
                ))))),
                Some(Step::Stall) => {
                    self.steps.push_front(Step::Stall);
                    Poll::Pending
                }
            };
        }
    }
}

const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":1234,\"output_tokens\":1}}}\n\n";
const BLOCK: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n";
const DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n";
const END: &str = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":321}}\n\n";
const STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
const OVERLOADED: &str = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

fn complete() -> Vec<Step> {
    // The message_start split in the middle of its JSON, the rest in small frames.
    let (a, b) = START.split_at(70);
    vec![
        Step::Data(a),
        Step::Data(b),
        Step::Data(BLOCK),
        Step::Data(DELTA),
        Step::Data(DELTA),
        Step::Data(END),
        Step::Data(STOP),
    ]
}

/// A server answering call `n` (from 0) with `script(n)` as an event stream; counts the calls.
#[derive(Clone)]
struct Server {
    calls: Arc<AtomicUsize>,
    script: Arc<dyn Fn(usize) -> Vec<Step> + Send + Sync>,
}

impl Server {
    fn new(script: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static) -> Self {
        Server {
            calls: Arc::new(AtomicUsize::new(0)),
            script: Arc::new(script),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<Full<Bytes>>> for Server {
    type Response = Response<Script>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Script>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let body = Script {
            steps: (self.script)(n).into(),
            sleep: None,
        };
        let response = Response::builder()
            .header("content-type", "text/event-stream; charset=utf-8")
            .body(body)
            .map_err(Into::into);
        std::future::ready(response)
    }
}

fn request() -> Request<Full<Bytes>> {
    let body = sim::message_body(MODEL, 2_000, 1_000, 300);
    Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

/// The whole body: its bytes, and the error it ended with.
async fn drain<B>(mut body: B) -> (Vec<u8>, Option<BoxError>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(d) = frame.into_data() {
                    data.extend_from_slice(&d);
                }
            }
            Err(e) => return (data, Some(e.into())),
        }
    }
    (data, None)
}

fn interrupted(error: &Option<BoxError>) -> &StreamInterrupted {
    error
        .as_ref()
        .and_then(|e| e.downcast_ref::<StreamInterrupted>())
        .unwrap_or_else(|| panic!("a StreamInterrupted, got {error:?}"))
}

fn layer() -> PresetLayer {
    preset::anthropic().limits(Limits::per_minute(1_000, 1_000_000, 100_000))
}

#[tokio::test(start_paused = true)]
async fn a_mid_stream_overloaded_error_trips_the_breaker_and_lowers_the_adaptive_limit() {
    let server = Server::new(|_| {
        vec![
            Step::Data(START),
            Step::Data(BLOCK),
            Step::Data(DELTA),
            Step::Data(OVERLOADED),
        ]
    });
    let layer = layer();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(server.clone());
    let limit = layer.get_concurrency().limiter().limit();
    for i in 0..5 {
        assert_eq!(
            layer.get_breaker().state(),
            BreakerState::Closed,
            "call {i}"
        );
        let response = client.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), 200);
        let (data, error) = drain(response.into_body()).await;
        assert!(
            data.ends_with(OVERLOADED.as_bytes()),
            "the error event reaches the caller"
        );
        let e = interrupted(&error);
        assert_eq!(e.outcome().kind(), OutcomeKind::Overloaded);
        assert_eq!(
            e.api_error().and_then(|e| e.kind()),
            Some("overloaded_error")
        );
        assert_eq!(e.events(), 5);
        assert_eq!(e.bytes(), data.len() as u64);
    }
    assert!(
        matches!(layer.get_breaker().state(), BreakerState::Open { .. }),
        "five overloaded streams in a row open the breaker: {:?}",
        layer.get_breaker().state()
    );
    let adaptive = layer.get_concurrency().limiter();
    assert!(adaptive.decreases() >= 1);
    assert!(adaptive.limit() < limit, "{} < {limit}", adaptive.limit());
    assert_eq!(adaptive.in_flight(), 0);
    // Nothing was retried: the caller had the stream.
    assert_eq!(server.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn complete_streams_count_as_successes_and_settle_usage_exactly() {
    let server = Server::new(|_| complete());
    let layer = layer();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(server.clone());
    let key = || layer.snapshot().rate_limit(MODEL).unwrap().clone();
    let response = client.clone().oneshot(request()).await.unwrap();
    // At the head the reservation is an estimate: not the server's count.
    let at_head = key();
    let output_at_head = at_head.bucket(Dimension::OutputTokens).unwrap().level();
    assert_ne!(output_at_head, 100_000 - 321);
    let (data, error) = drain(response.into_body()).await;
    assert!(error.is_none(), "{error:?}");
    assert!(data.ends_with(STOP.as_bytes()));
    // The level after the stream is exactly what the server counted (the clock is paused: no
    // refill in between).
    let after = key();
    let input = after.bucket(Dimension::InputTokens).unwrap().level();
    let output = after.bucket(Dimension::OutputTokens).unwrap().level();
    assert_eq!(input, 1_000_000 - 1_234);
    assert_eq!(output, 100_000 - 321);
    assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
    assert_eq!(layer.get_breaker().state(), BreakerState::Closed);
    assert_eq!(server.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_input_is_settled_at_message_start_while_the_stream_runs() {
    const PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
    // `message_start` first (read before the head goes on), or after a ping (read as it passes).
    for ping_first in [false, true] {
        let server = Server::new(move |_| {
            let mut steps = complete();
            if ping_first {
                steps.insert(0, Step::Data(PING));
            }
            // The output comes much later: the stream is still running when the input settles.
            steps.insert(4, Step::Wait(Duration::from_secs(30)));
            steps
        });
        let layer = layer();
        let client = ServiceBuilder::new().layer(layer.clone()).service(server);
        let input = || {
            layer
                .snapshot()
                .rate_limit(MODEL)
                .unwrap()
                .bucket(Dimension::InputTokens)
                .unwrap()
                .level()
        };
        let output = || {
            layer
                .snapshot()
                .rate_limit(MODEL)
                .unwrap()
                .bucket(Dimension::OutputTokens)
                .unwrap()
                .level()
        };
        let response = client.oneshot(request()).await.unwrap();
        let mut body = response.into_body();
        // Up to the end of `message_start` (the clock has not moved: no refill).
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("\"input_tokens\":1234") {
            let frame = body.frame().await.unwrap().unwrap();
            seen.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(
            input(),
            1_000_000 - 1_234,
            "ping first: {ping_first}: the server's input count, not the estimate"
        );
        assert_ne!(output(), 100_000 - 321, "the output is not known yet");
        let (_, error) = drain(body).await;
        assert!(error.is_none(), "{error:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn pauses_shorter_than_the_idle_bound_are_not_a_stall() {
    let pause = tower_llm_limits::signals::DEFAULT_STREAM_IDLE_TIMEOUT - Duration::from_secs(1);
    let server = Server::new(move |_| {
        let mut steps = complete();
        steps.insert(3, Step::Wait(pause));
        steps.insert(5, Step::Wait(pause));
        steps
    });
    let client = ServiceBuilder::new().layer(layer()).service(server);
    let response = client.oneshot(request()).await.unwrap();
    let started = tokio::time::Instant::now();
    let (_, error) = drain(response.into_body()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(started.elapsed(), pause * 2);
}

#[tokio::test(start_paused = true)]
async fn an_error_as_the_first_event_is_retried_and_the_caller_sees_one_clean_stream() {
    // An error event first, a connection that fails before the first event, an empty stream.
    for first in [vec![Step::Data(OVERLOADED)], vec![Step::Fail], vec![]] {
        let first2 = first.clone();
        let server = Server::new(move |n| if n == 0 { first2.clone() } else { complete() });
        let layer = layer();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(server.clone());
        let response = client.oneshot(request()).await.unwrap();
        assert_eq!(
            response.extensions().get::<Attempts>().map(|a| a.get()),
            Some(2),
            "{first:?}"
        );
        let (data, error) = drain(response.into_body()).await;
        assert!(error.is_none(), "{error:?}");
        let clean: String = complete()
            .into_iter()
            .filter_map(|s| match s {
                Step::Data(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(data, clean.as_bytes());
        assert_eq!(server.calls(), 2);
        assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn an_interruption_after_delivered_bytes_is_a_typed_error_and_nothing_is_resent() {
    for (tail, kind) in [
        (Step::Fail, OutcomeKind::Connection),
        // Ends without `message_stop`: truncated.
        (Step::Data(DELTA), OutcomeKind::Connection),
        (Step::Stall, OutcomeKind::Timeout),
    ] {
        let tail2 = tail.clone();
        let server = Server::new(move |_| {
            vec![
                Step::Data(START),
                Step::Data(BLOCK),
                Step::Data(DELTA),
                tail2.clone(),
            ]
        });
        let layer = layer();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(server.clone());
        let response = client.oneshot(request()).await.unwrap();
        let started = tokio::time::Instant::now();
        let (data, error) = drain(response.into_body()).await;
        let e = interrupted(&error);
        assert_eq!(e.outcome().kind(), kind, "{tail:?}");
        assert_eq!(e.bytes(), data.len() as u64);
        assert!(e.events() >= 4, "{e}");
        if matches!(tail, Step::Stall) {
            assert_eq!(
                started.elapsed(),
                tower_llm_limits::signals::DEFAULT_STREAM_IDLE_TIMEOUT
            );
        }
        assert_eq!(server.calls(), 1, "nothing re-sent after {tail:?}");
        assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_half_way_gives_back_its_permit_and_is_not_counted() {
    let server = Server::new(|_| {
        vec![
            Step::Data(START),
            Step::Data(BLOCK),
            Step::Data(DELTA),
            Step::Stall,
        ]
    });
    let layer = preset::anthropic()
        .limits(Limits::per_minute(1_000, 1_000_000, 100_000))
        .max_concurrency(1);
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(server.clone());
    let key = || layer.snapshot().rate_limit(MODEL).unwrap().clone();
    let response = client.clone().oneshot(request()).await.unwrap();
    let at_head = key().bucket(Dimension::OutputTokens).unwrap().level();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    assert_eq!(layer.get_concurrency().limiter().in_flight(), 1);
    drop(body);
    assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
    let after = key();
    assert_eq!(after.in_flight(), 0);
    // What the head settled stands (the estimate of an answer): nothing more stays reserved.
    assert_eq!(
        after.bucket(Dimension::OutputTokens).unwrap().level(),
        at_head
    );
    assert_eq!(layer.get_breaker().state(), BreakerState::Closed);
    assert_eq!(layer.get_concurrency().limiter().decreases(), 0);
    // The cap of one admits the next call at once.
    let next = tokio::time::timeout(Duration::from_secs(1), client.oneshot(request())).await;
    assert!(next.is_ok(), "the permit came back");
    assert_eq!(server.calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// Against the simulated API

mod against_the_sim {
    use super::*;
    use tower_llm_limits_sim::{Fault, Faults, SimApi, StreamBreak};

    const LIMITS: (u64, u64, u64) = (1_000, 400_000, 80_000);

    fn api(faults: Faults) -> SimApi {
        let (r, i, o) = LIMITS;
        SimApi::builder()
            .model(MODEL, sim::Limits::per_minute(r, i, o))
            .faults(faults)
            .seed(3)
            .build()
    }

    fn streaming(output: u64) -> Request<Full<Bytes>> {
        let body = sim::message_body(MODEL, 2_000, 1_000, output);
        let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["stream"] = serde_json::Value::Bool(true);
        Request::post("https://api.anthropic.com/v1/messages")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&json).unwrap())))
            .unwrap()
    }

    fn breaking(how: StreamBreak, after_events: usize) -> Faults {
        Faults::new().always(Fault::StreamBreak {
            after_events,
            how,
            probability: 1.0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_sim_streams_and_the_bucket_after_the_stream_equals_the_servers() {
        // A server that reserves `max_tokens` at admission and gives back what the answer did
        // not use when it ends counts output from the same instant as the limiter; without
        // rate-limit headers (Bedrock-style) and with the same limits configured, the limiter's
        // level moves only by its reservation and the stream's usage, so the two levels can be
        // compared to the token. (With headers, the limiter's reading of rounded values keeps
        // it on the conservative side, streaming or not; a server charging output as produced
        // charges it later, and the levels meet once that output has refilled.)
        let limits = sim::Limits::per_minute(1_000, 400_000, 8_000);
        let api = SimApi::builder()
            .model(MODEL, limits)
            .output_accounting(sim::OutputAccounting::ReserveMaxTokens)
            .header_dialect(sim::HeaderDialect::Bedrock)
            .seed(3)
            .build();
        let layer = preset::anthropic().limits(Limits::per_minute(1_000, 400_000, 8_000));
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(api.clone());
        let first = client.clone().oneshot(streaming(40)).await.unwrap();
        drain(first.into_body()).await;
        let response = client.oneshot(streaming(300)).await.unwrap();
        assert_eq!(response.status(), 200);
        let (data, error) = drain(response.into_body()).await;
        assert!(error.is_none(), "{error:?}");
        let text = String::from_utf8(data).unwrap();
        assert!(text.starts_with("event: message_start\n"));
        assert_eq!(
            text.matches("event: content_block_delta").count(),
            300_usize.div_ceil(8)
        );
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        let server = api.levels(MODEL).unwrap();
        let key = layer.snapshot().rate_limit(MODEL).unwrap().clone();
        let ours = |d| key.bucket(d).unwrap().level() as f64;
        assert!(server.output_tokens() < 8_000.0 - 100.0, "{server:?}");
        for (d, theirs) in [
            (Dimension::OutputTokens, server.output_tokens()),
            (Dimension::InputTokens, server.input_tokens()),
        ] {
            assert!(
                (ours(d) - theirs).abs() <= 1.0,
                "{d:?}: ours {}, the server's {theirs}",
                ours(d)
            );
        }
        assert_eq!(api.counters().ok(), 2);
        assert_eq!(api.counters().output_tokens(), 340);
    }

    #[tokio::test(start_paused = true)]
    async fn a_mid_stream_overloaded_error_from_the_sim_opens_the_breaker_without_retries() {
        let api = api(breaking(StreamBreak::Overloaded, 5));
        let layer = preset::anthropic();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(api.clone());
        for _ in 0..5 {
            let response = client.clone().oneshot(streaming(100)).await.unwrap();
            let (_, error) = drain(response.into_body()).await;
            assert_eq!(
                interrupted(&error).outcome().kind(),
                OutcomeKind::Overloaded
            );
        }
        assert!(matches!(
            layer.get_breaker().state(),
            BreakerState::Open { .. }
        ));
        assert!(layer.get_concurrency().limiter().decreases() >= 1);
        assert_eq!(api.counters().received(), 5, "nothing re-sent");
        assert_eq!(api.counters().overloaded(), 5);
        // The breaker answers the next call itself, after waiting for its probe at most.
        let before = api.counters().received();
        let _ = client.oneshot(streaming(100)).await;
        assert!(api.counters().received() <= before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_first_event_from_the_sim_is_retried_into_one_clean_stream() {
        // Only the first request (at t = 0) breaks at once; the retry comes ~0.4 s later.
        let faults = Faults::new().window(
            Duration::ZERO..Duration::from_millis(100),
            Fault::StreamBreak {
                after_events: 0,
                how: StreamBreak::Overloaded,
                probability: 1.0,
            },
        );
        let api = api(faults);
        let client = ServiceBuilder::new()
            .layer(preset::anthropic())
            .service(api.clone());
        let response = client.oneshot(streaming(64)).await.unwrap();
        assert_eq!(
            response.extensions().get::<Attempts>().map(|a| a.get()),
            Some(2)
        );
        let (data, error) = drain(response.into_body()).await;
        assert!(error.is_none(), "{error:?}");
        let text = String::from_utf8(data).unwrap();
        assert!(!text.contains("event: error"));
        assert!(text.starts_with("event: message_start"));
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert_eq!(api.counters().received(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_dropped_mid_stream_is_a_typed_error_and_no_second_request_reaches_the_sim()
     {
        for how in [
            StreamBreak::Disconnect,
            StreamBreak::Stall,
            StreamBreak::ApiError,
        ] {
            let api = api(breaking(how, 6));
            let layer = preset::anthropic();
            let client = ServiceBuilder::new()
                .layer(layer.clone())
                .service(api.clone());
            let response = client.oneshot(streaming(200)).await.unwrap();
            let (data, error) = drain(response.into_body()).await;
            let e = interrupted(&error);
            let kind = match how {
                StreamBreak::Disconnect => OutcomeKind::Connection,
                StreamBreak::Stall => OutcomeKind::Timeout,
                _ => OutcomeKind::ServerError,
            };
            assert_eq!(e.outcome().kind(), kind, "{how:?}");
            assert_eq!(e.bytes(), data.len() as u64);
            assert_eq!(api.counters().received(), 1, "{how:?}: nothing re-sent");
            assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_dropped_half_way_gives_back_the_sims_reservation_and_our_permit() {
        let api = api(Faults::new());
        let layer = preset::anthropic();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(api.clone());
        let response = client.oneshot(streaming(400)).await.unwrap();
        let mut body = response.into_body();
        for _ in 0..5 {
            body.frame().await.unwrap().unwrap();
        }
        assert_eq!(api.counters().in_flight(), 1);
        assert_eq!(layer.get_concurrency().limiter().in_flight(), 1);
        drop(body);
        assert_eq!(api.counters().in_flight(), 0);
        assert_eq!(api.counters().dropped(), 1);
        assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
        assert_eq!(layer.get_breaker().state(), BreakerState::Closed);
        assert_eq!(layer.get_concurrency().limiter().decreases(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_workload_with_streams_completes_and_broken_streams_are_failed_calls_not_retries() {
        let workload = sim::Workload::new(80, 8).seed(5).stream_share(0.5);
        let streams = workload.specs().iter().filter(|s| s.stream()).count();
        assert!((25..=55).contains(&streams), "{streams} of 80 stream");
        // Every stream whole: every call succeeds.
        let whole = api(Faults::new());
        let report = workload
            .clone()
            .run(
                ServiceBuilder::new()
                    .layer(preset::anthropic())
                    .service(whole.clone()),
            )
            .await;
        assert_eq!(report.ok(), 80);
        assert_eq!(whole.counters().received(), 80);
        // A fifth of the streams break mid-way: those calls fail (nothing re-sent), the others
        // succeed.
        let broken_api = api(Faults::new().always(Fault::StreamBreak {
            after_events: 5,
            how: StreamBreak::Overloaded,
            probability: 0.2,
        }));
        let report = workload
            .run(
                ServiceBuilder::new()
                    .layer(preset::anthropic())
                    .service(broken_api.clone()),
            )
            .await;
        let broken = broken_api.counters().overloaded() as usize;
        assert!(broken > 0);
        assert_eq!(report.ok(), 80 - broken);
        assert_eq!(broken_api.counters().received(), 80, "nothing re-sent");
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI chat completions streams, through the OpenAI preset, against the simulated API

mod openai {
    use super::*;
    use tower_llm_limits_sim::{Fault, Faults, SimApi, StreamBreak};

    const GPT: &str = "gpt-4o-mini";

    /// A chat completions request the sim counts as `input` tokens and answers with `output`,
    /// streamed, with the final usage chunk when `include_usage`.
    fn chat(output: u64, include_usage: bool) -> Request<Full<Bytes>> {
        let body = sim::message_body(GPT, 2_000, 1_000, output);
        let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["stream"] = serde_json::Value::Bool(true);
        if include_usage {
            json["stream_options"] = serde_json::json!({"include_usage": true});
        }
        Request::post("https://api.openai.com/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&json).unwrap())))
            .unwrap()
    }

    /// Header-less, reserving `max_tokens` at admission: the limiter's level moves only by its
    /// reservation and the usage the stream reports, so it can be compared with the server's.
    /// The whole answer comes with the head (no per-token latency): no refill while a stream
    /// is read.
    fn api(faults: Faults) -> SimApi {
        SimApi::builder()
            .model(GPT, sim::Limits::per_minute(1_000, 400_000, 8_000))
            .latency(Duration::from_millis(600), Duration::ZERO)
            .output_accounting(sim::OutputAccounting::ReserveMaxTokens)
            .header_dialect(sim::HeaderDialect::Bedrock)
            .faults(faults)
            .seed(3)
            .build()
    }

    fn layer() -> PresetLayer {
        preset::openai().limits(Limits::per_minute(1_000, 400_000, 8_000))
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_usage_chunk_settles_the_reservation_exactly() {
        let api = api(Faults::new());
        let layer = layer();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(api.clone());
        let first = client.clone().oneshot(chat(40, true)).await.unwrap();
        drain(first.into_body()).await;
        let response = client.clone().oneshot(chat(300, true)).await.unwrap();
        assert_eq!(response.status(), 200);
        let (data, error) = drain(response.into_body()).await;
        assert!(error.is_none(), "{error:?}");
        let text = String::from_utf8(data).unwrap();
        // The role, a delta per 8 tokens, the finish reason, the usage, `[DONE]`.
        let chunks: Vec<&str> = text
            .split("\n\n")
            .filter(|c| !c.is_empty())
            .map(|c| c.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(chunks.len(), 1 + 300_usize.div_ceil(8) + 3);
        assert_eq!(chunks.last(), Some(&"[DONE]"));
        let json = |c: &str| serde_json::from_str::<serde_json::Value>(c).unwrap();
        let first = json(chunks[0]);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let usage = json(chunks[chunks.len() - 2]);
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(
            usage["usage"],
            serde_json::json!({"prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300})
        );
        let key = layer.snapshot().rate_limit(GPT).unwrap().clone();
        let server = api.levels(GPT).unwrap();
        assert!(server.output_tokens() < 8_000.0 - 100.0, "{server:?}");
        for (d, theirs) in [
            (Dimension::OutputTokens, server.output_tokens()),
            (Dimension::InputTokens, server.input_tokens()),
        ] {
            let ours = key.bucket(d).unwrap().level() as f64;
            assert!(
                (ours - theirs).abs() <= 1.0,
                "{d:?}: ours {ours}, the server's {theirs}"
            );
        }
        assert_eq!(api.counters().ok(), 2);

        // Without `include_usage` the stream says nothing of its usage: it still ends cleanly
        // with `[DONE]`, and what the head settled stands.
        let before = layer.snapshot().rate_limit(GPT).unwrap().clone();
        let response = client.oneshot(chat(300, false)).await.unwrap();
        let at_head = layer.snapshot().rate_limit(GPT).unwrap().clone();
        let (data, error) = drain(response.into_body()).await;
        assert!(error.is_none(), "{error:?}");
        assert!(!String::from_utf8(data).unwrap().contains("\"usage\""));
        let after = layer.snapshot().rate_limit(GPT).unwrap().clone();
        let output = |k: &tower_llm_limits::rate_limit::KeySnapshot| {
            k.bucket(Dimension::OutputTokens).unwrap().level()
        };
        assert_eq!(output(&after), output(&at_head));
        assert!(output(&after) < output(&before));
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_chat_stream_is_a_typed_error_and_nothing_is_resent() {
        for (how, kind) in [
            (StreamBreak::Truncate, OutcomeKind::Connection),
            (StreamBreak::Disconnect, OutcomeKind::Connection),
            (StreamBreak::Overloaded, OutcomeKind::Overloaded),
            (StreamBreak::Stall, OutcomeKind::Timeout),
        ] {
            let api = api(Faults::new().always(Fault::StreamBreak {
                after_events: 6,
                how,
                probability: 1.0,
            }));
            let layer = layer();
            let client = ServiceBuilder::new()
                .layer(layer.clone())
                .service(api.clone());
            let response = client.oneshot(chat(200, true)).await.unwrap();
            assert_eq!(response.status(), 200);
            let (data, error) = drain(response.into_body()).await;
            let text = String::from_utf8(data.clone()).unwrap();
            assert!(!text.contains("[DONE]"), "{how:?}");
            let e = interrupted(&error);
            assert_eq!(e.outcome().kind(), kind, "{how:?}");
            assert_eq!(e.bytes(), data.len() as u64);
            assert!(e.events() >= 6, "{how:?}: {e}");
            if how == StreamBreak::Overloaded {
                assert_eq!(
                    e.api_error().and_then(|e| e.kind()),
                    Some("overloaded_error")
                );
            }
            assert_eq!(api.counters().received(), 1, "{how:?}: nothing re-sent");
            assert_eq!(layer.get_concurrency().limiter().in_flight(), 0);
        }
    }
}
