//! A response body that holds its call's permit until the body ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};

use super::limiter::Permit;
use crate::signals::stream::is_event_stream;

/// When a call's permit goes back to the cap.
///
/// An LLM provider is still working on a request while it streams the answer (server-sent
/// events, `content-type: text/event-stream`): the connection, the model's slot and the
/// output-token budget are all in use until the last event. A non-streaming answer is different:
/// when its head arrives the server has generated the whole answer, and what remains is the
/// transfer of bytes the caller may read whenever it likes.
///
/// The default, [`Auto`](Release::Auto), follows that: a non-streaming answer gives its permit
/// back when the response head arrives (as tower's `ConcurrencyLimit` does), an event stream
/// holds it until its body ends. So ordinary code that collects responses before reading them
/// (`tokio::join!`, a `JoinSet`, `futures::join_all`) cannot deadlock on the cap; only code that
/// collects more *unread event streams* than the cap admits can, because each unread stream
/// still occupies the provider (read or drop streams as they come, or use
/// [`AtHeaders`](Release::AtHeaders)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Release {
    /// The default: [`AtHeaders`](Release::AtHeaders) for a non-streaming answer,
    /// [`AtBodyEnd`](Release::AtBodyEnd) for an answer with `content-type: text/event-stream`
    /// (a streaming answer is in flight until its last event).
    #[default]
    Auto,
    /// The response body ([`PermitBody`]) holds the permit until it reports its end, fails, or is
    /// dropped. An empty body gives it back at once. A body nobody reads or drops keeps its
    /// permit: collecting more unread responses than the cap admits before reading any of them
    /// waits for ever.
    AtBodyEnd,
    /// The permit is given back as soon as the response head arrives; the body does not hold it.
    AtHeaders,
}

impl Release {
    /// Whether the body of `response` holds the permit under this rule.
    pub(crate) fn body_holds<B>(self, response: &http::Response<B>) -> bool {
        match self {
            Release::AtBodyEnd => true,
            Release::AtHeaders => false,
            Release::Auto => is_event_stream(response.headers()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`ConcurrencyLimit`](super::ConcurrencyLimit) and
    /// [`AdaptiveConcurrencyLimit`](super::AdaptiveConcurrencyLimit): the inner body, plus the
    /// call's permit when the layer releases it at the end of the body ([`Release::AtBodyEnd`],
    /// or an event stream under [`Release::Auto`]).
    ///
    /// The permit is given back when the inner body yields its last frame or an error, or when
    /// this body is dropped.
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B: Body> PermitBody<B> {
    pub(crate) fn new(inner: B, permit: Option<Permit>) -> Self {
        // An empty body is finished already: nobody has to poll it for the permit to return.
        let permit = if inner.is_end_stream() { None } else { permit };
        PermitBody { inner, permit }
    }
}

impl<B> PermitBody<B> {
    /// `true` while this body still holds its call's permit.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The inner body; the permit (if still held) is given back.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let finished = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if finished {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for PermitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermitBody")
            .field("inner", &self.inner)
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}
