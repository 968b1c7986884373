//! The hand-off between the threads that post events to commit (a front
//! door's, through the service) and the committer threads of a durable
//! backend that commit them (SQLite's `commit` and `fsync` modes: one
//! committer; PostgreSQL: one per connection of the pool), as a protocol of
//! its own, with no database in it, so that `tests/loom.rs` can
//! model-check it:
//!
//! - [`Mailbox`]: a connection thread [`post`](Mailbox::post)s its event;
//!   the committer [`collect`](Mailbox::collect)s everything posted as one
//!   batch, sleeping on a condition variable while nothing is. The two
//!   rules that make it safe: `post` rings the bell when the committer is
//!   asleep, and the committer decides to sleep (sets `sleeping`) under
//!   the same lock as its last look at `pending`, so a post lands either
//!   before that look (and is seen) or after `sleeping` is set (and rings).
//!   Shutdown: [`finish`](Mailbox::finish) refuses later posts and wakes
//!   the committer, which commits what is left, then
//!   [`stop`](Mailbox::stop)s collecting and answers whatever is still in
//!   the mailbox, so no poster waits forever; [`wait_stopped`](Mailbox::wait_stopped)
//!   tells shutdown when every committer has. With several committers, each
//!   collects on its own; `finish` wakes them all, and only the last one
//!   to stop gets the leftovers.
//! - Standing by: a committer of a pool whose connection is down, while
//!   another's works, takes nothing ([`wait_finishing`](Mailbox::wait_finishing)
//!   on a condition variable of its own, so that a post's ring always
//!   goes to a committer that collects). Whoever makes the others unable
//!   to commit (a failure, a committer stopping) calls
//!   [`rouse`](Mailbox::rouse), and the stand-by looks again; the count of
//!   rousings it read before deciding to wait makes a rouse in between
//!   count too.
//! - What a post carries is up to the caller: the service's is a
//!   [`Posted`] event with the [`ReplyTo`] its outcome is sent to (and
//!   [`Waiting`] makes sure every one of a batch gets one); the models' is
//!   a ticket a thread parks on.
//!
//! Models in `tests/loom.rs`:
//! `a_posted_event_is_answered_whatever_the_committer_is_doing`,
//! `finish_racing_with_posts_answers_every_poster`,
//! `a_posted_event_is_answered_by_one_of_two_committers`,
//! `a_committer_without_a_connection_leaves_the_events_to_the_other` and
//! `a_stand_by_committer_takes_over_when_the_other_fails`.

use std::ops::Range;
use std::time::Instant;

use super::outcome::{BatchReplyTo, Outcome, Refusal, ReplyTo};
use crate::event::ProductUpdate;
use crate::request_id::OwnedRequestId;
use crate::sync::{self, Condvar, Mutex, MutexGuard};

/// What a connection thread leaves for the committer, and what the
/// committer collects.
pub struct Mailbox<T> {
    state: Mutex<Posts<T>>,
    /// Rung by `post` while the committer sleeps, and by `finish`.
    bell: Condvar,
    /// Rung by `finish` and `rouse`, for committers that stand by
    /// ([`Mailbox::wait_finishing`]).
    closing: Condvar,
    /// Rung when the last committer stops, for [`Mailbox::wait_stopped`].
    all_stopped: Condvar,
}

struct Posts<T> {
    pending: Vec<T>,
    /// Committers asleep on `bell`.
    sleeping: usize,
    /// Committers that have not stopped yet.
    collectors: usize,
    /// Shutdown: later posts are refused.
    finishing: bool,
    /// Every committer has stopped: nobody will collect any more.
    stopped: bool,
    /// How many times [`Mailbox::rouse`] was called.
    rousings: u64,
}

/// Why [`Mailbox::post`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `finish` has been called (or the committer stopped).
    Closed,
    /// `capacity` items already wait: the committer is behind.
    Full,
}

/// One [`Mailbox::collect`]: the batch, and whether shutdown has begun.
pub struct Collected<T> {
    pub batch: Vec<T>,
    pub finishing: bool,
}

impl<T> Mailbox<T> {
    /// A mailbox with one committer.
    pub fn new() -> Mailbox<T> {
        Mailbox::with_collectors(1)
    }

