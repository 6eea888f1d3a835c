//! Event streams (`text/event-stream`): watching a streaming answer as it passes, its outcome
//! reported to the layers above when it ends.
//!
//! A streaming answer's head says `200` before the model has produced anything; what happens
//! next — usage, an `overloaded_error` in the middle, a cut connection, a stall — only the body
//! tells. [`ErrorBody`](crate::error_body::ErrorBody) (in every preset) watches every successful
//! event stream as it goes to the caller (nothing is held back after the first event; see
//! [`sse::SseParser`](super::sse::SseParser)):
//!
//! - **Before the head is handed on**, it reads the stream up to its **first event** (within the
//!   layer's size and time limits). When that event is an error (`event: error`, an OpenAI
//!   error chunk), the [`ApiError`] goes into the response's extensions and the response's
//!   outcome is that of the error's HTTP equivalent (see [`ApiError::status`]): an
//!   `overloaded_error` first is a 529 to every layer — the retry layer retries it (the caller
//!   sees one clean stream), the breaker and the adaptive cap count it as it is. A body that
//!   fails or ends before its first event counts as a connection failure the same way.
//! - **Then**, the response carries a [`StreamOutcome`] in its extensions. The layers that count
//!   outcomes (the [breaker](crate::breaker), the [adaptive cap](crate::concurrency::adaptive))
//!   see a successful head, subscribe to it ([`StreamOutcome::on_end`]) and count the stream's
//!   outcome when it ends instead of the head's; the [`Signals`](super::Signals) layer gives it
//!   its classifier, so the one rule decides it. The stream's outcome:
//!
//!   | the stream | outcome | the body |
//!   |---|---|---|
//!   | ends after its terminal event (`message_stop`, `[DONE]`, `response.completed`), or a stream of unknown events ends | success | ends |
//!   | an error event | the classifier's reading of the error's HTTP equivalent (`overloaded_error`: [`Overloaded`](OutcomeKind::Overloaded)) | the event's bytes, then [`StreamInterrupted`] |
//!   | an Anthropic / OpenAI stream ends without its terminal event | [`Connection`](OutcomeKind::Connection) | [`StreamInterrupted`] |
//!   | nothing arrives for the idle bound ([`DEFAULT_STREAM_IDLE_TIMEOUT`]) while the caller waits | [`Timeout`](OutcomeKind::Timeout) | [`StreamInterrupted`] |
//!   | the body fails (connection reset) | the classifier's reading of the error | [`StreamInterrupted`] with it as source |
//!   | the caller drops the body | none: nothing is counted | — |
//!
//! - **Usage**, through the rate limiter's [`UsageReport`]: the input of `message_start` is
//!   reported as it passes ([`UsageReport::report_input`]), so the input reservation is settled
//!   to the server's count while the answer is still being generated (with the head: the first
//!   event is read before the head goes on); the whole usage — that input, the output of the
//!   last `message_delta` (cumulative), or an OpenAI stream's final usage chunk — once, when the
//!   stream ends, which settles the output reservation. A stream cut before any output count
//!   arrived reports no output; its output reservation stays as the head settled it.
//!
//! Nothing is re-sent once the response was handed on: what comes after the first event is the
//! caller's ([`StreamInterrupted`] says how many events and bytes it had received).

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::sse::{EventUsage, SseParser, StreamEvent};
use super::{ApiError, Classify, DefaultClassifier, Outcome, OutcomeKind, RetryHints};
use crate::cost::{Usage, UsageReport};

/// How long an event stream may stay silent while its caller waits for the next bytes before
/// it ends with [`StreamInterrupted`] (outcome [`Timeout`](OutcomeKind::Timeout)): 120 s.
///
/// Anthropic sends `ping` events while it works; a reasoning model behind OpenAI's API may send
/// nothing for minutes while it thinks, hence a bound well above the seconds a stalled
/// connection would otherwise be noticed in. Set it with
/// [`ErrorBodyLayer::stream_idle_timeout`](crate::error_body::ErrorBodyLayer::stream_idle_timeout).
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

