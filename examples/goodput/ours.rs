//! tower-llm-limits' stacks as the benchmark measures them: each layer alone, and the full stack
//! (the preset with its defaults). Shared by `examples/goodput.rs` and `benches/overhead.rs`.

use http::Response;
use tower::util::MapRequest;
use tower::{Layer, Service};
use tower_llm_limits::breaker::{self, CircuitBreaker};
use tower_llm_limits::concurrency::ConcurrencyLimit;
use tower_llm_limits::concurrency::adaptive::{AdaptiveConcurrencyLimitLayer, Aimd};
use tower_llm_limits::cost::Cost;
use tower_llm_limits::rate_limit::{RateLimitKey, RateLimitLayer};
use tower_llm_limits::retry::{self, Retry};
use tower_llm_limits::signals::Signals;

use super::peers::{BoxError, Req};

/// Receives each stack under a name; the stacks have different types, so the caller visits them
/// instead of collecting them (boxing would add a cost the measurement must not include).
pub trait Visit {
    /// Called once per stack.
    fn visit<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>;
}

/// The adaptive concurrency cap with the preset's configuration.
fn adaptive() -> AdaptiveConcurrencyLimitLayer {
    AdaptiveConcurrencyLimitLayer::new(Aimd::new().initial(32).min(2).max(512))
        .expect("valid AIMD configuration")
}

/// Puts the key and cost a caller knows into the request's extensions.
fn given_cost(mut req: Req) -> Req {
    req.extensions_mut()
        .insert(RateLimitKey::new("claude-sonnet-4-5"));
    req.extensions_mut().insert(Cost::new(1, 1_000, 1_024));
    req
}

/// Each of our layers alone around `inner()`, with its defaults (the fixed concurrency cap at
/// `cap`, which the caller sets high enough that nothing waits).
pub fn single_layers<S, B, V>(inner: impl Fn() -> S, cap: usize, v: &mut V)
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    V: Visit,
{
    v.visit("signals", Signals::new(inner()));
    v.visit(
        "circuit_breaker",
        CircuitBreaker::new(inner(), breaker::Policy::new()),
    );
    v.visit("retry", Retry::new(inner(), retry::Policy::new()));
    v.visit("rate_limit", RateLimitLayer::new().layer(inner()));
    // The same with the key and cost given by the caller (no JSON body to read): shows what the
    // body parsing costs.
    v.visit(
        "rate_limit_given_cost",
        MapRequest::new(
            RateLimitLayer::new().layer(inner()),
            given_cost as fn(Req) -> Req,
        ),
    );
    v.visit("concurrency_limit", ConcurrencyLimit::new(inner(), cap));
    v.visit("adaptive_concurrency", adaptive().layer(inner()));
}

/// Our full stack, visited as `ours_full`: the Anthropic preset with its defaults
/// (`tower_llm_limits::preset::anthropic()`: Retry → CircuitBreaker → RateLimit → adaptive
/// ConcurrencyLimit → Signals → ErrorBody). Returns `false` when this build lacks part of it.
pub fn full<S, B, V>(inner: S, v: &mut V) -> bool
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
    V: Visit,
{
    v.visit(
        "ours_full",
        tower_llm_limits::preset::anthropic().layer(inner),
    );
    true
}

/// What is missing for [`full`], printed when it returns `false`.
pub const MISSING: &str = "the preset has not landed in this build";
