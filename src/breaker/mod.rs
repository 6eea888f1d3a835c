//! Circuit breaker: stop sending to an overloaded provider, fail fast, probe for recovery.
//!
//! (docs in progress)

mod layer;
mod policy;
mod registry;
mod service;
mod state;

pub mod error;
pub mod future;

pub use layer::CircuitBreakerLayer;
pub use policy::{Growth, Policy, Window};
pub use service::CircuitBreaker;
pub use state::{Reason, State, Transition};
