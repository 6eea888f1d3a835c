//! What a request costs: requests, input tokens and output tokens.
//!
//! The [rate limiter](crate::rate_limit) charges every request a [`Cost`] against the buckets of
//! its key. The cost is worked out once, before the request is sent, from the first source that
//! has it:
//!
//! 1. a [`Cost`] the caller put in the request's extensions (taken as exact);
//! 2. the cost function given to the layer (any [`EstimateCost`], e.g. a closure made with
//!    [`cost_fn`]);
//! 3. [`DefaultCost`]: the built-in estimator for Anthropic Messages and OpenAI chat / responses
//!    JSON bodies when the body's bytes are available (see [`BodyBytes`]), else a
//!    documented conservative default.
//!
//! # Why estimates are conservative
//!
//! Input tokens are only known approximately before sending: the number of bytes per token
//! varies with language and content (roughly 3 to 4.5 for English text and JSON). An estimate
//! that is systematically low produces a steady trickle of 429s, one that is high wastes part of
//! the limit. The estimator therefore errs high ([`DEFAULT_BYTES_PER_TOKEN`] = 3.5 bytes per
//! token), and the rate limiter learns the remaining error from the server's own readings (an
//! EWMA correction factor, see the [`rate_limit`](crate::rate_limit) docs), so a conservative
//! estimate costs little.
//!
//! Output tokens are unknown until the response ends and are at most `max_tokens`: the limiter
//! reserves `max_tokens` (or [`DEFAULT_OUTPUT_TOKENS`] when the body does not say) and gives back
//! the difference as soon as the true figure is known — from the server's output-bucket reading,
//! or from a [`Usage`] put in the response's extensions.
//!
//! # Why two body traits: `BodyBytes` here, `ReplayBody` in `retry`
//!
//! A request body is asked two different questions. [`BodyBytes`]: can its bytes be *seen*
//! now, without consuming it, so the default key and cost can read the JSON (`model`,
//! `max_tokens`, size) before the request is sent? [`ReplayBody`](crate::retry::ReplayBody):
//! can a *fresh copy* be made to send the request again? The answers are independent, so they
//! are two traits rather than one:
//!
//! | body | bytes seen | replayed |
//! |---|---|---|
//! | `Full<Bytes>`, `Bytes`, `String`, `Vec<u8>`, `&'static str`, `()`, `Empty` | yes | yes |
//! | [`SendOnce`](crate::retry::SendOnce)`<Full<Bytes>>` (a call you do not want repeated) | yes | no, on purpose |
//! | `BoxBody`, `UnsyncBoxBody` (a stream) | its length only | no |
//! | [`Replayable`](crate::retry::Replayable)`<B>`, `B` a cloneable stream of yours | no (`BodyBytes` defaults) | yes |
//!
//! Each layer asks only its own question: a rate limiter with [`DefaultKey`] or
//! [`DefaultCost`] needs `BodyBytes`, a [`Retry`](crate::retry::Retry) needs `ReplayBody`, and
//! only a stack with both (a [preset](crate::preset)) needs both. One merged trait would carry
//! the two answers anyway and would have to pick a default for the one a user did not think
//! about: "never replayed" silently turns retries off for a body implemented for costing, and a
//! required `replay` makes a rate-limiter-only user answer a retry question. The traits also
//! differ in shape: `BodyBytes` is a view (`&self` to [`Bytes`], no `Sized` bound),
//! `ReplayBody` returns a new `Self` and can refuse with
//! [`ReplayRefused`](crate::retry::ReplayRefused) when a body that should be replayable finds it
//! is not. And `cost` depends on no layer, so the retry's body trait cannot live here.
//!
//! What they share is written once: the two wrappers, [`SendOnce`](crate::retry::SendOnce) and
//! [`Replayable`](crate::retry::Replayable), implement `BodyBytes` as the body they wrap, so
//! wrapping a foreign body is the one answer to both (see [`BodyBytes`] for the list of body
//! types that go through a preset).
//!
//! [`DefaultKey`]: crate::rate_limit::DefaultKey

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;

mod json;

pub(crate) use json::Inspected;
pub use json::{BodyInfo, IMAGE_TOKENS, inspect_json};

