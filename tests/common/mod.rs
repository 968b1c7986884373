//! Test harness: a real service on 127.0.0.1 port 0, a ureq client that
//! reads 4xx/5xx as responses, and waits on conditions with deadlines.
//! Never sleeps to synchronize and never installs a signal handler.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod binary;
pub mod postgres;
#[cfg(feature = "amqp")]
pub mod rabbitmq;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use product_update_service::{Config, Running, ShutdownReport, Stats, start};
use serde_json::Value;

/// The longest any test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A config for tests: loopback, any free port, small numbers. In
/// `tests/durable_suite.rs` (which runs the API, concurrency and delivery
/// tests again) also a fresh `DATA_DIR`: a durable instance in `commit`
/// mode, removed again by [`TestServer::shutdown`]; in
/// `tests/postgres_suite.rs`, a fresh database on the binary's shared
/// throwaway PostgreSQL server.
pub fn test_config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().expect("literal address"),
        shutdown_timeout: Duration::from_secs(10),
        data_dir: durable_suite().then(|| scratch_dir("suite")),
        database_url: postgres_suite().then(|| {
            let url = postgres::Shared::get().database();
            product_update_service::config::DatabaseUrl::parse(&url).expect("the harness's URL")
        }),
        ..Config::default()
    }
}

/// For the few tests of memory-mode mechanics that PostgreSQL mode does
/// differently on purpose (each says why): true in
/// `tests/postgres_suite.rs`, which then returns early, saying so. The
/// test still runs in its own binary and in `durable_suite.rs`.
pub fn differs_in_postgres_mode(why: &str) -> bool {
    if postgres_suite() {
        eprintln!("not run against PostgreSQL: {why}");
    }
    postgres_suite()
}

/// Whether this test binary is `tests/postgres_suite.rs`.
pub fn postgres_suite() -> bool {
    option_env!("CARGO_CRATE_NAME") == Some("postgres_suite")
}

/// Whether this test binary is `tests/durable_suite.rs`.
pub fn durable_suite() -> bool {
    option_env!("CARGO_CRATE_NAME") == Some("durable_suite")
}

/// A new empty directory under the system's temp dir, unique in this
/// process and across processes: claimed with `create_dir`, which fails
/// if the name exists (each test binary that includes this file more than
/// once, like `durable_suite`, has one counter per copy).
pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "product-update-service-test-{tag}-{}-{n}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create a scratch dir {}: {e}", dir.display()),
        }
    }
}

pub struct TestServer {
    pub running: Running,
    pub base: String,
    pub agent: ureq::Agent,
}

/// A response read fully: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts a problem-details error with `status` and `code`; returns it.
    pub fn assert_problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "status; body: {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "content type of {}",
            self.body
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        body
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(DEADLINE))
        .build()
        .into()
}

/// Reads a ureq response fully into a [`Reply`].
pub fn read_reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("reading body: {e}"));
    Reply {
        status,
        headers,
        body,
    }
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        let running = start(config).expect("service starts");
        let base = format!("http://{}", running.local_addr());
        TestServer {
            running,
            base,
            agent: agent(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST a JSON body to /events with `Content-Type: application/json`.
    pub fn post_event(&self, body: &str) -> Reply {
        post_event(&self.agent, &self.base, body)
    }

    pub fn get(&self, path: &str) -> Reply {
        read_reply(self.agent.get(self.url(path)).call())
    }

    pub fn stats(&self) -> Stats {
        self.running.stats()
    }

    /// Waits until every accepted event has been applied.
    pub fn wait_applied(&self) -> Stats {
        wait_until("all accepted events applied", || {
            let s = self.stats();
            (s.applied + s.panics == s.accepted && s.queue_depth == 0).then_some(s)
        })
    }

    /// Shuts down (and removes a durable instance's scratch `DATA_DIR`).
    pub fn shutdown(self) -> ShutdownReport {
        let data_dir = self.running.config().data_dir.clone();
        let report = self.running.shutdown().expect("clean shutdown");
        if let Some(dir) = data_dir.filter(|_| durable_suite()) {
            let _ = std::fs::remove_dir_all(dir);
        }
        report
    }
}

pub fn post_event(agent: &ureq::Agent, base: &str, body: &str) -> Reply {
    read_reply(
        agent
            .post(format!("{base}/events"))
            .header("Content-Type", "application/json")
            .send(body),
    )
}

/// Calls `check` until it returns `Some`, or fails the test after
/// [`DEADLINE`] naming `what`. It re-checks every millisecond: the
/// condition, not a guessed delay, decides when the test goes on.
pub fn wait_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_until_within(DEADLINE, what, check)
}

/// [`wait_until`] with another deadline: for a condition that needs a
/// given amount of work done, which a busy machine does more slowly.
pub fn wait_until_within<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A new connection with `request` sent on it, reads bounded by [`DEADLINE`].
fn send_raw(addr: std::net::SocketAddr, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("set timeout");
    stream.write_all(request).expect("write request");
    stream
}

/// Sends raw bytes on a new connection and reads until the server closes it
/// (or the deadline passes). For what an HTTP client library won't send.
pub fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = send_raw(addr, request);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a raw HTTP/1.x response (identity body) into a [`Reply`].
pub fn parse_raw(text: &str) -> Reply {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Sends `request` on a new connection and reads until the server closes
/// it, failing the test if the server does not close it before [`DEADLINE`].
/// Returns the one response it sent.
pub fn exchange_expecting_close(addr: std::net::SocketAddr, request: &[u8]) -> Reply {
    let mut stream = send_raw(addr, request);
    let mut out = Vec::new();
    if let Err(e) = stream.read_to_end(&mut out) {
        panic!(
            "the server did not close the connection ({e}); read so far: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    parse_raw(&String::from_utf8_lossy(&out))
}

/// Sets its flag when dropped: in a `thread::scope` whose threads loop
/// until the flag is set, it ends them however the scope's closure ends (a
/// failed assertion too), so that the scope can join them and the test
/// fails instead of hanging.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
