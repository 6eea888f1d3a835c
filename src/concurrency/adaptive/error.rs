//! Errors of the adaptive cap.

use std::fmt;

/// An [`Aimd`](super::Aimd) configuration that cannot work: bounds out of order, a minimum of
/// zero, or a decrease factor outside `(0, 1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidAimd {
    reason: &'static str,
}

impl InvalidAimd {
    pub(crate) fn new(reason: &'static str) -> Self {
        InvalidAimd { reason }
    }

    /// What is wrong with the configuration.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for InvalidAimd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid adaptive concurrency configuration: {}",
            self.reason
        )
    }
}

impl std::error::Error for InvalidAimd {}
