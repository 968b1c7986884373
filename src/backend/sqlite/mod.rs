//! SQLite: the state on the local disk (`DATA_DIR`, cargo feature
//! `sqlite`). The in-memory store stays the serving copy, so reads never
//! touch the disk; the file is where the state survives the process.
//!
//! ```text
//!  commit / fsync:  front door ──post──▶ mailbox ──▶ committer: number, INSERT journal, COMMIT,
//!                   (its thread is free)  ◀── 202 ─── then queue ──▶ workers ──▶ store
//!  async:           front door ──accept──▶ queue ──▶ workers ──▶ store      (202 at once)
//!  every mode:      store notes changed products ──▶ committer, every 100 ms: UPSERT products
//! ```
//!
//! - **What a 202 promises** (`DURABILITY`): `commit`, the event is
//!   committed (in the OS's hands: it survives the process); `fsync`, the
//!   commit is flushed to the disk too; `async`, the event is queued, as
//!   in memory mode, and written with the products within
//!   [`FLUSH_INTERVAL`] of being applied (a crash loses the events of that
//!   interval; a graceful shutdown nothing; while writes fail, events are
//!   refused).
//! - **The journal** holds events acknowledged and not yet reflected in
//!   `products`. Every [`FLUSH_INTERVAL`] the committer writes the products
//!   the workers changed with `applied_through = W` (the watermark read
//!   before it took them: `committer.rs` says why that is enough) and
//!   deletes the journal up to `W`, in the same transaction as the next
//!   batch of events. A product updated a hundred times in one interval is
//!   written once.
//! - **Checkpoints** (copying the WAL into the database file) run on a
//!   thread of their own (`checkpointer.rs`), never inside a commit: a
//!   checkpoint ends with an fsync, which on a busy disk can take long
//!   enough to hold up every waiting POST. If writes never pause long
//!   enough for the log to start over, the committer checkpoints it itself
//!   past [`WAL_LIMIT`].
//! - **Startup** ([`SqliteOpened::start`]): load `products`, replay the
//!   journal above `applied_through` (acknowledged events, applied or not
//!   when the process stopped: replaying is idempotent, since each field
//!   keeps the write key that set it), restore the idempotency window and
//!   the next seq, then serve.
//!
//! Files: `file.rs` (the schema and every statement), `committer.rs` (the
//! committer thread), `checkpointer.rs`, `error.rs`.

mod checkpointer;
mod committer;
mod error;
mod file;

pub use error::SqliteError;

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crate::backend::health::{Health, lock};
use crate::backend::interface::{
    Admission, Backend, Committed, CoreParts, Opened, Outbox, OutboxError, StorageError,
};
use crate::backend::stop::StopSignal;
use crate::config::{Config, Durability};
use crate::intake::mailbox::Mailbox;
use crate::store::Seq;
use checkpointer::Checkpoints;
use committer::{Inbox, SqliteCommitter};

pub use committer::{FLUSH_INTERVAL, WAL_LIMIT};
use file::{Loaded, SqliteFile, WindowRow};

/// Opens and reads `DATA_DIR`'s database.
pub fn open(config: &Config) -> Result<Box<dyn Opened>, StorageError> {
    let dir = config.data_dir.clone().unwrap_or_default();
    let started = Instant::now();
    let file = SqliteFile::open(&dir, config.durability)?;
    let loaded = file.load(config.idempotency_ttl, config.idempotency_window)?;
    Ok(Box::new(SqliteOpened {
        file,
        loaded,
        mode: config.durability,
        window_ttl: config.idempotency_ttl,
        window_len: config.idempotency_window,
        started,
    }))
}

/// The file opened and read, before the service serves.
pub struct SqliteOpened {
    file: SqliteFile,
    loaded: Loaded,
    mode: Durability,
    window_ttl: Duration,
    window_len: usize,
    started: Instant,
}

impl Opened for SqliteOpened {
    fn start(self: Box<Self>, parts: &CoreParts) -> io::Result<Box<dyn Backend>> {
        let SqliteOpened {
            file,
            loaded,
            mode,
            window_ttl,
            window_len,
            started,
        } = *self;
        // Before the replay, so that the replayed products are written
        // again with the first flush (the journal rows go then).
        parts.store.record_changes();
        let through = restore(&file, loaded, mode, parts, started);
        parts.progress.skip_to(through);
        let path = file.path().to_owned();
        let checkpoints = Checkpoints::start(&file)?;
        let inbox = Arc::new(Inbox {
            mailbox: Mailbox::new(),
            reported: Mutex::new(Vec::new()),
            health: Health::default(),
            stop: StopSignal::default(),
        });
        let committer = SqliteCommitter {
            file,
            mode,
            inbox: Arc::clone(&inbox),
            intake: Arc::clone(&parts.intake),
            store: parts.store.clone(),
            progress: Arc::clone(&parts.progress),
            metrics: Arc::clone(&parts.metrics),
            window_ttl,
            window_len,
        };
        let spawned = thread::Builder::new()
            .name("committer".to_owned())
            .spawn(move || committer.run());
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                checkpoints.finish();
                return Err(e);
            }
        };
        Ok(Box::new(Sqlite {
            inbox,
            mode,
            path,
            committer: Mutex::new(Some(thread)),
            checkpoints,
        }))
    }
}

