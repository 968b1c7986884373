//! The PostgreSQL committer threads (`DB_POOL_SIZE` of them, each with its
//! connection): each takes the events that connection threads have posted
//! to the [`Mailbox`] as one batch, commits it (`Database::accept`), and
//! answers every client of the batch. With two, one batch is on its way to the
//! database (or waiting for the seq counter) while the other commits, so
//! the counter is never idle waiting for a round trip. Once a second the
//! first committer also records this instance in `instances` and prunes
//! old rows.
//!
//! The connection is dropped when an error shows it lost
//! (`database::is_lost`: closed, no answer, a `FATAL` from the server) and
//! made again at most once per [`RETRY_INTERVAL`]; an error the server
//! answered otherwise (a timeout, a constraint) leaves it in use. Each
//! committer is one part of [`Health`]: while its connection is down and
//! another committer's works, it stands by (`Mailbox::wait_finishing`)
//! until its next attempt and takes no batch, and one it had already
//! taken goes back to the mailbox. A committer that fails or stops rouses
//! the ones standing by, so that when no connection works they take (and
//! refuse with 503 `storage_unavailable`) what was posted just before;
//! from then on `POST /events` answers 503 at once without posting (see
//! `Durable::submit_with_reply`), and `/readyz` 503 with the reason. A
//! database that takes a commit and never answers is the watchdog's
//! ([`watch`], its own thread): it answers that batch 503 after
//! [`COMMIT_PATIENCE`] and fails the committer's part of the health.
//!
//! Each event's client is answered from here (its `Reply` writes the HTTP
//! answer on this thread; the connection's thread meanwhile reads the
//! connection's next request), whatever happens: after the commit, after a
//! failed one (503 `storage_unavailable`: the events may or may not have
//! been committed, and a client that retries with its `event_id` gets
//! `duplicate` if they were), at shutdown (503 `shutting_down`), and if
//! this thread panics (the `Waiting` guard).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::commit::{self, Answer, Health, Pending, Waiting, lock};
use super::super::handoff::{Collected, Mailbox};
use super::super::url::DatabaseUrl;
use super::super::{Committed, RETRY_INTERVAL};
use super::database::{self, Database};
use super::stop::Stop;
use super::tailer::{Batch, Handed};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::queue::{Intake, Submission, SubmitError};

/// How many times the committer yields the CPU to let a batch grow.
const GATHER_ROUNDS: usize = 8;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the database may leave a commit unanswered before it counts
/// as unreachable (a frozen server, a network that drops packets without
/// a reset: the connection stays open and nothing fails by itself).
const COMMIT_PATIENCE: Duration = Duration::from_secs(3);

/// The same for the housekeeping, whose deletes may legitimately run
/// longer after a backlog: longer than the session's `statement_timeout`
/// (10 s), by which a working server has ended them one way or the other.
const HOUSEKEEPING_PATIENCE: Duration = Duration::from_secs(12);

/// How often the watchdog looks at the commits in flight.
const WATCH_EVERY: Duration = Duration::from_millis(250);

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
    fn overdue(&self, give_up: impl FnOnce(Duration)) -> Option<Waiting> {
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
    fn given_up(&self) -> bool {
        lock(&self.0).as_ref().is_some_and(|busy| busy.given_up)
    }
}

/// What the committer shares with the connection threads.
pub struct Shared {
    pub url: DatabaseUrl,
    /// This instance's name in `journal.accepted_by` and `instances`.
    pub instance: String,
    pub intake: Arc<Intake>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub window_ttl: Duration,
    pub window_len: usize,
    pub mailbox: Mailbox<Pending>,
    /// Whether commits work.
    pub health: Health,
    /// Events this instance committed (answered 202), and the highest seq
    /// among them: shutdown waits for the tailer to reach it.
    pub accepted: AtomicU64,
    pub last_committed: AtomicU64,
    /// Where committed batches go to this instance's tailer.
    pub handed: Arc<Handed>,
    /// Each committer's batch while the database has it (by part).
    pub in_flight: Vec<InFlight>,
}

/// Gives the tailer this batch's new events, in seq order (they have
/// consecutive seqs: one commit numbers them together).
fn hand_over(shared: &Shared, submissions: &[Submission], answers: &[Answer]) {
    let mut first = None;
    let mut events = Vec::new();
    for (submission, answer) in submissions.iter().zip(answers) {
        if let Ok(submitted) = answer
            && !submitted.duplicate
        {
            first.get_or_insert(submitted.seq);
            let mut update = submission.update.clone();
            // The database has told duplicates apart (as the journal's
            // rows, which carry no event id to the tailer).
            update.event_id = None;
            events.push((update, submission.request_id.clone()));
        }
    }
    if let Some(first) = first {
        shared.handed.hand(Batch { first, events });
    }
}

