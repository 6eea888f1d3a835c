//! The retry policy: what is retried, how long to wait, and when to give up.

use std::time::Duration;

use http::{HeaderName, Response};
use tokio::time::Instant;

use super::error::{BudgetExhausted, DeadlineExceeded, LastAttempt, ServerWaitTooLong};
use super::{Backoff, Budget};
use crate::BoxError;
use crate::breaker::FailFast;
use crate::breaker::error::Open;
use crate::rate_limit::WaitAbsorbed;
use crate::signals::{
    ApiError, Classify, DefaultClassifier, Outcome, OutcomeKind, ResponseSignals, RetryHints,
    WaitSource,
};

/// The header the official SDKs send on retries.
pub const SDK_ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-stainless-retry-count");

/// The ceiling on a server-dictated wait of [`Policy::new`] (and the [generic
/// preset](crate::preset::generic)): 60 s. No SDK to match here; the figure the Anthropic Python
/// SDK up to 1.5 and openai-node used.
pub const DEFAULT_MAX_SERVER_WAIT: Duration = Duration::from_secs(60);

/// The ceiling on a server-dictated wait of [`Policy::anthropic`]: 2³² − 1 ms, about 49.7 days.
///
/// The current Anthropic SDKs (Python ≥ 1.6, TypeScript, Go, Java) honour any positive
/// `retry-after`/`retry-after-ms`, bounded only by what their platform's `sleep` accepts; this is
/// that bound. The parsed hint itself never exceeds [`MAX_RETRY_AFTER`](crate::signals::MAX_RETRY_AFTER),
/// the same figure.
pub const ANTHROPIC_MAX_SERVER_WAIT: Duration = Duration::from_millis(u32::MAX as u64);

/// The ceiling on a server-dictated wait of [`Policy::openai`]: 120 s. openai-python honours
/// `retry-after` up to 120 s and does not retry above it; so does the policy, ending the call
/// with [`ServerWaitTooLong`](super::error::ServerWaitTooLong), which states the server's wait.
pub const OPENAI_MAX_SERVER_WAIT: Duration = Duration::from_secs(120);

/// The default longest single wait for an open circuit breaker: 60 s.
pub const DEFAULT_MAX_BREAKER_WAIT: Duration = Duration::from_secs(60);

/// A call's waits for an open breaker add up to at most this many times
/// [`Policy::max_breaker_wait`].
const BREAKER_WAITS_PER_CALL: u32 = 10;

/// How many attempts a call took, first one included. The [`Retry`](super::Retry) layer stores
/// it in the extensions of every response it returns; its errors carry the same count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempts(u32);

impl Attempts {
    pub(crate) fn new(n: u32) -> Self {
        Attempts(n)
    }

    /// The number of attempts.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// The configuration of the [`Retry`](super::Retry) layer.
///
/// The defaults are the official SDKs' (2 retries, [`Backoff::sdk`], a zero or past
/// `retry-after` treated as absent) plus what the SDKs lack: a [`Budget`] and an optional
/// deadline. The ceiling on a server-dictated wait depends on the constructor:
///
/// | constructor | honoured `retry-after` / `retry-after-ms` | above it | matches |
/// |---|---|---|---|
/// | [`Policy::anthropic`] | any positive wait, up to [`ANTHROPIC_MAX_SERVER_WAIT`] (≈ 49.7 days) | [`ServerWaitTooLong`](super::error::ServerWaitTooLong) | anthropic-python ≥ 1.6, Anthropic TS/Go/Java |
/// | [`Policy::openai`] | up to [`OPENAI_MAX_SERVER_WAIT`] (120 s) | [`ServerWaitTooLong`](super::error::ServerWaitTooLong), no retry | openai-python |
/// | [`Policy::new`] | up to [`DEFAULT_MAX_SERVER_WAIT`] (60 s) | [`ServerWaitTooLong`](super::error::ServerWaitTooLong) | — (the generic preset) |
///
/// With a [`deadline`](Self::deadline) no wait goes past it: a retry that could not start
/// before the deadline is not waited for, the call ends at once with
/// [`DeadlineExceeded`](super::error::DeadlineExceeded) (which carries the server's wait).
///
/// A policy built with [`Policy::new`] owns a fresh [`Budget`]: every service made from it (all
/// clones of the layer and of the services) shares that budget, and a second `Policy::new()`
/// has its own. To share one budget between separately built layers, create it once and pass a
/// clone of the handle to each with [`budget`](Self::budget).
#[derive(Clone, Debug)]
pub struct Policy<C = DefaultClassifier> {
    pub(crate) max_retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_server_wait: Duration,
    pub(crate) max_breaker_wait: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_header: Option<HeaderName>,
    pub(crate) budget: Option<Budget>,
    pub(crate) classifier: C,
    pub(crate) seed: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new()
    }
}

