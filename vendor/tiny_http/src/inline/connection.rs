//! One connection, served by the thread that holds it: read a head, hand
//! the request to the handler, write the answer, and again, until the
//! client or the server ends the connection or it is parked between
//! requests.
//!
//! Runs on an accepting thread, for the connection it accepted
//! (`server.rs`), or on a lot thread, for a parked connection that turned
//! readable (`lot.rs`); either way [`serve`] does the same. Four things
//! change state in a connection's life, and each has its own step of the
//! loop in [`serve`]:
//!
//! - where it waits for its next request: on its thread, polling first
//!   while it is the only connection ([`Connection::poll_if_alone`]), or
//!   in the lot ([`Connection::park`]);
//! - an answer released to another thread, which must be written before
//!   anything else happens on the connection
//!   ([`Connection::finish_released`], `deferred.rs`);
//! - its state for `stop`: idle between requests, busy from a complete
//!   head to the end of its answer (`gate.rs`), in
//!   [`Connection::serve_request`] and [`Connection::write_answer`];
//! - the request itself: its head read ([`read_head`]), parsed, handled
//!   ([`Connection::handle`]) and answered ([`Connection::answer`]).

use std::io;
use std::net::TcpStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::config::Config;
use super::deferred::{Finished, Released, Slot};
use super::gate;
use super::head::{self, Head};
use super::io::{Io, Wait};
use super::lot::Parked;
use super::registry::Conn;
use super::rejection::Rejection;
use super::request::Request;
use super::response::Response;
use super::shared::Shared;
use crate::request_line::Method;

/// Buffers a thread reuses for every connection it serves.
#[derive(Default)]
pub(crate) struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
    head: Head,
    response: Response,
    scratch: Vec<u8>,
}

/// Pipelined answers are written together up to this size.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// The most a thread keeps of one of its buffers once a connection ends
/// (and of a body's buffer once its request is answered): a larger one, the
/// trace of a large body or answer, goes back to the allocator, so that a
/// burst of large requests leaves no memory held by idle threads.
const KEEP_BYTES: usize = 64 * 1024;

impl Buffers {
    /// Gives back the buffers grown past [`KEEP_BYTES`].
    fn trim(&mut self) {
        trim(&mut self.input);
        trim(&mut self.output);
        trim(&mut self.scratch);
        self.response.trim(KEEP_BYTES);
    }
}

/// Drops `buffer`'s memory if it has grown past [`KEEP_BYTES`].
fn trim(buffer: &mut Vec<u8>) {
    if buffer.capacity() > KEEP_BYTES {
        *buffer = Vec::new();
    }
}

/// How reading a head ended, when it did not produce one.
enum NoHead {
    /// The client closed, or the read failed: nothing to answer.
    Quiet,
    /// No request began within the keep-alive timeout: nothing to answer.
    Idle,
    /// Answer this, then close.
    Refuse(Rejection),
}

/// How the connection goes on after a step of [`serve`].
enum Step {
    /// Wait for the next request.
    Next,
    /// The connection ends. `linger`: request bytes may still be on their
    /// way (a body nobody read, a request behind a released answer), so
    /// they are read and dropped for a moment before the close (see
    /// `Io::close`).
    End { linger: bool },
}

/// What came of handing a request to the handler.
struct Handled {
    panicked: bool,
    /// The body was read to its end (or there was none).
    body_done: bool,
    /// The handler deferred the answer (see `deferred.rs`).
    deferred: Option<Arc<Slot>>,
}

/// How an answer is written, as [`Connection::answer`] settled it.
struct Answered {
    /// False for an answer to `HEAD`.
    with_body: bool,
    /// The connection ends with this answer.
    close: bool,
    /// `Some("keep-alive")` for an HTTP/1.0 client that asked to keep the
    /// connection (the answer must say so).
    keep_alive: Option<&'static str>,
    /// The request's body was left unread.
    unread: bool,
}

/// A connection being served, with what its thread keeps between requests.
struct Connection<'s> {
    shared: &'s Shared,
    conn: Conn,
    io: Io,
    /// The thread serving it, woken when a deferred answer is written.
    thread: thread::Thread,
    /// An answer released to another thread (see `deferred.rs`): written
    /// by it while this thread reads the next request.
    released: Option<Arc<Slot>>,
    /// An answer has gone out since this thread took the connection: from
    /// then on, between requests, it may park.
    answered: bool,
}

