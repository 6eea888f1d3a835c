//! Presets: every layer of this crate stacked in the right order with provider defaults, as one
//! [`Layer`].
//!
//! ```text
//! caller
//!   └─ Retry                       retry::Policy          (SDK rules, retry-after, budget)
//!       └─ CircuitBreaker          breaker::Policy        (trips on 529/503 overload)
//!           └─ RateLimit           rate_limit::RateLimitLayer (learned from headers, cost-weighted)
//!               └─ AdaptiveConcurrencyLimit  concurrency::adaptive::Aimd
//!                   └─ Signals     parses each response once
//!                       └─ ErrorBody   reads small error bodies (spend cap, error kinds)
//!                           └─ your HTTP client (hyper-util, reqwest adapter, the sim)
//! ```
//!
//! # Why this order
//!
//! - **Retry outermost**, so every attempt passes through every check again: a retry waits for
//!   rate-limit budget, is refused at once while the breaker is open — the retry then waits
//!   until the breaker probes again when that is at most 60 s away
//!   ([`retry::Policy::max_breaker_wait`]), spending no retry — and takes a concurrency
//!   permit like any request. When the rate limiter has absorbed a 429's `retry-after` (it pauses
//!   every request of the key until then), the retry re-enters at once instead of sleeping the same
//!   wait twice.
//! - **The breaker before the rate limiter**, so an open breaker fails fast without spending
//!   rate-limit budget or queueing behind other requests.
//! - **The concurrency cap innermost**, so a permit is held only while the request is really in
//!   flight, not while it waits for budget (the rate limiter drives the inner service's readiness
//!   only after admission). "In flight" ends when the response head arrives for a non-streaming
//!   answer, and when the body ends (or is dropped) for a streaming one (`text/event-stream`):
//!   see [When the permit goes back](#when-the-concurrency-permit-goes-back).
//! - **[`Signals`] right above the client** (and
//!   [`ErrorBody`] below it), so each response is parsed once and every
//!   layer above reads the same [`ResponseSignals`](crate::signals::ResponseSignals).
//!
//! # Defaults and where they come from
//!
//! | part | default | source |
//! |---|---|---|
//! | retries | 2 (3 attempts), backoff `min(0.5 s × 2ⁿ, 8 s) × (1 − 0.25 × random)` (0.375–0.5 s before the first retry) | the official Anthropic and OpenAI SDKs |
//! | honoured `retry-after` / `retry-after-ms` | [`anthropic`]: any positive wait (up to ≈ 49.7 days); [`openai`]: up to 120 s, above it no retry but [`retry::error::ServerWaitTooLong`] (stating the server's wait); [`generic`]: up to 60 s, else `ServerWaitTooLong` | anthropic-python ≥ 1.6 and Anthropic TS/Go/Java; openai-python |
//! | zero or past wait (`retry-after: 0`, `retry-after-ms: 0`, an HTTP-date at or before `date`) | treated as no wait: the backoff (0.375–0.5 s first) | every SDK |
//! | 429 without `retry-after` | the rate limiter pauses the model's key for its cooldown ([`DEFAULT_COOLDOWN`](crate::rate_limit::DEFAULT_COOLDOWN), 0.5 s, the SDKs' first backoff) and the retry waits that out instead of its own backoff; a server that sends no rate-limit headers at all is paced on a rate learned from its throttles instead | the pause holds back *every* request of the key, not only the retry, so the burst that caused the 429 does not repeat; the retry layer alone uses the backoff |
//! | deadline ([`retry::Policy::deadline`], none by default) | no wait goes past it: a retry that could not start in time ends the call at once with [`retry::error::DeadlineExceeded`] (stating the server's wait) | ours |
//! | retry budget | +20 % of the request rate over 10 s, plus 10 retries/s | Finagle, tower's `TpsBudget` |
//! | breaker | trips on overload (529, 503) at 50 % failures of the last 20 calls (≥ 10) or 5 in a row, opens 10 s growing linearly (10, 20, 30 s…) to 300 s, 3 probes | Resilience4j, Envoy |
//! | while the breaker is open | calls wait until it probes again when that is at most 60 s away (10 min in all), else get [`breaker::error::Open`] | a server's `retry-after`, applied to our own refusal |
//! | rate limits | learned from the response headers, per model; nothing hard-coded | `anthropic-ratelimit-*`, `x-ratelimit-*`, IETF `RateLimit` |
//! | cost | 1 request, input tokens estimated from the JSON body, output reserved at `max_tokens` | Anthropic's ITPM/OTPM accounting |
//! | error bodies | non-2xx bodies read (and parsed) up to 64 KiB and for at most 10 s from the head, else handed on unparsed ([`ErrorBodyLayer`]) | a stalled body must not hold the call and its permit for ever |
//! | concurrency | adaptive (AIMD): starts at 32, between 2 and 512, ×0.7 on 429/529/timeouts | AWS SDK adaptive mode, Netflix concurrency-limits |
//!
//! The three presets differ in what they assume about the provider: [`anthropic`] and [`openai`]
//! key the limits by the `model` of the request body (limits are per model at both), [`generic`]
//! keys them by host and also trips the breaker on other 5xx.
//!
//! Every part can be replaced: [`PresetLayer::retry`], [`PresetLayer::breaker`],
//! [`PresetLayer::rate_limit`], [`PresetLayer::concurrency`], and the shortcuts
//! [`PresetLayer::limits`], [`PresetLayer::max_wait`], [`PresetLayer::max_concurrency`].
//!
//! # When the concurrency permit goes back
//!
//! The cap counts requests the provider is working on ([`Release::Auto`](crate::concurrency::Release::Auto)):
//!
//! - a **non-streaming answer** gives its permit back when its head arrives: the provider has
//!   finished, and the caller may read the body whenever it likes. Collecting responses before
//!   reading them (`tokio::join!` of more calls than the cap, a `JoinSet` drained before any
//!   body is read) completes;
//! - a **streaming answer** (`content-type: text/event-stream`) is generated while it is read,
//!   so its body holds the permit until its last event, an error, or until it is dropped. Read
//!   or drop streams as they arrive: a caller holding more unread streams than the cap admits
//!   while it waits for another call waits for ever.
//!
//! The adaptive cap takes a non-streaming answer's outcome and latency sample when the head
//! arrives, a stream's when the stream ends (below).
//! [`AdaptiveConcurrencyLimitLayer::release`] changes when the permit goes back (pass it to
//! [`PresetLayer::concurrency`]).
//!
//! # Streaming answers
//!
//! A `"stream": true` answer is watched as it passes to the caller
//! ([`signals::stream`](crate::signals::stream) has the whole rule):
//!
//! - its **first event** is read before the head is handed on. An error there
//!   (`overloaded_error` first) is the attempt's outcome, exactly as a 529 head would be: the
//!   retry layer retries it and the caller sees one clean stream;
//! - **after that** nothing is re-sent: an `overloaded_error` in the middle, a cut connection, a
//!   stream that ends without `message_stop` or stays silent for
//!   [`DEFAULT_STREAM_IDLE_TIMEOUT`](crate::signals::DEFAULT_STREAM_IDLE_TIMEOUT) ends the body
//!   with [`StreamInterrupted`](crate::signals::StreamInterrupted) (the outcome, the events and
//!   bytes the caller received), and the breaker and the adaptive cap count that outcome when
//!   it happens — a mid-stream overload trips the breaker as 529 heads do;
//! - the rate limiter settles the request's reservation to the stream's `usage`
//!   (`message_start`'s input, `message_delta`'s output) when the stream ends;
//! - the concurrency permit goes back when the stream ends, fails, stalls or is dropped; a
//!   dropped stream is not counted by the breaker or the adaptive cap.
//!
//! # Sharing
//!
//! All services built from one `PresetLayer` (and their clones) share one rate-limit state, one
//! breaker, one concurrency cap and one retry budget: build the layer once per organisation (or
//! API key group) and use it for every client that talks to it.
//!
//! # What it costs
//!
//! About 3 µs of CPU per call on the development machine, with nothing to wait for (BENCHMARKS.md
//! in the repository: `cargo bench --all-features --bench overhead`), most of it reading the
//! request body for its model and cost and the rate-limit headers of every answer. A caller that
//! knows them can skip the body: a [`RateLimitKey`](crate::rate_limit::RateLimitKey) and a
//! [`Cost`](crate::cost::Cost) in the request's extensions are used as given. The `metrics`
//! feature adds its emissions to every call; leave it off when nothing records them.
//!
//! # Examples
//!
//! The default Anthropic stack around a client (here the simulated API):
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::preset;
//! use tower_llm_limits_sim::{self as sim, Limits, SimApi};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let api = SimApi::builder()
//!     .model("claude-sonnet-4-5", Limits::per_minute(50, 30_000, 8_000))
//!     .build();
//! let client = ServiceBuilder::new().layer(preset::anthropic()).service(api);
//!
//! let body = sim::message_body("claude-sonnet-4-5", 1_000, 512, 200);
//! let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!     .header("content-type", "application/json")
//!     .body(http_body_util::Full::new(body))?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! One type for the whole stack, to store in a struct or pass around: a
//! [`BoxCloneService`](tower::util::BoxCloneService) whose response body is
//! [`ResponseBody<B>`](ResponseBody), the client's body `B` as the preset hands it back — still
//! streaming, nothing collected into memory (only error bodies up to 64 KiB are read, see
//! [`ErrorBodyLayer`]):
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::util::BoxCloneService;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::{BoxError, preset};
//! use tower_llm_limits_sim::{self as sim, Limits, SimApi, SimBody};
//!
//! /// The client's request body is `Full<Bytes>`, its response body the sim's `SimBody`.
//! type Claude = BoxCloneService<
//!     http::Request<Full<Bytes>>,
//!     http::Response<preset::ResponseBody<SimBody>>,
//!     BoxError,
//! >;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let api = SimApi::builder()
//!     .model("claude-sonnet-4-5", Limits::per_minute(50, 30_000, 8_000))
//!     .build();
//! let claude: Claude = BoxCloneService::new(
//!     ServiceBuilder::new().layer(preset::anthropic()).service(api),
//! );
//!
//! let body = sim::message_body("claude-sonnet-4-5", 200, 64, 32);
//! let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!     .header("content-type", "application/json")
//!     .body(Full::new(body))?;
//! let response = claude.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! // The body is read as it arrives, frame by frame.
//! let bytes = response.into_body().collect().await?.to_bytes();
//! assert!(bytes.starts_with(b"{"));
//! # Ok(())
//! # }
//! ```
//!
//! Adjusted: configured limits as a ceiling, a bounded wait for budget, a fixed concurrency cap
//! and one retry more than the SDKs:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_llm_limits::{preset, rate_limit::Limits, retry};
//!
//! let layer = preset::anthropic()
//!     .limits(Limits::per_minute(4_000, 2_000_000, 400_000))
//!     .max_wait(Duration::from_secs(30))
//!     .max_concurrency(64)
//!     .retry(retry::Policy::anthropic().max_retries(3));
//! # let client = tower::service_fn(|_: http::Request<String>| async {
//! #     Ok::<_, tower_llm_limits::BoxError>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! # });
//! let client = ServiceBuilder::new().layer(layer).service(client);
//! # let _ = client;
//! ```

