//! Keys: which requests share a set of buckets.

use std::fmt;
use std::sync::Arc;

use http::Request;

use crate::cost::BodyBytes;

/// The key of a set of buckets (Anthropic limits each model separately: the default key is the
/// model).
///
/// Put one in a request's extensions to choose the key yourself; it takes precedence over the
/// layer's [`KeyFn`]. The limiter also stores the key it used in the request's extensions, so
/// layers above and retries agree on it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateLimitKey(Arc<str>);

impl RateLimitKey {
    /// A key named `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        RateLimitKey(name.into())
    }

    /// The key shared by every request that has no other key: `*`.
    pub fn global() -> Self {
        RateLimitKey(Arc::from("*"))
    }

    /// The key's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl crate::observe::emit::KeyLabel for RateLimitKey {
    #[cfg(feature = "metrics")]
    fn label(&self) -> metrics::SharedString {
        metrics::SharedString::from_shared(Arc::clone(&self.0))
    }
}

impl fmt::Debug for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RateLimitKey {
    fn from(s: &str) -> Self {
        RateLimitKey::new(s)
    }
}

impl From<String> for RateLimitKey {
    fn from(s: String) -> Self {
        RateLimitKey::new(s)
    }
}

/// Extracts the key of a request (consulted only when the request has no [`RateLimitKey`]
/// extension).
pub trait KeyFn<B> {
    /// The key of `request`.
    fn key(&self, request: &Request<B>) -> RateLimitKey;

    /// The key of `request`, as the rate limiter asks for it: with the request mutable, so an
    /// implementation can leave what it read in the request's extensions for the cost function
    /// ([`DefaultKey`] leaves the body it parsed for [`DefaultCost`](crate::cost::DefaultCost),
    /// so the body is read once). The default calls [`key`](Self::key).
    fn key_mut(&self, request: &mut Request<B>) -> RateLimitKey {
        self.key(request)
    }
}

/// The default key: the `model` field of a JSON body (bodies whose bytes are available — see
/// [`BodyBytes`]), else [`RateLimitKey::global`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultKey {
    _priv: (),
}

impl DefaultKey {
    /// The default key extraction.
    pub const fn new() -> Self {
        DefaultKey { _priv: () }
    }
}

impl<B: BodyBytes> KeyFn<B> for DefaultKey {
    fn key(&self, request: &Request<B>) -> RateLimitKey {
        if let Some(model) = crate::cost::Inspected::get(request).and_then(|i| i.model()) {
            return RateLimitKey::new(model);
        }
        RateLimitKey::global()
    }

    fn key_mut(&self, request: &mut Request<B>) -> RateLimitKey {
        if let Some(model) = crate::cost::Inspected::get_cached(request).and_then(|i| i.model()) {
            return RateLimitKey::new(model);
        }
        RateLimitKey::global()
    }
}

/// Keys requests by the host of their URI (or their `Host` header), else
/// [`RateLimitKey::global`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HostKey {
    _priv: (),
}

impl HostKey {
    /// Keys by host.
    pub const fn new() -> Self {
        HostKey { _priv: () }
    }
}

impl<B> KeyFn<B> for HostKey {
    fn key(&self, request: &Request<B>) -> RateLimitKey {
        request
            .uri()
            .host()
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .map_or_else(RateLimitKey::global, RateLimitKey::new)
    }
}

/// A [`KeyFn`] made from a closure; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFnClosure<F> {
    f: F,
}

impl<F> fmt::Debug for KeyFnClosure<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFnClosure").finish_non_exhaustive()
    }
}

/// Makes a [`KeyFn`] from a closure.
pub fn key_fn<B, F>(f: F) -> KeyFnClosure<F>
where
    F: Fn(&Request<B>) -> RateLimitKey,
{
    KeyFnClosure { f }
}

impl<B, F> KeyFn<B> for KeyFnClosure<F>
where
    F: Fn(&Request<B>) -> RateLimitKey,
{
    fn key(&self, request: &Request<B>) -> RateLimitKey {
        (self.f)(request)
    }
}
