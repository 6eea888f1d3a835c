//! The simulated API: shared state, admission, and the `tower::Service`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio::time::Instant;
use tower_service::Service;

use super::body::{self, Parsed};
use super::bucket::Bucket;
use super::config::{
    Config, HeaderDialect, HeaderTiming, InputCounting, Limits, OutputAccounting, SimApiBuilder,
};
use super::counters::{Cells, Counters};
use super::faults::{Decisions, Refusal};
use super::future::ResponseFuture;
use super::response::{self, Answer, Reading, Snapshot};
use super::stream::{self, SimBody};
use crate::BoxError;

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `z`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The simulated Claude-like Messages API (see the [module docs](super)).
///
/// Clones share the same state (buckets, counters, events, RNG seed).
#[derive(Clone)]
pub struct SimApi {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) start: Instant,
    state: Mutex<State>,
    pub(crate) counters: Cells,
    seq: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// Limits set by the builder or `set_limits` (before `LimitChange` faults).
    base: HashMap<String, Limits>,
    models: HashMap<String, ModelState>,
    events: VecDeque<SimEvent>,
}

#[derive(Debug)]
struct ModelState {
    base: Limits,
    /// The limits in force.
    limits: Limits,
    /// Under [`HeaderDialect::Combined`] the `INPUT` bucket is the combined token bucket
    /// (input + output) and the `OUTPUT` bucket is not used.
    combined: bool,
    buckets: [Bucket; 3],
    updated: Instant,
}

const REQUESTS: usize = 0;
const INPUT: usize = 1;
const OUTPUT: usize = 2;
const DIMENSION_NAMES: [&str; 3] = ["requests", "input tokens", "output tokens"];

impl ModelState {
    fn advance_to(&mut self, at: Instant) {
        for b in &mut self.buckets {
            b.advance(at);
        }
        self.updated = self.updated.max(at);
    }

    fn apply(&mut self, limits: Limits) {
        self.limits = limits;
        let [requests, input, output] = bucket_limits(limits, self.combined);
        self.buckets[REQUESTS].set_limit(requests);
        self.buckets[INPUT].set_limit(input);
        self.buckets[OUTPUT].set_limit(output);
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    /// The bucket output tokens are charged to.
    fn output(&self) -> usize {
        if self.combined { INPUT } else { OUTPUT }
    }

    fn snapshot(&self) -> [Reading; 3] {
        self.buckets.each_ref().map(|b| Reading {
            limit: b.limit(),
            remaining: b.remaining(),
            until_full: b.until_full(),
        })
    }
}

/// The capacities of the requests, input and output buckets.
fn bucket_limits(limits: Limits, combined: bool) -> [u64; 3] {
    if combined {
        let tokens = limits.input_tokens().saturating_add(limits.output_tokens());
        [limits.requests(), tokens, limits.output_tokens()]
    } else {
        [
            limits.requests(),
            limits.input_tokens(),
            limits.output_tokens(),
        ]
    }
}

impl std::fmt::Debug for Shared {
    // Not the state: it holds up to the events capacity of events.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimApi")
            .field("seed", &self.config.seed)
            .field("accounting", &self.config.accounting)
            .field("elapsed", &self.elapsed(Instant::now()))
            .field("counters", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    /// The model's state brought up to `now`, created on first use; `None` for unknown models.
    fn model<'a>(
        &self,
        state: &'a mut State,
        name: &str,
        now: Instant,
    ) -> Option<&'a mut ModelState> {
        let faults = &self.config.faults;
        if !state.models.contains_key(name) {
            let base = state
                .base
                .get(name)
                .copied()
                .or(self.config.default_limits)?;
            let at0 = faults.limits_at(Duration::ZERO).unwrap_or(base);
            let fill = self.config.starting_fill;
            let share = self.config.other_clients;
            let combined = self.config.dialect == HeaderDialect::Combined;
            let ms = ModelState {
                base,
                limits: at0,
                combined,
                buckets: bucket_limits(at0, combined)
                    .map(|limit| Bucket::new(limit, fill, share, self.start)),
                updated: self.start,
            };
            state.models.insert(name.to_owned(), ms);
        }
        let ms = state.models.get_mut(name)?;
        let (from, to) = (self.elapsed(ms.updated), self.elapsed(now));
        for boundary in faults.limit_boundaries(from, to) {
            ms.advance_to(self.start + boundary);
            ms.apply(faults.limits_at(boundary).unwrap_or(ms.base));
        }
        ms.advance_to(now);
        Some(ms)
    }