/// Serves `conn` until it ends, or until it is parked between requests
/// (see `lot.rs`). `resumed`: it comes from the lot, its socket's read
/// timeout as it was left.
pub(crate) fn serve(
    shared: &Shared,
    conn: Conn,
    resumed: Option<Option<Duration>>,
    buffers: &mut Buffers,
) {
    if resumed.is_none() {
        // Reads are bounded per phase (see `io.rs`); writes by the socket
        // timeout.
        let stream = &conn.entry.stream;
        let _ = stream.set_write_timeout(Some(shared.config.socket_timeout));
        // One write per answer: nothing for Nagle's algorithm to coalesce.
        let _ = stream.set_nodelay(true);
    }
    let mut connection = Connection::open(shared, conn, buffers, resumed.flatten());
    let linger = loop {
        if connection.may_park() {
            if connection.io.flush().is_err() {
                break false;
            }
            match connection.park(buffers) {
                None => return,
                Some(back) => connection = back,
            }
        }
        if connection.poll_if_alone().is_err() {
            break false;
        }
        let head = read_head(&mut connection.io, &shared.config);
        let step = match connection.finish_released(&head) {
            Some(step) => step,
            None => connection.serve_request(head, buffers),
        };
        if let Step::End { linger } = step {
            break linger;
        }
    };
    connection.close(linger, buffers);
}

