//! The intake: where accepted events get their sequence number and enter the
//! bounded queue that the workers drain.
//!
//! ```text
//!  HTTP threads ──submit()──▶ [Intake: Mutex{ job_tx, next_seq }] ──job_tx──▶ bounded channel ──job_rx──▶ workers
//! ```
//!
//! # Why one mutex
//!
//! `submit` takes the intake lock, tries to send, and only on success hands
//! out the next sequence number. So:
//!
//! - "later" has one meaning: sequence numbers follow the order in which
//!   events entered the queue, with no gaps, and the `seq` in the 202 is
//!   exactly the number of events accepted so far;
//! - closing is a single assignment under the same lock (`job_tx = None`).
//!   A submit that got in before the close has already put its event in the
//!   channel, where the workers will find it; a submit after the close finds
//!   no sender and answers "shutting down". There is no window in which a
//!   202 can be given for an event the workers will not see, because that
//!   sender is the channel's only one: dropping it is what tells the workers
//!   "nothing more is coming" once the queue is empty.
//!
//! The lock is held for one `try_send`, which never blocks: a full queue is
//! an immediate [`SubmitError::Full`] (an HTTP 503), never a stuck thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::model::ProductUpdate;
use crate::store::Seq;

/// One accepted event on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub seq: Seq,
    pub update: ProductUpdate,
    /// When the intake accepted it (for the time spent queued).
    pub accepted_at: Instant,
}

/// Why an event was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `capacity` events already. Retry shortly.
    Full { capacity: usize },
    /// Shutdown has begun; no new events are taken.
    ShuttingDown,
}

/// The sending side of the queue, shared by every HTTP thread.
pub struct Intake {
    state: Mutex<IntakeState>,
    capacity: usize,
    /// Set while the queue is full, so a burst of 503s logs one warning
    /// when it starts and one line when it ends, not one per request.
    saturated: AtomicBool,
}

struct IntakeState {
    /// The queue's only sender; `None` once shutdown has begun.
    job_tx: Option<Sender<Job>>,
    /// Sequence number the next accepted event gets.
    next_seq: Seq,
}

impl Intake {
    /// Creates the queue. The workers get the receiving end.
    pub fn new(capacity: usize) -> (Intake, Receiver<Job>) {
        let (job_tx, job_rx) = crossbeam_channel::bounded(capacity);
        let intake = Intake {
            state: Mutex::new(IntakeState {
                job_tx: Some(job_tx),
                next_seq: 1,
            }),
            capacity,
            saturated: AtomicBool::new(false),
        };
        (intake, job_rx)
    }

    /// Queues `update` and returns the sequence number it was given.
    /// Never blocks waiting for room.
    pub fn submit(&self, update: ProductUpdate) -> Result<Seq, SubmitError> {
        let mut state = self.lock();
        let seq = state.next_seq;
        let Some(job_tx) = &state.job_tx else {
            return Err(SubmitError::ShuttingDown);
        };
        let job = Job {
            seq,
            update,
            accepted_at: Instant::now(),
        };
        match job_tx.try_send(job) {
            Ok(()) => {
                state.next_seq += 1;
                drop(state);
                if self.saturated.load(Ordering::Relaxed)
                    && self.saturated.swap(false, Ordering::Relaxed)
                {
                    log::info!("event queue has room again; accepting events");
                }
                Ok(seq)
            }
            Err(TrySendError::Full(_)) => {
                drop(state);
                if !self.saturated.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "event queue is full ({} events): answering 503 until the workers catch up",
                        self.capacity
                    );
                }
                Err(SubmitError::Full {
                    capacity: self.capacity,
                })
            }
            // The workers hold the receiver until they exit, and they only
            // exit after `close`; if they are gone anyway, no event can be
            // applied, which for a client is the same as shutting down.
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::ShuttingDown),
        }
    }

    /// Stops taking events. Events already queued stay queued for the
    /// workers; once they are drained the workers see the channel
    /// disconnected and exit. Returns how many events were accepted in all.
    pub fn close(&self) -> u64 {
        let mut state = self.lock();
        state.job_tx = None;
        state.next_seq - 1
    }

    /// Events accepted so far.
    pub fn accepted(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Whether [`Intake::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.lock().job_tx.is_none()
    }

    /// Events waiting in the queue right now.
    pub fn depth(&self) -> usize {
        self.lock().job_tx.as_ref().map_or(0, Sender::len)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    // Poisoning: the state is two fields each written in one assignment, and
    // nothing inside the lock can panic; ignore poisoning rather than fail
    // every later request.
    fn lock(&self) -> MutexGuard<'_, IntakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> ProductUpdate {
        ProductUpdate {
            product_id: id.into(),
            price: serde_json::Number::from_f64(1.0),
            stock: None,
        }
    }

    #[test]
    fn sequence_numbers_start_at_one_and_follow_queue_order() {
        let (intake, job_rx) = Intake::new(4);
        assert_eq!(intake.submit(event("a")), Ok(1));
        assert_eq!(intake.submit(event("b")), Ok(2));
        let seqs: Vec<Seq> = job_rx.try_iter().map(|job| job.seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(intake.accepted(), 2);
    }

    #[test]
    fn full_queue_is_refused_at_once_without_using_a_seq() {
        let (intake, job_rx) = Intake::new(2);
        intake.submit(event("a")).unwrap();
        intake.submit(event("b")).unwrap();
        assert_eq!(intake.depth(), 2);
        assert_eq!(
            intake.submit(event("c")),
            Err(SubmitError::Full { capacity: 2 })
        );
        job_rx.recv().unwrap();
        assert_eq!(intake.submit(event("c")), Ok(3));
    }

    #[test]
    fn close_keeps_queued_events_and_refuses_new_ones() {
        let (intake, job_rx) = Intake::new(4);
        intake.submit(event("a")).unwrap();
        assert_eq!(intake.close(), 1);
        assert!(intake.is_closed());
        assert_eq!(intake.submit(event("b")), Err(SubmitError::ShuttingDown));
        // The queued event is still delivered, then the channel reports the end.
        assert_eq!(job_rx.recv().unwrap().seq, 1);
        assert!(job_rx.recv().is_err());
    }
}
