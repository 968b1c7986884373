//! The intake: where accepted events get their sequence number and enter the
//! bounded queue that the workers drain.
//!
//! ```text
//!  accept() ──▶ [Intake: Mutex{ job_tx, next_seq, window }] ──job_tx──▶ bounded channel ──Jobs──▶ workers
//!  enqueue(job with its seq) ──┘
//! ```
//!
//! # Who numbers the events
//!
//! Seqs define "later": an event with a higher seq overrides one with a
//! lower seq, field by field (`store.rs`). They are gap-free and enter the
//! queue in order, whoever hands them out:
//!
//! - [`Intake::accept`]: the intake numbers the event itself (memory mode,
//!   SQLite's `async` mode). Any connection thread may call it.
//! - [`Intake::enqueue`]: the event was numbered by someone else, who made
//!   it durable first: a SQLite committer (the journal's seq) or a
//!   PostgreSQL tailer (the database's seq). Each such mode has exactly one
//!   thread that enqueues, and the intake checks that each job's seq is the
//!   next one, so a numbering bug is an error, never a gap or a reorder.
//!
//! # Why one mutex
//!
//! `accept` takes the intake lock, looks the event's id up in the
//! idempotency window (`dedupe.rs`), tries to send, and only on success
//! hands out the seq. So the `seq` in a 202 is exactly the number of events
//! accepted before it, and closing is a single assignment under the same
//! lock (`job_tx = None`): an accept that got in before the close has put
//! its event in the channel, where the workers will find it; one after the
//! close finds no sender and answers "shutting down". That sender is the
//! channel's only one, so dropping it is what tells the workers "nothing
//! more is coming" once the queue is empty.
//!
//! The lock is held for one `try_send`, which never blocks: a full queue is
//! an immediate [`Refusal::QueueFull`] (an HTTP 503), never a stuck thread.
//!
//! The files below this one: `queue.rs` (the channel's receiving end and
//! how idle workers wait), `dedupe.rs` (the idempotency window),
//! `outcome.rs` (what an acceptance comes to, and how it travels back) and
//! `mailbox.rs` (where events wait for a committer in the durable modes).

pub mod batch;
pub mod dedupe;
pub mod mailbox;
pub mod outcome;
pub mod queue;

use std::sync::PoisonError;
use std::time::{Duration, Instant};

// Through `sync.rs`, so that `tests/loom.rs` can model-check the intake
// with loom's types.
use crate::sync::channel::{Sender, TrySendError};
use crate::sync::{self, Arc, AtomicBool, Mutex, MutexGuard, Ordering};

use crate::event::ProductUpdate;
use crate::request_id::OwnedRequestId;
use crate::store::Seq;
use dedupe::{Dedupe, Remembered};
use queue::Doorbell;

pub use outcome::{Accepted, BatchReplyTo, Outcome, Refusal, ReplyTo};
pub use queue::{Job, Jobs};

/// Why [`Intake::enqueue`] did not queue a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue is full. The caller counts the room before it enqueues.
    Full,
    /// Shutdown has closed the intake.
    Closed,
    /// The job's seq is not the next one: a numbering bug upstream.
    OutOfOrder { expected: Seq },
}

/// The sending side of the queue, shared by every thread that accepts.
pub struct Intake {
    state: Mutex<IntakeState>,
    capacity: usize,
    /// Set while the queue is full, so a burst of 503s logs one warning
    /// when it starts and one line when it ends, not one per request.
    saturated: AtomicBool,
    /// Wakes a sleeping worker after each accepted event.
    doorbell: Arc<Doorbell>,
}

struct IntakeState {
    /// The queue's only sender; `None` once shutdown has begun.
    job_tx: Option<Sender<Job>>,
    /// The seq of the next event to enter the queue.
    next_seq: Seq,
    /// Seqs that entered queues before this process started, or that a
    /// reload skipped: the counts are this process's, the seqs continue.
    base: Seq,
    /// Recently accepted `event_id`s, for idempotent retries.
    window: Dedupe,
}

impl Intake {
    /// Creates the queue with the default idempotency window.
    pub fn new(capacity: usize) -> (Intake, Jobs) {
        let defaults = crate::config::Config::default();
        Intake::with_window(
            capacity,
            defaults.idempotency_window,
            defaults.idempotency_ttl,
        )
    }