    fn record(&self, state: &mut State, event: SimEvent) {
        let cap = self.config.events_capacity;
        if cap == 0 {
            return;
        }
        if state.events.len() >= cap {
            state.events.pop_front();
        }
        state.events.push_back(event);
    }

    fn event(
        &self,
        seq: u64,
        model: Option<&str>,
        arrived: Instant,
        outcome: EventKind,
    ) -> SimEvent {
        SimEvent {
            seq,
            model: model.map(Arc::from),
            arrived: self.elapsed(arrived),
            answered: self.elapsed(Instant::now()),
            kind: outcome,
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    /// Counts and records an answer that was not admitted, and renders it.
    fn answer(
        &self,
        seq: u64,
        model: Option<&str>,
        arrived: Instant,
        answer: Answer,
        decisions: &Decisions,
    ) -> Response<SimBody> {
        let cell = match answer.status.as_u16() {
            200..=299 => &self.counters.ok,
            429 if answer.spend_limit => &self.counters.spend_limited,
            429 => &self.counters.rate_limited,
            529 => &self.counters.overloaded,
            500..=599 => &self.counters.server_errors,
            _ => &self.counters.client_errors,
        };
        Cells::inc(cell);
        // Current levels, nothing charged, when the model is known.
        let now = Instant::now();
        let mut state = self.lock();
        let snapshot = answer.snapshot.or_else(|| {
            let ms = self.model(&mut state, model?, now)?;
            Some(Snapshot {
                at: self.elapsed(now),
                readings: ms.snapshot(),
            })
        });
        let event = self.event(seq, model, arrived, EventKind::Answered(answer.status));
        self.record(&mut state, event);
        drop(state);
        response::render(self, seq, Answer { snapshot, ..answer }, decisions).map(SimBody::full)
    }
}

/// What happened to one request, recorded by the sim when it answered (see
/// [`SimApi::events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimEvent {
    seq: u64,
    model: Option<Arc<str>>,
    arrived: Duration,
    answered: Duration,
    kind: EventKind,
    input_tokens: u64,
    output_tokens: u64,
}

/// How a request ended, in a [`SimEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// Answered with this status.
    Answered(StatusCode),
    /// Failed with a scripted connection error.
    ConnectionError,
    /// Admitted, then dropped by the caller before its answer (a hung request, a timeout).
    Dropped,
}

impl SimEvent {
    /// The request's arrival number (0 for the first call the API received).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The model asked for, when the body could be read.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Arrival (for admitted requests: admission), since the API was built (tokio clock).
    pub fn arrived(&self) -> Duration {
        self.arrived
    }

    /// When the answer was sent (or the request failed or was dropped), since the API was
    /// built.
    pub fn answered(&self) -> Duration {
        self.answered
    }

    /// How the request ended.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The status answered, if any.
    pub fn status(&self) -> Option<StatusCode> {
        match self.kind {
            EventKind::Answered(s) => Some(s),
            _ => None,
        }
    }

    /// Input tokens charged (0 unless admitted).
    pub fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// Output tokens produced (0 unless answered after admission).
    pub fn output_tokens(&self) -> u64 {
        self.output_tokens
    }
}

/// The exact state of one model's buckets (see [`SimApi::levels`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Levels {
    limits: Limits,
    levels: [f64; 3],
    until_full: [Option<Duration>; 3],
}

