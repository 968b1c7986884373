//! What a connection thread waiting for a commit shares with a committer,
//! in both durable backends: its [`Pending`] event and the ticket it
//! parks on, the [`Waiting`] guard that answers every ticket of a batch
//! whatever happens, and [`Health`], which says whether writes work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::time::Instant;

use super::RETRY_INTERVAL;
use super::handoff::{Mailbox, Refused, Ticket};
use crate::model::ProductUpdate;
use crate::queue::{Submission, SubmitError, Submitted};
use crate::request_id::OwnedRequestId;

/// What a waiting connection thread is told.
pub type Answer = Result<Submitted, SubmitError>;

/// An event and the ticket its connection thread waits on.
pub struct Pending {
    pub submission: Submission,
    pub ticket: Arc<Ticket<Answer>>,
}

/// A connection thread's side of the hand-off: posts the event in the
/// committers' `mailbox` and parks until it is answered. Refused at once
/// when `capacity` events wait already (503 `queue_full`: the committer is
/// behind) or after shutdown began (`shutting_down`, or
/// `storage_unavailable` if writes were failing).
pub fn post_and_wait(
    mailbox: &Mailbox<Pending>,
    health: &Health,
    capacity: usize,
    update: ProductUpdate,
    request_id: OwnedRequestId,
) -> Answer {
    let ticket = Arc::new(Ticket::new());
    let pending = Pending {
        submission: Submission {
            update,
            request_id,
            accepted_at: Instant::now(),
        },
        ticket: Arc::clone(&ticket),
    };
    match mailbox.post(pending, capacity) {
        Ok(()) => ticket.wait(),
        Err(Refused::Full) => Err(SubmitError::Full { capacity }),
        Err(Refused::Closed) if health.is_failing() => Err(SubmitError::StorageUnavailable),
        Err(Refused::Closed) => Err(SubmitError::ShuttingDown),
    }
}

/// Whether writes (or, for a PostgreSQL tailer, reads of the journal)
/// work, for `/readyz` and for refusing events. Changes are logged once
/// each way.
#[derive(Default)]
pub struct Health {
    failing: AtomicBool,
    reason: Mutex<String>,
    reads: bool,
}

impl Health {
    /// The health of reads: failing makes `/readyz` 503, not POSTs.
    #[cfg(feature = "postgres")]
    pub fn of_reads() -> Health {
        Health {
            reads: true,
            ..Health::default()
        }
    }

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

    pub fn fail(&self, reason: String) {
        let mut current = lock(&self.reason);
        if !self.failing.swap(true, Ordering::AcqRel) {
            if self.reads {
                log::error!(
                    "storage: {reason}; reads may be stale, and /readyz answers 503 until it works again (retried every {RETRY_INTERVAL:?})"
                );
            } else {
                log::error!(
                    "storage: writes fail ({reason}); POST /events answers 503 storage_unavailable and /readyz 503 until they succeed again (retried every {RETRY_INTERVAL:?})"
                );
            }
        }
        *current = reason;
    }

    pub fn ok(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            if self.reads {
                log::info!("storage: reading the journal works again");
            } else {
                log::info!("storage: writes succeed again; accepting events");
            }
        }
    }
}

/// Poisoning: every value behind these locks is plain data changed in
/// single assignments or pushes.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tickets of the batch being committed: answered with their results
/// by [`Waiting::answer`], or, if the cycle unwinds from a panic first,
/// with 503 `storage_unavailable` (the events may have been committed: the
/// next start applies them, and a client that retries them with their
/// `event_id` gets `duplicate`).
pub struct Waiting(pub Vec<Arc<Ticket<Answer>>>);

impl Waiting {
    pub fn answer(mut self, answers: Vec<Answer>) {
        for (ticket, answer) in self.0.drain(..).zip(answers) {
            ticket.answer(answer);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        for ticket in self.0.drain(..) {
            ticket.answer(Err(SubmitError::StorageUnavailable));
        }
    }
}
