//! `product-update-service`: takes product update events over HTTP, queues
//! them, and applies them to an in-memory store with a pool of worker
//! threads. Synchronous and thread-based: no async runtime.
//!
//! # The pipeline
//!
//! ```text
//!             tiny_http                    HTTP_THREADS            bounded queue          WORKERS
//! client ──▶ accept + one thread ──recv()──▶ http-0..N ──submit()──▶ [QUEUE_SIZE] ──next()──▶ worker-0..N ──apply()──▶ Store
//!            per connection                   │                                                           (RwLock<HashMap>)
//!                                             └──────────────────────── get() ◀───────────────────────────────┘
//! ```
//!
//! - [`http`]: request threads; routing; validation runs here, so bad input
//!   never reaches the queue. `POST /events` answers 202 as soon as the
//!   event is queued, 503 at once when the queue is full.
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

pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod model;
pub mod problem;
pub mod progress;
pub mod queue;
pub mod request_id;
pub mod shutdown;
pub mod store;
pub mod worker;

use std::net::TcpListener;
use std::sync::Arc;

pub use config::{Config, ConfigError};
pub use error::{ShutdownError, StartError};
pub use shutdown::{PausedWorkers, Running, ShutdownReport, Stats};

use http::{Api, HttpThreads};
use queue::Intake;
use store::Store;
use worker::{Control, Worker, WorkerCounters};

/// How many connections the kernel may hold for the accept thread. The
/// kernel caps it at `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: i32 = 4096;

/// `TcpListener::bind` with a deep accept queue. std's backlog of 128 is
/// less than a burst of new connections (clients reconnecting after a
/// restart) that the accept thread, which starts a thread per connection,
/// can take at once; the kernel then drops the rest of the handshakes and
/// the clients retry after 1 s, 3 s, ... Like std, sets `SO_REUSEADDR`.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Binds the socket, starts the workers and the request threads, and
/// returns once the service is accepting requests.
pub fn start(config: Config) -> Result<Running, StartError> {
    let listener = bind(config.bind).map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;

    let store = Store::new();
    let (intake, jobs) = Intake::with_window(
        config.queue_size,
        config.idempotency_window,
        config.idempotency_ttl,
    );
    let intake = Arc::new(intake);
    let control = Arc::new(Control::default());
    let counters = Arc::new(WorkerCounters::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let progress = Arc::new(progress::Progress::default());

    // Workers first, so the queue is being drained before the first request.
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let mut workers = Vec::with_capacity(config.workers);
    for id in 0..config.workers {
        let store = store.clone();
        let metrics = Arc::clone(&metrics);
        let progress = Arc::clone(&progress);
        let spawned = Worker::spawn(
            id,
            jobs.clone(),
            done_tx.clone(),
            Arc::clone(&control),
            Arc::clone(&counters),
            move |job| {
                // Reports the seq as done when dropped: after the apply, or
                // while unwinding from a panic in it.
                let _done = progress::DoneOnDrop(&progress, job.seq);
                let outcome = store.apply(job.seq, &job.update);
                metrics
                    .queue_wait_seconds
                    .observe(job.accepted_at.elapsed());
                outcome
            },
        );
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(source) => {
                // Closing the intake lets the workers already started exit.
                intake.close();
                control.abandon();
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

    let api = Arc::new(Api::new(
        Arc::clone(&intake),
        store.clone(),
        Arc::clone(&counters),
        Arc::clone(&metrics),
        Arc::clone(&progress),
        &config,
    ));
    let server =
        tiny_http::Server::from_listener_with_limits(listener, None, Api::server_limits(&api))
            .map_err(|e| StartError::Bind {
                addr: config.bind,
                source: std::io::Error::other(e.to_string()),
            })?;
    let server = Arc::new(server);
    let http = HttpThreads::spawn(&server, &api, config.http_threads).map_err(|source| {
        intake.close();
        StartError::Spawn {
            thread: "http".to_owned(),
            source,
        }
    })?;

    log::info!(
        "product-update-service {} listening on {local_addr} ({config})",
        env!("CARGO_PKG_VERSION")
    );
    Ok(Running {
        config,
        local_addr,
        server,
        api,
        http,
        intake,
        workers,
        done_rx,
        control,
        counters,
        store,
    })
}

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
