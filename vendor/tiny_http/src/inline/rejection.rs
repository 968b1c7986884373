//! What the server refuses before a request reaches the handler, and the
//! status code of each refusal.
//!
//! A plain value: made by the head parser (`head.rs`) and the connection
//! loop (`connection.rs`) on a connection's thread, or by the accepting
//! thread (`server.rs`), and rendered by [`Handler::refuse`] on that same
//! thread. It exists so that the application writes every answer, refusals
//! included, in the format of the rest of its API.
//!
//! [`Handler::refuse`]: super::Handler::refuse

/// Something the server refuses before the handler sees a request. Every
/// one of them ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the request line is not `METHOD target HTTP/x.y` in ASCII.
    MalformedRequestLine,
    /// 400: a header line is not `name: value` in ASCII.
    MalformedHeader,
    /// 400: `Content-Length` is not one decimal number (RFC 9112 §6.3 says
    /// such a message cannot be framed, so the connection must close).
    InvalidContentLength,
    /// 400: a `Transfer-Encoding` that does not end with `chunked`, or
    /// lists it twice: the body's length cannot be known (RFC 9112 §6.3).
    InvalidTransferEncoding,
    /// 400: an HTTP/1.1 request without `Host`, or any request with two,
    /// or with one that is not `host[:port]` (RFC 9112 §3.2).
    InvalidHost,
    /// 501: a transfer coding other than `chunked` (the server decodes
    /// chunked and nothing else; RFC 9112 §6.1).
    UnsupportedTransferEncoding,
    /// 408: the request head did not arrive within `header_timeout`. (A
    /// body's timeout is the handler's to answer: the server reports it as
    /// `BodyError::TimedOut`.)
    HeaderTimeout,
    /// 417: an `Expect` header other than `100-continue`.
    ExpectationFailed,
    /// 431: the request head is over `max_header_bytes`.
    HeaderTooLarge,
    /// 505: an HTTP version above 1.1.
    VersionNotSupported,
    /// 503: `max_connections` connections are being served already.
    /// Answered by the thread that accepted the connection.
    TooManyConnections,
    /// 503: the request arrived while the server was stopping.
    ShuttingDown,
}

impl Rejection {
    /// The status code of the answer.
    pub fn status(self) -> u16 {
        match self {
            Rejection::MalformedRequestLine
            | Rejection::MalformedHeader
            | Rejection::InvalidContentLength
            | Rejection::InvalidTransferEncoding
            | Rejection::InvalidHost => 400,
            Rejection::UnsupportedTransferEncoding => 501,
            Rejection::HeaderTimeout => 408,
            Rejection::ExpectationFailed => 417,
            Rejection::HeaderTooLarge => 431,
            Rejection::VersionNotSupported => 505,
            Rejection::TooManyConnections | Rejection::ShuttingDown => 503,
        }
    }
}
