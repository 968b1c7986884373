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
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::gate::{self, Gate};

/// One open connection, as `stop` (and a full server making room) sees it.
pub(crate) struct Entry {
    /// `gate::IDLE` while waiting for (or reading) a head, `BUSY` from a
    /// complete head to the end of its answer, `CLOSED` once `stop` closed
    /// it, `EVICTED` once closed to make room for another.
    pub(crate) state: gate::State,
    pub(crate) stream: Arc<TcpStream>,
    /// The client's address: its connections are counted together.
    client: IpAddr,
    /// When it last went idle, in microseconds since the registry was
    /// made: the one idle longest is closed first to make room.
    idle_since: AtomicU64,
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
    connections: Mutex<Connections>,
    /// The origin of `Entry::idle_since`.
    epoch: Instant,
    next_id: AtomicU64,
    /// Connections being served: `Config::open_connections`, which a
    /// caller may read.
    open: Arc<AtomicUsize>,
    /// Connections found idle during the stop by their own thread (or a
    /// deferred answer's) rather than by `stop` (see
    /// [`Registry::closed_at_stop`]).
    closed_at_stop: AtomicUsize,
}

/// The open connections, and how many each client address has.
#[derive(Default)]
struct Connections {
    by_id: HashMap<u64, Arc<Entry>>,
    per_client: HashMap<IpAddr, usize>,
}

// Poisoning: maps of handles and counts changed in single steps; a panic
// cannot leave them half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    pub(crate) fn new(open: Arc<AtomicUsize>) -> Registry {
        Registry {
            gate: Gate::new(),
            connections: Mutex::new(Connections::default()),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open,
            closed_at_stop: AtomicUsize::new(0),
        }
    }

    /// Connections being served now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Counts a just-accepted connection in and makes it known to `stop`,
    /// idle since now (it waits for its first head; the caller then looks
    /// at the gate, [`Gate::go_idle`]). At a limit, a connection idle longest
    /// is closed (quietly, as after a keep-alive timeout) to make room: the
    /// client's own when it already holds `per_client`, anyone's when `max`
    /// are open. Refused (the stream comes back, to be answered 503) when
    /// none is idle. So one client holding idle connections cannot shut
    /// everyone else out, nor hold more than its share.
    pub(crate) fn admit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        max: usize,
        per_client: usize,
    ) -> Result<Conn, TcpStream> {
        let client = peer.ip();
        let mut connections = lock(&self.connections);
        let room = if connections.per_client.get(&client).copied().unwrap_or(0) >= per_client {
            self.evict_one(&connections, Some(client))
        } else {
            self.open.load(SeqCst) < max || self.evict_one(&connections, None)
        };
        if !room {
            return Err(stream);
        }
        self.open.fetch_add(1, SeqCst);
        *connections.per_client.entry(client).or_default() += 1;
        let id = self.next_id.fetch_add(1, Relaxed);
        let entry = Arc::new(Entry {
            state: gate::new_state(),
            stream: Arc::new(stream),
            client,
            idle_since: AtomicU64::new(self.now()),
        });
        connections.by_id.insert(id, Arc::clone(&entry));
        Ok(Conn {
            id,
            entry,
            peer: Some(peer),
            registered: false,
        })
    }

    /// Closes the connection that has been idle longest (of `client`'s, or
    /// of all), if any is: its read side is shut down, so its thread (or
    /// the lot) sees the end and ends it. It still counts as open until
    /// then: for a moment a limit is exceeded by the connections being
    /// made room for.
    fn evict_one(&self, connections: &Connections, client: Option<IpAddr>) -> bool {
        let oldest = connections
            .by_id
            .values()
            .filter(|entry| client.is_none_or(|client| entry.client == client))
            .filter(|entry| gate::is_idle(&entry.state))
            .min_by_key(|entry| entry.idle_since.load(Relaxed));
        let Some(entry) = oldest else {
            return false;
        };
        if !gate::evict_if_idle(&entry.state) {
            return false;
        }
        let _ = entry.stream.shutdown(Shutdown::Read);
        log::debug!(
            "inline server: at a connection limit; closed a connection of {} idle longest to make room",
            entry.client
        );
        true
    }

    /// A connection between requests: notes since when, then goes through
    /// the gate's handshake ([`Gate::go_idle`]). False if the server is
    /// stopping.
    pub(crate) fn go_idle(&self, entry: &Entry) -> bool {
        entry.idle_since.store(self.now(), Relaxed);
        self.gate.go_idle(&entry.state)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A connection has ended (closed by whoever held it last): no longer
    /// open, nor for `stop` to close.
    pub(crate) fn end(&self, conn: &Conn) {
        let mut connections = lock(&self.connections);
        if let Some(entry) = connections.by_id.remove(&conn.id) {
            let client = entry.client;
            if let Some(n) = connections.per_client.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    connections.per_client.remove(&client);
                }
            }
        }
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
        for entry in lock(&self.connections).by_id.values() {
            if gate::close_if_idle(&entry.state) {
                let _ = entry.stream.shutdown(Shutdown::Read);
                closed += 1;
            }
        }
        closed
    }

    /// For `stop_by`, at its deadline: shuts down every connection still
    /// open in both directions, so that each read or write its thread is
    /// blocked in fails at once. Returns how many.
    pub(crate) fn close_all(&self) -> usize {
        let connections = lock(&self.connections);
        for entry in connections.by_id.values() {
            let _ = entry.stream.shutdown(Shutdown::Both);
        }
        connections.by_id.len()
    }

    /// For `stop`, once every thread has exited: the connections their own
    /// threads closed at the stop (see [`Registry::closed_at_stop`]).
    pub(crate) fn closed_by_their_threads(&self) -> usize {
        self.closed_at_stop.load(SeqCst)
    }
}
