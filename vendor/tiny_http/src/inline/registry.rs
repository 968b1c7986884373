//! The server's open connections as [`Server::stop`] sees them, with the
//! gate (`gate.rs`) that lets `stop` reach each one.
//!
//! Every thread uses it: an accepting thread counts a connection in and
//! registers it (`server.rs`), the thread serving it marks it busy and idle
//! through the gate and ends it (`connection.rs`), a thread answering a
//! deferred request marks it idle in its stead (`deferred.rs`), and `stop`
//! closes the idle ones. It exists apart from the rest of the server's
//! state so that a deferred answer, which may outlive its request on any
//! thread, holds only this and no socket of the server's.
//!
//! [`Server::stop`]: super::Server::stop

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::gate::{self, Gate};

/// One open connection, as `stop` sees it.
pub(crate) struct Entry {
    /// `gate::IDLE` while waiting for (or reading) a head, `BUSY` from a
    /// complete head to the end of its answer, `CLOSED` once `stop` closed
    /// it.
    pub(crate) state: gate::State,
    pub(crate) stream: Arc<TcpStream>,
}

/// One open connection, as the thread serving it (or the lot) holds it.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) entry: Arc<Entry>,
    pub(crate) peer: Option<SocketAddr>,
    /// Known to the lot's epoll: registered when first parked, re-armed
    /// when parked again.
    pub(crate) registered: bool,
}

pub(crate) struct Registry {
    /// `stopping`, and the threads in `accept` (see `gate.rs`).
    pub(crate) gate: Gate,
    connections: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
    /// Connections being served: `Config::open_connections`, which a
    /// caller may read.
    open: Arc<AtomicUsize>,
    /// Connections found idle during the stop by their own thread (or a
    /// deferred answer's) rather than by `stop` (see
    /// [`Registry::closed_at_stop`]).
    closed_at_stop: AtomicUsize,
}

// Poisoning: a map of handles changed in single steps; a panic cannot
// leave it half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    pub(crate) fn new(open: Arc<AtomicUsize>) -> Registry {
        Registry {
            gate: Gate::new(),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            open,
            closed_at_stop: AtomicUsize::new(0),
        }
    }

    /// Connections being served now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Counts a just-accepted connection in, unless `max` are open already
    /// (then it is not counted, and must be refused).
    pub(crate) fn admit(&self, max: usize) -> bool {
        if self.open.fetch_add(1, SeqCst) >= max {
            self.open.fetch_sub(1, SeqCst);
            return false;
        }
        true
    }

    /// Makes an admitted connection known to `stop`, idle (it waits for its
    /// first head); the caller then looks at the gate
    /// ([`Gate::go_idle`]).
    pub(crate) fn register(&self, stream: TcpStream, peer: SocketAddr) -> Conn {
        let id = self.next_id.fetch_add(1, Relaxed);
        let entry = Arc::new(Entry {
            state: gate::new_state(),
            stream: Arc::new(stream),
        });
        lock(&self.connections).insert(id, Arc::clone(&entry));
        Conn {
            id,
            entry,
            peer: Some(peer),
            registered: false,
        }
    }

    /// A connection has ended (closed by whoever held it last): no longer
    /// open, nor for `stop` to close.
    pub(crate) fn end(&self, conn: &Conn) {
        lock(&self.connections).remove(&conn.id);
        self.open.fetch_sub(1, SeqCst);
    }

    /// A connection whose answer is finished found the server stopping (its
    /// `go_idle` failed): closed between requests, and counted once, by
    /// whichever of it and `stop` marks it closed.
    pub(crate) fn closed_at_stop(&self, entry: &Entry) {
        if gate::close_if_idle(&entry.state) {
            self.closed_at_stop.fetch_add(1, SeqCst);
        }
    }

    /// For `stop`, after [`Gate::stop`]: closes the read side of every
    /// connection waiting for a request, so the read its thread is blocked
    /// in returns at once (a parked one turns readable). Returns how many.
    pub(crate) fn close_idle(&self) -> usize {
        let mut closed = 0;
        for entry in lock(&self.connections).values() {
            if gate::close_if_idle(&entry.state) {
                let _ = entry.stream.shutdown(Shutdown::Read);
                closed += 1;
            }
        }
        closed
    }

    /// For `stop`, once every thread has exited: the connections their own
    /// threads closed at the stop (see [`Registry::closed_at_stop`]).
    pub(crate) fn closed_by_their_threads(&self) -> usize {
        self.closed_at_stop.load(SeqCst)
    }
}
