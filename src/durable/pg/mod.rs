//! Several instances, one source of truth: PostgreSQL (`DATABASE_URL`,
//! cargo feature `postgres`).
//!
//! ```text
//!  POST:  connection ──post()──▶ mailbox ──▶ committer: [look up event ids], then one  ──▶ 202 (seq from the database)
//!         thread waits ◀───────────────────  statement per batch: lock seq_counter,
//!                                            INSERT one journal row, NOTIFY
//!  reads: every instance's tailer ◀─NOTIFY── SELECT journal rows after last ──▶ queue ──▶ workers ──▶ store ──▶ GET
//!  products table: any instance's compactor, once a second: journal after `through` ──fold──▶ UPSERT (guarded)
//! ```
//!
//! - **The 202 follows the commit.** The committer (`committer.rs`) takes
//!   the events connection threads post while it commits the previous
//!   batch (group commit) and commits them with one statement
//!   (`database.rs`), which gives them their seqs, writes them as one
//!   journal row and records their `event_id`s. Once committed, an event
//!   is in the journal, which every instance reads: there is no
//!   "acknowledged but held by one instance" state for a dead instance to
//!   leave behind.
//! - **One global order.** The seq counter is a row locked until the
//!   commit, so seqs are gap-free and commit in order across every
//!   instance (`database.rs` says why, and what it costs).
//! - **Reads stay in memory.** Each instance's tailer (`tailer.rs`) reads
//!   the journal in seq order and queues every event, whoever accepted it,
//!   for its own workers, which apply it to its in-memory store. The
//!   watermark is the same "every seq up to N is applied" as on one
//!   instance, so `GET /products/{id}?min_seq=N` on any instance waits
//!   until the event with seq N (from any instance) is applied there.
//! - **The products table is the journal, compacted** (`compactor.rs`):
//!   it is not on the path of a POST, and lets the journal be pruned.
//! - **A database that stops answering** (a hung host: connections stay
//!   open, nothing fails by itself) is given up on by the `watchdog`
//!   thread (`committer::watch`) once a commit has waited 3 s.
//! - **At startup** an instance reads the `products` table, the journal
//!   rows not compacted into it yet and the seq they reach, in one
//!   snapshot, and tails from there.

mod committer;
mod compactor;
mod database;
mod stop;
mod tailer;

pub use database::{EVENT_RETENTION, SCHEMA_VERSION};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::commit::{self, Health, Reply, lock};
use super::handoff::Mailbox;
use super::{Committed, StorageError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::ProductUpdate;
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError};
use crate::request_id::OwnedRequestId;
use crate::store::{Seq, Store};
use database::{Database, Snapshot};
use stop::Stop;

/// How long the startup waits to connect.
const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connected, schema checked, state read; not yet serving.
pub struct Recovered {
    committer_db: Database,
    /// The pool's other connections.
    more_dbs: Vec<Database>,
    tailer_db: Database,
    snapshot: Option<Snapshot>,
    last_seq: Seq,
    window_ttl: Duration,
    window_len: usize,
    started: Instant,
}