impl Policy {
    /// The SDK defaults with the [`DefaultClassifier`], a fresh [`Budget::default`] and a 60 s
    /// ceiling on a server-dictated wait ([`DEFAULT_MAX_SERVER_WAIT`]).
    pub fn new() -> Self {
        Policy {
            max_retries: 2,
            backoff: Backoff::sdk(),
            max_server_wait: DEFAULT_MAX_SERVER_WAIT,
            max_breaker_wait: DEFAULT_MAX_BREAKER_WAIT,
            deadline: None,
            attempt_header: None,
            budget: Some(Budget::default()),
            classifier: DefaultClassifier::new(),
            seed: None,
        }
    }

    /// [`Policy::new`] with the Anthropic SDKs' ceiling: any positive server wait is honoured
    /// (up to [`ANTHROPIC_MAX_SERVER_WAIT`]). The [Anthropic preset](crate::preset::anthropic)'s
    /// policy.
    pub fn anthropic() -> Self {
        Policy::new().max_server_wait(ANTHROPIC_MAX_SERVER_WAIT)
    }

    /// [`Policy::new`] with openai-python's ceiling: a server wait up to 120 s is honoured, a
    /// longer one is not retried ([`ServerWaitTooLong`](super::error::ServerWaitTooLong)). The
    /// [OpenAI preset](crate::preset::openai)'s policy.
    pub fn openai() -> Self {
        Policy::new().max_server_wait(OPENAI_MAX_SERVER_WAIT)
    }
}

impl<C> Policy<C> {
    /// How many retries a call may make after its first attempt (default 2, as the SDKs).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The backoff used when the server gives no wait (default [`Backoff::sdk`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest server-dictated wait the layer honours (60 s for [`Policy::new`], see the
    /// table above for the provider constructors). A longer `retry-after` ends the call at once
    /// with [`ServerWaitTooLong`](super::error::ServerWaitTooLong), which states the server's wait.
    ///
    /// The SDKs differ here: the current Anthropic SDKs (Python ≥ 1.6, TS, Go, Java) wait
    /// whatever positive time the server says, openai-python honours up to 120 s and does not
    /// retry above it, anthropic-python ≤ 1.5 and openai-node honoured up to 60 s and fell back
    /// to their backoff above it. This layer never falls back silently: waiting less than the
    /// server asked only earns another 429, so above the ceiling the caller gets the figure and
    /// decides.
    pub fn max_server_wait(mut self, ceiling: Duration) -> Self {
        self.max_server_wait = ceiling;
        self
    }

    /// The longest single wait for an open [circuit breaker](crate::breaker) below to let a call
    /// through (default 60 s, as [`max_server_wait`](Self::max_server_wait)); zero never waits.
    ///
    /// When the breaker refuses an attempt with [`breaker::error::Open`](crate::breaker::error::Open),
    /// the layer waits until the breaker probes again (plus a jitter of up to a tenth of the
    /// wait, at most 1 s, so that waiting calls do not all arrive at once), or — when the breaker
    /// is half-open and its probe slots are taken — a [`backoff`](Self::backoff) delay, and
    /// sends the call again. Such a wait spends neither a retry nor retry budget: the refused
    /// attempt never reached the server. A wait longer than this, one that would take the
    /// call's waits for the breaker past ten times this in all (10 minutes by default, the
    /// SDKs' default request timeout), or one past the [`deadline`](Self::deadline) is not
    /// started: the refusal is returned as it is, at once. Since the breaker's open duration
    /// grows with each failed probe (10, 20, 30, 40 s by default), a sustained outage ends the
    /// wait after a few probes. A request carrying
    /// [`breaker::FailFast`](crate::breaker::FailFast) is never held.
    pub fn max_breaker_wait(mut self, ceiling: Duration) -> Self {
        self.max_breaker_wait = ceiling;
        self
    }

    /// An overall deadline per call, from the moment it is made, for all attempts and waits: a
    /// retry that could not start before it is not attempted and the call ends with
    /// [`DeadlineExceeded`](super::error::DeadlineExceeded). An attempt in flight is not cut
    /// short (put a timeout layer below for that).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sends the number of retries made so far (`1`, `2`, …) in header `name` on each retry;
    /// the first attempt goes out unchanged. Off by default.
    pub fn attempt_header(mut self, name: HeaderName) -> Self {
        self.attempt_header = Some(name);
        self
    }

