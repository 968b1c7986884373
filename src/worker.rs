//! Worker threads: each takes events off the queue and applies them to the
//! store until the queue is closed and empty.
//!
//! Each [`Worker`] owns its thread's `JoinHandle`. The thread owns a clone
//! of the queue's receiving end ([`Jobs`]) and a clone of `done_tx`, a channel
//! sender that is never sent on: when the last worker exits, the last
//! `done_tx` is dropped and whoever waits on `done_rx` sees "disconnected".
//! That lets shutdown wait for "all workers finished" with a deadline
//! (`done_rx.recv_deadline`), which `JoinHandle::join` cannot do.
//!
//! # Batches
//!
//! A worker that has taken an event also takes the events queued behind it,
//! up to [`MAX_RUN`], and applies them together: one hold of the store's
//! write lock, one report to the watermark, one reading of the clock.
//! Under load that divides the per-event cost of the locks (contended by
//! every worker) by the batch; an idle service still applies each event as
//! it comes, a batch of one. A reader waits at most one batch's applies for
//! the lock.
//!
//! # Control: pause and abandon
//!
//! Between taking its first event and the rest of a batch, a worker passes
//! a [`Control`] checkpoint. Normally that is one atomic load. It exists
//! for two reasons:
//!
//! - **abandon**: if the drain deadline passes, shutdown must stop the
//!   workers even though events are still queued. Closing the channel cannot
//!   do that (a closed channel still delivers what it holds), so shutdown
//!   flips the control to `Abandon` and each worker leaves its loop after at
//!   most the batch it holds. The events left are counted as not applied.
//! - **pause**: lets a test (or a demonstration) hold the workers still so
//!   the queue fills and backpressure can be observed. A paused worker holds
//!   one event, and takes no more until resumed.

use std::any::Any;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::intake::{Job, Jobs};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::store::{ApplyOutcome, MAX_RUN, Store};

/// Counts kept by the workers, read by shutdown (and, later, metrics).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Events applied (some or all of their fields may have been stale).
    pub applied: AtomicU64,
    /// Fields not written because a newer event had already set them.
    pub stale_fields: AtomicU64,
    /// Events whose apply panicked; the worker caught it and went on.
    pub panics: AtomicU64,
}

/// A running worker thread.
pub struct Worker {
    id: usize,
    handle: JoinHandle<()>,
}

impl Worker {
    /// Starts worker `id` on a thread named `worker-{id}`. `apply` is called
    /// once per batch and reports what became of each event; a panic it
    /// caught is counted and logged.
    pub fn spawn<F>(
        id: usize,
        jobs: Jobs,
        done_tx: Sender<()>,
        control: Arc<Control>,
        counters: Arc<WorkerCounters>,
        apply: F,
    ) -> io::Result<Worker>
    where
        F: Fn(&[Job], &mut Vec<Applied>) + Send + 'static,
    {
        let handle = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || {
                run(id, jobs, &control, &counters, apply);
                log::debug!("worker-{id} exiting");
                // Dropped last, on purpose: the thread is done with the queue.
                drop(done_tx);
            })?;
        Ok(Worker { id, handle })
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// Waits for the thread to end. `Err` means it panicked outside an apply
    /// (a bug in the loop itself).
    pub fn join(self) -> thread::Result<()> {
        self.handle.join()
    }
}

/// What became of one event: applied, with what it did, or its apply
/// panicked, with the panic's message.
pub type Applied = Result<ApplyOutcome, String>;

