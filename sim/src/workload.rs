//! The workload generator: seeded requests, concurrent callers, and the best possible time.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::api::SimApi;
use super::body::message_body;
use super::config::{HeaderDialect, OutputAccounting};
use crate::BoxError;

/// The model a [`Workload`] uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";

/// `n` Messages requests of seeded random sizes, sent by `concurrency` callers.
///
/// Request `i` goes to `models[i % models.len()]` (round-robin). Its input tokens, `max_tokens`
/// and output fraction are drawn in that order from `StdRng::seed_from_u64(seed)`; its produced
/// output is `round(fraction × max_tokens)`, passed to the sim through
/// [`message_body`](super::message_body)'s hint, so the sim counts exactly these sizes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use tower_llm_limits_sim::{Limits, SimApi, Workload};
///
/// let api = SimApi::builder()
///     .model("claude-sonnet-4-5", Limits::per_minute(50, 30_000, 8_000))
///     .build();
/// let workload = Workload::new(100, 8).seed(7).input_tokens(200..=2_000);
/// let best = workload.theoretical_best(&api);
/// let report = workload.run(api.clone()).await;
/// assert_eq!(report.records().len(), 100);
/// assert!(report.elapsed() > std::time::Duration::ZERO && best > std::time::Duration::ZERO);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Workload {
    n: usize,
    concurrency: usize,
    seed: u64,
    models: Vec<String>,
    input_tokens: RangeInclusive<u64>,
    max_tokens: RangeInclusive<u64>,
    output_fraction: RangeInclusive<f64>,
    base_uri: String,
}

/// One planned request of a [`Workload`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestSpec {
    index: usize,
    model: String,
    input_tokens: u64,
    max_tokens: u64,
    output_tokens: u64,
}

impl RequestSpec {
    /// Position in the workload.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The model.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// Input tokens the request is built to: what the sim charges under the default
    /// [`InputCounting::Text`](super::InputCounting::Text), which is also what the client's
    /// estimator sees. Another counting charges
    /// [`SimApi::input_tokens_of`] its body.
    pub fn input_tokens(&self) -> u64 {
        self.input_tokens
    }
    /// `max_tokens` of the request.
    pub fn max_tokens(&self) -> u64 {
        self.max_tokens
    }
    /// Output tokens the sim will produce.
    pub fn output_tokens(&self) -> u64 {
        self.output_tokens
    }

    /// The HTTP request: `POST {base}/v1/messages` with this spec's body.
    pub fn request(&self, base_uri: &str) -> Request<Full<Bytes>> {
        let body = message_body(
            &self.model,
            self.input_tokens,
            self.max_tokens,
            self.output_tokens,
        );
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        let uri = format!("{}/v1/messages", base_uri.trim_end_matches('/'));
        *req.uri_mut() = uri
            .parse()
            .unwrap_or_else(|_| "/v1/messages".parse().unwrap_or_default());
        let headers = req.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "anthropic-version",
            http::HeaderValue::from_static("2023-06-01"),
        );
        req
    }
}

/// A bucket of the simulated API's limits, as [`Bound::dimension`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dimension {
    /// Requests per minute.
    Requests,
    /// Input tokens per minute.
    InputTokens,
    /// Output tokens per minute.
    OutputTokens,
    /// Input + output tokens per minute (the combined bucket of [`HeaderDialect::Combined`]).
    Tokens,
}

impl Dimension {
    /// A short stable name: `requests`, `input_tokens`, `output_tokens`, `tokens` (the names
    /// `tower-llm-limits` gives its own dimensions).
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
            Dimension::Tokens => "tokens",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dimension's share of [`Workload::theoretical_best`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    model: String,
    dimension: Dimension,
    cost: u64,
    time: Duration,
}

impl Bound {
    /// The model.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The dimension ([`Dimension::Requests`], [`Dimension::InputTokens`] or
    /// [`Dimension::OutputTokens`]; [`Dimension::Tokens`] for the combined bucket of
    /// [`HeaderDialect::Combined`]).
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }
    /// Total cost of the workload in that dimension.
    pub fn cost(&self) -> u64 {
        self.cost
    }
    /// `(cost − starting fill) / net refill rate`, at least zero ([`Duration::MAX`] for a zero
    /// limit). The net rate is the limit less what [other clients](super::SimApiBuilder::other_clients)
    /// take.
    pub fn time(&self) -> Duration {
        self.time
    }
}