    /// A mailbox that `collectors` committers take batches from (a pool of
    /// database connections, one per committer). Each of them calls
    /// [`Mailbox::stop`] when it stops.
    pub fn with_collectors(collectors: usize) -> Mailbox<T> {
        Mailbox {
            state: Mutex::new(Posts {
                pending: Vec::new(),
                sleeping: 0,
                collectors,
                finishing: false,
                stopped: false,
                rousings: 0,
            }),
            bell: Condvar::new(),
            closing: Condvar::new(),
            all_stopped: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Posts<T>> {
        // Poisoning: the state is plain data changed in single pushes and
        // assignments.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves `item` for the committer's next batch, unless shutdown has
    /// begun or `capacity` items wait already.
    pub fn post(&self, item: T, capacity: usize) -> Result<(), Refused> {
        self.offer(item, capacity).map_err(|(refused, _)| refused)
    }

    /// As [`Mailbox::post`], and a refused item comes back (it may be
    /// what answers its client).
    pub fn offer(&self, item: T, capacity: usize) -> Result<(), (Refused, T)> {
        let mut state = self.lock();
        if state.finishing || state.stopped {
            return Err((Refused::Closed, item));
        }
        if state.pending.len() >= capacity {
            return Err((Refused::Full, item));
        }
        state.pending.push(item);
        if state.sleeping > 0 {
            self.bell.notify_one();
        }
        Ok(())
    }

    /// The committer: waits until something is posted, `finish` is called,
    /// or `until` passes (the committer has other work then), and takes
    /// everything posted. Before taking a batch it yields the CPU up to
    /// `gather` times, as long as each yield brought more posts: one
    /// commit costs about the same for 1 event or 100, so letting the
    /// events that are on their way join is cheaper than a second commit.
    pub fn collect(&self, until: Instant, gather: usize) -> Collected<T> {
        let mut state = self.lock();
        loop {
            if state.finishing || !state.pending.is_empty() {
                break;
            }
            let Some(left) = until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            state.sleeping += 1;
            state = sync::wait_for_bell(&self.bell, state, left);
            state.sleeping -= 1;
        }
        for _ in 0..gather {
            if state.pending.is_empty() || state.finishing {
                break;
            }
            let before = state.pending.len();
            drop(state);
            sync::yield_now();
            state = self.lock();
            if state.pending.len() == before {
                break;
            }
        }
        Collected {
            batch: std::mem::take(&mut state.pending),
            finishing: state.finishing,
        }
    }

    /// Takes whatever is posted, for a watchdog to refuse while every
    /// committer is stuck at the database (nobody collects it meanwhile).
    pub fn take_pending(&self) -> Vec<T> {
        std::mem::take(&mut self.lock().pending)
    }

    /// Gives back a batch that this committer cannot commit (its
    /// connection is down) while another can: it goes before anything
    /// posted since, and a sleeping committer is rung.
    pub fn put_back(&self, mut batch: Vec<T>) {
        let mut state = self.lock();
        batch.append(&mut state.pending);
        state.pending = batch;
        if state.sleeping > 0 {
            self.bell.notify_one();
        }
    }

    /// The count of [`Mailbox::rouse`] calls, to read before deciding to
    /// stand by and to pass to [`Mailbox::wait_finishing`].
    pub fn rousings(&self) -> u64 {
        self.lock().rousings
    }

    /// A committer standing by (its connection is down while another's
    /// works): waits until `until`, `finish`, or a `rouse` after `seen`
    /// (from [`Mailbox::rousings`]), taking nothing. Says whether shutdown
    /// has begun.
    pub fn wait_finishing(&self, until: Instant, seen: u64) -> bool {
        let mut state = self.lock();
        while !state.finishing && state.rousings == seen {
            let Some(left) = until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            state = sync::wait_for_bell(&self.closing, state, left);
        }
        state.finishing
    }

    /// Wakes the committers standing by to look again: the ones that
    /// could commit may no longer (one failed, or stopped).
    pub fn rouse(&self) {
        let mut state = self.lock();
        state.rousings += 1;
        self.closing.notify_all();
    }

    /// Shutdown: later posts are refused, the committers are woken to
    /// write what is left, and the ones standing by to stop.
    pub fn finish(&self) {
        let mut state = self.lock();
        state.finishing = true;
        self.bell.notify_all();
        self.closing.notify_all();
    }

    /// A committer, when it stops for good. The last one to stop gets
    /// whatever is still posted, for it to answer, and later posts are
    /// refused; the others get nothing (the ones still running collect
    /// what is posted).
    pub fn stop(&self) -> Vec<T> {
        let mut state = self.lock();
        state.collectors = state.collectors.saturating_sub(1);
        if state.collectors > 0 {
            // One fewer to collect: the ones standing by look again.
            state.rousings += 1;
            self.closing.notify_all();
            return Vec::new();
        }
        state.stopped = true;
        self.all_stopped.notify_all();
        std::mem::take(&mut state.pending)
    }

    /// Shutdown, after [`Mailbox::finish`]: waits until every committer has
    /// [`stop`](Mailbox::stop)ped collecting (having committed what it
    /// took), or `deadline` passes. True if they all have.
    pub fn wait_stopped(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while !state.stopped {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                return false;
            };
            state = sync::wait_for_bell(&self.all_stopped, state, left);
        }
        true
    }
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox::new()
    }
}

/// An event as a front door submitted it.
#[derive(Debug)]
pub struct Submission {
    pub update: ProductUpdate,
    /// The id of the request that carried it.
    pub request_id: OwnedRequestId,
    /// When the front door handed it over (for the time spent queued).
    pub accepted_at: Instant,
}

/// What is posted for a commit, with where its outcome goes: one event,
/// or a batch request's events, which are taken all or none.
pub enum Posted {
    One {
        submission: Submission,
        reply: ReplyTo,
    },
    Batch {
        submissions: Vec<Submission>,
        reply: BatchReplyTo,
    },
}

impl Posted {
    /// Answers every event of the post with `refusal`: it was not taken.
    pub fn refuse(self, refusal: Refusal) {
        match self {
            Posted::One { reply, .. } => reply.send(Err(refusal)),
            Posted::Batch { submissions, reply } => {
                reply.send(vec![Err(refusal); submissions.len()]);
            }
        }
    }

