//! A loopback HTTP/1 server around a [`SimApi`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use super::api::SimApi;

/// How long [`SimServer::shutdown`] lets requests in flight finish before it cuts them.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A running loopback server around a [`SimApi`] (see [`serve`]).
///
/// Dropping it stops accepting connections and cuts those open; [`shutdown`](Self::shutdown)
/// does it gracefully.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: Option<JoinHandle<()>>,
    grace: Duration,
}

/// Serves `api` over HTTP/1 on `127.0.0.1`, on a port the system picks.
///
/// Every connection is served by a task of the current tokio runtime; the server runs on that
/// runtime's clock (the real one, unless paused). Any number of clients, in this process or
/// others, can share it: they share `api`'s buckets. A scripted connection error closes the
/// connection without an answer.
///
/// # Errors
/// When the listener cannot be bound.
///
/// # Examples
/// ```
/// use tower_llm_limits_sim::{self as sim, Limits, SimApi};
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let api = SimApi::builder().default_limits(Limits::per_minute(50, 30_000, 8_000)).build();
/// let server = sim::serve(api.clone()).await?;
/// println!("POST http://{}/v1/messages", server.addr());
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub async fn serve(api: SimApi) -> io::Result<SimServer> {
    serve_on(api, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Like [`serve`], on `addr`.
///
/// # Errors
/// When the listener cannot be bound.
pub async fn serve_on(api: SimApi, addr: SocketAddr) -> io::Result<SimServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(None);
    let task = tokio::spawn(accept_loop(listener, api, stopped));
    tracing::debug!(%addr, "sim: serving");
    Ok(SimServer {
        addr,
        stop,
        task: Some(task),
        grace: DEFAULT_GRACE,
    })
}

async fn accept_loop(
    listener: TcpListener,
    api: SimApi,
    mut stopped: watch::Receiver<Option<Duration>>,
) {
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let api = api.clone();
                let stopped = stopped.clone();
                connections.spawn(connection(stream, api, stopped));
            }
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = stopped.changed() => {
                match (changed, *stopped.borrow()) {
                    (Err(_), _) => break Duration::ZERO,
                    (Ok(()), Some(grace)) => break grace,
                    (Ok(()), None) => {}
                }
            }
        }
    };
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::debug!("sim: grace period over, cutting connections");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    api: SimApi,
    mut stopped: watch::Receiver<Option<Duration>>,
) {
    let service = service_fn(move |req: Request<Incoming>| api.clone().oneshot(req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopped.wait_for(Option::is_some) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

impl SimServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, the base URI to send to.
    pub fn base_uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How long [`shutdown`](Self::shutdown) waits for requests in flight
    /// (default [`DEFAULT_GRACE`]).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Stops accepting connections, lets requests in flight finish (at most the grace period,
    /// after which they are cut: hung requests never finish), and waits for every connection
    /// task to end.
    pub async fn shutdown(mut self) {
        let Some(task) = self.task.take() else { return };
        let _ = self.stop.send(Some(self.grace));
        let _ = task.await;
        tracing::debug!(addr = %self.addr, "sim: server stopped");
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