use std::time::Duration;

use tower_layer::Layer;

use crate::breaker::{self, CircuitBreaker, CircuitBreakerLayer};
use crate::concurrency::PermitBody;
use crate::concurrency::adaptive::{AdaptiveConcurrencyLimit, AdaptiveConcurrencyLimitLayer, Aimd};
use crate::cost::DefaultCost;
use crate::error_body::{ErrorBody, ErrorBodyLayer, MaybeBuffered};
use crate::rate_limit::{DefaultKey, HostKey, Limits, RateLimit, RateLimitLayer, RateLimitState};
use crate::retry::{self, Retry, RetryLayer};
use crate::signals::{OutcomeKind, Signals, SignalsLayer};
use crate::status::Snapshot;

/// The response body of a [`Preset`] around a client whose response body is `B`: `B` itself,
/// streaming, with the concurrency permit it may hold ([`PermitBody`]) and, for a small error
/// body, the bytes [`ErrorBody`] read first ([`MaybeBuffered`]). See the
/// [`BoxCloneService` example](self#examples).
pub type ResponseBody<B> = PermitBody<MaybeBuffered<B>>;

/// The service a [`PresetLayer`] builds around `S`.
pub type Preset<S, K = DefaultKey, E = DefaultCost> =
    Retry<CircuitBreaker<RateLimit<AdaptiveConcurrencyLimit<Signals<ErrorBody<S>>>, K, E>>>;

