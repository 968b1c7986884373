//! The committer thread: the only writer of the database. What it shares
//! with the connection threads and the workers:
//!
//! - the [`Mailbox`] (commit and fsync modes): a connection thread posts
//!   its event with the reply that answers its client, and goes on to read
//!   its connection's next request; this thread calls the reply, which
//!   writes the HTTP answer, once the event is committed (the hand-off
//!   protocol is in `handoff.rs`, model-checked; the deferred answer in
//!   the vendored tiny_http's `inline/deferred.rs`);
//! - `applied`: workers put the id of each product they applied, before
//!   they report the seq done to the watermark;
//! - in async mode, the intake's idempotency window, read at each products
//!   write for the events that write covers.
//!
//! Each cycle the committer collects the events posted and journals them
//! in one transaction. It sleeps only when nothing is posted: under load,
//! the events that arrive during one commit form the next batch, and a
//! batch costs one commit whatever its size. Every [`FLUSH_INTERVAL`] it
//! also reads the watermark, then takes `applied`, and writes those
//! products in the same transaction (see `mod.rs` for why that order makes
//! `applied_through` true): a product updated many times in that interval
//! is written once, and a commit of events in between writes only the
//! journal's last page.
//!
//! Every event is answered, whatever happens: after the commit, after a
//! failed one (503 `storage_unavailable`), at shutdown (503
//! `shutting_down`), and if the committer itself panics (503
//! `storage_unavailable`, and the store reports itself unavailable for
//! good).

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::commit::{self, Health, Pending, Waiting, lock};
use super::database::{Cycle, Database, JournalRow, WindowRow};
use super::handoff::{Collected, Mailbox};
use super::{Committed, FLUSH_INTERVAL, RETRY_INTERVAL, WAL_LIMIT};
use crate::config::Durability;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::queue::{Intake, Submission, SubmitError};
use crate::store::{Seq, Store, Stored};

/// How many times the committer yields the CPU to let a batch grow.
const GATHER_ROUNDS: usize = 8;

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
    /// Commit and fsync modes: events waiting for the next commit.
    pub mailbox: Mailbox<Pending>,
    /// Products applied since the last products write (repeats allowed).
    /// A lock of its own: the workers push here for every event. No bell:
    /// the committer looks every [`FLUSH_INTERVAL`].
    pub applied: Mutex<Vec<Box<str>>>,
    pub health: Health,
}

/// The committer thread's body. Returns what it committed; a panic inside
/// is caught, every waiting client answered, and the store marked
/// unavailable.
pub fn run(shared: &Shared, mut db: Database) -> Committed {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| cycles(shared, &mut db)));
    let committed = outcome.unwrap_or_else(|_| {
        shared.health.fail(
            0,
            "the committer thread panicked (a bug; see the log); restart the service".to_owned(),
        );
        Committed::default()
    });
    let left = shared.mailbox.stop();
    let answer = if shared.health.is_failing() {
        SubmitError::StorageUnavailable
    } else {
        SubmitError::ShuttingDown
    };
    for pending in left {
        commit::answer(pending.reply, Err(answer));
    }
    committed
}

