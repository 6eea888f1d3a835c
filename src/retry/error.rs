//! Errors of the [`Retry`](super::Retry) layer: the cases where the layer itself ends a call.
//!
//! Each carries what a caller needs to act: the status of the last response (if the last
//! attempt got one), the wait the server asked for (if it asked), the number of attempts made,
//! and the provider's error body when an [`ErrorBodyLayer`](crate::error_body::ErrorBodyLayer)
//! below parsed it. When the last attempt failed with an error rather than a response, that
//! error is the [`source`](std::error::Error::source).
//!
//! The last response's body is dropped (which frees its connection): the caller gets these
//! facts instead of a response it would have to drain.
//!
//! They are defined with the other decisions of this crate's layers in the `signals` module,
//! where the [`DefaultClassifier`](crate::signals::DefaultClassifier) recognises them without
//! depending on the layers.

pub(crate) use crate::signals::decision::retry::LastAttempt;
pub use crate::signals::decision::retry::{
    BodyNotReplayable, BudgetExhausted, DeadlineExceeded, ServerWaitTooLong,
};
