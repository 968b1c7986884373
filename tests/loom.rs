//! Model checks of the service's hand-made concurrency protocols with loom,
//! which runs each test body in every interleaving of its threads (up to
//! `LOOM_MAX_PREEMPTIONS` preemptions) and fails on a deadlock, a panic or
//! a failed assertion in any of them. Built only with `--cfg loom`:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom
//! ```
//!
//! The code under test is the production code (`intake/mod.rs`,
//! `intake/queue.rs`, `intake/mailbox.rs`, `progress.rs`);
//! `src/sync.rs` gives it loom's mutexes, condition variables, atomics and
//! a loom-visible channel in this build. What each model checks, and the
//! broken variant it was seen to catch, is in ARCHITECTURE.md (the section
//! of each protocol) and in the doc comment of each test.
#![cfg(loom)]

use std::panic;
use std::time::{Duration, Instant};

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use product_update_service::event::ProductUpdate;
use product_update_service::intake::mailbox::{Mailbox, Refused};
use product_update_service::intake::{Intake, Refusal};
use product_update_service::progress::Progress;
use product_update_service::worker::caught;

/// What the models post: a ticket its poster parks on until a committer
/// (or the stop) puts the answer in. (The service posts an event with the
/// reply that answers its client; the mailbox's protocol is the same.)
struct Ticket<T> {
    answer: loom::sync::Mutex<Option<T>>,
    thread: thread::Thread,
}

impl<T> Ticket<T> {
    fn new() -> Ticket<T> {
        Ticket {
            answer: loom::sync::Mutex::new(None),
            thread: thread::current(),
        }
    }

    /// Parks until the answer is in (an unpark before the park is kept).
    fn wait(&self) -> T {
        loop {
            if let Some(answer) = self.answer.lock().unwrap().take() {
                return answer;
            }
            thread::park();
        }
    }

    fn answer(&self, answer: T) {
        *self.answer.lock().unwrap() = Some(answer);
        self.thread.unpark();
    }
}

fn event(product_id: &str) -> ProductUpdate {
    ProductUpdate {
        product_id: product_id.into(),
        price: None,
        stock: Some(1),
        event_id: None,
        version: None,
    }
}

/// The doorbell, a sleeping worker: the worker finds the queue empty and
/// goes to sleep while an event is submitted. In every interleaving the
/// worker takes the event (a lost wake-up would leave it asleep: loom
/// reports the deadlock). Caught: counting the worker as a sleeper after
/// its last look at the queue.
#[test]
fn a_sleeping_worker_always_takes_a_submitted_event() {
    loom::model(|| {
        let (intake, jobs) = Intake::new(4);
        let worker = thread::spawn(move || {
            let mut jobs = jobs;
            jobs.next().map(|job| job.seq)
        });
        assert_eq!(intake.accept(event("a"), "m".into()).map(|s| s.seq), Ok(1));
        assert_eq!(worker.join().unwrap(), Some(1));
    });
}

/// The doorbell, a lingering worker: after an event the worker lingers (a
/// timed wait that `accept` does not ring for; in this build it times out
/// at once) and then sleeps; the next event arrives at any point of that.
/// The worker takes both, in order. Caught: a lingerer that sleeps untimed
/// after its timed wait without looking at the queue again.
#[test]
fn a_lingering_worker_always_takes_the_next_event() {
    loom::model(|| {
        let (intake, jobs) = Intake::new(4);
        intake.accept(event("a"), "m".into()).unwrap();
        let worker = thread::spawn(move || {
            let mut jobs = jobs;
            let first = jobs.next().map(|job| job.seq);
            let second = jobs.next().map(|job| job.seq);
            (first, second)
        });
        assert_eq!(intake.accept(event("b"), "m".into()).map(|s| s.seq), Ok(2));
        assert_eq!(worker.join().unwrap(), (Some(1), Some(2)));
    });
}

/// Two workers, one event: whichever sleeps or lingers, exactly one takes
/// it, and both end when the intake closes.
#[test]
fn of_two_waiting_workers_one_takes_the_event_and_both_end_at_close() {
    loom::model(|| {
        let (intake, jobs) = Intake::new(4);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let jobs = jobs.clone();
                thread::spawn(move || jobs.map(|job| job.seq).collect::<Vec<_>>())
            })
            .collect();
        drop(jobs);
        intake.accept(event("a"), "m".into()).unwrap();
        intake.close();
        let mut seen: Vec<u64> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, [1]);
    });
}

