//! PATCHED (product-update-service): the inline server's threads: each
//! waits in `accept`, serves the connection it gets, and waits again (see
//! the module docs of `inline` for the policy), and the stop sequence.
//!
//! Stopping cannot miss a thread: see `gate.rs`, the handshake every
//! thread goes through before it blocks.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::connection::{self, Buffers};
use super::gate::{self, Gate};
#[cfg(unix)]
use super::lot;
use super::lot::Lot;
use super::{Config, Handler, Rejection};

/// A running inline server. Dropping it without [`Server::stop`] leaves its
/// threads serving.
pub struct Server {
    shared: Arc<Shared>,
}

/// What [`Server::stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Connections closed between requests (or in the middle of a head):
    /// by `stop`, or by their own thread, which had just finished an
    /// answer when `stop` looked.
    pub idle_closed: usize,
    /// Time from the call to the last thread's exit.
    pub elapsed: Duration,
}

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

/// What every thread of the server shares. Not the listening socket: see
/// `spawn`.
pub(crate) struct Shared {
    local_addr: SocketAddr,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) config: Config,
    /// `stopping`, and the threads in `accept` (see `gate.rs`).
    pub(crate) gate: Gate,
    /// Threads alive; `stop` waits for none.
    live: Mutex<usize>,
    exited: Condvar,
    connections: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
    /// Connections found idle during the stop by their own thread rather
    /// than by `stop` (see [`closed_at_stop`]).
    closed_at_stop: AtomicUsize,
    /// Where connections wait between requests once more than
    /// `config.park_above` are open (see `lot.rs`); None if never.
    pub(crate) lot: Option<Lot>,
    /// The client ends of `stop`'s own connections, made to wake the
    /// threads in `accept`: no client sent them, so they are closed
    /// without the `ShuttingDown` answer a client connecting meanwhile
    /// gets (which the handler would log and count).
    wake_ups: Mutex<Vec<SocketAddr>>,
}

