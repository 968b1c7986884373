//! PostgreSQL: several instances, one source of truth (`DATABASE_URL`,
//! cargo feature `postgres`).
//!
//! ```text
//!  POST:  front door ──post──▶ mailbox ──▶ committer: [look up event ids], then one  ──▶ 202 (seq from the database)
//!         (its thread is free) ◀─────────  statement per batch: lock seq_counter,
//!                                          INSERT one journal row, NOTIFY
//!  reads: every instance's tailer ◀─NOTIFY── SELECT journal rows after last ──enqueue──▶ queue ──▶ workers ──▶ store ──▶ GET
//!  products table: any instance's compactor, once a second: journal after `through` ──fold──▶ UPSERT (guarded)
//! ```
//!
//! - **The 202 follows the commit.** The committers (`committer.rs`) take
//!   the events posted while they commit the previous batch (group
//!   commit) and commit them with one statement (`session.rs`), which
//!   gives them their seqs, writes them as one journal row and records
//!   their `event_id`s. Once committed, an event is in the journal, which
//!   every instance reads: there is no "acknowledged but held by one
//!   instance" state for a dead instance to leave behind.
//! - **One global order.** The seq counter is a row locked until the
//!   commit, so seqs are gap-free and commit in order across every
//!   instance (`session.rs` says why, and what it costs).
//! - **Reads stay in memory.** Each instance's tailer (`tailer.rs`) reads
//!   the journal in seq order and queues every event, whoever accepted it,
//!   for its own workers ([`Intake::enqueue`](crate::intake::Intake::enqueue)
//!   with the database's seq). This instance's own batches reach it in
//!   memory (`handover.rs`). The watermark is the same "every seq up to N
//!   is applied" as on one instance, so `GET /products/{id}?min_seq=N` on
//!   any instance waits until the event with seq N (from any instance) is
//!   applied there.
//! - **The products table is the journal, compacted** (`compactor.rs`): it
//!   is not on the path of a POST, and lets the journal be pruned.
//! - **A database that stops answering** (a hung host: connections stay
//!   open, nothing fails by itself) is given up on by the watchdog
//!   (`watchdog.rs`) once a commit has waited 3 s.
//! - **At startup** an instance reads the `products` table, the journal
//!   rows not compacted into it yet and the seq they reach, in one
//!   snapshot, and tails from there.

mod committer;
mod compactor;
mod error;
mod handover;
mod outbox;
mod session;
mod tailer;
mod watchdog;

pub use error::PgError;
pub use session::{EVENT_RETENTION, SCHEMA_VERSION};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::backend::health::{Health, lock};
use crate::backend::interface::{
    Admission, Backend, Committed, CoreParts, Opened, Outbox, OutboxError, StorageError,
};
use crate::backend::stop::StopSignal;
use crate::config::Config;
use crate::intake::mailbox::Mailbox;
use committer::{CommitPool, InFlight, PgCommitter};
use compactor::Compactor;
use handover::Handed;
use outbox::PgOutbox;
use session::{PgSession, Snapshot};
use tailer::Tailer;