impl Levels {
    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Requests available (fractional; never above the limit).
    pub fn requests(&self) -> f64 {
        self.levels[REQUESTS]
    }

    /// Input tokens available (fractional); under [`HeaderDialect::Combined`], the combined
    /// token bucket (which can go negative like the output bucket).
    pub fn input_tokens(&self) -> f64 {
        self.levels[INPUT]
    }

    /// Output tokens available (fractional; negative after output charged as produced
    /// overdraws it). Not used under [`HeaderDialect::Combined`].
    pub fn output_tokens(&self) -> f64 {
        self.levels[OUTPUT]
    }

    /// How long until the requests, input and output buckets are full (`None`: never).
    pub fn until_full(&self) -> [Option<Duration>; 3] {
        self.until_full
    }
}

impl SimApi {
    /// A builder with the defaults listed on [`SimApiBuilder`].
    pub fn builder() -> SimApiBuilder {
        SimApiBuilder::new()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let base = config.models.clone();
        SimApi {
            shared: Arc::new(Shared {
                config,
                start: Instant::now(),
                state: Mutex::new(State {
                    base,
                    models: HashMap::new(),
                    events: VecDeque::new(),
                }),
                counters: Cells::default(),
                seq: AtomicU64::new(0),
            }),
        }
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    /// Changes a model's limits from now on (declaring it if it was unknown). Bucket levels are
    /// kept, capped at the new capacity. A [`Fault::LimitChange`](super::Fault::LimitChange)
    /// window in force still overrides them until it closes.
    pub fn set_limits(&self, model: &str, limits: Limits) {
        let now = Instant::now();
        let shared = &self.shared;
        let mut state = shared.lock();
        state.base.insert(model.to_owned(), limits);
        let faults = &shared.config.faults;
        let at = shared.elapsed(now);
        if let Some(ms) = shared.model(&mut state, model, now) {
            ms.base = limits;
            ms.apply(faults.limits_at(at).unwrap_or(limits));
        }
    }

    /// The limits in force now for `model` (`None` if unknown).
    pub fn limits(&self, model: &str) -> Option<Limits> {
        self.levels(model).map(|l| l.limits)
    }

    /// The limits configured for `model` (by the builder or [`set_limits`](Self::set_limits)),
    /// ignoring scripted limit changes.
    pub fn configured_limits(&self, model: &str) -> Option<Limits> {
        let state = self.shared.lock();
        state
            .base
            .get(model)
            .copied()
            .or(self.shared.config.default_limits)
    }

    /// The exact state of `model`'s buckets now (`None` if unknown).
    pub fn levels(&self, model: &str) -> Option<Levels> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let ms = self.shared.model(&mut state, model, now)?;
        Some(Levels {
            limits: ms.limits(),
            levels: ms.buckets.each_ref().map(Bucket::level),
            until_full: ms.buckets.each_ref().map(Bucket::until_full),
        })
    }

    /// The most recent events (at most the configured capacity), oldest first.
    pub fn events(&self) -> Vec<SimEvent> {
        self.shared.lock().events.iter().cloned().collect()
    }

    /// Tokio time elapsed since the API was built.
    pub fn elapsed(&self) -> Duration {
        self.shared.elapsed(Instant::now())
    }

    /// The sim's wall clock now: its epoch plus the elapsed tokio time (without skew).
    pub fn now_wall(&self) -> SystemTime {
        UNIX_EPOCH + self.shared.config.epoch + self.elapsed()
    }

    /// The output accounting mode.
    pub fn output_accounting(&self) -> OutputAccounting {
        self.shared.config.accounting
    }

    /// The latency of an admitted request: `(base, per output token)` (see
    /// [`SimApiBuilder::latency`]).
    pub fn latency(&self) -> (Duration, Duration) {
        (
            self.shared.config.base_latency,
            self.shared.config.per_token_latency,
        )
    }