impl Server {
    /// Starts serving `listener` with `handler`; returns once
    /// `config.spare_threads` threads wait in `accept`.
    pub fn start(
        listener: TcpListener,
        mut config: Config,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        let local_addr = listener.local_addr()?;
        // On one core a poller would only keep the client (and the
        // handler's own threads) from it.
        if thread::available_parallelism().map_or(true, |n| n.get() < 2) {
            config.spin = Duration::ZERO;
        }
        let spare = config.spare_threads.max(1);
        #[cfg(unix)]
        let lot = if config.park_above == usize::MAX {
            None
        } else {
            Some(Lot::new()?)
        };
        #[cfg(not(unix))]
        let lot: Option<Lot> = None;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            local_addr,
            handler,
            config,
            gate: Gate::new(),
            live: Mutex::new(0),
            exited: Condvar::new(),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed_at_stop: AtomicUsize::new(0),
            lot,
            wake_ups: Mutex::new(Vec::new()),
        });
        #[cfg(unix)]
        if let Some(lot) = &shared.lot {
            let keeper_shared = Arc::clone(&shared);
            spawn(&shared, "http-keeper", move || keep_lot(&keeper_shared))?;
            // One lot thread from the start, so the first connection parked
            // is watched at once.
            lot.reserve();
            let lot_shared = Arc::clone(&shared);
            if let Err(e) = spawn(&shared, "http-lot", move || serve_parked(&lot_shared)) {
                lot.unreserve();
                log::warn!(
                    "inline server: cannot start a lot thread ({e}); the keeper tries again"
                );
            }
        }
        for i in 0..spare {
            let thread_shared = Arc::clone(&shared);
            let listener = Arc::clone(&listener);
            if let Err(e) = spawn(&shared, "http", move || run(&thread_shared, &listener)) {
                if i == 0 {
                    // The lot's keeper, if started, exits once it sees the stop.
                    shared.gate.stop();
                    if let Some(lot) = &shared.lot {
                        lot.wake();
                    }
                    return Err(e);
                }
                log::warn!("inline server: started {i} of {spare} spare threads: {e}");
                break;
            }
        }
        Ok(Server { shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.shared.config.open_connections.load(Relaxed)
    }

    /// Stops: no new connection is taken, connections between requests are
    /// closed, and requests being handled are finished, their answers
    /// saying `Connection: close`. Returns once every thread has exited,
    /// which the deadlines in [`Config`] bound; the listening socket is
    /// closed by then (see `spawn`).
    pub fn stop(self) -> Stopped {
        let started = Instant::now();
        let shared = &self.shared;
        // Threads in accept: one connection wakes one of them. The list
        // is locked until every wake-up is in it, so a thread that accepts
        // one finds it there (see `run`).
        let in_accept = shared.gate.stop();
        let wake = wake_address(shared.local_addr);
        let mut wake_ups = lock(&shared.wake_ups);
        for _ in 0..in_accept {
            if let Ok(stream) = TcpStream::connect_timeout(&wake, Duration::from_millis(200)) {
                if let Ok(from) = stream.local_addr() {
                    wake_ups.push(from);
                }
            }
        }
        drop(wake_ups);
        // Connections waiting for a request: close their read side, so
        // the read their thread is blocked in returns at once.
        let mut idle_closed = 0;
        for entry in lock(&shared.connections).values() {
            if gate::close_if_idle(&entry.state) {
                let _ = entry.stream.shutdown(Shutdown::Read);
                idle_closed += 1;
            }
        }
        // The lot closes once nothing is parked: wake its leader and keeper.
        if let Some(lot) = &shared.lot {
            lot.wake();
        }
        let mut live = lock(&shared.live);
        while *live > 0 {
            live = shared
                .exited
                .wait(live)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(live);
        idle_closed += shared.closed_at_stop.load(SeqCst);
        log::debug!(
            "inline server on {} stopped ({idle_closed} idle connections closed)",
            shared.local_addr
        );
        Stopped {
            idle_closed,
            elapsed: started.elapsed(),
        }
    }
}

/// Where to connect to wake a thread in `accept`: the listening address,
/// or loopback when it listens on every address.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

// Poisoning: plain counters and a map of handles; a panic cannot leave
// them half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

static THREAD_NUMBER: AtomicU64 = AtomicU64::new(0);

/// Starts one of the server's threads, counted in `live` until it exits.
///
/// The thread counts itself out only once `body` has returned and what it
/// captured is dropped: the accepting threads' bodies hold the only handles
/// on the listening socket, so when `stop` sees `live` reach zero the
/// socket is closed, and a client connecting after `stop` returns is
/// refused by the system. (`Shared`, which the thread still holds while it
/// counts itself out, holds no socket.)
fn spawn(shared: &Arc<Shared>, name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    *lock(&shared.live) += 1;
    let thread_shared = Arc::clone(shared);
    let n = THREAD_NUMBER.fetch_add(1, Relaxed);
    let spawned = thread::Builder::new()
        .name(format!("{name}-{n}"))
        .spawn(move || {
            // A panic outside the handler (which is caught) is a bug here;
            // the thread must still be counted out, or `stop` would wait.
            let _ = panic::catch_unwind(AssertUnwindSafe(body));
            let mut live = lock(&thread_shared.live);
            *live -= 1;
            drop(live);
            thread_shared.exited.notify_all();
        });
    if let Err(e) = spawned {
        *lock(&shared.live) -= 1;
        shared.exited.notify_all();
        return Err(e);
    }
    Ok(())
}

#[cfg(unix)]
/// The lot's keeper (see `lot.rs`): closes parked connections that waited
/// too long, and starts lot threads when there are none, too few, or all
/// are stuck.
fn keep_lot(shared: &Arc<Shared>) {
    let Some(lot) = &shared.lot else { return };
    let mut keeper = lot::Keeper::new();
    loop {
        let tick = lot.tick(&mut keeper, &shared.config, &|| shared.gate.is_stopping());
        for parked in tick.expired {
            // No request began within the keep-alive timeout: a quiet close.
            let _ = parked.conn.entry.stream.shutdown(Shutdown::Write);
            end(shared, &parked.conn);
        }
        if tick.spawn {
            lot.reserve();
            let thread_shared = Arc::clone(shared);
            if let Err(e) = spawn(shared, "http-lot", move || serve_parked(&thread_shared)) {
                lot.unreserve();
                log::warn!("inline server: cannot start another thread ({e}); parked connections wait for a free one");
            }
        }
        if tick.done {
            return;
        }
    }
}

#[cfg(unix)]
/// A lot thread: serves ready parked connections until the lot lets it go.
fn serve_parked(shared: &Arc<Shared>) {
    let Some(lot) = &shared.lot else { return };
    let mut buffers = Buffers::default();
    let stopping = || shared.gate.is_stopping();
    while let Some(parked) = lot.take(&stopping) {
        connection::serve(shared, parked.conn, Some(parked.read_timeout), &mut buffers);
    }
}

/// One thread: accept, serve, repeat.
fn run(shared: &Arc<Shared>, listener: &Arc<TcpListener>) {
    let mut buffers = Buffers::default();
    loop {
        if !shared.gate.enter_accept() {
            return;
        }
        let accepted = listener.accept();
        let others_waiting = shared.gate.leave_accept();
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if shared.gate.is_stopping() {
                    return;
                }
                accept_failed(&e);
                continue;
            }
        };
        if shared.gate.is_stopping() {
            if !lock(&shared.wake_ups).contains(&peer) {
                refuse(shared, stream, Rejection::ShuttingDown);
            }
            return;
        }
        if others_waiting < shared.config.spare_threads.max(1) {
            let thread_shared = Arc::clone(shared);
            let listener = Arc::clone(listener);
            if let Err(e) = spawn(shared, "http", move || run(&thread_shared, &listener)) {
                log::warn!("inline server: cannot start another thread ({e}); new connections wait for a free one");
            }
        }
        let open = &shared.config.open_connections;
        if open.fetch_add(1, SeqCst) >= shared.config.max_connections {
            open.fetch_sub(1, SeqCst);
            refuse(shared, stream, Rejection::TooManyConnections);
            continue;
        }
        serve(shared, stream, peer, &mut buffers);
        if shared.gate.waiting_in_accept() >= shared.config.max_idle_threads {
            return;
        }
    }
}

