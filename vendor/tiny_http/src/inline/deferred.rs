//! An answer given later, from another thread.
//!
//! Two threads meet here: the one serving the connection (which releases
//! the answer, or waits for it, and later finishes it) and whichever thread
//! calls [`Deferred::answer`]. A handler whose answer waits for something slow and shared (a group
//! commit to a database, say) can take a [`Deferred`] with
//! [`Request::defer`](super::Request::defer), hand it to the thread that
//! does the slow part, and return. That thread calls
//! [`Deferred::answer`], which writes the answer to the socket itself, so
//! the connection's thread is woken once per request (by the client's next
//! request) instead of twice (by the answer, then by the next request).
//!
//! # Who writes, and when
//!
//! One party owns a connection's writes at a time; the [`Stage`] under the
//! slot's lock says which:
//!
//! - `Held`: the connection's thread. It holds the answer back while the
//!   handler returns and earlier pipelined answers are flushed; it also
//!   keeps it when the connection will close after this answer (the last
//!   request, a body left unread, a stopping server), since then it has
//!   nothing else to do than wait. An answer given now is *kept* for the
//!   connection's thread, which writes it.
//! - `Released`: the connection's thread has gone on to read the next
//!   request and writes nothing until it has this answer. The answerer
//!   writes it, without ever blocking (`MSG_DONTWAIT`): a client that does
//!   not read cannot stall the answering thread, which answers for many
//!   connections. If the socket takes only part, the rest is left for the
//!   connection's thread, woken by shutting down the connection's read
//!   side: it writes the rest (under the socket timeout) and closes.
//! - Then the answerer does for the connection what its thread would have
//!   done after writing: marks it idle for [`Server::stop`], or, if the
//!   server is stopping or the answer says close, wakes the thread to close
//!   it.
//!
//! The connection's thread, having read the next request's head (or its
//! end, or a timeout), first [`Slot::finish`]es: waits, parked, until the
//! answer is written, so answers leave in the order of the requests and a
//! connection never closes under an answer not yet written. If it was the
//! keep-alive timeout that ran out, it ran while the answer was still
//! being made: the wait for the next request starts again. When the
//! connection ends after a released answer, it lingers as after an unread
//! body, so that request bytes left unread do not reset the connection
//! and the answer with it.
//!
//! A `Deferred` dropped unanswered (a panic on the answering thread, a
//! lost message) is answered with a bare 500 and the connection closed: a
//! client is never left waiting on a request nobody answers.
//!
//! [`Server::stop`]: super::Server::stop

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::mem;
use std::net::{Shutdown, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

use super::registry::{Entry, Registry};
use super::response::Response;

/// The promise of an answer to one request, to be kept from any thread.
/// See the module docs.
pub struct Deferred {
    slot: Option<Arc<Slot>>,
}

/// What the connection's thread and the answerer share.
pub(crate) struct Slot {
    stage: Mutex<Stage>,
    /// The connection: its socket and its state for `stop`.
    entry: Arc<Entry>,
    /// The thread serving the connection, unparked when the answer is in
    /// (not whoever answers).
    thread: thread::Thread,
    registry: Arc<Registry>,
    /// False for an answer to `HEAD`.
    with_body: bool,
}

enum Stage {
    /// The connection's thread will write the answer; not given yet.
    Held,
    /// Given while held: for the connection's thread to write.
    Kept(Response),
    /// The connection's thread reads on; the answerer writes, with this
    /// `Connection` header (`keep-alive` for an HTTP/1.0 client that
    /// asked for it).
    Released { connection: Option<&'static str> },
    /// Written by the answerer. `close`: the connection ends here (the
    /// answer said so, the server is stopping, or the socket failed).
    Written { close: bool },
    /// Partly written by the answerer: the connection's thread writes the
    /// rest, then closes.
    Rest(Vec<u8>),
    /// The handler panicked: the connection's thread answered 500, and an
    /// answer given later is dropped.
    Cancelled,
}

/// How the connection's thread goes on after releasing an answer.
pub(crate) enum Released {
    /// The answerer writes it.
    ToAnswerer,
    /// It was given already: the connection's thread writes it.
    Given(Response),
}

/// How the connection's thread goes on once a released answer is done.
pub(crate) enum Finished {
    /// Written; the connection goes on (and is idle for `stop` again).
    KeepOpen,
    /// Written; the connection ends without another answer.
    Close,
    /// These bytes of the answer are still to be written, then close.
    Rest(Vec<u8>),
}

// Poisoning: the stage is replaced in single assignments.
fn lock(slot: &Slot) -> MutexGuard<'_, Stage> {
    slot.stage.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The answerer's scratch answer and bytes, reused for every answer
    /// given on this thread.
    static SCRATCH: RefCell<(Response, Vec<u8>)> = RefCell::new((Response::default(), Vec::with_capacity(1024)));
}

impl Deferred {
    pub(crate) fn new(slot: Arc<Slot>) -> Deferred {
        Deferred { slot: Some(slot) }
    }

    /// Answers the request: `fill` sets the status, headers and body as
    /// [`Handler::handle`](super::Handler::handle) would, and the answer is
    /// written (or left for the connection's thread; see the module docs).
    /// Never blocks on the client.
    pub fn answer(mut self, fill: impl FnOnce(&mut Response)) {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (response, out) = &mut *scratch;
            response.reset();
            // If `fill` panics, `self` still holds the slot, and its drop
            // answers 500.
            fill(response);
            if let Some(slot) = self.slot.take() {
                slot.give(response, out);
            }
        });
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            log::error!("inline server: a deferred answer was dropped unanswered; answering 500 and closing the connection");
            let mut response = Response::default();
            response.set_status(500);
            response.close_after();
            slot.give(&response, &mut Vec::new());
        }
    }
}