/// What the service's workers do with each batch: apply its events to the
/// store under one hold of the lock, then report their seqs to the
/// watermark (also those whose apply panicked, so `min_seq` readers behind
/// them are not stalled), then record how long each waited in the queue.
pub fn apply_to(
    store: Store,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
) -> impl Fn(&[Job], &mut Vec<Applied>) + Send + Clone + 'static {
    move |batch, applied| {
        // Made before the writer, so dropped after it (a reader the
        // watermark wakes finds the events applied), and dropped even if
        // something here panics outside `caught`.
        let report = DoneOnDrop(&progress, batch);
        let mut writer = store.writer();
        for job in batch {
            applied.push(caught(|| writer.apply(job.seq, &job.update)));
        }
        drop(writer);
        drop(report);
        let now = Instant::now();
        metrics.queue_wait_seconds.observe_all(
            batch
                .iter()
                .map(|job| now.saturating_duration_since(job.accepted_at)),
        );
    }
}

/// Reports a batch's seqs to the watermark when dropped: after their
/// applies, or while unwinding from a panic, so that `min_seq` readers
/// behind them are never stalled.
struct DoneOnDrop<'a>(&'a Progress, &'a [Job]);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.done_all(self.1.iter().map(|job| job.seq));
    }
}

/// Runs one event's apply, turning a panic into its message: one bad event
/// must not take its batch (or its worker) down with it.
pub fn caught(apply: impl FnOnce() -> ApplyOutcome) -> Applied {
    panic::catch_unwind(AssertUnwindSafe(apply)).map_err(|payload| message(&*payload))
}

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_owned())
}

fn run<F>(id: usize, mut jobs: Jobs, control: &Control, counters: &WorkerCounters, apply: F)
where
    F: Fn(&[Job], &mut Vec<Applied>),
{
    let mut batch = Vec::with_capacity(MAX_RUN);
    let mut applied = Vec::with_capacity(MAX_RUN);
    // `Jobs` waits while the queue is empty and ends once the intake is
    // closed *and* the queue is empty: a closed queue is drained before the
    // loop ends.
    while let Some(first) = jobs.next() {
        if control.checkpoint() == Checkpoint::Stop {
            return;
        }
        batch.push(first);
        jobs.take_queued(&mut batch, MAX_RUN);
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| apply(&batch, &mut applied)))
        {
            // A panic outside every event's own `caught` (a bug in `apply`):
            // the events it gave no outcome count as panicked.
            applied.resize(batch.len(), Err(message(&*payload)));
        }
        let mut done = 0;
        for (job, outcome) in batch.drain(..).zip(applied.drain(..)) {
            match outcome {
                Ok(outcome) => {
                    done += 1;
                    if outcome.stale > 0 {
                        counters
                            .stale_fields
                            .fetch_add(u64::from(outcome.stale), Ordering::Relaxed);
                    }
                    log::debug!(
                        "worker-{id} applied seq={} product_id={:?} request_id={} fields_written={} fields_stale={} queued_for={:?}",
                        job.seq,
                        job.update.product_id,
                        job.request_id,
                        outcome.written,
                        outcome.stale,
                        job.accepted_at.elapsed()
                    );
                }
                Err(reason) => {
                    counters.panics.fetch_add(1, Ordering::Relaxed);
                    log::error!(
                        "worker-{id} panicked applying seq={} product_id={:?} request_id={}: {reason}; event not applied, worker continues",
                        job.seq,
                        job.update.product_id,
                        job.request_id
                    );
                }
            }
        }
        counters.applied.fetch_add(done, Ordering::Relaxed);
    }
}

/// The pool: every worker, the end of the channel that tells when all have
/// exited, and the switch that pauses or abandons them. Owned by
/// [`Running`](crate::Running), which waits for it at shutdown.
pub struct Workers {
    workers: Vec<Worker>,
    /// Never receives a message: it disconnects when the last worker exits.
    done_rx: Receiver<()>,
    control: Arc<Control>,
    counters: Arc<WorkerCounters>,
}

