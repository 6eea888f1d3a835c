//! [`WaitAbsorbed`]: the rate limiter's notice that it has taken a server's wait upon itself.

use tokio::time::Instant;

/// Stored in a response's extensions by the rate limiter (a pacing layer) when it has taken the
/// server's wait upon itself: every request that passes through that layer again is held until
/// [`until`](Self::until). A retry layer above that sees it re-enters at once instead of sleeping
/// the same wait a second time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitAbsorbed {
    until: Instant,
}

impl WaitAbsorbed {
    /// A notice that requests will be held until `until`.
    pub fn new(until: Instant) -> Self {
        WaitAbsorbed { until }
    }

    /// When the pacing layer lets requests through again.
    pub fn until(&self) -> Instant {
        self.until
    }
}
