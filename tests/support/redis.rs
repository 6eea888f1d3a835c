//! A real `redis-server` for tests: started on a free port in a temporary directory, killed on
//! drop. When the binary is missing, [`RedisServer::start`] says how to install it and returns
//! `None` so the test can skip (`.ci/run` installs it, so CI always runs these tests).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// The server binary: `$REDIS_SERVER` when set (a path or a name on `PATH`, e.g.
/// `valkey-server`: `.ci/run` runs the Redis tests against Valkey too when Debian has it),
/// else `redis-server` on `PATH`.
fn binary() -> Option<PathBuf> {
    let name = std::env::var_os("REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
    let named = PathBuf::from(&name);
    if named.components().count() > 1 {
        return named.is_file().then_some(named);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|p| p.join(&name))
        .find(|p| p.is_file())
}

impl RedisServer {
    /// Starts one on a free port, or prints why not and returns `None`.
    pub fn start() -> Option<Self> {
        if binary().is_none() {
            eprintln!(
                "SKIPPED: redis-server (or $REDIS_SERVER) is not installed; install it to run the Redis tests \
                 (Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: `brew install redis`)"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "tower-llm-limits-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.restart();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (its data is lost: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(binary().expect("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Driving several independent limiter instances against one simulated API on the real clock.
pub mod drive {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http::StatusCode;
    use tokio::time::Instant;
    use tower::{Layer, ServiceExt};
    use tower_llm_limits::rate_limit::{RateLimitLayer, RateLimitState};
    use tower_llm_limits_sim::{Limits, SimApi, message_body};

    /// The model every request uses (one rate-limit key).
    pub const MODEL: &str = "claude-sonnet-4-5";

    /// The simulated API: requests bind (`rpm`), tokens are plentiful; the server starts empty,
    /// so the run measures the steady state.
    pub fn api(rpm: u64) -> SimApi {
        SimApi::builder()
            .model(MODEL, Limits::per_minute(rpm, 10_000_000, 10_000_000))
            .starting_fill(0.0)
            .latency(Duration::from_millis(30), Duration::ZERO)
            .seed(11)
            .build()
    }

    /// One attempt: when (from the start) it was answered, and how.
    #[derive(Clone, Copy, Debug)]
    pub struct Attempt {
        /// Seconds since the start of the run.
        pub at: f64,
        /// The instance that sent it.
        pub instance: usize,
        /// The status, `None` for an error.
        pub status: Option<StatusCode>,
    }

    /// What a run did.
    #[derive(Debug, Default)]
    pub struct Run {
        /// Every attempt, in answer order.
        pub attempts: Vec<Attempt>,
        /// Requests given up after too many 429s or an error.
        pub failed: usize,
        /// Wall time of the run.
        pub elapsed: Duration,
    }

    impl Run {
        /// Attempts answered in `[from, to)` seconds.
        pub fn window(&self, from: f64, to: f64) -> impl Iterator<Item = &Attempt> {
            self.attempts
                .iter()
                .filter(move |a| a.at >= from && a.at < to)
        }
        /// Successful requests in `[from, to)`.
        pub fn ok_in(&self, from: f64, to: f64) -> usize {
            self.window(from, to)
                .filter(|a| a.status.is_some_and(|s| s.is_success()))
                .count()
        }
        /// The share of attempts in `[from, to)` answered 429.
        pub fn share_429_in(&self, from: f64, to: f64) -> f64 {
            let (n, limited) = self.window(from, to).fold((0, 0), |(n, l), a| {
                (
                    n + 1,
                    l + usize::from(a.status == Some(StatusCode::TOO_MANY_REQUESTS)),
                )
            });
            if n == 0 {
                0.0
            } else {
                limited as f64 / n as f64
            }
        }
        /// Successful requests.
        pub fn ok(&self) -> usize {
            self.ok_in(0.0, f64::MAX)
        }
        /// The share of all attempts answered 429.
        pub fn share_429(&self) -> f64 {
            self.share_429_in(0.0, f64::MAX)
        }
        /// Successful requests per second.
        pub fn goodput(&self) -> f64 {
            self.ok() as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// Runs `states.len()` independent limiters (each its own layer and state), `concurrency`
    /// callers each, against `api` for `duration`; a 429 is retried (up to 20 attempts).
    pub async fn run(
        api: &SimApi,
        states: Vec<RateLimitState>,
        concurrency: usize,
        duration: Duration,
    ) -> Run {
        let start = Instant::now();
        let deadline = start + duration;
        let out = Arc::new(Mutex::new(Run::default()));
        let mut tasks = Vec::new();
        for (instance, state) in states.into_iter().enumerate() {
            let service = RateLimitLayer::with_state(state).layer(api.clone());
            for _ in 0..concurrency {
                let service = service.clone();
                let out = out.clone();
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let mut done = false;
                        for _ in 0..20 {
                            let req = http::Request::post("http://sim.local/v1/messages")
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(message_body(MODEL, 100, 50, 20)))
                                .expect("request");
                            let status =
                                service.clone().oneshot(req).await.ok().map(|r| r.status());
                            let at = start.elapsed().as_secs_f64();
                            out.lock().unwrap().attempts.push(Attempt {
                                at,
                                instance,
                                status,
                            });
                            if status.is_some_and(|s| s.is_success()) {
                                done = true;
                                break;
                            }
                            if status != Some(StatusCode::TOO_MANY_REQUESTS) {
                                break;
                            }
                        }
                        if !done {
                            out.lock().unwrap().failed += 1;
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("caller task");
        }
        let mut run = std::mem::take(&mut *out.lock().unwrap());
        run.elapsed = start.elapsed();
        run
    }
}
