//! The bounded queue between the intake and the workers: the [`Job`] it
//! carries, its receiving end ([`Jobs`], one clone per worker), and the
//! [`Doorbell`] idle workers wait on.
//!
//! # Why the workers do not block in `recv()`
//!
//! The workers take events through [`Jobs`] (an iterator): `try_recv`, and
//! when the queue is empty, sleep on a condition variable (the doorbell)
//! that the intake rings only when a worker is actually asleep. crossbeam's
//! blocking `recv` spins and calls `sched_yield` several times before it
//! parks; with four mostly idle workers on a small machine that spinning
//! cost more CPU per event than the rest of the request (ARCHITECTURE.md,
//! "Waking workers"). The channel is still crossbeam's bounded channel:
//! only the waiting is ours.
//!
//! Waking a sleeping thread still costs a few microseconds, so a worker
//! that has just worked *lingers*: it waits at most [`LINGER`] for more work
//! before it sleeps for good, and while one lingers the intake does not ring
//! (unless [`WAKE_DEPTH`] events are already waiting). One lingerer at a
//! time is enough: the others sleep until rung. Under load one wake-up then
//! serves a batch of events, the way network cards coalesce interrupts; the
//! price is that an event may wait up to [`LINGER`] before it is applied
//! (an idle service wakes its worker at once: there is no lingerer then).

use std::sync::PoisonError;
use std::time::{Duration, Instant};

// Through `sync.rs`, so that `tests/loom.rs` can model-check the doorbell
// with loom's types.
use crate::event::ProductUpdate;
use crate::request_id::OwnedRequestId;
use crate::store::Seq;
use crate::sync::channel::{Receiver, TryRecvError};
use crate::sync::{self, Arc, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering, fence};

/// How long a worker that has just applied an event waits for the next one
/// before it sleeps until woken. Bounds how long an event can sit in the
/// queue while a worker lingers; each window costs the lingerer one timed
/// wake-up, so a longer window means fewer of them under load.
pub const LINGER: Duration = Duration::from_millis(1);

/// Queue depth at which the intake wakes another worker even though one is
/// lingering: a backlog is worth more hands. Well above what one [`LINGER`]
/// window collects at full speed, so that the lingerer is not joined by a
/// woken worker in every window.
pub const WAKE_DEPTH: usize = 256;

/// One accepted event on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub seq: Seq,
    pub update: ProductUpdate,
    /// The id of the request that carried it, for the worker's log line.
    pub request_id: OwnedRequestId,
    /// When it was accepted (for the time spent queued).
    pub accepted_at: Instant,
}

/// The receiving end of the queue, one clone per worker.
#[derive(Clone)]
pub struct Jobs {
    job_rx: Receiver<Job>,
    doorbell: Arc<Doorbell>,
    /// The last call returned an event: on an empty queue, linger first.
    just_worked: bool,
}

impl Jobs {
    pub(super) fn new(job_rx: Receiver<Job>, doorbell: Arc<Doorbell>) -> Jobs {
        Jobs {
            job_rx,
            doorbell,
            just_worked: false,
        }
    }
}

impl Jobs {
    /// Moves events already queued into `batch` until it holds `max`,
    /// without waiting: a worker that has one event takes those behind it
    /// too (see `worker.rs`, "Batches").
    pub fn take_queued(&mut self, batch: &mut Vec<Job>, max: usize) {
        while batch.len() < max {
            match self.job_rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => return,
            }
        }
    }
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
pub(super) struct Doorbell {
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
    pub(super) fn new() -> Doorbell {
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
    pub(super) fn ring(&self, depth: usize) {
        fence(Ordering::SeqCst);
        if self.lingerers.load(Ordering::SeqCst) > 0 && depth < WAKE_DEPTH {
            return;
        }
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _closed = self.lock();
            self.bell.notify_one();
        }
    }

    /// Someone waits for a queued event to be applied (a reader's
    /// `min_seq`, RabbitMQ's acknowledgement in memory mode): wakes a
    /// lingering worker now instead of at the end of its window, so the
    /// wait costs a wake-up rather than up to [`LINGER`]. Without a
    /// lingerer there is nothing to hurry: `ring` woke a sleeper already.
    pub(super) fn hurry(&self) {
        fence(Ordering::SeqCst);
        if self.lingerers.load(Ordering::SeqCst) > 0 {
            let _closed = self.lock();
            self.bell.notify_one();
        }
    }

    /// Wakes every worker for good.
    pub(super) fn close(&self) {
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
    use crate::event::price_update as event;
    use crate::intake::Intake;

    #[test]
    fn a_waiting_worker_gets_every_event_whether_lingering_or_asleep() {
        let (intake, jobs) = Intake::new(64);
        let doorbell = Arc::clone(&jobs.doorbell);
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
                intake.accept(event("a"), "test".into()).map(|s| s.seq),
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
