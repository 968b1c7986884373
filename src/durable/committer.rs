//! The committer thread: the only writer of the database. What it shares
//! with the connection threads and the workers is the [`Inbox`], one mutex:
//!
//! - connection threads (commit and fsync modes) put an event in it with a
//!   [`Ticket`] and park until the ticket has an answer;
//! - workers put the id of each product they applied, before they report
//!   the seq done to the watermark;
//! - in async mode, connection threads put the event ids of the window.
//!
//! Each cycle the committer reads the watermark, takes everything in the
//! inbox, and writes one transaction (see `mod.rs` for why that order makes
//! `applied_through` true). It sleeps only when the inbox has no events:
//! under load, the events that arrive during one commit form the next
//! batch, and a batch costs one commit whatever its size.
//!
//! Every ticket is answered, whatever happens: after the commit, after a
//! failed one (503 `storage_unavailable`), at shutdown (503
//! `shutting_down`), and if the committer itself panics (503
//! `storage_unavailable`, and the store reports itself unavailable for
//! good).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant, SystemTime};

use super::database::{Cycle, Database, JournalRow, WindowRow};
use super::{Committed, FLUSH_INTERVAL, RETRY_INTERVAL};
use crate::config::Durability;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::queue::{Intake, Submission, SubmitError, Submitted};
use crate::store::{Seq, Store, Stored};

/// How often, and how far apart, the last write at shutdown is tried.
const FINAL_ATTEMPTS: u32 = 5;
const FINAL_PAUSE: Duration = Duration::from_millis(200);

/// What the committer shares with the threads that feed it.
pub struct Shared {
    pub mode: Durability,
    pub intake: Arc<Intake>,
    pub store: Store,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub window_ttl: Duration,
    pub window_len: usize,
    pub inbox: Mutex<Inbox>,
    /// Rung when an event arrives while the committer sleeps, and at
    /// shutdown.
    pub bell: Condvar,
    pub health: Health,
}

#[derive(Default)]
pub struct Inbox {
    /// Commit and fsync modes: events waiting for the next commit.
    pub pending: Vec<Pending>,
    /// Async mode: event ids accepted since the last commit.
    pub window: Vec<WindowRow>,
    /// Products applied since the last commit (repeats allowed).
    pub applied: Vec<Box<str>>,
    /// The committer is asleep on `bell`.
    pub sleeping: bool,
    /// Shutdown: write what is left and stop.
    pub finishing: bool,
    /// The committer has stopped: nobody will answer a ticket any more.
    pub stopped: bool,
}

/// An event and the ticket its connection thread waits on.
pub struct Pending {
    pub submission: Submission,
    pub ticket: Arc<Ticket>,
}

/// Where the committer puts a waiting connection thread's answer.
pub struct Ticket {
    answer: Mutex<Option<Result<Submitted, SubmitError>>>,
    thread: Thread,
}

impl Ticket {
    /// A ticket for the calling thread.
    pub fn new() -> Ticket {
        Ticket {
            answer: Mutex::new(None),
            thread: thread::current(),
        }
    }

    /// Parks until the answer is in. (`unpark` before `park` is kept, and
    /// a spurious wake-up finds no answer and parks again.)
    pub fn wait(&self) -> Result<Submitted, SubmitError> {
        loop {
            if let Some(answer) = lock(&self.answer).take() {
                return answer;
            }
            thread::park();
        }
    }

    fn answer(&self, answer: Result<Submitted, SubmitError>) {
        *lock(&self.answer) = Some(answer);
        self.thread.unpark();
    }
}

/// Whether writes work, for `/readyz` and for refusing events in async
/// mode. Changes are logged once each way.
#[derive(Default)]
pub struct Health {
    failing: AtomicBool,
    reason: Mutex<String>,
}

impl Health {
    /// The reason writes fail, or `None` while they work.
    pub fn unavailable(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        Some(lock(&self.reason).clone())
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    fn fail(&self, reason: String) {
        let mut current = lock(&self.reason);
        if !self.failing.swap(true, Ordering::AcqRel) {
            log::error!(
                "storage: writes fail ({reason}); POST /events answers 503 storage_unavailable and /readyz 503 until they succeed again (retried every {RETRY_INTERVAL:?})"
            );
        }
        *current = reason;
    }

    fn ok(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            log::info!("storage: writes succeed again; accepting events");
        }
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inbox> {
        lock(&self.inbox)
    }
}

/// Poisoning: every value behind these locks is plain data changed in
/// single assignments or pushes.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The committer thread's body. Returns what it committed; a panic inside
/// is caught, every waiting thread answered, and the store marked
/// unavailable.
pub fn run(shared: &Shared, mut db: Database) -> Committed {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| cycles(shared, &mut db)));
    let committed = outcome.unwrap_or_else(|_| {
        shared.health.fail(
            "the committer thread panicked (a bug; see the log); restart the service".to_owned(),
        );
        Committed::default()
    });
    let left = {
        let mut inbox = shared.lock();
        inbox.stopped = true;
        std::mem::take(&mut inbox.pending)
    };
    let answer = if shared.health.is_failing() {
        SubmitError::StorageUnavailable
    } else {
        SubmitError::ShuttingDown
    };
    for pending in left {
        pending.ticket.answer(Err(answer));
    }
    committed
}