/// The intake, close racing with accept: an event that got its seq (a 202)
/// is always delivered to a worker, `close` counts exactly the events
/// accepted before it, and an accept after it is refused. Caught: closing
/// with a flag checked before the intake lock (an accept that saw the flag
/// open could send after the close had counted).
#[test]
fn close_racing_with_accept_never_loses_an_accepted_event() {
    loom::model(|| {
        let (intake, jobs) = Intake::new(4);
        let intake = Arc::new(intake);
        let submitter = {
            let intake = Arc::clone(&intake);
            thread::spawn(move || match intake.accept(event("a"), "m".into()) {
                Ok(accepted) => Some(accepted.seq),
                Err(Refusal::ShuttingDown) => None,
                Err(other) => panic!("unexpected {other:?}"),
            })
        };
        let closer = {
            let intake = Arc::clone(&intake);
            thread::spawn(move || intake.close())
        };
        let worker = thread::spawn(move || jobs.map(|job| job.seq).collect::<Vec<_>>());
        let accepted = submitter.join().unwrap();
        let counted_at_close = closer.join().unwrap();
        let delivered = worker.join().unwrap();
        assert_eq!(counted_at_close, u64::from(accepted.is_some()));
        assert_eq!(delivered, accepted.into_iter().collect::<Vec<_>>());
        // Closed for good: nothing is accepted afterwards.
        assert_eq!(
            intake.accept(event("b"), "m".into()),
            Err(Refusal::ShuttingDown)
        );
    });
}

/// A deadline no model reaches: only a wake-up ends these waits.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The watermark: seqs finish out of order, and a worker's batch of seqs 1
/// and 3 reports both although seq 1's apply panics (`caught` turns the
/// panic into an outcome), while another worker finishes seq 2 and a
/// reader waits for seq 3. In every interleaving the reader is woken, and
/// never before all three are done. Caught: `done_all` not waking the
/// readers it satisfies, and a reader that files itself after releasing
/// the lock.
#[test]
fn a_min_seq_reader_is_woken_once_its_seq_is_done_and_never_before() {
    // Keep the deliberate panic below quiet (it happens in most iterations);
    // any other panic is still reported.
    let report = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let deliberate = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|message| message.starts_with("a deliberate panic"));
        if !deliberate {
            report(info);
        }
    }));
    loom::model(|| {
        let progress = Arc::new(Progress::default());
        let reader = {
            let progress = Arc::clone(&progress);
            thread::spawn(move || progress.wait_through(3, far()))
        };
        let second = {
            let progress = Arc::clone(&progress);
            thread::spawn(move || progress.done(2))
        };
        let batch = {
            let progress = Arc::clone(&progress);
            thread::spawn(move || {
                let applied = caught(|| panic!("a deliberate panic while applying seq 1"));
                assert!(applied.is_err());
                progress.done_all([1, 3]);
            })
        };
        second.join().unwrap();
        batch.join().unwrap();
        assert_eq!(reader.join().unwrap(), 3);
        assert_eq!(progress.through(), 3);
        assert_eq!(progress.waiting(), 0);
    });
}

/// The watermark, two readers for different seqs: the advance past the
/// first wakes it and leaves the other filed until its own seq is done.
#[test]
fn each_reader_is_woken_by_the_advance_that_reaches_its_seq() {
    loom::model(|| {
        let progress = Arc::new(Progress::default());
        let readers: Vec<_> = [1, 2]
            .into_iter()
            .map(|seq| {
                let progress = Arc::clone(&progress);
                thread::spawn(move || progress.wait_through(seq, far()))
            })
            .collect();
        progress.done(1);
        progress.done(2);
        let woke: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(woke[0] >= 1 && woke[1] == 2, "{woke:?}");
    });
}

/// The committer's loop, as `committer.rs` runs it but without a database:
/// collect a batch, answer each ticket with its place in the order of
/// answers; at shutdown, stop the mailbox and answer what is left with 0
/// (`shutting_down`).
fn committer(mailbox: Arc<Mailbox<Arc<Ticket<u32>>>>) -> thread::JoinHandle<u32> {
    thread::spawn(move || {
        let mut answered = 0;
        loop {
            let collected = mailbox.collect(far(), 1);
            for ticket in collected.batch {
                answered += 1;
                ticket.answer(answered);
            }
            if collected.finishing {
                for ticket in mailbox.stop() {
                    ticket.answer(0);
                }
                return answered;
            }
        }
    })
}

/// The committer's hand-off: a connection thread posts its event and parks
/// on its ticket while the committer is anywhere in its loop (about to
/// sleep, asleep, collecting, answering). In every interleaving the event
/// is collected and the thread gets its answer. Caught: `post` not ringing
/// a sleeping committer, the committer deciding to sleep in a lock section
/// other than its last look, and `answer` waking the thread before the
/// answer is in.
#[test]
fn a_posted_event_is_answered_whatever_the_committer_is_doing() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new());
        let committer = committer(Arc::clone(&mailbox));
        let poster = {
            let mailbox = Arc::clone(&mailbox);
            thread::spawn(move || {
                let ticket = Arc::new(Ticket::new());
                mailbox.post(Arc::clone(&ticket), 4).expect("open");
                ticket.wait()
            })
        };
        assert_eq!(poster.join().unwrap(), 1, "committed, not refused");
        mailbox.finish();
        assert_eq!(committer.join().unwrap(), 1);
    });
}