impl Workers {
    /// Starts `count` workers named `worker-0` .. on the queue's receiving
    /// end. If the OS refuses a thread, the ones started are abandoned (they
    /// exit once `jobs`'s intake closes) and the error names the thread.
    pub fn spawn<F>(count: usize, jobs: Jobs, apply: F) -> Result<Workers, (String, io::Error)>
    where
        F: Fn(&[Job], &mut Vec<Applied>) + Send + Clone + 'static,
    {
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let control = Arc::new(Control::default());
        let counters = Arc::new(WorkerCounters::default());
        let mut workers = Vec::with_capacity(count);
        for id in 0..count {
            let spawned = Worker::spawn(
                id,
                jobs.clone(),
                done_tx.clone(),
                Arc::clone(&control),
                Arc::clone(&counters),
                apply.clone(),
            );
            match spawned {
                Ok(worker) => workers.push(worker),
                Err(source) => {
                    control.abandon();
                    return Err((format!("worker-{id}"), source));
                }
            }
        }
        // Only the workers hold `done_tx` now: the last one to exit
        // disconnects `done_rx`.
        Ok(Workers {
            workers,
            done_rx,
            control,
            counters,
        })
    }

    /// What the workers count (applied events, stale fields, panics).
    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// The switch that pauses the workers (for tests and demonstrations).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Shutdown, once the intake is closed: waits until every worker has
    /// drained the queue and exited, or `deadline` passes, in which case
    /// each is told to stop after at most the batch it holds. True if
    /// drained.
    pub fn drain(&self, deadline: Instant) -> bool {
        match self.done_rx.recv_deadline(deadline) {
            Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) | Ok(()) => {
                self.control.abandon();
                false
            }
        }
    }

    /// Joins every worker thread; returns how many had panicked outside an
    /// apply (a bug in the loop itself), each logged.
    pub fn join(self) -> usize {
        let mut panicked = 0;
        for worker in self.workers {
            let id = worker.id();
            if worker.join().is_err() {
                log::error!("shutdown: worker-{id} had panicked");
                panicked += 1;
            }
        }
        panicked
    }
}

/// What a worker does at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    Proceed,
    Stop,
}

const RUN: u8 = 0;
const PAUSE: u8 = 1;
const ABANDON: u8 = 2;

/// Shared switch between shutdown (or a test) and the workers.
/// `Run` → `Pause` → `Run` any number of times; `Abandon` is final.
#[derive(Debug, Default)]
pub struct Control {
    /// The mode, readable without the lock on the fast path.
    mode: AtomicU8,
    /// The same mode under a lock, for waiting on changes.
    lock: Mutex<u8>,
    changed: Condvar,
}