impl<'s> Connection<'s> {
    /// The connection's socket with this thread's buffers.
    fn open(
        shared: &'s Shared,
        conn: Conn,
        buffers: &mut Buffers,
        read_timeout: Option<Duration>,
    ) -> Connection<'s> {
        let mut io = Io::new(
            Arc::clone(&conn.entry.stream),
            std::mem::take(&mut buffers.input),
            std::mem::take(&mut buffers.output),
            shared.config.socket_timeout,
            shared.config.keepalive_timeout,
        );
        io.resume(read_timeout);
        Connection {
            shared,
            conn,
            io,
            thread: thread::current(),
            released: None,
            answered: false,
        }
    }

    /// Whether the connection is between requests with nothing owed and
    /// enough others open that it should not hold this thread.
    fn may_park(&self) -> bool {
        self.answered
            && self.released.is_none()
            && self.io.buffered().is_empty()
            && should_park(self.shared)
    }

    /// Hands the connection to the lot, freeing this thread. None: parked.
    /// Some: the lot gave it back (it is closing, or epoll refused the
    /// socket), and this thread serves it on.
    fn park(self, buffers: &mut Buffers) -> Option<Connection<'s>> {
        let Some(lot) = &self.shared.lot else {
            return Some(self);
        };
        let read_timeout = self.io.read_timeout();
        give_back(self.io, buffers);
        let parked = Parked {
            conn: self.conn,
            read_timeout,
            since: Instant::now(),
        };
        match lot.park(parked) {
            Ok(()) => None,
            Err(back) => Some(Connection::open(
                self.shared,
                back.conn,
                buffers,
                back.read_timeout,
            )),
        }
    }

    /// The only connection open, its client likely to send again at once
    /// (a test, a benchmark, a proxy's one upstream connection): poll
    /// briefly rather than sleep (see `Io::poll_for_input`), until a second
    /// one opens: pollers would take the cores the others need. Not while
    /// another thread writes the last answer. An error ends the connection.
    fn poll_if_alone(&mut self) -> io::Result<()> {
        let shared = self.shared;
        if self.released.is_none() && self.io.buffered().is_empty() && alone(shared) {
            self.io
                .poll_for_input(shared.config.spin, &|| alone(shared))?;
        }
        Ok(())
    }

    /// Before anything else goes out or the connection closes: waits for
    /// the answer released to another thread, if any, to be written. None:
    /// go on with `head`; Some: what to do instead.
    fn finish_released(&mut self, head: &Result<usize, NoHead>) -> Option<Step> {
        let slot = self.released.take()?;
        match slot.finish() {
            // The keep-alive clock started while the answer was still
            // being made: it starts again now that the client has it.
            Finished::KeepOpen if matches!(head, Err(NoHead::Idle)) => Some(Step::Next),
            Finished::KeepOpen => None,
            // Lingering: input left unread when the socket closes would
            // reset the connection, and with it the answer just sent.
            Finished::Close => Some(Step::End { linger: true }),
            Finished::Rest(rest) => {
                self.io.output().extend_from_slice(&rest);
                Some(Step::End { linger: true })
            }
        }
    }

    /// Serves the request whose head `read_head` found, or answers why it
    /// will not.
    fn serve_request(&mut self, head: Result<usize, NoHead>, buffers: &mut Buffers) -> Step {
        let head_len = match head {
            Ok(len) => len,
            Err(NoHead::Quiet | NoHead::Idle) => return Step::End { linger: false },
            Err(NoHead::Refuse(rejection)) => return self.refuse(rejection, buffers),
        };
        // IDLE -> BUSY: from here the request is answered even if the
        // server stops meanwhile; `stop` may have closed it already.
        let state = &self.conn.entry.state;
        if !gate::begin(state) {
            let rejection = if gate::was_evicted(state) {
                Rejection::TooManyConnections
            } else {
                Rejection::ShuttingDown
            };
            return self.refuse(rejection, buffers);
        }
        let parsed = buffers.head.parse(&self.io.buffered()[..head_len]);
        self.io.consume(head_len);
        if let Err(rejection) = parsed {
            return self.refuse(rejection, buffers);
        }
        let handled = self.handle(buffers);
        let step = self.answer(handled, buffers);
        trim(&mut buffers.scratch);
        step
    }

    /// Answers `rejection` and ends the connection.
    fn refuse(&mut self, rejection: Rejection, buffers: &mut Buffers) -> Step {
        answer_refusal(self.shared, &mut self.io, rejection, &mut buffers.response);
        Step::End { linger: true }
    }

    /// Calls the handler with the parsed request; `buffers.response` holds
    /// what it answered. A panic is caught: it costs this request only.
    fn handle(&mut self, buffers: &mut Buffers) -> Handled {
        let Buffers {
            head,
            response,
            scratch,
            ..
        } = buffers;
        response.reset();
        let mut request = Request::new(
            head,
            &mut self.io,
            scratch,
            self.shared.config.body_timeout,
            &self.conn,
            &self.shared.registry,
            &self.thread,
        );
        let handler = &self.shared.handler;
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&mut request, response)));
        Handled {
            panicked: outcome.is_err(),
            body_done: request.body_done(),
            deferred: request.take_deferred(),
        }
    }

    /// Settles the answer to a handled request: a bare 500 after a panic,
    /// the handler's response, or a deferred one, which is either waited
    /// for here or released to the thread that answers it.
    fn answer(&mut self, handled: Handled, buffers: &mut Buffers) -> Step {
        let framing = buffers.head.framing;
        let with_body = *buffers.head.method() != Method::Head;
        let response = &mut buffers.response;
        let mut close = framing.last_request
            || !handled.body_done
            || handled.panicked
            || response.wants_close()
            || self.stopping();
        let keep_alive = if framing.keep_alive_1_0 {
            Some("keep-alive")
        } else {
            None
        };
        if handled.panicked {
            log::error!(
                "inline server: the handler panicked; answering 500 and closing the connection"
            );
            if let Some(slot) = &handled.deferred {
                slot.cancel();
            }
            response.reset();
            response.set_status(500);
        } else if let Some(slot) = handled.deferred {
            match self.take_deferred(slot, close, keep_alive) {
                Ok(given) => *response = given,
                Err(step) => return step,
            }
            close = close || response.wants_close() || self.stopping();
        }
        let answered = Answered {
            with_body,
            close,
            keep_alive,
            unread: !handled.body_done,
        };
        self.write_answer(response, answered)
    }

    /// A deferred answer (see `deferred.rs`). When the connection ends with
    /// it, or where the answerer cannot write without blocking (not Unix),
    /// this thread waits for it and writes it: Ok. Otherwise, once earlier
    /// pipelined answers are out, it is released to the answerer and this
    /// thread goes on to the next request: Err(Next) (Err(End) if those
    /// earlier answers could not be written).
    fn take_deferred(
        &mut self,
        slot: Arc<Slot>,
        close: bool,
        keep_alive: Option<&'static str>,
    ) -> Result<Response, Step> {
        if close || !cfg!(unix) {
            return Ok(slot.wait());
        }
        if self.io.flush().is_err() {
            slot.cancel();
            return Err(Step::End { linger: false });
        }
        match slot.release(keep_alive) {
            Released::ToAnswerer => {
                // Still busy for `stop` until the answerer has written it
                // and marked the connection idle.
                self.released = Some(slot);
                Err(Step::Next)
            }
            Released::Given(given) => Ok(given),
        }
    }

    /// Queues the answer, marks the connection idle for `stop` again and
    /// writes the answer unless a pipelined request's answer can go with
    /// it, or ends it (the answer closes it, the server stops, or a write
    /// failed).
    fn write_answer(&mut self, response: &Response, how: Answered) -> Step {
        let connection = if how.close {
            Some("close")
        } else {
            how.keep_alive
        };
        response.write_to(self.io.output(), how.with_body, connection);
        if how.close {
            return Step::End { linger: how.unread };
        }
        // BUSY -> IDLE: announce, then look (see `gate.rs`). Before the
        // answer goes out, as it does for one held back behind a pipelined
        // request: once the client has it, it may open another connection
        // and use it, and this one must have been idle (and for longer) by
        // then, or that one is closed in its stead to make room. Stopping:
        // `close` writes the answer first.
        let registry = &self.shared.registry;
        if !registry.go_idle(&self.conn.entry) {
            registry.closed_at_stop(&self.conn.entry);
            return Step::End { linger: false };
        }
        // Write now unless a pipelined request is already waiting, whose
        // answer can go out with this one.
        if self.io.buffered().is_empty() || self.io.pending_output() >= MAX_PENDING_OUTPUT {
            let _ = self.io.flush();
        }
        if self.io.broken {
            return Step::End { linger: false };
        }
        self.answered = true;
        Step::Next
    }

    fn stopping(&self) -> bool {
        self.shared.registry.gate.is_stopping()
    }

    /// Ends the connection: the last answers written, the socket closed,
    /// the buffers back to the thread, the connection no longer counted.
    fn close(mut self, linger: bool, buffers: &mut Buffers) {
        self.io.close(linger);
        give_back(self.io, buffers);
        self.shared.registry.end(&self.conn);
    }
}

