//! Durable state: on the local disk (`DATA_DIR`, cargo feature `sqlite`:
//! this file's story, and `sqlite.rs`, `committer.rs`, `database.rs`), or
//! in a PostgreSQL database shared by several instances (`DATABASE_URL`,
//! cargo feature `postgres`: `pg/`). [`Recovered`] and [`Durable`] are the
//! one interface the rest of the service sees, an enum over the backends
//! built in; `handoff.rs` (the mailbox a POST waits in) and `commit.rs`
//! (its answers, and the health of writes) are shared by both.
//!
//! # SQLite: what a 202 promises, and the committer thread that keeps it
//!
//! The in-memory store stays the serving copy: reads never touch the disk.
//! The database is where the state survives the process:
//!
//! ```text
//!  commit / fsync:  connection ──submit()──▶ inbox ──▶ committer: admit under the intake lock,
//!                   thread waits ◀── 202 ───────────── INSERT journal, COMMIT, then queue ──▶ workers ──▶ store
//!  async:           connection ──intake.submit()──▶ queue ──▶ workers ──▶ store      (202 at once)
//!  every mode:      workers ──applied(product_id)──▶ applied ──▶ committer, every 100 ms: UPSERT products
//! ```
//!
//! # The commit path (`commit` and `fsync`)
//!
//! A connection thread puts its event in the committer's inbox and waits.
//! The committer takes everything in the inbox (every event that arrived
//! while it was writing the previous batch, and those that arrive while it
//! yields the CPU a few times first: group commit), and asks the
//! intake to admit the batch: under the intake lock each event gets its
//! seq, the batch is written to the `journal` table in one transaction and
//! committed, and only then are the events queued for the workers and the
//! clients answered 202 (from the committer's thread). A failed commit answers them all 503
//! `storage_unavailable`, and no seq is used up.
//!
//! # What the workers write
//!
//! Nothing, directly: after applying an event a worker puts the product's
//! id in `applied` (before it reports the seq done to the watermark).
//! Every [`FLUSH_INTERVAL`] the committer reads the watermark `W`, takes
//! those ids, copies those products from the store, and writes them to
//! `products` with `applied_through = W`, in the same transaction as the
//! next batch of events (or on its own when none is waiting). Every event
//! up to `W` put its product in `applied` before `W` passed it, so once
//! that transaction commits `products` reflects every event up to `W`, and
//! the journal rows up to `W` are deleted in it. A product copied with
//! events above `W` in it is harmless: replaying those events changes
//! nothing, because each field keeps the write key that set it. Between
//! two such writes a commit of events writes only the journal: a product
//! updated a hundred times in one interval is written once.
//!
//! # Checkpoints
//!
//! SQLite's WAL is copied into the database file by a thread of its own
//! (the checkpointer, every [`CHECKPOINT_INTERVAL`]), never inside a
//! commit: a checkpoint ends with an fsync, and on a busy disk one fsync
//! can take 100 ms, which inside a commit would hold up every waiting
//! POST. If writes never pause long enough for the log to start over, the
//! committer checkpoints it itself past [`WAL_LIMIT`].
//!
//! # Startup
//!
//! Load `products`, replay the journal above `applied_through` (events that
//! were acknowledged but not reflected in `products`: applied or not when
//! the process died, replaying is idempotent), restore the idempotency
//! window and the next seq, then start serving.
//!
//! # `async`
//!
//! The 202 is sent when the event is queued, as in memory mode, and there
//! is no journal: every [`FLUSH_INTERVAL`] the committer writes the
//! products applied since the last write, with the idempotency window's
//! entries for the events those products include (never one for an event
//! they do not: a retry of a lost event must not be called a duplicate),
//! and the next seq. A crash loses what was acknowledged and not yet so
//! written: the events applied in the last 100 ms, and those still queued
//! (normally none; `queue_depth` says). A graceful shutdown loses nothing.
//! While writes fail, new events are refused with 503.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::ProductUpdate;
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError, Submitted};
use crate::request_id::OwnedRequestId;
use crate::store::{Seq, Store};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod commit;
#[cfg(feature = "sqlite")]
mod committer;
#[cfg(feature = "sqlite")]
mod database;
#[cfg(any(feature = "sqlite", feature = "postgres", loom))]
pub mod handoff;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod url;

