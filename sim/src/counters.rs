//! What the simulated API saw and answered.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Cells {
            $( pub(crate) $name: AtomicU64, )*
        }

        impl Cells {
            pub(crate) fn snapshot(&self) -> Counters {
                Counters { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        /// A snapshot of the simulated API's counters, taken by
        /// [`SimApi::counters`](super::SimApi::counters) (atomics, readable at any time).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct Counters {
            $( $name: u64, )*
        }

        impl Counters {
            $( $(#[$doc])* pub fn $name(&self) -> u64 { self.$name } )*
        }
    };
}

counters! {
    /// Calls received (every call, whatever its fate).
    received,
    /// Requests admitted by the rate limiter (their budget charged).
    admitted,
    /// `2xx` answers.
    ok,
    /// `429 rate_limit_error` answers for lack of budget (the spend cap is counted apart).
    rate_limited,
    /// `529 overloaded_error` answers.
    overloaded,
    /// Scripted `5xx` answers other than 529.
    server_errors,
    /// Scripted connection errors.
    connection_errors,
    /// `429` spend-cap answers (`enforced_spend_limit_reached`).
    spend_limited,
    /// `4xx` answers other than 429 (bad JSON, unknown model or path, too large).
    client_errors,
    /// Admitted requests that hung (scripted [`Fault::Hang`](super::Fault::Hang)).
    hung,
    /// Admitted requests dropped by the caller before their answer (hung ones included).
    dropped,
    /// Admitted requests not yet answered nor dropped.
    in_flight,
    /// Input tokens charged (admitted requests).
    input_tokens,
    /// Output tokens produced (answered requests).
    output_tokens,
}

impl Cells {
    pub(crate) fn inc(cell: &AtomicU64) {
        cell.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(cell: &AtomicU64, n: u64) {
        cell.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn dec(cell: &AtomicU64) {
        cell.fetch_sub(1, Ordering::Relaxed);
    }
}
