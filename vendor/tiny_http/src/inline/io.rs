//! One connection's socket as the inline server uses it: a read buffer
//! whose reads are bounded by deadlines, and the answers written but not
//! yet sent.
//!
//! Used by the thread serving the connection (and the request it hands the
//! handler, on that same thread); a connection parked between requests
//! keeps only the socket's read timeout, and gets a new `Io` on the thread
//! that takes it up.
//!
//! A blocking socket only offers a timeout per read (`SO_RCVTIMEO`), which
//! a client defeats by sending a byte just inside it. So every read here
//! says what it waits for ([`Wait`]): before each read that reaches the
//! socket, the timeout is set to what is left of the deadline, never more
//! than the stall timeout; once a deadline has passed the read fails with
//! `TimedOut` without touching the socket. The system call that sets the
//! timeout is skipped when the value is unchanged, so a keep-alive client
//! that sends each request in one packet costs none: the idle timeout stays
//! set between requests, and the rest of a request is already buffered.
//! The one exception is [`Io::poll_for_input`], which reads without
//! blocking for a bounded moment before the idle read (and whose time the
//! keep-alive clock, started by that read, does not count).
//!
//! Answers are appended to `output` and written when the connection would
//! otherwise wait for the client (before any read that reaches the
//! socket), or at once when no pipelined request is waiting: one write
//! system call per answer, fewer for pipelined ones.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a read may wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The first byte of a request: the idle (keep-alive) timeout.
    Idle,
    /// A part of a request that must be complete by this instant.
    Until(Instant),
}

/// Smallest read timeout set: `SO_RCVTIMEO` of zero would mean "forever".
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

pub(crate) struct Io {
    pub(crate) stream: Arc<TcpStream>,
    /// Bytes read and not yet used are `input[start..end]`.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Answers not yet written.
    output: Vec<u8>,
    /// The longest one read may block.
    stall: Duration,
    /// How long to wait for a request to begin.
    idle: Duration,
    /// The read timeout the socket has now, if this set it.
    applied: Option<Duration>,
    /// A write failed: the connection is unusable.
    pub(crate) broken: bool,
}

impl Io {
    pub(crate) fn new(
        stream: Arc<TcpStream>,
        input: Vec<u8>,
        output: Vec<u8>,
        stall: Duration,
        idle: Duration,
    ) -> Io {
        Io {
            stream,
            input,
            start: 0,
            end: 0,
            output,
            stall,
            idle,
            applied: None,
            broken: false,
        }
    }

    /// The read timeout this set on the socket, if any (for [`Io::resume`]).
    pub(crate) fn read_timeout(&self) -> Option<Duration> {
        self.applied
    }

    /// Takes up a connection whose socket has this read timeout already.
    pub(crate) fn resume(&mut self, read_timeout: Option<Duration>) {
        self.applied = read_timeout;
    }

    /// Gives back the buffers, emptied, for the thread's next connection.
    pub(crate) fn into_buffers(mut self) -> (Vec<u8>, Vec<u8>) {
        self.output.clear();
        (
            std::mem::take(&mut self.input),
            std::mem::take(&mut self.output),
        )
    }

