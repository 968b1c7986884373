//! The committer thread: the only writer of the SQLite file. Each cycle it
//!
//! 1. takes the events posted since the last one (`commit` and `fsync`
//!    modes) from the [`Mailbox`] as one batch: group commit, since a
//!    commit costs about the same for one event or a hundred;
//! 2. numbers them ([`SqliteCommitter::number`]): each is a duplicate or a
//!    conflict of an id in the intake's window, a repeat of an id earlier
//!    in the batch, refused because the queue has no room, or new, with
//!    the next seq;
//! 3. every [`FLUSH_INTERVAL`] also takes what the workers applied
//!    ([`SqliteCommitter::take_flush`]): the watermark `W` first, then the
//!    products the store noted as changed (every event up to `W` noted its
//!    product before `W` passed it: `store.rs`), and in `async` mode the
//!    ids of the events up to `W` (reported by the core as they were
//!    queued);
//! 4. writes all of it in one transaction (`file.rs`, [`Cycle`]);
//! 5. only then queues the new events ([`Intake::enqueue`]: the committer
//!    is the only thread that does in these modes, so the room it counted
//!    is still there), and sends every event's outcome to its front door.
//!
//! A failed write answers the batch 503 `storage_unavailable` (no seq is
//! used up: the next batch numbers from the same place) and puts the
//! products back for the next cycle. It sleeps only when nothing is
//! posted: under load, the events that arrive during one commit form the
//! next batch.
//!
//! Shutdown comes in two steps. The core's `stop_taking` finishes the
//! mailbox: the committer commits what was posted, stops collecting
//! ([`Mailbox::stop`]), and from then on only writes products, every
//! [`FLUSH_INTERVAL`], while the workers drain the queue. `finish` then
//! rings [`StopSignal`]: one last write of everything applied, tried up to
//! [`FINAL_ATTEMPTS`] times.
//!
//! Every event is answered, whatever happens: after the commit, after a
//! failed one, at shutdown (503 `shutting_down`), and if this thread
//! panics (503 `storage_unavailable` from the `Waiting` guard, and the
//! store reports itself unavailable for good).

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::file::{Cycle, JournalRow, SqliteFile, WindowRow};
use crate::backend::health::Health;
use crate::backend::health::{RETRY_INTERVAL, lock};
use crate::backend::interface::Committed;
use crate::backend::stop::StopSignal;
use crate::config::Durability;
use crate::intake::mailbox::{self, Collected, Mailbox, Posted, Submission};
use crate::intake::{Accepted, Intake, Job, Outcome, Refusal, batch};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::store::{Seq, Store, Stored};

/// How often the committer writes the products applied since its last
/// such write (and, in `async` mode, the bound on how long an applied
/// event waits to be written).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The WAL size past which the committer checkpoints itself, holding up
/// writes for that long: only when writes never pause long enough for the
/// checkpointer's work to let the log start over.
pub const WAL_LIMIT: u64 = 256 << 20;

/// How many times the committer yields the CPU to let a batch grow.
const GATHER_ROUNDS: usize = 8;

/// How often, and how far apart, the last write at shutdown is tried.
pub const FINAL_ATTEMPTS: u32 = 5;
const FINAL_PAUSE: Duration = Duration::from_millis(200);

/// What the backend's handle (`Sqlite`, on the front doors' and the
/// shutdown's threads) shares with the committer thread.
pub struct Inbox {
    /// `commit` and `fsync`: events waiting for the next commit.
    pub mailbox: Mailbox<Posted>,
    /// `async`: the ids of queued events, to save with the products that
    /// include them.
    pub reported: Mutex<Vec<WindowRow>>,
    /// Whether writes work.
    pub health: Health,
    /// Rung by `finish`: write what is left and stop.
    pub stop: StopSignal,
}

/// The committer thread's state: the file and the core's parts it reads.
pub struct SqliteCommitter {
    pub file: SqliteFile,
    pub mode: Durability,
    pub inbox: Arc<Inbox>,
    pub intake: Arc<Intake>,
    pub store: Store,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub window_ttl: Duration,
    pub window_len: usize,
}