fn cycles(shared: &Shared, db: &mut Database) -> Committed {
    let mut committed = Committed::default();
    let mut last_through = shared.progress.through();
    let mut last_prune = Instant::now();
    let mut final_attempts = 0;
    let mut previous = Instant::now();
    loop {
        let finishing = wait_for_work(shared, previous);
        // The watermark before the inbox: every event up to it has put its
        // product in the inbox already (see `mod.rs`).
        let through = shared.progress.through();
        let (pending, window, mut applied) = {
            let mut inbox = shared.lock();
            (
                std::mem::take(&mut inbox.pending),
                std::mem::take(&mut inbox.window),
                std::mem::take(&mut inbox.applied),
            )
        };
        applied.sort_unstable();
        applied.dedup();
        let products: Vec<(&str, Stored)> = applied
            .iter()
            .filter_map(|id| Some((&**id, shared.store.stored(id)?)))
            .collect();
        let prune = (last_prune.elapsed() >= RETRY_INTERVAL).then(|| {
            let before = SystemTime::now()
                .checked_sub(shared.window_ttl)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (before, shared.window_len)
        });

        let started = Instant::now();
        let mut written: Option<Result<usize, rusqlite::Error>> = None;
        if !pending.is_empty() {
            let (submissions, tickets): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .map(|p| (p.submission, p.ticket))
                .unzip();
            let answers = shared.intake.admit(submissions, |admitted| {
                let rows: Vec<JournalRow<'_>> = admitted
                    .iter()
                    .map(|a| JournalRow {
                        seq: a.seq,
                        update: a.update,
                        fingerprint: a.fingerprint,
                    })
                    .collect();
                let cycle = Cycle {
                    journal: &rows,
                    window: &window,
                    products: &products,
                    applied_through: through,
                    next_seq: rows.last().map(|row| row.seq + 1),
                    prune,
                };
                let result = db.write(&cycle).map(|()| rows.len());
                let ok = result.is_ok();
                written = Some(result);
                ok
            });
            for (ticket, answer) in tickets.iter().zip(answers) {
                ticket.answer(answer);
            }
        }
        // Nothing was admitted (duplicates, a full queue, shutdown), or
        // there were no events: write the rest on its own if there is any.
        if written.is_none() {
            let changed = !products.is_empty()
                || !window.is_empty()
                || through != last_through
                || prune.is_some();
            if changed {
                let next_seq = (shared.mode == Durability::Async).then(|| shared.intake.next_seq());
                let cycle = Cycle {
                    journal: &[],
                    window: &window,
                    products: &products,
                    applied_through: through,
                    next_seq,
                    prune,
                };
                written = Some(db.write(&cycle).map(|()| 0));
            } else if shared.health.is_failing() {
                written = Some(db.probe().map(|()| 0));
            }
        }

        match written {
            None => {}
            Some(Ok(journaled)) => {
                shared.health.ok();
                let events = match shared.mode {
                    Durability::Async => through.saturating_sub(last_through),
                    Durability::Commit | Durability::Fsync => journaled as Seq,
                };
                committed.events += events;
                last_through = through;
                if prune.is_some() {
                    last_prune = Instant::now();
                }
                let storage = &shared.metrics.storage;
                storage.commit_seconds.observe(started.elapsed());
                storage.commit_events.observe_count(events);
                storage.record_products_written(products.len() as u64);
            }
            Some(Err(e)) => {
                committed.failures += 1;
                shared.metrics.storage.record_error();
                shared.health.fail(describe(&e, db));
                // Not written: they go back for the next cycle.
                drop(products);
                let mut inbox = shared.lock();
                inbox.applied.append(&mut applied);
                inbox.window.extend(window);
            }
        }

        previous = Instant::now();
        if finishing {
            let clean = !shared.health.is_failing() && shared.lock().applied.is_empty();
            final_attempts += 1;
            if clean || final_attempts >= FINAL_ATTEMPTS {
                committed.clean = clean;
                if !clean {
                    log::error!(
                        "storage: the last write failed {final_attempts} times; products applied since the last commit are not in {} (in commit and fsync modes the journal has their events and the next start applies them again)",
                        db.path().display()
                    );
                }
                return committed;
            }
            thread::sleep(FINAL_PAUSE);
        }
    }
}

/// Waits until events arrive, shutdown begins, or it is time for the next
/// write of applied products: [`FLUSH_INTERVAL`] after the previous cycle,
/// so that products applied meanwhile share one commit (or
/// [`RETRY_INTERVAL`] while writes fail or nothing is left to write, for
/// the retry and the window's pruning). Returns whether shutdown has begun.
fn wait_for_work(shared: &Shared, previous: Instant) -> bool {
    let mut inbox = shared.lock();
    loop {
        if !inbox.pending.is_empty() || inbox.finishing {
            return inbox.finishing;
        }
        let flush = !(inbox.applied.is_empty() && inbox.window.is_empty());
        let due = if flush && !shared.health.is_failing() {
            previous + FLUSH_INTERVAL
        } else {
            previous + RETRY_INTERVAL
        };
        let Some(left) = due
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return false;
        };
        inbox.sleeping = true;
        inbox = shared
            .bell
            .wait_timeout(inbox, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        inbox.sleeping = false;
    }
}

/// What `/readyz` and the log say about a failed write.
fn describe(e: &rusqlite::Error, db: &Database) -> String {
    let what = if super::database::is_full(e) {
        "the disk is full"
    } else {
        "a write failed"
    };
    format!("{what} writing {}: {e}", db.path().display())
}