    /// How many events the post carries.
    pub fn events(&self) -> usize {
        match self {
            Posted::One { .. } => 1,
            Posted::Batch { submissions, .. } => submissions.len(),
        }
    }
}

/// A committer's batch, split: every event in posting order, which runs of
/// them are batch requests (to be taken all or none, with consecutive
/// seqs), and the replies in a [`Waiting`] guard: from here on every event
/// gets an answer, whatever happens to the committer.
pub struct Split {
    pub submissions: Vec<Submission>,
    /// The batch requests, as ranges of `submissions`, in order.
    pub atomic: Vec<Range<usize>>,
    pub waiting: Waiting,
}

pub fn split(batch: Vec<Posted>) -> Split {
    let events = batch.iter().map(Posted::events).sum();
    // A cycle that starts with a batch request takes that request's vector
    // as it is (a batch of 1000 events is about 130 KB: copying it, into
    // freshly mapped pages, was a tenth of a SQLite committer's time), and
    // grows it for the rest.
    let mut submissions = match batch.first() {
        Some(Posted::Batch { .. }) => Vec::new(),
        _ => Vec::with_capacity(events),
    };
    let mut atomic = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for posted in batch {
        match posted {
            Posted::One { submission, reply } => {
                submissions.push(submission);
                replies.push(Reply::One(reply));
            }
            Posted::Batch {
                submissions: mut mine,
                reply,
            } => {
                let start = submissions.len();
                replies.push(Reply::Batch(mine.len(), reply));
                if submissions.is_empty() {
                    mine.reserve(events - mine.len());
                    submissions = mine;
                } else {
                    submissions.append(&mut mine);
                }
                atomic.push(start..submissions.len());
            }
        }
    }
    Split {
        submissions,
        atomic,
        waiting: Waiting(replies),
    }
}

/// Where the outcomes of a committer's batch go, in posting order.
#[derive(Debug)]
pub enum Reply {
    One(ReplyTo),
    /// A batch request of this many events.
    Batch(usize, BatchReplyTo),
}

/// The replies of the batch a committer is committing: each sent its
/// outcome by [`Waiting::answer`], or, if the committer unwinds from a
/// panic first, 503 `storage_unavailable` (the events may have been
/// committed: the next start applies them, and a client that retries with
/// its `event_id` is told it is a duplicate).
pub struct Waiting(pub Vec<Reply>);

impl Waiting {
    /// `outcomes`: one per event, in posting order.
    pub fn answer(mut self, outcomes: Vec<Outcome>) {
        let mut outcomes = outcomes.into_iter();
        for reply in self.0.drain(..) {
            match reply {
                Reply::One(reply) => {
                    reply.send(outcomes.next().unwrap_or(Err(Refusal::StorageUnavailable)));
                }
                Reply::Batch(events, reply) => {
                    let mut mine: Vec<Outcome> = outcomes.by_ref().take(events).collect();
                    mine.resize(events, Err(Refusal::StorageUnavailable));
                    reply.send(mine);
                }
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        for reply in self.0.drain(..) {
            match reply {
                Reply::One(reply) => reply.send(Err(Refusal::StorageUnavailable)),
                Reply::Batch(events, reply) => {
                    reply.send(vec![Err(Refusal::StorageUnavailable); events]);
                }
            }
        }
    }
}
