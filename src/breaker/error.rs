//! Errors returned by [`CircuitBreaker`](super::CircuitBreaker).
//!
//! [`Open`] is defined with the other decisions of this crate's layers in the `signals` module,
//! where the [`DefaultClassifier`](crate::signals::DefaultClassifier) recognises them without
//! depending on the layers.

pub use crate::signals::decision::breaker::Open;