    /// [`attempt_header`](Self::attempt_header) with the SDKs' `x-stainless-retry-count`.
    pub fn sdk_attempt_header(self) -> Self {
        self.attempt_header(SDK_ATTEMPT_HEADER)
    }

    /// Uses `budget`, shared with every other holder of a clone of the handle.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only [`max_retries`](Self::max_retries) bounds the retries.
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Seeds the random source of the jitter, for reproducible runs and tests. The n-th call
    /// (counting from 0) through any service made from this policy draws its jitter from
    /// `fastrand::Rng::with_seed(seed.wrapping_add(n))`. Unseeded (the default), each call
    /// gets a randomly seeded source.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Classifies responses and errors with `classifier` instead of the
    /// [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> Policy<C2> {
        Policy {
            max_retries: self.max_retries,
            backoff: self.backoff,
            max_server_wait: self.max_server_wait,
            max_breaker_wait: self.max_breaker_wait,
            deadline: self.deadline,
            attempt_header: self.attempt_header,
            budget: self.budget,
            classifier,
            seed: self.seed,
        }
    }

    /// The retry budget, if any.
    pub fn get_budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// The classifier.
    pub fn get_classifier(&self) -> &C {
        &self.classifier
    }

    /// Why an attempt that ended with `outcome` is not retried, or `None` when a retry is wanted.
    pub(crate) fn refusal(&self, outcome: &Outcome, attempts: u32) -> Option<&'static str> {
        if matches!(
            outcome.kind(),
            OutcomeKind::Success | OutcomeKind::Rejected | OutcomeKind::SpendLimit
        ) || !outcome.is_retryable()
        {
            Some("not retryable")
        } else if attempts > self.max_retries {
            Some("retries used up")
        } else {
            None
        }
    }

    /// Schedules the retry [`refusal`](Self::refusal) wanted: the wait, or the reason the layer
    /// ends the call (ceiling, deadline, budget).
    pub(crate) fn schedule(&self, attempt: &Attempt, rng: &mut fastrand::Rng) -> Verdict {
        let outcome = &attempt.outcome;
        let now = Instant::now();
        // A zero or past wait (`retry-after: 0`, `retry-after-ms: 0`, an HTTP-date at or before
        // `date`) counts as no wait, as in every SDK: the backoff applies. So does a pacing
        // layer's pause that is already over.
        let absorbed = attempt
            .absorbed_until
            .map(|until| until.saturating_duration_since(now))
            .filter(|wait| !wait.is_zero());
        let hinted = outcome.retry_after().filter(|wait| !wait.is_zero());
        let server_wait = hinted.or(absorbed);
        if let Some(wait) = server_wait
            && wait > self.max_server_wait
        {
            return Verdict::ServerWaitTooLong;
        }
        let (sleep, backoff, source) = match (absorbed, hinted) {
            (Some(_), _) => (Duration::ZERO, Duration::ZERO, "absorbed"),
            (None, Some(wait)) => (wait, Duration::ZERO, attempt.hint_source),
            (None, None) => {
                let retries = attempt.attempts - 1;
                let wait = self.backoff.delay(retries, attempt.previous_backoff, rng);
                (wait, wait, "backoff")
            }
        };
        let wait = server_wait.unwrap_or(sleep);
        if let Some(deadline) = self.deadline
            && past_deadline(now, wait, attempt.started, deadline)
        {
            return Verdict::Deadline { wait };
        }
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            return Verdict::Budget;
        }
        Verdict::Retry {
            sleep,
            wait,
            backoff,
            source,
        }
    }
}

/// Whether a wait of `wait` from `now` reaches the deadline `deadline` after `started`.
/// Saturating: a deadline or wait too large for the clock is never reached / always reached.
fn past_deadline(now: Instant, wait: Duration, started: Instant, deadline: Duration) -> bool {
    match (now.checked_add(wait), started.checked_add(deadline)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(at), Some(end)) => at >= end,
    }
}

/// What the future knows about the attempt that just ended.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) outcome: Outcome,
    /// Where the outcome's `retry_after` came from (for tracing).
    pub(crate) hint_source: &'static str,
    pub(crate) absorbed_until: Option<Instant>,
    pub(crate) attempts: u32,
    pub(crate) started: Instant,
    pub(crate) previous_backoff: Duration,
}