impl Control {
    /// Returns at once while running; blocks while paused; says `Stop` once
    /// abandoned.
    pub fn checkpoint(&self) -> Checkpoint {
        if self.mode.load(Ordering::Acquire) == RUN {
            return Checkpoint::Proceed;
        }
        let mut mode = self.lock();
        while *mode == PAUSE {
            mode = self
                .changed
                .wait(mode)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if *mode == ABANDON {
            Checkpoint::Stop
        } else {
            Checkpoint::Proceed
        }
    }

    pub fn pause(&self) {
        self.set(PAUSE);
    }

    pub fn resume(&self) {
        self.set(RUN);
    }

    /// Makes every worker stop at its next checkpoint, paused or not.
    pub fn abandon(&self) {
        self.set(ABANDON);
    }

    fn set(&self, new: u8) {
        let mut mode = self.lock();
        if *mode == ABANDON {
            return;
        }
        *mode = new;
        self.mode.store(new, Ordering::Release);
        drop(mode);
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, u8> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::Intake;
    use std::time::Duration;

    use crate::event::price_update as event;

    struct Harness {
        intake: Intake,
        done_rx: Receiver<()>,
        control: Arc<Control>,
        counters: Arc<WorkerCounters>,
        worker: Worker,
    }

    /// A worker whose batches apply each event with `apply`.
    fn start<F>(apply: F) -> Harness
    where
        F: Fn(&Job) -> ApplyOutcome + Send + 'static,
    {
        let apply = move |batch: &[Job], applied: &mut Vec<Applied>| {
            applied.extend(batch.iter().map(|job| caught(|| apply(job))));
        };
        let (intake, jobs) = Intake::new(16);
        let (done_tx, done_rx) = crossbeam_channel::bounded(0);
        let control = Arc::new(Control::default());
        let counters = Arc::new(WorkerCounters::default());
        let worker =
            Worker::spawn(1, jobs, done_tx, control.clone(), counters.clone(), apply).unwrap();
        Harness {
            intake,
            done_rx,
            control,
            counters,
            worker,
        }
    }

    fn wait_done(done_rx: &Receiver<()>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(
            done_rx
                .recv_deadline(deadline)
                .is_err_and(|e| !e.is_timeout()),
            "worker did not finish within 10 s"
        );
    }

    #[test]
    fn drains_the_queue_after_it_is_closed() {
        let h = start(|_| ApplyOutcome {
            written: 1,
            stale: 0,
        });
        for _ in 0..10 {
            h.intake.accept(event("a"), "test".into()).unwrap();
        }
        h.intake.close();
        wait_done(&h.done_rx);
        assert_eq!(h.worker.id(), 1);
        h.worker.join().unwrap();
        assert_eq!(h.counters.applied.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn a_panicking_event_is_counted_and_the_worker_goes_on() {
        let h = start(|job| {
            if &*job.update.product_id == "boom" {
                panic!("deliberate test panic");
            }
            ApplyOutcome {
                written: 1,
                stale: 1,
            }
        });
        h.intake.accept(event("a"), "test".into()).unwrap();
        h.intake.accept(event("boom"), "test".into()).unwrap();
        h.intake.accept(event("b"), "test".into()).unwrap();
        h.intake.close();
        wait_done(&h.done_rx);
        h.worker.join().unwrap();
        assert_eq!(h.counters.applied.load(Ordering::Relaxed), 2);
        assert_eq!(h.counters.panics.load(Ordering::Relaxed), 1);
        assert_eq!(h.counters.stale_fields.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_panic_in_the_middle_of_a_batch_spares_the_rest_of_it() {
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let h = start(move |job| {
            seen_tx.send(job.seq).unwrap();
            if &*job.update.product_id == "boom" {
                panic!("deliberate test panic");
            }
            ApplyOutcome::default()
        });
        // Paused, the worker holds the first event at its checkpoint; on
        // resume it takes the two queued behind it: one batch of three.
        h.control.pause();
        for id in ["a", "boom", "b"] {
            h.intake.accept(event(id), "test".into()).unwrap();
        }
        h.control.resume();
        h.intake.close();
        wait_done(&h.done_rx);
        h.worker.join().unwrap();
        assert_eq!(seen_rx.try_iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(h.counters.applied.load(Ordering::Relaxed), 2);
        assert_eq!(h.counters.panics.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn pause_holds_events_and_abandon_releases_the_worker() {
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let h = start(move |job| {
            seen_tx.send(job.seq).unwrap();
            ApplyOutcome::default()
        });
        h.control.pause();
        h.intake.accept(event("a"), "test".into()).unwrap();
        h.intake.accept(event("a"), "test".into()).unwrap();
        // Paused: nothing is applied. (A bounded wait for something that must
        // not happen; the positive case below proves the worker is alive.)
        assert!(seen_rx.recv_timeout(Duration::from_millis(100)).is_err());
        h.control.resume();
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(10)), Ok(1));
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(10)), Ok(2));

        h.control.pause();
        h.intake.accept(event("a"), "test".into()).unwrap();
        h.intake.accept(event("a"), "test".into()).unwrap();
        h.control.abandon();
        wait_done(&h.done_rx);
        h.worker.join().unwrap();
        // Abandoned while paused: neither queued event was applied.
        assert_eq!(h.counters.applied.load(Ordering::Relaxed), 2);
        assert!(seen_rx.try_recv().is_err());
        // Abandon is final.
        h.control.resume();
        assert_eq!(h.control.checkpoint(), Checkpoint::Stop);
    }
}