/// All the layers of this crate in the right order; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct PresetLayer<K = DefaultKey, E = DefaultCost> {
    retry: RetryLayer,
    breaker: CircuitBreakerLayer,
    rate_limit: RateLimitLayer<K, E>,
    concurrency: AdaptiveConcurrencyLimitLayer,
    signals: SignalsLayer,
    error_body: ErrorBodyLayer,
}

/// The preset for the Anthropic Messages API: limits learned per model from the
/// `anthropic-ratelimit-*` headers, SDK retry rules, a breaker on 529 overload.
///
/// Its retry policy is [`retry::Policy::anthropic`]: any positive `retry-after` is honoured, as
/// the current Anthropic SDKs do.
pub fn anthropic() -> PresetLayer {
    PresetLayer::with_rate_limit(RateLimitLayer::new()).retry(retry::Policy::anthropic())
}

/// The preset for the OpenAI API: limits learned per model from the `x-ratelimit-*` headers
/// (Go-style reset durations), SDK retry rules (`retry-after-ms` honoured), a breaker on overload.
///
/// Its retry policy is [`retry::Policy::openai`]: a `retry-after` up to 120 s is honoured, a
/// longer one is not retried ([`retry::error::ServerWaitTooLong`]), as openai-python does.
pub fn openai() -> PresetLayer {
    PresetLayer::with_rate_limit(RateLimitLayer::new()).retry(retry::Policy::openai())
}

