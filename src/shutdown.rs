//! [`Running`]: the handle to a started service, and the one place that
//! knows the shutdown order.
//!
//! # The shutdown sequence
//!
//! 0. **Close the other front doors.** RabbitMQ's consumers take no new
//!    message and settle those in hand (acknowledge once the event is
//!    safe), by the deadline; what they did not take goes back to its
//!    queue with their connections, for the next consumer.
//! 1. **Stop taking events.** `Service::drain` has the backend commit what
//!    was posted to it and let it reach the queue (the durable modes), then
//!    closes the intake: it drops the queue's only sender under the intake
//!    lock. Every event answered 202 is already in the queue; from now on
//!    `POST /events` answers 503 `shutting_down`, and every response
//!    carries `Connection: close`. GETs are still answered.
//! 2. **Drain.** The workers keep applying what is queued. When the queue is
//!    empty *and* its sender is gone, each worker's
//!    `for job in jobs` ends, the worker exits and drops its
//!    `done_tx`. When the last one is dropped,
//!    `done_rx.recv_deadline(now + SHUTDOWN_TIMEOUT)` returns "disconnected":
//!    drained.
//! 3. **Deadline.** If the deadline passes first, `Control::abandon` makes
//!    each worker stop after at most the batch it holds. The events left in
//!    the queue are counted (accepted − applied − panicked) and logged.
//! 4. **Join the workers.** In the durable modes the backend then writes
//!    what they applied and stops its threads (`Service::finish`).
//! 5. **Stop HTTP.** `min_seq` readers still waiting are answered (the
//!    watermark is final). The server stops taking connections (the
//!    listening socket closes), closes the connections waiting for a
//!    request, lets the requests in hand finish (their answers say
//!    `Connection: close`) until the deadline, cuts short those still in
//!    hand then (a client that does not read its answer, or sends its body
//!    slowly), and returns once every connection thread has exited; then
//!    the answerer writes what it has and exits.
//! 6. **Report** the counts.
//!
//! No step polls and nothing is joined in `Drop`: dropping a `Running`
//! without calling `shutdown` leaves its threads running (tests must call
//! `shutdown` and check its report).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::config::Config;
use crate::error::ShutdownError;
use crate::http::HttpServer;
use crate::service::Service;
use crate::stats::{ShutdownReport, Stats};
use crate::worker::{Control, Workers};

/// A started service. Get its address with [`Running::local_addr`]; stop it
/// with [`Running::shutdown`].
pub struct Running {
    pub(crate) local_addr: SocketAddr,
    pub(crate) config: Config,
    /// The core: the intake, the store, the counts, the backend.
    pub(crate) service: Arc<Service>,
    pub(crate) workers: Workers,
    pub(crate) http: HttpServer,
    /// Front doors other than HTTP (RabbitMQ's consumers), stopped first.
    pub(crate) front_doors: Vec<Box<dyn FrontDoor>>,
}

/// A front door that takes events from somewhere other than HTTP (a
/// message broker's consumers). It is stopped first at shutdown, while the
/// workers still run: it takes nothing new and settles what it holds by
/// the deadline.
pub trait FrontDoor: Send + Sync {
    fn stop(self: Box<Self>, deadline: Instant);
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

    /// Current counts (the same reading `/metrics` gives).
    pub fn stats(&self) -> Stats {
        self.http.stats()
    }

    /// Holds the workers still until the returned value is dropped: each
    /// worker stops at its next checkpoint (a batch it has already started,
    /// at most 64 events, is finished, and each worker may hold one event
    /// taken from the queue).
    /// Useful to watch the queue fill and backpressure start.
    pub fn pause_workers(&self) -> PausedWorkers {
        let control = Arc::clone(self.workers.control());
        control.pause();
        PausedWorkers { control }
    }

    /// Stops the service in the order described in the module docs and
    /// reports what happened. Takes at most `SHUTDOWN_TIMEOUT` and a
    /// fraction of a second, whatever clients do.
    pub fn shutdown(self) -> Result<ShutdownReport, ShutdownError> {
        let started = Instant::now();
        let timeout = self.config.shutdown_timeout;
        let deadline = started + timeout;

        // 0. Close the other front doors.
        for door in self.front_doors {
            door.stop(deadline);
        }

        // 1. Stop taking events.
        let queued = self.service.stats().queue_depth;
        let intook = self.service.drain(deadline);
        log::info!(
            "shutdown: intake closed after {} accepted events; draining about {queued} queued (deadline {timeout:?})",
            intook.accepted
        );

        // 2. and 3. Drain until the workers are done or the deadline passes.
        let drained = self.workers.drain(deadline);
        if !drained {
            log::warn!("shutdown: drain deadline of {timeout:?} passed; stopping workers");
        }

        // 4. Join the workers (after a missed deadline, each finishes at
        // most one batch), then let the backend write what they applied
        // and stop.
        let counters = Arc::clone(self.workers.counters());
        let panicked = self.workers.join();
        self.service.release_readers();
        let committed = self.service.finish().map(|committed| committed.events);

        // 5. Stop the HTTP side and close the listening socket, by the
        // deadline: requests still in hand then are cut short.
        let stopped = self.http.stop(deadline);
        if stopped.abandoned > 0 {
            log::warn!(
                "shutdown: {} connections were still in a request at the deadline (clients not reading their answers, or sending slowly); they were closed",
                stopped.abandoned
            );
        }
        log::debug!(
            "shutdown: HTTP stopped in {:?}; {} idle connections closed",
            stopped.elapsed,
            stopped.idle_closed
        );

        // 6. Report.
        let applied = counters.applied.load(Ordering::Relaxed);
        let panics = counters.panics.load(Ordering::Relaxed);
        let report = ShutdownReport {
            accepted: intook.accepted,
            applied,
            panics,
            not_applied: intook.queued.saturating_sub(applied + panics),
            drained,
            elapsed: started.elapsed(),
            committed,
        };
        if report.not_applied > 0 && self.service.journals() {
            log::warn!(
                "shutdown: {} accepted events were not applied (drain deadline passed); they are in the journal, and the next start applies them; {report}",
                report.not_applied
            );
        } else if report.not_applied > 0 {
            log::warn!(
                "shutdown: {} accepted events were NOT applied (drain deadline passed); {report}",
                report.not_applied
            );
        } else {
            log::info!("shutdown complete: {report}");
        }
        if panicked == 0 {
            Ok(report)
        } else {
            Err(ShutdownError {
                panicked: vec!["worker"; panicked],
                report,
            })
        }
    }
}
