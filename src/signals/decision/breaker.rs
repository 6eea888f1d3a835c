//! The circuit breaker's decision, re-exported as [`breaker::error`](crate::breaker::error).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The call was refused because the circuit breaker of its key is open (or half-open with every
/// probe slot taken). No request reached the inner service.
///
/// It is a decision of this crate: [`DefaultClassifier`](crate::signals::DefaultClassifier)
/// classifies it as [`OutcomeKind::Rejected`](crate::signals::OutcomeKind::Rejected), so another
/// breaker does not count it and the [`Fallback`](crate::fallback::Fallback) layer sends the
/// request to its secondary service. A [`Retry`](crate::retry::Retry) layer above waits until
/// [`until`](Self::until) and sends the call again, within
/// [`Policy::max_breaker_wait`](crate::retry::Policy::max_breaker_wait), unless the request
/// carries [`FailFast`](crate::breaker::FailFast).
#[derive(Clone, Debug)]
pub struct Open {
    key: Option<Arc<str>>,
    until: Instant,
    half_open: bool,
}

impl Open {
    pub(crate) fn new(key: Option<Arc<str>>, until: Instant, half_open: bool) -> Self {
        Open {
            key,
            until,
            half_open,
        }
    }

    /// The breaker's key, `None` for the unkeyed breaker.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// When the breaker lets probe calls through again. For a half-open breaker whose probe
    /// slots are all taken, it is the moment of the refusal: a slot frees up as soon as a probe
    /// ends, which cannot be known in advance.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// How long from now until [`until`](Self::until) (zero once it has passed).
    pub fn retry_after(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// `true` when the breaker is half-open and every probe slot is taken, `false` when it is
    /// open.
    pub fn is_half_open(&self) -> bool {
        self.half_open
    }
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker ")?;
        if let Some(key) = &self.key {
            write!(f, "for `{key}` ")?;
        }
        if self.half_open {
            f.write_str("is half-open and every probe slot is taken")
        } else {
            write!(
                f,
                "is open; probing again in {:.3}s",
                self.retry_after().as_secs_f64()
            )
        }
    }
}

impl std::error::Error for Open {}
