//! Response futures for [`Signals`](super::Signals) and [`ErrorBody`](super::ErrorBody).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::response::Parts;
use http::{HeaderMap, Response};

use super::usage::{MAX_WATCHED_BODY, UsageWatch};
use super::{ApiError, Classify, MaybeBuffered, ResponseSignals};
use crate::BoxError;
use crate::cost::UsageReport;
use crate::error::PolledAfterCompletion;

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
        state: State<F, B>,
        max: usize,
        timeout: Duration,
        usage: Option<UsageReport>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, B> {
        Calling { #[pin] inner: F },
        Reading {
            parts: Option<Parts>,
            body: Option<Pin<Box<B>>>,
            read: Read,
            trailers: Option<HeaderMap>,
            // The time bound on reading the body (boxed: only error bodies are read).
            stall: Pin<Box<tokio::time::Sleep>>,
        },
        Done,
    }
}

/// The bytes read so far; a body that arrives in one frame is kept without a copy.
#[derive(Debug, Default)]
struct Read {
    first: Bytes,
    more: Option<BytesMut>,
}

impl Read {
    fn len(&self) -> usize {
        self.more.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, data: Bytes) {
        match &mut self.more {
            Some(more) => more.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut more = BytesMut::with_capacity(self.first.len() + data.len());
                more.extend_from_slice(&self.first);
                more.extend_from_slice(&data);
                self.more = Some(more);
            }
        }
    }

    fn take(&mut self) -> Bytes {
        match self.more.take() {
            Some(more) => more.freeze(),
            None => std::mem::take(&mut self.first),
        }
    }
}

impl<F, B> ErrorBodyFuture<F, B> {
    pub(crate) fn new(inner: F, max: usize, timeout: Duration, usage: Option<UsageReport>) -> Self {
        ErrorBodyFuture {
            state: State::Calling { inner },
            max,
            timeout,
            usage,
        }
    }
}

/// Whether [`ErrorBody`](super::ErrorBody) reads this response's body: non-2xx, not an event
/// stream, and not announced larger than `max`.
fn should_read<B: http_body::Body>(response: &Response<B>, max: usize) -> bool {
    if response.status().is_success() || max == 0 {
        return false;
    }
    if is_event_stream(response) {
        return false;
    }
    response
        .body()
        .size_hint()
        .upper()
        .is_none_or(|upper| upper <= max as u64)
}

/// Whether a successful answer's body is watched for its `usage`: a 2xx that is not an event
/// stream (streams report usage in their events) and not announced larger than the watch keeps.
fn should_watch<B: http_body::Body>(response: &Response<B>) -> bool {
    response.status().is_success()
        && !is_event_stream(response)
        && response
            .body()
            .size_hint()
            .upper()
            .is_none_or(|upper| upper <= MAX_WATCHED_BODY as u64)
}

fn is_event_stream<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream")
        })
}

impl<F, B, E> Future for ErrorBodyFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes>,
    E: Into<BoxError>,
{
    type Output = Result<Response<MaybeBuffered<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { inner } => {
                    let response = ready!(inner.poll(cx)).map_err(Into::into)?;
                    if !should_read(&response, *this.max) {
                        this.state.set(State::Done);
                        let watch = this
                            .usage
                            .take()
                            .filter(|_| should_watch(&response))
                            .map(UsageWatch::new);
                        return Poll::Ready(Ok(
                            response.map(|body| MaybeBuffered::watched(body, watch))
                        ));
                    }
                    let (parts, body) = response.into_parts();
                    this.state.set(State::Reading {
                        parts: Some(parts),
                        body: Some(Box::pin(body)),
                        read: Read::default(),
                        trailers: None,
                        stall: Box::pin(tokio::time::sleep(*this.timeout)),
                    });
                }
                StateProj::Reading {
                    parts,
                    body,
                    read,
                    trailers,
                    stall,
                } => {
                    let reading = body
                        .as_mut()
                        .expect("ErrorBody response future polled after completion");
                    let frame = match reading.as_mut().poll_frame(cx) {
                        Poll::Ready(frame) => frame,
                        Poll::Pending => {
                            ready!(stall.as_mut().poll(cx));
                            // The body stalled: hand the response on unparsed, the bytes read
                            // so far first, then the rest of the body as it comes.
                            tracing::debug!(
                                read = read.len(),
                                timeout_ms = this.timeout.as_millis() as u64,
                                "error body not complete in time: handed back unparsed"
                            );
                            let body = body.take().expect("body present while reading");
                            let parts = parts.take().expect("parts present while reading");
                            let body = MaybeBuffered::prefixed(read.take(), body);
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                    };
                    let finished = match frame {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) if read.len().saturating_add(data.len()) > *this.max => {
                                read.push(data);
                                let body = body.take().expect("body present while reading");
                                tracing::debug!(
                                    read = read.len(),
                                    max = *this.max,
                                    "error body larger than the limit: handed back unparsed"
                                );
                                MaybeBuffered::prefixed(read.take(), body)
                            }
                            Ok(data) => {
                                read.push(data);
                                continue;
                            }
                            Err(frame) => {
                                if let Ok(more) = frame.into_trailers() {
                                    trailers.get_or_insert_with(HeaderMap::new).extend(more);
                                }
                                continue;
                            }
                        },
                        Some(Err(error)) => {
                            tracing::debug!(
                                read = read.len(),
                                "error body failed while being read: handed back with its error"
                            );
                            MaybeBuffered::failed(read.take(), error)
                        }
                        None => {
                            let data = read.take();
                            let api_error = ApiError::from_json(&data);
                            tracing::debug!(
                                bytes = data.len(),
                                parsed = api_error.is_some(),
                                "error body read"
                            );
                            let mut parts = parts.take().expect("parts present while reading");
                            if let Some(api_error) = api_error {
                                parts.extensions.insert(api_error);
                            }
                            let body = MaybeBuffered::complete(data, trailers.take());
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                    };
                    let parts = parts.take().expect("parts present while reading");
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(parts, finished)));
                }
                StateProj::Done => {
                    return Poll::Ready(Err(PolledAfterCompletion::boxed("error body")));
                }
            }
        }
    }
}