/// Puts the loaded products into the store, applies the journal's events
/// (acknowledged, maybe not applied before the process stopped), and gives
/// the intake the next seq and the idempotency window. Returns the
/// watermark to start from: every seq up to it is applied. Logs the
/// startup line.
fn restore(
    file: &SqliteFile,
    loaded: Loaded,
    mode: Durability,
    parts: &CoreParts,
    started: Instant,
) -> Seq {
    let products = loaded.products.len();
    parts.store.restore(loaded.products);
    let mut panicked = 0;
    for (seq, update) in &loaded.journal {
        let applied = panic::catch_unwind(AssertUnwindSafe(|| parts.store.apply(*seq, update)));
        if applied.is_err() {
            panicked += 1;
            log::error!(
                "storage: replaying seq={seq} product_id={:?} panicked; skipped",
                update.product_id
            );
        }
    }
    let window = loaded.window.len();
    parts.intake.resume(loaded.next_seq, loaded.window);
    log::info!(
        "storage: sqlite {} durability={}: {products} products loaded, {} journal events replayed{}, {window} event ids in the idempotency window, next seq {}, in {:.3?}",
        file.path().display(),
        mode.as_str(),
        loaded.journal.len(),
        if panicked > 0 {
            format!(" ({panicked} panicked)")
        } else {
            String::new()
        },
        loaded.next_seq,
        started.elapsed()
    );
    loaded.next_seq - 1
}

/// The running SQLite backend: what the core's threads call; the work is
/// the committer's.
pub struct Sqlite {
    inbox: Arc<Inbox>,
    mode: Durability,
    path: PathBuf,
    committer: Mutex<Option<JoinHandle<Committed>>>,
    checkpoints: Checkpoints,
}

impl Backend for Sqlite {
    fn admission(&self) -> Admission<'_> {
        match self.mode {
            Durability::Async if self.inbox.health.is_failing() => Admission::Refuse,
            Durability::Async => Admission::QueueAndReport,
            Durability::Commit | Durability::Fsync => Admission::Commit(&self.inbox.mailbox),
        }
    }

    fn queued(&self, seq: Seq, event_id: Box<str>, fingerprint: u64) {
        lock(&self.inbox.reported).push(WindowRow {
            event_id,
            seq,
            fingerprint,
            accepted_at: SystemTime::now(),
        });
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn unavailable(&self) -> Option<String> {
        self.inbox.health.unavailable()
    }

    fn journals(&self) -> bool {
        self.mode != Durability::Async
    }

    fn outbox(&self) -> Option<Result<Box<dyn Outbox>, OutboxError>> {
        // `async` writes no journal: nothing to publish from.
        if self.mode == Durability::Async {
            return None;
        }
        let opened = SqliteFile::open_outbox(&self.path)
            .map(|outbox| Box::new(outbox) as Box<dyn Outbox>)
            .map_err(|e| OutboxError(format!("{}: {e}", self.path.display())));
        Some(opened)
    }

    fn stop_taking(&self, deadline: Instant) {
        self.inbox.mailbox.finish();
        if !self.inbox.mailbox.wait_stopped(deadline) {
            log::warn!(
                "shutdown: the committer had not committed the last posted events by the deadline; they are answered when it has"
            );
        }
    }

    fn finish(&self) -> Option<Committed> {
        // The checkpointer first: the committer's last act is a checkpoint
        // of its own, which should not wait for one in progress.
        self.checkpoints.finish();
        self.inbox.mailbox.finish();
        self.inbox.stop.stop();
        let thread = lock(&self.committer).take();
        let committed = match thread.map(JoinHandle::join) {
            Some(Ok(committed)) => committed,
            // `run` catches panics; a second `finish` finds no thread.
            Some(Err(_)) | None => Committed::default(),
        };
        log::info!(
            "storage: {} events committed to {}{}",
            committed.events,
            self.path.display(),
            if committed.clean {
                ""
            } else {
                " (the last write failed: see above)"
            }
        );
        Some(committed)
    }
}
