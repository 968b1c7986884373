//! The intake: where accepted events get their sequence number and enter the
//! bounded queue that the workers drain.
//!
//! ```text
//!  connection threads ──submit()──▶ [Intake: Mutex{ job_tx, next_seq }] ──job_tx──▶ bounded channel ──job_rx──▶ workers
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
//!
//! # Why the workers do not block in `recv()`
//!
//! The workers take events through [`Jobs`] (an iterator): `try_recv`, and when the
//! queue is empty, sleep on a condition variable (the [`Doorbell`]) that
//! `submit` rings only when a worker is actually asleep. crossbeam's blocking
//! `recv` spins and calls `sched_yield` several times before it parks; with
//! four mostly idle workers on a two-core machine that cost about 10 µs of
//! CPU per event, a third of the whole request (see ARCHITECTURE.md, "Waking
//! workers"). The channel is still crossbeam's bounded channel: only the
//! waiting is ours.
//!
//! Waking a sleeping thread still costs a few microseconds, so a worker
//! that has just worked *lingers*: it waits at most [`LINGER`] for more work
//! before it sleeps for good, and while one lingers `submit` does not ring
//! (unless [`WAKE_DEPTH`] events are already waiting). One lingerer at a
//! time is enough: the others sleep until rung. Under load one wake-up then
//! serves a batch of events, the way network cards coalesce interrupts; the
//! price is that an event may wait up to [`LINGER`] before it is applied
//! (an idle service wakes its worker at once: there is no lingerer then).

use std::collections::{HashMap, VecDeque};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

// Through `sync.rs`, so that `tests/loom.rs` can model-check the intake and
// the doorbell with loom's types.
use crate::sync::channel::{Receiver, Sender, TryRecvError, TrySendError};
use crate::sync::{
    self, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering, fence,
};

use crate::model::ProductUpdate;
use crate::request_id::OwnedRequestId;
use crate::store::Seq;

/// How long a worker that has just applied an event waits for the next one
/// before it sleeps until woken. Bounds how long an event can sit in the
/// queue while a worker lingers. Each window costs the lingerer one timed
/// wake-up (two context switches): at 60 000 events/s, 1 ms makes that one
/// per 60 events (200 µs made it one per 12, and cost 1.4 µs of CPU per
/// POST more; see ARCHITECTURE.md, "Waking workers").
pub const LINGER: Duration = Duration::from_millis(1);

/// Queue depth at which `submit` wakes another worker even though one is
/// lingering: a backlog is worth more hands. Above what one [`LINGER`]
/// window collects at full speed (about 60 events here), so that the
/// lingerer is not joined by a woken worker in every window.
pub const WAKE_DEPTH: usize = 256;

/// One accepted event on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub seq: Seq,
    pub update: ProductUpdate,
    /// The id of the request that carried it, for the worker's log line.
    pub request_id: OwnedRequestId,
    /// When the intake accepted it (for the time spent queued).
    pub accepted_at: Instant,
}

/// What `submit` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The event's seq: new, or the original one for a duplicate.
    pub seq: Seq,
    /// True if the `event_id` was seen within the window: nothing was queued.
    pub duplicate: bool,
}

/// Why an event was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The `event_id` was used within the window for different content.
    IdempotencyConflict { seq: Seq },
    /// The queue holds `capacity` events already. Retry shortly.
    Full { capacity: usize },
    /// Shutdown has begun; no new events are taken.
    ShuttingDown,
    /// Durable mode: the event could not be committed (or, in `async`
    /// mode, the store is failing). Nothing was acknowledged; retry later.
    StorageUnavailable,
}

/// An event waiting to be admitted with the next commit (durable `commit`
/// and `fsync` modes; see [`Intake::admit`]).
#[derive(Debug)]
pub struct Submission {
    pub update: ProductUpdate,
    pub request_id: OwnedRequestId,
    pub accepted_at: Instant,
}

/// An event [`Intake::admit`] gave a seq, handed to its `commit`.
pub struct Admitted<'a> {
    pub seq: Seq,
    pub update: &'a ProductUpdate,
    /// Its content fingerprint (0 without an `event_id`), for the window.
    pub fingerprint: u64,
}

/// Where one event of a batch stands while its commit is pending.
enum Standing {
    /// Answered whatever the commit does (a duplicate of an event committed
    /// earlier, a conflict with one, a full queue).
    Settled(Result<Submitted, SubmitError>),
    /// Given this seq; accepted if the commit succeeds.
    New(Seq),
    /// Refers to an event earlier in this batch: this answer if the commit
    /// succeeds, `StorageUnavailable` if it fails.
    OnCommit(Result<Submitted, SubmitError>),
}

