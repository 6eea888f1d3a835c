//! Response future of [`ConcurrencyLimit`](super::ConcurrencyLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::Body;

use super::body::{PermitBody, Release};
use super::limiter::Permit;
use crate::BoxError;
use crate::error::PolledAfterCompletion;

pin_project_lite::pin_project! {
    /// Response future of [`ConcurrencyLimit`](super::ConcurrencyLimit): holds the call's permit
    /// until the response arrives (then hands it to the body, or gives it back, per
    /// [`Release`]). An error, or dropping the future, gives the permit back.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        permit: Option<Permit>,
        release: Release,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, permit: Permit, release: Release) -> Self {
        ResponseFuture {
            inner,
            permit: Some(permit),
            release,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    E: Into<BoxError>,
{
    type Output = Result<Response<PermitBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The permit is taken when the future completes: none left, it has completed.
        if this.permit.is_none() {
            return Poll::Ready(Err(PolledAfterCompletion::boxed("concurrency limit")));
        }
        let result = ready!(this.inner.poll(cx));
        let permit = this.permit.take();
        Poll::Ready(match result {
            Ok(response) => {
                let permit = permit.filter(|_| this.release.body_holds(&response));
                Ok(response.map(|body| PermitBody::new(body, permit)))
            }
            Err(error) => Err(error.into()),
        })
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("holds_permit", &self.permit.is_some())
            .field("release", &self.release)
            .finish_non_exhaustive()
    }
}
