use std::sync::Arc;

use tower_layer::Layer;

use super::registry::Shared;
use super::{CircuitBreaker, Policy, State};
use crate::signals::DefaultClassifier;

/// Layer for [`CircuitBreaker`].
///
/// Every service this layer wraps shares the layer's breakers: build one layer per upstream
/// (organisation, provider) and apply it wherever requests go to that upstream. Use
/// [`CircuitBreaker::new`] for a breaker of its own.
#[derive(Debug)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer with `policy` and the [`DefaultClassifier`].
    pub fn new(policy: Policy) -> Self {
        Self::with_classifier(policy, DefaultClassifier::new())
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer with `policy` that classifies errors, and responses no
    /// [`Signals`](crate::signals::Signals) layer has classified, with `classifier`.
    pub fn with_classifier(policy: Policy, classifier: C) -> Self {
        CircuitBreakerLayer {
            shared: Arc::new(Shared::new(policy)),
            classifier,
        }
    }

    /// The state of the unkeyed breaker.
    pub fn state(&self) -> State {
        self.shared.state(None)
    }

    /// The state of the breaker of `key` ([`State::Closed`] for a key it does not hold).
    pub fn state_of(&self, key: &str) -> State {
        self.shared.state(Some(key))
    }

    /// Every breaker in memory with its state, the unkeyed one first (as `None`).
    pub fn states(&self) -> Vec<(Option<String>, State)> {
        self.shared.states()
    }
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.shared.clone(), self.classifier.clone())
    }
}
