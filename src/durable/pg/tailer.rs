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
//! product instead (`Database::snapshot`: the `products` table and the
//! journal rows not compacted into it yet) and continues from there.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::super::commit::{Health, lock};
use super::super::url::DatabaseUrl;
use super::super::{PgError, RETRY_INTERVAL};
use super::committer::CONNECT_TIMEOUT;
use super::database::{Database, EVENT_RETENTION, Tail};
use super::stop::Stop;
use crate::model::ProductUpdate;
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError};
use crate::request_id::OwnedRequestId;
use crate::store::{Seq, Store};

/// The most journal rows one read takes.
const READ_ROWS: usize = 4096;

/// How long the tailer waits for a notification before it looks at its
/// stop flag; and the longest it goes without reading.
const NOTIFY_WAIT: Duration = Duration::from_millis(100);
const READ_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// How long the tailer waits for a committer of this instance to hand over
/// the batch a notification announced, before it reads the journal.
const HANDOFF_WAIT: Duration = Duration::from_millis(2);

/// The most batches waiting to be handed over; past it the committers stop
/// handing them (the tailer reads them from the journal instead).
const HANDED_LIMIT: usize = 256;

/// One committed batch of this instance: its events, seqs `first`,
/// `first + 1`, ...
pub struct Batch {
    pub first: Seq,
    pub events: Vec<(ProductUpdate, OwnedRequestId)>,
}

/// Where the committers hand their committed batches to the tailer, so
/// that this instance's own events need no read of the journal: only the
/// other instances' events do. An optimization only: anything not handed
/// over (or handed over out of order) is read from the journal.
#[derive(Default)]
pub struct Handed {
    batches: Mutex<Vec<Batch>>,
    bell: Condvar,
}

impl Handed {
    /// A committer: `batch` is committed.
    pub fn hand(&self, batch: Batch) {
        let mut batches = lock(&self.batches);
        if batches.len() < HANDED_LIMIT {
            batches.push(batch);
            self.bell.notify_one();
        }
    }

