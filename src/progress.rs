//! How far the workers have got: the applied watermark, and a way to wait
//! for it.
//!
//! Seqs are gap-free (see `intake/mod.rs`), but workers finish events out of
//! order, so "applied through N" means every seq up to N is done. Each
//! worker reports each finished seq; seqs that finish ahead of a gap wait in
//! a set until the gap closes. A reader who wants to see its own write
//! (`GET /products/{id}?min_seq=N`) waits, on its connection's thread,
//! until the watermark reaches N or its deadline passes: no polling.
//!
//! # Waking exactly the readers whose seq is reached
//!
//! A condition variable woken with `notify_all` on every advance would wake
//! every waiting reader for every applied event: with a thousand readers
//! waiting for a seq far ahead, each event would cost a thousand thread
//! wake-ups. So each waiter files itself under the seq it waits for (a
//! sorted map, under the same lock as the watermark), and `done` takes out
//! exactly the waiters whose seq the watermark has now reached and unparks
//! them, after releasing the lock. A waiter parks with a timeout (its
//! deadline) and, whenever it wakes, looks at the watermark under the lock:
//! a wake-up that is spurious or late costs a look, never a wrong answer.
//!
//! The wake-up cannot be lost: a waiter files itself *under the lock*, after
//! seeing the watermark below its seq under that same lock; the worker that
//! moves the watermark past it does so under the lock too, so it finds the
//! waiter filed. `unpark` before `park` is kept by the thread (its token),
//! so a waiter unparked between releasing the lock and parking returns at
//! once.
//!
//! An event whose apply panicked counts as done (it will never be applied),
//! so one bad event cannot stall every reader behind it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::PoisonError;
use std::time::Instant;

use crate::store::Seq;
// Through `sync.rs`, so that `tests/loom.rs` can model-check the watermark.
use crate::sync::{self, Mutex, MutexGuard, Thread};

pub struct Progress {
    state: Mutex<Watermark>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            state: Mutex::new(Watermark::default()),
        }
    }
}

#[derive(Default)]
struct Watermark {
    /// Every seq up to this one is done.
    through: Seq,
    /// Done seqs above `through + 1`, waiting for the gap to close.
    ahead: BTreeSet<Seq>,
    /// Readers waiting, by (the seq they wait for, a ticket to tell two
    /// waiters for one seq apart).
    waiters: BTreeMap<(Seq, u64), Thread>,
    next_ticket: u64,
    /// Shutdown has drained the queue: the watermark will not move again,
    /// so nobody waits any more ([`Progress::release_all`]).
    released: bool,
}

impl Progress {
    /// A watermark at which every seq up to `through` is already done: a
    /// durable store's restart, after it replayed its journal.
    pub fn starting_at(through: Seq) -> Progress {
        let progress = Progress::default();
        progress.lock().through = through;
        progress
    }

    /// A worker finished `seq` (applied it, or its apply panicked).
    pub fn done(&self, seq: Seq) {
        self.done_all([seq]);
    }

    /// A worker finished each of `seqs` (a batch, see `worker.rs`): one
    /// hold of the lock for all of them.
    pub fn done_all(&self, seqs: impl IntoIterator<Item = Seq>) {
        let mut state = self.lock();
        let before = state.through;
        for seq in seqs {
            if seq <= state.through {
                // Counted already: the watermark skipped past it (`skip_to`).
                continue;
            }
            if seq != state.through + 1 {
                state.ahead.insert(seq);
                continue;
            }
            let mut through = seq;
            while state.ahead.remove(&(through + 1)) {
                through += 1;
            }
            state.through = through;
        }
        let through = state.through;
        if through == before || state.waiters.is_empty() {
            return;
        }
        // Everyone filed at or below the new watermark: split off the rest.
        let still_waiting = state.waiters.split_off(&(through + 1, 0));
        let reached = std::mem::replace(&mut state.waiters, still_waiting);
        drop(state);
        for waiter in reached.into_values() {
            waiter.unpark();
        }
    }

    /// Every seq up to `seq` counts as done: the store was reloaded as of
    /// `seq` (a PostgreSQL instance that fell behind the journal).
    pub fn skip_to(&self, seq: Seq) {
        let mut state = self.lock();
        if seq <= state.through {
            return;
        }
        let mut through = seq;
        state.ahead = state.ahead.split_off(&(seq + 1));
        while state.ahead.remove(&(through + 1)) {
            through += 1;
        }
        state.through = through;
        let still_waiting = state.waiters.split_off(&(through + 1, 0));
        let reached = std::mem::replace(&mut state.waiters, still_waiting);
        drop(state);
        for waiter in reached.into_values() {
            waiter.unpark();
        }
    }

