//! Fallback routing: primary → secondary. (docs in progress)

mod layer;
mod rewrite;
mod service;

pub mod future;

pub use layer::FallbackLayer;
pub use rewrite::{NoRewrite, Rewrite, set_json_model};
pub use service::Fallback;

/// Stored in the extensions of every response of a [`Fallback`]: which service answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Served {
    /// The primary service.
    Primary,
    /// The secondary service.
    Secondary,
}