/// A header-driven preset for any API that sends rate-limit headers (IETF `RateLimit`,
/// GitHub-style, or the above): limits keyed by host, and the breaker also trips on other 5xx.
pub fn generic() -> PresetLayer<HostKey> {
    let mut layer = PresetLayer::with_rate_limit(RateLimitLayer::new().key_fn(HostKey::new()));
    layer.breaker = CircuitBreakerLayer::new(
        breaker::Policy::new().trip_on([OutcomeKind::Overloaded, OutcomeKind::ServerError]),
    );
    layer
}

fn default_concurrency() -> AdaptiveConcurrencyLimitLayer {
    AdaptiveConcurrencyLimitLayer::new(Aimd::new().initial(32).min(2).max(512))
        .expect("the preset's AIMD configuration is valid")
}

impl<K, E> PresetLayer<K, E> {
    fn with_rate_limit(rate_limit: RateLimitLayer<K, E>) -> Self {
        PresetLayer {
            retry: RetryLayer::new(retry::Policy::new()),
            breaker: CircuitBreakerLayer::new(breaker::Policy::new()),
            rate_limit,
            concurrency: default_concurrency(),
            signals: SignalsLayer::new(),
            error_body: ErrorBodyLayer::new(),
        }
    }

    /// Replaces the retry policy. Start from [`retry::Policy::anthropic`] or
    /// [`retry::Policy::openai`] to keep the provider's ceiling on `retry-after`
    /// ([`retry::Policy::new`] has the generic 60 s one).
    pub fn retry(mut self, policy: retry::Policy) -> Self {
        self.retry = RetryLayer::new(policy);
        self
    }