/// What follows an attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand the result back as it is.
    Return(&'static str),
    /// Retry after sleeping `sleep` (zero when a pacing layer below absorbed the wait).
    Retry {
        sleep: Duration,
        /// The wait the retry will really see (the server's, or `sleep`).
        wait: Duration,
        /// The backoff drawn (zero when the wait came from elsewhere).
        backoff: Duration,
        source: &'static str,
    },
    /// The server's wait is above the ceiling.
    ServerWaitTooLong,
    /// The retry could not start before the deadline.
    Deadline { wait: Duration },
    /// The budget is spent.
    Budget,
}

/// The state of one call across its attempts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallState {
    pub(crate) started: Instant,
    /// Attempts made so far, the one that just ended included (attempts an open circuit
    /// breaker refused and the layer waited out are not counted).
    pub(crate) attempts: u32,
    pub(crate) previous_backoff: Duration,
    /// The request carries [`FailFast`]: never wait for an open breaker.
    pub(crate) fail_fast: bool,
    /// Breaker refusals waited out so far, and the time spent waiting for them.
    pub(crate) breaker_waits: u32,
    pub(crate) breaker_waited: Duration,
}

impl CallState {
    /// The state of a call made with a request whose extensions are `extensions`.
    pub(crate) fn start(extensions: &http::Extensions) -> Self {
        CallState {
            started: Instant::now(),
            attempts: 1,
            previous_backoff: Duration::ZERO,
            fail_fast: extensions.get::<FailFast>().is_some(),
            breaker_waits: 0,
            breaker_waited: Duration::ZERO,
        }
    }
}

/// The circuit breaker's refusal in `error` or its sources.
fn breaker_refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Open> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(open) = e.downcast_ref::<Open>() {
            return Some(open);
        }
        current = e.source();
    }
    None
}

/// What follows an attempt, as [`Policy::after_attempt`] decided.
#[derive(Debug)]
pub(crate) enum Next<T> {
    /// Return this to the caller.
    Done(Result<Response<T>, BoxError>),
    /// Sleep this long, then send the next attempt.
    Retry(Duration),
}

/// The outcome of a response ([`ResponseSignals::outcome_or`]: what a
/// [`Signals`](crate::signals::Signals) layer stored, else `classifier`'s reading) and the name
/// of the source of its wait.
fn classify_response<B, C: Classify>(
    response: &Response<B>,
    classifier: &C,
) -> (Outcome, &'static str) {
    let hints = match response.extensions().get::<ResponseSignals>() {
        Some(signals) => *signals.hints(),
        None => RetryHints::from_headers(response.headers()),
    };
    let outcome = ResponseSignals::outcome_or(response, classifier);
    let source = if outcome.retry_after() != hints.retry_after() {
        "classifier"
    } else {
        match hints.source() {
            Some(WaitSource::RetryAfterMs) => "retry-after-ms",
            Some(WaitSource::RetryAfterSeconds) => "retry-after",
            Some(WaitSource::RetryAfterDate) => "retry-after-date",
            _ => "classifier",
        }
    };
    (outcome, source)
}

impl<C> Policy<C> {
    /// How long to wait before sending the call again after the breaker's refusal `open`, or
    /// `None` when the refusal goes back to the caller.
    fn breaker_wait(
        &self,
        open: &Open,
        call: &CallState,
        rng: &mut fastrand::Rng,
    ) -> Option<Duration> {
        if call.fail_fast || self.max_breaker_wait.is_zero() {
            return None;
        }
        let wait = if open.is_half_open() {
            // A probe slot frees up when a probe ends, which cannot be known: back off.
            self.backoff.delay(call.breaker_waits, Duration::ZERO, rng)
        } else {
            let until = open.retry_after();
            let spread = (until / 10).min(Duration::from_secs(1));
            until.saturating_add(spread.mul_f64(rng.f64()))
        };
        let total = self.max_breaker_wait.saturating_mul(BREAKER_WAITS_PER_CALL);
        if wait > self.max_breaker_wait || call.breaker_waited.saturating_add(wait) > total {
            return None;
        }
        if let Some(deadline) = self.deadline
            && past_deadline(Instant::now(), wait, call.started, deadline)
        {
            return None;
        }
        Some(wait)
    }
}