    /// Creates the queue. The workers get the receiving end, [`Jobs`]
    /// (clone it once per worker). `window`/`ttl` bound the idempotency
    /// window (0 turns it off).
    pub fn with_window(capacity: usize, window: usize, ttl: Duration) -> (Intake, Jobs) {
        let (job_tx, job_rx) = sync::channel::bounded(capacity);
        let doorbell = Arc::new(Doorbell::new());
        let intake = Intake {
            state: Mutex::new(IntakeState {
                job_tx: Some(job_tx),
                next_seq: 1,
                base: 0,
                window: Dedupe::new(window, ttl),
            }),
            capacity,
            saturated: AtomicBool::new(false),
            doorbell: Arc::clone(&doorbell),
        };
        (intake, Jobs::new(job_rx, doorbell))
    }

    /// Numbers `update` and queues it. Never blocks waiting for room. An
    /// `event_id` seen within the window is answered as a duplicate (the
    /// first copy's seq) or a conflict, and nothing is queued.
    pub fn accept(&self, update: ProductUpdate, request_id: OwnedRequestId) -> Outcome {
        let now = Instant::now();
        // Only an event with an id can be a retry.
        let fingerprint = update.event_id.as_ref().map_or(0, |_| update.fingerprint());
        let mut state = self.lock();
        if let Some(event_id) = &update.event_id
            && let Some(seen) = state.window.look_up(event_id, fingerprint, now)
        {
            return seen;
        }
        let seq = state.next_seq;
        let job = Job {
            seq,
            update,
            request_id,
            accepted_at: now,
        };
        match self.send(state, job, fingerprint, now) {
            Ok(()) => Ok(Accepted {
                seq,
                duplicate: false,
            }),
            Err(EnqueueError::Full) => Err(Refusal::QueueFull {
                capacity: self.capacity,
            }),
            // `send` never finds a seq out of order: it was just taken.
            Err(EnqueueError::Closed | EnqueueError::OutOfOrder { .. }) => {
                Err(Refusal::ShuttingDown)
            }
        }
    }

    /// A batch request's events, all or none: each numbered and queued,
    /// with consecutive seqs, or none of them. An `event_id` seen before
    /// (in the window, or earlier in the batch) with the same content is a
    /// duplicate and takes no seq; with other content it refuses the whole
    /// batch, as does a queue without room for every new event. One outcome
    /// per event, in order.
    pub fn accept_all(
        &self,
        updates: Vec<ProductUpdate>,
        request_id: &OwnedRequestId,
    ) -> Vec<Outcome> {
        let now = Instant::now();
        let fingerprints: Vec<u64> = updates
            .iter()
            .map(|u| u.event_id.as_ref().map_or(0, |_| u.fingerprint()))
            .collect();
        let mut state = self.lock();
        let Some(room) = state.job_tx.as_ref().map(|tx| self.capacity - tx.len()) else {
            return vec![Err(Refusal::ShuttingDown); updates.len()];
        };
        let first = state.next_seq;
        let events = updates
            .iter()
            .zip(&fingerprints)
            .map(|(u, &f)| (u.event_id.as_deref(), f));
        let (standings, fresh) = batch::stand(events, first, |id, fingerprint| {
            state.window.look_up(id, fingerprint, now)
        });
        if let Some(refused) = batch::refuse_unless_whole(&standings, fresh, room, self.capacity) {
            drop(state);
            if refused
                .iter()
                .any(|o| matches!(o, Err(Refusal::QueueFull { .. })))
            {
                self.full();
            }
            return refused;
        }
        let Some(job_tx) = state.job_tx.clone() else {
            return vec![Err(Refusal::ShuttingDown); updates.len()];
        };
        let mut outcomes = Vec::with_capacity(updates.len());
        for ((update, fingerprint), standing) in
            updates.into_iter().zip(fingerprints).zip(standings)
        {
            let seq = match standing {
                batch::Standing::Known(outcome) => {
                    outcomes.push(outcome);
                    continue;
                }
                batch::Standing::SameAs(seq) => {
                    outcomes.push(Ok(Accepted {
                        seq,
                        duplicate: true,
                    }));
                    continue;
                }
                batch::Standing::Conflict(_) => {
                    // `refuse_unless_whole` refused the batch for it.
                    outcomes.push(Err(Refusal::ConflictInCommit));
                    continue;
                }
                batch::Standing::Fresh(seq) => seq,
            };
            let event_id = update.event_id.clone();
            let job = Job {
                seq,
                update,
                request_id: request_id.clone(),
                accepted_at: now,
            };
            // Room was counted under this lock, and only the intake sends:
            // the send cannot find the queue full. Disconnected would mean
            // the workers are gone while the intake is open (not possible).
            if job_tx.try_send(job).is_err() {
                log::error!("intake: seq={seq} of a batch could not be queued");
            }
            state.next_seq = seq + 1;
            if let Some(event_id) = event_id {
                state.window.remember(event_id, seq, fingerprint, now);
            }
            outcomes.push(Ok(Accepted {
                seq,
                duplicate: false,
            }));
        }
        let depth = job_tx.len();
        drop(state);
        if fresh > 0 {
            self.queued(depth);
        }
        outcomes
    }

