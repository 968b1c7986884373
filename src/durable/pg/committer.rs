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
//! `Durable::submit_with_reply`), and `/readyz` 503 with the reason.
//!
//! Each event's client is answered from here (its `Reply` writes the HTTP
//! answer on this thread; the connection's thread meanwhile reads the
//! connection's next request), whatever happens: after the commit, after a
//! failed one (503 `storage_unavailable`: the events may or may not have
//! been committed, and a client that retries with its `event_id` gets
//! `duplicate` if they were), at shutdown (503 `shutting_down`), and if
//! this thread panics (the `Waiting` guard).

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::super::commit::{self, Answer, Health, Pending, Waiting};
use super::super::handoff::{Collected, Mailbox};
use super::super::url::DatabaseUrl;
use super::super::{Committed, RETRY_INTERVAL};
use super::database::{self, Database};
use super::tailer::{Batch, Handed};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::queue::{Intake, Submission, SubmitError};

/// How many times the committer yields the CPU to let a batch grow.
const GATHER_ROUNDS: usize = 8;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
        let waiting = Waiting(replies);
        let refuse = |e: SubmitError| submissions.iter().map(|_| Err(e)).collect();

        let answers = if submissions.is_empty() {
            Vec::new()
        } else if shared.intake.is_closed() {
            refuse(SubmitError::ShuttingDown)
        } else if let Some(connection) = db.as_mut() {
            let started = Instant::now();
            let window = (shared.window_len > 0).then_some(shared.window_ttl);
            match connection.accept(&submissions, window, &shared.instance) {
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
                    shared.accepted.fetch_add(new as u64, Ordering::Relaxed);
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
        waiting.answer(answers);

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
            let done = connection.housekeeping(
                &shared.instance,
                shared.progress.through(),
                shared.window_ttl,
                shared.window_len,
            );
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
