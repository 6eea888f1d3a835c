//! The handle by which the layers below the retry layer reach the call's span.

use std::fmt;

/// The `llm_call` span [`Retry`](crate::retry::Retry) opened for a call, put in the request's
/// extensions (and so in every attempt's) for the layers below to record into: the rate limiter
/// records the key it chose. A handle instead of a search for the current span by its name, so a
/// layer records into the span it was given, or into none.
#[derive(Clone, Debug)]
pub(crate) struct CallSpan(tracing::Span);

impl CallSpan {
    /// A handle to `span`.
    pub(crate) fn new(span: tracing::Span) -> Self {
        CallSpan(span)
    }

    /// Records the rate limiter's `key` in the span's `key` field.
    pub(crate) fn record_key(&self, key: &impl fmt::Display) {
        self.0.record("key", tracing::field::display(key));
    }
}