/// Where the committer is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking posted events.
    Collecting,
    /// Shutdown has begun: no more posts; writing what the workers apply.
    Flushing,
    /// The workers are done: the last write.
    Final,
}

/// A batch, numbered: what each event's outcome will be, and the new
/// events to journal and then queue.
struct Numbered {
    standings: Vec<Standing>,
    fresh: Vec<Job>,
    fingerprints: Vec<u64>,
}

/// Where one event of a batch stands while its commit is pending.
enum Standing {
    /// Answered whatever the commit does: a duplicate of an event committed
    /// earlier, a conflict with one, a full queue.
    Settled(Outcome),
    /// New, with this seq: accepted if the commit succeeds.
    Fresh(Seq),
    /// A repeat of an id earlier in this batch: this answer if the commit
    /// succeeds, `storage_unavailable` if it fails.
    OnCommit(Outcome),
}

/// A repeat of the id of this cycle's event `first`: with the same content
/// a duplicate of it, else a conflict.
fn duplicate_or_conflict(first: Seq, same: bool) -> Outcome {
    if same {
        Ok(Accepted {
            seq: first,
            duplicate: true,
        })
    } else {
        Err(Refusal::IdempotencyConflict { seq: first })
    }
}

/// What the workers applied, taken for the next write.
struct Flush {
    /// The watermark read before the products were taken.
    through: Seq,
    /// Products noted as changed (returned to the store if the write fails).
    changed: Vec<Box<str>>,
    products: Vec<(Box<str>, Stored)>,
    /// `async`: ids of events up to `through`.
    window: Vec<WindowRow>,
    /// `async`: the next seq (the journal carries it in the other modes).
    next_seq: Option<Seq>,
    /// Forget idempotency rows accepted before this, and beyond the count.
    prune: Option<(SystemTime, usize)>,
}

/// What a cycle's write came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Nothing needed writing.
    Nothing,
    /// Committed, with this many new events in the journal.
    Journaled(u64),
    Failed,
}

/// The clock of the committer's periodic work.
struct Timers {
    last_through: Seq,
    last_flush: Instant,
    last_prune: Instant,
    last_probe: Instant,
}

