//! The handshake that lets [`Server::stop`](super::Server::stop) reach
//! every thread of the inline server, whatever it is doing when the stop
//! comes.
//!
//! Every thread of the server goes through it before it blocks (an
//! accepting thread before `accept`, the thread serving a connection, or
//! a deferred answer's writer, before the connection waits for its next
//! request), and `stop` goes through the other side on the caller's
//! thread. It is a file of its own, with nothing else in it, so that the
//! loom models at its end check exactly the code that runs.
//!
//! Two places could let a thread sleep through a stop: blocked in
//! `accept`, or blocked reading a connection that is between requests.
//! Both use the same handshake with `stopping`: the thread first announces
//! itself (counts itself in `in_accept`, or marks its connection `IDLE`) and
//! only then looks at `stopping`; `stop` first sets `stopping` and only then
//! looks at the announcements. Each side is a write followed by a read of
//! the other side's variable (the store-buffering pattern of Dekker's
//! algorithm), and a CPU may let the read overtake the write: then both
//! sides miss each other, the thread sleeps and `stop` does not wake it. A
//! `fence(SeqCst)` between the write and the read on both sides forbids
//! that: the two fences happen in one order, and whichever comes second
//! sees the other side's write. So either the thread sees `stopping` (and
//! leaves) or `stop` sees the announcement (and wakes it: a connection to
//! the listening socket for each thread counted in `accept`; closing the
//! read side of each idle connection).
//!
//! Why fences rather than `SeqCst` on the accesses themselves, which would
//! also do: the fence puts the order where the reasoning needs it, and
//! loom checks fences exactly, while it treats `SeqCst` accesses as
//! `AcqRel` (its README, "Unsupported features") and would report a false
//! deadlock here.
//!
//! In the test build under `--cfg loom` the atomics are loom's, and the
//! models at the end of this file check the handshake in every interleaving
//! (`RUSTFLAGS="--cfg loom" cargo test -p product-update-tiny-http --release
//! --lib gate`).

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

#[cfg(not(all(test, loom)))]
use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize};

#[cfg(all(test, loom))]
use loom::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize};

/// A connection waiting for (or reading) the head of its next request.
pub(crate) const IDLE: u8 = 0;
/// A connection from a complete head to the end of its answer.
pub(crate) const BUSY: u8 = 1;
/// A connection `stop` has closed.
pub(crate) const CLOSED: u8 = 2;
/// A connection closed, idle, to make room for another (`registry.rs`).
pub(crate) const EVICTED: u8 = 3;

/// What `stop` and the server's threads share.
pub(crate) struct Gate {
    stopping: AtomicBool,
    /// Threads in `accept`, or about to be.
    in_accept: AtomicUsize,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            stopping: AtomicBool::new(false),
            in_accept: AtomicUsize::new(0),
        }
    }

    /// A thread about to wait in `accept`: counts itself, then looks.
    /// False if the server is stopping (the thread is not counted then, and
    /// must not wait in `accept`).
    pub(crate) fn enter_accept(&self) -> bool {
        self.in_accept.fetch_add(1, Relaxed);
        fence(SeqCst);
        if self.stopping.load(Relaxed) {
            self.in_accept.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Back from `accept`: uncounts itself; returns how many others wait.
    pub(crate) fn leave_accept(&self) -> usize {
        self.in_accept.fetch_sub(1, Relaxed) - 1
    }

    /// Threads waiting in `accept` now.
    pub(crate) fn waiting_in_accept(&self) -> usize {
        self.in_accept.load(Relaxed)
    }

    /// Whether `stop` has begun. Outside the two handshakes this is a hint
    /// (a thread checks it after `accept` returns, or before keeping a
    /// connection open) and needs no fence.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Acquire)
    }

    /// `stop`: from now on every thread that looks sees it. Returns how many
    /// threads may be waiting in `accept`: each needs a connection to wake.
    pub(crate) fn stop(&self) -> usize {
        self.stopping.store(true, Release);
        fence(SeqCst);
        self.in_accept.load(Relaxed)
    }

    /// A connection between requests: marks it idle, then looks. False if
    /// the server is stopping: the thread closes the connection itself.
    ///
    /// Only a busy connection becomes idle here. A new one is idle from the
    /// start, and one already closed (by `stop`, or to make room) stays
    /// closed: marked idle again it could be closed to make room a second
    /// time, freeing no room the second time (a client then kept one
    /// connection more than its share), or be counted twice by `stop`.
    pub(crate) fn go_idle(&self, state: &AtomicU8) -> bool {
        let _ = state.compare_exchange(BUSY, IDLE, Relaxed, Relaxed);
        fence(SeqCst);
        !self.stopping.load(Relaxed)
    }
}

/// A connection's head is complete: idle to busy. False if `stop` closed it
/// first (the request is then refused as shutting down).
pub(crate) fn begin(state: &AtomicU8) -> bool {
    state.compare_exchange(IDLE, BUSY, AcqRel, Acquire).is_ok()
}

