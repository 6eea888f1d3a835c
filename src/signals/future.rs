//! Response future for [`Signals`](super::Signals).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;

use super::{Classify, ResponseSignals};

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
    C: Classify + Clone + Send + Sync + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(stream) = response.extensions().get::<super::StreamOutcome>() {
            // The stream's end is decided by the same classifier as the head.
            stream.classify_with(std::sync::Arc::new(this.classifier.clone()));
        }
        let signals = ResponseSignals::from_response(&response, this.classifier);
        response.extensions_mut().insert(signals);
        Poll::Ready(Ok(response))
    }
}
