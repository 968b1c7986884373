//! The server's threads and its lifecycle: [`Server::start`] starts them,
//! each runs one of the loops below, and [`Server::stop`] ends them all.
//!
//! - An accepting thread (`http-N`, [`run`]) waits in `accept` on the
//!   shared listening socket, serves the connection it gets
//!   (`connection.rs`) and waits again; it starts another before serving
//!   if too few others wait (see the module docs of `inline` for the
//!   policy).
//! - A lot thread (`http-lot-N`, [`serve_parked`], Unix only) serves
//!   parked connections that turned readable; the keeper
//!   (`http-keeper-N`, [`keep_lot`]) closes those parked too long and
//!   starts lot threads when none is free (`lot.rs`).
//! - [`Server::stop`], on the caller's thread, wakes and closes what each
//!   of them waits on, then waits for every thread to exit. Stopping
//!   cannot miss a thread: see `gate.rs`, the handshake every thread goes
//!   through before it blocks.
//!
//! Every thread is started by [`spawn`], which counts it in and out, so
//! `stop` knows when the last one has gone.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::config::Config;
use super::connection::{self, Buffers};
use super::handler::Handler;
#[cfg(unix)]
use super::lot;
use super::lot::Lot;
use super::registry::{Conn, Registry};
use super::rejection::Rejection;
use super::shared::Shared;

/// A running inline server. Dropping it without [`Server::stop`] leaves its
/// threads serving.
pub struct Server {
    running: Arc<Running>,
}

/// What [`Server::stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Connections closed between requests (or in the middle of a head):
    /// by `stop`, or by their own thread, which had just finished an
    /// answer when `stop` looked.
    pub idle_closed: usize,
    /// Connections still in a request at the deadline of
    /// [`Server::stop_by`], closed in the middle of it (their answers
    /// abandoned).
    pub abandoned: usize,
    /// Time from the call to the last thread's exit.
    pub elapsed: Duration,
}

/// What the server's threads and `stop` share: what serving a connection
/// needs, and the threads' own bookkeeping. Not the listening socket: see
/// [`spawn`].
struct Running {
    shared: Shared,
    local_addr: SocketAddr,
    /// Threads alive; `stop` waits for none.
    live: Mutex<usize>,
    exited: Condvar,
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
        let registry = Arc::new(Registry::new(Arc::clone(&config.open_connections)));
        let running = Arc::new(Running {
            shared: Shared {
                handler,
                config,
                registry,
                lot,
            },
            local_addr,
            live: Mutex::new(0),
            exited: Condvar::new(),
            wake_ups: Mutex::new(Vec::new()),
        });
        #[cfg(unix)]
        start_lot(&running)?;
        let listener = Arc::new(listener);
        for i in 0..spare {
            let thread_running = Arc::clone(&running);
            let listener = Arc::clone(&listener);
            if let Err(e) = spawn(&running, "http", move || run(&thread_running, &listener)) {
                if i == 0 {
                    // The lot's keeper, if started, exits once it sees the stop.
                    running.shared.registry.gate.stop();
                    if let Some(lot) = &running.shared.lot {
                        lot.wake();
                    }
                    return Err(e);
                }
                log::warn!("inline server: started {i} of {spare} spare threads: {e}");
                break;
            }
        }
        Ok(Server { running })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.running.shared.registry.open()
    }

    /// Stops: no new connection is taken, connections between requests are
    /// closed, and requests being handled are finished, their answers
    /// saying `Connection: close`. Returns once every thread has exited,
    /// which the deadlines in [`Config`] bound; the listening socket is
    /// closed by then (see `spawn`).
    pub fn stop(self) -> Stopped {
        self.stop_by(None)
    }

    /// As [`Server::stop`], but requests still being handled at `deadline`
    /// are cut short: their connections are shut down in both directions,
    /// so that a client that does not read (or sends a body slowly) cannot
    /// hold the stop past it. Returns by about `deadline` plus
    /// [`ABANDON_GRACE`] whatever clients do.
    pub fn stop_by(self, deadline: Option<Instant>) -> Stopped {
        let started = Instant::now();
        let running = &self.running;
        let registry = &running.shared.registry;
        // Threads in accept: one connection wakes one of them. The list
        // is locked until every wake-up is in it, so a thread that accepts
        // one finds it there (see `run`).
        let in_accept = registry.gate.stop();
        let wake = wake_address(running.local_addr);
        let mut wake_ups = lock(&running.wake_ups);
        for _ in 0..in_accept {
            if let Ok(stream) = TcpStream::connect_timeout(&wake, Duration::from_millis(200)) {
                if let Ok(from) = stream.local_addr() {
                    wake_ups.push(from);
                }
            }
        }
        drop(wake_ups);
        // Connections waiting for a request: their reads return at once.
        let mut idle_closed = registry.close_idle();
        // The lot closes once nothing is parked: wake its leader and keeper.
        if let Some(lot) = &running.shared.lot {
            lot.wake();
        }
        let mut abandoned = 0;
        if !running.wait_for_threads(deadline) {
            // The deadline passed with requests in hand: cut them short.
            abandoned = registry.close_all();
            if !running.wait_for_threads(Some(Instant::now() + ABANDON_GRACE)) {
                log::error!(
                    "inline server on {}: threads still running {ABANDON_GRACE:?} after their connections were shut down; not waiting for them",
                    running.local_addr
                );
            }
        }
        idle_closed += registry.closed_by_their_threads();
        log::debug!(
            "inline server on {} stopped ({idle_closed} idle connections closed, {abandoned} requests abandoned at the deadline)",
            running.local_addr
        );
        Stopped {
            idle_closed,
            abandoned,
            elapsed: started.elapsed(),
        }
    }
}

