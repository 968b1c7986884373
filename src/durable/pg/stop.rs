//! A stop flag that the background threads of this mode (the tailer, the
//! compactor) sleep on between rounds, so that shutdown wakes them at once.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::super::commit::lock;

#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    bell: Condvar,
}

impl Stop {
    /// Tells the thread to stop, and wakes it if it sleeps.
    pub fn stop(&self) {
        *lock(&self.stopped) = true;
        self.bell.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }

    /// Sleeps `pause`, or less if told to stop. True if stopped.
    pub fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        let mut stopped = lock(&self.stopped);
        while !*stopped {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            stopped = self
                .bell
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *stopped
    }
}