/// What a client waiting for a commit is told.
pub type Answer = Result<Submitted, SubmitError>;

/// Answers a client from the thread that has the answer (the committer
/// writes the HTTP answer itself, so that the connection's thread is not
/// woken for it; see `http/handlers.rs`). Called exactly once; a reply
/// dropped uncalled answers its client 500.
pub type Reply = Box<dyn FnOnce(Answer) + Send>;

/// A store opened and read at startup, before the service serves:
/// [`Recovered::restore`] puts its state into the store and the intake,
/// [`Recovered::start`] starts its threads. One variant per backend built
/// in; with none built in, the enum has no values and every method below
/// is never called.
pub enum Recovered {
    /// `DATA_DIR`: a SQLite file on the local disk.
    #[cfg(feature = "sqlite")]
    Sqlite(Box<sqlite::Recovered>),
    /// `DATABASE_URL`: PostgreSQL, shared with other instances.
    #[cfg(feature = "postgres")]
    Postgres(Box<pg::Recovered>),
}

/// The running store that `POST /events`, the workers, `/readyz` and
/// shutdown talk to.
pub enum Durable {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::Durable),
    #[cfg(feature = "postgres")]
    Postgres(pg::Durable),
}

impl Recovered {
    /// Opens and reads the configured store; `None` in memory mode.
    pub fn open(config: &Config) -> Result<Option<Recovered>, StorageError> {
        if config.data_dir.is_some() {
            #[cfg(feature = "sqlite")]
            return Ok(sqlite::Recovered::open(config)?.map(|r| Recovered::Sqlite(Box::new(r))));
            #[cfg(not(feature = "sqlite"))]
            return Err(StorageError::NotBuilt {
                variable: "DATA_DIR",
                feature: "sqlite",
            });
        }
        if config.database_url.is_some() {
            #[cfg(feature = "postgres")]
            return Ok(pg::Recovered::open(config)?.map(|r| Recovered::Postgres(Box::new(r))));
            #[cfg(not(feature = "postgres"))]
            return Err(StorageError::NotBuilt {
                variable: "DATABASE_URL",
                feature: "postgres",
            });
        }
        Ok(None)
    }

    /// Puts the stored state into `store` and `intake`; returns the
    /// watermark to start from (every seq up to it is applied).
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        allow(unused_variables)
    )]
    pub fn restore(&mut self, store: &Store, intake: &Intake) -> Seq {
        match *self {
            #[cfg(feature = "sqlite")]
            Recovered::Sqlite(ref mut r) => r.restore(store, intake),
            #[cfg(feature = "postgres")]
            Recovered::Postgres(ref mut r) => r.restore(store, intake),
        }
    }

    /// Starts the store's threads. `local_addr` names this instance in a
    /// shared database.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn start(
        self,
        intake: Arc<Intake>,
        store: Store,
        progress: Arc<Progress>,
        metrics: Arc<Metrics>,
        local_addr: SocketAddr,
    ) -> io::Result<Durable> {
        match self {
            #[cfg(feature = "sqlite")]
            Recovered::Sqlite(r) => (*r)
                .start(intake, store, progress, metrics)
                .map(Durable::Sqlite),
            #[cfg(feature = "postgres")]
            Recovered::Postgres(r) => (*r)
                .start(intake, store, progress, metrics, local_addr)
                .map(Durable::Postgres),
        }
    }
}