/// Bytes per input token assumed by the built-in estimators: a conservative (high-side) figure
/// for English text and JSON.
pub const DEFAULT_BYTES_PER_TOKEN: f64 = 3.5;

/// Output tokens reserved when a request does not state `max_tokens`.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;

/// Bytes per token used for a body whose text cannot be read, only its length: opaque bytes
/// (JSON syntax, base64) are cheaper per byte than text, so the size is divided by 3.
pub const OPAQUE_BYTES_PER_TOKEN: f64 = 3.0;

/// The cost of one request in every dimension a provider limits.
///
/// The combined-tokens dimension ([`Dimension::Tokens`](crate::signals::Dimension::Tokens)) is
/// charged `input_tokens + output_tokens`. Put a `Cost` in a request's extensions to state the
/// cost yourself (it is then taken as exact).
///
/// # Examples
///
/// ```
/// use tower_llm_limits::cost::Cost;
///
/// let cost = Cost::new(1, 1_200, 1_024);
/// assert_eq!(cost.tokens(), 2_224);
/// let mut req = http::Request::new(String::from("{}"));
/// req.extensions_mut().insert(cost);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cost {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
}

impl Cost {
    /// A cost of `requests` requests, `input_tokens` input tokens and `output_tokens` output
    /// tokens (reserved; usually the request's `max_tokens`).
    pub const fn new(requests: u64, input_tokens: u64, output_tokens: u64) -> Self {
        Cost {
            requests,
            input_tokens,
            output_tokens,
        }
    }

    /// Requests charged (normally 1).
    pub const fn requests(&self) -> u64 {
        self.requests
    }

    /// Input tokens charged.
    pub const fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// Output tokens reserved.
    pub const fn output_tokens(&self) -> u64 {
        self.output_tokens
    }

    /// Combined tokens: input plus output (saturating).
    pub const fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Sets the number of requests.
    pub const fn with_requests(mut self, requests: u64) -> Self {
        self.requests = requests;
        self
    }

    /// Sets the input tokens.
    pub const fn with_input_tokens(mut self, input_tokens: u64) -> Self {
        self.input_tokens = input_tokens;
        self
    }

    /// Sets the output tokens.
    pub const fn with_output_tokens(mut self, output_tokens: u64) -> Self {
        self.output_tokens = output_tokens;
        self
    }
}

/// The true token usage of a response: what the server counted against its limits.
///
/// The rate limiter settles each request's reservation to it and learns from it how the server
/// counts (see the [`rate_limit`](crate::rate_limit) docs). It comes from the answer's body —
/// [`ErrorBody`](crate::error_body::ErrorBody) (in every preset) reads the `usage` of JSON answers
/// as they pass to the caller ([`Usage::from_json`]) — or from a `Usage` the caller puts in the
/// **response's** extensions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    input_tokens: u64,
    output_tokens: u64,
}

impl Usage {
    /// A usage of `input_tokens` (as counted towards the input limit) and `output_tokens`.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
        }
    }

    /// Input tokens the server counted towards its input limit.
    pub const fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// Output tokens the server produced.
    pub const fn output_tokens(&self) -> u64 {
        self.output_tokens
    }

    /// The `usage` of a JSON answer: Anthropic's (`input_tokens` + `cache_creation_input_tokens`
    /// count towards the input limit; `cache_read_input_tokens` do not on current models) or
    /// OpenAI's (`prompt_tokens` / `input_tokens`, `completion_tokens` / `output_tokens`).
    /// `None` when the body is not such JSON or has no usage.
    ///
    /// ```
    /// use tower_llm_limits::cost::Usage;
    ///
    /// let body = br#"{"type":"message","content":[],
    ///     "usage":{"input_tokens":12,"cache_creation_input_tokens":100,
    ///              "cache_read_input_tokens":5000,"output_tokens":30}}"#;
    /// assert_eq!(Usage::from_json(body), Some(Usage::new(112, 30)));
    /// let openai = br#"{"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
    /// assert_eq!(Usage::from_json(openai), Some(Usage::new(9, 12)));
    /// assert_eq!(Usage::from_json(b"not json"), None);
    /// ```
    pub fn from_json(body: &[u8]) -> Option<Usage> {
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Option<UsageCounts>,
        }
        let counts = serde_json::from_slice::<Answer>(body).ok()?.usage?;
        Some(Usage::new(counts.input()?, counts.output()?))
    }
}