/// The body of committer `part` (0 to `DB_POOL_SIZE - 1`; committer 0
/// also does the housekeeping). A panic inside is caught, every waiting
/// thread answered, and this committer's part of the health reported
/// failing for good.
pub fn run(shared: &Shared, db: Database, part: usize) -> Committed {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| cycles(shared, Some(db), part)));
    let committed = outcome.unwrap_or_else(|_| {
        // The batch the panic interrupted, if it was at the database.
        drop(shared.in_flight[part].end());
        log::error!(
            "storage: committer-{part} panicked (a bug; see the panic above) and commits no more; restart the service"
        );
        failed(
            shared,
            part,
            format!("committer-{part} panicked (a bug; see the log); restart the service"),
        );
        Committed::default()
    });
    let answer = if shared.health.is_failing() {
        SubmitError::StorageUnavailable
    } else {
        SubmitError::ShuttingDown
    };
    for pending in shared.mailbox.stop() {
        commit::answer(pending.reply, Err(answer));
    }
    committed
}

/// Committer `part` cannot commit: its part of the health fails, and the
/// committers standing by look again (this may have been the last that
/// could).
fn failed(shared: &Shared, part: usize, reason: String) {
    shared.health.fail(part, reason);
    shared.mailbox.rouse();
}

/// Connects again if the last attempt is `RETRY_INTERVAL` old. A new
/// connection (its session set up) counts as working.
fn reconnect(shared: &Shared, part: usize, last_connect: &mut Instant) -> Option<Database> {
    if last_connect.elapsed() < RETRY_INTERVAL {
        return None;
    }
    *last_connect = Instant::now();
    match Database::connect(&shared.url, CONNECT_TIMEOUT, &format!("committer-{part}")) {
        Ok(connection) => {
            log::info!(
                "storage: committer-{part} connected again to {}",
                shared.url
            );
            shared.health.ok(part);
            Some(connection)
        }
        Err(e) => {
            failed(shared, part, e.to_string());
            None
        }
    }
}

