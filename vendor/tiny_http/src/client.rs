use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;

use crate::common::{HTTPVersion, Header, Method};
use crate::connection::Connection;
use crate::limits::{Limits, Rejection};
use crate::util::refined_tcp_stream::ReadPhase;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{Request, Response};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // PATCHED (product-update-service): lets a response end the connection
    close_handle: Arc<CloseHandle>,

    // PATCHED (product-update-service): bytes of the current request head
    // received so far
    head_bytes: usize,

    // PATCHED (product-update-service): the server's bounds
    limits: Arc<Limits>,
}

/// PATCHED (product-update-service): the message of the error that stops
/// reading a head over `max_head_bytes`.
const HEAD_TOO_LARGE: &str = "request head too large";

/// PATCHED (product-update-service): shared by a connection and each of its
/// requests. A response carrying `Connection: close` calls `close()`: the
/// socket's write side is shut down right after the response (the client sees
/// the end at once), and the connection reads no further requests.
pub(crate) struct CloseHandle {
    socket: Option<Connection>,
    requested: AtomicBool,
}

impl CloseHandle {
    pub(crate) fn new(socket: Option<Connection>) -> CloseHandle {
        CloseHandle {
            socket,
            requested: AtomicBool::new(false),
        }
    }

    pub(crate) fn close(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(socket) = &self.socket {
            // Both directions: the write side so the client sees the end of
            // the response, the read side so that draining an unread body
            // (which would otherwise read as many bytes as the client cares
            // to send, on the thread that answered) stops at once.
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// PATCHED (product-update-service): a bad `Content-Length`.
    InvalidContentLength,
    /// PATCHED (product-update-service): a body tiny_http reads itself
    /// timed out.
    BodyTimeout,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        close_handle: CloseHandle,
        limits: Arc<Limits>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        read_socket.set_read_limits(limits.socket_timeout, limits.keep_alive_timeout);

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            close_handle: Arc::new(close_handle),
            head_bytes: 0,
            limits,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    fn read_next_line(&mut self) -> IoResult<AsciiString> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            // PATCHED (product-update-service): upstream grew `buf` without
            // limit, so one endless header line could exhaust memory.
            if self.head_bytes >= self.limits.max_head_bytes {
                return Err(IoError::new(ErrorKind::InvalidData, HEAD_TOO_LARGE));
            }
            let mut one = [0u8; 1];
            let byte = match self.next_header_source.read(&mut one)? {
                0 => return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF")),
                _ => one[0],
            };

            // PATCHED (product-update-service): the head's clock starts at
            // its first byte.
            if self.head_bytes == 0 {
                let deadline = self
                    .limits
                    .head_timeout
                    .map(|limit| std::time::Instant::now() + limit);
                self.set_read_phase(ReadPhase::Until(deadline));
            }
            self.head_bytes += 1;

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf)
                    .map_err(|_| IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII"));
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// PATCHED (product-update-service): sets what bounds the next reads
    /// from the socket (see `ReadClock`), once it is the head reader's turn.
    fn set_read_phase(&mut self, phase: ReadPhase) -> bool {
        match self.next_header_source.inner_mut() {
            Some(reader) => {
                reader.get_mut().set_read_phase(phase);
                true
            }
            None => false,
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        self.head_bytes = 0;
        // PATCHED (product-update-service): the previous request's body is
        // done (this waits for that); until a new request begins, the
        // connection is idle.
        if !self.set_read_phase(ReadPhase::Idle) {
            let err = IoError::new(ErrorKind::ConnectionAborted, "previous request vanished");
            return Err(ReadError::ReadIoError(err));
        }
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                // PATCHED (product-update-service): a request line that is
                // not ASCII is a malformed request line, not a lost connection.
                let line = self.read_next_line().map_err(|e| match e.kind() {
                    ErrorKind::InvalidInput => ReadError::WrongRequestLine,
                    _ => ReadError::ReadIoError(e),
                })?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line().map_err(|e| match e.kind() {
                        ErrorKind::InvalidInput => ReadError::WrongHeader(version.clone()),
                        _ => ReadError::ReadIoError(e),
                    })?;

                    if line.is_empty() {
                        break;
                    };
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // PATCHED (product-update-service): upstream unwrapped this, so a
        // client gone before `peer_addr` (ENOTCONN) panicked the thread.
        let remote_addr = match self.remote_addr {
            Ok(addr) => addr,
            Err(ref e) => {
                return Err(ReadError::ReadIoError(IoError::new(
                    e.kind(),
                    e.to_string(),
                )))
            }
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // PATCHED (product-update-service): the body's clock starts when it
        // is first read, here for a small body or later by the application.
        // `data_source` holds the socket now (it was the head's reader).
        if let Some(reader) = data_source.inner_mut() {
            reader
                .get_mut()
                .set_read_phase(ReadPhase::FromNextRead(self.limits.body_timeout));
        }

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            remote_addr,
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e)
                    if e.kind() == ErrorKind::TimedOut =>
                {
                    ReadError::BodyTimeout
                }
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::InvalidContentLength => {
                    ReadError::InvalidContentLength
                }
            }
        })?;

        // return the request
        Ok(request.with_close_handle(Arc::clone(&self.close_handle)))
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        {
            let read = self.read();
            // PATCHED (product-update-service): the previous response said
            // `Connection: close`; whatever was read after it is discarded.
            if self.close_handle.requested() {
                return None;
            }
            // PATCHED (product-update-service): every refusal is answered
            // through `Limits::respond` (upstream sent empty bodies), then
            // the connection closes: after a broken request nobody knows
            // where the next one would start.
            let rejection = match read {
                Ok(rq) => Ok(rq),
                Err(ReadError::WrongRequestLine) => Err(Rejection::MalformedRequestLine),
                Err(ReadError::WrongHeader(_)) => Err(Rejection::MalformedHeader),
                Err(ReadError::InvalidContentLength) => Err(Rejection::InvalidContentLength),
                Err(ReadError::ExpectationFailed(_)) => Err(Rejection::ExpectationFailed),
                Err(ReadError::BodyTimeout) => Err(Rejection::BodyTimeout),
                // Nothing of a request arrived: an idle connection timed out.
                // There is nothing to answer; close quietly.
                Err(ReadError::ReadIoError(_)) if self.head_bytes == 0 => return None,
                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    Err(Rejection::HeadTimeout)
                }
                Err(ReadError::ReadIoError(ref err))
                    if err.kind() == ErrorKind::InvalidData
                        && err.to_string() == HEAD_TOO_LARGE =>
                {
                    Err(Rejection::HeadTooLarge)
                }
                Err(ReadError::ReadIoError(_)) => return None,
            };
            let rq = match rejection {
                Ok(rq) => rq,
                Err(rejection) => {
                    let writer = self.sink.next().unwrap();
                    self.limits
                        .answer(rejection)
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // PATCHED (product-update-service): upstream wrote the 505
                // through a second writer, which waits for the request's own
                // writer to finish while the request is still alive here: the
                // connection thread deadlocked for good and the client hung.
                // Answer through the request itself, then close.
                let response = self.limits.answer(Rejection::VersionNotSupported);
                let mut writer = rq.into_writer();
                response
                    .raw_print(&mut writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                let _ = writer.flush();
                return None;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            Some(rq)
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