    /// The answer for an event with `event_id` if the window has the id: a
    /// duplicate or a conflict. For a committer, which looks its batch up
    /// before it makes the new events durable and [`enqueue`](Intake::enqueue)s
    /// them (it is then the only thread that changes the window).
    pub fn look_up(&self, event_id: &str, fingerprint: u64) -> Option<Outcome> {
        self.lock()
            .window
            .look_up(event_id, fingerprint, Instant::now())
    }

    /// Queues a job numbered elsewhere (see the module docs): its seq must
    /// be the next one. Its `event_id`, if any, is remembered in the window.
    pub fn enqueue(&self, job: Job) -> Result<(), EnqueueError> {
        let now = Instant::now();
        let fingerprint = job
            .update
            .event_id
            .as_ref()
            .map_or(0, |_| job.update.fingerprint());
        let state = self.lock();
        if job.seq != state.next_seq {
            return Err(EnqueueError::OutOfOrder {
                expected: state.next_seq,
            });
        }
        self.send(state, job, fingerprint, now)
    }

    /// Queues jobs numbered elsewhere, in seq order, as [`Intake::enqueue`]
    /// does each, under one lock and with one wake-up for all of them (a
    /// committer's batch). Stops at the first that cannot be queued, and
    /// says why, with its seq.
    pub fn enqueue_all(&self, jobs: Vec<Job>) -> Result<(), (EnqueueError, Seq)> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut queued = 0;
        let mut failed = None;
        for job in jobs {
            let seq = job.seq;
            let Some(job_tx) = &state.job_tx else {
                failed = Some((EnqueueError::Closed, seq));
                break;
            };
            if seq != state.next_seq {
                failed = Some((
                    EnqueueError::OutOfOrder {
                        expected: state.next_seq,
                    },
                    seq,
                ));
                break;
            }
            let event_id = job.update.event_id.clone();
            let fingerprint = event_id.as_ref().map_or(0, |_| job.update.fingerprint());
            match job_tx.try_send(job) {
                Ok(()) => {
                    queued += 1;
                    state.next_seq += 1;
                    if let Some(event_id) = event_id {
                        state.window.remember(event_id, seq, fingerprint, now);
                    }
                }
                Err(TrySendError::Full(_)) => {
                    failed = Some((EnqueueError::Full, seq));
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    failed = Some((EnqueueError::Closed, seq));
                    break;
                }
            }
        }
        let depth = state.job_tx.as_ref().map_or(0, Sender::len);
        drop(state);
        if queued > 0 {
            self.queued(depth);
        }
        match failed {
            Some((EnqueueError::Full, seq)) => {
                self.full();
                Err((EnqueueError::Full, seq))
            }
            Some(failed) => Err(failed),
            None => Ok(()),
        }
    }

    /// Sends `job` (whose seq is `state.next_seq`) to the workers and, once
    /// it is queued, takes the next seq and remembers its `event_id`; then
    /// lets the lock go. Never blocks waiting for room.
    fn send(
        &self,
        mut state: MutexGuard<'_, IntakeState>,
        job: Job,
        fingerprint: u64,
        now: Instant,
    ) -> Result<(), EnqueueError> {
        let Some(job_tx) = &state.job_tx else {
            return Err(EnqueueError::Closed);
        };
        let (seq, event_id) = (job.seq, job.update.event_id.clone());
        match job_tx.try_send(job) {
            Ok(()) => {
                let depth = job_tx.len();
                state.next_seq += 1;
                if let Some(event_id) = event_id {
                    state.window.remember(event_id, seq, fingerprint, now);
                }
                drop(state);
                self.queued(depth);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                drop(state);
                self.full();
                Err(EnqueueError::Full)
            }
            // The workers hold the receiver until they exit, and they only
            // exit after `close`; if they are gone anyway, no event can be
            // applied, which for a client is the same as shutting down.
            Err(TrySendError::Disconnected(_)) => Err(EnqueueError::Closed),
        }
    }

    /// Continues the seqs at `next_seq` (if that is ahead), counting the
    /// ones skipped as accepted before this process, and puts back the
    /// idempotency window saved before a restart (oldest first). At
    /// startup, from a durable backend's saved state; and when a
    /// PostgreSQL instance reloads its store past events it never queued.
    pub fn resume(&self, next_seq: Seq, window: Vec<Remembered>) {
        let mut state = self.lock();
        if next_seq > state.next_seq {
            state.base += next_seq - state.next_seq;
            state.next_seq = next_seq;
        }
        state.window.restore(window, Instant::now());
    }

    /// Stops taking events. Events already queued stay queued for the
    /// workers; once they are drained the workers see the channel
    /// disconnected and exit. Returns how many events were accepted in all.
    pub fn close(&self) -> u64 {
        let mut state = self.lock();
        state.job_tx = None;
        let accepted = state.next_seq - 1 - state.base;
        drop(state);
        // After the sender is gone: a worker woken by this finds the queue
        // disconnected once it is empty.
        self.doorbell.close();
        accepted
    }

    /// An event entered the queue, which now holds `depth`: wake a worker
    /// if need be, and end a "queue full" episode in the log.
    fn queued(&self, depth: usize) {
        self.doorbell.ring(depth);
        if self.saturated.load(Ordering::Relaxed) && self.saturated.swap(false, Ordering::Relaxed) {
            log::info!("event queue has room again; accepting events");
        }
    }

    /// An event found the queue full: log the start of the episode.
    fn full(&self) {
        if !self.saturated.swap(true, Ordering::Relaxed) {
            log::warn!(
                "event queue is full ({} events): answering 503 until the workers catch up",
                self.capacity
            );
        }
    }

    /// The seq the next event to enter the queue gets.
    pub fn next_seq(&self) -> Seq {
        self.lock().next_seq
    }

    /// Events that entered the queue in this process.
    pub fn accepted(&self) -> u64 {
        let state = self.lock();
        state.next_seq - 1 - state.base
    }

    /// Whether [`Intake::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.lock().job_tx.is_none()
    }

    /// Event ids in the idempotency window right now.
    pub fn window_len(&self) -> usize {
        self.lock().window.len()
    }

    /// Events waiting in the queue right now.
    pub fn depth(&self) -> usize {
        self.lock().job_tx.as_ref().map_or(0, Sender::len)
    }

    /// Someone waits for queued events to be applied: a worker that
    /// lingers takes them now ([`queue::Doorbell::hurry`]).
    pub fn hurry(&self) {
        if self.depth() > 0 {
            self.doorbell.hurry();
        }
    }

    /// Events the queue has room for right now.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.depth())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    // Poisoning: the state is plain fields each written in one assignment,
    // and nothing inside the lock can panic; ignore poisoning rather than
    // fail every later request.
    fn lock(&self) -> MutexGuard<'_, IntakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Dropping the intake without `close` (a library user's shortcut) must
