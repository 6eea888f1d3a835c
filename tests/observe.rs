//! Observability: a scripted run against the simulated API on tokio's paused clock, with the
//! tracing events and the recorded metrics captured and checked, and the live snapshot.
//!
//! `metrics::with_local_recorder` and `tracing::subscriber::set_default` cover the current
//! thread only: each test runs its workload on a current-thread runtime inside both.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_limits::breaker;
use tower_llm_limits::observe::names;
use tower_llm_limits::preset;
use tower_llm_limits::signals::Dimension;
use tower_llm_limits::status::Snapshot;
use tower_llm_limits_sim::{Fault, Faults, Limits, SimApi};

use support::sim::message;

const MODEL: &str = "claude-sonnet-4-5";

// ---------------------------------------------------------------------------------------------
// Capturing: tracing events with the fields of the spans they are in, and metrics.

/// One event: its own fields, and those of the spans it is in (outermost first), as
/// `span.<name>.<field>`.
type Fields = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Fields>>>);

impl Events {
    fn with_message(&self, message: &str) -> Vec<Fields> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.iter().any(|(k, v)| k == "message" && v == message))
            .cloned()
            .collect()
    }
}

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

struct Visitor<'a>(&'a mut Fields, &'a str);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = format!("{}{}", self.1, field.name());
        self.0.retain(|(k, _)| *k != name);
        self.0.push((name, format!("{value:?}")));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let name = format!("{}{}", self.1, field.name());
        self.0.retain(|(k, _)| *k != name);
        self.0.push((name, value.to_owned()));
    }
}

/// A span's fields as recorded so far.
struct SpanFields(Fields);

impl<S> tracing_subscriber::Layer<S> for Events
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("new span");
        let prefix = format!("span.{}.", span.name());
        let mut fields = Vec::new();
        attrs.record(&mut Visitor(&mut fields, &prefix));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("recorded span");
        let prefix = format!("span.{}.", span.name());
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(fields)) = ext.get_mut::<SpanFields>() {
            values.record(&mut Visitor(fields, &prefix));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                    fields.extend(f.iter().cloned());
                }
            }
        }
        event.record(&mut Visitor(&mut fields, ""));
        self.0.lock().unwrap().push(fields);
    }
}

/// Runs `workload` on a current-thread runtime on the paused clock, with the events and the
/// metrics of this thread captured.
fn captured<F: Future<Output = T>, T>(workload: impl FnOnce() -> F) -> (T, Events, Snapshotter) {
    use tracing_subscriber::layer::SubscriberExt;
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    // A callsite first hit by another test thread may have cached "never": recompute.
    tracing::callsite::rebuild_interest_cache();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let out = metrics::with_local_recorder(&recorder, || runtime.block_on(workload()));
    (out, events, snapshotter)
}

/// The recorded metrics, by kind, name and sorted labels.
/// A metric's kind, name and sorted labels.
type MetricId = (MetricKind, String, Vec<(String, String)>);

struct Recorded(HashMap<MetricId, DebugValue>);

