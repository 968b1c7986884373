//! Counts: [`Stats`] at any moment (for `Running::stats` and for the
//! gauges of `GET /metrics`, from one reading), and the [`ShutdownReport`]
//! at the end.
//!
//! Nothing here is kept: every number is read from the part that owns it
//! (the intake, the workers' counters, the store, the watermark, the
//! connection count) when someone asks.

use std::fmt;
use std::time::Duration;

/// Counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events answered 202.
    pub accepted: u64,
    /// Events that entered this process's queue: the ones it accepted, and
    /// in PostgreSQL mode those of the other instances too, which this one
    /// applies as well. `queued - applied - panics` are queued or being
    /// applied now.
    pub queued: u64,
    /// Events applied to the store.
    pub applied: u64,
    /// Events whose apply panicked (caught; the worker went on).
    pub panics: u64,
    /// Fields skipped because a newer event had already set them.
    pub stale_fields: u64,
    /// Events waiting in the queue.
    pub queue_depth: usize,
    /// Events the queue holds at most (`QUEUE_SIZE`).
    pub queue_capacity: usize,
    /// Products in the store.
    pub products: usize,
    /// Worker threads (`WORKERS`).
    pub workers: usize,
    /// `GET /products/{id}?min_seq=…` requests waiting for the workers.
    pub waiting_readers: usize,
    /// `event_id`s remembered for recognising retries.
    pub idempotency_window: usize,
    /// Client connections being served.
    pub open_connections: usize,
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// Durable mode: whether writes fail right now; `None` in memory mode.
    pub storage_unavailable: Option<bool>,
    /// PostgreSQL mode: events committed to the database (by any instance)
    /// not yet applied by this one; `None` in the other modes.
    pub journal_lag: Option<u64>,
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
    /// Queued events never applied because the drain deadline passed (in
    /// PostgreSQL mode, other instances' events among them).
    pub not_applied: u64,
    /// True if the queue was empty before the deadline.
    pub drained: bool,
    /// Time from the start of shutdown to the end.
    pub elapsed: Duration,
    /// Durable mode: events committed over the service's life; `None` in
    /// memory mode.
    pub committed: Option<u64>,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} applied={} panicked={} not_applied={} drained={} elapsed={:?}",
            self.accepted, self.applied, self.panics, self.not_applied, self.drained, self.elapsed
        )?;
        if let Some(committed) = self.committed {
            write!(f, " committed={committed}")?;
        }
        Ok(())
    }
}
