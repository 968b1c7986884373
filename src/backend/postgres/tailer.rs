//! The tailer thread: this instance's copy of what every instance
//! committed. It reads the journal (`journal`) in seq order, from where the
//! store is, and puts each event into this instance's queue, where the
//! workers apply it to the in-memory store as in every other mode; so the
//! watermark, `min_seq` reads and the ETags work as on one instance.
//!
//! ```text
//!  any instance's commit ──NOTIFY──▶ tailer: SELECT journal rows after last ──submit()──▶ queue ──▶ workers ──▶ store
//! ```
//!
//! Commits are in seq order (see `database.rs`), so `seq > last` misses
//! nothing. The tailer waits for a notification between reads (every
//! commit sends one, with the last seq it gave out), and reads at least
//! once a second anyway. This instance's own batches need no read: its
//! committers hand them over in memory ([`Handed`]), and a notification
//! that announces nothing beyond them costs no query. It reads
//! no more rows than the queue has room for, so it never gets a 503 from
//! the intake: a slow worker pool makes it read later, not lose events.
//!
//! If the rows after `last` are gone (pruned after `EVENT_RETENTION`, when
//! this instance was stopped or stalled for longer), it reloads every
//! product instead (`PgSession::snapshot`: the `products` table and the
//! journal rows not compacted into it yet) and continues from there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::error::PgError;
use super::handover::{HANDOFF_WAIT, Handed, Taken};
use super::session::{CONNECT_TIMEOUT, EVENT_RETENTION, PgSession, Tail};
use crate::backend::health::Health;
use crate::backend::health::{RETRY_INTERVAL, lock};
use crate::backend::stop::StopSignal;
use crate::config::DatabaseUrl;
use crate::event::ProductUpdate;
use crate::intake::{EnqueueError, Intake, Job};
use crate::progress::Progress;
use crate::request_id::OwnedRequestId;
use crate::store::{Seq, Store};

/// The most journal rows one read takes.
const READ_ROWS: usize = 4096;

/// How long the tailer waits for a notification before it looks at its
/// stop flag; and the longest it goes without reading.
const NOTIFY_WAIT: Duration = Duration::from_millis(100);
const READ_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// The tailer's state, shared with the backend's handle (which stops it and
/// waits on its position at shutdown).
pub struct Tailer {
    pub url: DatabaseUrl,
    pub intake: Arc<Intake>,
    pub store: Store,
    pub progress: Arc<Progress>,
    /// Whether reading the journal works (`/readyz`).
    pub health: Health,
    /// Set by `finish`; wakes a tailer waiting to reconnect.
    pub stop: StopSignal,
    /// The last seq queued for the workers; the condvar rings when it
    /// moves (shutdown waits for it to reach this instance's last commit).
    pub position: (Mutex<Seq>, Condvar),
    /// This instance's committed batches, handed over in memory.
    pub handed: Arc<Handed>,
    /// The highest seq known to be committed in the database (from the
    /// notifications and the reads): how far this copy lags is this minus
    /// the watermark.
    pub known: AtomicU64,
}

