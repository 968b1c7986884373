//! The request a [`Handler`] answers, and its body.
//!
//! Made by the thread serving the connection for each head it parsed, and
//! lent to the handler on that thread for the length of one call
//! (`connection.rs`); it borrows the connection's buffers rather than
//! owning anything, so a request costs no allocation. Only
//! [`Request::defer`] reaches past it, to another thread (`deferred.rs`).
//!
//! The body is read only if the handler asks for it, under the body
//! deadline (counted from the first read of it), and never past its end:
//! a `Content-Length` body to its length, a chunked one to its last chunk.
//! `Expect: 100-continue` is answered when the handler first reads. A body
//! the handler leaves unread is not drained (that would read as much as
//! the client cares to send): the connection closes after the answer.
//!
//! [`Handler`]: super::Handler

use std::convert::TryFrom;
use std::fmt;
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chunked::Chunked;
use super::deferred::{Deferred, Slot};
use super::head::Head;
use super::io::{Io, Wait};
use super::registry::{Conn, Registry};
use crate::request_line::{HTTPVersion, Method};

/// How far the body has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    Chunked(Chunked),
    /// The whole body is read (or there is none).
    Done,
    /// Reading failed part-way: what is left cannot be found.
    Failed,
}

/// One request, for the duration of [`Handler::handle`].
///
/// [`Handler::handle`]: super::Handler::handle
pub struct Request<'c> {
    head: &'c Head,
    io: &'c mut Io,
    body: BodyState,
    /// When the body must be complete; set at its first read.
    body_deadline: Option<Instant>,
    body_timeout: Duration,
    /// `Expect: 100-continue` not answered yet.
    continue_pending: bool,
    /// Where `read_body` collects a body that is not all buffered already.
    scratch: &'c mut Vec<u8>,
    /// The connection, and what a deferred answer needs of the server.
    conn: &'c Conn,
    registry: &'c Arc<Registry>,
    /// The thread serving the connection now (woken when a deferred
    /// answer is written).
    thread: &'c std::thread::Thread,
    /// Set by [`Request::defer`].
    deferred: Option<Arc<Slot>>,
}

/// Why [`Request::read_body`] could not return the body.
#[derive(Debug)]
pub enum BodyError {
    /// The body is larger than the limit; `declared` is its
    /// `Content-Length` when it had one (then nothing was read).
    TooLarge { declared: Option<u64> },
    /// The body did not arrive within the body deadline, or a read
    /// stalled for the socket timeout.
    TimedOut,
    /// The client closed the connection after `received` of the
    /// `declared` bytes.
    Incomplete {
        received: u64,
        declared: Option<u64>,
    },
    /// The chunked encoding is broken (or another read error).
    Invalid(io::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge { declared: Some(n) } => write!(f, "the body is {n} bytes, over the limit"),
            BodyError::TooLarge { declared: None } => write!(f, "the body is over the limit"),
            BodyError::TimedOut => write!(f, "the body did not arrive in time"),
            BodyError::Incomplete {
                received,
                declared: Some(declared),
            } => write!(
                f,
                "the connection ended after {received} of the {declared} bytes declared in Content-Length"
            ),
            BodyError::Incomplete { received, declared: None } => {
                write!(f, "the connection ended after {received} bytes, in the middle of the chunked body")
            }
            BodyError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl<'c> Request<'c> {
    /// The request whose head is `head`, its body (if any) next in `io`.
    pub(crate) fn new(
        head: &'c Head,
        io: &'c mut Io,
        scratch: &'c mut Vec<u8>,
        body_timeout: Duration,
        conn: &'c Conn,
        registry: &'c Arc<Registry>,
        thread: &'c std::thread::Thread,
    ) -> Request<'c> {
        let framing = head.framing;
        let body = match (framing.chunked, framing.content_length) {
            (true, _) => BodyState::Chunked(Chunked::default()),
            (false, Some(len)) if len > 0 => BodyState::Length(len),
            _ => BodyState::Done,
        };
        Request {
            head,
            io,
            body,
            body_deadline: None,
            body_timeout,
            continue_pending: framing.expect_continue,
            scratch,
            conn,
            registry,
            thread,
            deferred: None,
        }
    }

    /// After the handler: the deferred answer's slot, if it deferred.
    pub(crate) fn take_deferred(&mut self) -> Option<Arc<Slot>> {
        self.deferred.take()
    }

    // The accessors of the head return `'c` borrows (the head outlives the
    // request), so a handler can keep them while it reads the body.

    pub fn method(&self) -> &'c Method {
        self.head.method()
    }

