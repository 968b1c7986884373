//! The tailer thread: this instance's copy of what every instance
//! committed. It reads the journal (`events`) in seq order, from where the
//! store is, and puts each event into this instance's queue, where the
//! workers apply it to the in-memory store as in every other mode; so the
//! watermark, `min_seq` reads and the ETags work as on one instance.
//!
//! ```text
//!  any instance's commit ──NOTIFY──▶ tailer: SELECT events WHERE seq > last ──submit()──▶ queue ──▶ workers ──▶ store
//! ```
//!
//! Commits are in seq order (see `database.rs`), so `seq > last` misses
//! nothing. The tailer waits for a notification between reads (every
//! commit sends one), and reads at least once a second anyway. It reads
//! no more rows than the queue has room for, so it never gets a 503 from
//! the intake: a slow worker pool makes it read later, not lose events.
//!
//! If the rows after `last` are gone (pruned after `EVENT_RETENTION`, when
//! this instance was stopped or stalled for longer), it reloads every
//! product from the `products` table instead and continues from there.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::super::commit::{Health, lock};
use super::super::url::DatabaseUrl;
use super::super::{PgError, RETRY_INTERVAL};
use super::committer::CONNECT_TIMEOUT;
use super::database::{Database, EVENT_RETENTION, Tail};
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError};
use crate::store::{Seq, Store};

/// The most journal rows one read takes.
const READ_ROWS: usize = 4096;

/// How long the tailer waits for a notification before it looks at its
/// stop flag; and the longest it goes without reading.
const NOTIFY_WAIT: Duration = Duration::from_millis(100);
const READ_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// What the tailer shares with the service.
pub struct Shared {
    pub url: DatabaseUrl,
    pub intake: Arc<Intake>,
    pub store: Store,
    pub progress: Arc<Progress>,
    /// Whether reading the journal works (`/readyz`).
    pub health: Health,
    /// Set by `finish`; the condvar wakes a tailer waiting to reconnect.
    pub stop: (Mutex<bool>, Condvar),
    /// The last seq queued for the workers; the condvar rings when it
    /// moves (shutdown waits for it to reach this instance's last commit).
    pub position: (Mutex<Seq>, Condvar),
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

    fn stopped(&self) -> bool {
        *lock(&self.stop.0)
    }

    /// Sleeps `pause`, or less if told to stop. True if stopped.
    fn pause(&self, pause: Duration) -> bool {
        let (stopped, bell) = &self.stop;
        let deadline = Instant::now() + pause;
        let mut stopped = lock(stopped);
        while !*stopped {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            stopped = bell
                .wait_timeout(stopped, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *stopped
    }
}

/// The tailer thread's body: `db` is listening already, `last` is the
/// seq the store reflects.
pub fn run(shared: &Shared, db: Database, mut last: Seq) {
    let mut db = Some(db);
    let mut last_read: Option<Instant> = None;
    let mut notified = true;
    while !shared.stopped() {
        let Some(connection) = db.as_mut() else {
            if shared.pause(RETRY_INTERVAL) {
                return;
            }
            match Database::connect(&shared.url, CONNECT_TIMEOUT).and_then(|mut c| {
                c.listen()?;
                Ok(c)
            }) {
                Ok(connection) => {
                    db = Some(connection);
                    notified = true;
                }
                Err(e) => shared.health.fail(format!("reading the journal: {e}")),
            }
            continue;
        };
        let stale = last_read.is_none_or(|at| at.elapsed() >= READ_AT_LEAST_EVERY);
        if notified || stale {
            match read(shared, connection, &mut last) {
                Ok(Read::More) => continue,
                Ok(Read::UpToDate) => {
                    shared.health.ok();
                    last_read = Some(Instant::now());
                }
                Ok(Read::QueueFull) => {
                    // Workers are behind; read again once they have room.
                    if shared.pause(Duration::from_millis(1)) {
                        return;
                    }
                    continue;
                }
                Ok(Read::Closed) => return,
                Err(e) => {
                    shared.health.fail(format!("reading the journal: {e}"));
                    db = None;
                    continue;
                }
            }
        }
        match connection.wait_for_notification(NOTIFY_WAIT) {
            Ok(any) => notified = any,
            Err(e) => {
                shared.health.fail(format!("reading the journal: {e}"));
                db = None;
            }
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
    let gap = match rows.first() {
        Some(&(seq, ..)) => seq != *last + 1,
        None => last_seq > *last,
    };
    if gap {
        reload(shared, db, last)?;
        return Ok(Read::More);
    }
    let full = rows.len() == room;
    for (seq, update, request_id) in rows {
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