fn ordered<T: PartialOrd + Copy>(r: &RangeInclusive<T>) -> (T, T) {
    let (a, b) = (*r.start(), *r.end());
    if b < a { (b, a) } else { (a, b) }
}

impl Workload {
    /// `n` requests sent by `concurrency` callers (at least one), seed 0, model
    /// [`DEFAULT_MODEL`], input 200..=2,000 tokens, `max_tokens` 256..=1,024, output 20–100 %
    /// of `max_tokens`, base URI `http://sim.local`.
    pub fn new(n: usize, concurrency: usize) -> Self {
        Workload {
            n,
            concurrency: concurrency.max(1),
            seed: 0,
            models: vec![DEFAULT_MODEL.to_owned()],
            input_tokens: 200..=2_000,
            max_tokens: 256..=1_024,
            output_fraction: 0.2..=1.0,
            base_uri: "http://sim.local".to_owned(),
        }
    }

    /// The seed of the sizes.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The models, used round-robin (an empty list keeps the current ones).
    pub fn models<I>(mut self, models: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let models: Vec<String> = models.into_iter().map(Into::into).collect();
        if !models.is_empty() {
            self.models = models;
        }
        self
    }

    /// Input tokens per request, drawn uniformly (at least 1).
    pub fn input_tokens(mut self, range: RangeInclusive<u64>) -> Self {
        self.input_tokens = range;
        self
    }

    /// `max_tokens` per request, drawn uniformly (at least 1).
    pub fn max_tokens(mut self, range: RangeInclusive<u64>) -> Self {
        self.max_tokens = range;
        self
    }

    /// Produced output as a share of `max_tokens`, drawn uniformly (clamped to `0.0..=1.0`).
    pub fn output_fraction(mut self, range: RangeInclusive<f64>) -> Self {
        self.output_fraction = range;
        self
    }

    /// The base URI [`run`](Self::run) sends to (default `http://sim.local`).
    pub fn base_uri(mut self, base: impl Into<String>) -> Self {
        self.base_uri = base.into();
        self
    }

    /// Number of requests.
    pub fn len(&self) -> usize {
        self.n
    }

