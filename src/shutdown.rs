//! [`Running`]: the handle to a started service, and the one place that
//! knows the shutdown order.
//!
//! # The shutdown sequence
//!
//! 1. **Close the intake.** `Api::begin_drain` drops the queue's only sender
//!    under the intake lock. Every event answered 202 is already in the
//!    queue; from now on `POST /events` answers 503 `shutting_down`, and
//!    every response carries `Connection: close`. GETs are still answered.
//! 2. **Drain.** The workers keep applying what is queued. When the queue is
//!    empty *and* its sender is gone, each worker's
//!    `for job in jobs` ends, the worker exits and drops its
//!    `done_tx`. When the last one is dropped,
//!    `done_rx.recv_deadline(now + SHUTDOWN_TIMEOUT)` returns "disconnected":
//!    drained.
//! 3. **Deadline.** If the deadline passes first, `Control::abandon` makes
//!    each worker stop after at most the event it holds. The events left in
//!    the queue are counted (accepted − applied − panicked) and logged.
//! 4. **Join the workers.**
//! 5. **Stop HTTP.** One `unblock()` per request thread; each finishes the
//!    requests queued ahead of its marker and returns. Join them, answer any
//!    request that arrived after the markers with 503, then drop the
//!    tiny_http server, which closes the listening socket.
//! 6. **Report** the counts.
//!
//! No step polls and nothing is joined in `Drop`: dropping a `Running`
//! without calling `shutdown` leaves its threads running (tests must call
//! `shutdown` and check its report).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::Config;
use crate::error::ShutdownError;
use crate::http::{Api, HttpThreads};
use crate::queue::Intake;
use crate::worker::{Control, Worker, WorkerCounters};

/// A started service. Get its address with [`Running::local_addr`]; stop it
/// with [`Running::shutdown`].
pub struct Running {
    pub(crate) config: Config,
    pub(crate) local_addr: SocketAddr,
    pub(crate) server: Arc<tiny_http::Server>,
    pub(crate) api: Arc<Api>,
    pub(crate) http: HttpThreads,
    pub(crate) intake: Arc<Intake>,
    pub(crate) workers: Vec<Worker>,
    /// Never receives a message: it disconnects when the last worker exits.
    pub(crate) done_rx: Receiver<()>,
    pub(crate) control: Arc<Control>,
    pub(crate) counters: Arc<WorkerCounters>,
    pub(crate) store: crate::store::Store,
}

/// Counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Events answered 202.
    pub accepted: u64,
    /// Events applied to the store.
    pub applied: u64,
    /// Events whose apply panicked (caught; the worker went on).
    pub panics: u64,
    /// Fields skipped because a newer event had already set them.
    pub stale_fields: u64,
    /// Events waiting in the queue.
    pub queue_depth: usize,
    /// Products in the store.
    pub products: usize,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events answered 202 over the service's life.
    pub accepted: u64,
    /// Events applied to the store.
    pub applied: u64,
    /// Events whose apply panicked.
    pub panics: u64,
    /// Accepted events never applied because the drain deadline passed.
    pub not_applied: u64,
    /// True if the queue was empty before the deadline.
    pub drained: bool,
    /// Time from the start of shutdown to the end.
    pub elapsed: Duration,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} applied={} panicked={} not_applied={} drained={} elapsed={:?}",
            self.accepted, self.applied, self.panics, self.not_applied, self.drained, self.elapsed
        )
    }
}

/// While this value lives, the workers apply nothing (events stay queued).
/// Dropping it resumes them. Shutdown overrides a pause.
#[must_use = "the workers resume as soon as this is dropped"]
pub struct PausedWorkers {
    control: Arc<Control>,
}

impl Drop for PausedWorkers {
    fn drop(&mut self) {
        self.control.resume();
    }
}

impl Running {
    /// The address the service listens on (with the real port when the
    /// configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        Stats {
            accepted: self.intake.accepted(),
            applied: self.counters.applied.load(Ordering::Relaxed),
            panics: self.counters.panics.load(Ordering::Relaxed),
            stale_fields: self.counters.stale_fields.load(Ordering::Relaxed),
            queue_depth: self.intake.depth(),
            products: self.store.len(),
        }
    }

    /// Holds the workers still until the returned value is dropped: each
    /// worker stops at its next checkpoint (an event it is already applying
    /// is finished, and each worker may hold one event taken from the queue).
    /// Useful to watch the queue fill and backpressure start.
    pub fn pause_workers(&self) -> PausedWorkers {
        self.control.pause();
        PausedWorkers {
            control: Arc::clone(&self.control),
        }
    }

    /// Stops the service in the order described in the module docs and
    /// reports what happened. Takes at most about `SHUTDOWN_TIMEOUT` plus
    /// the time to finish the requests in hand, which `SOCKET_TIMEOUT`
    /// bounds for clients that stop sending or reading.
    pub fn shutdown(self) -> Result<ShutdownReport, ShutdownError> {
        let started = Instant::now();
        let deadline = started + self.config.shutdown_timeout;

        // 1. Close the intake.
        let queued = self.intake.depth();
        let accepted = self.api.begin_drain();
        log::info!(
            "shutdown: intake closed after {accepted} accepted events; draining about {queued} queued (deadline {:?})",
            self.config.shutdown_timeout
        );

        // 2. and 3. Drain until the workers are done or the deadline passes.
        let drained = match self.done_rx.recv_deadline(deadline) {
            Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) | Ok(()) => {
                log::warn!(
                    "shutdown: drain deadline of {:?} passed; stopping workers",
                    self.config.shutdown_timeout
                );
                self.control.abandon();
                false
            }
        };

        // 4. Join the workers (after `abandon`, each finishes at most one event).
        let mut panicked = Vec::new();
        for worker in self.workers {
            let id = worker.id();
            if worker.join().is_err() {
                log::error!("shutdown: worker-{id} had panicked");
                panicked.push("worker");
            }
        }

        // 5. Stop the HTTP side and close the listening socket.
        let http_panics = self.http.stop(&self.server, &self.api);
        panicked.extend(std::iter::repeat_n("http", http_panics));
        drop(self.api);
        drop(self.server);

        // 6. Report.
        let applied = self.counters.applied.load(Ordering::Relaxed);
        let panics = self.counters.panics.load(Ordering::Relaxed);
        let report = ShutdownReport {
            accepted,
            applied,
            panics,
            not_applied: accepted.saturating_sub(applied + panics),
            drained,
            elapsed: started.elapsed(),
        };
        if report.not_applied > 0 {
            log::warn!(
                "shutdown: {} accepted events were NOT applied (drain deadline passed); {report}",
                report.not_applied
            );
        } else {
            log::info!("shutdown complete: {report}");
        }
        if panicked.is_empty() {
            Ok(report)
        } else {
            Err(ShutdownError { panicked, report })
        }
    }
}
