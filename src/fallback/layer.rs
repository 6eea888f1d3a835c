use std::error::Error as StdError;
use std::sync::Arc;

use tower_layer::Layer;

use super::service::Config;
use super::{Fallback, NoRewrite};
use crate::signals::OutcomeKind;

/// Layer for [`Fallback`]: the wrapped service is the primary, the layer holds the secondary.
#[derive(Debug)]
pub struct FallbackLayer<S, F = NoRewrite> {
    secondary: S,
    rewrite: F,
    config: Arc<Config>,
}

impl<S> FallbackLayer<S> {
    /// Falls back to `secondary` with the default rules and no rewrite.
    pub fn new(secondary: S) -> Self {
        FallbackLayer {
            secondary,
            rewrite: NoRewrite,
            config: Arc::new(Config::default()),
        }
    }
}

impl<S, F> FallbackLayer<S, F> {
    /// Rewrites the request before it goes to the secondary; see [`Fallback::rewrite`].
    pub fn rewrite<F2>(self, rewrite: F2) -> FallbackLayer<S, F2> {
        FallbackLayer {
            secondary: self.secondary,
            rewrite,
            config: self.config,
        }
    }

    /// See [`Fallback::on_outcomes`].
    ///
    /// # Panics
    ///
    /// When `kinds` holds [`Success`](OutcomeKind::Success) or
    /// [`ClientError`](OutcomeKind::ClientError).
    pub fn on_outcomes(mut self, kinds: impl IntoIterator<Item = OutcomeKind>) -> Self {
        Arc::make_mut(&mut self.config).set_kinds(kinds);
        self
    }

    /// See [`Fallback::when_error`].
    pub fn when_error<E>(mut self, f: E) -> Self
    where
        E: Fn(&(dyn StdError + 'static)) -> bool + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).set_when_error(f);
        self
    }
}

impl<S: Clone, F: Clone> Clone for FallbackLayer<S, F> {
    fn clone(&self) -> Self {
        FallbackLayer {
            secondary: self.secondary.clone(),
            rewrite: self.rewrite.clone(),
            config: self.config.clone(),
        }
    }
}

impl<P, S: Clone, F: Clone> Layer<P> for FallbackLayer<S, F> {
    type Service = Fallback<P, S, F>;

    fn layer(&self, primary: P) -> Self::Service {
        Fallback::from_parts(
            primary,
            self.secondary.clone(),
            self.rewrite.clone(),
            self.config.clone(),
        )
    }
}