/// A `usage` object as Anthropic and OpenAI write it, every count optional: the one reading of
/// usage for answers ([`Usage::from_json`]) and stream events.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
pub(crate) struct UsageCounts {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    output_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl UsageCounts {
    /// Input counted towards the input limit: `input_tokens` (or `prompt_tokens`) plus
    /// `cache_creation_input_tokens`; cache reads do not count on current models.
    pub(crate) fn input(&self) -> Option<u64> {
        Some(
            self.input_tokens
                .or(self.prompt_tokens)?
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0)),
        )
    }

    /// Output tokens: `output_tokens` or `completion_tokens`.
    pub(crate) fn output(&self) -> Option<u64> {
        self.output_tokens.or(self.completion_tokens)
    }
}

/// Where a layer that reads an answer's body reports its [`Usage`] once the body has passed.
///
/// The rate limiter puts one in each request's extensions before calling the inner service;
/// [`ErrorBody`](crate::error_body::ErrorBody) takes it and reports the `usage` of a successful
/// JSON answer when the caller has read the body to its end. A layer of your own that reads
/// bodies (a streaming decoder, say) can take it instead and call [`report`](Self::report).
/// Reporting twice, or for a request the limiter no longer tracks, does nothing.
///
/// A stream states its input before its output: Anthropic's `message_start` carries the input
/// usage, the output comes with `message_delta` at the end. [`report_input`](Self::report_input)
/// settles the input reservation at once (the watcher of event streams calls it at
/// `message_start`), the output waiting for [`report`](Self::report).
#[derive(Clone)]
pub struct UsageReport {
    full: std::sync::Arc<dyn Fn(Usage) + Send + Sync>,
    input: Option<std::sync::Arc<dyn Fn(u64) + Send + Sync>>,
}

impl UsageReport {
    /// A report that calls `f` (and ignores an input reported alone).
    pub fn new(f: impl Fn(Usage) + Send + Sync + 'static) -> Self {
        UsageReport {
            full: std::sync::Arc::new(f),
            input: None,
        }
    }

    /// Calls `f` with the input tokens reported alone ([`report_input`](Self::report_input)).
    pub fn with_input(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.input = Some(std::sync::Arc::new(f));
        self
    }

    /// Reports the answer's usage.
    pub fn report(&self, usage: Usage) {
        (self.full)(usage)
    }

    /// Reports the input the server counted (as counted towards its input limit, cache writes
    /// included), before the output is known.
    pub fn report_input(&self, input_tokens: u64) {
        if let Some(f) = &self.input {
            f(input_tokens)
        }
    }
}

impl fmt::Debug for UsageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageReport").finish_non_exhaustive()
    }
}

/// Access to a request body's bytes without consuming it, for the estimators.
///
/// # What a request body must offer to go through a preset
///
/// The [presets](crate::preset) (and any stack with [`DefaultKey`](crate::rate_limit::DefaultKey)
/// or [`DefaultCost`]) need two things of a request body type `B`:
///
/// - **`BodyBytes`** (this trait), so the default key and cost can read the JSON body's `model`
///   and size. A body whose bytes are not at hand implements it with the defaults (both
///   methods return `None`): the request is then keyed [`RateLimitKey::global`](crate::rate_limit::RateLimitKey::global)
///   and charged the conservative default cost — or put a
///   [`RateLimitKey`](crate::rate_limit::RateLimitKey) and a [`Cost`] in its extensions.
/// - **[`ReplayBody`](crate::retry::ReplayBody)**, so the retry layer can send it again (or
///   know that it cannot).
///
/// Every body type this crate documents has both: `Full<Bytes>`, `Empty<Bytes>`, `Bytes`,
/// `String`, `Vec<u8>`, `&'static str`, `()`, and the wrappers
/// [`Replayable<B>`](crate::retry::Replayable) and [`SendOnce<B>`](crate::retry::SendOnce)
/// when `B: BodyBytes` (a streaming or boxed body goes through a preset as
/// `SendOnce<BoxBody<..>>`). The boxed bodies of `http-body-util` (`BoxBody`, `UnsyncBoxBody`)
/// implement `BodyBytes` (they say nothing but their length) and not `ReplayBody`: wrap them in
/// `SendOnce`. For a body type of your own, implement both traits (the orphan rule allows it
/// for your types; wrap a foreign type in `SendOnce`/`Replayable` or a newtype of yours).
///
/// When a body lacks one of them, rustc reports the *call* — "the method `oneshot` exists for
/// struct `Retry<…>`, but its trait bounds were not satisfied" (E0599), `Service<_>` not
/// implemented — without naming either trait: that error on a preset stack means the request
/// body type lacks `BodyBytes` or `ReplayBody`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `BodyBytes`: the default key and cost (and the presets) cannot read this request body",
    note = "implement `tower_llm_limits::cost::BodyBytes` for it (both methods default to `None`), or wrap the body in `retry::SendOnce` / `retry::Replayable`"
)]
pub trait BodyBytes {
    /// The whole body, when it is available without consuming the body (a cheap clone).
    fn body_bytes(&self) -> Option<Bytes> {
        None
    }

