//! The layer of the [`Signals`] middleware.

use tower_layer::Layer;

use super::{DefaultClassifier, Signals};

/// Layer for [`Signals`].
#[derive(Clone, Debug, Default)]
pub struct SignalsLayer<C = DefaultClassifier> {
    classifier: C,
}

impl SignalsLayer {
    /// A layer with the [`DefaultClassifier`].
    pub fn new() -> Self {
        SignalsLayer {
            classifier: DefaultClassifier::new(),
        }
    }
}

impl<C> SignalsLayer<C> {
    /// A layer with a custom classifier.
    pub fn with_classifier(classifier: C) -> Self {
        SignalsLayer { classifier }
    }
}

impl<S, C: Clone> Layer<S> for SignalsLayer<C> {
    type Service = Signals<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Signals::with_classifier(inner, self.classifier.clone())
    }
}