impl SqliteCommitter {
    /// The thread's body. Returns what it committed; a panic inside is
    /// caught, every waiting client answered, and the store marked
    /// unavailable.
    pub fn run(mut self) -> Committed {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.cycles()));
        let committed = outcome.unwrap_or_else(|_| {
            self.inbox.health.fail(
                0,
                "the committer thread panicked (a bug; see the log); restart the service"
                    .to_owned(),
            );
            Committed::default()
        });
        // Normally done when the mailbox finished; after a panic, here.
        self.stop_collecting();
        committed
    }

    fn cycles(&mut self) -> Committed {
        let mut committed = Committed::default();
        let mut timers = Timers {
            last_through: self.progress.through(),
            last_flush: Instant::now(),
            last_prune: Instant::now(),
            last_probe: Instant::now(),
        };
        let mut phase = Phase::Collecting;
        let mut final_attempts = 0;
        loop {
            let (batch, next_phase) = self.next_batch(phase, timers.last_flush);
            // From here on every one of these events gets an answer, even if
            // this cycle panics.
            let mailbox::Split {
                submissions,
                atomic,
                waiting,
            } = mailbox::split(batch);
            let numbered = self.number(submissions, &atomic);
            let flush_due =
                next_phase == Phase::Final || timers.last_flush.elapsed() >= FLUSH_INTERVAL;
            let flush = flush_due.then(|| self.take_flush(&timers));
            let written = self.write(&numbered, flush.as_ref(), &mut timers);
            match written {
                Written::Journaled(events) => committed.events += events,
                Written::Failed => committed.failures += 1,
                Written::Nothing => {}
            }
            let ok = written != Written::Failed;
            if let Some(flush) = flush {
                self.flushed(flush, ok, &mut timers, &mut committed);
                timers.last_flush = Instant::now();
            }
            // Answered only now, so that a 202 is counted in the metrics and
            // a 503 is already in `/readyz` when the client sees it.
            waiting.answer(self.settle(numbered, ok));
            if phase == Phase::Collecting && next_phase != Phase::Collecting {
                self.stop_collecting();
            }
            if next_phase == Phase::Final {
                final_attempts += 1;
                let clean = !self.inbox.health.is_failing() && !self.store.has_changes();
                if clean || final_attempts >= FINAL_ATTEMPTS {
                    committed.clean = clean;
                    self.last_words(clean, final_attempts);
                    return committed;
                }
                thread::sleep(FINAL_PAUSE);
            }
            phase = next_phase;
        }
    }

    /// The next batch of posted events, and the phase after this cycle.
    fn next_batch(&self, phase: Phase, last_flush: Instant) -> (Vec<Posted>, Phase) {
        let next_flush = last_flush + FLUSH_INTERVAL;
        match phase {
            Phase::Collecting => {
                let Collected { batch, finishing } =
                    self.inbox.mailbox.collect(next_flush, GATHER_ROUNDS);
                let next = if finishing {
                    Phase::Flushing
                } else {
                    Phase::Collecting
                };
                (batch, next)
            }
            Phase::Flushing if self.inbox.stop.pause_until(next_flush) => {
                (Vec::new(), Phase::Final)
            }
            Phase::Flushing => (Vec::new(), Phase::Flushing),
            Phase::Final => (Vec::new(), Phase::Final),
        }
    }

    /// This committer takes no more posts; whatever is still in the mailbox
    /// (nothing, once it was finished and collected) is refused.
    fn stop_collecting(&self) {
        let refusal = if self.inbox.health.is_failing() {
            Refusal::StorageUnavailable
        } else {
            Refusal::ShuttingDown
        };
        for posted in self.inbox.mailbox.stop() {
            posted.refuse(refusal);
        }
    }

    /// Numbers a batch (see the module docs, step 2). The window is only
    /// changed by this thread in these modes, so what it says now still
    /// holds when the new events are queued. A batch request (`atomic`) is
    /// numbered whole or refused whole (`intake/batch.rs`).
    fn number(&self, submissions: Vec<Submission>, atomic: &[Range<usize>]) -> Numbered {
        let capacity = self.intake.capacity();
        let mut room = self.intake.room();
        let mut seq = self.intake.next_seq();
        let fingerprints: Vec<u64> = submissions
            .iter()
            .map(|s| {
                s.update
                    .event_id
                    .as_ref()
                    .map_or(0, |_| s.update.fingerprint())
            })
            .collect();
        // Ids new in this cycle: their first seq and fingerprint.
        let mut in_batch: HashMap<Box<str>, (Seq, u64)> = HashMap::new();
        let mut standings = Vec::with_capacity(submissions.len());
        let mut atomic = atomic.iter().peekable();
        let mut i = 0;
        while i < submissions.len() {
            if let Some(range) = atomic.next_if(|r| r.start == i) {
                let events = submissions[range.clone()]
                    .iter()
                    .zip(&fingerprints[range.clone()])
                    .map(|(s, &f)| (s.update.event_id.as_deref(), f));
                let (stood, fresh) = batch::stand(events, seq, |id, fingerprint| {
                    self.intake.look_up(id, fingerprint).or_else(|| {
                        in_batch
                            .get(id)
                            .map(|&(first, seen)| duplicate_or_conflict(first, seen == fingerprint))
                    })
                });
                match batch::refuse_unless_whole(&stood, fresh, room, capacity) {
                    Some(refused) => standings.extend(refused.into_iter().map(Standing::Settled)),
                    None => {
                        for (standing, k) in stood.into_iter().zip(range.clone()) {
                            standings.push(match standing {
                                batch::Standing::Known(outcome)
                                    if self.intake_knows(&submissions[k]) =>
                                {
                                    Standing::Settled(outcome)
                                }
                                batch::Standing::Known(outcome) => Standing::OnCommit(outcome),
                                batch::Standing::SameAs(first) => {
                                    Standing::OnCommit(duplicate_or_conflict(first, true))
                                }
                                batch::Standing::Conflict(first) => {
                                    Standing::OnCommit(duplicate_or_conflict(first, false))
                                }
                                batch::Standing::Fresh(new) => {
                                    if let Some(event_id) = &submissions[k].update.event_id {
                                        in_batch.insert(event_id.clone(), (new, fingerprints[k]));
                                    }
                                    Standing::Fresh(new)
                                }
                            });
                        }
                        room -= fresh;
                        seq += fresh as Seq;
                    }
                }
                i = range.end;
                continue;
            }
            let (update, fingerprint) = (&submissions[i].update, fingerprints[i]);
            i += 1;
            if let Some(event_id) = &update.event_id {
                if let Some(seen) = self.intake.look_up(event_id, fingerprint) {
                    standings.push(Standing::Settled(seen));
                    continue;
                }
                if let Some(&(first, seen)) = in_batch.get(event_id) {
                    standings.push(Standing::OnCommit(duplicate_or_conflict(
                        first,
                        seen == fingerprint,
                    )));
                    continue;
                }
            }
            if room == 0 {
                standings.push(Standing::Settled(Err(Refusal::QueueFull { capacity })));
                continue;
            }
            room -= 1;
            if let Some(event_id) = &update.event_id {
                in_batch.insert(event_id.clone(), (seq, fingerprint));
            }
            standings.push(Standing::Fresh(seq));
            seq += 1;
        }
        let mut numbered = Numbered {
            standings,
            fresh: Vec::with_capacity(submissions.len()),
            fingerprints: Vec::with_capacity(submissions.len()),
        };
        for ((submission, fingerprint), standing) in submissions
            .into_iter()
            .zip(fingerprints)
            .zip(&numbered.standings)
        {
            if let Standing::Fresh(seq) = *standing {
                numbered.fingerprints.push(fingerprint);
                numbered.fresh.push(Job {
                    seq,
                    update: submission.update,
                    request_id: submission.request_id,
                    accepted_at: submission.accepted_at,
                });
            }
        }
        numbered
    }

    /// Whether the window (not this cycle) knows `submission`'s id: its
    /// answer stands whatever this cycle's commit does.
    fn intake_knows(&self, submission: &Submission) -> bool {
        let update = &submission.update;
        update
            .event_id
            .as_ref()
            .is_some_and(|id| self.intake.look_up(id, update.fingerprint()).is_some())
    }

    /// Takes what the workers applied (see the module docs, step 3).
    fn take_flush(&self, timers: &Timers) -> Flush {
        // The watermark before the products: every event up to it has noted
        // its product already.
        let through = self.progress.through();
        let changed = self.store.take_changed();
        // Every id taken is a product in the store (the store notes an id
        // only once its record exists), so none is dropped here.
        let products = changed
            .iter()
            .filter_map(|id| Some((id.clone(), self.store.stored(id)?)))
            .collect();
        let window = if self.mode == Durability::Async {
            let mut reported = lock(&self.inbox.reported);
            let (covered, later) = std::mem::take(&mut *reported)
                .into_iter()
                .partition(|row| row.seq <= through);
            *reported = later;
            covered
        } else {
            Vec::new()
        };
        let prune = (timers.last_prune.elapsed() >= RETRY_INTERVAL).then(|| {
            let before = SystemTime::now()
                .checked_sub(self.window_ttl)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (before, self.window_len)
        });
        Flush {
            through,
            changed,
            products,
            window,
            next_seq: (self.mode == Durability::Async).then(|| self.intake.next_seq()),
            prune,
        }
    }

    /// Writes the batch's new events and the flush in one transaction, if
    /// there is anything to write (else probes a failing file now and
    /// then, to learn when writes work again).
    fn write(
        &mut self,
        numbered: &Numbered,
        flush: Option<&Flush>,
        timers: &mut Timers,
    ) -> Written {
        let rows: Vec<JournalRow<'_>> = numbered
            .fresh
            .iter()
            .zip(&numbered.fingerprints)
            .map(|(job, &fingerprint)| JournalRow {
                seq: job.seq,
                update: &job.update,
                fingerprint,
            })
            .collect();
        let products: Vec<(&str, Stored)> = flush
            .map(|f| {
                f.products
                    .iter()
                    .map(|(id, s)| (&**id, s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let flush_changes = flush.is_some_and(|f| {
            !f.products.is_empty()
                || !f.window.is_empty()
                || f.through != timers.last_through
                || f.prune.is_some()
        });
        if rows.is_empty() && !flush_changes {
            if self.inbox.health.is_failing() && timers.last_probe.elapsed() >= RETRY_INTERVAL {
                timers.last_probe = Instant::now();
                match self.file.probe() {
                    Ok(()) => self.inbox.health.ok(0),
                    Err(e) => self.failed(&e),
                }
            }
            return Written::Nothing;
        }
        let cycle = Cycle {
            journal: &rows,
            window: flush.map_or(&[], |f| &f.window),
            products: &products,
            applied_through: flush.map(|f| f.through),
            next_seq: rows
                .last()
                .map(|row| row.seq + 1)
                .or(flush.and_then(|f| f.next_seq)),
            prune: flush.and_then(|f| f.prune),
        };
        let started = Instant::now();
        match self.file.write(&cycle) {
            Ok(()) => {
                self.inbox.health.ok(0);
                let storage = &self.metrics.storage;
                storage.commit_seconds.observe(started.elapsed());
                storage.commit_events.observe_count(rows.len() as u64);
                storage.record_products_written(products.len() as u64);
                Written::Journaled(rows.len() as u64)
            }
            Err(e) => {
                self.failed(&e);
                Written::Failed
            }
        }
    }

    /// After a flush was (or was not) written: moves the watermark of what
    /// is saved, or gives the products and ids back for the next cycle.
    fn flushed(
        &mut self,
        flush: Flush,
        written: bool,
        timers: &mut Timers,
        committed: &mut Committed,
    ) {
        if !written {
            self.store.put_back_changed(flush.changed);
            lock(&self.inbox.reported).extend(flush.window);
            return;
        }
        if self.mode == Durability::Async {
            committed.events += flush.through.saturating_sub(timers.last_through);
        }
        timers.last_through = flush.through;
        if flush.prune.is_some() {
            timers.last_prune = Instant::now();
            if self.file.wal_bytes() > WAL_LIMIT {
                self.truncate_wal();
            }
        }
    }

    /// Each event's outcome (see [`Standing`]); on success, the new events
    /// are queued first.
    fn settle(&self, numbered: Numbered, committed: bool) -> Vec<Outcome> {
        if committed && let Err((e, seq)) = self.intake.enqueue_all(numbered.fresh) {
            // Only past shutdown's deadline (the intake closed while this
            // batch was at the disk): the events are journaled.
            log::error!(
                "storage: seq={seq} and the events after it in its batch are committed but could not be queued ({e:?}); the next start applies them"
            );
        }
        numbered
            .standings
            .into_iter()
            .map(|standing| match standing {
                Standing::Settled(outcome) => outcome,
                Standing::OnCommit(outcome) if committed => outcome,
                Standing::Fresh(seq) if committed => Ok(Accepted {
                    seq,
                    duplicate: false,
                }),
                Standing::OnCommit(_) | Standing::Fresh(_) => Err(Refusal::StorageUnavailable),
            })
            .collect()
    }

    fn failed(&self, e: &rusqlite::Error) {
        self.metrics.storage.record_error();
        let what = if super::file::is_full(e) {
            "the disk is full"
        } else {
            "a write failed"
        };
        let reason = format!("{what} writing {}: {e}", self.file.path().display());
        self.inbox.health.fail(0, reason);
    }

    /// The end: the WAL emptied into the file, and a word if not everything
    /// could be written.
    fn last_words(&mut self, clean: bool, attempts: u32) {
        if !clean {
            log::error!(
                "storage: the last write failed {attempts} times; products applied since the last commit are not in {} (in commit and fsync modes the journal has their events and the next start applies them again)",
                self.file.path().display()
            );
        }
        self.truncate_wal();
    }

    /// Empties the WAL into the database file (see `WAL_LIMIT`); a failure
    /// only leaves a longer log.
    fn truncate_wal(&mut self) {
        let (bytes, started) = (self.file.wal_bytes(), Instant::now());
        match self.file.checkpoint_truncate() {
            Ok(()) => log::debug!(
                "storage: checkpointed a {bytes}-byte WAL in {:.1?}",
                started.elapsed()
            ),
            Err(e) => log::warn!("storage: checkpoint of a {bytes}-byte WAL failed: {e}"),
        }
    }
}
