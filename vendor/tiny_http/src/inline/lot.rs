//! The parking lot, where connections wait for their next request without
//! holding a thread.
//!
//! Three kinds of thread use it: the thread serving a connection parks it
//! here (`connection.rs`); the lot's own threads take parked connections
//! that turned readable and serve them; the keeper closes those that waited
//! too long and starts lot threads (both loops are in `server.rs`).
//!
//! A connection thread that has answered a request blocks reading the
//! next one. With few connections that is the cheapest wait there is: the
//! client's next request wakes the thread, one wake-up per request. With
//! many busy connections it is not: every request is a switch to another
//! thread, and on a machine with few cores hundreds of threads take turns
//! for every request, which costs more than the requests themselves.
//!
//! So once more than [`Config::park_above`](super::Config::park_above)
//! connections are open, a connection that is between requests, with
//! nothing buffered and no answer in flight, is *parked* here instead:
//! registered with epoll (through mio), and its thread is free. The lot's
//! threads follow the leader/follower pattern: one *leads*, waiting in
//! epoll, and queues the parked connections that turn readable; the others
//! take them from the queue and serve them exactly as their first thread
//! did (`connection::serve`), until they park again or end. A thread back
//! for work takes a ready connection if there is one, else leads if nobody
//! does, else waits as a follower. Under load the queue is rarely empty: a
//! thread that parks a connection takes the next ready one without
//! sleeping, and the leader finds many connections per wake-up, so the
//! per-request thread switches mostly go away.
//!
//! # No connection waits behind another
//!
//! A lot thread serving a connection can block as long as a connection
//! thread can (a slow body, a handler that waits). The *keeper* thread
//! therefore looks every [`STUCK`] while connections are parked: when no
//! lot thread is free or leading and none has come back for more since it
//! last looked, it starts another; likewise while fewer lot threads than
//! the machine's cores but one exist (the one left for the handler's own
//! threads and whatever else runs: one lot thread serving back to back
//! does more than two taking turns for a core). A slow client thus holds
//! the thread serving it, never the others'.
//!
//! # Timeouts and stopping
//!
//! A parked connection is still waiting for a request: the keeper closes
//! it, quietly, once it has waited `keepalive_timeout` (checked every
//! [`SWEEP`], so up to that much later). Parked connections are idle for
//! [`Server::stop`](super::Server::stop) (see `gate.rs`): stop shuts their
//! read side down as for any idle connection, which makes them readable,
//! so a lot thread takes each, reads its end and closes it. The lot closes
//! once stopping with nothing parked; from then on nothing parks (`park`
//! gives the connection back, and its thread ends it), and its threads
//! and the keeper exit.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::config::Config;
use super::registry::Conn;

/// How often the keeper looks whether the lot's threads are all stuck
/// while connections are parked (and starts another if so).
pub(crate) const STUCK: Duration = Duration::from_millis(5);

/// How often the keeper looks for parked connections past their
/// keep-alive timeout.
pub(crate) const SWEEP: Duration = Duration::from_millis(100);

/// A lot thread with no work for this long exits (but the last one).
const IDLE_EXIT: Duration = Duration::from_secs(5);

/// The token of [`Lot::wake`].
const WAKE: Token = Token(usize::MAX);

/// A connection between requests, as the lot keeps it.
pub(crate) struct Parked {
    pub(crate) conn: Conn,
    /// The read timeout its socket has (see `io.rs`), kept so resuming it
    /// does not set it again.
    pub(crate) read_timeout: Option<Duration>,
    /// Since when it waits for a request.
    pub(crate) since: Instant,
}

pub(crate) struct Lot {
    registry: Registry,
    waker: Waker,
    /// Held by the leader while it waits in epoll.
    poll: Mutex<(Poll, Events)>,
    state: Mutex<State>,
    /// Followers wait here, for a ready connection or to lead.
    work: Condvar,
    /// The keeper's tick.
    keeper: Condvar,
}

struct State {
    parked: HashMap<Token, Parked>,
    ready: VecDeque<Parked>,
    /// Lot threads alive; how many wait as followers; whether one leads.
    threads: usize,
    free: usize,
    leading: bool,
    /// Counts every return of a lot thread for more work: the keeper's
    /// sign that the lot's threads are not all stuck.
    progress: u64,
    /// Stopped: nothing parks any more, the lot's threads exit.
    closed: bool,
}

/// What the keeper asks of the server after a tick.
#[derive(Default)]
pub(crate) struct Tick {
    /// Start another lot thread.
    pub(crate) spawn: bool,
    /// Parked past the keep-alive timeout: to close.
    pub(crate) expired: Vec<Parked>,
    /// The lot is closed: the keeper exits.
    pub(crate) done: bool,
}

/// What the keeper remembers between ticks.
pub(crate) struct Keeper {
    next_sweep: Instant,
    progress: u64,
    /// Lot threads to have when connections wait with none free: the
    /// cores but one (at least one).
    parallelism: usize,
}

impl Keeper {
    pub(crate) fn new() -> Keeper {
        Keeper {
            next_sweep: Instant::now() + SWEEP,
            progress: 0,
            // A core left for the rest: the handler's own threads (the
            // service's workers) and, in a benchmark, the client. On two
            // cores one lot thread serving back to back did more, and with
            // a shorter tail, than two taking turns for a core.
            parallelism: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1)),
        }
    }
}

