//! The retry layer's decisions, re-exported as [`retry::error`](crate::retry::error) (and
//! [`ReplayRefused`] as [`retry::ReplayRefused`](crate::retry::ReplayRefused)).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::BoxError;
use crate::signals::ApiError;

/// What the last attempt left behind; shared by every error of this module.
#[derive(Debug, Default)]
pub(crate) struct LastAttempt {
    pub(crate) status: Option<StatusCode>,
    pub(crate) server_wait: Option<Duration>,
    pub(crate) attempts: u32,
    pub(crate) api_error: Option<ApiError>,
    pub(crate) error: Option<BoxError>,
}

impl LastAttempt {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, " after {} attempt", self.attempts)?;
        if self.attempts != 1 {
            f.write_str("s")?;
        }
        match (self.status, &self.error) {
            (Some(status), _) => write!(f, ", last status {status}")?,
            (None, Some(error)) => write!(f, ", last error: {error}")?,
            (None, None) => {}
        }
        Ok(())
    }
}

macro_rules! last_attempt_getters {
    ($name:ident) => {
        impl $name {
            /// The status of the last response, `None` when the last attempt ended in an error.
            pub fn last_status(&self) -> Option<StatusCode> {
                self.last.status
            }

            /// The wait the server asked for in its last response (`retry-after-ms`,
            /// `retry-after`), or the wait a pacing layer below announced.
            pub fn server_wait(&self) -> Option<Duration> {
                self.last.server_wait
            }

            /// How many attempts were made (the first one included).
            pub fn attempts(&self) -> u32 {
                self.last.attempts
            }

            /// The provider's error body of the last response, when an
            /// [`ErrorBodyLayer`](crate::error_body::ErrorBodyLayer) below parsed it.
            pub fn api_error(&self) -> Option<&ApiError> {
                self.last.api_error.as_ref()
            }
        }

        impl StdError for $name {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                self.last
                    .error
                    .as_deref()
                    .map(|e| e as &(dyn StdError + 'static))
            }
        }
    };
}

/// The retry budget is spent: retrying now would multiply the load on a failing server.
#[derive(Debug)]
pub struct BudgetExhausted {
    last: LastAttempt,
}

impl BudgetExhausted {
    pub(crate) fn new(last: LastAttempt) -> Self {
        BudgetExhausted { last }
    }
}

impl fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("retry budget exhausted")?;
        self.last.describe(f)
    }
}

last_attempt_getters!(BudgetExhausted);

/// The next retry could not start before the call's deadline.
#[derive(Debug)]
pub struct DeadlineExceeded {
    last: LastAttempt,
    deadline: Duration,
    next_wait: Duration,
}

impl DeadlineExceeded {
    pub(crate) fn new(last: LastAttempt, deadline: Duration, next_wait: Duration) -> Self {
        DeadlineExceeded {
            last,
            deadline,
            next_wait,
        }
    }

    /// The configured deadline of the call (measured from its start).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The wait before the retry that was not attempted.
    pub fn next_wait(&self) -> Duration {
        self.next_wait
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "retry deadline of {:?} would be crossed by a wait of {:?}",
            self.deadline, self.next_wait
        )?;
        self.last.describe(f)
    }
}

last_attempt_getters!(DeadlineExceeded);

/// The server asked for a wait longer than the configured ceiling
/// ([`Policy::max_server_wait`](crate::retry::Policy::max_server_wait)).
#[derive(Debug)]
pub struct ServerWaitTooLong {
    last: LastAttempt,
    ceiling: Duration,
}

impl ServerWaitTooLong {
    pub(crate) fn new(last: LastAttempt, ceiling: Duration) -> Self {
        ServerWaitTooLong { last, ceiling }
    }

    /// The wait the server asked for.
    pub fn wait(&self) -> Duration {
        self.last.server_wait.unwrap_or_default()
    }

    /// The configured ceiling it exceeded.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }
}

impl fmt::Display for ServerWaitTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server asked to wait {:?}, more than the ceiling of {:?}",
            self.wait(),
            self.ceiling
        )?;
        self.last.describe(f)
    }
}

last_attempt_getters!(ServerWaitTooLong);

/// A retry was wanted but the request body refused to be copied
/// ([`ReplayBody::try_replay`](crate::retry::ReplayBody::try_replay)): for a
/// [`Replayable`](crate::retry::Replayable), its clones share one stream, so the next attempt would have
/// sent only what the previous one left of it. The call ends here instead; the
/// [`source`](StdError::source) is the last attempt's error when it ended with one.
#[derive(Debug)]
pub struct BodyNotReplayable {
    last: LastAttempt,
    reason: ReplayRefused,
}

impl BodyNotReplayable {
    pub(crate) fn new(last: LastAttempt, reason: ReplayRefused) -> Self {
        BodyNotReplayable { last, reason }
    }

    /// Why the body could not be copied.
    pub fn reason(&self) -> &ReplayRefused {
        &self.reason
    }
}

impl fmt::Display for BodyNotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body not replayable: {}", self.reason)?;
        self.last.describe(f)
    }
}

last_attempt_getters!(BodyNotReplayable);

/// `true` when `error` is one of this module's errors.
pub(crate) fn is_retry_decision(error: &(dyn StdError + 'static)) -> bool {
    error.is::<BudgetExhausted>()
        || error.is::<DeadlineExceeded>()
        || error.is::<ServerWaitTooLong>()
        || error.is::<BodyNotReplayable>()
}

/// Why a body that claims to be replayable cannot be sent again; see
/// [`ReplayBody::try_replay`](crate::retry::ReplayBody::try_replay). The [`Retry`](crate::retry::Retry) layer wraps it in
/// [`error::BodyNotReplayable`](BodyNotReplayable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRefused {
    reason: &'static str,
}

impl ReplayRefused {
    /// A refusal for `reason`.
    pub fn new(reason: &'static str) -> Self {
        ReplayRefused { reason }
    }

    /// Why the body cannot be replayed.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl std::fmt::Display for ReplayRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for ReplayRefused {}
