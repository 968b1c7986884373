use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use crate::connection::Connection;

pub(crate) enum Stream {
    Http(Connection),
}

impl Stream {
    /// PATCHED (product-update-service): a second handle on the socket, or
    /// the error (upstream's `Clone` unwrapped it: out of file descriptors,
    /// the accept thread panicked).
    fn try_clone(&self) -> IoResult<Self> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(timeout),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // PATCHED (product-update-service): read timeouts and deadlines.
    clock: ReadClock,
}

/// PATCHED (product-update-service): what bounds the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ReadPhase {
    /// Waiting for the first byte of a request: the idle timeout applies.
    #[default]
    Idle,
    /// Reading a part of a request that must be complete by this instant
    /// (`None`: no deadline, only the stall timeout).
    Until(Option<Instant>),
    /// Like `Until(now + limit)`, with `now` taken at the next read: the
    /// clock of a body starts when somebody first reads it.
    FromNextRead(Option<Duration>),
}

/// PATCHED (product-update-service): turns the connection's limits into the
/// socket's read timeout.
///
/// A socket timeout bounds one read, so on its own it lets a client that
/// sends a byte just inside it hold a request for ever. Before every read
/// the clock sets the timeout to what is left of the current deadline (never
/// more than `stall`); once the deadline has passed a read fails with
/// `TimedOut` without touching the socket. The system call is skipped when
/// the timeout is unchanged, so a client that sends each request in one
/// packet costs none: the idle timeout stays set between requests, and the
/// rest of a request is already in the buffer above this stream.
#[derive(Debug, Default)]
struct ReadClock {
    stall: Option<Duration>,
    idle: Option<Duration>,
    phase: ReadPhase,
    /// The timeout the socket has now (`None`: unknown, never set here).
    applied: Option<Option<Duration>>,
}

impl ReadClock {
    /// The timeout for the next read, or `TimedOut` if the deadline passed.
    fn next_timeout(&mut self) -> IoResult<Option<Duration>> {
        let now = Instant::now();
        if let ReadPhase::FromNextRead(limit) = self.phase {
            self.phase = ReadPhase::Until(limit.map(|limit| now + limit));
        }
        match self.phase {
            ReadPhase::Idle => Ok(self.idle.or(self.stall)),
            ReadPhase::Until(None) | ReadPhase::FromNextRead(_) => Ok(self.stall),
            ReadPhase::Until(Some(deadline)) => {
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    return Err(IoError::new(ErrorKind::TimedOut, "read deadline passed"));
                }
                Ok(Some(self.stall.map_or(left, |stall| stall.min(left))))
            }
        }
    }
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            clock: ReadClock::default(),
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            clock: ReadClock::default(),
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// PATCHED (product-update-service): the timeouts of this (read) side:
    /// `stall` bounds every read, `idle` the wait for a request to begin.
    pub(crate) fn set_read_limits(&mut self, stall: Option<Duration>, idle: Option<Duration>) {
        self.clock.stall = stall;
        self.clock.idle = idle;
    }

    /// PATCHED (product-update-service): what bounds the reads from now on.
    pub(crate) fn set_read_phase(&mut self, phase: ReadPhase) {
        self.clock.phase = phase;
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        // PATCHED (product-update-service): see `ReadClock`.
        let timeout = self.clock.next_timeout()?;
        if self.clock.applied != Some(timeout) {
            self.stream.set_read_timeout(timeout)?;
            self.clock.applied = Some(timeout);
        }
        match self.stream.read(buf) {
            // A socket timeout reads as WouldBlock on Unix; callers (and
            // tiny_http's own 408) look for TimedOut.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                Err(IoError::new(ErrorKind::TimedOut, e))
            }
            result => result,
        }
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
