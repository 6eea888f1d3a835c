//! Response futures for [`Signals`](super::Signals) and [`ErrorBody`](super::ErrorBody).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;

use super::{Classify, MaybeBuffered, ResponseSignals};

pin_project_lite::pin_project! {
    /// Response future of [`Signals`](super::Signals).
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        classifier: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, classifier: C) -> Self {
        ResponseFuture { inner, classifier }
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: Classify,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let signals = ResponseSignals::from_response(&response, this.classifier);
        response.extensions_mut().insert(signals);
        Poll::Ready(Ok(response))
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ErrorBody`](super::ErrorBody).
    #[derive(Debug)]
    pub struct ErrorBodyFuture<F, B> {
        #[pin]
        inner: F,
        max: usize,
        _body: std::marker::PhantomData<fn() -> B>,
    }
}

impl<F, B> ErrorBodyFuture<F, B> {
    pub(crate) fn new(inner: F, max: usize) -> Self {
        ErrorBodyFuture {
            inner,
            max,
            _body: std::marker::PhantomData,
        }
    }
}

impl<F, B, E> Future for ErrorBodyFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MaybeBuffered<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _ = this.max;
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(response.map(MaybeBuffered::passthrough)))
    }
}