impl<C: Classify> Policy<C> {
    /// Decides what follows the attempt that ended with `result`, updating `call` when it is
    /// retried. `prepare` builds the next request and says whether it could (`false`: the body
    /// cannot be replayed); it runs only when a retry is wanted.
    pub(crate) fn after_attempt<T>(
        &self,
        result: Result<Response<T>, BoxError>,
        call: &mut CallState,
        rng: &mut fastrand::Rng,
        prepare: impl FnOnce(u32) -> bool,
    ) -> Next<T> {
        // Called at most once: after a breaker refusal that could not be replayed, the body is
        // known not to be replayable.
        let mut prepare = Some(prepare);
        let mut prepare = |retry| prepare.take().is_some_and(|prepare| prepare(retry));
        if let Err(error) = &result
            && let Some(open) = breaker_refusal(&**error)
        {
            match self.breaker_wait(open, call, rng) {
                // The refused attempt never left: it is sent again with the same retry number.
                Some(wait) if prepare(call.attempts - 1) => {
                    tracing::debug!(
                        attempt = call.attempts,
                        key = open.key().unwrap_or("*"),
                        half_open = open.is_half_open(),
                        wait_ms = wait.as_millis() as u64,
                        waited_ms = call.breaker_waited.as_millis() as u64,
                        "waiting for the circuit breaker"
                    );
                    call.breaker_waits = call.breaker_waits.saturating_add(1);
                    call.breaker_waited = call.breaker_waited.saturating_add(wait);
                    return Next::Retry(wait);
                }
                _ => tracing::debug!(
                    attempts = call.attempts,
                    key = open.key().unwrap_or("*"),
                    waited_ms = call.breaker_waited.as_millis() as u64,
                    "circuit breaker open: not waiting"
                ),
            }
        }
        let (outcome, hint_source, absorbed_until) = match &result {
            Ok(response) => {
                let (outcome, source) = classify_response(response, &self.classifier);
                let absorbed = response.extensions().get::<WaitAbsorbed>();
                (outcome, source, absorbed.map(WaitAbsorbed::until))
            }
            Err(error) => (self.classifier.classify_error(&**error), "", None),
        };
        let attempts = call.attempts;
        let attempt = Attempt {
            outcome,
            hint_source,
            absorbed_until,
            attempts,
            started: call.started,
            previous_backoff: call.previous_backoff,
        };
        let verdict = match self.refusal(&outcome, attempts) {
            Some(reason) => Verdict::Return(reason),
            None if !prepare(attempts) => Verdict::Return("body not replayable"),
            None => self.schedule(&attempt, rng),
        };
        let status = outcome.status().map(|s| s.as_u16());
        let ending = match verdict {
            Verdict::Retry {
                sleep,
                wait,
                backoff,
                source,
            } => {
                tracing::info!(
                    attempt = attempts.saturating_add(1),
                    reason = outcome.kind().as_str(),
                    status,
                    wait_ms = wait.as_millis() as u64,
                    sleep_ms = sleep.as_millis() as u64,
                    source,
                    "retrying"
                );
                crate::observe::emit::retry(outcome.kind().as_str(), source);
                call.attempts = call.attempts.saturating_add(1);
                if !backoff.is_zero() {
                    call.previous_backoff = backoff;
                }
                return Next::Retry(sleep);
            }
            Verdict::Return(reason) => {
                if !outcome.is_success() {
                    tracing::debug!(
                        attempts,
                        reason = outcome.kind().as_str(),
                        status,
                        why = reason,
                        "not retrying"
                    );
                }
                crate::observe::emit::call_done(outcome.kind().as_str(), attempts);
                return Next::Done(result.map(|mut response| {
                    response
                        .extensions_mut()
                        .insert(super::Attempts::new(attempts));
                    response
                }));
            }
            ending => ending,
        };
        let now = Instant::now();
        let server_wait = outcome
            .retry_after()
            .filter(|w| !w.is_zero())
            .or(absorbed_until
                .map(|until| until.saturating_duration_since(now))
                .filter(|w| !w.is_zero()));
        let (api_error, error) = match result {
            Ok(response) => (response.extensions().get::<ApiError>().cloned(), None),
            Err(error) => (None, Some(error)),
        };
        let last = LastAttempt {
            status: outcome.status(),
            server_wait,
            attempts,
            api_error,
            error,
        };
        let (error, why): (BoxError, _) = match ending {
            Verdict::ServerWaitTooLong => (
                Box::new(ServerWaitTooLong::new(last, self.max_server_wait)),
                "wait_too_long",
            ),
            Verdict::Deadline { wait } => (
                Box::new(DeadlineExceeded::new(
                    last,
                    self.deadline.unwrap_or_default(),
                    wait,
                )),
                "deadline",
            ),
            _ => (Box::new(BudgetExhausted::new(last)), "budget"),
        };
        tracing::info!(
            attempts,
            reason = outcome.kind().as_str(),
            status,
            server_wait_ms = server_wait.map(|w| w.as_millis() as u64),
            why,
            error = %error,
            "giving up"
        );
        crate::observe::emit::retry_gave_up(why);
        crate::observe::emit::call_done(outcome.kind().as_str(), attempts);
        Next::Done(Err(error))
    }
}
