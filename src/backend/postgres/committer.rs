//! The PostgreSQL committer threads (`DB_POOL_SIZE` of them, each with its
//! connection): each takes the events posted to the [`Mailbox`] as one
//! batch, commits it ([`PgSession::accept`], which gives the new events
//! their seqs), hands the committed events to this instance's tailer, and
//! sends every event's outcome to its front door. With two, one batch is on
//! its way to the database (or waiting for the seq counter) while the other
//! commits, so the counter is never idle waiting for a round trip. Once a
//! second the first committer also records this instance in `instances`
//! and prunes old rows (the housekeeping).
//!
//! The connection is dropped when an error shows it lost
//! (`session::is_lost`: closed, no answer, a `FATAL` from the server) and
//! made again at most once per [`RETRY_INTERVAL`]; an error the server
//! answered otherwise (a timeout, a constraint) leaves it in use. Each
//! committer is one part of [`Health`]: while its connection is down and
//! another committer's works, it stands by (`Mailbox::wait_finishing`)
//! until its next attempt and takes no batch, and one it had already
//! taken goes back to the mailbox. A committer that fails or stops rouses
//! the ones standing by, so that when no connection works they take (and
//! refuse with 503 `storage_unavailable`) what was posted just before;
//! from then on the backend refuses events at once, and `/readyz` answers
//! 503 with the reason. A database that takes a commit and never answers is
//! the watchdog's (`watchdog.rs`): it answers that batch 503 after
//! [`COMMIT_PATIENCE`] and fails the committer's part of the health.
//!
//! Every event is answered, whatever happens: after the commit, after a
//! failed one (503 `storage_unavailable`: the events may or may not have
//! been committed, and a client that retries with its `event_id` gets
//! `duplicate` if they were), at shutdown (503 `shutting_down`), and if
//! this thread panics (the [`Waiting`] guard).

use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::handover::{Batch, Handed};
use super::session::{self, CONNECT_TIMEOUT, PgSession};
use crate::backend::health::Health;
use crate::backend::health::{RETRY_INTERVAL, lock};
use crate::backend::interface::Committed;
use crate::config::DatabaseUrl;
use crate::intake::mailbox::{self, Collected, Mailbox, Posted, Submission, Waiting};
use crate::intake::{Intake, Outcome, Refusal};
use crate::metrics::Metrics;
use crate::progress::Progress;

/// How many times the committer yields the CPU to let a batch grow.
const GATHER_ROUNDS: usize = 8;

/// How long the database may leave a commit unanswered before it counts
/// as unreachable (a frozen server, a network that drops packets without
/// a reset: the connection stays open and nothing fails by itself).
pub const COMMIT_PATIENCE: Duration = Duration::from_secs(3);

/// The same for the housekeeping, whose deletes may legitimately run
/// longer after a backlog: longer than the session's `statement_timeout`
/// (10 s), by which a working server has ended them one way or the other.
const HOUSEKEEPING_PATIENCE: Duration = Duration::from_secs(12);

/// What one committer has at the database right now (a batch's commit,
/// or the housekeeping), since when, and the batch's clients unless the
/// watchdog has answered them already.
#[derive(Default)]
pub struct InFlight(Mutex<Option<Busy>>);

struct Busy {
    since: Instant,
    /// How long it may take before the watchdog gives up on it.
    patience: Duration,
    waiting: Option<Waiting>,
    /// The watchdog has given up on it (once).
    given_up: bool,
}

impl InFlight {
    /// The committer: a statement goes to the database now, for the
    /// clients in `waiting` (none for the housekeeping), to be answered
    /// within `patience`.
    fn begin(&self, waiting: Option<Waiting>, patience: Duration) {
        *lock(&self.0) = Some(Busy {
            since: Instant::now(),
            patience,
            waiting,
            given_up: false,
        });
    }

    /// The committer: the database answered. The clients, to answer with
    /// the outcome, or `None` if the watchdog answered them meanwhile.
    fn end(&self) -> Option<Waiting> {
        lock(&self.0).take().and_then(|busy| busy.waiting)
    }

