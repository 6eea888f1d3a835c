//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use crate::BoxError;
use crate::cost::Usage;
use crate::signals::{ResponseSignals, WaitAbsorbed};

use super::state::{Admission, Ticket};

pin_project_lite::pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): waits for admission, then drives the
    /// inner service's readiness and calls it, then learns from the response.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        #[pin]
        sleep: Option<Sleep>,
        service: Option<S>,
        request: Option<Req>,
        ticket: Option<Ticket>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Waiting,
        Ready,
        Calling { #[pin] fut: F },
        Failed { error: Option<BoxError> },
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Waiting => "waiting",
            State::Ready => "ready",
            State::Calling { .. } => "calling",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(ticket: Ticket, service: S, request: Req) -> Self {
        let state = if ticket.is_admitted() {
            State::Ready
        } else {
            State::Waiting
        };
        ResponseFuture {
            state,
            sleep: None,
            service: Some(service),
            request: Some(request),
            ticket: Some(ticket),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            sleep: None,
            service: None,
            request: None,
            ticket: None,
        }
    }
}

impl<S, Req, B> Future for ResponseFuture<S, Req>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "rate limit: future polled after completion".into())));
                }
                StateProj::Waiting => {
                    let Some(ticket) = this.ticket.as_mut() else {
                        return Poll::Ready(Err(
                            "rate limit: future polled after completion".into()
                        ));
                    };
                    match ticket.poll_admit(cx.waker()) {
                        Admission::Admitted => this.state.set(State::Ready),
                        Admission::Failed(e) => {
                            *this.ticket = None;
                            this.state.set(State::Failed { error: None });
                            return Poll::Ready(Err(e));
                        }
                        Admission::Wait(None) => return Poll::Pending,
                        Admission::Wait(Some(at)) => {
                            match this.sleep.as_mut().as_pin_mut() {
                                Some(s) => {
                                    if s.deadline() != at {
                                        s.reset(at);
                                    }
                                }
                                None => this.sleep.set(Some(sleep_until(at))),
                            }
                            if let Some(s) = this.sleep.as_mut().as_pin_mut() {
                                ready!(s.poll(cx));
                            }
                            if Instant::now() < at {
                                return Poll::Pending;
                            }
                        }
                    }
                }
                StateProj::Ready => {
                    let Some(service) = this.service.as_mut() else {
                        return Poll::Ready(Err(
                            "rate limit: future polled after completion".into()
                        ));
                    };
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        // Never sent: the ticket's drop gives back the whole charge.
                        *this.ticket = None;
                        this.state.set(State::Failed { error: None });
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(request) = this.request.take() else {
                        return Poll::Ready(Err(
                            "rate limit: future polled after completion".into()
                        ));
                    };
                    if let Some(t) = this.ticket.as_mut() {
                        t.dispatched();
                    }
                    let fut = service.call(request);
                    *this.service = None;
                    this.sleep.set(None);
                    this.state.set(State::Calling { fut });
                }
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx));
                    let mut ticket = this.ticket.take();
                    this.state.set(State::Failed { error: None });
                    return Poll::Ready(match result {
                        Ok(mut response) => {
                            if let Some(t) = ticket.as_mut() {
                                let usage = response.extensions().get::<Usage>().copied();
                                let absorbed = t.complete(&ResponseSignals::of(&response), usage);
                                if let Some(until) = absorbed {
                                    response.extensions_mut().insert(WaitAbsorbed::new(until));
                                }
                            }
                            Ok(response)
                        }
                        // The ticket's drop keeps the request and input charge (the server may
                        // have seen it) and gives back the output reservation.
                        Err(e) => Err(e.into()),
                    });
                }
            }
        }
    }
}
