//! The one interface between the core and a backend (see `mod.rs` for
//! the story): [`Opened`] at startup, [`Backend`] while serving, and the
//! types they speak in.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::event::ProductUpdate;
use crate::intake::Intake;
use crate::intake::mailbox::{Mailbox, Posted};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::store::{Seq, Store};

/// The core's parts that a backend fills at startup and works with.
pub struct CoreParts {
    pub intake: Arc<Intake>,
    pub store: Store,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    /// The address the service listens on: names this instance in a
    /// shared database.
    pub local_addr: SocketAddr,
}

/// A backend opened and read at startup, not yet serving.
pub trait Opened: Send {
    /// Puts the stored state into `parts` (products into the store, the
    /// next seq and the idempotency window into the intake, the watermark
    /// into the progress) and starts the backend's threads. Called before
    /// any worker or connection thread runs.
    fn start(self: Box<Self>, parts: &CoreParts) -> io::Result<Box<dyn Backend>>;
}

/// What the core does with an event a front door accepted.
pub enum Admission<'a> {
    /// Number and queue it now, and answer that it is queued.
    Queue,
    /// As `Queue`, and report each new event that has an `event_id` with
    /// [`Backend::queued`] (SQLite `async` saves the ids with the products).
    QueueAndReport,
    /// Post it here; the backend's committers answer once it is committed.
    Commit(&'a Mailbox<Posted>),
    /// Refuse it: storage cannot take events now (503 `storage_unavailable`).
    Refuse,
}

/// A running backend, as the core sees it.
pub trait Backend: Send + Sync {
    /// What to do with the next event (asked once per event).
    fn admission(&self) -> Admission<'_>;

    /// [`Admission::QueueAndReport`]: the event with `event_id` was queued
    /// as `seq`.
    fn queued(&self, seq: Seq, event_id: Box<str>, fingerprint: u64) {
        let _ = (seq, event_id, fingerprint);
    }

    /// Whether the state is kept beyond the process (the counts then report
    /// whether storage works).
    fn is_durable(&self) -> bool {
        false
    }

    /// Why storage cannot take events (or serve fresh reads) right now, for
    /// `/readyz`; `None` while it can.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// How many events the backend holds that this instance has not applied
    /// yet, given the watermark (PostgreSQL: committed by any instance,
    /// not yet read and applied here); `None` where that cannot happen.
    fn lag(&self, applied_through: Seq) -> Option<u64> {
        let _ = applied_through;
        None
    }

    /// Events this instance accepted, where the intake's count is not that
    /// (PostgreSQL: the queue also carries other instances' events).
    fn accepted(&self) -> Option<u64> {
        None
    }

    /// Whether a 202 means the event is in a journal that survives the
    /// process (so events not applied at shutdown are not lost).
    fn journals(&self) -> bool {
        false
    }

    /// The journal as an outbox, for a relay that publishes every event
    /// (with its own connection); `None` where there is no journal to
    /// publish from (memory mode, SQLite `async`).
    fn outbox(&self) -> Option<Result<Box<dyn Outbox>, OutboxError>> {
        None
    }

    /// Shutdown, before the intake closes: take no more events (later posts
    /// are answered 503 `shutting_down`), commit what was posted and let it
    /// reach the queue, by `deadline`.
    fn stop_taking(&self, deadline: Instant) {
        let _ = deadline;
    }

    /// Shutdown, after the workers have stopped: write what is left, stop
    /// the backend's threads, and say what was committed (`None`: nothing
    /// is, memory mode).
    fn finish(&self) -> Option<Committed> {
        None
    }
}

/// The journal seen by a relay that publishes its events: it reads them in
/// seq order after its cursor, publishes them, and advances the cursor once
/// the broker has confirmed them. The journal keeps every event after the
/// cursor. Each call may block on the database.
pub trait Outbox: Send {
    /// Whether this instance is the one that relays, now: with several
    /// instances on one database only one may publish at a time, and the
    /// others ask again now and then, to take over when it stops. Once
    /// true it stays true until a call fails.
    fn lead(&mut self) -> Result<bool, OutboxError> {
        Ok(true)
    }
    /// How far events are published (confirmed): the cursor. Opening an
    /// outbox on a journal that never had one sets it where the journal
    /// begins, before the first event is taken.
    fn cursor(&mut self) -> Result<Seq, OutboxError>;
    /// Up to `limit` events after `cursor`, in seq order.
    fn after(
        &mut self,
        cursor: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, ProductUpdate)>, OutboxError>;
    /// The last seq committed to the journal (for the relay's lag).
    fn head(&mut self) -> Result<Seq, OutboxError>;
    /// Records that every event through `through` is published.
    fn advance(&mut self, through: Seq) -> Result<(), OutboxError>;
}

/// Why the outbox could not be read or its cursor written (the database's
/// message, naming the file or server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxError(pub String);

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the outbox (the journal): {}", self.0)
    }
}

impl std::error::Error for OutboxError {}

/// What a backend's committers did over the service's life, for the
/// shutdown report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Events made durable (written to the journal, or, in SQLite `async`
    /// mode, covered by a products write).
    pub events: u64,
    /// Commits that failed.
    pub failures: u64,
    /// True if the last write, at shutdown, succeeded: everything applied
    /// is in the database.
    pub clean: bool,
}

impl Committed {
    /// Adds up what several committers did.
    pub fn sum(all: impl IntoIterator<Item = Committed>) -> Committed {
        all.into_iter().fold(
            Committed {
                clean: true,
                ..Committed::default()
            },
            |sum, one| Committed {
                events: sum.events + one.events,
                failures: sum.failures + one.failures,
                clean: sum.clean && one.clean,
            },
        )
    }
}

/// Why the configured storage could not be opened or read at startup. The
/// message names the file or database and what to do; [`exit_code`] is
/// what `main` exits with.
///
/// [`exit_code`]: StorageError::exit_code
#[derive(Debug)]
pub enum StorageError {
    /// `variable` is set but this build lacks the cargo `feature` for it.
    NotBuilt {
        variable: &'static str,
        feature: &'static str,
    },
    /// A setting to fix (a directory that cannot be written, a URL the
    /// driver refuses): the backend's error says which.
    Setting(Box<dyn std::error::Error + Send + Sync>),
    /// A store that needs a person's decision (locked, damaged, newer,
    /// unreachable): the backend's error says what to do.
    Store(Box<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// 2 for a setting to fix (like a bad variable), 1 for a store that
    /// needs a person's decision.
    pub fn exit_code(&self) -> u8 {
        match self {
            StorageError::NotBuilt { .. } | StorageError::Setting(_) => 2,
            StorageError::Store(_) => 1,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotBuilt { variable, feature } => write!(
                f,
                "{variable} is set, but this build has no {feature} storage: build with `cargo build --release --features {feature}` (or unset {variable} to keep the state in memory)"
            ),
            StorageError::Setting(e) | StorageError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::NotBuilt { .. } => None,
            StorageError::Setting(e) | StorageError::Store(e) => e.source(),
        }
    }
}