impl Durable {
    /// `POST /events`: `reply` is called with the answer once the event is
    /// committed (or refused): by the committer, so that the connection's
    /// thread is not woken for it (see `http/handlers.rs`); SQLite's async
    /// mode, which does not wait for the commit: here.
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        allow(unused_variables)
    )]
    pub fn submit_with_reply(
        &self,
        update: ProductUpdate,
        request_id: OwnedRequestId,
        reply: Reply,
    ) {
        match *self {
            #[cfg(feature = "sqlite")]
            Durable::Sqlite(ref d) => d.submit_with_reply(update, request_id, reply),
            #[cfg(feature = "postgres")]
            Durable::Postgres(ref d) => d.submit_with_reply(update, request_id, reply),
        }
    }

    /// A worker applied an event for `product_id`; called before it reports
    /// the seq done.
    pub fn applied(&self, product_id: &str) {
        let _ = product_id;
        match *self {
            #[cfg(feature = "sqlite")]
            Durable::Sqlite(ref d) => d.applied(product_id),
            // The database applied it in the event's own commit.
            #[cfg(feature = "postgres")]
            Durable::Postgres(_) => {}
        }
    }

    /// Why the store cannot take events (or serve fresh reads) right now,
    /// or `None` while it can.
    pub fn unavailable(&self) -> Option<String> {
        match *self {
            #[cfg(feature = "sqlite")]
            Durable::Sqlite(ref d) => d.unavailable(),
            #[cfg(feature = "postgres")]
            Durable::Postgres(ref d) => d.unavailable(),
        }
    }

    /// Shutdown, after the workers have stopped: writes what is left and
    /// stops the store's threads.
    pub fn finish(&self) -> Committed {
        match *self {
            #[cfg(feature = "sqlite")]
            Durable::Sqlite(ref d) => d.finish(),
            #[cfg(feature = "postgres")]
            Durable::Postgres(ref d) => d.finish(),
        }
    }

    /// Events this instance accepted, where the queue's count is not that
    /// (PostgreSQL: the queue also carries the other instances' events).
    pub fn accepted(&self) -> Option<u64> {
        match *self {
            #[cfg(feature = "sqlite")]
            Durable::Sqlite(_) => None,
            #[cfg(feature = "postgres")]
            Durable::Postgres(ref d) => Some(d.accepted()),
        }
    }

    /// Shutdown, before the intake closes: stop taking events, and let what
    /// was taken reach the queue (by `deadline`).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn stop_accepting(&self, deadline: std::time::Instant) {
        match *self {
            #[cfg(feature = "sqlite")]
            Durable::Sqlite(_) => {}
            #[cfg(feature = "postgres")]
            Durable::Postgres(ref d) => d.stop_accepting(deadline),
        }
    }

    /// Whether a 202 means the event is in a journal that survives the
    /// process (so events not applied at shutdown are not lost).
    pub fn journals(&self) -> bool {
        match *self {
            #[cfg(feature = "sqlite")]
            Durable::Sqlite(ref d) => d.journals(),
            #[cfg(feature = "postgres")]
            Durable::Postgres(_) => true,
        }
    }
}

/// How often the committer writes the products applied since its last
/// such write (and, in `async` mode, the bound on how long an applied
/// event waits to be written).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How often the checkpointer copies the WAL into the database file. Each
/// checkpoint that copied anything ends with an fsync, which on a busy disk
/// slows the writes around it: once a second keeps those rare, and the WAL
/// at a few MB.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The WAL size past which the committer checkpoints itself, holding up
/// writes for that long: only when writes never pause long enough for the
/// checkpointer's work to let the log start over.
pub const WAL_LIMIT: u64 = 256 << 20;

/// How often a failing store is tried again when nothing else is written,
/// and how often the idempotency window's old rows are deleted.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Why durable state could not be opened or loaded. The message names the
/// file and what to do; [`StorageError::exit_code`] is what `main` exits
/// with.
#[derive(Debug)]
pub enum StorageError {
    /// `variable` is set but this build lacks the cargo `feature` for it.
    NotBuilt {
        variable: &'static str,
        feature: &'static str,
    },
    /// `DATA_DIR` cannot be created or written.
    Directory { path: PathBuf, source: io::Error },
    /// Another process has the database open.
    Locked {
        path: PathBuf,
        holder: Option<String>,
    },
    /// The file is not a SQLite database.
    NotADatabase { path: PathBuf },
    /// A SQLite database, but not this service's.
    Foreign { path: PathBuf, app_id: i64 },
    /// The file fails SQLite's integrity check, or its rows are not what
    /// this service writes.
    Corrupt { path: PathBuf, detail: String },
    /// Written by a newer release, with a schema this build does not know.
    UnknownSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// Any other SQLite error while opening or loading.
    Sqlite { path: PathBuf, detail: String },
    /// `DATABASE_URL`: the database cannot be used.
    Postgres(PgError),
}

