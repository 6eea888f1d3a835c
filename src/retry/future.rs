//! Response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response, request::Parts};
use tokio::time::Sleep;
use tower_service::Service;

use super::error::{BodyNotReplayable, LastAttempt};
use super::policy::{CallState, Next};
use super::service::Shared;
use super::{ReplayBody, ReplayRefused};
use crate::BoxError;
use crate::error::PolledAfterCompletion;
use crate::signals::{ApiError, Classify};

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Waiting before the next attempt (boxed: a retry is rare, and the timer would double
        // the size of every call's future).
        Sleeping { sleep: Pin<Box<Sleep>> },
        // Waiting for the inner service to be ready for the next attempt.
        Readying,
        // The call's result was returned.
        Done,
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
        // The next attempt's request, built when the retry was decided (boxed: rare, and large).
        next: Option<Box<Request<B>>>,
        shared: Arc<Shared<C>>,
        rng: fastrand::Rng,
        call: CallState,
        // The call's `llm_call` span, entered while the future is polled.
        span: tracing::Span,
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
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempts", &self.call.attempts)
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
        span: tracing::Span,
    ) -> Self {
        let call = CallState::start(request.extensions());
        let (parts, body) = request.into_parts();
        let (request, template) = match body.replay() {
            Some(copy) => (
                Request::from_parts(parts.clone(), copy),
                Some((parts, body)),
            ),
            None => (Request::from_parts(parts, body), None),
        };
        let future = span.in_scope(|| service.call(request));
        ResponseFuture {
            state: State::Calling { future },
            service,
            template,
            next: None,
            shared,
            rng,
            call,
            span,
        }
    }
}

/// Builds the request of retry number `retry` from the template, or `None` when the body cannot
/// be replayed.
fn rebuild<B: ReplayBody>(
    template: &Option<(Parts, B)>,
    header: Option<&http::HeaderName>,
    retry: u32,
) -> Result<Option<Request<B>>, ReplayRefused> {
    let Some((parts, body)) = template.as_ref() else {
        return Ok(None);
    };
    let Some(body) = body.try_replay()? else {
        return Ok(None);
    };
    let mut parts = parts.clone();
    if let Some(name) = header {
        parts.headers.insert(name.clone(), HeaderValue::from(retry));
    }
    Ok(Some(Request::from_parts(parts, body)))
}

/// The call's end when the body refused to be copied for a retry that was wanted.
fn refused<T>(result: Result<Response<T>, BoxError>, reason: ReplayRefused) -> BoxError {
    let attempts = match &result {
        Ok(response) => response
            .extensions()
            .get::<super::Attempts>()
            .map_or(1, |a| a.get()),
        Err(_) => 1,
    };
    let last = match result {
        Ok(response) => LastAttempt {
            status: Some(response.status()),
            server_wait: crate::signals::ResponseSignals::of(&response)
                .hints()
                .retry_after(),
            attempts,
            api_error: response.extensions().get::<ApiError>().cloned(),
            error: None,
        },
        Err(error) => LastAttempt {
            attempts,
            error: Some(error),
            ..LastAttempt::default()
        },
    };
    tracing::warn!(
        reason = reason.reason(),
        "retry: request body not replayable"
    );
    Box::new(BodyNotReplayable::new(last, reason))
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
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let policy = &this.shared.policy;
                    let (template, next) = (&*this.template, &mut *this.next);
                    let mut refusal = None;
                    let prepare = |retry| {
                        match rebuild(template, policy.attempt_header.as_ref(), retry) {
                            Ok(request) => *next = request.map(Box::new),
                            Err(reason) => refusal = Some(reason),
                        }
                        next.is_some()
                    };
                    match policy.after_attempt(result, this.call, this.rng, prepare) {
                        Next::Done(result) => {
                            *this.next = None;
                            this.state.set(State::Done);
                            return Poll::Ready(match refusal {
                                Some(reason) => Err(refused(result, reason)),
                                None => result,
                            });
                        }
                        Next::Retry(sleep) => {
                            this.span.record("attempt", this.call.attempts);
                            if sleep.is_zero() {
                                this.state.set(State::Readying);
                            } else {
                                this.state.set(State::Sleeping {
                                    sleep: Box::pin(tokio::time::sleep(sleep)),
                                });
                            }
                        }
                    }
                }
                StateProj::Done => {
                    return Poll::Ready(Err(PolledAfterCompletion::boxed("retry")));
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = this.next.take() else {
                        return Poll::Ready(Err(PolledAfterCompletion::boxed("retry")));
                    };
                    let future = this.service.call(*request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