impl Slot {
    pub(crate) fn new(
        entry: Arc<Entry>,
        thread: thread::Thread,
        registry: Arc<Registry>,
        with_body: bool,
    ) -> Slot {
        Slot {
            stage: Mutex::new(Stage::Held),
            entry,
            thread,
            registry,
            with_body,
        }
    }

    /// The answerer's side.
    fn give(&self, response: &Response, out: &mut Vec<u8>) {
        let mut stage = lock(self);
        match mem::replace(&mut *stage, Stage::Cancelled) {
            Stage::Held => *stage = Stage::Kept(response.clone()),
            Stage::Released { connection } => {
                // The connection's thread waits for a final stage: a bug
                // here must not leave it waiting for ever.
                let written =
                    panic::catch_unwind(AssertUnwindSafe(|| self.write(response, connection, out)));
                *stage = written.unwrap_or_else(|_| {
                    let _ = self.entry.stream.shutdown(Shutdown::Both);
                    Stage::Written { close: true }
                });
            }
            // Cancelled: the connection's thread answered already. (Kept,
            // Written and Rest cannot be: a `Deferred` answers once.)
            other => *stage = other,
        }
        drop(stage);
        self.thread.unpark();
    }

    /// Writes a released answer without blocking; what the connection's
    /// thread finds next. Called under the slot's lock, so the thread sees
    /// the connection's state only once it is final.
    fn write(&self, response: &Response, connection: Option<&str>, out: &mut Vec<u8>) -> Stage {
        let mut close = response.wants_close() || self.registry.gate.is_stopping();
        // What the connection is after this answer, settled before the
        // answer goes out (as `connection.rs` does for an answer written by
        // its own thread): idle for `stop` and for making room (see
        // `gate.rs`). Once the client has the answer it may use another
        // connection, and this one must be idle (and for longer) by then,
        // or that one is closed in its stead. Stopping: the answer says
        // `Connection: close`.
        if !close && !self.registry.go_idle(&self.entry) {
            self.registry.closed_at_stop(&self.entry);
            close = true;
        }
        out.clear();
        let connection = if close { Some("close") } else { connection };
        response.write_to(out, self.with_body, connection);
        let mut sent = 0;
        while sent < out.len() {
            match send_now(&self.entry.stream, &out[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The client is gone: nothing more to write, ever.
                Err(_) => {
                    let _ = self.entry.stream.shutdown(Shutdown::Both);
                    return Stage::Written { close: true };
                }
            }
        }
        if sent < out.len() {
            // A client that has left a socket buffer of answers unread:
            // its own thread writes the rest, bounded by the socket
            // timeout, and closes. Shutting down the read side wakes it.
            let _ = self.entry.stream.shutdown(Shutdown::Read);
            return Stage::Rest(out[sent..].to_vec());
        }
        if close {
            let _ = self.entry.stream.shutdown(Shutdown::Read);
            return Stage::Written { close: true };
        }
        Stage::Written { close: false }
    }

    /// The connection's thread, after the handler returned and earlier
    /// answers are flushed: the answerer may write from now on.
    pub(crate) fn release(&self, connection: Option<&'static str>) -> Released {
        let mut stage = lock(self);
        match mem::replace(&mut *stage, Stage::Released { connection }) {
            Stage::Kept(response) => {
                *stage = Stage::Cancelled;
                Released::Given(response)
            }
            _ => Released::ToAnswerer,
        }
    }

    /// The connection's thread, when it will write the answer itself:
    /// parks until it is given.
    pub(crate) fn wait(&self) -> Response {
        let mut stage = lock(self);
        loop {
            if let Stage::Kept(_) = *stage {
                let Stage::Kept(response) = mem::replace(&mut *stage, Stage::Cancelled) else {
                    unreachable!()
                };
                return response;
            }
            drop(stage);
            thread::park();
            stage = lock(self);
        }
    }

    /// The connection's thread, after a released answer, before anything
    /// else: parks until the answerer has written it.
    pub(crate) fn finish(&self) -> Finished {
        let mut stage = lock(self);
        loop {
            match mem::replace(&mut *stage, Stage::Cancelled) {
                Stage::Written { close: false } => return Finished::KeepOpen,
                Stage::Written { close: true } => return Finished::Close,
                Stage::Rest(rest) => return Finished::Rest(rest),
                other => *stage = other,
            }
            drop(stage);
            thread::park();
            stage = lock(self);
        }
    }

    /// The handler panicked after deferring: the answer, if it comes, is
    /// dropped.
    pub(crate) fn cancel(&self) {
        *lock(self) = Stage::Cancelled;
    }
}

/// One `send` that never blocks (`MSG_DONTWAIT`), on a socket whose other
/// reads and writes do block: setting `O_NONBLOCK` instead would change it
/// for the connection's thread too, which is reading it at the same time.
#[cfg(unix)]
fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(stream).send_with_flags(bytes, libc::MSG_DONTWAIT | MSG_NOSIGNAL)
}

/// Where there is no `MSG_DONTWAIT`, nothing is sent here: the connection's
/// thread writes the whole answer.
#[cfg(not(unix))]
fn send_now(_stream: &TcpStream, _bytes: &[u8]) -> io::Result<usize> {
    Err(ErrorKind::WouldBlock.into())
}

/// A client gone makes `send` fail with `EPIPE`, not raise `SIGPIPE`
/// (which Rust programs ignore anyway; a library should not rely on it).
#[cfg(any(target_os = "linux", target_os = "android"))]
const MSG_NOSIGNAL: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
const MSG_NOSIGNAL: libc::c_int = 0;
