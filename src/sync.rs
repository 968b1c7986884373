//! The synchronization the hand-made protocols use (the intake in
//! `intake/mod.rs`, the doorbell in `intake/queue.rs`, the committers'
//! mailbox in `intake/mailbox.rs`, the watermark in `progress.rs`), in one
//! place: std's
//! types and crossbeam's channel, or, when the crate is built with
//! `--cfg loom`, loom's, so that `tests/loom.rs` can model-check those
//! protocols in every interleaving. The code under test is the production
//! code; only what it is built on changes.
//!
//! Two things loom has no equivalent for are spelled out here:
//! - time: loom cannot time out, so [`wait_timeout`] returns at once under
//!   loom (the lingering worker's wait "times out" immediately, the worst
//!   case for a protocol that must not count on being woken), and
//!   [`park_timeout`] and [`wait_for_bell`] wait untimed (the models wait
//!   with deadlines so far off that only a wake-up can end them, and a
//!   missed wake-up is a deadlock loom reports);
//! - crossbeam's channel, whose atomics loom cannot see: under loom,
//!   [`channel`] is a small bounded channel on loom's `Mutex` and one
//!   atomic, with the same non-blocking calls the intake and the workers
//!   use (`try_send`, `try_recv`, `len`, and a lock-free `is_empty`) and the
//!   same disconnection: queued messages are still delivered after the
//!   last sender is dropped.

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::thread::{Thread, current};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub use loom::thread::{Thread, current};

use std::sync::PoisonError;
use std::time::Duration;

/// `Condvar::wait_timeout`, without the timed-out flag (callers look at
/// what they wait for again). Under loom: returns at once.
pub fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    #[cfg(not(loom))]
    {
        condvar
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
    #[cfg(loom)]
    {
        let _ = (condvar, timeout);
        guard
    }
}

/// `Condvar::wait`, ignoring poisoning (every user's state is plain data).
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// `Condvar::wait_timeout` where the timeout is not part of the protocol
/// (the waiter has other work to do then) and a ring must never be missed:
/// under loom it waits untimed, so that a missed ring shows as a deadlock
/// (unlike [`wait_timeout`], whose waiter must cope without any ring).
pub fn wait_for_bell<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    #[cfg(not(loom))]
    {
        wait_timeout(condvar, guard, timeout)
    }
    #[cfg(loom)]
    {
        let _ = timeout;
        wait(condvar, guard)
    }
}

/// `thread::yield_now`.
pub fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// `thread::park_timeout`. Under loom: a park until unparked.
pub fn park_timeout(timeout: Duration) {
    #[cfg(not(loom))]
    std::thread::park_timeout(timeout);
    #[cfg(loom)]
    {
        let _ = timeout;
        loom::thread::park();
    }
}

/// The bounded queue between the intake and the workers.
#[cfg(not(loom))]
pub mod channel {
    pub use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
}

/// The bounded queue between the intake and the workers, for loom: a
/// `VecDeque` under a loom `Mutex`, with crossbeam's semantics for the calls
/// the service makes. Like crossbeam's, `is_empty` takes no lock: it reads
/// an atomic length (with `Acquire`, weaker than crossbeam's `SeqCst`), so
/// that a protocol relying on that look is checked under weak ordering.
#[cfg(loom)]
pub mod channel {
    use std::collections::VecDeque;

    use super::{Arc, AtomicUsize, Mutex, Ordering};

    pub use crossbeam_channel::{TryRecvError, TrySendError};

    struct State<T> {
        queue: VecDeque<T>,
        capacity: usize,
        senders: usize,
    }

    struct Shared<T> {
        state: Mutex<State<T>>,
        /// `queue.len()`, written under the lock, read without it.
        len: AtomicUsize,
    }

    pub struct Sender<T>(Arc<Shared<T>>);
    pub struct Receiver<T>(Arc<Shared<T>>);

    pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                capacity,
                senders: 1,
            }),
            len: AtomicUsize::new(0),
        });
        (Sender(shared.clone()), Receiver(shared))
    }

    impl<T> Sender<T> {
        pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
            let mut state = self.0.state.lock().unwrap();
            if state.queue.len() >= state.capacity {
                return Err(TrySendError::Full(message));
            }
            state.queue.push_back(message);
            self.0.len.store(state.queue.len(), Ordering::Release);
            Ok(())
        }

        pub fn len(&self) -> usize {
            self.0.state.lock().unwrap().queue.len()
        }
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            self.0.state.lock().unwrap().senders += 1;
            Sender(self.0.clone())
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            self.0.state.lock().unwrap().senders -= 1;
        }
    }

    impl<T> Receiver<T> {
        pub fn try_recv(&self) -> Result<T, TryRecvError> {
            let mut state = self.0.state.lock().unwrap();
            match state.queue.pop_front() {
                Some(message) => {
                    self.0.len.store(state.queue.len(), Ordering::Release);
                    Ok(message)
                }
                None if state.senders == 0 => Err(TryRecvError::Disconnected),
                None => Err(TryRecvError::Empty),
            }
        }

        pub fn is_empty(&self) -> bool {
            self.0.len.load(Ordering::Acquire) == 0
        }
    }

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            Receiver(self.0.clone())
        }
    }
}
