//! The fallback's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::service::Config;
use super::{Rewrite, Served};
use crate::BoxError;
use crate::error::PolledAfterCompletion;
use crate::signals::ResponseSignals;

pin_project! {
    /// The future of [`Fallback`](super::Fallback): the primary's call, then, when it failed
    /// in a way that calls for it, the secondary's.
    pub struct ResponseFuture<PF, S, R, F>
    where
        S: Service<R>,
    {
        #[pin]
        kind: Kind<PF, S, R>,
        rewrite: F,
        config: Arc<Config>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<PF, S, R>
    where
        S: Service<R>,
    {
        Primary { #[pin] fut: PF, secondary: Option<S>, replay: Option<R> },
        Waiting { svc: S, req: Option<R> },
        Secondary { #[pin] fut: S::Future },
        Done,
    }
}

impl<PF, S, R, F> ResponseFuture<PF, S, R, F>
where
    S: Service<R>,
{
    pub(crate) fn new(fut: PF, secondary: S, replay: R, rewrite: F, config: Arc<Config>) -> Self {
        ResponseFuture {
            kind: Kind::Primary {
                fut,
                secondary: Some(secondary),
                replay: Some(replay),
            },
            rewrite,
            config,
        }
    }
}

impl<PF, S, R, F> std::fmt::Debug for ResponseFuture<PF, S, R, F>
where
    S: Service<R>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Primary { .. } => "primary",
            Kind::Waiting { .. } => "waiting_secondary",
            Kind::Secondary { .. } => "secondary",
            Kind::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<PF, PE, S, F, B, ResB> Future for ResponseFuture<PF, S, Request<B>, F>
where
    PF: Future<Output = Result<Response<ResB>, PE>>,
    PE: Into<BoxError>,
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    F: Rewrite<B>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = loop {
            match this.kind.as_mut().project() {
                KindProj::Primary {
                    fut,
                    secondary,
                    replay,
                } => {
                    let reason = match ready!(fut.poll(cx)) {
                        Ok(mut response) => {
                            let kind = ResponseSignals::of(&response).outcome().kind();
                            if !this.config.kinds.contains(&kind) {
                                response.extensions_mut().insert(Served::Primary);
                                break Ok(response);
                            }
                            kind.as_str()
                        }
                        Err(error) => {
                            let error = error.into();
                            if !this.config.falls_back_on(&*error) {
                                break Err(error);
                            }
                            tracing::debug!(error = %error, "fallback: primary failed");
                            "error"
                        }
                    };
                    tracing::info!(reason, "fallback: sending the request to the secondary");
                    crate::observe::emit::fallback(reason);
                    let (Some(svc), Some(replay)) = (secondary.take(), replay.take()) else {
                        break Err(PolledAfterCompletion::boxed("fallback"));
                    };
                    let req = this.rewrite.rewrite(replay);
                    this.kind.set(Kind::Waiting {
                        svc,
                        req: Some(req),
                    });
                }
                KindProj::Waiting { svc, req } => {
                    if let Err(error) = ready!(svc.poll_ready(cx)) {
                        break Err(error.into());
                    }
                    let Some(req) = req.take() else {
                        break Err(PolledAfterCompletion::boxed("fallback"));
                    };
                    let fut = svc.call(req);
                    this.kind.set(Kind::Secondary { fut });
                }
                KindProj::Secondary { fut } => {
                    break ready!(fut.poll(cx))
                        .map_err(Into::into)
                        .map(|mut response| {
                            response.extensions_mut().insert(Served::Secondary);
                            response
                        });
                }
                KindProj::Done => {
                    return Poll::Ready(Err(PolledAfterCompletion::boxed("fallback")));
                }
            }
        };
        this.kind.set(Kind::Done);
        Poll::Ready(result)
    }
}