type Listener = Box<dyn FnOnce(&Outcome) + Send>;

/// The outcome of a streaming answer, known when its stream ends; in the extensions of every
/// successful event-stream response [`ErrorBody`](crate::error_body::ErrorBody) watches.
///
/// A layer that counts outcomes takes the stream's outcome instead of the head's with
/// [`on_end`](Self::on_end). Clones share one stream. See the [module docs](self).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_llm_limits::error_body::ErrorBodyLayer;
/// use tower_llm_limits::signals::{OutcomeKind, StreamInterrupted, StreamOutcome};
///
/// const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
///     event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
/// let api = service_fn(|_req: http::Request<()>| async {
///     let response = http::Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(STREAM.as_bytes())))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let response = ErrorBodyLayer::new().layer(api).oneshot(http::Request::new(())).await.unwrap();
/// let stream = response.extensions().get::<StreamOutcome>().unwrap().clone();
/// let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
/// let s = seen.clone();
/// stream.on_end(move |outcome| *s.lock().unwrap() = Some(outcome.kind()));
///
/// let error = response.into_body().collect().await.unwrap_err();
/// let interrupted = error.downcast_ref::<StreamInterrupted>().unwrap();
/// assert_eq!(interrupted.outcome().kind(), OutcomeKind::Overloaded);
/// assert_eq!(interrupted.events(), 2);
/// assert_eq!(*seen.lock().unwrap(), Some(OutcomeKind::Overloaded));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct StreamOutcome {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    ended: Option<Outcome>,
    listeners: Vec<Listener>,
    classifier: Option<Arc<dyn Classify + Send + Sync>>,
}

impl fmt::Debug for StreamOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.lock();
        f.debug_struct("StreamOutcome")
            .field("ended", &shared.ended)
            .field("listeners", &shared.listeners.len())
            .finish()
    }
}

/// How a watched stream ended, before it is classified.
pub(crate) enum End<'a> {
    Complete,
    ErrorEvent(&'a ApiError),
    Cut,
    Idle,
    Failed(&'a (dyn StdError + 'static)),
}

impl StreamOutcome {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The handle in `response`'s extensions, when it is a watched event stream.
    pub fn of<B>(response: &http::Response<B>) -> Option<&StreamOutcome> {
        response.extensions().get::<StreamOutcome>()
    }

    /// Calls `f` with the stream's outcome when it ends (at once when it has ended). When the
    /// stream is dropped before its end, `f` is dropped without being called: a cancelled
    /// stream is not counted.
    pub fn on_end(&self, f: impl FnOnce(&Outcome) + Send + 'static) {
        let mut shared = self.lock();
        match shared.ended {
            Some(outcome) => {
                drop(shared);
                f(&outcome);
            }
            None => shared.listeners.push(Box::new(f)),
        }
    }

    /// The stream's outcome, once it has ended.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().ended
    }

    /// Decides the stream's outcome with `classifier` (the [`Signals`](super::Signals) layer
    /// gives its own; without one the [`DefaultClassifier`] decides).
    pub(crate) fn classify_with(&self, classifier: Arc<dyn Classify + Send + Sync>) {
        self.lock().classifier = Some(classifier);
    }

    /// The stream ended: classify, remember and tell every listener.
    pub(crate) fn end(&self, end: End<'_>) -> Outcome {
        let mut shared = self.lock();
        if let Some(outcome) = shared.ended {
            return outcome;
        }
        let outcome = match &shared.classifier {
            Some(c) => classify(&**c, end),
            None => classify(&DefaultClassifier::new(), end),
        };
        shared.ended = Some(outcome);
        let listeners = std::mem::take(&mut shared.listeners);
        drop(shared);
        for listener in listeners {
            listener(&outcome);
        }
        outcome
    }
}