    /// The watchdog: if the statement has waited its patience, gives up
    /// on it (once): calls `give_up` with how long it has been, and
    /// returns its clients. Under the lock, so that `give_up` (which fails
    /// the committer's part of the health) never runs after `end`, whose
    /// caller then marks the part working.
    pub fn overdue(&self, give_up: impl FnOnce(Duration)) -> Option<Waiting> {
        let mut slot = lock(&self.0);
        let busy = slot.as_mut()?;
        let waited = busy.since.elapsed();
        if waited < busy.patience || busy.given_up {
            return None;
        }
        busy.given_up = true;
        give_up(waited);
        busy.waiting.take()
    }

    /// Whether the watchdog has given up on what is at the database.
    pub fn given_up(&self) -> bool {
        lock(&self.0).as_ref().is_some_and(|busy| busy.given_up)
    }
}

/// What the committers share with each other, the watchdog and the
/// backend's handle.
pub struct CommitPool {
    pub url: DatabaseUrl,
    /// This instance's name in `journal.accepted_by` and `instances`.
    pub instance: String,
    pub intake: Arc<Intake>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub window_ttl: Duration,
    pub window_len: usize,
    pub mailbox: Mailbox<Posted>,
    /// Whether commits work: one part per committer.
    pub health: Health,
    /// Events this instance committed (answered 202), and the highest seq
    /// among them: shutdown waits for the tailer to reach it.
    pub accepted: AtomicU64,
    pub last_committed: AtomicU64,
    /// Where committed batches go to this instance's tailer.
    pub handed: Arc<Handed>,
    /// Each committer's statement while the database has it (by part).
    pub in_flight: Vec<InFlight>,
}

impl CommitPool {
    /// Committer `part` cannot commit: its part of the health fails, and
    /// the committers standing by look again (this may have been the last
    /// that could).
    pub fn failed(&self, part: usize, reason: String) {
        self.health.fail(part, reason);
        self.mailbox.rouse();
    }
}

/// One committer thread: its part number (0 to `DB_POOL_SIZE - 1`;
/// committer 0 also does the housekeeping) and its connection, if it has
/// one.
pub struct PgCommitter {
    pub pool: Arc<CommitPool>,
    pub part: usize,
    pub session: Option<PgSession>,
    last_connect: Instant,
    /// `None`: due now (at the start, and after a reconnection, so that
    /// this instance is recorded at once).
    last_housekeeping: Option<Instant>,
    committed: Committed,
}

impl PgCommitter {
    pub fn new(pool: Arc<CommitPool>, part: usize, session: PgSession) -> PgCommitter {
        PgCommitter {
            pool,
            part,
            session: Some(session),
            last_connect: Instant::now(),
            last_housekeeping: None,
            committed: Committed::default(),
        }
    }