    /// `true` for a workload of no request.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The planned requests, in order. The same seed gives the same plan.
    pub fn specs(&self) -> Vec<RequestSpec> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (in_lo, in_hi) = ordered(&self.input_tokens);
        let (max_lo, max_hi) = ordered(&self.max_tokens);
        let (f_lo, f_hi) = ordered(&self.output_fraction);
        (0..self.n)
            .map(|index| {
                let input_tokens = rng.random_range(in_lo..=in_hi).max(1);
                let max_tokens = rng.random_range(max_lo..=max_hi).max(1);
                let fraction = if f_lo < f_hi {
                    rng.random_range(f_lo..=f_hi)
                } else {
                    f_lo
                };
                let fraction = if fraction.is_nan() {
                    1.0
                } else {
                    fraction.clamp(0.0, 1.0)
                };
                let output_tokens = ((fraction * max_tokens as f64).round() as u64).min(max_tokens);
                RequestSpec {
                    index,
                    model: self.models[index % self.models.len()].clone(),
                    input_tokens,
                    max_tokens,
                    output_tokens,
                }
            })
            .collect()
    }

    /// The planned requests as HTTP requests to `{base_uri}/v1/messages`.
    pub fn requests(&self, base_uri: &str) -> Vec<Request<Full<Bytes>>> {
        self.specs().iter().map(|s| s.request(base_uri)).collect()
    }

    /// Per model and dimension, the time the buckets need to refill what the workload costs
    /// beyond their starting fill: `(total cost − starting fill) / (net refill / 60 s)`, rounded
    /// up to the nanosecond. Models the API does not know are skipped. Uses the limits configured
    /// now ([`SimApi::configured_limits`]), not scripted limit changes.
    ///
    /// Costs are what the *server* charges: input as its [`InputCounting`](super::InputCounting)
    /// counts each request's body ([`SimApi::input_tokens_of`]); under
    /// [`HeaderDialect::Combined`] one [`Dimension::Tokens`] bound for input + output against
    /// the combined limit instead of the two separate ones; the refill less the share that
    /// [other clients](super::SimApiBuilder::other_clients) take (rounded down to a whole token
    /// per minute, as the sim does).
    ///
    /// Output cost: under [`OutputAccounting::AsProduced`] the produced output (the sim admits
    /// while the bucket holds one token and charges on completion, so many requests in flight
    /// can briefly overdraw it: over a short run this bound can be beaten by about
    /// `concurrency × output per request`). Under [`OutputAccounting::ReserveMaxTokens`] the
    /// produced output plus the smallest unused reservation (`max_tokens − output`) among the
    /// model's requests: the last request admitted must find its whole `max_tokens` in the
    /// bucket, and reservations of requests still in flight hold budget that a perfect client
    /// cannot use, so this bound is optimistic and a client can approach it only when outputs
    /// are close to `max_tokens`.
    pub fn bounds(&self, api: &SimApi) -> Vec<Bound> {
        let specs = self.specs();
        let fill = api.starting_fill();
        let reserve = api.output_accounting() == OutputAccounting::ReserveMaxTokens;
        let mut models: Vec<&str> = specs.iter().map(RequestSpec::model).collect();
        models.sort_unstable();
        models.dedup();
        let combined = api.header_dialect() == HeaderDialect::Combined;
        let share = api.other_clients();
        let mut out = Vec::new();
        for model in models {
            let Some(limits) = api.configured_limits(model) else {
                continue;
            };
            let mine: Vec<&RequestSpec> = specs.iter().filter(|s| s.model == model).collect();
            let input: u64 = mine
                .iter()
                .map(|s| {
                    let body =
                        message_body(&s.model, s.input_tokens, s.max_tokens, s.output_tokens);
                    api.input_tokens_of(&body).unwrap_or(s.input_tokens)
                })
                .sum();
            let mut output: u64 = mine.iter().map(|s| s.output_tokens).sum();
            if reserve {
                output += mine
                    .iter()
                    .map(|s| s.max_tokens - s.output_tokens)
                    .min()
                    .unwrap_or(0);
            }
            let requests = (Dimension::Requests, mine.len() as u64, limits.requests());
            let dimensions = if combined {
                let tokens = limits.input_tokens().saturating_add(limits.output_tokens());
                vec![
                    requests,
                    (Dimension::Tokens, input.saturating_add(output), tokens),
                ]
            } else {
                vec![
                    requests,
                    (Dimension::InputTokens, input, limits.input_tokens()),
                    (Dimension::OutputTokens, output, limits.output_tokens()),
                ]
            };
            for (dimension, cost, limit) in dimensions {
                out.push(Bound {
                    model: model.to_owned(),
                    dimension,
                    cost,
                    time: refill_time(cost, limit, share, fill),
                });
            }
        }
        out
    }

    /// T*, the best possible completion time: the largest of [`bounds`](Self::bounds) plus
    /// the [`shortest_latency`](Self::shortest_latency). Every goodput figure is measured
    /// against it.
    ///
    /// The latency belongs in it: a bucket charged at admission (requests, input tokens,
    /// reserved output) admits the last request at its bound at the earliest, and that request
    /// still takes its round trip to answer; a bucket charged as output is produced starts full
    /// and cannot begin to refill before the first answer, so its bound starts that late.
    pub fn theoretical_best(&self, api: &SimApi) -> Duration {
        let bound = self.bounds(api).iter().map(Bound::time).max();
        bound.map_or(Duration::ZERO, |b| {
            b.saturating_add(self.shortest_latency(api))
        })
    }

    /// The shortest time the API takes to answer any of the workload's requests:
    /// `base + per output token × the fewest output tokens produced`.
    pub fn shortest_latency(&self, api: &SimApi) -> Duration {
        let (base, per_token) = api.latency();
        let fewest = self
            .specs()
            .iter()
            .map(RequestSpec::output_tokens)
            .min()
            .unwrap_or(0);
        base.saturating_add(per_token.saturating_mul(u32::try_from(fewest).unwrap_or(u32::MAX)))
    }

    /// Sends the workload through `service`: `concurrency` callers (tokio tasks) each take the
    /// next request and call `service.clone().oneshot(request)` until none is left. Times are
    /// on the tokio clock, so on a paused clock the run is exact and repeatable (on a
    /// current-thread runtime).
    ///
    /// # Panics
    /// When a caller task panics (the panic is propagated).
    pub async fn run<S, B>(&self, service: S) -> Report
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: http_body::Body + Send,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let specs: Arc<[RequestSpec]> = self.specs().into();
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency.min(self.n.max(1)) {
            let (service, specs, next) = (service.clone(), specs.clone(), next.clone());
            let base = self.base_uri.clone();
            set.spawn(async move {
                let mut records = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = specs.get(index) else { break };
                    let request = spec.request(&base);
                    let started = Instant::now();
                    let outcome = call(service.clone(), request).await;
                    let finished = Instant::now();
                    let (status, error) = match outcome {
                        Ok(s) => (Some(s), None),
                        Err(e) => (None, Some(e)),
                    };
                    records.push(CallRecord {
                        spec: spec.clone(),
                        status,
                        error,
                        started: started - start,
                        finished: finished - start,
                    });
                }
                records
            });
        }
        let mut records = Vec::with_capacity(self.n);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => records.extend(r),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        records.sort_by_key(|r| r.spec.index);
        Report {
            elapsed: start.elapsed(),
            records,
        }
    }
}