    /// The body's exact length, when known.
    fn exact_len(&self) -> Option<u64> {
        self.body_bytes().map(|b| b.len() as u64)
    }
}

impl BodyBytes for Bytes {
    fn body_bytes(&self) -> Option<Bytes> {
        Some(self.clone())
    }
}

impl BodyBytes for String {
    fn body_bytes(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self.as_bytes()))
    }
    fn exact_len(&self) -> Option<u64> {
        Some(self.len() as u64)
    }
}

impl BodyBytes for Vec<u8> {
    fn body_bytes(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self))
    }
    fn exact_len(&self) -> Option<u64> {
        Some(self.len() as u64)
    }
}

impl BodyBytes for &'static str {
    fn body_bytes(&self) -> Option<Bytes> {
        Some(Bytes::from_static(self.as_bytes()))
    }
}

impl BodyBytes for () {
    fn body_bytes(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

impl BodyBytes for http_body_util::Empty<Bytes> {
    fn body_bytes(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

impl BodyBytes for http_body_util::Full<Bytes> {
    fn body_bytes(&self) -> Option<Bytes> {
        use http_body::Body;
        // A `Full` holds its one frame in memory: a clone polled once with a no-op waker yields
        // it (or nothing, when the body is empty) without touching the original.
        let mut body = self.clone();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            Poll::Ready(None) => Some(Bytes::new()),
            _ => None,
        }
    }
    fn exact_len(&self) -> Option<u64> {
        http_body::Body::size_hint(self).exact()
    }
}

impl<E> BodyBytes for http_body_util::combinators::BoxBody<Bytes, E> {
    fn exact_len(&self) -> Option<u64> {
        http_body::Body::size_hint(self).exact()
    }
}

impl<E> BodyBytes for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {
    fn exact_len(&self) -> Option<u64> {
        http_body::Body::size_hint(self).exact()
    }
}

/// Works out the cost of a request before it is sent.
///
/// Implemented for closures `Fn(&Request<B>) -> Cost` (see [`cost_fn`]) and by [`DefaultCost`].
pub trait EstimateCost<B> {
    /// The estimated cost of `request`.
    fn estimate(&self, request: &Request<B>) -> Cost;

    /// The estimated cost of `request`, as the rate limiter asks for it: with the request
    /// mutable, so an implementation can read (or leave) what the key function already read in
    /// the request's extensions. The default calls [`estimate`](Self::estimate).
    fn estimate_mut(&self, request: &mut Request<B>) -> Cost {
        self.estimate(request)
    }
}

/// A cost function made from a closure; see [`cost_fn`].
#[derive(Clone, Copy)]
pub struct CostFn<F> {
    f: F,
}

impl<F> fmt::Debug for CostFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CostFn").finish_non_exhaustive()
    }
}

/// Makes a cost function from a closure.
///
/// # Examples
///
/// ```
/// use tower_llm_limits::cost::{Cost, EstimateCost, cost_fn};
///
/// // Every request: one request, 500 input tokens, 200 output tokens.
/// let f = cost_fn(|_req: &http::Request<String>| Cost::new(1, 500, 200));
/// assert_eq!(f.estimate(&http::Request::new(String::new())).input_tokens(), 500);
/// ```
pub fn cost_fn<B, F>(f: F) -> CostFn<F>
where
    F: Fn(&Request<B>) -> Cost,
{
    CostFn { f }
}

impl<B, F> EstimateCost<B> for CostFn<F>
where
    F: Fn(&Request<B>) -> Cost,
{
    fn estimate(&self, request: &Request<B>) -> Cost {
        (self.f)(request)
    }
}

/// The default cost: the built-in JSON estimator when the body can be read, else a conservative
/// default.
///
/// - With a body whose bytes are available ([`BodyBytes`]), an Anthropic
///   Messages or OpenAI chat / responses body is estimated by [`inspect_json`]: input = text bytes
///   (system, messages, tools, instructions) / [`DEFAULT_BYTES_PER_TOKEN`], images and documents
///   at a fixed [`IMAGE_TOKENS`] each; output = `max_tokens` / `max_completion_tokens` /
///   `max_output_tokens`.
/// - Otherwise: 1 request, input = the body's exact length / [`OPAQUE_BYTES_PER_TOKEN`] when it is
///   known (else 0), output = [`DEFAULT_OUTPUT_TOKENS`] (configurable with
///   [`output_tokens`](Self::output_tokens)).
#[derive(Clone, Copy, Debug)]
pub struct DefaultCost {
    output_tokens: u64,
    bytes_per_token: f64,
}

impl Default for DefaultCost {
    fn default() -> Self {
        DefaultCost::new()
    }
}

impl DefaultCost {
    /// The default estimator.
    pub const fn new() -> Self {
        DefaultCost {
            output_tokens: DEFAULT_OUTPUT_TOKENS,
            bytes_per_token: DEFAULT_BYTES_PER_TOKEN,
        }
    }