    /// The thread's body. A panic inside is caught, every waiting client
    /// answered, and this committer's part of the health reported failing
    /// for good.
    pub fn run(mut self) -> Committed {
        let (pool, part) = (Arc::clone(&self.pool), self.part);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.cycles()));
        let committed = outcome.unwrap_or_else(|_| {
            // The batch the panic interrupted, if it was at the database.
            drop(pool.in_flight[part].end());
            log::error!(
                "storage: committer-{part} panicked (a bug; see the panic above) and commits no more; restart the service"
            );
            pool.failed(
                part,
                format!("committer-{part} panicked (a bug; see the log); restart the service"),
            );
            Committed::default()
        });
        let refusal = if pool.health.is_failing() {
            Refusal::StorageUnavailable
        } else {
            Refusal::ShuttingDown
        };
        for posted in pool.mailbox.stop() {
            posted.refuse(refusal);
        }
        committed
    }

    fn cycles(&mut self) -> Committed {
        loop {
            if self.session.is_none() {
                match self.stand_by() {
                    StandBy::Shutdown => {
                        self.committed.clean = !self.pool.health.is_failing();
                        return self.committed;
                    }
                    StandBy::LookAgain => continue,
                    StandBy::Collect => {}
                }
            }
            let Collected { batch, finishing } = self
                .pool
                .mailbox
                .collect(Instant::now() + RETRY_INTERVAL, GATHER_ROUNDS);
            // Taken while no connection worked, and one works again
            // (another committer's): it is theirs to commit.
            if self.session.is_none()
                && !finishing
                && !batch.is_empty()
                && !self.pool.health.is_failing()
            {
                self.pool.mailbox.put_back(batch);
                continue;
            }
            self.commit(batch);
            if self.session.is_none() {
                self.reconnect();
            }
            self.housekeep(finishing);
            if finishing {
                self.committed.clean = !self.pool.health.is_failing();
                return self.committed;
            }
        }
    }

    /// Without a connection, stands by while another committer can commit
    /// (taking a batch now could only refuse it) until its next attempt to
    /// connect. While no connection works it collects instead, to refuse
    /// what is posted. (The rousings are read before the look at the
    /// health, so that a failure in between, which rouses, ends the wait at
    /// once.)
    fn stand_by(&mut self) -> StandBy {
        let pool = Arc::clone(&self.pool);
        let seen = pool.mailbox.rousings();
        if pool.health.is_failing() {
            return StandBy::Collect;
        }
        if pool
            .mailbox
            .wait_finishing(self.last_connect + RETRY_INTERVAL, seen)
        {
            return StandBy::Shutdown;
        }
        self.reconnect();
        StandBy::LookAgain
    }

    /// Commits one batch and answers every event of it.
    fn commit(&mut self, batch: Vec<Posted>) {
        let pool = Arc::clone(&self.pool);
        let mailbox::Split {
            submissions,
            atomic,
            waiting,
        } = mailbox::split(batch);
        let refuse = |refusal: Refusal| submissions.iter().map(|_| Err(refusal)).collect();
        let (outcomes, waiting) = if submissions.is_empty() {
            (Vec::new(), Some(waiting))
        } else if pool.intake.is_closed() {
            (refuse(Refusal::ShuttingDown), Some(waiting))
        } else if self.session.is_some() {
            self.accept(&submissions, &atomic, waiting)
        } else {
            (refuse(Refusal::StorageUnavailable), Some(waiting))
        };
        // Answered only now, so that a 503 is already in `/readyz` when
        // the client sees it. `None`: the watchdog answered them.
        if let Some(waiting) = waiting {
            waiting.answer(outcomes);
        }
    }

    /// The batch at the database, watched by the watchdog. Returns the
    /// outcomes and the clients to send them to (`None` if the commit
    /// outlasted [`COMMIT_PATIENCE`] and the watchdog answered them 503:
    /// what they get when a commit fails, committed or not; a retry with
    /// the event id tells).
    fn accept(
        &mut self,
        submissions: &[Submission],
        atomic: &[Range<usize>],
        waiting: Waiting,
    ) -> (Vec<Outcome>, Option<Waiting>) {
        let pool = Arc::clone(&self.pool);
        let part = self.part;
        let Some(session) = self.session.as_mut() else {
            let refused = submissions.iter().map(|_| Err(Refusal::StorageUnavailable));
            return (refused.collect(), Some(waiting));
        };
        let started = Instant::now();
        let window = (pool.window_len > 0).then_some(pool.window_ttl);
        pool.in_flight[part].begin(Some(waiting), COMMIT_PATIENCE);
        let outcome = session.accept(submissions, atomic, window, &pool.instance);
        let waiting = pool.in_flight[part].end();
        match outcome {
            Ok(outcomes) => {
                pool.health.ok(part);
                self.committed_batch(submissions, &outcomes, waiting.is_some(), started);
                (outcomes, waiting)
            }
            Err(e) => {
                // A lost connection is made again; an error the server
                // answered (a timeout, a constraint) leaves it usable.
                let lost = session::is_lost(&e);
                let e = session.error(&e);
                self.committed.failures += 1;
                pool.metrics.storage.record_error();
                pool.failed(part, format!("a commit failed: {e}"));
                if lost {
                    self.session = None;
                }
                let refused = submissions.iter().map(|_| Err(Refusal::StorageUnavailable));
                (refused.collect(), waiting)
            }
        }
    }

    /// Counts a committed batch, hands its new events to the tailer, and
    /// says so in the log if its clients had been answered 503 meanwhile.
    fn committed_batch(
        &mut self,
        submissions: &[Submission],
        outcomes: &[Outcome],
        answering: bool,
        started: Instant,
    ) {
        let pool = &self.pool;
        let fresh = || {
            outcomes
                .iter()
                .filter_map(|o| o.ok())
                .filter(|a| !a.duplicate)
        };
        let new = fresh().count() as u64;
        self.committed.events += new;
        if let Some(last) = outcomes.iter().filter_map(|o| o.ok()).map(|a| a.seq).max() {
            pool.last_committed.fetch_max(last, Ordering::AcqRel);
        }
        if answering {
            pool.accepted.fetch_add(new, Ordering::Relaxed);
        } else if new > 0 {
            let seqs = fresh().map(|a| a.seq);
            log::warn!(
                "storage: a commit given up on after {COMMIT_PATIENCE:?} went through after all, {:.1?} after it started: {new} events, seqs {} to {}, are committed and applied although their clients were answered 503 (a retry with the same event_id is told it is a duplicate)",
                started.elapsed(),
                seqs.clone().min().unwrap_or_default(),
                seqs.max().unwrap_or_default()
            );
        }
        hand_over(pool, submissions, outcomes);
        let storage = &pool.metrics.storage;
        storage.commit_seconds.observe(started.elapsed());
        storage.commit_events.observe_count(new);
    }

    /// Connects again if the last attempt is [`RETRY_INTERVAL`] old. A new
    /// connection (its session set up) counts as working.
    fn reconnect(&mut self) {
        if self.last_connect.elapsed() < RETRY_INTERVAL {
            return;
        }
        self.last_connect = Instant::now();
        self.last_housekeeping = None;
        let (pool, part) = (&self.pool, self.part);
        match PgSession::connect(&pool.url, CONNECT_TIMEOUT, &format!("committer-{part}")) {
            Ok(session) => {
                log::info!("storage: committer-{part} connected again to {}", pool.url);
                pool.health.ok(part);
                self.session = Some(session);
            }
            Err(e) => pool.failed(part, e.to_string()),
        }
    }

    /// Committer 0, once a [`RETRY_INTERVAL`] (and every committer at
    /// shutdown): records this instance and prunes old rows. Watched like
    /// a commit: a batch posted meanwhile waits for it.
    fn housekeep(&mut self, finishing: bool) {
        let due = self.part == 0
            && self
                .last_housekeeping
                .is_none_or(|at| at.elapsed() >= RETRY_INTERVAL);
        if !(due || finishing) {
            return;
        }
        let (pool, part) = (Arc::clone(&self.pool), self.part);
        let Some(session) = self.session.as_mut() else {
            return;
        };
        self.last_housekeeping = Some(Instant::now());
        pool.in_flight[part].begin(None, HOUSEKEEPING_PATIENCE);
        let done = session.housekeeping(
            &pool.instance,
            pool.progress.through(),
            pool.window_ttl,
            pool.window_len,
        );
        pool.in_flight[part].end();
        match done {
            Ok(()) => pool.health.ok(part),
            Err(e) => {
                let lost = session::is_lost(&e);
                let e = session.error(&e);
                self.committed.failures += 1;
                pool.metrics.storage.record_error();
                pool.failed(part, e.to_string());
                if lost {
                    self.session = None;
                }
            }
        }
    }
}

/// What a committer without a connection does next.
enum StandBy {
    /// Shutdown began while it stood by.
    Shutdown,
    /// It tried to connect: look at the connection again.
    LookAgain,
    /// No connection works anywhere: collect, to refuse what is posted.
    Collect,
}

/// Gives the tailer this batch's new events, in seq order (they have
/// consecutive seqs: one commit numbers them together).
fn hand_over(pool: &CommitPool, submissions: &[Submission], outcomes: &[Outcome]) {
    let mut first = None;
    let mut events = Vec::new();
    for (submission, outcome) in submissions.iter().zip(outcomes) {
        if let Ok(accepted) = outcome
            && !accepted.duplicate
        {
            first.get_or_insert(accepted.seq);
            let mut update = submission.update.clone();
            // The database has told duplicates apart (as the journal's
            // rows, which carry no event id to the tailer).
            update.event_id = None;
            events.push((update, submission.request_id.clone()));
        }
    }
    if let Some(first) = first {
        pool.handed.hand(Batch { first, events });
    }
}
