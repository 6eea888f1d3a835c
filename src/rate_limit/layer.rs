use std::time::Duration;

use tower_layer::Layer;

use crate::cost::DefaultCost;

use super::config::Limits;
use super::key::DefaultKey;
use super::{RateLimit, RateLimitState};

/// Layer for [`RateLimit`].
///
/// Every service this layer wraps (and every clone of those) shares **one** [`RateLimitState`]:
/// the one given to [`with_state`](Self::with_state), else the one [`new`](Self::new) or
/// [`with_limits`](Self::with_limits) built. Build a state yourself and hand it to several layers
/// when different stacks talk to the same organisation.
#[derive(Clone, Debug)]
pub struct RateLimitLayer<K = DefaultKey, E = DefaultCost> {
    state: RateLimitState,
    key_fn: K,
    cost_fn: E,
    max_wait: Option<Duration>,
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        RateLimitLayer::new()
    }
}

impl RateLimitLayer {
    /// A layer with a fresh state and no configured limit: the limits are learned from the
    /// responses' headers.
    pub fn new() -> Self {
        RateLimitLayer::with_state(RateLimitState::new())
    }

    /// A layer with a fresh state and `limits` configured for every key.
    pub fn with_limits(limits: Limits) -> Self {
        RateLimitLayer::with_state(RateLimitState::with_limits(limits))
    }

    /// A layer using (and sharing) `state`.
    pub fn with_state(state: RateLimitState) -> Self {
        RateLimitLayer {
            state,
            key_fn: DefaultKey::new(),
            cost_fn: DefaultCost::new(),
            max_wait: None,
        }
    }
}

impl<K, E> RateLimitLayer<K, E> {
    /// Uses `key_fn` for requests without a [`RateLimitKey`](super::RateLimitKey) extension.
    pub fn key_fn<K2>(self, key_fn: K2) -> RateLimitLayer<K2, E> {
        RateLimitLayer {
            state: self.state,
            key_fn,
            cost_fn: self.cost_fn,
            max_wait: self.max_wait,
        }
    }

    /// Uses `cost_fn` for requests without a [`Cost`](crate::cost::Cost) extension.
    pub fn cost_fn<E2>(self, cost_fn: E2) -> RateLimitLayer<K, E2> {
        RateLimitLayer {
            state: self.state,
            key_fn: self.key_fn,
            cost_fn,
            max_wait: self.max_wait,
        }
    }

    /// The longest a request may wait for budget (default: unbounded); a request's
    /// [`MaxWait`](super::MaxWait) extension overrides it.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Uses (and shares) `state` instead of the current one, keeping the key and cost functions
    /// and the maximum wait.
    pub fn replace_state(mut self, state: RateLimitState) -> Self {
        self.state = state;
        self
    }

    /// The shared state.
    pub fn state(&self) -> &RateLimitState {
        &self.state
    }
}

impl<S, K: Clone, E: Clone> Layer<S> for RateLimitLayer<K, E> {
    type Service = RateLimit<S, K, E>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_parts(
            inner,
            self.state.clone(),
            self.key_fn.clone(),
            self.cost_fn.clone(),
            self.max_wait,
        )
    }
}