impl Recorded {
    fn of(snapshotter: &Snapshotter) -> Self {
        let mut map = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key: CompositeKey = key;
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            map.insert((kind, key.name().to_owned(), labels), value);
        }
        Recorded(map)
    }

    fn find(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.0.get(&(kind, name.to_owned(), labels))
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    /// The sum of a counter over every label set.
    fn counter_total(&self, name: &str) -> u64 {
        self.0
            .iter()
            .filter(|((k, n, _), _)| *k == MetricKind::Counter && n == name)
            .map(|(_, v)| match v {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(MetricKind::Gauge, name, labels) {
            Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
            _ => None,
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn limits() -> Limits {
    Limits::per_minute(60, 40_000, 8_000)
}

/// Sends one call through `client`; true when it succeeded with a 200.
async fn call<S, B>(client: &S) -> bool
where
    S: Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
            Error = tower_llm_limits::BoxError,
        > + Clone,
{
    match client.clone().oneshot(message(MODEL, 500, 200, 100)).await {
        Ok(response) => response.status() == 200,
        Err(_) => false,
    }
}

/// The script: the API starts with an empty requests bucket (the first call meets a 429), then
/// a few calls go through, then the API is overloaded (529) from 20 s to 120 s: the breaker
/// opens and the retry layer waits for it up to a minute per call, in vain. Then it recovers.
#[test]
fn scripted_run_is_traced_measured_and_snapshotted() {
    let ((during, after, outcomes), events, snapshotter) = captured(|| async {
        let start = tokio::time::Instant::now();
        let api = SimApi::builder()
            .model(MODEL, limits())
            .starting_fill(0.0)
            .faults(Faults::new().window(
                Duration::from_secs(20)..Duration::from_secs(120),
                Fault::Overloaded { probability: 1.0 },
            ))
            .seed(7)
            .build();
        let layer = preset::anthropic();
        let client = ServiceBuilder::new().layer(layer.clone()).service(api);
        let mut outcomes = Vec::new();
        // Phase 1: the first call is refused with a 429 and retried; 4 more go through.
        for _ in 0..5 {
            outcomes.push(call(&client).await);
        }
        // Phase 2, from 25 s: overload. The first call tries 3 times, the second trips the
        // breaker (5 failures in a row) at about 27 s and waits for it.
        tokio::time::sleep_until(start + Duration::from_secs(25)).await;
        let overloaded = tokio::spawn({
            let client = client.clone();
            async move { [call(&client).await, call(&client).await] }
        });
        tokio::time::sleep_until(start + Duration::from_secs(30)).await;
        let during = layer.snapshot();
        outcomes.extend(overloaded.await.unwrap());
        // Phase 3, from 200 s: the API has recovered; probes close the breaker.
        tokio::time::sleep_until(start + Duration::from_secs(200)).await;
        for _ in 0..5 {
            outcomes.push(call(&client).await);
        }
        let after = layer.snapshot();
        after.record_metrics();
        (during, after, outcomes)
    });
    let m = Recorded::of(&snapshotter);

    // Outcomes: phase 1 and 3 succeed, phase 2 fails.
    assert_eq!(
        outcomes,
        [[true; 5].as_slice(), &[false; 2], &[true; 5],].concat(),
        "{after}"
    );

    // --- The snapshot -------------------------------------------------------------------
    let key = after.rate_limit(MODEL).expect("the model's key");
    for (dimension, limit) in [
        (Dimension::Requests, 60),
        (Dimension::InputTokens, 40_000),
        (Dimension::OutputTokens, 8_000),
    ] {
        let d = key.dimension(dimension).expect("a known dimension");
        assert_eq!(d.learned(), Some(limit), "{dimension:?}");
        assert_eq!(d.limit(), limit, "{dimension:?}");
        assert_eq!(d.configured(), None);
        assert!(d.remaining() <= limit);
    }
    assert_eq!(key.in_flight(), 0);
    assert_eq!(key.queued(), 0);
    let breaker = during.breaker(None).expect("the unkeyed breaker");
    match breaker.state() {
        breaker::State::Open { .. } => assert!(breaker.half_open_in() > Some(Duration::ZERO)),
        other => panic!("breaker {other:?} during the overload:\n{during}"),
    }
    assert_eq!(
        after.breaker(None).unwrap().state(),
        breaker::State::Closed,
        "{after}"
    );
    assert_eq!(after.breaker(None).unwrap().half_open_in(), None);
    let concurrency = after.concurrency().expect("the preset's adaptive cap");
    assert_eq!(concurrency.adaptive_bounds(), Some((2, 512)));
    assert!(concurrency.limit() < 32, "529s lower the adaptive limit");
    assert!(after.retry_budget().is_some());
    let text = during.to_string();
    assert!(text.contains(MODEL) && text.contains("open"), "{text}");
    let json = after.to_json();
    assert_eq!(json["rate_limits"][0]["key"], MODEL);
    assert_eq!(
        json["rate_limits"][0]["dimensions"]["input_tokens"]["learned"],
        40_000
    );
    assert_eq!(json["breakers"][0]["state"], "closed");

    // --- Metrics ------------------------------------------------------------------------
    assert_eq!(m.counter(names::CALLS, &[]), 12);
    assert_eq!(m.counter(names::CALL_OUTCOMES, &[("kind", "success")]), 10);
    // The 429 of the first call: counted by the limiter, retried with the wait it absorbed.
    assert_eq!(
        m.counter(
            names::RATE_LIMIT_RESPONSES,
            &[("key", MODEL), ("kind", "rate_limited")]
        ),
        1
    );
    assert_eq!(
        m.counter(
            names::RETRIES,
            &[("reason", "rate_limited"), ("source", "absorbed")]
        ),
        1
    );
    assert!(
        m.counter(
            names::RETRIES,
            &[("reason", "overloaded"), ("source", "backoff")]
        ) >= 2
    );
    let attempts = m.histogram(names::CALL_ATTEMPTS, &[]);
    assert_eq!(attempts.len(), 12);
    assert_eq!(attempts[0], 2.0, "the first call took two attempts");
    // The breaker: opened on overload, rejected calls, closed again.
    assert_eq!(
        m.counter(
            names::BREAKER_TRANSITIONS,
            &[
                ("key", "*"),
                ("to", "open"),
                ("reason", "consecutive_failures")
            ]
        ),
        1
    );
    assert!(m.counter(names::BREAKER_REJECTED, &[("key", "*")]) >= 1);
    assert_eq!(
        m.counter(
            names::BREAKER_TRANSITIONS,
            &[
                ("key", "*"),
                ("to", "closed"),
                ("reason", "probes_succeeded")
            ]
        ),
        1
    );
    assert_eq!(m.gauge(names::BREAKER_STATE, &[("key", "*")]), Some(0.0));
    // Gauges set from the last snapshot equal what it shows.
    let requests = key.dimension(Dimension::Requests).unwrap();
    assert_eq!(
        m.gauge(
            names::RATE_LIMIT_LIMIT,
            &[("key", MODEL), ("dimension", "requests")]
        ),
        Some(60.0)
    );
    assert_eq!(
        m.gauge(
            names::RATE_LIMIT_REMAINING,
            &[("key", MODEL), ("dimension", "requests")]
        ),
        Some(requests.remaining() as f64)
    );
    assert_eq!(
        m.gauge(names::CONCURRENCY_LIMIT, &[]),
        Some(concurrency.limit() as f64)
    );
    assert!(m.counter_total(names::CONCURRENCY_LIMIT_CHANGES) >= 1);
    // Requests that waited for budget (the API started empty): one histogram sample per
    // `rate limit: waiting` event, by what they waited for; the retry after the 429 waited
    // 1.5 s for output tokens.
    let waiting = events.with_message("rate limit: waiting");
    let samples: usize = ["requests", "output_tokens", "input_tokens", "cooldown"]
        .iter()
        .map(|d| {
            m.histogram(
                names::RATE_LIMIT_WAIT_SECONDS,
                &[("key", MODEL), ("dimension", d)],
            )
            .len()
        })
        .sum();
    assert!(!waiting.is_empty());
    assert_eq!(samples, waiting.len());
    let retry_wait = waiting
        .iter()
        .find(|e| field(e, "span.llm_call.attempt") == "2")
        .expect("the retry waited");
    assert_eq!(field(retry_wait, "dimension"), "output_tokens");
    assert_eq!(field(retry_wait, "wait_ms"), "1500");
    assert!(
        m.histogram(
            names::RATE_LIMIT_WAIT_SECONDS,
            &[("key", MODEL), ("dimension", "output_tokens")]
        )
        .contains(&1.5)
    );

    // --- Tracing ------------------------------------------------------------------------
    let retries = events.with_message("retrying");
    let first = &retries[0];
    assert_eq!(field(first, "reason"), "rate_limited");
    assert_eq!(field(first, "source"), "absorbed");
    assert_eq!(field(first, "attempt"), "2");
    // Inside the call's span, with the key the limiter recorded.
    assert_eq!(field(first, "span.llm_call.key"), MODEL);
    assert_eq!(field(first, "span.llm_call.attempt"), "1");
    let cooling = events.with_message("rate limit: 429, cooling down every request of this key");
    assert_eq!(cooling.len(), 1);
    assert_eq!(field(&cooling[0], "key"), MODEL);
    // The limits learned, once per dimension, from the first response.
    let learned = events.with_message("rate limit: limit learned");
    let mut dims: Vec<&str> = learned.iter().map(|e| field(e, "dimension")).collect();
    dims.sort_unstable();
    assert_eq!(dims, ["input_tokens", "output_tokens", "requests"]);
    // A retry of the overload window: its span says which attempt follows.
    let overload_retry = retries
        .iter()
        .find(|e| field(e, "reason") == "overloaded" && field(e, "attempt") == "3")
        .expect("a third attempt on overload");
    assert_eq!(field(overload_retry, "span.llm_call.attempt"), "2");
    // Opened by five 529s in a row, then again by each failed probe while the overload lasts.
    let opened = events.with_message("circuit breaker opened");
    assert!(opened.len() >= 2, "{opened:?}");
    assert_eq!(field(&opened[0], "key"), "*");
    assert_eq!(field(&opened[0], "reason"), "consecutive_failures");
    assert!(
        opened[1..]
            .iter()
            .all(|e| field(e, "reason") == "probe_failed")
    );
    assert_eq!(
        m.counter_total(names::BREAKER_TRANSITIONS) as usize,
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(
                |e| field(e, "message").starts_with("circuit breaker opened")
                    || field(e, "message") == "circuit breaker half-open"
                    || field(e, "message") == "circuit breaker closed"
            )
            .count()
    );
    // The retry layer waited for the open breaker, inside the call's span.
    let breaker_waits = events.with_message("waiting for the circuit breaker");
    assert!(!breaker_waits.is_empty());
    assert_eq!(field(&breaker_waits[0], "key"), "*");
    assert_eq!(field(&breaker_waits[0], "span.llm_call.key"), MODEL);
    assert_eq!(events.with_message("circuit breaker closed").len(), 1);
    assert!(
        !events
            .with_message("circuit breaker refused a call")
            .is_empty()
    );
    assert!(
        !events
            .with_message("adaptive concurrency limit decreased")
            .is_empty()
    );
    // No secret: no event or span field carries a header or an API key.
    for event in events.0.lock().unwrap().iter() {
        for (k, v) in event {
            assert!(
                !k.contains("authorization") && !k.contains("api_key") && !v.contains("sk-ant"),
                "{k}={v}"
            );
        }
    }
}

/// A request whose wait for budget would exceed the maximum is refused at once: an event, a
/// counter, and nothing sent.
#[test]
fn refusals_are_traced_and_counted() {
    let (results, events, snapshotter) = captured(|| async {
        let api = SimApi::builder().model(MODEL, limits()).build();
        let layer = preset::anthropic()
            .limits(tower_llm_limits::rate_limit::Limits::per_minute(
                2, 1_000_000, 1_000_000,
            ))
            .max_wait(Duration::from_secs(5));
        let client = ServiceBuilder::new().layer(layer.clone()).service(api);
        let mut results = Vec::new();
        for _ in 0..3 {
            results.push(call(&client).await);
        }
        results
    });
    let m = Recorded::of(&snapshotter);
    assert_eq!(results, [true, true, false]);
    assert_eq!(
        m.counter(
            names::RATE_LIMIT_REFUSED,
            &[("key", MODEL), ("reason", "wait_too_long")]
        ),
        1
    );
    let refused = events.with_message("rate limit: refused, projected wait exceeds the maximum");
    assert_eq!(refused.len(), 1);
    assert_eq!(field(&refused[0], "dimension"), "requests");
    assert_eq!(field(&refused[0], "max_wait_ms"), "5000");
}

/// The snapshot of separately built layers, and its table.
#[tokio::test(start_paused = true)]
async fn snapshot_of_separate_layers() {
    use tower_llm_limits::breaker::{self, CircuitBreakerLayer};
    use tower_llm_limits::concurrency::Limiter;
    use tower_llm_limits::rate_limit::RateLimitState;
    use tower_llm_limits::retry::Budget;

    let state = RateLimitState::with_limits(tower_llm_limits::rate_limit::Limits::per_minute(
        100, 10_000, 2_000,
    ));
    let limiter = Limiter::new(8);
    let breaker = CircuitBreakerLayer::new(breaker::Policy::new());
    let budget = Budget::default();
    let empty = Snapshot::new()
        .with_rate_limit(&state)
        .with_breaker(&breaker)
        .with_concurrency(&limiter)
        .with_retry_budget(&budget);
    // No key seen yet.
    assert!(empty.rate_limits().is_empty());
    assert_eq!(empty.concurrency().unwrap().limit(), 8);
    assert_eq!(empty.concurrency().unwrap().adaptive_bounds(), None);
    assert_eq!(
        empty.retry_budget().unwrap().window(),
        Duration::from_secs(10)
    );
    let text = empty.to_string();
    assert!(
        text.contains("concurrency: limit 8, in flight 0, waiting 0 (fixed)"),
        "{text}"
    );
    assert!(text.contains("closed"), "{text}");
    let json = empty.to_json();
    assert_eq!(json["concurrency"]["adaptive"], false);
    assert_eq!(json["breakers"][0]["key"], serde_json::Value::Null);
}

/// A fallback to the secondary and a request too big for any budget are counted and traced.
#[test]
fn fallbacks_and_impossible_costs_are_counted() {
    use tower_llm_limits::fallback::{Fallback, Served};
    use tower_llm_limits::rate_limit::error::CostExceedsLimit;

    let ((served, too_big), events, snapshotter) = captured(|| async {
        let overloaded = SimApi::builder()
            .model(MODEL, limits())
            .faults(Faults::new().always(Fault::Overloaded { probability: 1.0 }))
            .build();
        let healthy = SimApi::builder().model(MODEL, limits()).build();
        let response = Fallback::new(overloaded, healthy)
            .oneshot(message(MODEL, 100, 50, 10))
            .await
            .unwrap();
        let served = *response.extensions().get::<Served>().unwrap();
        // 40,000 input tokens per minute learned: 50,000 can never fit.
        let client = ServiceBuilder::new()
            .layer(preset::anthropic())
            .service(SimApi::builder().model(MODEL, limits()).build());
        assert!(call(&client).await);
        let error = client
            .oneshot(message(MODEL, 50_000, 10, 10))
            .await
            .unwrap_err();
        (served, error.downcast_ref::<CostExceedsLimit>().is_some())
    });
    let m = Recorded::of(&snapshotter);
    assert_eq!(served, Served::Secondary);
    assert_eq!(m.counter(names::FALLBACKS, &[("reason", "overloaded")]), 1);
    assert!(too_big);
    assert_eq!(
        m.counter(
            names::RATE_LIMIT_REFUSED,
            &[("key", MODEL), ("reason", "cost_exceeds_limit")]
        ),
        1
    );
    let refused = events.with_message("rate limit: refused, cost exceeds the limit");
    assert_eq!(refused.len(), 1);
    assert_eq!(field(&refused[0], "dimension"), "input_tokens");
    assert_eq!(field(&refused[0], "limit"), "40000");
    assert_eq!(field(&refused[0], "span.llm_call.key"), MODEL);
    // The limiter's refusal ends the call at once: not retried, one attempt.
    assert_eq!(m.counter(names::CALL_OUTCOMES, &[("kind", "rejected")]), 1);
    assert_eq!(
        m.counter(
            names::RETRIES,
            &[("reason", "rejected"), ("source", "backoff")]
        ),
        0
    );
}
