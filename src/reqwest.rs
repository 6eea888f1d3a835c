//! An adapter that turns a [`reqwest::Client`] into a
//! `tower::Service<http::Request<B>>`, so the layers of this crate can wrap it.
//!
//! reqwest's own `Service` impl takes a `reqwest::Request`; the layers of this crate speak
//! `http::Request<B>` / `http::Response<B>` like hyper, axum and tower-http. [`ReqwestService`]
//! converts on the way in and out without copying: the request's parts move into a
//! `reqwest::Request` (the URI is parsed once into a URL), its body is wrapped (not buffered) as a
//! `reqwest::Body`, and the response comes back as `http::Response<reqwest::Body>`, streaming.
//!
//! Errors are `reqwest::Error`s boxed as [`BoxError`]; reqwest's own timeouts
//! (`ClientBuilder::timeout`) are given an [`std::io::ErrorKind::TimedOut`] wrapper so the
//! [default classifier](crate::signals::DefaultClassifier) reads them as
//! [`Timeout`](crate::signals::OutcomeKind::Timeout), and connection failures as
//! [`Connection`](crate::signals::OutcomeKind::Connection); the `reqwest::Error` stays the
//! wrapper's source.
//!
//! # Examples
//!
//! ```no_run
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_limits::reqwest::ReqwestService;
//! use tower_llm_limits::concurrency::ConcurrencyLimitLayer;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_llm_limits::BoxError> {
//! let client = ServiceBuilder::new()
//!     .layer(ConcurrencyLimitLayer::new(8))
//!     .service(ReqwestService::new(reqwest::Client::new()));
//! let request = http::Request::post("https://api.anthropic.com/v1/messages")
//!     .header("content-type", "application/json")
//!     .body(String::from(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[]}"#))?;
//! let response = client.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tower_service::Service;

use crate::BoxError;

/// A [`reqwest::Client`] as a `Service<http::Request<B>>`; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }

    /// The wrapped client, mutably.
    pub fn get_mut(&mut self) -> &mut reqwest::Client {
        &mut self.client
    }

    /// Returns the wrapped client.
    pub fn into_inner(self) -> reqwest::Client {
        self.client
    }
}

impl From<reqwest::Client> for ReqwestService {
    fn from(client: reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

type Pending = <reqwest::Client as Service<reqwest::Request>>::Future;

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<reqwest::Request>::poll_ready(&mut self.client, cx).map_err(convert_error)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let request = request.map(reqwest::Body::wrap);
        match reqwest::Request::try_from(request) {
            Ok(request) => ResponseFuture {
                state: State::Pending {
                    future: self.client.call(request),
                },
            },
            Err(error) => ResponseFuture {
                state: State::Failed {
                    error: Some(convert_error(error)),
                },
            },
        }
    }
}

fn convert_error(error: reqwest::Error) -> BoxError {
    if error.is_timeout() {
        Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, error))
    } else {
        Box::new(error)
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ReqwestService`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State {
        Pending { #[pin] future: Pending },
        Failed { error: Option<BoxError> },
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<reqwest::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Pending { future } => {
                let response = ready!(future.poll(cx)).map_err(convert_error)?;
                Poll::Ready(Ok(response.into()))
            }
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| crate::error::PolledAfterCompletion::boxed("ReqwestService")))),
        }
    }
}
