//! A scripted fake upstream for the breaker and fallback tests: answers by the time elapsed
//! since it was built (tokio's clock), counts what it receives.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::Service;

/// What the upstream answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A response with this status.
    Status(u16),
    /// A response with this status and a `retry-after` in seconds.
    StatusRetryAfter(u16, u64),
    /// A connection reset.
    ConnectionError,
    /// Never answers.
    Hang,
}

type Script = Arc<dyn Fn(Duration, u64) -> Reply + Send + Sync>;

/// The fake upstream; clones share the counters.
#[derive(Clone)]
pub struct Upstream {
    start: Instant,
    latency: Duration,
    script: Script,
    received: Arc<AtomicU64>,
    by_status: Arc<Mutex<Vec<(Duration, Reply)>>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Upstream {
    /// `script(elapsed, n)` answers the `n`-th request (0-based) received `elapsed` after now.
    pub fn new(
        latency: Duration,
        script: impl Fn(Duration, u64) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Upstream {
            start: Instant::now(),
            latency,
            script: Arc::new(script),
            received: Arc::default(),
            by_status: Arc::default(),
            bodies: Arc::default(),
        }
    }

    /// Always `status`.
    pub fn always(status: u16) -> Self {
        Self::new(Duration::ZERO, move |_, _| Reply::Status(status))
    }

    /// 529 during `window` (measured from now), 200 otherwise.
    pub fn overloaded_during(latency: Duration, window: std::ops::Range<Duration>) -> Self {
        Self::new(latency, move |t, _| {
            if window.contains(&t) {
                Reply::Status(529)
            } else {
                Reply::Status(200)
            }
        })
    }

    /// Requests received.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Requests answered with `status`.
    pub fn answered(&self, status: u16) -> u64 {
        self.by_status
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| matches!(r, Reply::Status(s) | Reply::StatusRetryAfter(s, _) if *s == status))
            .count() as u64
    }

    /// Requests received at or after `from` (since the upstream was built).
    pub fn received_since(&self, from: Duration) -> u64 {
        self.by_status
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from)
            .count() as u64
    }

    /// The request bodies received, in order.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = tower_llm_limits::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let n = self.received.fetch_add(1, Ordering::SeqCst);
        let elapsed = self.start.elapsed();
        let reply = (self.script)(elapsed, n);
        self.by_status.lock().unwrap().push((elapsed, reply));
        let latency = self.latency;
        let bodies = self.bodies.clone();
        Box::pin(async move {
            let body = req.into_body().collect().await?.to_bytes();
            bodies.lock().unwrap().push(body);
            if reply == Reply::Hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(latency).await;
            let (status, retry_after) = match reply {
                Reply::Status(s) => (s, None),
                Reply::StatusRetryAfter(s, r) => (s, Some(r)),
                Reply::ConnectionError => {
                    return Err(
                        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                            as tower_llm_limits::BoxError,
                    );
                }
                Reply::Hang => unreachable!(),
            };
            let mut response = Response::builder().status(StatusCode::from_u16(status)?);
            if let Some(r) = retry_after {
                response = response.header("retry-after", r.to_string());
            }
            Ok(response.body(Full::new(Bytes::from_static(b"{}")))?)
        })
    }
}

/// A request with a JSON body naming `model`.
pub fn request(model: &str) -> Request<Full<Bytes>> {
    Request::post("http://api.example/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{model}","max_tokens":16,"messages":[]}}"#
        ))))
        .unwrap()
}

type Res<B> = Result<Response<B>, tower_llm_limits::BoxError>;

/// Starts `n` requests, one every `every`, each through `call`; returns (start since the first,
/// result) per request.
pub async fn open_loop<F, Fut, B>(every: Duration, n: u32, call: F) -> Vec<(Duration, Res<B>)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Res<B>> + Send + 'static,
    B: Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push((start.elapsed(), tokio::spawn(call())));
        tokio::time::sleep(every).await;
    }
    let mut results = Vec::new();
    for (at, task) in tasks {
        results.push((at, task.await.unwrap()));
    }
    results
}
