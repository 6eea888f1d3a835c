//! Tower middleware that keeps an HTTP client inside the limits of a rate-limited API.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod concurrency;
pub mod cost;
pub mod error;
pub mod fallback;
pub mod observe;
pub mod preset;
pub mod rate_limit;
pub mod retry;
pub mod signals;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;

pub use error::BoxError;