/// Whether a connection waits for (or reads) a head now: a hint, for
/// choosing one to make room; [`evict_if_idle`] decides.
pub(crate) fn is_idle(state: &AtomicU8) -> bool {
    state.load(Relaxed) == IDLE
}

/// Closes an idle connection to make room for another; true if it was
/// idle. A head completing meanwhile makes [`begin`] fail, and the request
/// is refused as if the server were full ([`was_evicted`]).
pub(crate) fn evict_if_idle(state: &AtomicU8) -> bool {
    state
        .compare_exchange(IDLE, EVICTED, AcqRel, Acquire)
        .is_ok()
}

/// Whether [`begin`] failed because the connection was closed to make room
/// (rather than by `stop`).
pub(crate) fn was_evicted(state: &AtomicU8) -> bool {
    state.load(Acquire) == EVICTED
}

/// For `stop`, after [`Gate::stop`] (whose fence orders this read after
/// `stopping` is set): closes the connection if it is idle.
/// True if it did (the caller then shuts down its read side).
pub(crate) fn close_if_idle(state: &AtomicU8) -> bool {
    state
        .compare_exchange(IDLE, CLOSED, AcqRel, Acquire)
        .is_ok()
}

/// A connection's state for `stop`: [`IDLE`], [`BUSY`] or [`CLOSED`].
pub(crate) type State = AtomicU8;

pub(crate) fn new_state() -> State {
    AtomicU8::new(IDLE)
}

#[cfg(all(test, loom))]
mod models {
    use super::*;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// A thread going to wait in `accept` while the server stops: it is
    /// either told not to, or woken by the connection `stop` makes for it.
    /// (A thread that looked at `stopping` before counting itself would
    /// sleep in `accept` for ever: loom reports the deadlock.)
    #[test]
    fn stop_reaches_a_thread_on_its_way_into_accept() {
        loom::model(|| {
            let gate = Arc::new(Gate::new());
            // The listening socket: connections waiting to be accepted.
            let backlog = Arc::new((Mutex::new(0usize), Condvar::new()));
            let acceptor = {
                let (gate, backlog) = (Arc::clone(&gate), Arc::clone(&backlog));
                thread::spawn(move || {
                    if gate.enter_accept() {
                        let (pending, arrived) = &*backlog;
                        let mut pending = pending.lock().unwrap();
                        while *pending == 0 {
                            pending = arrived.wait(pending).unwrap();
                        }
                        *pending -= 1;
                        drop(pending);
                        gate.leave_accept();
                        assert!(gate.is_stopping(), "accepted a connection nobody made");
                    }
                })
            };
            let wake = gate.stop();
            let (pending, arrived) = &*backlog;
            for _ in 0..wake {
                *pending.lock().unwrap() += 1;
                arrived.notify_one();
            }
            acceptor.join().unwrap();
        });
    }

    /// A connection going idle while the server stops: either its thread
    /// sees `stopping` and closes it, or `stop` closes it (its read returns)
    /// — never neither. And a head completed in that window is refused, not
    /// served after the stop closed the connection.
    #[test]
    fn stop_reaches_a_connection_going_idle() {
        loom::model(|| {
            let gate = Arc::new(Gate::new());
            let state = Arc::new(AtomicU8::new(BUSY));
            // The connection's read side: shut down, or not.
            let socket = Arc::new((Mutex::new(false), Condvar::new()));
            let connection = {
                let (gate, state, socket) =
                    (Arc::clone(&gate), Arc::clone(&state), Arc::clone(&socket));
                thread::spawn(move || {
                    if !gate.go_idle(&state) {
                        return "closed by its thread";
                    }
                    // Blocked reading, until the read side is shut down.
                    let (shut, changed) = &*socket;
                    let mut shut = shut.lock().unwrap();
                    while !*shut {
                        shut = changed.wait(shut).unwrap();
                    }
                    assert!(!begin(&state), "a closed connection began a request");
                    "closed by stop"
                })
            };
            gate.stop();
            if close_if_idle(&state) {
                let (shut, changed) = &*socket;
                *shut.lock().unwrap() = true;
                changed.notify_all();
            }
            connection.join().unwrap();
        });
    }

    /// A new connection closed to make room while its thread goes idle for
    /// its first head: it stays closed, so it cannot be chosen to make room
    /// a second time. (When going idle marked it idle whatever it was, a
    /// client held one connection more than its share: loom finds it.)
    #[test]
    fn a_connection_closed_to_make_room_stays_closed() {
        loom::model(|| {
            let gate = Gate::new();
            let state = Arc::new(new_state());
            let making_room = {
                let state = Arc::clone(&state);
                thread::spawn(move || evict_if_idle(&state))
            };
            gate.go_idle(&state);
            if making_room.join().unwrap() {
                assert!(was_evicted(&state));
                assert!(!evict_if_idle(&state), "closed to make room twice");
                assert!(!begin(&state), "a closed connection began a request");
            }
        });
    }
}
