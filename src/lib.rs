//! `product-update-service`: takes product update events over HTTP, queues
//! them, and applies them to an in-memory store with a pool of worker
//! threads. Synchronous and thread-based: no async runtime.
//!
//! # The pipeline
//!
//! ```text
//!             vendored tiny_http (inline)                    bounded queue           WORKERS
//! client ──▶ one thread per connection: ──submit()──▶ [QUEUE_SIZE] ──next()──▶ worker-0..N ──apply()──▶ Store
//!            read, route, handle, answer                                                        (RwLock<HashMap>)
//!                   └──────────────────────────────── get() ◀──────────────────────────────────────────┘
//! ```
//!
//! A request is read, answered and written on its connection's thread:
//! there is no hand-off between threads on the way from the socket to the
//! queue, and a slow client holds only its own connection.
//!
//! - [`http`]: the connection threads' entry point, routing, the handlers
//!   and their wire helpers. Validation runs there, so bad input never
//!   reaches the queue. `POST /events` answers 202 as soon as the event is
//!   queued, 503 at once when the queue is full.
//! - [`queue`]: the intake: one lock that gives each accepted event its
//!   sequence number and puts it in the bounded channel.
//! - [`worker`]: threads that drain the channel into the store.
//! - [`store`]: the product map, with per-field sequence guards so events
//!   applied out of order still leave the newest value of each field.
//! - [`shutdown`]: [`Running`], the handle that stops everything in order.
//!
//! ARCHITECTURE.md tells the whole story: who owns what, the ordering
//! argument, and the shutdown sequence step by step.
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

pub mod config;
pub mod durable;
pub mod error;
pub mod http;
pub mod metrics;
pub mod model;
pub mod problem;
pub mod progress;
pub mod queue;
pub mod request_id;
pub mod shutdown;
pub mod stats;
pub mod store;
mod sync;
pub mod worker;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

pub use config::{Config, ConfigError};
pub use error::{ShutdownError, StartError};
pub use shutdown::{PausedWorkers, Running};
pub use stats::{ShutdownReport, Stats};

use durable::Recovered;
use http::{Api, HttpServer};
use queue::Intake;
use store::Store;
use worker::{Control, Worker, WorkerCounters};

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

/// Binds the socket, starts the workers and the connection threads, and
/// returns once the service is accepting requests.
pub fn start(config: Config) -> Result<Running, StartError> {
    // Durable state first: a database that is locked, damaged or unknown
    // stops the start before anything else happens.
    let mut recovered = Recovered::open(&config).map_err(StartError::Storage)?;
    let bind_error = |source| StartError::Bind {
        addr: config.bind,
        source,
    };
    let listener = bind(config.bind).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;

    let store = Store::new();
    // With a shared database, the database recognises retried event ids
    // (whichever instance took them first): this process's window is off.
    let window = match config.database_url {
        Some(_) => 0,
        None => config.idempotency_window,
    };
    let (intake, jobs) = Intake::with_window(config.queue_size, window, config.idempotency_ttl);
    // Durable mode: the loaded products, the journal replayed, the seqs
    // continued; every seq up to `through` is applied.
    let through = recovered
        .as_mut()
        .map_or(0, |recovered| recovered.restore(&store, &intake));
    let intake = Arc::new(intake);
    let control = Arc::new(Control::default());
    let counters = Arc::new(WorkerCounters::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let progress = Arc::new(progress::Progress::starting_at(through));
    let durable = match recovered {
        None => None,
        Some(recovered) => {
            let started = recovered.start(
                Arc::clone(&intake),
                store.clone(),
                Arc::clone(&progress),
                Arc::clone(&metrics),
                local_addr,
            );
            Some(Arc::new(started.map_err(|source| StartError::Spawn {
                thread: "committer".to_owned(),
                source,
            })?))
        }
    };

    // Workers first, so the queue is being drained before the first request.
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let apply = worker::apply_to(
        store.clone(),
        Arc::clone(&progress),
        Arc::clone(&metrics),
        durable.clone(),
    );
    let mut workers = Vec::with_capacity(config.workers);
    for id in 0..config.workers {
        let spawned = Worker::spawn(
            id,
            jobs.clone(),
            done_tx.clone(),
            Arc::clone(&control),
            Arc::clone(&counters),
            apply.clone(),
        );
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(source) => {
                // Closing the intake lets the workers already started exit.
                intake.close();
                control.abandon();
                if let Some(durable) = &durable {
                    durable.finish();
                }
                return Err(StartError::Spawn {
                    thread: format!("worker-{id}"),
                    source,
                });
            }
        }
    }
    // Only the workers hold these now: the last worker to exit disconnects
    // `done_rx`, and the channel is disconnected once the intake closes.
    drop(done_tx);
    drop(jobs);

    let api = Arc::new(Api {
        intake: Arc::clone(&intake),
        durable,
        store,
        progress,
        counters,
        metrics,
        config,
        open_connections: Arc::new(AtomicUsize::new(0)),
        draining: AtomicBool::new(false),
        access_log: log::log_enabled!(target: "access", log::Level::Info),
    });
    let http = HttpServer::start(listener, &api).map_err(|source| {
        intake.close();
        if let Some(durable) = &api.durable {
            durable.finish();
        }
        StartError::Spawn {
            thread: "http".to_owned(),
            source,
        }
    })?;

    log::info!(
        "product-update-service {} listening on {local_addr} ({})",
        env!("CARGO_PKG_VERSION"),
        api.config
    );
    Ok(Running {
        local_addr,
        http,
        api,
        workers,
        done_rx,
        control,
    })
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