impl Tailer {
    /// Waits until every seq up to `seq` is queued, or `deadline` passes.
    /// True if reached.
    pub fn wait_for(&self, seq: Seq, deadline: Instant) -> bool {
        let (position, moved) = &self.position;
        let mut position = lock(position);
        while *position < seq {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            position = moved
                .wait_timeout(position, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    fn moved_to(&self, seq: Seq) {
        *lock(&self.position.0) = seq;
        self.position.1.notify_all();
    }
}

/// The tailer thread's body: `db` is listening already, `last` is the
/// seq the store reflects. A panic inside (a bug) is caught and reported
/// by `/readyz`, since this copy then no longer follows the journal.
pub fn run(tailer: &Tailer, db: PgSession, last: Seq) {
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| follow(tailer, db, last)));
    if outcome.is_err() {
        tailer.health.fail(
            0,
            "the tailer thread panicked (a bug; see the log): reads here are stale; restart the service"
                .to_owned(),
        );
    }
}

fn follow(tailer: &Tailer, db: PgSession, mut last: Seq) {
    let mut db = Some(db);
    let mut last_read: Option<Instant> = None;
    // The highest seq a notification announced, and whether a read is
    // owed regardless (at the start, after a reconnection).
    let mut announced: Seq = 0;
    let mut must_read = true;
    while !tailer.stop.is_stopped() {
        // This instance's own commits need no connection.
        if let Read::Closed = take_handed(tailer, &mut last) {
            return;
        }
        let Some(connection) = db.as_mut() else {
            if tailer.stop.pause(RETRY_INTERVAL) {
                return;
            }
            match PgSession::connect(&tailer.url, CONNECT_TIMEOUT, "tailer").and_then(|mut c| {
                c.listen()?;
                Ok(c)
            }) {
                Ok(connection) => {
                    db = Some(connection);
                    must_read = true;
                }
                Err(e) => tailer.health.fail(0, format!("reading the journal: {e}")),
            }
            continue;
        };
        let stale = last_read.is_none_or(|at| at.elapsed() >= READ_AT_LEAST_EVERY);
        if announced > last && !must_read && !stale {
            // Most likely this instance's own commit, whose events the
            // committer is about to hand over: worth a moment's wait.
            tailer
                .handed
                .wait_for(last + 1, Instant::now() + HANDOFF_WAIT);
        }
        match take_handed(tailer, &mut last) {
            Read::Closed => return,
            Read::More | Read::UpToDate | Read::QueueFull | Read::OutOfStep => {}
        }
        if must_read || stale || announced > last {
            match read(tailer, connection, &mut last) {
                Ok(Read::More) => continue,
                Ok(Read::UpToDate) => {
                    tailer.health.ok(0);
                    last_read = Some(Instant::now());
                    must_read = false;
                }
                Ok(Read::QueueFull) => {
                    // Workers are behind; read again once they have room.
                    if tailer.stop.pause(Duration::from_millis(1)) {
                        return;
                    }
                    continue;
                }
                Ok(Read::Closed) => return,
                Ok(Read::OutOfStep) => continue,
                Err(e) => {
                    tailer.health.fail(0, format!("reading the journal: {e}"));
                    db = None;
                    continue;
                }
            }
        }
        match connection.wait_for_notification(NOTIFY_WAIT) {
            Ok(seq) => {
                announced = announced.max(seq.unwrap_or(0));
                tailer.known.fetch_max(announced, Ordering::Relaxed);
            }
            Err(e) => {
                tailer.health.fail(0, format!("reading the journal: {e}"));
                db = None;
            }
        }
    }
}

/// Queues the batches this instance's committers handed over that follow
/// `last` directly (no read needed).
fn take_handed(tailer: &Tailer, last: &mut Seq) -> Read {
    loop {
        let batch = match tailer.handed.take(*last + 1, tailer.intake.room()) {
            Taken::Batch(batch) => batch,
            Taken::TooBig => return Read::QueueFull,
            Taken::Missing => break,
        };
        for (update, request_id) in batch.events {
            match queue_event(tailer, *last + 1, update, request_id) {
                Ok(()) => *last += 1,
                // A bug if ever: the journal read that follows puts it right.
                Err(Read::OutOfStep) => return Read::More,
                Err(read) => return read,
            }
        }
    }
    tailer.moved_to(*last);
    Read::UpToDate
}

/// Queues the event with `seq` for the workers.
fn queue_event(
    tailer: &Tailer,
    seq: Seq,
    update: ProductUpdate,
    request_id: OwnedRequestId,
) -> Result<(), Read> {
    let job = Job {
        seq,
        update,
        request_id,
        accepted_at: Instant::now(),
    };
    match tailer.intake.enqueue(job) {
        Ok(()) => Ok(()),
        Err(EnqueueError::Closed) => Err(Read::Closed),
        Err(EnqueueError::Full) => Err(Read::QueueFull),
        Err(EnqueueError::OutOfOrder { expected }) => {
            // Only the tailer queues in this mode, so this is a bug.
            log::error!(
                "storage: journal seq={seq} is not the next seq to queue ({expected}); reading again"
            );
            Err(Read::OutOfStep)
        }
    }
}

enum Read {
    /// Read as many rows as asked for: there may be more.
    More,
    UpToDate,
    /// The queue has no room.
    QueueFull,
    /// The intake is closed: shutdown.
    Closed,
    /// The intake expected another seq (a bug): read again from where the
    /// store is.
    OutOfStep,
}

fn read(tailer: &Tailer, db: &mut PgSession, last: &mut Seq) -> Result<Read, PgError> {
    let room = tailer.intake.room().min(READ_ROWS);
    if room == 0 {
        return Ok(Read::QueueFull);
    }
    let Tail { last_seq, rows } = db.tail(*last, room)?;
    tailer.known.fetch_max(last_seq, Ordering::Relaxed);
    if last_seq < *last {
        // Seqs this instance has applied are given out again: the database
        // is not the one it followed (a fail-over to a replica that lacks
        // commits, a restore). Its copy cannot be trusted to merge.
        return Err(PgError::Query {
            url: tailer.url.to_string(),
            detail: format!(
                "the seq counter went back from {last} to {last_seq} (a fail-over to a replica without the last commits, or a restore?); restart this instance to reload its copy"
            ),
        });
    }
    if rows.is_empty() && last_seq > *last {
        reload(tailer, db, last)?;
        return Ok(Read::More);
    }
    // The rows reach seq `last + room` if the journal does (and a batch
    // may go past it): fewer, and the journal has no more.
    let full = rows.len() >= room;
    for (seq, update, request_id) in rows {
        if seq != *last + 1 {
            // Rows missing (pruned): the products table has their effect.
            reload(tailer, db, last)?;
            return Ok(Read::More);
        }
        match queue_event(tailer, seq, update, request_id.as_str().into()) {
            Ok(()) => *last = seq,
            // Reloading puts the store right whatever the bug was.
            Err(Read::OutOfStep) => {
                reload(tailer, db, last)?;
                return Ok(Read::More);
            }
            Err(read) => return Ok(read),
        }
    }
    tailer.moved_to(*last);
    Ok(if full { Read::More } else { Read::UpToDate })
}

/// Loads every product from the `products` table and continues from the
/// seq they reflect.
fn reload(tailer: &Tailer, db: &mut PgSession, last: &mut Seq) -> Result<(), PgError> {
    let snapshot = db.snapshot()?;
    log::warn!(
        "storage: the journal after seq {last} is gone (rows are kept {EVENT_RETENTION:?}); reloaded {} products as of seq {}",
        snapshot.products.len(),
        snapshot.last_seq
    );
    tailer.store.restore(snapshot.products);
    tailer.intake.resume(snapshot.last_seq + 1, Vec::new());
    tailer.progress.skip_to(snapshot.last_seq);
    *last = snapshot.last_seq;
    tailer.moved_to(*last);
    Ok(())
}
