//! Request bodies that can be sent again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Empty, Full};

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
/// wrappers have it when the wrapped body does.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `ReplayBody`: the retry layer cannot tell whether this request body can be sent again",
    note = "wrap the body in `tower_llm_limits::retry::SendOnce` (never retried) or `retry::Replayable` (its clones must be independent copies)"
)]
pub trait ReplayBody: Sized {
    /// A copy of this body to send on the next attempt, or `None` when it cannot be replayed.
    fn replay(&self) -> Option<Self>;
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
    /// Makes any `B: Clone` body replayable; a [`Body`] when `B` is one.
    #[derive(Clone, Debug, Default)]
    pub struct Replayable<B> {
        #[pin]
        inner: B,
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

macro_rules! body_wrapper {
    ($name:ident) => {
        impl<B> $name<B> {
            /// Wraps `inner`.
            pub fn new(inner: B) -> Self {
                $name { inner }
            }

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

impl<B: Clone> ReplayBody for Replayable<B> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<B> ReplayBody for SendOnce<B> {
    fn replay(&self) -> Option<Self> {
        None
    }
}
