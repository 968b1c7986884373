//! A stop signal that a backend's background threads (the SQLite
//! checkpointer and committer, the PostgreSQL tailer, compactor and
//! watchdog) sleep on between rounds, so that shutdown wakes them at once
//! instead of waiting out their pause.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::health::lock;

#[derive(Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    bell: Condvar,
}

impl StopSignal {
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
        self.pause_until(Instant::now() + pause)
    }

    /// Sleeps until `deadline`, or less if told to stop. True if stopped.
    pub fn pause_until(&self, deadline: Instant) -> bool {
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