// Poisoning: the state is maps and counters changed in single steps; a
// panic cannot leave it half-changed. The poll has no state of ours.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lot {
    pub(crate) fn new() -> io::Result<Lot> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        Ok(Lot {
            registry,
            waker,
            poll: Mutex::new((poll, Events::with_capacity(256))),
            state: Mutex::new(State {
                parked: HashMap::new(),
                ready: VecDeque::new(),
                threads: 0,
                free: 0,
                leading: false,
                progress: 0,
                closed: false,
            }),
            work: Condvar::new(),
            keeper: Condvar::new(),
        })
    }

    /// Parks a connection whose thread goes on to other work. Gives it
    /// back if the lot is closed (or epoll refuses it): its thread then
    /// serves it on, or ends it.
    pub(crate) fn park(&self, mut parked: Parked) -> Result<(), Parked> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(parked);
        }
        let token = Token(parked.conn.id as usize);
        let fd = parked.conn.entry.stream.as_raw_fd();
        // In the map before epoll may report it: a request already there
        // is reported at once, by this very call (epoll looks when a
        // socket is registered or re-armed).
        let registered = if parked.conn.registered {
            self.registry
                .reregister(&mut SourceFd(&fd), token, Interest::READABLE)
        } else {
            self.registry
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
        };
        if let Err(e) = registered {
            log::warn!("inline server: cannot watch a connection ({e}); its thread keeps it");
            return Err(parked);
        }
        parked.conn.registered = true;
        state.parked.insert(token, parked);
        Ok(())
    }

    /// A lot thread, back for work: the next ready connection. With none
    /// ready it leads (waits in epoll) if no other thread does, or waits
    /// as a follower. None: the thread exits (the lot is closed, or there
    /// has been nothing to do for a while and others are left).
    pub(crate) fn take(&self, stopping: &dyn Fn() -> bool) -> Option<Parked> {
        let mut state = lock(&self.state);
        state.progress += 1;
        loop {
            if let Some(parked) = state.ready.pop_front() {
                // Whoever is free takes the rest, or leads in our stead.
                if state.free > 0 && (!state.ready.is_empty() || !state.leading) {
                    self.work.notify_one();
                }
                return Some(parked);
            }
            if !state.closed && stopping() && state.parked.is_empty() {
                state.closed = true;
                // The leader, if any, is in epoll.
                self.wake();
            }
            if state.closed {
                state.threads -= 1;
                return None;
            }
            if !state.leading {
                state.leading = true;
                drop(state);
                state = self.lead();
                continue;
            }
            state.free += 1;
            let (next, waited) = self
                .work
                .wait_timeout(state, IDLE_EXIT)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            state.free -= 1;
            if waited.timed_out() && state.ready.is_empty() && state.threads > 1 {
                state.threads -= 1;
                return None;
            }
        }
    }

    /// Waits in epoll until parked connections are readable (or a wake),
    /// and queues them. Returns with the state locked, leading no more.
    fn lead(&self) -> MutexGuard<'_, State> {
        let mut poll = lock(&self.poll);
        let (poll_, events) = &mut *poll;
        if let Err(e) = poll_.poll(events, None) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("inline server: waiting in epoll failed: {e}; retrying in 10 ms");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut state = lock(&self.state);
        for event in events.iter() {
            if let Some(parked) = state.parked.remove(&event.token()) {
                state.ready.push_back(parked);
            }
        }
        state.leading = false;
        state
    }

    /// The server is about to start a lot thread: counted from now on.
    pub(crate) fn reserve(&self) {
        lock(&self.state).threads += 1;
    }

    /// ... and could not.
    pub(crate) fn unreserve(&self) {
        lock(&self.state).threads -= 1;
    }

    /// Wakes the leader and the keeper (for `stop`).
    pub(crate) fn wake(&self) {
        let _ = self.waker.wake();
        self.work.notify_all();
        self.keeper.notify_all();
    }

    /// The keeper: waits for its next tick, then closes what waited too
    /// long and says whether the lot needs another thread.
    pub(crate) fn tick(
        &self,
        keeper: &mut Keeper,
        config: &Config,
        stopping: &dyn Fn() -> bool,
    ) -> Tick {
        let mut tick = Tick::default();
        let mut state = lock(&self.state);
        if state.closed {
            tick.done = true;
            return tick;
        }
        let busy = !state.parked.is_empty() || !state.ready.is_empty();
        let wait = if busy { STUCK } else { SWEEP };
        state = self
            .keeper
            .wait_timeout(state, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if !state.closed && stopping() && state.parked.is_empty() && state.ready.is_empty() {
            state.closed = true;
            drop(state);
            self.wake();
            tick.done = true;
            return tick;
        }
        if state.closed {
            tick.done = true;
            return tick;
        }
        let now = Instant::now();
        if now >= keeper.next_sweep {
            keeper.next_sweep = now + SWEEP;
            let idle = config.keepalive_timeout;
            let expired: Vec<Token> = state
                .parked
                .iter()
                .filter(|(_, p)| now.duration_since(p.since) >= idle)
                .map(|(token, _)| *token)
                .collect();
            for token in expired {
                if let Some(parked) = state.parked.remove(&token) {
                    tick.expired.push(parked);
                }
            }
        }
        // Nobody free, nobody leading: connections may be ready that no
        // thread will see. Fine while the lot's threads come back for
        // more; not if none has since the last tick.
        let unwatched = !state.leading && state.free == 0;
        let waiting = !state.parked.is_empty() || !state.ready.is_empty();
        let stuck = state.progress == keeper.progress;
        keeper.progress = state.progress;
        if unwatched && waiting && (stuck || state.threads < keeper.parallelism) {
            tick.spawn = true;
        }
        if state.threads == 0 && waiting {
            tick.spawn = true;
        }
        tick
    }
}
