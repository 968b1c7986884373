//! Where this instance's committers hand their committed batches to its
//! tailer, so that this instance's own events need no read of the journal:
//! only the other instances' events do. An optimization only: anything not
//! handed over (or handed over out of order) is read from the journal.
//!
//! ```text
//!  committer-N ──hand(batch)──▶ [Handed: Mutex<Vec<Batch>>] ──take(next seq)──▶ tailer ──enqueue──▶ queue
//! ```

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::health::lock;
use crate::event::ProductUpdate;
use crate::request_id::OwnedRequestId;
use crate::store::Seq;

/// How long the tailer waits for a committer of this instance to hand over
/// the batch a notification announced, before it reads the journal.
pub const HANDOFF_WAIT: Duration = Duration::from_millis(2);

/// The most batches waiting to be handed over; past it the committers stop
/// handing them (the tailer reads them from the journal instead).
const HANDED_LIMIT: usize = 256;

/// One committed batch of this instance: its events, seqs `first`,
/// `first + 1`, ...
pub struct Batch {
    pub first: Seq,
    pub events: Vec<(ProductUpdate, OwnedRequestId)>,
}

impl Batch {
    /// The seq after its last event.
    fn end(&self) -> Seq {
        self.first + self.events.len() as Seq
    }
}

/// The batches handed over and not yet taken.
#[derive(Default)]
pub struct Handed {
    batches: Mutex<Vec<Batch>>,
    bell: Condvar,
}

/// What [`Handed::take`] found.
pub enum Taken {
    /// The batch that starts at the seq asked for.
    Batch(Batch),
    /// It is there, but has more events than the queue has room for.
    TooBig,
    /// Not handed over (yet).
    Missing,
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

    /// The tailer: the batch that starts at `next`, if it has at most `room`
    /// events. Batches a journal read has already covered (ending at or
    /// before `next`) are forgotten.
    pub fn take(&self, next: Seq, room: usize) -> Taken {
        let mut batches = lock(&self.batches);
        batches.retain(|b| b.end() > next);
        let Some(at) = batches.iter().position(|b| b.first == next) else {
            return Taken::Missing;
        };
        if batches[at].events.len() > room {
            return Taken::TooBig;
        }
        Taken::Batch(batches.swap_remove(at))
    }

    /// The tailer: waits until a batch starting at `first` is there, or
    /// `deadline`.
    pub fn wait_for(&self, first: Seq, deadline: Instant) {
        let mut batches = lock(&self.batches);
        while !batches.iter().any(|b| b.first == first) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            batches = self
                .bell
                .wait_timeout(batches, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
