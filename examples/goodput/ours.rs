//! tower-llm-limits' stacks as the benchmark measures them: each layer alone, and the full stack
//! (the preset with its defaults). Shared by `examples/goodput.rs` and `benches/overhead.rs`.

use http::Response;
use tower::Service;

use super::peers::{BoxError, Req};

/// Receives each stack under a name; the stacks have different types, so the caller visits them
/// instead of collecting them (boxing would add a cost the measurement must not include).
pub trait Visit {
    /// Called once per stack.
    fn visit<S, B>(&mut self, name: &'static str, svc: S)
    where
        S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static;
}

/// Each of our layers alone around `inner()`, as far as they exist in this build.
pub fn single_layers<S, B, V>(inner: impl Fn() -> S, v: &mut V)
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    V: Visit,
{
    use tower_llm_limits::breaker::{self, CircuitBreaker};
    use tower_llm_limits::retry::{self, Retry};
    use tower_llm_limits::signals::Signals;

    v.visit("signals", Signals::new(inner()));
    v.visit(
        "circuit_breaker",
        CircuitBreaker::new(inner(), breaker::Policy::new()),
    );
    v.visit("retry", Retry::new(inner(), retry::Policy::new()));
}

/// Our full stack with its defaults, visited as `ours_full`; `false` when this build does not
/// have every layer of it yet (the caller says so instead of measuring a partial stack).
pub fn full<S, B, V>(inner: S, v: &mut V) -> bool
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    V: Visit,
{
    let _ = (inner, v);
    false
}

/// What is missing for [`full`], printed when it returns `false`.
pub const MISSING: &str =
    "the rate limiter and concurrency layers and the preset have not landed in this build";