/// Upstream stopped accepting for good on the first error. Errors that
/// pass once connections close (out of file descriptors, memory) get a
/// short pause so they do not become a hot loop; a connection reset
/// before it was accepted is nobody's problem.
fn accept_failed(error: &io::Error) {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock => {}
        _ => {
            log::error!("inline server: accept failed: {error}; retrying in 10 ms");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, buffers: &mut Buffers) {
    let stream = Arc::new(stream);
    let id = shared.next_id.fetch_add(1, Relaxed);
    let entry = Arc::new(Entry {
        state: gate::new_state(),
        stream: Arc::clone(&stream),
    });
    lock(&shared.connections).insert(id, Arc::clone(&entry));
    let conn = Conn {
        id,
        entry,
        peer: Some(peer),
        registered: false,
    };
    // Idle until its first head: announced (registered), now look.
    if shared.gate.go_idle(&conn.entry.state) {
        connection::serve(shared, conn, None, buffers);
    } else {
        connection::refuse(shared, &stream, Rejection::ShuttingDown, buffers);
        end(shared, &conn);
    }
}

/// A connection whose answer is finished found the server stopping (its
/// `go_idle` failed): closed between requests, and counted once, by
/// whichever of it and `stop` marks it closed.
pub(crate) fn closed_at_stop(shared: &Shared, entry: &Entry) {
    if gate::close_if_idle(&entry.state) {
        shared.closed_at_stop.fetch_add(1, SeqCst);
    }
}

/// A connection has ended (closed by whoever held it last): no longer
/// open, nor for `stop` to close.
pub(crate) fn end(shared: &Shared, conn: &Conn) {
    lock(&shared.connections).remove(&conn.id);
    shared.config.open_connections.fetch_sub(1, SeqCst);
}

/// Answers a connection the server will not serve, from the accepting
/// thread, with a short write timeout so a client cannot stall it.
fn refuse(shared: &Shared, stream: TcpStream, rejection: Rejection) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    connection::refuse(
        shared,
        &Arc::new(stream),
        rejection,
        &mut Buffers::default(),
    );
}
