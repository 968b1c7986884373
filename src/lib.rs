//! `product-update-service`: takes product update events over HTTP, queues
//! them, and applies them to an in-memory store with a pool of worker
//! threads. Synchronous and thread-based: no async runtime.
//!
//! # The pipeline
//!
//! ```text
//!            vendored tiny_http (inline)        the core                  bounded queue            WORKERS
//! client ──▶ one thread per connection: ──accept()──▶ Service ──▶ Intake ──▶ [QUEUE_SIZE] ──Jobs──▶ worker-0..N ──apply()──▶ Store
//!            read, route, handle, answer            │   (a durable backend may commit the event first: Backend)
//!                   └──────────────── product() ◀───┴────────────────────────────────────────────────────────┘
//! ```
//!
//! A request is read, answered and written on its connection's thread:
//! there is no hand-off between threads on the way from the socket to the
//! queue, and a slow client holds only its own connection.
//!
//! The modules, from the front door down:
//!
//! - [`amqp`]: the RabbitMQ front door (feature `amqp`): consumer threads
//!   that hand a broker's messages to the same core.
//! - [`http`]: the connection threads' entry point, routing, the handlers
//!   (HTTP to the service's operations and back) and their wire helpers.
//!   Validation runs there, so bad input never reaches the core.
//! - [`service`]: the core. [`Service`](service::Service) owns the intake,
//!   the store, the watermark, the counts and the backend, and offers the
//!   operations every front door needs.
//! - [`backend`]: where the state is kept (memory, SQLite, PostgreSQL),
//!   behind one interface.
//! - [`intake`]: the one lock that gives each accepted event its sequence
//!   number and puts it in the bounded channel; the committers' mailbox.
//! - [`worker`]: threads that drain the channel into the store.
//! - [`progress`]: the applied watermark, which `min_seq` reads wait on.
//! - [`store`]: the product map, with per-field sequence guards so events
//!   applied out of order still leave the newest value of each field.
//! - [`event`]: the event and its rules.
//! - [`shutdown`]: [`Running`], the handle that stops everything in order.
//! - [`send`]: the backfill tool (`product-update-service send FILE`), a
//!   client of the service, not a part of it.
//!
//! ARCHITECTURE.md tells the whole story: a reading order, who owns what,
//! the ordering argument, and the shutdown sequence step by step.
//!
//! # Example
//!
//! ```no_run
//! let mut config = product_update_service::Config::default();
//! config.bind = "127.0.0.1:0".parse().unwrap();
//! let running = product_update_service::start(config).unwrap();
//! println!("listening on {}", running.local_addr());
//! let report = running.shutdown().unwrap();
//! assert_eq!(report.not_applied, 0);
//! ```
//!
//! README.md ("Using it from your tests") has a complete example with
//! HTTP requests; it is compiled and run as a doc test below.

pub mod amqp;
pub mod backend;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod product_id;
pub mod progress;
pub mod request_id;
pub mod send;
pub mod service;
pub mod shutdown;
pub mod stats;
pub mod store;
mod sync;
pub mod worker;

use std::net::TcpListener;

pub use config::{Config, ConfigError};
pub use error::{ShutdownError, StartError};
pub use shutdown::{PausedWorkers, Running};
pub use stats::{ShutdownReport, Stats};

use http::HttpServer;
use service::Service;

/// How many connections the kernel may hold until a thread accepts them.
/// The kernel caps it at `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: i32 = 4096;

/// `TcpListener::bind` with a deep accept queue. std's backlog of 128 is
/// less than a burst of new connections (clients reconnecting after a
/// restart) can fill before the connection threads take them; the kernel
/// then drops the rest of the handshakes and the clients retry after 1 s,
/// 3 s, ... Like std, sets `SO_REUSEADDR`.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Opens the storage, binds the socket, starts the core (the backend's
/// threads, then the workers) and the connection threads, and returns once
/// the service is accepting requests.
pub fn start(config: Config) -> Result<Running, StartError> {
    // Storage first: a database that is locked, damaged or unknown stops
    // the start before anything else happens.
    let opened = backend::open(&config).map_err(StartError::Storage)?;
    // Then the broker, if there is one: reached, its topology declared.
    let broker = amqp::check(&config).map_err(StartError::Broker)?;
    let bind_error = |source| StartError::Bind {
        addr: config.bind,
        source,
    };
    let listener = bind(config.bind).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    // The workers run before the first request is read.
    let (service, workers) = Service::start(&config, opened, local_addr)?;
    // Front doors other than HTTP (RabbitMQ's consumers).
    let mut front_doors = Vec::new();
    if let Some(broker) = broker {
        match broker.start(&service) {
            Ok(consumers) => front_doors.push(consumers),
            Err(source) => return Err(stop_core(&service, workers, "amqp", source)),
        }
    }
    let http = match HttpServer::start(listener, &service, &config) {
        Ok(http) => http,
        Err(source) => {
            for door in front_doors {
                door.stop(std::time::Instant::now());
            }
            return Err(stop_core(&service, workers, "http", source));
        }
    };
    log::info!(
        "product-update-service {} listening on {local_addr} ({config})",
        env!("CARGO_PKG_VERSION"),
    );
    let short = config.api_tokens.short();
    if short > 0 {
        log::warn!(
            "{short} API token(s) shorter than {} characters: a guessable token protects nothing (make one with `openssl rand -hex 32`)",
            config::SHORT_TOKEN
        );
    }
    Ok(Running {
        local_addr,
        config,
        service,
        workers,
        http,
        front_doors,
    })
}

/// A start that failed after the core ran: nothing was accepted; stop
/// what runs, in the shutdown's order.
fn stop_core(
    service: &Service,
    workers: worker::Workers,
    thread: &str,
    source: std::io::Error,
) -> StartError {
    service.drain(std::time::Instant::now());
    workers.drain(std::time::Instant::now());
    workers.join();
    service.finish();
    StartError::Spawn {
        thread: thread.to_owned(),
        source,
    }
}

/// The README's examples written in Rust (the "Using it from your tests"
/// section), compiled and run with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    /// Connections the kernel completes for a listener that never accepts:
    /// all of them up to the backlog, where std's `TcpListener::bind` (128)
    /// let every further handshake stall on SYN retransmits (1 s, then 3 s).
    #[test]
    fn the_accept_queue_holds_a_burst_of_connections() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel caps the backlog at somaxconn (128 on kernels before 5.4).
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let burst = somaxconn.min(600);
        let held: Vec<TcpStream> = (0..burst)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {i} of {burst} not completed: {e}"))
            })
            .collect();
        assert_eq!(held.len(), burst);
    }
}