    /// The starting fill of every bucket.
    pub fn starting_fill(&self) -> f64 {
        self.shared.config.starting_fill
    }

    /// When the headers of a successful answer are computed.
    pub fn header_timing(&self) -> HeaderTiming {
        self.shared.config.header_timing
    }

    /// Which buckets are enforced and which headers report them.
    pub fn header_dialect(&self) -> HeaderDialect {
        self.shared.config.dialect
    }

    /// How input tokens are counted.
    pub fn input_counting(&self) -> InputCounting {
        self.shared.config.input_counting
    }

    /// The share of every bucket that other clients of the organisation use.
    pub fn other_clients(&self) -> f64 {
        self.shared.config.other_clients
    }

    /// The input tokens this server charges for a Messages request `body` (and reports in
    /// `usage.input_tokens`); `None` when the body is not a JSON object with a `messages`
    /// array.
    pub fn input_tokens_of(&self, body: &[u8]) -> Option<u64> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let config = &self.shared.config;
        body::charged(config.input_counting, config.seed, body, &value)
    }
}

impl<B> Service<Request<B>> for SimApi
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<SimBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture::new(Box::pin(handle(self.shared.clone(), req)))
    }
}

/// An admitted request in flight: returns its reservation if dropped before its answer.
struct InFlight {
    shared: Arc<Shared>,
    seq: u64,
    model: String,
    arrived: Instant,
    input_tokens: u64,
    reserved: u64,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = &self.shared;
        Cells::dec(&shared.counters.in_flight);
        Cells::inc(&shared.counters.dropped);
        let now = Instant::now();
        let mut state = shared.lock();
        if let Some(ms) = shared.model(&mut state, &self.model, now) {
            let out = ms.output();
            ms.buckets[out].refund(self.reserved);
        }
        let mut event = shared.event(
            self.seq,
            Some(&self.model),
            self.arrived,
            EventKind::Dropped,
        );
        event.input_tokens = self.input_tokens;
        shared.record(&mut state, event);
    }
}

enum Admission {
    Admitted(Snapshot),
    Refused {
        snapshot: Snapshot,
        dimension: usize,
        /// `None`: can never be admitted under the current limits.
        wait: Option<Duration>,
    },
}

fn admit(shared: &Shared, parsed: &Parsed, now: Instant) -> Option<Admission> {
    let mut state = shared.lock();
    let ms = shared.model(&mut state, &parsed.model, now)?;
    let reserve = shared.config.accounting == OutputAccounting::ReserveMaxTokens;
    let output_need = if reserve { parsed.max_tokens } else { 1 };
    let mut needs = [1, parsed.input_tokens, 0];
    let out = ms.output();
    needs[out] = needs[out].saturating_add(output_need);
    let waits: Vec<Option<Duration>> = ms
        .buckets
        .iter()
        .zip(needs)
        .map(|(b, n)| b.wait_for(n))
        .collect();
    let at = shared.elapsed(now);
    if waits.iter().all(|w| *w == Some(Duration::ZERO)) {
        ms.buckets[REQUESTS].charge(1);
        ms.buckets[INPUT].charge(parsed.input_tokens);
        if reserve {
            ms.buckets[out].charge(parsed.max_tokens);
        }
        return Some(Admission::Admitted(Snapshot {
            at,
            readings: ms.snapshot(),
        }));
    }
    // The binding dimension: one that can never fit, else the longest wait.
    let dimension = waits.iter().position(Option::is_none).unwrap_or_else(|| {
        (0..3)
            .max_by_key(|&i| (waits[i], std::cmp::Reverse(i)))
            .unwrap_or(REQUESTS)
    });
    Some(Admission::Refused {
        snapshot: Snapshot {
            at,
            readings: ms.snapshot(),
        },
        dimension,
        wait: waits[dimension],
    })
}

fn rng_for(seed: u64, seq: u64) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(seq)))
}

