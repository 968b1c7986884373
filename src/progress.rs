//! How far the workers have got: the applied watermark, and a way to wait
//! for it.
//!
//! Seqs are gap-free (see `queue.rs`), but workers finish events out of
//! order, so "applied through N" means every seq up to N is done. Each
//! worker reports each finished seq; seqs that finish ahead of a gap wait in
//! a set until the gap closes. A reader who wants to see its own write
//! (`GET /products/{id}?min_seq=N`) blocks on a condition variable until the
//! watermark reaches N or its deadline passes: no polling.
//!
//! An event whose apply panicked counts as done (it will never be applied),
//! so one bad event cannot stall every reader behind it.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::store::Seq;

#[derive(Default)]
pub struct Progress {
    state: Mutex<State>,
    advanced: Condvar,
}

#[derive(Default)]
struct State {
    /// Every seq up to this one is done.
    through: Seq,
    /// Done seqs above `through + 1`, waiting for the gap to close.
    ahead: BTreeSet<Seq>,
    /// Readers blocked in `wait_through`; no notify when there are none.
    waiters: usize,
}

impl Progress {
    /// A worker finished `seq` (applied it, or its apply panicked).
    pub fn done(&self, seq: Seq) {
        let mut state = self.lock();
        if seq != state.through + 1 {
            state.ahead.insert(seq);
            return;
        }
        let mut through = seq;
        while state.ahead.remove(&(through + 1)) {
            through += 1;
        }
        state.through = through;
        let wake = state.waiters > 0;
        drop(state);
        if wake {
            self.advanced.notify_all();
        }
    }

    /// Every seq up to the returned one is done.
    pub fn through(&self) -> Seq {
        self.lock().through
    }

    /// Blocks until every seq up to `seq` is done or `deadline` passes.
    /// Returns the watermark then (`>= seq` means caught up).
    pub fn wait_through(&self, seq: Seq, deadline: Instant) -> Seq {
        let mut state = self.lock();
        state.waiters += 1;
        while state.through < seq {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            state = self
                .advanced
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.waiters -= 1;
        state.through
    }

    // Poisoning: plain counters and a set; nothing inside can panic midway.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Calls [`Progress::done`] when dropped, so a seq counts as done even if
/// applying it panicked.
pub struct DoneOnDrop<'a>(pub &'a Progress, pub Seq);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

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
    }
}
