//! A scripted HTTP server for the retry tests: answers from a closure over the call index and
//! records every request it sees (time, parts, body bytes).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::Service;
use tower_llm_limits::BoxError;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub index: usize,
    pub at: Instant,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub extensions: http::Extensions,
    pub body: Bytes,
}

type Answer = dyn Fn(usize) -> Result<Response<Full<Bytes>>, BoxError> + Send + Sync;

/// A server that answers call `i` with `answer(i)`.
#[derive(Clone)]
pub struct Scripted {
    answer: Arc<Answer>,
    seen: Arc<Mutex<Vec<Seen>>>,
    calls: Arc<Mutex<usize>>,
}

impl Scripted {
    pub fn new(
        answer: impl Fn(usize) -> Result<Response<Full<Bytes>>, BoxError> + Send + Sync + 'static,
    ) -> Self {
        Scripted {
            answer: Arc::new(answer),
            seen: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// Every request seen so far, in call order.
    pub fn seen(&self) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort_by_key(|s| s.index);
        seen
    }

    /// How many calls were made.
    pub fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }

    /// The times between consecutive calls, in milliseconds.
    pub fn gaps_ms(&self) -> Vec<u128> {
        let seen = self.seen();
        seen.windows(2)
            .map(|w| (w[1].at - w[0].at).as_millis())
            .collect()
    }
}

impl<B> Service<Request<B>> for Scripted
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let index = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls - 1
        };
        let at = Instant::now();
        let answer = Arc::clone(&self.answer);
        let seen = Arc::clone(&self.seen);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(Into::into)?.to_bytes();
            seen.lock().unwrap().push(Seen {
                index,
                at,
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                extensions: parts.extensions,
                body,
            });
            answer(index)
        })
    }
}

/// A response with `status` and `headers`, empty body.
pub fn respond(status: u16, headers: &[(&str, &str)]) -> Result<Response<Full<Bytes>>, BoxError> {
    respond_with(status, headers, "")
}

/// A response with `status`, `headers` and `body`.
pub fn respond_with(
    status: u16,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let mut builder = Response::builder().status(StatusCode::from_u16(status)?);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(Full::new(Bytes::from_static(body.as_bytes())))?)
}

/// The fields of every `tracing` event emitted while the guard it returns is held (on this
/// thread), as `name=value` strings.
pub fn capture_events() -> (Events, CaptureGuard) {
    use tracing_subscriber::layer::SubscriberExt;
    // One global subscriber for the whole test binary that is interested in every callsite and
    // hands each event to the capture of the thread it happens on. A scoped (`set_default`)
    // subscriber is not enough: a callsite first hit by another test thread while no subscriber
    // wanted it can cache "never" between our subscriber's installation and our event.
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(ThreadCapture);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
    tracing::callsite::rebuild_interest_cache();
    let events = Events::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(events.clone()));
    (events, CaptureGuard(()))
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Events>> = const { std::cell::RefCell::new(None) };
}

/// Stops the capture of this thread's events when dropped.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// The global layer: forwards each event to the capture of its thread, if any.
struct ThreadCapture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ThreadCapture {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        CAPTURE.with(|c| {
            if let Some(events) = &*c.borrow() {
                tracing_subscriber::Layer::<S>::on_event(events, event, ctx);
            }
        });
    }
}

/// One event's fields, `(name, value)`.
pub type Fields = Vec<(String, String)>;

/// Captured events.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Fields>>>);

impl Events {
    /// The events whose message is `message`, each as its fields.
    pub fn with_message(&self, message: &str) -> Vec<Fields> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|fields| fields.iter().any(|(k, v)| k == "message" && v == message))
            .cloned()
            .collect()
    }
}

struct Visitor<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Vec::new();
        event.record(&mut Visitor(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
}