/// How long the startup waits to connect.
const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects (the committers' connections, and the tailer's, which listens
/// before the snapshot is read, so that no commit after it goes
/// unnoticed), prepares the schema and reads the products.
pub fn open(config: &Config) -> Result<Box<dyn Opened>, StorageError> {
    let Some(url) = &config.database_url else {
        return Err(StorageError::NotBuilt {
            variable: "DATABASE_URL",
            feature: "postgres",
        });
    };
    let started = Instant::now();
    let connect = |role: &str| PgSession::connect_within(url, STARTUP_CONNECT_TIMEOUT, role);
    let mut first = connect("committer-0")?;
    first.prepare_schema()?;
    let mut committers = vec![first];
    for n in 1..config.db_pool_size.max(1) {
        committers.push(connect(&format!("committer-{n}"))?);
    }
    let mut tailer = connect("tailer")?;
    tailer.listen()?;
    let snapshot = committers[0].snapshot()?;
    Ok(Box::new(PgOpened {
        committers,
        tailer,
        snapshot,
        window_ttl: config.idempotency_ttl,
        window_len: config.idempotency_window,
        started,
    }))
}

/// Connected, schema checked, state read; not yet serving.
pub struct PgOpened {
    /// One per committer (`DB_POOL_SIZE`); the first does the housekeeping.
    committers: Vec<PgSession>,
    tailer: PgSession,
    snapshot: Snapshot,
    window_ttl: Duration,
    window_len: usize,
    started: Instant,
}

impl Opened for PgOpened {
    fn start(self: Box<Self>, parts: &CoreParts) -> io::Result<Box<dyn Backend>> {
        let PgOpened {
            mut committers,
            tailer,
            snapshot,
            window_ttl,
            window_len,
            started,
        } = *self;
        let last_seq = snapshot.last_seq;
        let products = snapshot.products.len();
        parts.store.restore(snapshot.products);
        parts.intake.resume(last_seq + 1, Vec::new());
        parts.progress.skip_to(last_seq);
        let url = committers[0].url().clone();
        log::info!(
            "storage: postgres {url}: schema version {SCHEMA_VERSION}, {products} products loaded as of seq {last_seq}, in {:.3?}",
            started.elapsed()
        );
        let instance = instance_name(parts.local_addr);
        // Recorded before the first request, so that `instances` lists
        // every instance that serves.
        if let Err(e) = committers[0].housekeeping(&instance, last_seq, window_ttl, window_len) {
            let e = committers[0].error(&e);
            log::warn!("storage: recording this instance: {e}");
        }
        let handed = Arc::new(Handed::default());
        let pool = Arc::new(CommitPool {
            url: url.clone(),
            instance: instance.clone(),
            intake: Arc::clone(&parts.intake),
            progress: Arc::clone(&parts.progress),
            metrics: Arc::clone(&parts.metrics),
            window_ttl,
            window_len,
            mailbox: Mailbox::with_collectors(committers.len()),
            health: Health::of_parts(committers.len()),
            accepted: AtomicU64::new(0),
            last_committed: AtomicU64::new(0),
            handed: Arc::clone(&handed),
            in_flight: committers.iter().map(|_| InFlight::default()).collect(),
        });
        let backend = Postgres {
            tailer: Arc::new(Tailer {
                url: url.clone(),
                intake: Arc::clone(&parts.intake),
                store: parts.store.clone(),
                progress: Arc::clone(&parts.progress),
                health: Health::of_reads(),
                stop: StopSignal::default(),
                position: (Mutex::new(last_seq), Condvar::new()),
                handed,
                known: AtomicU64::new(last_seq),
            }),
            compactor: Arc::new(Compactor {
                url,
                metrics: Arc::clone(&parts.metrics),
                stop: StopSignal::default(),
            }),
            watchdog: Arc::new(StopSignal::default()),
            pool,
            threads: Mutex::new(PgThreads::default()),
            committed: Mutex::new(Committed::sum([])),
        };
        let sessions = Sessions {
            committers,
            tailer,
            last_seq,
        };
        if let Err(e) = backend.spawn_threads(sessions) {
            backend.stop_threads();
            return Err(e);
        }
        log::info!("storage: this instance is {instance:?} in events.accepted_by and instances");
        Ok(Box::new(backend))
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

/// The connections the threads take over.
struct Sessions {
    committers: Vec<PgSession>,
    tailer: PgSession,
    /// The seq the store reflects: where the tailer starts.
    last_seq: u64,
}

/// The backend's threads, each joined once.
#[derive(Default)]
struct PgThreads {
    committers: Vec<JoinHandle<Committed>>,
    tailer: Option<JoinHandle<()>>,
    compactor: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

/// The running PostgreSQL backend.
pub struct Postgres {
    pool: Arc<CommitPool>,
    tailer: Arc<Tailer>,
    compactor: Arc<Compactor>,
    /// Stops the watchdog.
    watchdog: Arc<StopSignal>,
    threads: Mutex<PgThreads>,
    /// What the committers did, once joined.
    committed: Mutex<Committed>,
}

impl Postgres {
    /// Starts the tailer, the compactor, the watchdog and the committers,
    /// keeping each handle as it starts (so that a failure stops exactly
    /// the ones started: [`Postgres::stop_threads`]).
    fn spawn_threads(&self, sessions: Sessions) -> io::Result<()> {
        let spawn = |name: &str| thread::Builder::new().name(name.to_owned());
        let tailer = Arc::clone(&self.tailer);
        let (session, last) = (sessions.tailer, sessions.last_seq);
        lock(&self.threads).tailer =
            Some(spawn("tailer").spawn(move || tailer::run(&tailer, session, last))?);
        let compactor = Arc::clone(&self.compactor);
        lock(&self.threads).compactor =
            Some(spawn("compactor").spawn(move || compactor::run(&compactor))?);
        let (pool, stop) = (Arc::clone(&self.pool), Arc::clone(&self.watchdog));
        lock(&self.threads).watchdog =
            Some(spawn("watchdog").spawn(move || watchdog::watch(&pool, &stop))?);
        for (part, session) in sessions.committers.into_iter().enumerate() {
            let committer = PgCommitter::new(Arc::clone(&self.pool), part, session);
            let thread = spawn(&format!("committer-{part}")).spawn(move || committer.run())?;
            lock(&self.threads).committers.push(thread);
        }
        Ok(())
    }

    /// Stops the committers (what was posted is committed first) and adds
    /// up what they did.
    fn join_committers(&self) -> Committed {
        self.pool.mailbox.finish();
        let threads = std::mem::take(&mut lock(&self.threads).committers);
        let joined = Committed::sum(threads.into_iter().map(|t| t.join().unwrap_or_default()));
        let mut committed = lock(&self.committed);
        *committed = Committed::sum([*committed, joined]);
        *committed
    }

    /// Stops every thread still running, each one once: the committers,
    /// the tailer, the compactor, the watchdog.
    fn stop_threads(&self) -> Committed {
        let committed = self.join_committers();
        let threads = std::mem::take(&mut *lock(&self.threads));
        if let Some(thread) = threads.tailer {
            self.tailer.stop.stop();
            if thread.join().is_err() {
                log::error!("storage: the tailer thread had panicked");
            }
        }
        if let Some(thread) = threads.compactor {
            self.compactor.stop.stop();
            if thread.join().is_err() {
                log::error!("storage: the compactor thread had panicked");
            }
        }
        if let Some(thread) = threads.watchdog {
            self.watchdog.stop();
            if thread.join().is_err() {
                log::error!("storage: the watchdog thread had panicked");
            }
        }
        committed
    }
}

impl Backend for Postgres {
    fn admission(&self) -> Admission<'_> {
        if self.pool.health.is_failing() {
            Admission::Refuse
        } else {
            Admission::Commit(&self.pool.mailbox)
        }
    }

    fn is_durable(&self) -> bool {
        true
    }

    /// Why commits, or reads of the journal, fail right now.
    fn unavailable(&self) -> Option<String> {
        self.pool
            .health
            .unavailable()
            .or_else(|| self.tailer.health.unavailable())
    }

    /// Events committed to the database (by any instance) that this
    /// instance has not applied yet.
    fn lag(&self, applied_through: u64) -> Option<u64> {
        let known = self.tailer.known.load(Ordering::Relaxed);
        Some(known.saturating_sub(applied_through))
    }

    /// Events this instance has committed.
    fn accepted(&self) -> Option<u64> {
        Some(self.pool.accepted.load(Ordering::Relaxed))
    }

    fn journals(&self) -> bool {
        true
    }

    /// The journal, shared by every instance: their relays take turns
    /// (`outbox.rs`).
    fn outbox(&self) -> Option<Result<Box<dyn Outbox>, OutboxError>> {
        let opened = PgOutbox::open(&self.pool.url, &self.pool.instance);
        Some(opened.map(|outbox| Box::new(outbox) as Box<dyn Outbox>))
    }

    /// Commits what was posted, and waits (until `deadline`) for the tailer
    /// to queue every event this instance committed, so that its own events
    /// are applied here before it exits (they are in the database either
    /// way).
    fn stop_taking(&self, deadline: Instant) {
        self.join_committers();
        let last = self.pool.last_committed.load(Ordering::Acquire);
        if !self.tailer.wait_for(last, deadline) {
            log::warn!(
                "shutdown: the tailer had not read up to seq {last} by the deadline; the events after it are in the database, but not applied here"
            );
        }
    }

    fn finish(&self) -> Option<Committed> {
        let committed = self.stop_threads();
        log::info!(
            "storage: {} events committed to {} by this instance",
            committed.events,
            self.pool.url
        );
        Some(committed)
    }
}
