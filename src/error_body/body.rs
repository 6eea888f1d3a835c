//! The response body handed back by [`ErrorBody`](super::ErrorBody): [`MaybeBuffered`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use crate::BoxError;
use crate::signals::stream::StreamWatch;
use crate::signals::usage::UsageWatch;

pin_project_lite::pin_project! {
    /// The response body handed back by [`ErrorBody`]: the original body untouched, or the bytes
    /// [`ErrorBody`] read from it, followed by whatever it could not read.
    ///
    /// Every byte the server sent reaches the caller, in order: when the body outgrew the limit
    /// (or was not complete within the time limit) while being read, the bytes read so far come
    /// first, then the rest of the original body;
    /// when reading failed, the bytes read so far come first, then the body's error.
    pub struct MaybeBuffered<B>
    where
        B: http_body::Body,
    {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<B>
    where
        B: http_body::Body,
    {
        Passthrough { #[pin] body: B },
        // A successful answer passing through, copied for its `usage`.
        Watched { #[pin] body: B, watch: Option<UsageWatch> },
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
        // Outgrew the limit: the bytes read, then the rest of the original body.
        Prefixed { prefix: Option<Bytes>, body: Pin<Box<B>> },
        // Reading failed: the bytes read, then the error.
        Failed { prefix: Option<Bytes>, error: Option<BoxError> },
        // A successful event stream, watched as it passes: the bytes read before the head was
        // handed on, then the rest of the body; ends with `StreamInterrupted` when it breaks.
        Streaming {
            prefix: Option<Bytes>,
            body: Pin<Box<B>>,
            watch: Box<StreamWatch>,
            idle: Option<Pin<Box<tokio::time::Sleep>>>,
            // An error to return after the frame just handed on, or `Done` once finished.
            after: After,
        },
    }
}

impl<B: http_body::Body> std::fmt::Debug for MaybeBuffered<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.inner {
            Inner::Passthrough { .. } | Inner::Watched { .. } => "passthrough",
            Inner::Streaming { .. } => "streaming",
            Inner::Buffered { .. } => "buffered",
            Inner::Prefixed { .. } => "prefixed",
            Inner::Failed { .. } => "failed",
        };
        f.debug_struct("MaybeBuffered")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

fn non_empty(data: Bytes) -> Option<Bytes> {
    (!data.is_empty()).then_some(data)
}

impl<B: http_body::Body> MaybeBuffered<B> {
    /// The original body, untouched.
    pub fn passthrough(body: B) -> Self {
        MaybeBuffered {
            inner: Inner::Passthrough { body },
        }
    }

    /// The original body, copied for its `usage` as it passes when `watch` is set.
    pub(crate) fn watched(body: B, watch: Option<UsageWatch>) -> Self {
        match watch {
            Some(watch) => MaybeBuffered {
                inner: Inner::Watched {
                    body,
                    watch: Some(watch),
                },
            },
            None => Self::passthrough(body),
        }
    }

    /// A body made of bytes already read.
    pub fn buffered(data: Bytes) -> Self {
        Self::complete(data, None)
    }

    /// The whole body, read, with its trailers.
    pub(crate) fn complete(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        MaybeBuffered {
            inner: Inner::Buffered {
                data: non_empty(data),
                trailers,
            },
        }
    }

    /// `prefix`, then the rest of `body`.
    pub(crate) fn prefixed(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        MaybeBuffered {
            inner: Inner::Prefixed {
                prefix: non_empty(prefix),
                body,
            },
        }
    }

    /// `prefix`, then `error`.
    pub(crate) fn failed(prefix: Bytes, error: B::Error) -> Self
    where
        B::Error: Into<BoxError>,
    {
        Self::failed_boxed(prefix, error.into())
    }

    /// `prefix`, then `error`.
    pub(crate) fn failed_boxed(prefix: Bytes, error: BoxError) -> Self {
        MaybeBuffered {
            inner: Inner::Failed {
                prefix: non_empty(prefix),
                error: Some(error),
            },
        }
    }

    /// `prefix`, then the rest of `body`, watched as an event stream.
    pub(crate) fn streaming(prefix: Bytes, body: Pin<Box<B>>, watch: StreamWatch) -> Self {
        MaybeBuffered {
            inner: Inner::Streaming {
                prefix: non_empty(prefix),
                body,
                watch: Box::new(watch),
                idle: None,
                after: After::Continue,
            },
        }
    }

    /// `true` when the body was read into memory (completely or up to the limit).
    pub fn is_buffered(&self) -> bool {
        !matches!(
            self.inner,
            Inner::Passthrough { .. } | Inner::Watched { .. } | Inner::Streaming { .. }
        )
    }
}

/// What a watched stream does after the frame it just handed on.
#[derive(Debug)]
pub(crate) enum After {
    Continue,
    Fail(Option<BoxError>),
    Done,
}

fn data_frame<E>(data: Bytes) -> Poll<Option<Result<Frame<Bytes>, E>>> {
    Poll::Ready(Some(Ok(Frame::data(data))))
}

impl<B> http_body::Body for MaybeBuffered<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    /// The inner body's error, boxed; or
    /// [`StreamInterrupted`](crate::signals::StreamInterrupted) when a watched event stream
    /// breaks.
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Passthrough { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Watched { body, watch } => {
                let frame = body.poll_frame(cx).map_err(Into::into);
                match &frame {
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(w), Some(data)) = (watch.as_mut(), f.data_ref()) {
                            w.feed(data);
                        }
                    }
                    // The end: the whole answer passed.
                    Poll::Ready(None) => {
                        if let Some(w) = watch.take() {
                            w.finish();
                        }
                    }
                    // A body that fails tells nothing; what its head settled stays.
                    Poll::Ready(Some(Err(_))) => *watch = None,
                    Poll::Pending => {}
                }
                frame
            }
            InnerProj::Buffered { data, trailers } => match data.take() {
                Some(data) => data_frame(data),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            InnerProj::Prefixed { prefix, body } => match prefix.take() {
                Some(data) => data_frame(data),
                None => body.as_mut().poll_frame(cx).map_err(Into::into),
            },
            InnerProj::Failed { prefix, error } => match prefix.take() {
                Some(data) => data_frame(data),
                None => Poll::Ready(error.take().map(Err)),
            },
            InnerProj::Streaming {
                prefix,
                body,
                watch,
                idle,
                after,
            } => poll_stream(cx, prefix, body, watch, idle, after),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Streaming { .. } => false,
            Inner::Passthrough { body } | Inner::Watched { body, .. } => body.is_end_stream(),
            Inner::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Inner::Prefixed { prefix, body } => prefix.is_none() && body.is_end_stream(),
            Inner::Failed { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let len = |d: &Option<Bytes>| d.as_ref().map_or(0, |d| d.len() as u64);
        match &self.inner {
            Inner::Passthrough { body } | Inner::Watched { body, .. } => body.size_hint(),
            Inner::Buffered { data, .. } => SizeHint::with_exact(len(data)),
            Inner::Prefixed { prefix, body } => {
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(len(prefix)));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(len(prefix)));
                }
                hint
            }
            Inner::Failed { prefix, .. } => SizeHint::with_exact(len(prefix)),
            Inner::Streaming { prefix, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(len(prefix));
                hint
            }
        }
    }
}