impl Recovered {
    /// Connects (twice: the committer's connection and the tailer's, which
    /// listens before the snapshot is read, so no commit after it goes
    /// unnoticed), prepares the schema and reads the products.
    pub fn open(config: &Config) -> Result<Option<Recovered>, StorageError> {
        let Some(url) = &config.database_url else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut committer_db =
            Database::connect_within(url, STARTUP_CONNECT_TIMEOUT, "committer-0")
                .map_err(StorageError::Postgres)?;
        committer_db
            .prepare_schema()
            .map_err(StorageError::Postgres)?;
        let more_dbs = (1..config.db_pool_size.max(1))
            .map(|n| {
                Database::connect_within(url, STARTUP_CONNECT_TIMEOUT, &format!("committer-{n}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(StorageError::Postgres)?;
        let mut tailer_db = Database::connect_within(url, STARTUP_CONNECT_TIMEOUT, "tailer")
            .map_err(StorageError::Postgres)?;
        tailer_db.listen().map_err(StorageError::Postgres)?;
        let snapshot = committer_db.snapshot().map_err(StorageError::Postgres)?;
        Ok(Some(Recovered {
            committer_db,
            more_dbs,
            tailer_db,
            last_seq: snapshot.last_seq,
            snapshot: Some(snapshot),
            window_ttl: config.idempotency_ttl,
            window_len: config.idempotency_window,
            started,
        }))
    }

    /// Puts the products into `store` and continues the seqs after the
    /// snapshot's. Returns the watermark: every seq up to it is applied.
    pub fn restore(&mut self, store: &Store, intake: &Intake) -> Seq {
        let Some(snapshot) = self.snapshot.take() else {
            return self.last_seq;
        };
        let products = snapshot.products.len();
        store.restore(snapshot.products);
        intake.restore(snapshot.last_seq + 1, Vec::new());
        log::info!(
            "storage: postgres {}: schema version {}, {products} products loaded as of seq {}, in {:.3?}",
            self.committer_db.url(),
            SCHEMA_VERSION,
            snapshot.last_seq,
            self.started.elapsed()
        );
        snapshot.last_seq
    }

    /// Starts the committer and the tailer.
    pub fn start(
        self,
        intake: Arc<Intake>,
        store: Store,
        progress: Arc<Progress>,
        metrics: Arc<Metrics>,
        local_addr: SocketAddr,
    ) -> io::Result<Durable> {
        let url = self.committer_db.url().clone();
        let instance = instance_name(local_addr);
        let mut committer_db = self.committer_db;
        // Recorded before the first request, so that `instances` lists
        // every instance that serves.
        if let Err(e) =
            committer_db.housekeeping(&instance, self.last_seq, self.window_ttl, self.window_len)
        {
            log::warn!(
                "storage: recording this instance: {}",
                committer_db.error(&e)
            );
        }
        let handed = Arc::new(tailer::Handed::default());
        let committer = Arc::new(committer::Shared {
            url: url.clone(),
            instance: instance.clone(),
            intake: Arc::clone(&intake),
            progress: Arc::clone(&progress),
            metrics: Arc::clone(&metrics),
            window_ttl: self.window_ttl,
            window_len: self.window_len,
            mailbox: Mailbox::with_collectors(1 + self.more_dbs.len()),
            health: Health::of_parts(1 + self.more_dbs.len()),
            accepted: AtomicU64::new(0),
            last_committed: AtomicU64::new(0),
            handed: Arc::clone(&handed),
            in_flight: (0..1 + self.more_dbs.len())
                .map(|_| committer::InFlight::default())
                .collect(),
        });
        let tailer = Arc::new(tailer::Shared {
            url: url.clone(),
            intake,
            store,
            progress,
            health: Health::of_reads(),
            stop: Stop::default(),
            position: (Mutex::new(self.last_seq), Condvar::new()),
            handed,
        });
        let tailer_thread = {
            let shared = Arc::clone(&tailer);
            let (db, last) = (self.tailer_db, self.last_seq);
            thread::Builder::new()
                .name("tailer".to_owned())
                .spawn(move || tailer::run(&shared, db, last))?
        };
        let compactor = Arc::new(compactor::Shared {
            url,
            metrics: Arc::clone(&metrics),
            stop: Stop::default(),
        });
        let compactor_thread = {
            let shared = Arc::clone(&compactor);
            thread::Builder::new()
                .name("compactor".to_owned())
                .spawn(move || compactor::run(&shared))
        };
        let compactor_thread = match compactor_thread {
            Ok(thread) => thread,
            Err(e) => {
                stop_tailer(&tailer, tailer_thread);
                return Err(e);
            }
        };
        let watchdog = Arc::new(Stop::default());
        let watchdog_thread = {
            let (shared, stop) = (Arc::clone(&committer), Arc::clone(&watchdog));
            thread::Builder::new()
                .name("watchdog".to_owned())
                .spawn(move || committer::watch(&shared, &stop))
        };
        let watchdog_thread = match watchdog_thread {
            Ok(thread) => thread,
            Err(e) => {
                stop_tailer(&tailer, tailer_thread);
                stop_compactor(&compactor, compactor_thread);
                return Err(e);
            }
        };
        let mut committer_threads = Vec::new();
        let dbs = std::iter::once(committer_db).chain(self.more_dbs);
        for (n, db) in dbs.enumerate() {
            let shared = Arc::clone(&committer);
            let spawned = thread::Builder::new()
                .name(format!("committer-{n}"))
                .spawn(move || committer::run(&shared, db, n));
            match spawned {
                Ok(thread) => committer_threads.push(thread),
                Err(e) => {
                    committer.mailbox.finish();
                    for thread in committer_threads {
                        let _ = thread.join();
                    }
                    stop_tailer(&tailer, tailer_thread);
                    stop_compactor(&compactor, compactor_thread);
                    stop_watchdog(&watchdog, watchdog_thread);
                    return Err(e);
                }
            }
        }
        log::info!("storage: this instance is {instance:?} in events.accepted_by and instances");
        Ok(Durable {
            committer,
            tailer,
            compactor,
            compactor_thread: Mutex::new(Some(compactor_thread)),
            watchdog,
            watchdog_thread: Mutex::new(Some(watchdog_thread)),
            committer_threads: Mutex::new(committer_threads),
            tailer_thread: Mutex::new(Some(tailer_thread)),
            committed: Mutex::new(None),
        })
    }
}

/// This instance's name in the database: host name, port and process id,
/// so that "which instance took this event?" has an answer a person can
/// find.
fn instance_name(local_addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| local_addr.ip().to_string());
    format!("{host}:{} pid {}", local_addr.port(), std::process::id())
}

fn stop_tailer(tailer: &tailer::Shared, thread: JoinHandle<()>) {
    tailer.stop.stop();
    if thread.join().is_err() {
        log::error!("storage: the tailer thread had panicked");
    }
}

fn stop_compactor(compactor: &compactor::Shared, thread: JoinHandle<()>) {
    compactor.stop.stop();
    if thread.join().is_err() {
        log::error!("storage: the compactor thread had panicked");
    }
}

fn stop_watchdog(stop: &Stop, thread: JoinHandle<()>) {
    stop.stop();
    if thread.join().is_err() {
        log::error!("storage: the watchdog thread had panicked");
    }
}

/// The running PostgreSQL store.
pub struct Durable {
    committer: Arc<committer::Shared>,
    tailer: Arc<tailer::Shared>,
    compactor: Arc<compactor::Shared>,
    compactor_thread: Mutex<Option<JoinHandle<()>>>,
    /// Stops the watchdog (`committer::watch`).
    watchdog: Arc<Stop>,
    watchdog_thread: Mutex<Option<JoinHandle<()>>>,
    committer_threads: Mutex<Vec<JoinHandle<Committed>>>,
    tailer_thread: Mutex<Option<JoinHandle<()>>>,
    /// What the committer returned, once `stop_accepting` joined it.
    committed: Mutex<Option<Committed>>,
}

impl Durable {
    /// `POST /events`: `reply` is called once the event is committed (by
    /// the committer that committed it), or at once, here, while commits
    /// fail or the committers are behind.
    pub fn submit_with_reply(
        &self,
        update: ProductUpdate,
        request_id: OwnedRequestId,
        reply: Reply,
    ) {
        let shared = &self.committer;
        if shared.health.is_failing() {
            return commit::answer(reply, Err(SubmitError::StorageUnavailable));
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

    /// Why commits, or reads of the journal, fail right now.
    pub fn unavailable(&self) -> Option<String> {
        self.committer
            .health
            .unavailable()
            .or_else(|| self.tailer.health.unavailable())
    }

    /// Stops the committers (what was posted is committed first) and adds
    /// up what they did.
    fn join_committers(&self) -> Committed {
        self.committer.mailbox.finish();
        let threads = std::mem::take(&mut *lock(&self.committer_threads));
        let mut all = Committed {
            clean: true,
            ..Committed::default()
        };
        for thread in threads {
            let one = thread.join().unwrap_or_default();
            all.events += one.events;
            all.failures += one.failures;
            all.clean &= one.clean;
        }
        all
    }

    /// Events this instance has committed.
    pub fn accepted(&self) -> u64 {
        self.committer.accepted.load(Ordering::Relaxed)
    }

    /// Shutdown, before the intake closes: stops taking events (later
    /// POSTs get 503 `shutting_down`), commits what was posted, and waits
    /// (until `deadline`) for the tailer to queue every event this instance
    /// committed, so that its own events are applied here before it exits
    /// (they are in the database either way).
    pub fn stop_accepting(&self, deadline: Instant) {
        *lock(&self.committed) = Some(self.join_committers());
        let last = self.committer.last_committed.load(Ordering::Acquire);
        if !self.tailer.wait_for(last, deadline) {
            log::warn!(
                "shutdown: the tailer had not read up to seq {last} by the deadline; the events after it are in the database, but not applied here"
            );
        }
    }

    /// Shutdown, after the workers have stopped: stops the tailer and the
    /// committer (later submissions are refused).
    pub fn finish(&self) -> Committed {
        let tailer = self
            .tailer_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = tailer {
            stop_tailer(&self.tailer, thread);
        }
        let compactor = lock(&self.compactor_thread).take();
        if let Some(thread) = compactor {
            stop_compactor(&self.compactor, thread);
        }
        // Joined by `stop_accepting` already, normally.
        let committed = match lock(&self.committed).take() {
            Some(committed) => committed,
            None => self.join_committers(),
        };
        let watchdog = lock(&self.watchdog_thread).take();
        if let Some(thread) = watchdog {
            stop_watchdog(&self.watchdog, thread);
        }
        log::info!(
            "storage: {} events committed to {} by this instance",
            committed.events,
            self.committer.url
        );
        committed
    }
}