    /// The bytes read and not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.input[self.start..self.end]
    }

    /// Consumes the next `n` buffered bytes (`n` at most what is buffered)
    /// and returns where they are: they stay in place until the next read.
    pub(crate) fn take(&mut self, n: usize) -> std::ops::Range<usize> {
        let range = self.start..self.start + n.min(self.end - self.start);
        self.consume(n);
        range
    }

    /// Bytes returned by [`Io::take`].
    pub(crate) fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.input[range]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes from the socket into the buffer, which grows to at
    /// most `max` bytes of unconsumed data. Writes pending answers first:
    /// the client may be waiting for them before it sends more. Ok(0) means
    /// the client closed its side (or the buffer holds `max` already).
    pub(crate) fn fill(&mut self, wait: Wait, max: usize) -> io::Result<usize> {
        self.flush()?;
        if !self.make_room(max) {
            return Ok(0);
        }
        self.set_timeout(wait)?;
        loop {
            match (&*self.stream).read(&mut self.input[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A socket timeout reads as WouldBlock on Unix.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(io::Error::new(ErrorKind::TimedOut, e))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes room to read into, moving unconsumed bytes to the front or
    /// growing the buffer up to `max`; false if it holds `max` already.
    fn make_room(&mut self, max: usize) -> bool {
        if self.end == self.input.len() {
            if self.start > 0 {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let grown = (self.input.len() * 2).max(4096).min(max);
                if grown <= self.input.len() {
                    return false;
                }
                self.input.resize(grown, 0);
            }
        }
        true
    }

    /// Copies buffered bytes into `buf`, reading from the socket first if
    /// none are buffered. Ok(0): the client closed its side.
    pub(crate) fn read_into(&mut self, buf: &mut [u8], wait: Wait) -> io::Result<usize> {
        if self.start == self.end && self.fill(wait, self.input.len().max(4096))? == 0 {
            return Ok(0);
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.input[self.start..self.start + n]);
        self.consume(n);
        Ok(n)
    }

    /// Polls the socket for input without blocking, for at most `limit`
    /// (and never past the idle timeout) and while `worth` holds: true
    /// once bytes were read, false if none came, the client closed (the
    /// blocking read that follows sees it too), or the socket could not be
    /// polled. Writes pending answers first, as [`Io::fill`] does.
    ///
    /// Why: a thread that blocks for the next request sleeps, and so may
    /// its core; the client's next request must then wake both, which on a
    /// virtual machine means the host waking a halted virtual CPU, slower
    /// than answering many a request. A client that sends its next request within `limit` is
    /// answered with neither asleep. The caller decides when this is
    /// worth a core's time (see `connection.rs`).
    pub(crate) fn poll_for_input(
        &mut self,
        limit: Duration,
        worth: &dyn Fn() -> bool,
    ) -> io::Result<bool> {
        self.flush()?;
        if !self.make_room(4096) || self.stream.set_nonblocking(true).is_err() {
            return Ok(false);
        }
        let started = Instant::now();
        let limit = limit.min(self.idle);
        let read = loop {
            match (&*self.stream).read(&mut self.input[self.end..]) {
                Ok(n) => break Ok(n),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    if started.elapsed() >= limit || !worth() {
                        break Ok(0);
                    }
                    std::hint::spin_loop();
                }
                Err(e) => break Err(e),
            }
        };
        if let Ok(n) = read {
            self.end += n;
        }
        // Left non-blocking, every later read would fail at once: the
        // connection is unusable then.
        if let Err(e) = self.stream.set_nonblocking(false) {
            self.broken = true;
            return Err(e);
        }
        read.map(|n| n > 0)
    }

    fn set_timeout(&mut self, wait: Wait) -> io::Result<()> {
        let timeout = match wait {
            Wait::Idle => self.idle,
            Wait::Until(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(ErrorKind::TimedOut, "read deadline passed"));
                }
                left.min(self.stall)
            }
        }
        .max(MIN_TIMEOUT);
        if self.applied != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.applied = Some(timeout);
        }
        Ok(())
    }

    /// Queues bytes to write (an answer).
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    pub(crate) fn pending_output(&self) -> usize {
        self.output.len()
    }

    /// Writes the pending answers. A failure (the write timeout passed, or
    /// the client is gone) marks the connection broken.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let written = (&*self.stream).write_all(&self.output);
        self.output.clear();
        if written.is_err() {
            self.broken = true;
        }
        written
    }

    /// Ends the connection: writes what is pending, then closes the write
    /// side so the client sees the end of the last answer at once. With
    /// `linger`, request bytes may still be on their way (a body nobody
    /// read): they are read and dropped for a moment first, because closing
    /// a socket with unread input resets the connection, and the reset can
    /// destroy the answer before the client has read it.
    pub(crate) fn close(&mut self, linger: bool) {
        let _ = self.flush();
        let _ = self.stream.shutdown(Shutdown::Write);
        if linger && !self.broken {
            const LINGER: Duration = Duration::from_secs(1);
            const MOST: usize = 256 * 1024;
            let until = Instant::now() + LINGER;
            let mut dropped = self.end - self.start;
            self.consume(dropped);
            while dropped < MOST {
                match self.fill(Wait::Until(until), self.input.len().max(4096)) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        dropped += n;
                        self.consume(n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A connected pair: the server's side in an `Io` (idle timeout
    /// `idle`), and the client's socket.
    fn pair(idle: Duration) -> (Io, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let stall = Duration::from_secs(10);
        let io = Io::new(Arc::new(server), Vec::new(), Vec::new(), stall, idle);
        (io, client)
    }

    /// The socket blocks again: a read that must wait 50 ms does.
    fn blocks(io: &mut Io) -> bool {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(50);
        let timed_out = matches!(io.fill(Wait::Until(deadline), 4096),
            Err(e) if e.kind() == ErrorKind::TimedOut);
        timed_out && started.elapsed() >= Duration::from_millis(40)
    }

    #[test]
    fn input_that_comes_within_the_window_is_read_and_the_socket_blocks_again() {
        let (mut io, mut client) = pair(Duration::from_secs(10));
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(2));
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            client
        });
        assert!(io
            .poll_for_input(Duration::from_secs(10), &|| true)
            .unwrap());
        let _client = sender.join().unwrap();
        // One segment on loopback: all of it in one read.
        assert_eq!(io.buffered(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        io.consume(io.buffered().len());
        assert!(blocks(&mut io), "the socket was left non-blocking");
    }

    #[test]
    fn no_input_ends_the_poll_at_the_window_at_the_idle_timeout_or_when_not_worth_it() {
        let (mut io, _client) = pair(Duration::from_secs(10));
        let started = Instant::now();
        assert!(!io
            .poll_for_input(Duration::from_millis(10), &|| true)
            .unwrap());
        assert!(started.elapsed() >= Duration::from_millis(10));
        assert!(blocks(&mut io), "the socket was left non-blocking");

        // `worth` turning false (a second connection opened) ends it.
        let (mut io, _client) = pair(Duration::from_secs(60));
        let started = Instant::now();
        assert!(!io
            .poll_for_input(Duration::from_secs(60), &|| false)
            .unwrap());
        assert!(started.elapsed() < Duration::from_secs(10));

        // Never longer than the idle timeout.
        let (mut io, _client) = pair(Duration::from_millis(20));
        let started = Instant::now();
        assert!(!io
            .poll_for_input(Duration::from_secs(60), &|| true)
            .unwrap());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_client_that_closed_reads_as_no_input() {
        let (mut io, client) = pair(Duration::from_secs(10));
        client.shutdown(Shutdown::Write).unwrap();
        assert!(!io
            .poll_for_input(Duration::from_secs(10), &|| true)
            .unwrap());
        assert!(io.buffered().is_empty());
        // ... and the read that follows sees the end at once.
        assert_eq!(io.fill(Wait::Idle, 4096).unwrap(), 0);
    }
}