/// The sending side of the queue, shared by every connection thread.
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
    /// Sequence number the next accepted event gets.
    next_seq: Seq,
    /// Seqs handed out before this process started (durable mode): the
    /// counts are this process's, the seqs continue.
    base: Seq,
    /// Recently accepted `event_id`s, for idempotent retries.
    seen: Dedupe,
}

/// The idempotency window: `event_id` → (seq, content fingerprint) for the
/// last `capacity` ids accepted within `ttl`. Lives under the intake lock,
/// so "is it a duplicate?" and "queue it" are one atomic step. Bounded in
/// count and age, so a flood of unique ids cannot grow it.
struct Dedupe {
    by_id: HashMap<Box<str>, (Seq, u64)>,
    /// Ids in the order they were accepted, with when; the oldest leave first.
    order: VecDeque<(Box<str>, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl Dedupe {
    fn forget_old(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if self.order.len() <= self.capacity && now.duration_since(*at) < self.ttl {
                break;
            }
            self.by_id.remove(id);
            self.order.pop_front();
        }
    }

    fn remember(&mut self, id: Box<str>, seq: Seq, fingerprint: u64, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.by_id.insert(id.clone(), (seq, fingerprint));
        self.order.push_back((id, now));
        self.forget_old(now);
    }
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
                seen: Dedupe {
                    by_id: HashMap::new(),
                    order: VecDeque::new(),
                    capacity: window,
                    ttl,
                },
            }),
            capacity,
            saturated: AtomicBool::new(false),
            doorbell: Arc::clone(&doorbell),
        };
        let jobs = Jobs {
            job_rx,
            doorbell,
            just_worked: false,
        };
        (intake, jobs)
    }

    /// Queues `update` and returns the sequence number it was given.
    /// Never blocks waiting for room.
    pub fn submit(
        &self,
        update: ProductUpdate,
        request_id: OwnedRequestId,
    ) -> Result<Submitted, SubmitError> {
        let now = Instant::now();
        // Only an event with an id can be a retry.
        let fingerprint = update.event_id.as_ref().map_or(0, |_| update.fingerprint());
        let mut state = self.lock();
        if let Some(event_id) = &update.event_id {
            state.seen.forget_old(now);
            if let Some(&(seq, seen_fingerprint)) = state.seen.by_id.get(event_id) {
                return if seen_fingerprint == fingerprint {
                    Ok(Submitted {
                        seq,
                        duplicate: true,
                    })
                } else {
                    Err(SubmitError::IdempotencyConflict { seq })
                };
            }
        }
        let event_id = update.event_id.clone();
        let seq = state.next_seq;
        let Some(job_tx) = &state.job_tx else {
            return Err(SubmitError::ShuttingDown);
        };
        let job = Job {
            seq,
            update,
            request_id,
            accepted_at: now,
        };
        match job_tx.try_send(job) {
            Ok(()) => {
                let depth = job_tx.len();
                state.next_seq += 1;
                if let Some(event_id) = event_id {
                    state.seen.remember(event_id, seq, fingerprint, now);
                }
                drop(state);
                self.doorbell.ring(depth);
                if self.saturated.load(Ordering::Relaxed)
                    && self.saturated.swap(false, Ordering::Relaxed)
                {
                    log::info!("event queue has room again; accepting events");
                }
                Ok(Submitted {
                    seq,
                    duplicate: false,
                })
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
        let accepted = state.next_seq - 1 - state.base;
        drop(state);
        // After the sender is gone: a worker woken by this finds the queue
        // disconnected once it is empty.
        self.doorbell.close();
        accepted
    }

    /// Durable `commit` and `fsync` modes: admits a batch of events
    /// together with their commit, all under the intake lock. Each event is
    /// checked against the idempotency window and the batch's earlier
    /// events and given the next seq if the queue has room for it; then
    /// `commit` makes those durable (it returns true if it did). Only then
    /// are they queued for the workers, remembered in the window and
    /// counted. So a seq is handed out only to a committed event (seqs stay
    /// gap-free), nothing is acknowledged that is not committed, and
    /// [`Intake::close`], which takes the same lock, comes before or after
    /// a whole batch, never between its commit and its queueing.
    ///
    /// The caller (the committer) is the queue's only sender in these
    /// modes, so the room counted here is still there when it sends.
    pub fn admit(
        &self,
        batch: Vec<Submission>,
        commit: impl FnOnce(&[Admitted<'_>]) -> bool,
    ) -> Vec<Result<Submitted, SubmitError>> {
        let now = Instant::now();
        let mut state = self.lock();
        let IntakeState {
            job_tx,
            next_seq,
            seen,
            ..
        } = &mut *state;
        let Some(job_tx) = job_tx.as_ref() else {
            return batch
                .iter()
                .map(|_| Err(SubmitError::ShuttingDown))
                .collect();
        };
        seen.forget_old(now);
        let mut room = self.capacity.saturating_sub(job_tx.len());
        let mut standings = Vec::with_capacity(batch.len());
        let mut admitted = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<&str, (Seq, u64)> = HashMap::new();
        let mut seq = *next_seq;
        for submission in &batch {
            let update = &submission.update;
            let fingerprint = update.event_id.as_ref().map_or(0, |_| update.fingerprint());
            if let Some(event_id) = &update.event_id {
                let answer = |(seq, seen_fingerprint): (Seq, u64)| {
                    if seen_fingerprint == fingerprint {
                        Ok(Submitted {
                            seq,
                            duplicate: true,
                        })
                    } else {
                        Err(SubmitError::IdempotencyConflict { seq })
                    }
                };
                if let Some(&earlier) = seen.by_id.get(event_id) {
                    standings.push(Standing::Settled(answer(earlier)));
                    continue;
                }
                if let Some(&earlier) = in_batch.get(&**event_id) {
                    standings.push(Standing::OnCommit(answer(earlier)));
                    continue;
                }
            }
            if room == 0 {
                standings.push(Standing::Settled(Err(SubmitError::Full {
                    capacity: self.capacity,
                })));
                continue;
            }
            room -= 1;
            if let Some(event_id) = &update.event_id {
                in_batch.insert(event_id, (seq, fingerprint));
            }
            admitted.push(Admitted {
                seq,
                update,
                fingerprint,
            });
            standings.push(Standing::New(seq));
            seq += 1;
        }
        let committed = admitted.is_empty() || commit(&admitted);
        let fingerprints: Vec<u64> = admitted.iter().map(|a| a.fingerprint).collect();
        drop(in_batch);
        drop(admitted);
        let mut results = Vec::with_capacity(batch.len());
        let mut fingerprints = fingerprints.into_iter();
        for (submission, standing) in batch.into_iter().zip(standings) {
            results.push(match standing {
                Standing::Settled(answer) => answer,
                Standing::OnCommit(answer) if committed => answer,
                Standing::OnCommit(_) => Err(SubmitError::StorageUnavailable),
                Standing::New(_) if !committed => Err(SubmitError::StorageUnavailable),
                Standing::New(seq) => {
                    let fingerprint = fingerprints.next().unwrap_or(0);
                    let event_id = submission.update.event_id.clone();
                    let job = Job {
                        seq,
                        update: submission.update,
                        request_id: submission.request_id,
                        accepted_at: submission.accepted_at,
                    };
                    // Cannot fail: the room was counted above and only the
                    // committer sends. If the workers were gone anyway, the
                    // event is committed and the next start replays it.
                    if job_tx.try_send(job).is_err() {
                        log::error!(
                            "seq={seq} is committed but could not be queued; it is applied at the next start"
                        );
                    }
                    if let Some(event_id) = event_id {
                        seen.remember(event_id, seq, fingerprint, now);
                    }
                    Ok(Submitted {
                        seq,
                        duplicate: false,
                    })
                }
            });
        }
        if committed {
            *next_seq = seq;
        }
        let depth = job_tx.len();
        drop(state);
        if committed && depth > 0 {
            self.doorbell.ring(depth);
        }
        results
    }

    /// At startup in durable mode, before any event: continue the seqs
    /// after `next_seq - 1` and remember the window's event ids (oldest
    /// first, each with how long ago it was accepted).
    pub fn restore(&self, next_seq: Seq, window: Vec<(Box<str>, Seq, u64, Duration)>) {
        let now = Instant::now();
        let mut state = self.lock();
        state.next_seq = state.next_seq.max(next_seq);
        state.base = state.next_seq - 1;
        for (event_id, seq, fingerprint, age) in window {
            let at = now.checked_sub(age).unwrap_or(now);
            state
                .seen
                .by_id
                .insert(event_id.clone(), (seq, fingerprint));
            state.seen.order.push_back((event_id, at));
        }
        state.seen.forget_old(now);
    }

    /// Continues the seqs at `next_seq`, skipping the ones before it (a
    /// PostgreSQL instance that reloaded its store past them); the count of
    /// accepted events stays as it was.
    pub fn skip_to(&self, next_seq: Seq) {
        let mut state = self.lock();
        if next_seq > state.next_seq {
            let skipped = next_seq - state.next_seq;
            state.next_seq = next_seq;
            state.base += skipped;
        }
    }

    /// The idempotency window's entries with a seq in `after + 1 ..=
    /// through`, oldest first: (event_id, seq, fingerprint, age). For
    /// durable `async` mode, which writes them with the products that
    /// include their events: an entry is remembered under the intake lock
    /// before its event is queued, so every event a worker has applied has
    /// its entry here (unless it has left the window).
    pub fn window_between(&self, after: Seq, through: Seq) -> Vec<(Box<str>, Seq, u64, Duration)> {
        let state = self.lock();
        let seen = &state.seen;
        let seq_of = |id: &str| seen.by_id.get(id).map(|&(seq, _)| seq);
        // `order` is in acceptance order, which is seq order.
        let start = seen
            .order
            .partition_point(|(id, _)| seq_of(id).is_some_and(|seq| seq <= after));
        let now = Instant::now();
        seen.order
            .range(start..)
            .filter_map(|(id, at)| {
                let &(seq, fingerprint) = seen.by_id.get(id)?;
                (seq > after && seq <= through)
                    .then(|| (id.clone(), seq, fingerprint, now.duration_since(*at)))
            })
            .collect()
    }

    /// The seq the next accepted event will get.
    pub fn next_seq(&self) -> Seq {
        self.lock().next_seq
    }

    /// Events accepted so far by this process.
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
        self.lock().seen.by_id.len()
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

/// Dropping the intake without `close` (a library user's shortcut) must
/// still let the workers finish: the sender goes with it, and this wakes
/// them so they see the queue disconnected.
impl Drop for Intake {
    fn drop(&mut self) {
        self.doorbell.close();
    }
}

/// The receiving end of the queue, one clone per worker.
#[derive(Clone)]
pub struct Jobs {
    job_rx: Receiver<Job>,
    doorbell: Arc<Doorbell>,
    /// The last call returned an event: on an empty queue, linger first.
    just_worked: bool,
}

/// The events, in queue order, for one worker: `for job in jobs { … }`.
impl Iterator for Jobs {
    type Item = Job;

    /// The next event, waiting while the queue is empty. `None` once the
    /// intake is closed and every queued event has been taken: a closed queue
    /// is drained before it ends.
    fn next(&mut self) -> Option<Job> {
        loop {
            match self.job_rx.try_recv() {
                Ok(job) => {
                    self.just_worked = true;
                    return Some(job);
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {
                    let job_rx = &self.job_rx;
                    let linger = std::mem::take(&mut self.just_worked).then_some(LINGER);
                    self.doorbell.wait_unless(linger, || !job_rx.is_empty());
                }
            }
        }
    }
}

/// Where idle workers wait, and how the intake wakes one.
///
/// The protocol that makes a lost wake-up impossible: a worker announces
/// itself (`sleepers += 1`, and `lingerers += 1` for a timed wait) *before*
/// it looks at the queue one last time, and `ring` looks at the counts
/// *after* the event is in the queue, with a `SeqCst` fence on both sides.
/// So either the worker's last look sees the event, or `ring` sees the
/// waiter. A sleeper it then wakes (taking the lock, which the worker holds
/// until it is actually waiting); a lingerer needs no wake-up, because it
/// looks at the queue again within [`LINGER`] on its own, and when it gives up
/// lingering it goes through this protocol again as a sleeper.
struct Doorbell {
    /// Workers waiting (timed or not), or about to; read by `ring` without
    /// the lock.
    sleepers: AtomicUsize,
    /// Of those, the ones in a timed wait ([`LINGER`]).
    lingerers: AtomicUsize,
    /// True once the intake is closed: nobody waits any more.
    closed: Mutex<bool>,
    bell: Condvar,
}

impl Doorbell {
    fn new() -> Doorbell {
        Doorbell {
            sleepers: AtomicUsize::new(0),
            lingerers: AtomicUsize::new(0),
            closed: Mutex::new(false),
            bell: Condvar::new(),
        }
    }

    /// Worker side: waits until rung (or for at most `linger`), unless
    /// `work_waiting()` says there is work already or the intake is closed.
    /// May return spuriously; callers look at the queue again.
    fn wait_unless(&self, linger: Option<Duration>, work_waiting: impl Fn() -> bool) {
        let closed = self.lock();
        if *closed {
            return;
        }
        // One lingerer is enough to catch the next events; the others sleep
        // until rung. (`lingerers` only changes under this lock.)
        let linger = linger.filter(|_| self.lingerers.load(Ordering::SeqCst) == 0);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        if linger.is_some() {
            self.lingerers.fetch_add(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        let _closed = match linger {
            _ if work_waiting() => closed,
            None => sync::wait(&self.bell, closed),
            Some(timeout) => sync::wait_timeout(&self.bell, closed, timeout),
        };
        if linger.is_some() {
            self.lingerers.fetch_sub(1, Ordering::SeqCst);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Intake side, after an event is queued (`depth` now waiting): wakes a
    /// waiting worker unless one is lingering and the backlog is small. With
    /// every worker busy this is two atomic loads.
    fn ring(&self, depth: usize) {
        fence(Ordering::SeqCst);
        if self.lingerers.load(Ordering::SeqCst) > 0 && depth < WAKE_DEPTH {
            return;
        }
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _closed = self.lock();
            self.bell.notify_one();
        }
    }

    /// Wakes every worker for good.
    fn close(&self) {
        *self.lock() = true;
        self.bell.notify_all();
    }

    // Poisoning: a bool that is only ever set to true; ignore it.
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::price_update as event;

    #[test]
    fn sequence_numbers_start_at_one_and_follow_queue_order() {
        let (intake, jobs) = Intake::new(4);
        assert_eq!(
            intake.submit(event("a"), "test".into()).map(|s| s.seq),
            Ok(1)
        );
        assert_eq!(
            intake.submit(event("b"), "test".into()).map(|s| s.seq),
            Ok(2)
        );
        let seqs: Vec<Seq> = jobs.job_rx.try_iter().map(|job| job.seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(intake.accepted(), 2);
    }

    #[test]
    fn full_queue_is_refused_at_once_without_using_a_seq() {
        let (intake, mut jobs) = Intake::new(2);
        intake.submit(event("a"), "test".into()).unwrap();
        intake
            .submit(event("b"), "test".into())
            .map(|s| s.seq)
            .unwrap();
        assert_eq!(intake.depth(), 2);
        assert_eq!(
            intake.submit(event("c"), "test".into()).map(|s| s.seq),
            Err(SubmitError::Full { capacity: 2 })
        );
        jobs.next().unwrap();
        assert_eq!(
            intake.submit(event("c"), "test".into()).map(|s| s.seq),
            Ok(3)
        );
    }

    #[test]
    fn close_keeps_queued_events_and_refuses_new_ones() {
        let (intake, mut jobs) = Intake::new(4);
        intake.submit(event("a"), "test".into()).unwrap();
        assert_eq!(intake.close(), 1);
        assert!(intake.is_closed());
        assert_eq!(
            intake.submit(event("b"), "test".into()).map(|s| s.seq),
            Err(SubmitError::ShuttingDown)
        );
        // The queued event is still delivered, then the queue reports the end.
        assert_eq!(jobs.next().unwrap().seq, 1);
        assert!(jobs.next().is_none());
    }

    #[test]
    fn a_waiting_worker_gets_every_event_whether_lingering_or_asleep() {
        let (intake, jobs) = Intake::new(64);
        let doorbell = Arc::clone(&intake.doorbell);
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            for job in jobs {
                seen_tx.send(job.seq).unwrap();
            }
        });
        let wait = Duration::from_secs(10);
        for seq in 1..=40 {
            if seq % 2 == 0 {
                // Let the worker give up lingering: the event must then be
                // delivered by a ring, not by the worker looking on its own.
                let deadline = Instant::now() + wait;
                while !(doorbell.sleepers.load(Ordering::SeqCst) == 1
                    && doorbell.lingerers.load(Ordering::SeqCst) == 0)
                {
                    assert!(Instant::now() < deadline, "worker never went to sleep");
                    std::thread::yield_now();
                }
            }
            assert_eq!(
                intake.submit(event("a"), "test".into()).map(|s| s.seq),
                Ok(seq)
            );
            assert_eq!(
                seen_rx.recv_timeout(wait),
                Ok(seq),
                "event {seq} was not picked up"
            );
        }
        intake.close();
        worker.join().unwrap();
    }
}
