use std::time::Duration;

use tower_layer::Layer;

use super::{DEFAULT_ERROR_BODY_TIMEOUT, DEFAULT_MAX_ERROR_BODY, ErrorBody};
use crate::signals::DEFAULT_STREAM_IDLE_TIMEOUT;

/// Layer for [`ErrorBody`].
#[derive(Clone, Copy, Debug)]
pub struct ErrorBodyLayer {
    max: usize,
    timeout: Duration,
    idle: Duration,
}

impl ErrorBodyLayer {
    /// A layer reading at most [`DEFAULT_MAX_ERROR_BODY`] bytes for at most
    /// [`DEFAULT_ERROR_BODY_TIMEOUT`].
    pub fn new() -> Self {
        ErrorBodyLayer {
            max: DEFAULT_MAX_ERROR_BODY,
            timeout: DEFAULT_ERROR_BODY_TIMEOUT,
            idle: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }

    /// Sets the largest body read; larger bodies pass through untouched.
    pub fn max_size(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Sets the longest time spent reading an error body, from the arrival of the head (default
    /// [`DEFAULT_ERROR_BODY_TIMEOUT`], 10 s). When it runs out the response is handed on
    /// unparsed: its body gives the bytes read so far, then the rest of the original body.
    /// Keep it well below a retry [`deadline`](crate::retry::Policy::deadline).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long a successful event stream may stay silent while its caller waits before
    /// it ends with [`StreamInterrupted`](crate::signals::StreamInterrupted) (default
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`], 120 s).
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }
}

impl Default for ErrorBodyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ErrorBodyLayer {
    type Service = ErrorBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorBody {
            inner,
            max: self.max,
            timeout: self.timeout,
            idle: self.idle,
        }
    }
}