/// One step of a watched event stream (see [`StreamOutcome`](crate::signals::StreamOutcome)).
fn poll_stream<B>(
    cx: &mut Context<'_>,
    prefix: &mut Option<Bytes>,
    body: &mut Pin<Box<B>>,
    watch: &mut StreamWatch,
    idle: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    after: &mut After,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match after {
        After::Continue => {}
        After::Fail(error) => {
            let error = error.take();
            *after = After::Done;
            return Poll::Ready(error.map(Err));
        }
        After::Done => return Poll::Ready(None),
    }
    let handed = |data: &Bytes, watch: &mut StreamWatch, after: &mut After| {
        watch.delivered(data.len());
        if watch.failed() {
            // The error event goes to the caller, then the typed error.
            *after = After::Fail(Some(watch.error_event()));
        }
    };
    if let Some(data) = prefix.take() {
        handed(&data, watch, after);
        return data_frame(data);
    }
    match body.as_mut().poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => {
            watch.heard();
            if let Some(data) = frame.data_ref() {
                watch.feed(data);
                handed(data, watch, after);
            }
            Poll::Ready(Some(Ok(frame)))
        }
        Poll::Ready(None) => {
            *after = After::Done;
            match watch.finish() {
                Ok(()) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e))),
            }
        }
        Poll::Ready(Some(Err(e))) => {
            *after = After::Done;
            Poll::Ready(Some(Err(watch.failed_with(e.into()))))
        }
        Poll::Pending => {
            let at = watch.idle_deadline();
            let sleep = idle.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            std::task::ready!(sleep.as_mut().poll(cx));
            *after = After::Done;
            Poll::Ready(Some(Err(watch.idle())))
        }
    }
}
