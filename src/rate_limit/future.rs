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
use crate::error::PolledAfterCompletion;
use crate::signals::ResponseSignals;
use crate::signals::stream::is_event_stream;

use super::WaitAbsorbed;
use super::state::{Admission, Ticket};

pin_project_lite::pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): waits for admission, then drives the
    /// inner service's readiness and calls it, then learns from the response.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, S::Future>,
        // The admission timer, boxed: only a request that has to wait needs one, and inline it
        // would grow every call's future.
        sleep: Option<Pin<Box<Sleep>>>,
        ticket: Option<Ticket>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, Req, F> {
        // Before the call: waiting for admission (`admitted: false`), then for the inner
        // service's readiness. The service and the request leave together, into the call.
        Pending { admitted: bool, call: Option<(S, Req)> },
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
            State::Pending {
                admitted: false, ..
            } => "waiting",
            State::Pending { admitted: true, .. } => "ready",
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
        ResponseFuture {
            state: State::Pending {
                admitted: ticket.is_admitted(),
                call: Some((service, request)),
            },
            sleep: None,
            ticket: Some(ticket),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            sleep: None,
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
                        .unwrap_or_else(|| PolledAfterCompletion::boxed("rate limit"))));
                }
                StateProj::Pending {
                    admitted: admitted @ false,
                    ..
                } => {
                    let Some(ticket) = this.ticket.as_mut() else {
                        return Poll::Ready(Err(PolledAfterCompletion::boxed("rate limit")));
                    };
                    match ticket.poll_admit(cx.waker()) {
                        Admission::Admitted => *admitted = true,
                        Admission::Failed(e) => {
                            *this.ticket = None;
                            this.state.set(State::Failed { error: None });
                            return Poll::Ready(Err(e));
                        }
                        Admission::Wait(None) => return Poll::Pending,
                        Admission::Wait(Some(at)) => {
                            let s = this.sleep.get_or_insert_with(|| Box::pin(sleep_until(at)));
                            if s.deadline() != at {
                                s.as_mut().reset(at);
                            }
                            ready!(s.as_mut().poll(cx));
                            if Instant::now() < at {
                                return Poll::Pending;
                            }
                        }
                    }
                }
                StateProj::Pending { call, .. } => {
                    let Some((service, _)) = call.as_mut() else {
                        return Poll::Ready(Err(PolledAfterCompletion::boxed("rate limit")));
                    };
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        // Never sent: the ticket's drop gives back the whole charge.
                        *this.ticket = None;
                        this.state.set(State::Failed { error: None });
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some((mut service, request)) = call.take() else {
                        return Poll::Ready(Err(PolledAfterCompletion::boxed("rate limit")));
                    };
                    if let Some(t) = this.ticket.as_mut() {
                        t.dispatched();
                    }
                    let fut = service.call(request);
                    *this.sleep = None;
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
                                let streaming = is_event_stream(response.headers());
                                let absorbed =
                                    t.complete(&ResponseSignals::of(&response), usage, streaming);
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
