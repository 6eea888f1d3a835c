use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::{FallbackLayer, NoRewrite, Rewrite};
use crate::BoxError;
use crate::breaker::FailFast;
use crate::signals::{Classify, DefaultClassifier, OutcomeKind};

type ErrorPredicate = Arc<dyn Fn(&(dyn StdError + 'static)) -> bool + Send + Sync>;

/// When to fall back (shared by the clones of a [`Fallback`]).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) kinds: Vec<OutcomeKind>,
    when_error: Option<ErrorPredicate>,
    /// [`falls_back_on_open_breaker`](Self::falls_back_on_open_breaker), kept up to date.
    pub(crate) fail_fast: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kinds: vec![OutcomeKind::Overloaded, OutcomeKind::Rejected],
            when_error: None,
            // Every decision of this crate falls back by default.
            fail_fast: true,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("kinds", &self.kinds)
            .field("custom_error_predicate", &self.when_error.is_some())
            .finish()
    }
}

impl Config {
    pub(crate) fn set_kinds(&mut self, kinds: impl IntoIterator<Item = OutcomeKind>) {
        let kinds: Vec<OutcomeKind> = kinds.into_iter().collect();
        for kind in &kinds {
            assert!(
                !matches!(kind, OutcomeKind::Success | OutcomeKind::ClientError),
                "a fallback must not be taken on `{kind}` outcomes"
            );
        }
        self.kinds = kinds;
        self.fail_fast = self.falls_back_on_open_breaker();
    }

    pub(crate) fn set_when_error<F>(&mut self, f: F)
    where
        F: Fn(&(dyn StdError + 'static)) -> bool + Send + Sync + 'static,
    {
        self.when_error = Some(Arc::new(f));
        self.fail_fast = self.falls_back_on_open_breaker();
    }

    /// Whether a refusal of the primary's circuit breaker sends the request to the secondary:
    /// then the primary's request carries [`FailFast`], so that a retry layer inside does not
    /// wait for the breaker first.
    fn falls_back_on_open_breaker(&self) -> bool {
        let open = crate::breaker::error::Open::new(None, tokio::time::Instant::now(), false);
        self.falls_back_on(&open)
    }

    /// Whether the primary's `error` sends the request to the secondary.
    pub(crate) fn falls_back_on(&self, error: &(dyn StdError + 'static)) -> bool {
        match &self.when_error {
            Some(f) => f(error),
            None => {
                crate::signals::decision::is_local_decision(error)
                    || self
                        .kinds
                        .contains(&DefaultClassifier::new().classify_error(error).kind())
            }
        }
    }
}

/// Sends a request to a secondary service when the primary is overloaded or refused it.
///
/// See the [module documentation](super) for when it falls back and examples.
#[derive(Debug)]
pub struct Fallback<P, S, F = NoRewrite> {
    primary: P,
    secondary: S,
    rewrite: F,
    config: Arc<Config>,
}

impl<P, S> Fallback<P, S> {
    /// Falls back from `primary` to `secondary` with the default rules and no rewrite.
    pub fn new(primary: P, secondary: S) -> Self {
        Fallback {
            primary,
            secondary,
            rewrite: NoRewrite,
            config: Arc::new(Config::default()),
        }
    }

    /// A layer that wraps a primary service and falls back to `secondary`.
    pub fn layer(secondary: S) -> FallbackLayer<S> {
        FallbackLayer::new(secondary)
    }
}

impl<P, S, F> Fallback<P, S, F> {
    pub(crate) fn from_parts(primary: P, secondary: S, rewrite: F, config: Arc<Config>) -> Self {
        Fallback {
            primary,
            secondary,
            rewrite,
            config,
        }
    }

    /// Rewrites the request before it goes to the secondary (see
    /// [`set_json_model`](super::set_json_model)).
    pub fn rewrite<F2>(self, rewrite: F2) -> Fallback<P, S, F2> {
        Fallback::from_parts(self.primary, self.secondary, rewrite, self.config)
    }

    /// The outcome kinds (of the primary's responses and errors) that send the request to the
    /// secondary, replacing the default ([`OutcomeKind::Overloaded`] and
    /// [`OutcomeKind::Rejected`]).
    ///
    /// # Panics
    ///
    /// When `kinds` holds [`Success`](OutcomeKind::Success) or
    /// [`ClientError`](OutcomeKind::ClientError): a request the server refused as invalid is
    /// invalid for the secondary too.
    pub fn on_outcomes(mut self, kinds: impl IntoIterator<Item = OutcomeKind>) -> Self {
        Arc::make_mut(&mut self.config).set_kinds(kinds);
        self
    }

    /// Replaces the rule for the primary's errors: the request goes to the secondary when `f`
    /// returns `true`.
    pub fn when_error<E>(mut self, f: E) -> Self
    where
        E: Fn(&(dyn StdError + 'static)) -> bool + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).set_when_error(f);
        self
    }

    /// The primary service.
    pub fn get_ref(&self) -> &P {
        &self.primary
    }

    /// The primary service, mutably.
    pub fn get_mut(&mut self) -> &mut P {
        &mut self.primary
    }

    /// The secondary service.
    pub fn secondary(&self) -> &S {
        &self.secondary
    }

    /// Consumes the middleware, returning the primary service.
    pub fn into_inner(self) -> P {
        self.primary
    }
}

impl<P: Clone, S: Clone, F: Clone> Clone for Fallback<P, S, F> {
    fn clone(&self) -> Self {
        Fallback {
            primary: self.primary.clone(),
            secondary: self.secondary.clone(),
            rewrite: self.rewrite.clone(),
            config: self.config.clone(),
        }
    }
}

impl<P, S, F, B, ResB> Service<Request<B>> for Fallback<P, S, F>
where
    P: Service<Request<B>, Response = Response<ResB>>,
    P::Error: Into<BoxError>,
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    F: Rewrite<B> + Clone,
    B: Clone,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<P::Future, S, Request<B>, F>;

    /// The primary's readiness; the secondary's is driven by the response future when it is
    /// needed.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.primary.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The secondary gets the request as it was made.
        let replay = req.clone();
        if self.config.fail_fast {
            req.extensions_mut().insert(FailFast);
        }
        ResponseFuture::new(
            self.primary.call(req),
            self.secondary.clone(),
            replay,
            self.rewrite.clone(),
            self.config.clone(),
        )
    }
}