/// A pool of two committers on one mailbox (PostgreSQL mode): a posted
/// event is collected by exactly one of them and answered, whichever is
/// asleep, collecting or stopping; at shutdown both stop, and only the
/// last one to stop takes the leftovers. Caught: `post` ringing no one
/// when the other committer is the one asleep (one `sleeping` flag for
/// two), `finish` waking only one of two sleepers.
#[test]
fn a_posted_event_is_answered_by_one_of_two_committers() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::with_collectors(2));
        let committers = [
            committer(Arc::clone(&mailbox)),
            committer(Arc::clone(&mailbox)),
        ];
        let ticket = Arc::new(Ticket::new());
        mailbox.post(Arc::clone(&ticket), 4).expect("open");
        assert_eq!(ticket.wait(), 1, "committed, not refused");
        mailbox.finish();
        let committed: u32 = committers.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(committed, 1);
    });
}

/// A pool in which one committer has lost its connection: it stands by
/// with `wait_finishing`, taking nothing, while the other collects. A post
/// is answered by the one that collects, and at shutdown the one standing
/// by is woken too (by `finish`, or by the other's `stop`). Caught:
/// `wait_finishing` waiting on `bell` (a post's ring taken by the
/// committer that cannot commit, and the other asleep with the event).
#[test]
fn a_committer_without_a_connection_leaves_the_events_to_the_other() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::with_collectors(2));
        let working = committer(Arc::clone(&mailbox));
        let standing_by = {
            let mailbox = Arc::clone(&mailbox);
            thread::spawn(move || {
                let seen = mailbox.rousings();
                assert!(mailbox.wait_finishing(far(), seen), "woken by finish");
                for ticket in mailbox.stop() {
                    ticket.answer(0);
                }
            })
        };
        let ticket = Arc::new(Ticket::new());
        mailbox.post(Arc::clone(&ticket), 4).expect("open");
        assert_eq!(ticket.wait(), 1, "committed by the working committer");
        mailbox.finish();
        standing_by.join().unwrap();
        assert_eq!(working.join().unwrap(), 1);
    });
}

/// The committer that could commit fails while a connection thread posts (it saw the health still working) and the
/// other committer stands by. The failure rouses the one standing by,
/// which finds that no committer can commit, collects, and answers the
/// post (a refusal, 0). Caught: `wait_finishing` ignoring a rouse that
/// came between the stand-by's look at the health and its wait, `rouse`
/// waking nobody.
#[test]
fn a_stand_by_committer_takes_over_when_the_other_fails() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::<Arc<Ticket<u32>>>::with_collectors(2));
        let failing = Arc::new(AtomicBool::new(false));
        let standing_by = {
            let (mailbox, failing) = (Arc::clone(&mailbox), Arc::clone(&failing));
            thread::spawn(move || {
                loop {
                    let seen = mailbox.rousings();
                    if !failing.load(Ordering::SeqCst) {
                        if mailbox.wait_finishing(far(), seen) {
                            break;
                        }
                        continue;
                    }
                    let collected = mailbox.collect(far(), 1);
                    for ticket in collected.batch {
                        ticket.answer(0);
                    }
                    if collected.finishing {
                        break;
                    }
                }
                for ticket in mailbox.stop() {
                    ticket.answer(0);
                }
            })
        };
        // The other committer's commit fails (it stops only at the end).
        let failed = {
            let (mailbox, failing) = (Arc::clone(&mailbox), Arc::clone(&failing));
            thread::spawn(move || {
                failing.store(true, Ordering::SeqCst);
                mailbox.rouse();
            })
        };
        if !failing.load(Ordering::SeqCst) {
            let ticket = Arc::new(Ticket::new());
            mailbox.post(Arc::clone(&ticket), 4).expect("open");
            assert_eq!(ticket.wait(), 0, "refused by the committer standing by");
        }
        failed.join().unwrap();
        mailbox.finish();
        standing_by.join().unwrap();
        assert!(mailbox.stop().is_empty(), "nothing left over");
    });
}

/// The committer's shutdown: two connection threads post while `finish`
/// runs. Each post is either refused (`Closed`) or answered, by a commit or
/// by `stop`'s leftovers; nobody waits forever, and nothing is posted once
/// `finish` has returned. Caught: `post` not looking at `finishing`.
#[test]
fn finish_racing_with_posts_answers_every_poster() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new());
        let committer = committer(Arc::clone(&mailbox));
        let posters: Vec<_> = (0..2)
            .map(|_| {
                let mailbox = Arc::clone(&mailbox);
                thread::spawn(move || {
                    let ticket = Arc::new(Ticket::new());
                    match mailbox.post(Arc::clone(&ticket), 4) {
                        Ok(()) => Some(ticket.wait()),
                        Err(refused) => {
                            assert_eq!(refused, Refused::Closed);
                            None
                        }
                    }
                })
            })
            .collect();
        mailbox.finish();
        assert_eq!(
            mailbox.post(Arc::new(Ticket::new()), 4),
            Err(Refused::Closed),
            "a post after finish"
        );
        let answers: Vec<Option<u32>> = posters.into_iter().map(|p| p.join().unwrap()).collect();
        let committed = committer.join().unwrap();
        let numbered = answers
            .iter()
            .filter(|a| matches!(a, Some(n) if *n > 0))
            .count();
        assert_eq!(numbered as u32, committed, "{answers:?}");
    });
}