    /// Waits until a batch starting at `first` is there, or `deadline`.
    fn wait_for(&self, first: Seq, deadline: Instant) {
        let mut batches = lock(&self.batches);
        while !batches.iter().any(|b| b.first == first) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            batches = self
                .bell
                .wait_timeout(batches, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// What the tailer shares with the service.
pub struct Shared {
    pub url: DatabaseUrl,
    pub intake: Arc<Intake>,
    pub store: Store,
    pub progress: Arc<Progress>,
    /// Whether reading the journal works (`/readyz`).
    pub health: Health,
    /// Set by `finish`; wakes a tailer waiting to reconnect.
    pub stop: Stop,
    /// The last seq queued for the workers; the condvar rings when it
    /// moves (shutdown waits for it to reach this instance's last commit).
    pub position: (Mutex<Seq>, Condvar),
    /// This instance's committed batches, handed over in memory.
    pub handed: Arc<Handed>,
}

impl Shared {
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
pub fn run(shared: &Shared, db: Database, last: Seq) {
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| follow(shared, db, last)));
    if outcome.is_err() {
        shared.health.fail(
            0,
            "the tailer thread panicked (a bug; see the log): reads here are stale; restart the service"
                .to_owned(),
        );
    }
}

fn follow(shared: &Shared, db: Database, mut last: Seq) {
    let mut db = Some(db);
    let mut last_read: Option<Instant> = None;
    // The highest seq a notification announced, and whether a read is
    // owed regardless (at the start, after a reconnection).
    let mut announced: Seq = 0;
    let mut must_read = true;
    while !shared.stop.is_stopped() {
        // This instance's own commits need no connection.
        if let Read::Closed = take_handed(shared, &mut last) {
            return;
        }
        let Some(connection) = db.as_mut() else {
            if shared.stop.pause(RETRY_INTERVAL) {
                return;
            }
            match Database::connect(&shared.url, CONNECT_TIMEOUT, "tailer").and_then(|mut c| {
                c.listen()?;
                Ok(c)
            }) {
                Ok(connection) => {
                    db = Some(connection);
                    must_read = true;
                }
                Err(e) => shared.health.fail(0, format!("reading the journal: {e}")),
            }
            continue;
        };
        let stale = last_read.is_none_or(|at| at.elapsed() >= READ_AT_LEAST_EVERY);
        if announced > last && !must_read && !stale {
            // Most likely this instance's own commit, whose events the
            // committer is about to hand over: worth a moment's wait.
            shared
                .handed
                .wait_for(last + 1, Instant::now() + HANDOFF_WAIT);
        }
        match take_handed(shared, &mut last) {
            Read::Closed => return,
            Read::More | Read::UpToDate | Read::QueueFull => {}
        }
        if must_read || stale || announced > last {
            match read(shared, connection, &mut last) {
                Ok(Read::More) => continue,
                Ok(Read::UpToDate) => {
                    shared.health.ok(0);
                    last_read = Some(Instant::now());
                    must_read = false;
                }
                Ok(Read::QueueFull) => {
                    // Workers are behind; read again once they have room.
                    if shared.stop.pause(Duration::from_millis(1)) {
                        return;
                    }
                    continue;
                }
                Ok(Read::Closed) => return,
                Err(e) => {
                    shared.health.fail(0, format!("reading the journal: {e}"));
                    db = None;
                    continue;
                }
            }
        }
        match connection.wait_for_notification(NOTIFY_WAIT) {
            Ok(seq) => announced = announced.max(seq.unwrap_or(0)),
            Err(e) => {
                shared.health.fail(0, format!("reading the journal: {e}"));
                db = None;
            }
        }
    }
}

/// Queues the batches this instance's committers handed over that follow
/// `last` directly (no read needed); forgets those a read has covered.
fn take_handed(shared: &Shared, last: &mut Seq) -> Read {
    let mut batches = lock(&shared.handed.batches);
    batches.retain(|b| b.first + b.events.len() as Seq > *last + 1);
    while let Some(at) = batches.iter().position(|b| b.first == *last + 1) {
        let intake = &shared.intake;
        let room = intake.capacity().saturating_sub(intake.depth());
        if batches[at].events.len() > room {
            return Read::QueueFull;
        }
        let batch = batches.swap_remove(at);
        for (update, request_id) in batch.events {
            let expected = *last + 1;
            match intake.submit(update, request_id) {
                Ok(submitted) if submitted.seq == expected => *last = expected,
                // A bug if ever (only the tailer submits): the journal
                // read that follows puts it right.
                Ok(_) => return Read::More,
                Err(SubmitError::ShuttingDown) => return Read::Closed,
                Err(_) => return Read::QueueFull,
            }
        }
    }
    drop(batches);
    shared.moved_to(*last);
    Read::UpToDate
}

enum Read {
    /// Read as many rows as asked for: there may be more.
    More,
    UpToDate,
    /// The queue has no room.
    QueueFull,
    /// The intake is closed: shutdown.
    Closed,
}

fn read(shared: &Shared, db: &mut Database, last: &mut Seq) -> Result<Read, PgError> {
    let intake = &shared.intake;
    let room = intake
        .capacity()
        .saturating_sub(intake.depth())
        .min(READ_ROWS);
    if room == 0 {
        return Ok(Read::QueueFull);
    }
    let Tail { last_seq, rows } = db.tail(*last, room)?;
    if last_seq < *last {
        // Seqs this instance has applied are given out again: the database
        // is not the one it followed (a fail-over to a replica that lacks
        // commits, a restore). Its copy cannot be trusted to merge.
        return Err(PgError::Query {
            url: shared.url.to_string(),
            detail: format!(
                "the seq counter went back from {last} to {last_seq} (a fail-over to a replica without the last commits, or a restore?); restart this instance to reload its copy"
            ),
        });
    }
    if rows.is_empty() && last_seq > *last {
        reload(shared, db, last)?;
        return Ok(Read::More);
    }
    // The rows reach seq `last + room` if the journal does (and a batch
    // may go past it): fewer, and the journal has no more.
    let full = rows.len() >= room;
    for (seq, update, request_id) in rows {
        if seq != *last + 1 {
            // Rows missing (pruned): the products table has their effect.
            reload(shared, db, last)?;
            return Ok(Read::More);
        }
        match intake.submit(update, request_id.as_str().into()) {
            Ok(submitted) if submitted.seq == seq => *last = seq,
            Ok(submitted) => {
                // Only the tailer submits in this mode, so this is a bug;
                // reloading puts the store right whatever it is.
                log::error!(
                    "storage: journal seq={seq} was queued as seq={}; reloading the products",
                    submitted.seq
                );
                reload(shared, db, last)?;
                return Ok(Read::More);
            }
            Err(SubmitError::ShuttingDown) => return Ok(Read::Closed),
            Err(_) => return Ok(Read::QueueFull),
        }
    }
    shared.moved_to(*last);
    Ok(if full { Read::More } else { Read::UpToDate })
}

/// Loads every product from the `products` table and continues from the
/// seq they reflect.
fn reload(shared: &Shared, db: &mut Database, last: &mut Seq) -> Result<(), PgError> {
    let snapshot = db.snapshot()?;
    log::warn!(
        "storage: the journal after seq {last} is gone (rows are kept {EVENT_RETENTION:?}); reloaded {} products as of seq {}",
        snapshot.products.len(),
        snapshot.last_seq
    );
    shared.store.restore(snapshot.products);
    shared.intake.skip_to(snapshot.last_seq + 1);
    shared.progress.skip_to(snapshot.last_seq);
    *last = snapshot.last_seq;
    shared.moved_to(*last);
    Ok(())
}
