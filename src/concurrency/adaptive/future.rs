//! Response future of [`AdaptiveConcurrencyLimit`](super::AdaptiveConcurrencyLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::Body;

use super::aimd::{AdaptiveLimiter, Sent};
use crate::BoxError;
use crate::concurrency::PermitBody;
use crate::signals::{Classify, OutcomeKind, ResponseSignals, StreamOutcome};

pin_project_lite::pin_project! {
    /// Response future of [`AdaptiveConcurrencyLimit`](super::AdaptiveConcurrencyLimit): the
    /// fixed cap's [`ResponseFuture`](crate::concurrency::future::ResponseFuture) plus the
    /// feedback of the call's outcome to the controller. A future dropped before it completes
    /// gives its permit back and teaches the controller nothing.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: crate::concurrency::future::ResponseFuture<F>,
        feedback: Option<Feedback<C>>,
    }
}

struct Feedback<C> {
    limiter: AdaptiveLimiter,
    classifier: C,
    sent: Sent,
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        inner: crate::concurrency::future::ResponseFuture<F>,
        limiter: AdaptiveLimiter,
        classifier: C,
        sent: Sent,
    ) -> Self {
        ResponseFuture {
            inner,
            feedback: Some(Feedback {
                limiter,
                classifier,
                sent,
            }),
        }
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    E: Into<BoxError>,
    C: Classify,
{
    type Output = Result<Response<PermitBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(feedback) = this.feedback.take() {
            let kind = match &result {
                Ok(response) => ResponseSignals::outcome_or(response, &feedback.classifier).kind(),
                Err(error) => feedback.classifier.classify_error(&**error).kind(),
            };
            let Feedback { limiter, sent, .. } = feedback;
            match result.as_ref().ok().and_then(|r| StreamOutcome::of(r)) {
                // A stream is in flight until its end, which is its outcome.
                Some(stream) if kind == OutcomeKind::Success => {
                    stream.on_end(move |outcome| limiter.record(sent, outcome.kind()))
                }
                _ => limiter.record(sent, kind),
            }
        }
        Poll::Ready(result)
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