    /// The request target as sent: the path and the query.
    pub fn url(&self) -> &'c str {
        self.head.target()
    }

    pub fn http_version(&self) -> HTTPVersion {
        self.head.version()
    }

    /// The value of the first field named `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&'c str> {
        self.head.field(name)
    }

    /// Every field, in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&'c str, &'c str)> + 'c {
        self.head.fields()
    }

    /// The `Content-Length`, if the body has one (a chunked body has not).
    pub fn body_length(&self) -> Option<u64> {
        self.head.framing.content_length
    }

    /// True if the request has a body (a non-zero `Content-Length`, or a
    /// chunked one).
    pub fn has_body(&self) -> bool {
        self.head.framing.chunked || self.head.framing.content_length.is_some_and(|n| n > 0)
    }

    /// True if the body is chunked.
    pub fn is_chunked(&self) -> bool {
        self.head.framing.chunked
    }

    /// True once the body has been read to its end (or there is none).
    pub fn body_done(&self) -> bool {
        self.body == BodyState::Done
    }

    /// Answers this request later, from any thread, with
    /// [`Deferred::answer`] (see `deferred.rs`): the handler returns at
    /// once and what it put in its `response` is not used. Read the body
    /// first: with a body left unread the connection closes after the
    /// answer. A request is deferred at most once (a second call panics:
    /// a bug in the handler, answered 500 like any panic).
    pub fn defer(&mut self) -> Deferred {
        assert!(self.deferred.is_none(), "a request deferred twice");
        let slot = Arc::new(Slot::new(
            Arc::clone(&self.conn.entry),
            self.thread.clone(),
            Arc::clone(self.registry),
            *self.head.method() != Method::Head,
        ));
        self.deferred = Some(Arc::clone(&slot));
        Deferred::new(slot)
    }

    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.conn.peer.as_ref()
    }

    /// The body as a reader (see the module docs for the deadlines).
    pub fn body<'r>(&'r mut self) -> Body<'r, 'c> {
        Body { request: self }
    }

    /// Reads the whole body, at most `limit` bytes. A `Content-Length` over
    /// the limit is refused before anything is read; a chunked body is read
    /// to at most `limit + 1` bytes. When the whole body has arrived with
    /// the head (the usual case for a small one) the slice points into the
    /// connection's buffer and nothing is copied.
    pub fn read_body(&mut self, limit: usize) -> Result<&[u8], BodyError> {
        let declared = self.head.framing.content_length;
        if let Some(len) = declared.filter(|&len| len > limit as u64) {
            return Err(BodyError::TooLarge {
                declared: Some(len),
            });
        }
        if let (BodyState::Length(left), false) = (self.body, self.continue_pending) {
            let left = left as usize; // at most `limit`: checked above
            if self.io.buffered().len() >= left {
                self.body = BodyState::Done;
                let body = self.io.take(left);
                return Ok(self.io.bytes(body));
            }
        }
        let mut scratch = std::mem::take(self.scratch);
        scratch.clear();
        let result = self.collect(&mut scratch, limit);
        *self.scratch = scratch;
        match result {
            Ok(()) => Ok(self.scratch.as_slice()),
            Err(e) => Err(e),
        }
    }

    fn collect(&mut self, into: &mut Vec<u8>, limit: usize) -> Result<(), BodyError> {
        let declared = self.head.framing.content_length;
        let mut chunk = [0u8; 8192];
        loop {
            match self.read_some(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if into.len() + n > limit {
                        return Err(BodyError::TooLarge { declared: None });
                    }
                    into.extend_from_slice(&chunk[..n]);
                }
                Err(e) => {
                    return Err(match e.kind() {
                        ErrorKind::TimedOut | ErrorKind::WouldBlock => BodyError::TimedOut,
                        ErrorKind::UnexpectedEof => BodyError::Incomplete {
                            received: into.len() as u64,
                            declared,
                        },
                        _ => BodyError::Invalid(e),
                    })
                }
            }
        }
    }

    /// Reads some body bytes; Ok(0) at the end of the body.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if matches!(self.body, BodyState::Done) || buf.is_empty() {
            return Ok(0);
        }
        if self.body == BodyState::Failed {
            return Err(io::Error::other("an earlier read of this body failed"));
        }
        if self.continue_pending {
            self.continue_pending = false;
            let io = &mut *self.io;
            io.output()
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            io.flush()?;
        }
        let body_timeout = self.body_timeout;
        let deadline = *self
            .body_deadline
            .get_or_insert_with(|| Instant::now() + body_timeout);
        let wait = Wait::Until(deadline);
        let result = match &mut self.body {
            BodyState::Length(left) => {
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                match self.io.read_into(&mut buf[..want], wait) {
                    Ok(0) => Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the connection ended in the middle of the body",
                    )),
                    Ok(n) => {
                        *left -= n as u64;
                        if *left == 0 {
                            self.body = BodyState::Done;
                        }
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            }
            BodyState::Chunked(chunked) => {
                let mut source = IoSource {
                    io: &mut *self.io,
                    wait,
                };
                let read = chunked.read(&mut source, buf);
                if chunked.is_done() {
                    self.body = BodyState::Done;
                }
                read
            }
            BodyState::Done | BodyState::Failed => Ok(0),
        };
        if result.is_err() {
            self.body = BodyState::Failed;
        }
        result
    }
}

/// The connection's buffer as a `Read` for the chunked decoder.
struct IoSource<'a> {
    io: &'a mut Io,
    wait: Wait,
}

impl Read for IoSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read_into(buf, self.wait)
    }
}

/// A request's body as a reader: see [`Request::body`].
pub struct Body<'r, 'c> {
    request: &'r mut Request<'c>,
}

impl Read for Body<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.request.read_some(buf)
    }
}