/// One call, its body read to the end like a caller that uses the answer (a body that fails
/// after the head counts as an error).
async fn call<S, B>(service: S, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let response = match service.oneshot(request).await {
        Ok(response) => response,
        Err(e) => return Err(error_chain(&*e.into())),
    };
    let status = response.status();
    match http_body_util::BodyExt::collect(response.into_body()).await {
        Ok(_) => Ok(status),
        Err(e) => Err(error_chain(&*e.into())),
    }
}

/// `error: source: source…`
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn refill_time(cost: u64, limit: u64, share: f64, fill: f64) -> Duration {
    let start = (fill * limit as f64).floor().clamp(0.0, limit as f64) as u64;
    let beyond = cost.saturating_sub(start);
    if beyond == 0 {
        return Duration::ZERO;
    }
    if limit == 0 {
        return Duration::MAX;
    }
    // The sim's drain: floor(share × limit) per minute, always below the limit.
    let drain = ((share * limit as f64).floor() as u64).min(limit - 1);
    let rate = limit - drain;
    let nanos = (u128::from(beyond) * 60_000_000_000).div_ceil(u128::from(rate));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The outcome of one request of a [`Workload::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    spec: RequestSpec,
    status: Option<StatusCode>,
    error: Option<String>,
    started: Duration,
    finished: Duration,
}

impl CallRecord {
    /// Position in the workload.
    pub fn index(&self) -> usize {
        self.spec.index
    }
    /// What was sent.
    pub fn spec(&self) -> &RequestSpec {
        &self.spec
    }
    /// The final status, when the service answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }
    /// The error (with its sources), when the service failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
    /// When the call started, since the run started (tokio clock).
    pub fn started(&self) -> Duration {
        self.started
    }
    /// When it ended, since the run started.
    pub fn finished(&self) -> Duration {
        self.finished
    }
    /// `finished − started`.
    pub fn latency(&self) -> Duration {
        self.finished.saturating_sub(self.started)
    }
    /// `true` for a 2xx answer.
    pub fn is_ok(&self) -> bool {
        self.status.is_some_and(|s| s.is_success())
    }
}

/// The result of a [`Workload::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    elapsed: Duration,
    records: Vec<CallRecord>,
}

impl Report {
    /// From the start of the run to the end of its last call (tokio clock).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
    /// Calls answered with a 2xx.
    pub fn ok(&self) -> usize {
        self.records.iter().filter(|r| r.is_ok()).count()
    }
    /// Calls that ended otherwise (a non-2xx status or an error).
    pub fn failed(&self) -> usize {
        self.records.len() - self.ok()
    }
    /// Calls whose final answer had `status`.
    pub fn with_status(&self, status: StatusCode) -> usize {
        self.records
            .iter()
            .filter(|r| r.status == Some(status))
            .count()
    }
    /// Calls that ended with an error rather than a response.
    pub fn errors(&self) -> usize {
        self.records.iter().filter(|r| r.error.is_some()).count()
    }
    /// Every call, in workload order.
    pub fn records(&self) -> &[CallRecord] {
        &self.records
    }
    /// `best / elapsed` (1.0 = as fast as the limits allow), for `best` from
    /// [`Workload::theoretical_best`].
    pub fn efficiency(&self, best: Duration) -> f64 {
        if self.elapsed.is_zero() {
            return 1.0;
        }
        best.as_secs_f64() / self.elapsed.as_secs_f64()
    }
}