fn cycles(shared: &Shared, mut db: Option<Database>, part: usize) -> Committed {
    let housekeeper = part == 0;
    let mut committed = Committed::default();
    let mut last_connect = Instant::now();
    // The first housekeeping right away: it records this instance.
    let mut last_housekeeping: Option<Instant> = None;
    loop {
        // Without a connection, this committer stands by while another
        // can commit: taking a batch now could only refuse it. The
        // rousings are read before the look at the health, so that a
        // failure in between (which rouses) ends the wait at once.
        if db.is_none() {
            let seen = shared.mailbox.rousings();
            if !shared.health.is_failing() {
                if shared
                    .mailbox
                    .wait_finishing(last_connect + RETRY_INTERVAL, seen)
                {
                    committed.clean = !shared.health.is_failing();
                    return committed;
                }
                db = reconnect(shared, part, &mut last_connect);
                last_housekeeping = None;
                continue;
            }
        }
        let Collected { batch, finishing } = shared
            .mailbox
            .collect(Instant::now() + RETRY_INTERVAL, GATHER_ROUNDS);
        // Taken while no connection worked, and one works again (another
        // committer's): it is theirs to commit.
        if db.is_none() && !finishing && !batch.is_empty() && !shared.health.is_failing() {
            shared.mailbox.put_back(batch);
            continue;
        }
        let (submissions, replies): (Vec<Submission>, Vec<_>) =
            batch.into_iter().map(|p| (p.submission, p.reply)).unzip();
        // From here on every one of these threads gets an answer, even if
        // this cycle panics.
        let mut waiting = Some(Waiting(replies));
        let refuse = |e: SubmitError| submissions.iter().map(|_| Err(e)).collect();

        let answers = if submissions.is_empty() {
            Vec::new()
        } else if shared.intake.is_closed() {
            refuse(SubmitError::ShuttingDown)
        } else if let Some(connection) = db.as_mut() {
            let started = Instant::now();
            let window = (shared.window_len > 0).then_some(shared.window_ttl);
            let in_flight = &shared.in_flight[part];
            in_flight.begin(waiting.take(), COMMIT_PATIENCE);
            let outcome = connection.accept(&submissions, window, &shared.instance);
            // `None`: the commit outlasted COMMIT_PATIENCE, and the watchdog
            // has answered its clients 503 (what they get when a commit
            // fails: committed or not, a retry with the event id tells).
            waiting = in_flight.end();
            match outcome {
                Ok(answers) => {
                    shared.health.ok(part);
                    let new = answers
                        .iter()
                        .filter(|a| a.is_ok_and(|s| !s.duplicate))
                        .count();
                    committed.events += new as u64;
                    if let Some(last) = answers.iter().filter_map(|a| a.ok()).map(|s| s.seq).max() {
                        shared.last_committed.fetch_max(last, Ordering::AcqRel);
                    }
                    if waiting.is_some() {
                        shared.accepted.fetch_add(new as u64, Ordering::Relaxed);
                    } else if new > 0 {
                        let seqs = answers.iter().filter_map(|a| a.ok()).map(|s| s.seq);
                        log::warn!(
                            "storage: a commit given up on after {COMMIT_PATIENCE:?} went through after all, {:.1?} after it started: {new} events, seqs {} to {}, are committed and applied although their clients were answered 503 (a retry with the same event_id is told it is a duplicate)",
                            started.elapsed(),
                            seqs.clone().min().unwrap_or_default(),
                            seqs.max().unwrap_or_default()
                        );
                    }
                    hand_over(shared, &submissions, &answers);
                    let storage = &shared.metrics.storage;
                    storage.commit_seconds.observe(started.elapsed());
                    storage.commit_events.observe_count(new as u64);
                    answers
                }
                Err(e) => {
                    // A lost connection is made again; an error the
                    // server answered (a timeout, a constraint) leaves it
                    // usable.
                    let lost = database::is_lost(&e);
                    let e = connection.error(&e);
                    committed.failures += 1;
                    shared.metrics.storage.record_error();
                    failed(shared, part, format!("a commit failed: {e}"));
                    if lost {
                        db = None;
                    }
                    refuse(SubmitError::StorageUnavailable)
                }
            }
        } else {
            refuse(SubmitError::StorageUnavailable)
        };
        // Answered only now, so that a 503 is already in `/readyz` when
        // the client sees it.
        if let Some(waiting) = waiting {
            waiting.answer(answers);
        }

        if db.is_none() {
            db = reconnect(shared, part, &mut last_connect);
            last_housekeeping = None;
        }
        // One committer of the pool does the housekeeping; the others look
        // at their connections only when they have events.
        let due = housekeeper && last_housekeeping.is_none_or(|at| at.elapsed() >= RETRY_INTERVAL);
        if let Some(connection) = db.as_mut()
            && (due || finishing)
        {
            last_housekeeping = Some(Instant::now());
            // Watched like a commit: a batch posted meanwhile waits for it.
            let in_flight = &shared.in_flight[part];
            in_flight.begin(None, HOUSEKEEPING_PATIENCE);
            let done = connection.housekeeping(
                &shared.instance,
                shared.progress.through(),
                shared.window_ttl,
                shared.window_len,
            );
            in_flight.end();
            match done {
                Ok(()) => shared.health.ok(part),
                Err(e) => {
                    let lost = database::is_lost(&e);
                    let e = connection.error(&e);
                    committed.failures += 1;
                    shared.metrics.storage.record_error();
                    failed(shared, part, e.to_string());
                    if lost {
                        db = None;
                    }
                }
            }
        }

        if finishing {
            committed.clean = !shared.health.is_failing();
            return committed;
        }
    }
}

/// The watchdog thread's body: a commit that the database leaves
/// unanswered for [`COMMIT_PATIENCE`] (the housekeeping: for
/// [`HOUSEKEEPING_PATIENCE`]) fails its committer's part of the health,
/// and its clients are answered 503 `storage_unavailable` (they may retry
/// with their event ids: the commit may still succeed). Once
/// every part fails, what is posted is refused too, and later POSTs are
/// answered 503 at once, until a commit returns (the database answers
/// again: the committer marks its part working) or fails (and the
/// connection is made again, as after any failure).
pub fn watch(shared: &Shared, stop: &Stop) {
    while !stop.pause(WATCH_EVERY) {
        let mut stalled = false;
        for (part, in_flight) in shared.in_flight.iter().enumerate() {
            let stuck = in_flight.overdue(|waited| {
                failed(
                    shared,
                    part,
                    format!(
                        "the database has not answered for {} s (a frozen server, or a network that drops packets)",
                        waited.as_secs()
                    ),
                );
            });
            drop(stuck);
            stalled |= in_flight.given_up();
        }
        // Nobody collects while every committer is stuck: what was posted
        // before the health failed is answered here.
        if stalled && shared.health.is_failing() {
            for pending in shared.mailbox.take_pending() {
                commit::answer(pending.reply, Err(SubmitError::StorageUnavailable));
            }
        }
    }
}
