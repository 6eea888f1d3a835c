//! The [`AdaptiveConcurrencyLimitLayer`].

use tower_layer::Layer;

use super::aimd::{AdaptiveLimiter, Aimd};
use super::error::InvalidAimd;
use super::service::AdaptiveConcurrencyLimit;
use crate::concurrency::Release;
use crate::signals::DefaultClassifier;

/// Applies an [`AdaptiveConcurrencyLimit`] to services.
///
/// Every service built by this layer (or one of its clones) shares one [`AdaptiveLimiter`]: one
/// limit, learnt from the outcomes of all of them. To share it with services built elsewhere,
/// build the limiter first and use [`shared`](Self::shared).
#[derive(Clone, Debug)]
pub struct AdaptiveConcurrencyLimitLayer<C = DefaultClassifier> {
    limiter: AdaptiveLimiter,
    classifier: C,
    release: Release,
}

impl AdaptiveConcurrencyLimitLayer {
    /// One adaptive cap configured by `config`, shared by every service this layer builds.
    ///
    /// # Errors
    ///
    /// [`InvalidAimd`] when the configuration cannot work (see [`AdaptiveLimiter::new`]).
    pub fn new(config: Aimd) -> Result<Self, InvalidAimd> {
        Ok(Self::shared(AdaptiveLimiter::new(config)?))
    }

    /// Every service built shares `limiter`.
    pub fn shared(limiter: AdaptiveLimiter) -> Self {
        AdaptiveConcurrencyLimitLayer {
            limiter,
            classifier: DefaultClassifier::new(),
            release: Release::default(),
        }
    }
}

impl<C> AdaptiveConcurrencyLimitLayer<C> {
    /// Reads outcomes of errors (and of responses no [`Signals`](crate::signals::Signals) layer
    /// classified) with `classifier`.
    pub fn classifier<C2>(self, classifier: C2) -> AdaptiveConcurrencyLimitLayer<C2> {
        AdaptiveConcurrencyLimitLayer {
            limiter: self.limiter,
            classifier,
            release: self.release,
        }
    }

    /// Sets when a call's permit goes back (default [`Release::Auto`]).
    pub fn release(mut self, release: Release) -> Self {
        self.release = release;
        self
    }

    /// The shared adaptive cap.
    pub fn limiter(&self) -> &AdaptiveLimiter {
        &self.limiter
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveConcurrencyLimitLayer<C> {
    type Service = AdaptiveConcurrencyLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrencyLimit::with_limiter(inner, self.limiter.clone())
            .classifier(self.classifier.clone())
            .release(self.release)
    }
}
