//! The server's bounds and thread policy: [`Config`], given to
//! [`Server::start`](super::Server::start) and read by every thread.
//!
//! Every bound on what a client can make the server hold is here, so that
//! one value shows them all; the module docs of `inline` say how each is
//! enforced.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// The server's bounds and thread policy (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections served at once. At the limit, the connection idle
    /// longest (waiting for, or reading, a request head) is closed to make
    /// room for a new one; with none idle, 503 `TooManyConnections`.
    pub max_connections: usize,
    /// Connections one client address may hold at once. Past it, that
    /// client's connection idle longest is closed to make room; with none
    /// idle, 503 `TooManyConnections` for that address only. Behind a proxy
    /// every client has the proxy's address: set it to `max_connections`
    /// there.
    pub max_connections_per_client: usize,
    /// The longest one read or write may block.
    pub socket_timeout: Duration,
    /// How long a connection may wait for a request to begin (its first,
    /// or the next one); then it is closed without an answer.
    pub keepalive_timeout: Duration,
    /// A head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// A body must be complete this long after its first read.
    pub body_timeout: Duration,
    /// The longest head (request line and fields, with line ends).
    pub max_header_bytes: usize,
    /// Threads kept waiting in `accept`, so that a new connection is taken
    /// at once (at least 1).
    pub spare_threads: usize,
    /// Threads allowed to wait in `accept` before one whose connection
    /// ended exits.
    pub max_idle_threads: usize,
    /// Open connections above which one that waits for its next request
    /// is parked (watched by epoll) instead of holding its thread; see
    /// `lot.rs`. `usize::MAX`: never (and no poller thread).
    pub park_above: usize,
    /// While a connection is the only one open, how long its thread polls
    /// for the next request before it blocks (see `io.rs`; at most the
    /// keep-alive timeout). Zero: never, as on a machine with one core.
    pub spin: Duration,
    /// Connections being served: the server keeps the count, a caller may
    /// keep a clone to read it.
    pub open_connections: Arc<AtomicUsize>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_connections: 1000,
            max_connections_per_client: 1000,
            socket_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            spare_threads: 2,
            max_idle_threads: 64,
            park_above: 8,
            spin: Duration::from_micros(50),
            open_connections: Arc::default(),
        }
    }
}