    /// Replaces the breaker policy (a new breaker state).
    pub fn breaker(mut self, policy: breaker::Policy) -> Self {
        self.breaker = CircuitBreakerLayer::new(policy);
        self
    }

    /// Replaces the rate limiter (for instance one built on a shared
    /// [`RateLimitState`], another key or cost function).
    pub fn rate_limit<K2, E2>(self, rate_limit: RateLimitLayer<K2, E2>) -> PresetLayer<K2, E2> {
        PresetLayer {
            retry: self.retry,
            breaker: self.breaker,
            rate_limit,
            concurrency: self.concurrency,
            signals: self.signals,
            error_body: self.error_body,
        }
    }

    /// Configures limits for every key, on a new rate-limit state: they are the starting point
    /// and the ceiling of what the headers teach (see [`RateLimitState`]).
    pub fn limits(self, limits: Limits) -> Self {
        let state = RateLimitState::with_limits(limits);
        self.rate_limit_state(state)
    }

    /// Uses (and shares) `state` for the rate limiter, keeping its key and cost functions and
    /// maximum wait.
    pub fn rate_limit_state(mut self, state: RateLimitState) -> Self {
        self.rate_limit = self.rate_limit.replace_state(state);
        self
    }

    /// The longest a request may wait for rate-limit budget; beyond it the call fails at once
    /// with [`rate_limit::error::WaitTooLong`](crate::rate_limit::error::WaitTooLong).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.rate_limit = self.rate_limit.max_wait(max_wait);
        self
    }

    /// Replaces the adaptive concurrency cap.
    pub fn concurrency(mut self, concurrency: AdaptiveConcurrencyLimitLayer) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// A fixed concurrency cap of `limit` in-flight requests instead of the adaptive one.
    ///
    /// # Panics
    ///
    /// When `limit` is 0.
    pub fn max_concurrency(mut self, limit: usize) -> Self {
        assert!(limit > 0, "max_concurrency must be at least 1");
        self.concurrency =
            AdaptiveConcurrencyLimitLayer::new(Aimd::new().initial(limit).min(limit).max(limit))
                .expect("min = max = initial >= 1 is a valid AIMD configuration");
        self
    }

    /// The retry layer (its policy and budget).
    pub fn get_retry(&self) -> &RetryLayer {
        &self.retry
    }

    /// The breaker layer (its state).
    pub fn get_breaker(&self) -> &CircuitBreakerLayer {
        &self.breaker
    }

    /// The rate-limit layer (its shared state).
    pub fn get_rate_limit(&self) -> &RateLimitLayer<K, E> {
        &self.rate_limit
    }

    /// The concurrency layer (its limiter).
    pub fn get_concurrency(&self) -> &AdaptiveConcurrencyLimitLayer {
        &self.concurrency
    }

    /// A live [`Snapshot`] of every shared state: rate-limit keys, breakers, the concurrency
    /// cap and the retry budget (see [`status`](crate::status)).
    pub fn snapshot(&self) -> Snapshot {
        let snapshot = Snapshot::new()
            .with_rate_limit(self.rate_limit.state())
            .with_breaker(&self.breaker)
            .with_adaptive_concurrency(self.concurrency.limiter());
        match self.retry.policy().get_budget() {
            Some(budget) => snapshot.with_retry_budget(budget),
            None => snapshot,
        }
    }
}

impl<S, K: Clone, E: Clone> Layer<S> for PresetLayer<K, E> {
    type Service = Preset<S, K, E>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.error_body.layer(inner);
        let inner = self.signals.layer(inner);
        let inner = self.concurrency.layer(inner);
        let inner = self.rate_limit.layer(inner);
        let inner = self.breaker.layer(inner);
        self.retry.layer(inner)
    }
}
