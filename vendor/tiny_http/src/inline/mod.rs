//! The inline server: each request is read, handled and answered on the
//! thread that holds its connection.
//!
//! Upstream tiny_http parsed each request on a connection thread, queued
//! it, and let the application take it from another thread; the answer
//! went back through a writer shared under a lock, and the connection
//! thread was woken to read the next request: three thread wake-ups and a
//! handful of allocations per request, where the work itself is often a few
//! microseconds. This server is the other way round: the application gives
//! it a [`Handler`], and each connection's thread reads a request, calls
//! the handler, writes the answer and reads the next one. A slow client
//! holds its own connection's thread and nothing else.
//!
//! This file only names the parts and says how they fit; it runs nothing.
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
//! byte of a request (`keepalive_timeout`, then a quiet close), a whole
//! head from its first byte (`header_timeout`, then 408), a whole body from
//! its first read (`body_timeout`, reported to the handler), and no single
//! read or write blocks longer than `socket_timeout`. A head is at most
//! `max_header_bytes` (431). Pipelined requests are answered in order, one at
//! a time; their answers are written together when the client sent them
//! together.
//!
//! # Stopping
//!
//! [`Server::stop`] stops accepting, closes every connection that is
//! between requests (or in the middle of a head), lets each request being
//! handled finish and its answer be written with `Connection: close`, and
//! returns once every thread has exited and the listening socket is
//! closed.
//!
//! # The files, in call order
//!
//! Each file imports only files below it:
//!
//! - `server.rs`: [`Server`]: starts the threads, runs the accept loop and
//!   the lot's threads, and stops them all;
//! - `connection.rs`: serves one connection, request after request;
//! - `shared.rs`: what every thread reads while serving (handler, config,
//!   registry, lot); `handler.rs`: the [`Handler`] trait;
//! - `lot.rs`: parked connections between requests (Unix; `lot_none.rs`
//!   elsewhere);
//! - `request.rs`: the [`Request`] and its body; `deferred.rs`: an answer
//!   written by another thread ([`Deferred`]);
//! - `registry.rs`: the open connections as `stop` sees them, over
//!   `gate.rs`, the stop handshake;
//! - `response.rs`: the [`Response`] and how it is written; `head.rs`:
//!   parsing a request head; `chunked.rs`: the chunked body decoder;
//!   `io.rs`: a socket read under deadlines; `rejection.rs`:
//!   [`Rejection`]; `config.rs`: [`Config`].

mod chunked;
mod config;
mod connection;
mod deferred;
mod gate;
mod handler;
mod head;
mod io;
#[cfg(unix)]
mod lot;
#[cfg(not(unix))]
#[path = "lot_none.rs"]
mod lot;
mod registry;
mod rejection;
mod request;
mod response;
mod server;
mod shared;

pub use self::chunked::ChunkedReader;
pub use self::config::Config;
pub use self::deferred::Deferred;
pub use self::handler::Handler;
pub use self::rejection::Rejection;
pub use self::request::{Body, BodyError, Request};
pub use self::response::Response;
pub use self::server::{Server, Stopped, ABANDON_GRACE};