    /// Output tokens reserved for a request that does not state `max_tokens`.
    pub const fn output_tokens(mut self, output_tokens: u64) -> Self {
        self.output_tokens = output_tokens;
        self
    }

    /// Bytes per input token for text (default [`DEFAULT_BYTES_PER_TOKEN`]); values below 0.5
    /// are raised to 0.5.
    pub fn bytes_per_token(mut self, bytes_per_token: f64) -> Self {
        self.bytes_per_token = if bytes_per_token.is_finite() {
            bytes_per_token.max(0.5)
        } else {
            DEFAULT_BYTES_PER_TOKEN
        };
        self
    }

    /// Estimates the cost of a body given as bytes (read as JSON when it is a JSON object).
    pub fn estimate_bytes(&self, body: &[u8]) -> Cost {
        if let Some(scan) = json::scan(body) {
            return self.of_scan(&scan);
        }
        self.opaque(Some(body.len() as u64))
    }

    fn of_scan<M>(&self, scan: &json::Scan<M>) -> Cost {
        Cost::new(
            1,
            scan.input_tokens(self.bytes_per_token),
            scan.max_tokens.unwrap_or(self.output_tokens),
        )
    }

    fn opaque(&self, len: Option<u64>) -> Cost {
        let input = len.map_or(0, |l| (l as f64 / OPAQUE_BYTES_PER_TOKEN).ceil() as u64);
        Cost::new(1, input, self.output_tokens)
    }
}

impl<B: BodyBytes> EstimateCost<B> for DefaultCost {
    fn estimate(&self, request: &Request<B>) -> Cost {
        if let Some(inspected) = Inspected::get(request) {
            // The body's bytes were (or are now) read: JSON, or opaque bytes of a known length.
            return match inspected.scan() {
                Some(scan) => self.of_scan(scan),
                None => self.opaque(request.body().body_bytes().map(|b| b.len() as u64)),
            };
        }
        match request.body().body_bytes() {
            Some(bytes) => self.estimate_bytes(&bytes),
            None => self.opaque(request.body().exact_len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_body_bytes_read_without_consuming() {
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
        assert_eq!(body.body_bytes().unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(body.body_bytes().unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(body.exact_len(), Some(5));
    }

    #[test]
    fn opaque_default() {
        let c = DefaultCost::new().estimate(&Request::new(Vec::from(&b"not json at all"[..])));
        assert_eq!(c, Cost::new(1, 5, DEFAULT_OUTPUT_TOKENS));
        let c = DefaultCost::new().output_tokens(10).estimate(&Request::new(
            http_body_util::combinators::BoxBody::<Bytes, std::convert::Infallible>::default(),
        ));
        assert_eq!(c, Cost::new(1, 0, 10));
    }
}