/// The rule for a stream's end (see the [module docs](self)).
fn classify<C: Classify + ?Sized>(classifier: &C, end: End<'_>) -> Outcome {
    match end {
        End::Complete => Outcome::success().with_status(StatusCode::OK),
        End::ErrorEvent(error) => classifier.classify_response(
            error.status(),
            &HeaderMap::new(),
            &RetryHints::default(),
            Some(error),
        ),
        End::Cut => Outcome::new(OutcomeKind::Connection),
        End::Idle => Outcome::new(OutcomeKind::Timeout),
        End::Failed(error) => classifier.classify_error(error),
    }
}

/// In the extensions of a successful event-stream response whose stream failed **before its
/// first event**: an error event first, a body that failed or ended before any event. Nothing of
/// the answer exists, so the response's outcome is this failure's, not its head's (see
/// [`ResponseSignals::outcome_or`](super::ResponseSignals::outcome_or)): it is retried like any
/// other failed attempt and counted by the breaker and the adaptive cap as such.
#[derive(Clone, Debug)]
pub struct StreamStartFailed {
    error: Option<ApiError>,
    kind: OutcomeKind,
}

impl StreamStartFailed {
    pub(crate) fn error_event(error: ApiError) -> Self {
        StreamStartFailed {
            error: Some(error),
            kind: OutcomeKind::ServerError,
        }
    }

    pub(crate) fn ended(kind: OutcomeKind) -> Self {
        StreamStartFailed { error: None, kind }
    }

    /// The error event the stream opened with, if that was the failure.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.error.as_ref()
    }

    /// The outcome, by `classifier` for an error event (read as its HTTP equivalent,
    /// [`ApiError::status`]), else [`Connection`](OutcomeKind::Connection) or
    /// [`Timeout`](OutcomeKind::Timeout) as the body's failure was read.
    pub fn outcome<C: Classify + ?Sized>(&self, classifier: &C) -> Outcome {
        match &self.error {
            Some(error) => classify(classifier, End::ErrorEvent(error)),
            None => Outcome::new(self.kind),
        }
    }
}

/// A streaming answer ended badly after the caller had received part of it: an error event, a
/// cut, a stall, a failed connection. The body's last item; nothing was re-sent.
#[derive(Debug)]
pub struct StreamInterrupted {
    outcome: Outcome,
    api_error: Option<ApiError>,
    events: u64,
    bytes: u64,
    source: Option<crate::BoxError>,
}

impl StreamInterrupted {
    /// How the stream's end was classified ([`Overloaded`](OutcomeKind::Overloaded) for an
    /// `overloaded_error`, [`Connection`](OutcomeKind::Connection) for a cut,
    /// [`Timeout`](OutcomeKind::Timeout) for a stall).
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The error event, when the stream ended with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.api_error.as_ref()
    }

    /// Complete events the caller received (the error event included).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Bytes the caller received.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl fmt::Display for StreamInterrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event stream interrupted ({}) after {} events ({} bytes)",
            self.outcome.kind(),
            self.events,
            self.bytes
        )?;
        if let Some(kind) = self.api_error.as_ref().and_then(ApiError::kind) {
            write!(f, ": {kind}")?;
        }
        Ok(())
    }
}

impl StdError for StreamInterrupted {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Which end a stream must reach to be complete, from its first recognised events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// No answer stream recognised: any end is complete.
    Nothing,
    /// An answer stream: it must send its terminal event.
    Terminal,
}

/// The watcher of one event stream: parser, usage, what the caller received.
pub(crate) struct StreamWatch {
    parser: SseParser,
    usage: EventUsage,
    expect: Expect,
    stopped: bool,
    error: Option<ApiError>,
    events: u64,
    /// Bytes handed to the caller.
    delivered: u64,
    report: Option<UsageReport>,
    outcome: StreamOutcome,
    /// Events before the error event, when one came.
    error_after: u64,
    idle: Duration,
    /// When the server last sent something.
    last: tokio::time::Instant,
}

