//! PATCHED (product-update-service): one connection, on its thread: read a
//! head, hand the request to the handler, write the answer, and again,
//! until the client or the server ends it.

use std::net::TcpStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::deferred::{Finished, Released, Slot};
use super::gate;
use super::head::{self, Head};
use super::io::{Io, Wait};
use super::lot::Parked;
use super::request::{BodyState, Request};
use super::response::Response;
use super::server::{self, Conn, Shared};
use super::Rejection;
use crate::Method;

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

/// How reading a head ended, when it did not produce one.
enum NoHead {
    /// The client closed, or the read failed: nothing to answer.
    Quiet,
    /// No request began within the keep-alive timeout: nothing to answer.
    Idle,
    /// Answer this, then close.
    Refuse(Rejection),
}

/// Serves `conn` until it ends, or until it is parked between requests
/// (see `lot.rs`). `resumed`: it comes from the lot, its socket's read
/// timeout as it was left.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    mut conn: Conn,
    resumed: Option<Option<Duration>>,
    buffers: &mut Buffers,
) {
    let config = &shared.config;
    if resumed.is_none() {
        // Reads are bounded per phase (see `io.rs`); writes by the socket
        // timeout.
        let _ = conn
            .entry
            .stream
            .set_write_timeout(Some(config.socket_timeout));
        // One write per answer: nothing for Nagle's algorithm to coalesce.
        let _ = conn.entry.stream.set_nodelay(true);
    }
    let this_thread = thread::current();
    let mut io = open(shared, &conn, buffers, resumed.flatten());
    // An answer released to another thread (see `deferred.rs`): written
    // by it while this thread reads the next request.
    let mut released: Option<Arc<Slot>> = None;
    // An answer has gone out since this thread took the connection: from
    // then on, between requests, it may park.
    let mut answered = false;
    let linger = loop {
        if answered && released.is_none() && io.buffered().is_empty() && should_park(shared) {
            if let Some(lot) = &shared.lot {
                if io.flush().is_err() {
                    break false;
                }
                let read_timeout = io.read_timeout();
                give_back(io, buffers);
                let parked = Parked {
                    conn,
                    read_timeout,
                    since: Instant::now(),
                };
                match lot.park(parked) {
                    Ok(()) => return,
                    Err(back) => {
                        conn = back.conn;
                        io = open(shared, &conn, buffers, back.read_timeout);
                        answered = false;
                    }
                }
            }
        }
        // The only connection open, its client likely to send again at
        // once (a test, a benchmark, a proxy's one upstream connection):
        // poll briefly rather than sleep (see `Io::poll_for_input`), until
        // a second one opens: pollers would take the cores the others
        // need. Not while another thread writes the last answer.
        if released.is_none()
            && io.buffered().is_empty()
            && alone(shared)
            && io.poll_for_input(config.spin, &|| alone(shared)).is_err()
        {
            break false;
        }
        let head = read_head(&mut io, config.max_head_bytes, config.head_timeout);
        // Nothing goes out, and the connection does not close, before the
        // released answer is written.
        if let Some(slot) = released.take() {
            match slot.finish() {
                // The keep-alive clock started while the answer was still
                // being made: it starts again now that the client has it.
                Finished::KeepOpen if matches!(head, Err(NoHead::Idle)) => continue,
                Finished::KeepOpen => {}
                // Lingering: input left unread when the socket closes would
                // reset the connection, and with it the answer just sent.
                Finished::Close => break true,
                Finished::Rest(rest) => {
                    io.output().extend_from_slice(&rest);
                    break true;
                }
            }
        }
        let head_len = match head {
            Ok(len) => len,
            Err(NoHead::Quiet | NoHead::Idle) => break false,
            Err(NoHead::Refuse(rejection)) => {
                answer_refusal(shared, &mut io, rejection, &mut buffers.response);
                break true;
            }
        };
        // IDLE -> BUSY: from here the request is answered even if the
        // server stops meanwhile; `stop` may have closed it already.
        if !gate::begin(&conn.entry.state) {
            answer_refusal(
                shared,
                &mut io,
                Rejection::ShuttingDown,
                &mut buffers.response,
            );
            break true;
        }
        let parsed = buffers.head.parse(&io.buffered()[..head_len]);
        io.consume(head_len);
        if let Err(rejection) = parsed {
            answer_refusal(shared, &mut io, rejection, &mut buffers.response);
            break true;
        }
        let entry = &conn.entry;
        let head = &buffers.head;
        let framing = head.framing;
        let response = &mut buffers.response;
        response.reset();
        let mut request = Request {
            head,
            io: &mut io,
            body: match (framing.chunked, framing.content_length) {
                (true, _) => BodyState::Chunked(Default::default()),
                (false, Some(len)) if len > 0 => BodyState::Length(len),
                _ => BodyState::Done,
            },
            body_deadline: None,
            body_timeout: config.body_timeout,
            continue_pending: framing.expect_continue,
            scratch: &mut buffers.scratch,
            remote_addr: conn.peer,
            shared,
            entry,
            thread: &this_thread,
            deferred: None,
        };
        let handled = panic::catch_unwind(AssertUnwindSafe(|| {
            shared.handler.handle(&mut request, response)
        }));
        let body_done = request.body_done();
        let deferred = request.deferred.take();
        let with_body = *head.method() != Method::Head;
        let mut close = framing.last_request
            || !body_done
            || handled.is_err()
            || response.wants_close()
            || shared.gate.is_stopping();
        let keep_alive = if framing.keep_alive_1_0 {
            Some("keep-alive")
        } else {
            None
        };
        if handled.is_err() {
            log::error!(
                "inline server: the handler panicked; answering 500 and closing the connection"
            );
            if let Some(slot) = &deferred {
                slot.cancel();
            }
            response.reset();
            response.set_status(500);
        } else if let Some(slot) = deferred {
            // Answered later, by another thread (see `deferred.rs`). When
            // the connection ends with this answer, or cannot be written
            // to without blocking from there, this thread waits for it.
            let given = if close || !cfg!(unix) {
                slot.wait()
            } else {
                // Earlier pipelined answers go first.
                if io.flush().is_err() {
                    slot.cancel();
                    break false;
                }
                match slot.release(keep_alive) {
                    Released::ToAnswerer => {
                        // Still busy for `stop` until the answerer has
                        // written it and marked the connection idle.
                        released = Some(slot);
                        continue;
                    }
                    Released::Given(given) => given,
                }
            };
            *response = given;
            close = close || response.wants_close() || shared.gate.is_stopping();
        }
        let connection = if close { Some("close") } else { keep_alive };
        response.write_to(io.output(), with_body, connection);
        if close {
            break !body_done;
        }
        // Write now unless a pipelined request is already waiting, whose
        // answer can go out with this one.
        if io.buffered().is_empty() || io.pending_output() >= MAX_PENDING_OUTPUT {
            let _ = io.flush();
        }
        if io.broken {
            break false;
        }
        // BUSY -> IDLE: announce, then look (see `gate.rs`).
        if !shared.gate.go_idle(&entry.state) {
            server::closed_at_stop(shared, entry);
            break false;
        }
        answered = true;
    };
    io.close(linger);
    give_back(io, buffers);
    server::end(shared, &conn);
}

