//! Errors of the rate limiter. Both are decisions of the limiter (never sent to the server) and
//! final: retrying the same request cannot help.
//!
//! They are defined with the other decisions of this crate's layers in the `signals` module,
//! where the [`DefaultClassifier`](crate::signals::DefaultClassifier) recognises them without
//! depending on the layers.

pub use crate::signals::decision::rate_limit::{CostExceedsLimit, WaitTooLong};
