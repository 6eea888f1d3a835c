//! Errors shared by the whole crate.

use std::error::Error as StdError;

/// The error type of every layer in this crate: a boxed error the caller can downcast to the
/// typed errors each layer documents (for example
/// [`retry::error::BudgetExhausted`](crate::retry)).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// `true` when `error` (or one of its sources) is a decision taken by a layer of this crate
/// rather than a failure of the network or the server: such errors are final and are never
/// counted against the server.
pub(crate) fn is_local_decision(error: &(dyn StdError + 'static)) -> bool {
    // Each layer's typed errors are listed here as they are added.
    use crate::rate_limit::error::{CostExceedsLimit, WaitTooLong};
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<crate::breaker::error::Open>()
            || e.is::<WaitTooLong>()
            || e.is::<CostExceedsLimit>()
            || crate::retry::error::is_retry_decision(e)
        {
            return true;
        }
        current = e.source();
    }
    false
}
