//! Response future of [`ErrorBody`](super::ErrorBody).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::response::Parts;
use http::{HeaderMap, Response};

use super::body::MaybeBuffered;
use crate::BoxError;
use crate::cost::UsageReport;
use crate::error::PolledAfterCompletion;
use crate::signals::stream::{StreamWatch, is_event_stream};
use crate::signals::usage::{MAX_WATCHED_BODY, UsageWatch};
use crate::signals::{ApiError, Classify, DefaultClassifier, OutcomeKind, StreamStartFailed};

pin_project_lite::pin_project! {
    /// Response future of [`ErrorBody`](super::ErrorBody).
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        max: usize,
        timeout: Duration,
        idle: Duration,
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
            // A successful event stream, read up to its first event.
            stream: Option<Box<StreamWatch>>,
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

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(
        inner: F,
        max: usize,
        timeout: Duration,
        idle: Duration,
        usage: Option<UsageReport>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { inner },
            max,
            timeout,
            idle,
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
    if is_event_stream(response.headers()) {
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
        && !is_event_stream(response.headers())
        && response
            .body()
            .size_hint()
            .upper()
            .is_none_or(|upper| upper <= MAX_WATCHED_BODY as u64)
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    type Output = Result<Response<MaybeBuffered<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { inner } => {
                    let response = ready!(inner.poll(cx)).map_err(Into::into)?;
                    // A successful event stream is read up to its first event before the head
                    // is handed on; an error body is read whole.
                    let stream = (response.status().is_success()
                        && is_event_stream(response.headers()))
                    .then(|| Box::new(StreamWatch::new(this.usage.take(), *this.idle)));
                    if stream.is_none() && !should_read(&response, *this.max) {
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
                        stream,
                    });
                }
                StateProj::Reading {
                    parts,
                    body,
                    read,
                    trailers,
                    stall,
                    stream,
                } => {
                    if let Some(watch) = stream.take() {
                        let step =
                            peek_stream(cx, parts, body, read, trailers, stall, watch, *this.max);
                        match step {
                            Peek::Pending(watch) => {
                                *stream = Some(watch);
                                return Poll::Pending;
                            }
                            Peek::Again(watch) => {
                                *stream = Some(watch);
                                continue;
                            }
                            Peek::Ready(response) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Ok(*response));
                            }
                        }
                    }
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

enum Peek<B: http_body::Body> {
    Pending(Box<StreamWatch>),
    Again(Box<StreamWatch>),
    Ready(Box<Response<MaybeBuffered<B>>>),
}

/// One step of reading a successful event stream up to its first event (see
/// [`StreamOutcome`](crate::signals::StreamOutcome)).
#[allow(clippy::too_many_arguments)]
fn peek_stream<B>(
    cx: &mut Context<'_>,
    parts: &mut Option<Parts>,
    body: &mut Option<Pin<Box<B>>>,
    read: &mut Read,
    trailers: &mut Option<HeaderMap>,
    stall: &mut Pin<Box<tokio::time::Sleep>>,
    mut watch: Box<StreamWatch>,
    max: usize,
) -> Peek<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    let (Some(reading), Some(_)) = (body.as_mut(), parts.as_ref()) else {
        return Peek::Again(watch);
    };
    let hand_on = |watch: Box<StreamWatch>,
                   parts: &mut Option<Parts>,
                   body: &mut Option<Pin<Box<B>>>,
                   read: &mut Read| {
        let mut parts = parts.take().expect("parts present while reading");
        let body = body.take().expect("body present while reading");
        if watch.failed_at_start() {
            // Nothing of an answer exists: the response's outcome is the error's.
            let error = watch.error().cloned().unwrap_or_default();
            parts.extensions.insert(error.clone());
            parts
                .extensions
                .insert(StreamStartFailed::error_event(error));
        } else {
            parts.extensions.insert(watch.handle());
        }
        let body = MaybeBuffered::streaming(read.take(), body, *watch);
        Peek::Ready(Box::new(Response::from_parts(parts, body)))
    };
    let frame = match reading.as_mut().poll_frame(cx) {
        Poll::Ready(frame) => frame,
        Poll::Pending => {
            if stall.as_mut().poll(cx).is_pending() {
                return Peek::Pending(watch);
            }
            // No event in time: hand it on, still watched (its idle bound goes on).
            return hand_on(watch, parts, body, read);
        }
    };
    match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => {
                watch.heard();
                watch.feed(&data);
                read.push(data);
                if watch.events() > 0 || read.len() > max {
                    return hand_on(watch, parts, body, read);
                }
                Peek::Again(watch)
            }
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(more);
                }
                Peek::Again(watch)
            }
        },
        Some(Err(error)) => {
            let error = error.into();
            let kind = DefaultClassifier::new().classify_error(&*error).kind();
            tracing::debug!(
                read = read.len(),
                kind = kind.as_str(),
                "event stream failed before its first event"
            );
            let mut parts = parts.take().expect("parts present while reading");
            parts.extensions.insert(StreamStartFailed::ended(kind));
            body.take();
            let body = MaybeBuffered::failed_boxed(read.take(), error);
            Peek::Ready(Box::new(Response::from_parts(parts, body)))
        }
        None => {
            tracing::debug!(
                read = read.len(),
                "event stream ended before its first event"
            );
            let mut parts = parts.take().expect("parts present while reading");
            parts
                .extensions
                .insert(StreamStartFailed::ended(OutcomeKind::Connection));
            body.take();
            let body = MaybeBuffered::complete(read.take(), trailers.take());
            Peek::Ready(Box::new(Response::from_parts(parts, body)))
        }
    }
}
