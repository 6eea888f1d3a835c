//! Response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Request, Response, request::Parts};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::error::{BudgetExhausted, DeadlineExceeded, LastAttempt, WaitTooLong};
use super::policy::{Attempt, Verdict};
use super::service::Shared;
use super::{Attempts, ReplayBody};
use crate::BoxError;
use crate::signals::{
    ApiError, Classify, Outcome, ResponseSignals, RetryHints, WaitAbsorbed, WaitSource,
};

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Waiting before the next attempt.
        Sleeping { #[pin] sleep: Sleep },
        // Waiting for the inner service to be ready for the next attempt.
        Readying,
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Retry`](super::Retry).
    ///
    /// Dropping it at any point cancels the call: the attempt in flight or the wait is dropped
    /// and nothing stays reserved (a budget withdrawal for a retry already decided is not
    /// refunded).
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // The request as it was made, kept to build the retries (`None`: not replayable).
        template: Option<(Parts, B)>,
        // The next attempt's request, built when the retry was decided.
        next: Option<Request<B>>,
        shared: Arc<Shared<C>>,
        rng: fastrand::Rng,
        attempts: u32,
        started: Instant,
        previous_backoff: Duration,
    }
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Calling { .. } => "calling",
            State::Sleeping { .. } => "sleeping",
            State::Readying => "readying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempts", &self.attempts)
            .field("replayable", &self.template.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
    B: ReplayBody,
{
    pub(crate) fn new(
        mut service: S,
        request: Request<B>,
        shared: Arc<Shared<C>>,
        rng: fastrand::Rng,
    ) -> Self {
        let (parts, body) = request.into_parts();
        let (request, template) = match body.replay() {
            Some(copy) => (
                Request::from_parts(parts.clone(), copy),
                Some((parts, body)),
            ),
            None => (Request::from_parts(parts, body), None),
        };
        let future = service.call(request);
        ResponseFuture {
            state: State::Calling { future },
            service,
            template,
            next: None,
            shared,
            rng,
            attempts: 1,
            started: Instant::now(),
            previous_backoff: Duration::ZERO,
        }
    }
}

/// Builds the request of retry number `retry` from the template, or `None` when the body cannot
/// be replayed.
fn rebuild<B: ReplayBody>(
    template: &Option<(Parts, B)>,
    header: Option<&http::HeaderName>,
    retry: u32,
) -> Option<Request<B>> {
    let (parts, body) = template.as_ref()?;
    let body = body.replay()?;
    let mut parts = parts.clone();
    if let Some(name) = header {
        parts.headers.insert(name.clone(), HeaderValue::from(retry));
    }
    Some(Request::from_parts(parts, body))
}

/// Classifies a response with `classifier`, reusing the retry hints a
/// [`Signals`](crate::signals::Signals) layer stored. Returns the outcome and the name of the
/// source of its wait.
fn classify_response<B, C: Classify>(
    response: &Response<B>,
    classifier: &C,
) -> (Outcome, &'static str) {
    let stored = response.extensions().get::<ResponseSignals>();
    let hints = match stored {
        Some(signals) => *signals.hints(),
        None => RetryHints::from_headers(response.headers()),
    };
    let outcome = classifier.classify_response(
        response.status(),
        response.headers(),
        &hints,
        response.extensions().get::<ApiError>(),
    );
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

impl<S, B, C, ResB> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    C: Classify,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let policy = &this.shared.policy;
                    let (outcome, hint_source, absorbed_until) = match &result {
                        Ok(response) => {
                            let (outcome, source) = classify_response(response, &policy.classifier);
                            let absorbed = response.extensions().get::<WaitAbsorbed>();
                            (outcome, source, absorbed.map(WaitAbsorbed::until))
                        }
                        Err(error) => (policy.classifier.classify_error(&**error), "", None),
                    };
                    let attempts = *this.attempts;
                    let attempt = Attempt {
                        outcome,
                        hint_source,
                        absorbed_until,
                        attempts,
                        started: *this.started,
                        previous_backoff: *this.previous_backoff,
                    };
                    let verdict = match policy.refusal(&outcome, attempts) {
                        Some(reason) => Verdict::Return(reason),
                        None => {
                            match rebuild(this.template, policy.attempt_header.as_ref(), attempts) {
                                None => Verdict::Return("body not replayable"),
                                Some(request) => {
                                    *this.next = Some(request);
                                    policy.schedule(&attempt, this.rng)
                                }
                            }
                        }
                    };
                    let status = outcome.status().map(|s| s.as_u16());
                    match verdict {
                        Verdict::Retry {
                            sleep,
                            wait,
                            backoff,
                            source,
                        } => {
                            tracing::debug!(
                                attempt = attempts + 1,
                                reason = outcome.kind().as_str(),
                                status,
                                wait_ms = wait.as_millis() as u64,
                                sleep_ms = sleep.as_millis() as u64,
                                source,
                                "retrying"
                            );
                            *this.attempts += 1;
                            if !backoff.is_zero() {
                                *this.previous_backoff = backoff;
                            }
                            if sleep.is_zero() {
                                this.state.set(State::Readying);
                            } else {
                                this.state.set(State::Sleeping {
                                    sleep: tokio::time::sleep(sleep),
                                });
                            }
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
                            return Poll::Ready(result.map(|mut response| {
                                response.extensions_mut().insert(Attempts::new(attempts));
                                response
                            }));
                        }
                        ending => {
                            *this.next = None;
                            let now = Instant::now();
                            let server_wait =
                                outcome.retry_after().or(absorbed_until
                                    .map(|until| until.saturating_duration_since(now)));
                            let (api_error, error) = match result {
                                Ok(response) => {
                                    (response.extensions().get::<ApiError>().cloned(), None)
                                }
                                Err(error) => (None, Some(error)),
                            };
                            let last = LastAttempt {
                                status: outcome.status(),
                                server_wait,
                                attempts,
                                api_error,
                                error,
                            };
                            let error: BoxError = match ending {
                                Verdict::WaitTooLong => {
                                    Box::new(WaitTooLong::new(last, policy.max_server_wait))
                                }
                                Verdict::Deadline { wait } => Box::new(DeadlineExceeded::new(
                                    last,
                                    policy.deadline.unwrap_or_default(),
                                    wait,
                                )),
                                _ => Box::new(BudgetExhausted::new(last)),
                            };
                            tracing::info!(
                                attempts,
                                reason = outcome.kind().as_str(),
                                status,
                                server_wait_ms = server_wait.map(|w| w.as_millis() as u64),
                                "giving up: {error}"
                            );
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = this.next.take() else {
                        return Poll::Ready(Err("retry: polled after completion".into()));
                    };
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