impl Running {
    /// Waits until every thread has exited, or `deadline` passes (`None`:
    /// no deadline). True if they all have.
    fn wait_for_threads(&self, deadline: Option<Instant>) -> bool {
        let mut live = lock(&self.live);
        while *live > 0 {
            live = match deadline {
                None => self
                    .exited
                    .wait(live)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let Some(left) = deadline
                        .checked_duration_since(Instant::now())
                        .filter(|left| !left.is_zero())
                    else {
                        return false;
                    };
                    self.exited
                        .wait_timeout(live, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }
}

/// How long [`Server::stop_by`] waits, after shutting down the connections
/// still in a request at its deadline, for their threads to exit (each is
/// woken at once by the shutdown: a blocked read or write fails).
pub const ABANDON_GRACE: Duration = Duration::from_millis(300);

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

// Poisoning: a counter and a list of addresses; a panic cannot leave them
// half-changed.
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
/// refused by the system. (`Running`, which the thread still holds while
/// it counts itself out, holds no socket.)
fn spawn(
    running: &Arc<Running>,
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    *lock(&running.live) += 1;
    let thread_running = Arc::clone(running);
    let n = THREAD_NUMBER.fetch_add(1, Relaxed);
    let spawned = thread::Builder::new()
        .name(format!("{name}-{n}"))
        .spawn(move || {
            // A panic outside the handler (which is caught) is a bug here;
            // the thread must still be counted out, or `stop` would wait.
            let _ = panic::catch_unwind(AssertUnwindSafe(body));
            let mut live = lock(&thread_running.live);
            *live -= 1;
            drop(live);
            thread_running.exited.notify_all();
        });
    if let Err(e) = spawned {
        *lock(&running.live) -= 1;
        running.exited.notify_all();
        return Err(e);
    }
    Ok(())
}

/// Starts the lot's keeper, and one lot thread so that the first
/// connection parked is watched at once.
#[cfg(unix)]
fn start_lot(running: &Arc<Running>) -> io::Result<()> {
    let Some(lot) = &running.shared.lot else {
        return Ok(());
    };
    let keeper_running = Arc::clone(running);
    spawn(running, "http-keeper", move || keep_lot(&keeper_running))?;
    lot.reserve();
    let lot_running = Arc::clone(running);
    if let Err(e) = spawn(running, "http-lot", move || serve_parked(&lot_running)) {
        lot.unreserve();
        log::warn!("inline server: cannot start a lot thread ({e}); the keeper tries again");
    }
    Ok(())
}

#[cfg(unix)]
/// The lot's keeper (see `lot.rs`): closes parked connections that waited
/// too long, and starts lot threads when there are none, too few, or all
/// are stuck.
fn keep_lot(running: &Arc<Running>) {
    let shared = &running.shared;
    let Some(lot) = &shared.lot else { return };
    let gate = &shared.registry.gate;
    let mut keeper = lot::Keeper::new();
    loop {
        let tick = lot.tick(&mut keeper, &shared.config, &|| gate.is_stopping());
        for parked in tick.expired {
            // No request began within the keep-alive timeout: a quiet close.
            let _ = parked.conn.entry.stream.shutdown(std::net::Shutdown::Write);
            shared.registry.end(&parked.conn);
        }
        if tick.spawn {
            lot.reserve();
            let thread_running = Arc::clone(running);
            if let Err(e) = spawn(running, "http-lot", move || serve_parked(&thread_running)) {
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
fn serve_parked(running: &Running) {
    let shared = &running.shared;
    let Some(lot) = &shared.lot else { return };
    let mut buffers = Buffers::default();
    let stopping = || shared.registry.gate.is_stopping();
    while let Some(parked) = lot.take(&stopping) {
        connection::serve(shared, parked.conn, Some(parked.read_timeout), &mut buffers);
    }
}

/// An accepting thread: accept, serve, repeat.
fn run(running: &Arc<Running>, listener: &Arc<TcpListener>) {
    let shared = &running.shared;
    let (config, gate) = (&shared.config, &shared.registry.gate);
    let mut buffers = Buffers::default();
    loop {
        if !gate.enter_accept() {
            return;
        }
        let accepted = listener.accept();
        let others_waiting = gate.leave_accept();
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if gate.is_stopping() {
                    return;
                }
                accept_failed(&e);
                continue;
            }
        };
        if gate.is_stopping() {
            if !lock(&running.wake_ups).contains(&peer) {
                refuse(shared, stream, Rejection::ShuttingDown);
            }
            return;
        }
        if others_waiting < config.spare_threads.max(1) {
            let thread_running = Arc::clone(running);
            let listener = Arc::clone(listener);
            if let Err(e) = spawn(running, "http", move || run(&thread_running, &listener)) {
                log::warn!("inline server: cannot start another thread ({e}); new connections wait for a free one");
            }
        }
        let admitted = shared.registry.admit(
            stream,
            peer,
            config.max_connections,
            config.max_connections_per_client,
        );
        match admitted {
            Ok(conn) => serve_admitted(shared, conn, &mut buffers),
            Err(stream) => {
                refuse(shared, stream, Rejection::TooManyConnections);
                continue;
            }
        }
        if gate.waiting_in_accept() >= config.max_idle_threads {
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

/// Serves a connection just accepted and admitted, on this thread.
fn serve_admitted(shared: &Shared, conn: Conn, buffers: &mut Buffers) {
    // Idle until its first head: announced (registered), now look. Idle
    // since it was admitted, not since this thread got here: a connection
    // the client opened after it may have been admitted (and gone idle)
    // in between, and must not be the one closed first to make room.
    if shared.registry.gate.go_idle(&conn.entry.state) {
        connection::serve(shared, conn, None, buffers);
    } else {
        connection::refuse(shared, &conn.entry.stream, Rejection::ShuttingDown, buffers);
        shared.registry.end(&conn);
    }
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
