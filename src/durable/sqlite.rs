//! The durable store's handle: open and load at startup ([`Recovered`]),
//! then the running committer ([`Durable`]) that `POST /events`, the
//! workers and shutdown talk to.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use super::commit::{self, Health, Reply, lock};
use super::committer::{self, Shared};
use super::database::{Database, Loaded};
use super::handoff::Mailbox;
use super::{CHECKPOINT_INTERVAL, Committed, StorageError};
use crate::config::{Config, Durability};
use crate::metrics::Metrics;
use crate::model::ProductUpdate;
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError};
use crate::request_id::OwnedRequestId;
use crate::store::{Seq, Store};

/// The database opened and read, before the service serves: [`restore`]
/// puts its state into the store and the intake, [`start`] starts the
/// committer.
///
/// [`restore`]: Recovered::restore
/// [`start`]: Recovered::start
pub struct Recovered {
    db: Database,
    loaded: Option<Loaded>,
    mode: Durability,
    window_ttl: std::time::Duration,
    window_len: usize,
    /// Products whose rows the first commit rewrites (the journal's).
    replayed: Vec<Box<str>>,
    started: Instant,
}

impl Recovered {
    /// Opens and reads `DATA_DIR`'s database; `None` in memory mode.
    pub fn open(config: &Config) -> Result<Option<Recovered>, StorageError> {
        let Some(dir) = &config.data_dir else {
            return Ok(None);
        };
        let started = Instant::now();
        let db = Database::open(dir, config.durability)?;
        let loaded = db.load(config.idempotency_ttl, config.idempotency_window)?;
        Ok(Some(Recovered {
            db,
            loaded: Some(loaded),
            mode: config.durability,
            window_ttl: config.idempotency_ttl,
            window_len: config.idempotency_window,
            replayed: Vec::new(),
            started,
        }))
    }

    /// Puts the loaded products into `store`, applies the journal's events
    /// (acknowledged, maybe not applied before the process stopped), and
    /// gives `intake` the next seq and the idempotency window. Returns the
    /// watermark to start from: every seq up to it is applied. Logs the
    /// startup line.
    pub fn restore(&mut self, store: &Store, intake: &Intake) -> Seq {
        let Some(loaded) = self.loaded.take() else {
            return intake.next_seq() - 1;
        };
        let products = loaded.products.len();
        store.restore(loaded.products);
        let mut panicked = 0;
        for (seq, update) in &loaded.journal {
            let applied = panic::catch_unwind(AssertUnwindSafe(|| store.apply(*seq, update)));
            if applied.is_err() {
                panicked += 1;
                log::error!(
                    "storage: replaying seq={seq} product_id={:?} panicked; skipped",
                    update.product_id
                );
            }
        }
        self.replayed = loaded
            .journal
            .iter()
            .map(|(_, update)| update.product_id.clone())
            .collect();
        let window = loaded.window.len();
        intake.restore(loaded.next_seq, loaded.window);
        log::info!(
            "storage: sqlite {} durability={}: {products} products loaded, {} journal events replayed{}, {window} event ids in the idempotency window, next seq {}, in {:.3?}",
            self.db.path().display(),
            self.mode.as_str(),
            loaded.journal.len(),
            if panicked > 0 {
                format!(" ({panicked} panicked)")
            } else {
                String::new()
            },
            loaded.next_seq,
            self.started.elapsed()
        );
        loaded.next_seq - 1
    }

    /// Starts the committer thread.
    pub fn start(
        self,
        intake: Arc<Intake>,
        store: Store,
        progress: Arc<Progress>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Durable> {
        let path = self.db.path().to_owned();
        let shared = Arc::new(Shared {
            mode: self.mode,
            intake,
            store,
            progress,
            metrics,
            window_ttl: self.window_ttl,
            window_len: self.window_len,
            mailbox: Mailbox::new(),
            applied: Mutex::new(self.replayed),
            health: Health::default(),
        });
        let checkpointer = Checkpoints::start(&self.db)?;
        let db = self.db;
        let thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("committer".to_owned())
                .spawn(move || committer::run(&shared, db))?
        };
        Ok(Durable {
            shared,
            path,
            thread: Mutex::new(Some(thread)),
            checkpointer,
        })
    }
}

/// The running durable store.
pub struct Durable {
    shared: Arc<Shared>,
    path: PathBuf,
    thread: Mutex<Option<JoinHandle<Committed>>>,
    checkpointer: Checkpoints,
}

/// The checkpointer thread: every [`CHECKPOINT_INTERVAL`] it copies the
/// WAL into the database file (and syncs it) on a connection of its own,
/// so that no commit waits for that.
struct Checkpoints {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpoints {
    fn start(db: &Database) -> io::Result<Checkpoints> {
        let checkpointer = db.checkpointer().map_err(io::Error::other)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("checkpointer".to_owned())
                .spawn(move || {
                    let (stopped, bell) = &*stop;
                    let mut stopped = stopped.lock().unwrap_or_else(PoisonError::into_inner);
                    while !*stopped {
                        stopped = bell
                            .wait_timeout(stopped, CHECKPOINT_INTERVAL)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        if *stopped {
                            break;
                        }
                        drop(stopped);
                        if let Err(e) = checkpointer.passive() {
                            log::debug!("storage: checkpoint: {e}");
                        }
                        stopped = stop.0.lock().unwrap_or_else(PoisonError::into_inner);
                    }
                })?
        };
        Ok(Checkpoints {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn finish(&self) {
        *self.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.1.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Durable {
    /// `POST /events` in durable mode. Commit and fsync: `reply` is called
    /// by the committer once the event is committed (or at once if it is
    /// refused). Async: queued as in memory mode, unless writes are
    /// failing, and `reply` is called here.
    pub fn submit_with_reply(
        &self,
        update: ProductUpdate,
        request_id: OwnedRequestId,
        reply: Reply,
    ) {
        let shared = &self.shared;
        if shared.mode == Durability::Async {
            let queued = if shared.health.is_failing() {
                Err(SubmitError::StorageUnavailable)
            } else {
                shared.intake.submit(update, request_id)
            };
            return commit::answer(reply, queued);
        }
        // Bounded like the queue: past it the committer is behind.
        let capacity = shared.intake.capacity();
        commit::post(
            &shared.mailbox,
            &shared.health,
            capacity,
            update,
            request_id,
            reply,
        );
    }

    /// A worker applied an event for `product_id`; call before reporting
    /// its seq done.
    pub fn applied(&self, product_id: &str) {
        lock(&self.shared.applied).push(product_id.into());
    }

    /// Why writes fail right now, or `None` while they work.
    pub fn unavailable(&self) -> Option<String> {
        self.shared.health.unavailable()
    }

    /// Commit and fsync modes journal each event before its 202.
    pub fn journals(&self) -> bool {
        self.shared.mode != Durability::Async
    }

    /// Shutdown, after the workers have stopped: writes what is left and
    /// stops the committer. Later submissions are refused.
    pub fn finish(&self) -> Committed {
        self.checkpointer.finish();
        self.shared.mailbox.finish();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
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
        committed
    }
}