/// still let the workers finish: the sender goes with it, and this wakes
/// them so they see the queue disconnected.
impl Drop for Intake {
    fn drop(&mut self) {
        self.doorbell.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::event::price_update as event;

    fn job(seq: Seq) -> Job {
        Job {
            seq,
            update: event("a"),
            request_id: "test".into(),
            accepted_at: Instant::now(),
        }
    }

    #[test]
    fn sequence_numbers_start_at_one_and_follow_queue_order() {
        let (intake, jobs) = Intake::new(4);
        assert_eq!(
            intake.accept(event("a"), "test".into()).map(|s| s.seq),
            Ok(1)
        );
        assert_eq!(
            intake.accept(event("b"), "test".into()).map(|s| s.seq),
            Ok(2)
        );
        drop(intake);
        let seqs: Vec<Seq> = jobs.map(|job| job.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn full_queue_is_refused_at_once_without_using_a_seq() {
        let (intake, mut jobs) = Intake::new(2);
        intake.accept(event("a"), "test".into()).unwrap();
        intake.accept(event("b"), "test".into()).unwrap();
        assert_eq!(intake.depth(), 2);
        assert_eq!(intake.room(), 0);
        assert_eq!(
            intake.accept(event("c"), "test".into()).map(|s| s.seq),
            Err(Refusal::QueueFull { capacity: 2 })
        );
        jobs.next().unwrap();
        assert_eq!(
            intake.accept(event("c"), "test".into()).map(|s| s.seq),
            Ok(3)
        );
        assert_eq!(intake.accepted(), 3);
    }

    #[test]
    fn close_keeps_queued_events_and_refuses_new_ones() {
        let (intake, mut jobs) = Intake::new(4);
        intake.accept(event("a"), "test".into()).unwrap();
        assert_eq!(intake.close(), 1);
        assert!(intake.is_closed());
        assert_eq!(
            intake.accept(event("b"), "test".into()).map(|s| s.seq),
            Err(Refusal::ShuttingDown)
        );
        assert_eq!(intake.enqueue(job(2)), Err(EnqueueError::Closed));
        // The queued event is still delivered, then the queue reports the end.
        assert_eq!(jobs.next().unwrap().seq, 1);
        assert!(jobs.next().is_none());
    }

    #[test]
    fn a_retried_event_id_is_a_duplicate_and_queues_nothing() {
        let (intake, _jobs) = Intake::new(4);
        let with_id = || ProductUpdate {
            event_id: Some("e-1".into()),
            ..event("a")
        };
        let first = intake.accept(with_id(), "test".into());
        assert_eq!(
            first,
            Ok(Accepted {
                seq: 1,
                duplicate: false
            })
        );
        let retry = intake.accept(with_id(), "test".into());
        assert_eq!(
            retry,
            Ok(Accepted {
                seq: 1,
                duplicate: true
            })
        );
        assert_eq!(intake.depth(), 1);
        assert_eq!(
            intake.look_up("e-1", with_id().fingerprint()),
            retry.ok().map(Ok)
        );
    }

    #[test]
    fn a_committer_s_batch_is_queued_in_order_up_to_the_first_that_cannot_be() {
        let (intake, mut jobs) = Intake::new(3);
        assert_eq!(intake.enqueue_all(vec![job(1), job(2)]), Ok(()));
        assert_eq!(
            intake.enqueue_all(vec![job(4)]),
            Err((EnqueueError::OutOfOrder { expected: 3 }, 4))
        );
        assert_eq!(
            intake.enqueue_all(vec![job(3), job(4)]),
            Err((EnqueueError::Full, 4))
        );
        assert_eq!(intake.next_seq(), 4);
        let taken: Vec<Seq> = (0..3).filter_map(|_| jobs.next().map(|j| j.seq)).collect();
        assert_eq!(taken, [1, 2, 3]);
    }

    #[test]
    fn enqueued_jobs_must_come_in_seq_order() {
        let (intake, mut jobs) = Intake::new(4);
        intake.resume(10, Vec::new());
        assert_eq!(
            intake.enqueue(job(11)),
            Err(EnqueueError::OutOfOrder { expected: 10 })
        );
        assert_eq!(intake.enqueue(job(10)), Ok(()));
        assert_eq!(intake.enqueue(job(11)), Ok(()));
        assert_eq!(intake.next_seq(), 12);
        // Seqs 1 to 9 were accepted before this process.
        assert_eq!(intake.accepted(), 2);
        assert_eq!(jobs.next().map(|j| j.seq), Some(10));
        // An event the intake numbers itself continues the same seqs.
        assert_eq!(
            intake.accept(event("b"), "test".into()).map(|s| s.seq),
            Ok(12)
        );
    }
}