fn give_back(io: Io, buffers: &mut Buffers) {
    let (input, output) = io.into_buffers();
    buffers.input = input;
    buffers.output = output;
    buffers.trim();
}

/// Whether a connection between requests goes to the lot now.
fn should_park(shared: &Shared) -> bool {
    shared.lot.is_some() && shared.registry.open() > shared.config.park_above
}

/// Whether this connection is the only one open, and polling is on.
fn alone(shared: &Shared) -> bool {
    !shared.config.spin.is_zero() && shared.registry.open() == 1
}

/// Reads until `io` holds a whole head; returns its length.
fn read_head(io: &mut Io, config: &Config) -> Result<usize, NoHead> {
    let max_header_bytes = config.max_header_bytes;
    let mut scanned = 0;
    let mut deadline = None;
    loop {
        let skip = head::leading_empty_lines(io.buffered());
        if skip > 0 {
            // Empty lines before a request line are skipped (RFC 9112
            // §2.2); the head's clock runs from the first of them.
            deadline.get_or_insert_with(|| Instant::now() + config.header_timeout);
            io.consume(skip);
            scanned = 0;
        }
        let buffered = io.buffered();
        if !buffered.is_empty() {
            // The head's clock starts at its first byte.
            deadline.get_or_insert_with(|| Instant::now() + config.header_timeout);
            if let Some(end) = head::find_end(buffered, scanned) {
                return if end <= max_header_bytes {
                    Ok(end)
                } else {
                    Err(NoHead::Refuse(Rejection::HeaderTooLarge))
                };
            }
            if buffered.len() >= max_header_bytes {
                return Err(NoHead::Refuse(Rejection::HeaderTooLarge));
            }
            scanned = buffered.len();
        }
        let wait = deadline.map_or(Wait::Idle, Wait::Until);
        match io.fill(wait, max_header_bytes) {
            Ok(0) => return Err(NoHead::Quiet),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(match deadline {
                    Some(_) => NoHead::Refuse(Rejection::HeaderTimeout),
                    None => NoHead::Idle,
                })
            }
            // The connection failed: nothing to answer.
            Err(_) => return Err(NoHead::Quiet),
        }
    }
}

/// Has the handler render `rejection` (a bare status if it panics) and
/// queues it with `Connection: close`.
fn answer_refusal(shared: &Shared, io: &mut Io, rejection: Rejection, response: &mut Response) {
    response.reset();
    response.set_status(rejection.status());
    let rendered = panic::catch_unwind(AssertUnwindSafe(|| {
        shared.handler.refuse(rejection, response)
    }));
    if rendered.is_err() {
        response.reset();
        response.set_status(rejection.status());
    }
    response.write_to(io.output(), true, Some("close"));
}

/// Answers `rejection` on a connection that is not served, and closes it.
pub(crate) fn refuse(
    shared: &Shared,
    stream: &Arc<TcpStream>,
    rejection: Rejection,
    buffers: &mut Buffers,
) {
    let mut io = Io::new(
        Arc::clone(stream),
        Vec::new(),
        std::mem::take(&mut buffers.output),
        shared.config.socket_timeout,
        shared.config.keepalive_timeout,
    );
    answer_refusal(shared, &mut io, rejection, &mut buffers.response);
    io.close(false);
    buffers.output = io.into_buffers().1;
}