async fn handle<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Response<SimBody>, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    Cells::inc(&shared.counters.received);
    let (parts, body) = req.into_parts();
    let collected = Limited::new(body, shared.config.max_body_bytes)
        .collect()
        .await;
    let arrived = Instant::now();
    let none = Decisions::default();
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            let msg = format!(
                "request body exceeds the {} byte limit",
                shared.config.max_body_bytes
            );
            let answer = Answer::error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", msg);
            return Ok(shared.answer(seq, None, arrived, answer, &none));
        }
        Err(e) => return Err(e),
    };
    if parts.method == Method::POST && parts.uri.path() == "/v1/messages/count_tokens" {
        let config = &shared.config;
        let counted = serde_json::from_slice(&bytes)
            .ok()
            .and_then(|v| body::charged(config.input_counting, config.seed, &bytes, &v));
        let answer = match counted {
            Some(n) => Answer {
                status: StatusCode::OK,
                body: json!({ "input_tokens": n }),
                retry_after: None,
                snapshot: None,
                spend_limit: false,
                throttled: false,
            },
            None => Answer::error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "messages: field required".into(),
            ),
        };
        return Ok(shared.answer(seq, None, arrived, answer, &none));
    }
    let chat = parts.uri.path() == "/v1/chat/completions";
    if parts.method != Method::POST || !(chat || parts.uri.path() == "/v1/messages") {
        let msg = format!("Not found: {} {}", parts.method, parts.uri.path());
        let answer = Answer::error(StatusCode::NOT_FOUND, "not_found_error", msg);
        return Ok(shared.answer(seq, None, arrived, answer, &none));
    }
    let parsed = match body::parse(&bytes, shared.config.input_counting, shared.config.seed) {
        Ok(p) => p,
        Err(msg) => {
            let answer = Answer::error(StatusCode::BAD_REQUEST, "invalid_request_error", msg);
            return Ok(shared.answer(seq, None, arrived, answer, &none));
        }
    };
    let model = Some(parsed.model.as_str());
    if !shared.lock().base.contains_key(&parsed.model) && shared.config.default_limits.is_none() {
        let msg = format!("model: {}", parsed.model);
        let answer = Answer::error(StatusCode::NOT_FOUND, "not_found_error", msg);
        return Ok(shared.answer(seq, None, arrived, answer, &none));
    }
    if parsed.input_tokens > shared.config.context_window {
        let msg = format!(
            "prompt is too long: {} tokens > {} maximum",
            parsed.input_tokens, shared.config.context_window
        );
        let answer = Answer::error(StatusCode::BAD_REQUEST, "invalid_request_error", msg);
        return Ok(shared.answer(seq, model, arrived, answer, &none));
    }

    let mut rng = rng_for(shared.config.seed, seq);
    let decisions = shared
        .config
        .faults
        .decide(shared.elapsed(arrived), &mut rng);
    if let Some(refusal) = decisions.refusal {
        let answer = match refusal {
            Refusal::ConnectionError => {
                Cells::inc(&shared.counters.connection_errors);
                let mut state = shared.lock();
                let event = shared.event(seq, model, arrived, EventKind::ConnectionError);
                shared.record(&mut state, event);
                tracing::debug!(seq, "sim: scripted connection error");
                return Err(Box::new(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset by peer (simulated)",
                )));
            }
            Refusal::Overloaded => Answer::error(
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "Overloaded".into(),
            ),
            Refusal::ServerError(status) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let kind = if status == StatusCode::GATEWAY_TIMEOUT {
                    "timeout_error"
                } else {
                    "api_error"
                };
                Answer::error(status, kind, "Internal server error".into())
            }
            Refusal::SpendLimit => Answer::spend_limit(),
        };
        tracing::debug!(seq, model = %parsed.model, status = answer.status.as_u16(), "sim: scripted refusal");
        return Ok(shared.answer(seq, model, arrived, answer, &decisions));
    }

    let admission = match admit(&shared, &parsed, arrived) {
        Some(a) => a,
        None => {
            let msg = format!("model: {}", parsed.model);
            let answer = Answer::error(StatusCode::NOT_FOUND, "not_found_error", msg);
            return Ok(shared.answer(seq, None, arrived, answer, &none));
        }
    };
    let mut snapshot = match admission {
        Admission::Admitted(s) => s,
        Admission::Refused {
            snapshot,
            dimension,
            wait,
        } => {
            let reading = snapshot.readings[dimension];
            let combined = shared.config.dialect == HeaderDialect::Combined;
            let name = match dimension {
                INPUT if combined => "tokens",
                _ => DIMENSION_NAMES[dimension],
            };
            let (retry_after, message) = match wait {
                Some(wait) => {
                    let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64;
                    (
                        secs,
                        format!(
                            "This request would exceed your organization's rate limit of {} {name} per minute for model {}. Retry after {secs} s.",
                            reading.limit, parsed.model
                        ),
                    )
                }
                None => {
                    let secs = reading
                        .until_full
                        .map_or(60, |d| d.as_nanos().div_ceil(1_000_000_000).max(1) as u64);
                    (
                        secs,
                        format!(
                            "This request's {name} exceed the limit of {} {name} per minute for model {}: it cannot be admitted under the current limits.",
                            reading.limit, parsed.model
                        ),
                    )
                }
            };
            tracing::debug!(seq, model = %parsed.model, dimension = name, retry_after, remaining = reading.remaining, input = parsed.input_tokens, max_tokens = parsed.max_tokens, "sim: rate limited");
            let mut answer =
                Answer::error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
            answer.retry_after = Some(retry_after);
            answer.snapshot = Some(snapshot);
            if shared.config.dialect == HeaderDialect::Bedrock {
                answer = Answer::throttled();
            }
            return Ok(shared.answer(seq, model, arrived, answer, &decisions));
        }
    };

    tracing::trace!(seq, model = %parsed.model, input_tokens = parsed.input_tokens, max_tokens = parsed.max_tokens, "sim: admitted");
    let reserve = shared.config.accounting == OutputAccounting::ReserveMaxTokens;
    Cells::inc(&shared.counters.admitted);
    Cells::inc(&shared.counters.in_flight);
    Cells::add(&shared.counters.input_tokens, parsed.input_tokens);
    let mut guard = InFlight {
        shared: shared.clone(),
        seq,
        model: parsed.model.clone(),
        arrived,
        input_tokens: parsed.input_tokens,
        reserved: if reserve { parsed.max_tokens } else { 0 },
        done: false,
    };
    let produced = body::produced(&parsed, shared.config.seed, &bytes);
    if decisions.hang {
        Cells::inc(&shared.counters.hung);
        tracing::debug!(seq, "sim: scripted hang");
        std::future::pending::<()>().await;
    }
    let per_token = shared.config.per_token_latency;
    if stream::wants_stream(&bytes) {
        // The head goes when generation starts (its headers describe the admission), the
        // deltas as the tokens are produced.
        let first = shared.config.base_latency.saturating_add(decisions.slow);
        if !first.is_zero() {
            match arrived.checked_add(first) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
        let settle_shared = shared.clone();
        let name = parsed.model.clone();
        let max_tokens = parsed.max_tokens;
        let settle: stream::Settle = Box::new(move |produced, ended| {
            settle_answer(
                &settle_shared,
                &mut guard,
                &name,
                max_tokens,
                produced,
                ended,
            );
        });
        let format = if chat {
            stream::Format::OpenAiChat {
                include_usage: stream::wants_usage(&bytes),
            }
        } else {
            stream::Format::Anthropic
        };
        let answer = stream::Answer {
            format,
            seq,
            model: &parsed.model,
            input_tokens: parsed.input_tokens,
            max_tokens: parsed.max_tokens,
            produced,
            per_token,
            brk: decisions.stream_break,
        };
        let body = stream::events(answer, settle);
        let answer = Answer {
            status: StatusCode::OK,
            body: json!({}),
            retry_after: None,
            snapshot: Some(snapshot),
            spend_limit: false,
            throttled: false,
        };
        let mut response = response::render(&shared, seq, answer, &decisions).map(|_| body);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
        return Ok(response);
    }
    let latency = shared
        .config
        .base_latency
        .saturating_add(per_token.saturating_mul(u32::try_from(produced).unwrap_or(u32::MAX)))
        .saturating_add(decisions.slow);
    if !latency.is_zero() {
        match arrived.checked_add(latency) {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    let fresh = settle_answer(
        &shared,
        &mut guard,
        &parsed.model,
        parsed.max_tokens,
        produced,
        stream::Ended::Complete,
    );
    if shared.config.header_timing == HeaderTiming::AtAnswer
        && let Some(fresh) = fresh
    {
        snapshot = fresh;
    }
    let text = body::filler(usize::try_from(produced * 4).unwrap_or(0));
    let finished = produced >= parsed.max_tokens;
    let body = if chat {
        json!({
            "id": format!("chatcmpl-sim{seq:08}"),
            "object": "chat.completion",
            "model": parsed.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": null, "finish_reason": if finished { "length" } else { "stop" }}],
            "usage": {"prompt_tokens": parsed.input_tokens, "completion_tokens": produced,
                "total_tokens": parsed.input_tokens.saturating_add(produced)},
        })
    } else {
        json!({
        "id": format!("msg_sim_{seq:08}"),
        "type": "message",
        "role": "assistant",
        "model": parsed.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": if finished { "max_tokens" } else { "end_turn" },
        "stop_sequence": null,
        "usage": {"input_tokens": parsed.input_tokens, "output_tokens": produced},
        })
    };
    let answer = Answer {
        status: StatusCode::OK,
        body,
        retry_after: None,
        snapshot: Some(snapshot),
        spend_limit: false,
        throttled: false,
    };
    Ok(response::render(&shared, seq, answer, &decisions).map(SimBody::full))
}

/// An admitted answer is over (sent whole, or its stream ended): the output it produced is
/// charged (the rest of a reservation given back), the answer counted and recorded. Returns
/// the levels after it.
fn settle_answer(
    shared: &Shared,
    guard: &mut InFlight,
    model: &str,
    max_tokens: u64,
    produced: u64,
    ended: stream::Ended,
) -> Option<Snapshot> {
    let reserve = shared.config.accounting == OutputAccounting::ReserveMaxTokens;
    let now = Instant::now();
    let mut fresh = None;
    {
        let mut state = shared.lock();
        if let Some(ms) = shared.model(&mut state, model, now) {
            let out = ms.output();
            if reserve {
                ms.buckets[out].refund(max_tokens.saturating_sub(produced));
            } else {
                ms.buckets[out].charge(produced);
            }
            fresh = Some(Snapshot {
                at: shared.elapsed(now),
                readings: ms.snapshot(),
            });
        }
        let kind = match ended {
            stream::Ended::Complete => EventKind::Answered(StatusCode::OK),
            stream::Ended::ErrorEvent(status) => EventKind::Answered(status),
            stream::Ended::Disconnected => EventKind::ConnectionError,
        };
        let mut event = shared.event(guard.seq, Some(model), guard.arrived, kind);
        event.input_tokens = guard.input_tokens;
        event.output_tokens = produced;
        shared.record(&mut state, event);
    }
    guard.done = true;
    Cells::dec(&shared.counters.in_flight);
    let cell = match ended {
        stream::Ended::Complete => &shared.counters.ok,
        stream::Ended::ErrorEvent(status) if status.as_u16() == 529 => &shared.counters.overloaded,
        stream::Ended::ErrorEvent(_) => &shared.counters.server_errors,
        stream::Ended::Disconnected => &shared.counters.connection_errors,
    };
    Cells::inc(cell);
    Cells::add(&shared.counters.output_tokens, produced);
    fresh
}