impl StorageError {
    /// 2 for a setting to fix (like a bad variable), 1 for a database that
    /// needs a person's decision.
    pub fn exit_code(&self) -> u8 {
        match self {
            StorageError::NotBuilt { .. } | StorageError::Directory { .. } => 2,
            StorageError::Postgres(PgError::BadUrl { .. }) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNTOUCHED: &str = "it was left untouched";
        match self {
            StorageError::NotBuilt { variable, feature } => write!(
                f,
                "{variable} is set, but this build has no {feature} storage: build with `cargo build --release --features {feature}` (or unset {variable} to keep the state in memory)"
            ),
            StorageError::Directory { path, source } => write!(
                f,
                "DATA_DIR {}: cannot create or write there ({source}); create the directory and let the service's user write to it, or set DATA_DIR to another directory",
                path.display()
            ),
            StorageError::Locked { path, holder } => write!(
                f,
                "{} is in use by another product-update-service ({}); two processes must not share one DATA_DIR: stop the other one, or give this one its own DATA_DIR",
                path.display(),
                holder.as_deref().unwrap_or("holder unknown")
            ),
            StorageError::NotADatabase { path } => write!(
                f,
                "{} is not a SQLite database; {UNTOUCHED}: move it away (or set DATA_DIR to another directory) and start again",
                path.display()
            ),
            StorageError::Foreign { path, app_id } => write!(
                f,
                "{} is a SQLite database of another application (application_id {app_id:#x}), not of product-update-service; {UNTOUCHED}: set DATA_DIR to another directory",
                path.display()
            ),
            StorageError::Corrupt { path, detail } => write!(
                f,
                "{} is damaged ({detail}); {UNTOUCHED}: restore it from a backup, or move it away to start with an empty store",
                path.display()
            ),
            StorageError::UnknownSchema { path, found, known } => write!(
                f,
                "{} has schema version {found}, and this build knows versions up to {known}: it was written by a newer product-update-service; {UNTOUCHED}: run that version, or move the file away",
                path.display()
            ),
            StorageError::Sqlite { path, detail } => {
                write!(f, "{}: {detail}", path.display())
            }
            StorageError::Postgres(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Directory { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What went wrong with the PostgreSQL database; every message names the
/// URL with its password masked.
#[derive(Debug)]
pub enum PgError {
    /// `DATABASE_URL` is not a URL the driver accepts.
    BadUrl {
        url: String,
        reason: String,
    },
    Connect {
        url: String,
        detail: String,
    },
    /// The database has a schema newer than this build knows.
    UnknownSchema {
        url: String,
        found: i32,
        known: i32,
    },
    Query {
        url: String,
        detail: String,
    },
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::BadUrl { url, reason } => write!(
                f,
                "DATABASE_URL {url} is not a usable PostgreSQL URL: {reason}"
            ),
            PgError::Connect { url, detail } => write!(
                f,
                "cannot connect to {url}: {detail}; check that PostgreSQL runs there and accepts this user"
            ),
            PgError::UnknownSchema { url, found, known } => write!(
                f,
                "{url} has schema version {found}, and this build knows versions up to {known}: it was created by a newer product-update-service; run that version (the database was left untouched)"
            ),
            PgError::Query { url, detail } => write!(f, "{url}: {detail}"),
        }
    }
}

impl std::error::Error for PgError {}

/// What the committer did over the service's life, for the shutdown
/// report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Events written to the journal (commit and fsync modes) or covered by
    /// a products commit (async mode).
    pub events: u64,
    /// Commits that failed.
    pub failures: u64,
    /// True if the last commit, at shutdown, succeeded: everything applied
    /// is in the database.
    pub clean: bool,
}
