//! PATCHED (product-update-service): bounds on what one client can make the
//! server hold, and the answers tiny_http gives on its own when a client
//! crosses one (or sends something it cannot parse).
//!
//! Upstream tiny_http has no limits: a connection gets a thread for as long
//! as the client cares to keep it, a request head may grow without end, and
//! the few errors it answers by itself have empty bodies. `Limits` bounds
//! each of those, and `Limits::respond` lets the application write the
//! answers in the same format as the rest of its API.

use std::io::Cursor;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::{Header, Response};

/// Something tiny_http refuses before the application sees a request.
/// Every one of them ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the request line is not `METHOD target HTTP/x.y` in ASCII.
    MalformedRequestLine,
    /// 400: a header line is not `name: value` in ASCII.
    MalformedHeader,
    /// 400: `Content-Length` is not one decimal number (RFC 9112 §6.3 says
    /// such a message cannot be framed, so the connection must close).
    InvalidContentLength,
    /// 400: a `Transfer-Encoding` other than `chunked` alone (the inline
    /// server, `crate::inline`, decodes chunked and nothing else).
    UnsupportedTransferEncoding,
    /// 408: the request head did not arrive within `head_timeout`.
    HeadTimeout,
    /// 408: a body tiny_http reads itself (up to 1024 bytes, read before the
    /// application sees the request) did not arrive within `body_timeout`.
    BodyTimeout,
    /// 417: an `Expect` header other than `100-continue`.
    ExpectationFailed,
    /// 431: the request head is over `max_head_bytes`.
    HeadTooLarge,
    /// 505: an HTTP version above 1.1.
    VersionNotSupported,
    /// 503: `max_connections` connections are being served already. Answered
    /// by the accept thread, with no connection thread.
    TooManyConnections,
    /// 503: the request arrived after the `Server` was dropped.
    ShuttingDown,
}

impl Rejection {
    /// The status code of the answer.
    pub fn status(self) -> u16 {
        match self {
            Rejection::MalformedRequestLine
            | Rejection::MalformedHeader
            | Rejection::InvalidContentLength
            | Rejection::UnsupportedTransferEncoding => 400,
            Rejection::HeadTimeout | Rejection::BodyTimeout => 408,
            Rejection::ExpectationFailed => 417,
            Rejection::HeadTooLarge => 431,
            Rejection::VersionNotSupported => 505,
            Rejection::TooManyConnections | Rejection::ShuttingDown => 503,
        }
    }
}

/// Builds the answer to a rejection. tiny_http adds `Connection: close`.
pub type Responder = Arc<dyn Fn(Rejection) -> Response<Cursor<Vec<u8>>> + Send + Sync>;

/// The bounds a `Server` enforces. `Limits::default()` is upstream's
/// behaviour: no bounds, empty error bodies.
#[derive(Clone)]
pub struct Limits {
    /// Connections served at once; each has a thread. Past it, the accept
    /// thread answers `TooManyConnections` and closes.
    pub max_connections: Option<usize>,
    /// The number of connections being served, kept by the server; keep a
    /// clone to read it.
    pub open_connections: Arc<AtomicUsize>,
    /// The longest one read or write on a connection may block.
    pub socket_timeout: Option<Duration>,
    /// How long a connection may wait for the first byte of its next request
    /// (or of its first). Closed silently past it: there is no request to
    /// answer.
    pub keep_alive_timeout: Option<Duration>,
    /// The whole request head must arrive within this, counted from its
    /// first byte.
    pub head_timeout: Option<Duration>,
    /// A whole request body must arrive within this, counted from the first
    /// time it is read.
    pub body_timeout: Option<Duration>,
    /// The request line plus all header lines, with their line ends.
    pub max_head_bytes: usize,
    /// The answer to each rejection.
    pub respond: Responder,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: None,
            open_connections: Arc::default(),
            socket_timeout: None,
            keep_alive_timeout: None,
            head_timeout: None,
            body_timeout: None,
            max_head_bytes: usize::MAX,
            respond: Arc::new(|rejection| {
                Response::from_data(Vec::new()).with_status_code(rejection.status())
            }),
        }
    }
}

impl Limits {
    /// The answer to `rejection`, always with `Connection: close`.
    pub(crate) fn answer(&self, rejection: Rejection) -> Response<Cursor<Vec<u8>>> {
        (self.respond)(rejection).with_header(
            Header::from_bytes(&b"Connection"[..], &b"close"[..]).expect("static header"),
        )
    }
}
