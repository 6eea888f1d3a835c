//! The breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::error::Open;
use super::registry::Permit;
use crate::BoxError;
use crate::error::PolledAfterCompletion;
use crate::signals::{Classify, ResponseSignals, StreamOutcome};

pin_project! {
    /// The future of [`CircuitBreaker`](super::CircuitBreaker): an immediately ready
    /// [`Open`] error, or the admitted call, which first drives the inner service's readiness
    /// and then its response. Dropping it before the end frees its probe slot.
    pub struct ResponseFuture<S, R, C>
    where
        S: Service<R>,
    {
        #[pin]
        kind: Kind<S, R>,
        permit: Option<Permit>,
        classifier: C,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, R>
    where
        S: Service<R>,
    {
        Refused { error: Option<Open> },
        Waiting { svc: S, req: Option<R> },
        Called { #[pin] fut: S::Future },
        Done,
    }
}

impl<S, R, C> ResponseFuture<S, R, C>
where
    S: Service<R>,
{
    pub(crate) fn refused(error: Open, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Refused { error: Some(error) },
            permit: None,
            classifier,
        }
    }

    pub(crate) fn admitted(svc: S, req: R, permit: Permit, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Waiting {
                svc,
                req: Some(req),
            },
            permit: Some(permit),
            classifier,
        }
    }
}

impl<S, R, C> std::fmt::Debug for ResponseFuture<S, R, C>
where
    S: Service<R>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Refused { .. } => "refused",
            Kind::Waiting { .. } => "waiting",
            Kind::Called { .. } => "called",
            Kind::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("probe", &self.permit.as_ref().is_some_and(Permit::is_probe))
            .finish()
    }
}

impl<S, C, ReqB, ResB> Future for ResponseFuture<S, Request<ReqB>, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let result = match this.kind.as_mut().project() {
                KindProj::Refused { error } => {
                    let error = error.take();
                    this.kind.set(Kind::Done);
                    return Poll::Ready(Err(match error {
                        Some(open) => open.into(),
                        None => PolledAfterCompletion::boxed("circuit breaker"),
                    }));
                }
                KindProj::Waiting { svc, req } => match ready!(svc.poll_ready(cx)) {
                    Ok(()) => {
                        let Some(req) = req.take() else {
                            return Poll::Ready(Err(PolledAfterCompletion::boxed(
                                "circuit breaker",
                            )));
                        };
                        let fut = svc.call(req);
                        this.kind.set(Kind::Called { fut });
                        continue;
                    }
                    Err(error) => Err(error.into()),
                },
                KindProj::Called { fut } => ready!(fut.poll(cx)).map_err(Into::into),
                KindProj::Done => {
                    return Poll::Ready(Err(PolledAfterCompletion::boxed("circuit breaker")));
                }
            };
            this.kind.set(Kind::Done);
            if let Some(permit) = this.permit.take() {
                let outcome = match &result {
                    Ok(response) => ResponseSignals::outcome_or(response, &*this.classifier),
                    Err(error) => this.classifier.classify_error(&**error),
                };
                match result.as_ref().ok().and_then(StreamOutcome::of) {
                    // A stream's head says little: its end is counted (a probe lasts as long).
                    Some(stream) if outcome.is_success() => {
                        stream.on_end(move |outcome| permit.complete(outcome))
                    }
                    _ => permit.complete(&outcome),
                }
            }
            return Poll::Ready(result);
        }
    }
}