impl fmt::Debug for StreamWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWatch")
            .field("events", &self.events)
            .field("delivered", &self.delivered)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl StreamWatch {
    pub(crate) fn new(report: Option<UsageReport>, idle: Duration) -> Self {
        StreamWatch {
            parser: SseParser::new().skipping_content(),
            usage: EventUsage::default(),
            expect: Expect::Nothing,
            stopped: false,
            error: None,
            events: 0,
            delivered: 0,
            report,
            outcome: StreamOutcome::default(),
            error_after: 0,
            idle,
            last: tokio::time::Instant::now(),
        }
    }

    /// The server sent a frame.
    pub(crate) fn heard(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// When the stream counts as stalled if nothing arrives.
    pub(crate) fn idle_deadline(&self) -> tokio::time::Instant {
        self.last + self.idle
    }

    /// Whether the stream's first event was an error (nothing of an answer was produced).
    pub(crate) fn failed_at_start(&self) -> bool {
        self.error.is_some() && self.error_after == 0
    }

    /// The handle the layers above subscribe to.
    pub(crate) fn handle(&self) -> StreamOutcome {
        self.outcome.clone()
    }

    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    /// The error event that ended the stream, if one did.
    pub(crate) fn error(&self) -> Option<&ApiError> {
        self.error.as_ref()
    }

    /// Bytes read from the server (not yet necessarily handed on).
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let StreamWatch {
            parser,
            usage,
            expect,
            stopped,
            error,
            events,
            error_after,
            report,
            ..
        } = self;
        parser.feed(data, |event| {
            if error.is_some() {
                return;
            }
            *events += 1;
            let merge = |usage: &mut EventUsage, new: EventUsage| {
                usage.input_tokens = new.input_tokens.or(usage.input_tokens);
                usage.output_tokens = new.output_tokens.or(usage.output_tokens);
            };
            match StreamEvent::read(&event) {
                StreamEvent::Start(u) => {
                    *expect = Expect::Terminal;
                    // Its output count is the answer's start (1), not the answer's.
                    usage.input_tokens = u.input_tokens.or(usage.input_tokens);
                    // The input is settled now; the output when the stream ends.
                    if let (Some(report), Some(input)) = (report.as_ref(), u.input_tokens) {
                        report.report_input(input);
                    }
                }
                StreamEvent::ChatChunk(u) => {
                    *expect = Expect::Terminal;
                    merge(usage, u);
                }
                StreamEvent::Progress(u) => merge(usage, u),
                StreamEvent::Stop(u) => {
                    *stopped = true;
                    merge(usage, u);
                }
                StreamEvent::Error(e) => {
                    *error_after = *events - 1;
                    *error = Some(e);
                }
                _ => {}
            }
        });
    }

    /// Bytes handed to the caller.
    pub(crate) fn delivered(&mut self, len: usize) {
        self.delivered = self.delivered.saturating_add(len as u64);
    }

    /// Whether the stream ended with an error event (after which nothing more is read).
    pub(crate) fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn settle_usage(&mut self) {
        if let (Some(report), Some(input), Some(output)) = (
            self.report.take(),
            self.usage.input_tokens,
            self.usage.output_tokens,
        ) {
            report.report(Usage::new(input, output));
        }
    }

    fn interrupted(
        &mut self,
        outcome: Outcome,
        source: Option<crate::BoxError>,
    ) -> crate::BoxError {
        Box::new(StreamInterrupted {
            outcome,
            api_error: self.error.clone(),
            events: self.events,
            bytes: self.delivered,
            source,
        })
    }

    /// The body ended. `Err` when the stream is incomplete.
    pub(crate) fn finish(&mut self) -> Result<(), crate::BoxError> {
        self.settle_usage();
        if let Some(error) = self.error.clone() {
            let outcome = self.outcome.end(End::ErrorEvent(&error));
            return Err(self.interrupted(outcome, None));
        }
        if self.expect == Expect::Terminal && !self.stopped {
            let outcome = self.outcome.end(End::Cut);
            return Err(self.interrupted(outcome, None));
        }
        self.outcome.end(End::Complete);
        Ok(())
    }

    /// The stream sent an error event: report it at once.
    pub(crate) fn error_event(&mut self) -> crate::BoxError {
        self.settle_usage();
        let error = self.error.clone().unwrap_or_default();
        let outcome = self.outcome.end(End::ErrorEvent(&error));
        self.interrupted(outcome, None)
    }

    /// Nothing arrived for the idle bound.
    pub(crate) fn idle(&mut self) -> crate::BoxError {
        self.settle_usage();
        let outcome = self.outcome.end(End::Idle);
        self.interrupted(outcome, None)
    }

    /// The body failed.
    pub(crate) fn failed_with(&mut self, error: crate::BoxError) -> crate::BoxError {
        self.settle_usage();
        let outcome = self.outcome.end(End::Failed(&*error));
        self.interrupted(outcome, Some(error))
    }
}

