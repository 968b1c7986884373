//! PATCHED (product-update-service): requests answered on the thread that
//! read them.
//!
//! Upstream tiny_http parses each request on a connection thread, queues
//! it, and lets the application take it from another thread with
//! `Server::recv`; the answer goes back through a
//! writer shared under a lock, and the connection thread is woken to read
//! the next request: three thread wake-ups and a handful of allocations
//! per request, where the work itself is often a few microseconds. This
//! module is the other way round: the application gives the server a
//! [`Handler`], and each connection's thread reads a request, calls the
//! handler, writes the answer and reads the next one. A slow client holds
//! its own connection's thread and nothing else.
//!
//! # Threads
//!
//! There is no accept thread. Each thread of the server loops: wait in
//! `accept` on the shared listening socket, serve that connection until it
//! ends, wait in `accept` again. A thread that accepts a connection starts
//! another thread first if fewer than [`Config::spare_threads`] others are
//! waiting in `accept`, so a new connection never waits for a thread to be
//! created; a thread that finds [`Config::max_idle_threads`] others
//! waiting after its connection ends exits. A new connection thus costs no
//! hand-off between threads at all, and a keep-alive connection costs one
//! thread for as long as it is open, bounded by
//! [`Config::max_connections`] (past it a connection is answered 503 by
//! the thread that accepted it, and closed).
//!
//! While a connection is the only one open, its thread polls for up to
//! [`Config::spin`] before each blocking read of a request head (after an
//! answer, and on a connection just accepted): a client that sends at once
//! is answered without a thread (or a core) going to sleep and being woken
//! (see `Io::poll_for_input`). Not while another thread writes the
//! connection's last answer (`deferred.rs`); a poll under way ends when a
//! second connection opens, and none starts with two or more; past
//! [`Config::park_above`] they park (see `lot.rs`).
//!
//! # Limits
//!
//! Every read waits for something with a deadline (see `io.rs`): the first
//! byte of a request (`keep_alive_timeout`, then a quiet close), a whole
//! head from its first byte (`head_timeout`, then 408), a whole body from
//! its first read (`body_timeout`, reported to the handler), and no single
//! read or write blocks longer than `socket_timeout`. A head is at most
//! `max_head_bytes` (431). Pipelined requests are answered in order, one at
//! a time; their answers are written together when the client sent them
//! together.
//!
//! # Stopping
//!
//! [`Server::stop`] closes the listening socket, closes every connection
//! that is between requests (or in the middle of a head), lets each
//! request being handled finish and its answer be written with
//! `Connection: close`, and returns once every thread has exited.

mod chunked;
mod connection;
mod deferred;
mod gate;
mod head;
mod io;
#[cfg(unix)]
mod lot;
#[cfg(not(unix))]
#[path = "lot_none.rs"]
mod lot;
mod rejection;
mod request;
mod response;
mod server;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

pub use self::chunked::ChunkedReader;
pub use self::deferred::Deferred;
pub use self::rejection::Rejection;
pub use self::request::{Body, BodyError, Request};
pub use self::response::Response;
pub use self::server::{Server, Stopped};

/// What the application does with requests. Called on connection threads,
/// many at once.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` by filling in `response`. The server writes the
    /// status line, `Date`, `Content-Length` and `Connection` itself.
    /// A body left unread closes the connection after the answer; a panic
    /// is answered with a bare 500 and closes it too.
    fn handle(&self, request: &mut Request<'_>, response: &mut Response);

    /// Renders the answer to something the server refuses before a request
    /// reaches [`Handler::handle`] (a malformed or oversized head, a head
    /// timeout, too many connections, a request during [`Server::stop`]).
    /// The connection closes after it.
    fn refuse(&self, rejection: Rejection, response: &mut Response);
}

/// The server's bounds. See the module docs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections served at once; past it, 503 `TooManyConnections`.
    pub max_connections: usize,
    /// The longest one read or write may block.
    pub socket_timeout: Duration,
    /// How long a connection may wait for a request to begin (its first,
    /// or the next one); then it is closed without an answer.
    pub keep_alive_timeout: Duration,
    /// A head must be complete this long after its first byte.
    pub head_timeout: Duration,
    /// A body must be complete this long after its first read.
    pub body_timeout: Duration,
    /// The longest head (request line and fields, with line ends).
    pub max_head_bytes: usize,
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
            socket_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_head_bytes: 32 * 1024,
            spare_threads: 2,
            max_idle_threads: 64,
            park_above: 8,
            spin: Duration::from_micros(50),
            open_connections: Arc::default(),
        }
    }
}