/// The connection's socket with this thread's buffers.
fn open(shared: &Shared, conn: &Conn, buffers: &mut Buffers, read_timeout: Option<Duration>) -> Io {
    let mut io = Io::new(
        Arc::clone(&conn.entry.stream),
        std::mem::take(&mut buffers.input),
        std::mem::take(&mut buffers.output),
        shared.config.socket_timeout,
        shared.config.keep_alive_timeout,
    );
    io.resume(read_timeout);
    io
}

fn give_back(io: Io, buffers: &mut Buffers) {
    let (input, output) = io.into_buffers();
    buffers.input = input;
    buffers.output = output;
}

/// Whether a connection between requests goes to the lot now.
fn should_park(shared: &Shared) -> bool {
    shared.lot.is_some() && shared.config.open_connections.load(Relaxed) > shared.config.park_above
}

/// Whether this connection is the only one open, and polling is on.
fn alone(shared: &Shared) -> bool {
    !shared.config.spin.is_zero() && shared.config.open_connections.load(Relaxed) == 1
}

/// Reads until `io` holds a whole head; returns its length.
fn read_head(
    io: &mut Io,
    max_head_bytes: usize,
    head_timeout: std::time::Duration,
) -> Result<usize, NoHead> {
    let mut scanned = 0;
    let mut deadline = None;
    loop {
        let buffered = io.buffered();
        if !buffered.is_empty() {
            // The head's clock starts at its first byte.
            deadline.get_or_insert_with(|| Instant::now() + head_timeout);
            if let Some(end) = head::find_end(buffered, scanned) {
                return if end <= max_head_bytes {
                    Ok(end)
                } else {
                    Err(NoHead::Refuse(Rejection::HeadTooLarge))
                };
            }
            if buffered.len() >= max_head_bytes {
                return Err(NoHead::Refuse(Rejection::HeadTooLarge));
            }
            scanned = buffered.len();
        }
        let wait = deadline.map_or(Wait::Idle, Wait::Until);
        match io.fill(wait, max_head_bytes) {
            Ok(0) => return Err(NoHead::Quiet),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(match deadline {
                    Some(_) => NoHead::Refuse(Rejection::HeadTimeout),
                    None => NoHead::Idle,
                })
            }
            // The connection failed: nothing to answer.
            Err(_) => return Err(NoHead::Quiet),
        }
    }
}

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
        shared.config.keep_alive_timeout,
    );
    answer_refusal(shared, &mut io, rejection, &mut buffers.response);
    io.close(false);
    buffers.output = io.into_buffers().1;
}