/// `content-type: text/event-stream` (parameters allowed, case-insensitive).
pub(crate) fn is_event_stream(headers: &http::HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes().trim_ascii_start();
        v.len() >= SSE.len()
            && v[..SSE.len()].eq_ignore_ascii_case(SSE)
            && matches!(v.get(SSE.len()), None | Some(b';' | b' ' | b'\t'))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn watch() -> (StreamWatch, Arc<Mutex<Vec<Usage>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let report = UsageReport::new(move |u| s.lock().unwrap().push(u));
        (
            StreamWatch::new(Some(report), DEFAULT_STREAM_IDLE_TIMEOUT),
            seen,
        )
    }

    const OPENAI: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn an_openai_stream_reports_its_final_usage_and_must_end_with_done() {
        let (mut w, seen) = watch();
        let handle = w.handle();
        w.feed(OPENAI.as_bytes());
        assert!(w.finish().is_ok());
        assert_eq!(*seen.lock().unwrap(), [Usage::new(9, 12)]);
        assert_eq!(
            handle.outcome().map(|o| o.kind()),
            Some(OutcomeKind::Success)
        );

        let (mut w, seen) = watch();
        let cut = OPENAI.find("data: [DONE]").unwrap();
        w.feed(&OPENAI.as_bytes()[..cut]);
        let error = w.finish().unwrap_err();
        let e = error.downcast_ref::<StreamInterrupted>().unwrap();
        assert_eq!(e.outcome().kind(), OutcomeKind::Connection);
        assert_eq!(e.events(), 2);
        // The usage chunk came: the server's count is known even though `[DONE]` did not.
        assert_eq!(*seen.lock().unwrap(), [Usage::new(9, 12)]);
    }

    #[test]
    fn unknown_streams_end_cleanly_and_a_cut_before_the_output_count_reports_no_usage() {
        let (mut w, seen) = watch();
        w.feed(b"event: tick\ndata: 1\n\ndata: hello\n\n");
        assert!(w.finish().is_ok());
        assert!(seen.lock().unwrap().is_empty());

        let (mut w, seen) = watch();
        w.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n");
        let error = w.finish().unwrap_err();
        assert_eq!(
            error
                .downcast_ref::<StreamInterrupted>()
                .unwrap()
                .outcome()
                .kind(),
            OutcomeKind::Connection
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "message_start's output count is not the answer's"
        );
    }

    #[test]
    fn listeners_hear_the_end_once_and_late_ones_at_once() {
        let (mut w, _) = watch();
        let handle = w.handle();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        handle.on_end(move |o| h.lock().unwrap().push(o.kind()));
        w.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"x\"}}\n\n");
        assert!(w.failed());
        let _ = w.error_event();
        let _ = w.finish();
        let h = heard.clone();
        handle.on_end(move |o| h.lock().unwrap().push(o.kind()));
        assert_eq!(
            *heard.lock().unwrap(),
            [OutcomeKind::ServerError, OutcomeKind::ServerError]
        );
    }
}
