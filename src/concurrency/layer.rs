//! The [`ConcurrencyLimitLayer`].

use tower_layer::Layer;

use super::ConcurrencyLimit;
use super::body::Release;
use super::limiter::Limiter;

/// Applies a [`ConcurrencyLimit`] to services.
///
/// Which cap a service gets depends on how the layer was made:
///
/// | constructor | cap of the services built by `layer()` |
/// |---|---|
/// | [`new(n)`](Self::new) | **one cap of `n` for all of them**: every service this layer (or a clone of it) builds shares it |
/// | [`shared(limiter)`](Self::shared) | the given [`Limiter`], shared with everything else that holds it |
/// | [`per_service(n)`](Self::per_service) | a new cap of `n` for each `layer()` call (tower's `ConcurrencyLimitLayer` behaviour) |
///
/// `new` differs from tower on purpose: the cap protects one provider account, and a stack that
/// is layered once per connection, per host or per worker would otherwise multiply it silently.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    cap: Cap,
    release: Release,
}

#[derive(Clone, Debug)]
enum Cap {
    Shared(Limiter),
    PerService(usize),
}

impl ConcurrencyLimitLayer {
    /// One cap of `limit` calls shared by every service this layer and its clones build.
    pub fn new(limit: usize) -> Self {
        Self::shared(Limiter::new(limit))
    }

    /// Every service built shares `limiter` (and with it the cap of any other service holding
    /// it).
    pub fn shared(limiter: Limiter) -> Self {
        ConcurrencyLimitLayer {
            cap: Cap::Shared(limiter),
            release: Release::default(),
        }
    }

    /// Each service built gets a cap of its own of `limit` calls.
    pub fn per_service(limit: usize) -> Self {
        ConcurrencyLimitLayer {
            cap: Cap::PerService(limit),
            release: Release::default(),
        }
    }

    /// Sets when a call's permit goes back (default [`Release::Auto`]).
    pub fn release(mut self, release: Release) -> Self {
        self.release = release;
        self
    }

    /// The shared cap, or `None` for [`per_service`](Self::per_service) layers.
    pub fn limiter(&self) -> Option<&Limiter> {
        match &self.cap {
            Cap::Shared(limiter) => Some(limiter),
            Cap::PerService(_) => None,
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let limiter = match &self.cap {
            Cap::Shared(limiter) => limiter.clone(),
            Cap::PerService(limit) => Limiter::new(*limit),
        };
        ConcurrencyLimit::with_limiter(inner, limiter).release(self.release)
    }
}