fn cycles(shared: &Shared, db: &mut Database) -> Committed {
    let mut committed = Committed::default();
    let mut last_through = shared.progress.through();
    let mut last_prune = Instant::now();
    let mut last_flush = Instant::now();
    let mut last_probe = Instant::now();
    let mut final_attempts = 0;
    loop {
        let Collected { batch, finishing } = shared
            .mailbox
            .collect(last_flush + FLUSH_INTERVAL, GATHER_ROUNDS);
        let (submissions, replies): (Vec<Submission>, Vec<_>) =
            batch.into_iter().map(|p| (p.submission, p.reply)).unzip();
        // From here on every one of these threads gets an answer, even if
        // this cycle panics.
        let waiting = Waiting(replies);
        let flush = finishing || last_flush.elapsed() >= FLUSH_INTERVAL;
        // The watermark before `applied`: every event up to it has put its
        // product there already (see `mod.rs`).
        let through = flush.then(|| shared.progress.through());
        // Async mode: the window's entries for the events this write
        // covers (those up to `through`), so that no id is saved for an
        // event that is not. (Commit and fsync journal them with their
        // events.)
        let window: Vec<WindowRow> = match through {
            Some(through) if shared.mode == Durability::Async => {
                let now = SystemTime::now();
                shared
                    .intake
                    .window_between(last_through, through)
                    .into_iter()
                    .map(|(event_id, seq, fingerprint, age)| WindowRow {
                        event_id,
                        seq,
                        fingerprint,
                        accepted_at: now.checked_sub(age).unwrap_or(now),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut applied = if flush {
            std::mem::take(&mut *lock(&shared.applied))
        } else {
            Vec::new()
        };
        applied.sort_unstable();
        applied.dedup();
        let products: Vec<(&str, Stored)> = applied
            .iter()
            .filter_map(|id| Some((&**id, shared.store.stored(id)?)))
            .collect();
        let prune = (flush && last_prune.elapsed() >= RETRY_INTERVAL).then(|| {
            let before = SystemTime::now()
                .checked_sub(shared.window_ttl)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (before, shared.window_len)
        });
        // In async mode the journal is not written: the products bring the
        // next seq along.
        let next_seq =
            (flush && shared.mode == Durability::Async).then(|| shared.intake.next_seq());
        let changed = !products.is_empty()
            || !window.is_empty()
            || through.is_some_and(|t| t != last_through)
            || prune.is_some();

        let started = Instant::now();
        let mut written: Option<Result<usize, rusqlite::Error>> = None;
        let mut answers = Vec::new();
        if !submissions.is_empty() {
            answers = shared.intake.admit(submissions, |admitted| {
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
        }
        // Nothing was admitted (duplicates, a full queue, shutdown), or
        // there were no events: write the rest on its own if there is any.
        if written.is_none() {
            if changed {
                let cycle = Cycle {
                    journal: &[],
                    window: &window,
                    products: &products,
                    applied_through: through,
                    next_seq,
                    prune,
                };
                written = Some(db.write(&cycle).map(|()| 0));
            } else if shared.health.is_failing() && last_probe.elapsed() >= RETRY_INTERVAL {
                last_probe = Instant::now();
                written = Some(db.probe().map(|()| 0));
            }
        }

        match written {
            None => {}
            Some(Ok(journaled)) => {
                shared.health.ok(0);
                let events = match (shared.mode, through) {
                    (Durability::Async, Some(through)) => through.saturating_sub(last_through),
                    (Durability::Async, None) => 0,
                    (Durability::Commit | Durability::Fsync, _) => journaled as Seq,
                };
                committed.events += events;
                if let Some(through) = through {
                    last_through = through;
                }
                if prune.is_some() {
                    last_prune = Instant::now();
                    if db.wal_bytes() > WAL_LIMIT {
                        truncate_wal(db);
                    }
                }
                let storage = &shared.metrics.storage;
                storage.commit_seconds.observe(started.elapsed());
                storage.commit_events.observe_count(journaled as u64);
                storage.record_products_written(products.len() as u64);
            }
            Some(Err(e)) => {
                committed.failures += 1;
                shared.metrics.storage.record_error();
                shared.health.fail(0, describe(&e, db));
                // Not written: the products go back for the next cycle (the
                // window's entries are read again, `last_through` has not
                // moved).
                drop(products);
                lock(&shared.applied).append(&mut applied);
            }
        }
        // Answered only now, so that a 202 is counted in the metrics and a
        // 503 is already in `/readyz` when the client sees it.
        waiting.answer(answers);
        if flush {
            last_flush = Instant::now();
        }

        if finishing {
            let clean = !shared.health.is_failing() && lock(&shared.applied).is_empty();
            final_attempts += 1;
            if clean || final_attempts >= FINAL_ATTEMPTS {
                committed.clean = clean;
                if !clean {
                    log::error!(
                        "storage: the last write failed {final_attempts} times; products applied since the last commit are not in {} (in commit and fsync modes the journal has their events and the next start applies them again)",
                        db.path().display()
                    );
                }
                truncate_wal(db);
                return committed;
            }
            thread::sleep(FINAL_PAUSE);
        }
    }
}

/// Empties the WAL into the database file (see `WAL_LIMIT`); a failure
/// only leaves a longer log.
fn truncate_wal(db: &mut Database) {
    let (bytes, started) = (db.wal_bytes(), Instant::now());
    match db.checkpoint_truncate() {
        Ok(()) => log::debug!(
            "storage: checkpointed a {bytes}-byte WAL in {:.1?}",
            started.elapsed()
        ),
        Err(e) => log::warn!("storage: checkpoint of a {bytes}-byte WAL failed: {e}"),
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
