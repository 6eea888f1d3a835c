//! The errors by which a layer of this crate decides a call's fate itself, rather than the
//! network or the server: the circuit breaker's [`Open`](breaker::Open), the rate limiter's
//! [`WaitTooLong`](rate_limit::WaitTooLong) and [`CostExceedsLimit`](rate_limit::CostExceedsLimit),
//! and the retry layer's final errors. Each layer re-exports its own (`breaker::error`,
//! `rate_limit::error`, `retry::error`).
//!
//! They are defined here, below every layer, because every layer classifies the errors of the
//! layers it wraps (a breaker must not count a rate limiter's refusal against the server; a retry
//! layer reads a breaker's [`Open`](breaker::Open)): the classifier, which every layer uses,
//! recognises them by type, and a rule written once here needs no import of the layers.

use std::error::Error as StdError;

pub(crate) mod breaker;
pub(crate) mod rate_limit;
pub(crate) mod retry;

/// `true` when `error` (or one of its sources) is a decision taken by a layer of this crate
/// rather than a failure of the network or the server: such errors are final and are never
/// counted against the server.
pub(crate) fn is_local_decision(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<breaker::Open>()
            || e.is::<rate_limit::WaitTooLong>()
            || e.is::<rate_limit::CostExceedsLimit>()
            || retry::is_retry_decision(e)
        {
            return true;
        }
        current = e.source();
    }
    false
}