    /// Shutdown, once the workers have drained the queue: the watermark is
    /// final, so every reader waiting for a seq beyond it is woken now
    /// (rather than at its deadline), and later waits return at once.
    pub fn release_all(&self) {
        let mut state = self.lock();
        state.released = true;
        let waiting = std::mem::take(&mut state.waiters);
        drop(state);
        for waiter in waiting.into_values() {
            waiter.unpark();
        }
    }

    /// Every seq up to the returned one is done.
    pub fn through(&self) -> Seq {
        self.lock().through
    }

    /// Readers waiting in [`Progress::wait_through`] now.
    pub fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Blocks until every seq up to `seq` is done or `deadline` passes.
    /// Returns the watermark then (`>= seq` means caught up).
    pub fn wait_through(&self, seq: Seq, deadline: Instant) -> Seq {
        let mut state = self.lock();
        if state.through >= seq {
            return state.through;
        }
        if state.released {
            return state.through;
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiters.insert((seq, ticket), sync::current());
        loop {
            drop(state);
            match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => sync::park_timeout(left),
                _ => {}
            }
            state = self.lock();
            if state.through >= seq || state.released || Instant::now() >= deadline {
                // `done` took us out if it woke us; a timeout did not.
                state.waiters.remove(&(seq, ticket));
                return state.through;
            }
        }
    }

    // Poisoning: plain counters and sets; nothing inside can panic midway.
    fn lock(&self) -> MutexGuard<'_, Watermark> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn release_all_ends_every_wait_at_once() {
        let p = Arc::new(Progress::default());
        let later = Instant::now() + Duration::from_secs(60);
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait_through(5, later))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.waiting() < 1 {
            assert!(Instant::now() < deadline, "the waiter never filed itself");
            std::thread::yield_now();
        }
        p.release_all();
        assert_eq!(waiter.join().unwrap(), 0);
        assert_eq!(p.wait_through(9, later), 0, "a later wait returns at once");
    }

    #[test]
    fn the_watermark_only_moves_over_a_contiguous_prefix() {
        let p = Progress::default();
        p.done(2);
        p.done(3);
        assert_eq!(p.through(), 0, "1 is not done yet");
        p.done(1);
        assert_eq!(p.through(), 3);
        p.done(5);
        assert_eq!(p.through(), 3);
        p.done(4);
        assert_eq!(p.through(), 5);
    }

    #[test]
    fn a_waiter_wakes_when_its_seq_is_reached_and_times_out_otherwise() {
        let p = Arc::new(Progress::default());
        let later = Instant::now() + Duration::from_secs(10);
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait_through(2, later))
        };
        p.done(1);
        p.done(2);
        assert_eq!(waiter.join().unwrap(), 2);
        // Nothing will complete seq 3: the wait ends at its deadline.
        let started = Instant::now();
        let short = started + Duration::from_millis(50);
        assert_eq!(p.wait_through(3, short), 2);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(p.waiting(), 0, "a waiter that timed out is not left filed");
    }

    /// Only the readers whose seq was reached are taken out (and woken);
    /// the others stay filed.
    #[test]
    fn an_advance_wakes_only_the_waiters_it_satisfies() {
        let p = Arc::new(Progress::default());
        let later = Instant::now() + Duration::from_secs(20);
        let waiters: Vec<_> = [1, 2, 50, 60]
            .into_iter()
            .map(|seq| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || p.wait_through(seq, later))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.waiting() < 4 {
            assert!(
                Instant::now() < deadline,
                "the waiters never filed themselves"
            );
            std::thread::yield_now();
        }
        p.done(1);
        p.done(2);
        assert_eq!(
            p.waiting(),
            2,
            "exactly the waiters for 1 and 2 are taken out"
        );
        for seq in 3..=60 {
            p.done(seq);
        }
        let woke: Vec<Seq> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        assert!(
            woke[0] >= 1 && woke[1] >= 2 && woke[2] >= 50 && woke[3] == 60,
            "{woke:?}"
        );
        assert_eq!(p.waiting(), 0);
    }
}
