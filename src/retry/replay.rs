//! Request bodies that can be sent again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Empty, Full};

use crate::cost::BodyBytes;

pub use crate::signals::decision::retry::ReplayRefused;

/// A request body the [`Retry`](super::Retry) layer can send again.
///
/// [`replay`](Self::replay) returns a fresh body with the same bytes, or `None` when this body
/// cannot be sent twice; the layer then sends the request once and returns whatever comes back
/// (a retryable response included), as the Go SDK does.
///
/// Implemented for [`Full`], [`Empty`], [`Bytes`], [`String`], `Vec<u8>`, `&'static str` and
/// `()`. Wrap any other body: [`Replayable`] for a body whose clones are independent copies,
/// [`SendOnce`] for one that is not (a stream, an upload, a boxed body), which opts that request
/// out of retries while keeping one service type. To go through a [preset](crate::preset) a
/// body also needs [`BodyBytes`](crate::cost::BodyBytes) (see there for the full list); both
/// wrappers have it when the wrapped body does. Replaying and having bytes that can be seen are
/// independent ([why these are two traits](crate::cost#why-two-body-traits-bodybytes-here-replaybody-in-retry)).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `ReplayBody`: the retry layer cannot tell whether this request body can be sent again",
    note = "wrap the body in `tower_llm_limits::retry::SendOnce` (never retried) or `retry::Replayable` (its clones must be independent copies)"
)]
pub trait ReplayBody: Sized {
    /// A copy of this body to send on the next attempt, or `None` when it cannot be replayed.
    fn replay(&self) -> Option<Self>;

    /// Like [`replay`](Self::replay), but a body that should be replayable and finds it cannot
    /// be (say, a [`Replayable`] whose clones turn out to share one stream) says so with
    /// [`ReplayRefused`]: the [`Retry`](super::Retry) layer then ends the call with that error
    /// instead of sending a wrong body. The default is `Ok(self.replay())`.
    fn try_replay(&self) -> Result<Option<Self>, ReplayRefused> {
        Ok(self.replay())
    }
}

impl<D: Buf + Clone> ReplayBody for Full<D> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl ReplayBody for Bytes {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for String {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Vec<u8> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for &'static str {
    fn replay(&self) -> Option<Self> {
        Some(*self)
    }
}

impl ReplayBody for () {
    fn replay(&self) -> Option<Self> {
        Some(())
    }
}

pin_project_lite::pin_project! {
    /// Makes a `B: Clone` body replayable; a [`Body`] when `B` is one.
    ///
    /// **A clone of `B` must be an independent copy of the whole body**, as it is for `Full`,
    /// `Bytes`, `String` or a body holding its bytes behind an `Arc` and its own read position.
    /// A body whose clones share one stream or cursor (a shared channel receiver, an
    /// `Arc<Mutex<reader>>`) is not replayable: after the first attempt has read it, a clone
    /// holds only the leftover tail, and sending that as the whole request corrupts it. Wrap such
    /// bodies in [`SendOnce`] (or buffer them into `Bytes` first).
    ///
    /// What can be detected is refused: the first copy taken records the body's shape
    /// (`is_end_stream` and `size_hint`); when a later copy finds the kept original changed —
    /// the first attempt consumed the stream the clones share — the copy is refused with
    /// [`ReplayRefused`] and the [`Retry`](super::Retry) layer ends the call with
    /// [`error::BodyNotReplayable`](super::error::BodyNotReplayable) rather than resend a tail.
    /// A shared stream that hides its progress (no size hint, never at its end) cannot be
    /// detected: the rule above is yours to keep.
    #[derive(Clone, Debug, Default)]
    pub struct Replayable<B> {
        #[pin]
        inner: B,
        shape: std::sync::OnceLock<Shape>,
    }
}

/// What a body looks like from outside: whether it is at its end, and its size hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    end: bool,
    lower: u64,
    upper: Option<u64>,
}

impl Shape {
    fn of<B: Body>(body: &B) -> Self {
        let hint = body.size_hint();
        Shape {
            end: body.is_end_stream(),
            lower: hint.lower(),
            upper: hint.upper(),
        }
    }
}

impl<B> Replayable<B> {
    /// Wraps `inner`; its clones must be independent copies (see above).
    pub fn new(inner: B) -> Self {
        Replayable {
            inner,
            shape: std::sync::OnceLock::new(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Marks a body that must be sent only once: requests carrying it are never retried.
    /// A [`Body`] when `B` is one.
    #[derive(Debug, Default)]
    pub struct SendOnce<B> {
        #[pin]
        inner: B,
    }
}

impl<B> SendOnce<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        SendOnce { inner }
    }
}

macro_rules! body_wrapper {
    ($name:ident) => {
        impl<B> $name<B> {
            /// The wrapped body.
            pub fn get_ref(&self) -> &B {
                &self.inner
            }

            /// Unwraps the body.
            pub fn into_inner(self) -> B {
                self.inner
            }
        }

        impl<B: Body> Body for $name<B> {
            type Data = B::Data;
            type Error = B::Error;

            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
                self.project().inner.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.inner.size_hint()
            }
        }
    };
}

body_wrapper!(Replayable);
body_wrapper!(SendOnce);

impl<B: Clone + Body> ReplayBody for Replayable<B> {
    fn replay(&self) -> Option<Self> {
        self.try_replay().ok().flatten()
    }

    fn try_replay(&self) -> Result<Option<Self>, ReplayRefused> {
        let now = Shape::of(&self.inner);
        let first = *self.shape.get_or_init(|| now);
        if first != now {
            tracing::warn!(
                "Replayable body changed after a copy of it was sent: its clones share one \
                 stream; not replaying it"
            );
            return Err(ReplayRefused::new(
                "the body changed after a copy of it was sent: its clones share one stream \
                 (Replayable needs independent copies)",
            ));
        }
        Ok(Some(self.clone()))
    }
}

impl<B> ReplayBody for SendOnce<B> {
    fn replay(&self) -> Option<Self> {
        None
    }
}

// The retry's body wrappers are costed as the body they wrap (implemented here, so `cost`
// depends on no layer).
impl<B: BodyBytes> BodyBytes for SendOnce<B> {
    fn body_bytes(&self) -> Option<Bytes> {
        self.get_ref().body_bytes()
    }
    fn exact_len(&self) -> Option<u64> {
        self.get_ref().exact_len()
    }
}

impl<B: BodyBytes> BodyBytes for Replayable<B> {
    fn body_bytes(&self) -> Option<Bytes> {
        self.get_ref().body_bytes()
    }
    fn exact_len(&self) -> Option<u64> {
        self.get_ref().exact_len()
    }
}
