//! The answer a [`Handler`] fills in, and how the server writes it.
//!
//! Filled in by the handler on the thread serving the connection, or, for
//! a deferred answer, on the thread that calls `Deferred::answer`; written
//! on the same thread (`connection.rs`, `deferred.rs`).
//!
//! The handler sets a status, adds header lines and writes the body into
//! buffers the connection reuses, so answering allocates nothing. The
//! server owns the framing: it writes the status line, `Date` (formatted
//! once a second per thread), `Content-Length` and `Connection`, then the
//! handler's headers and the body (none for `HEAD`, 1xx, 204 and 304).
//!
//! [`Handler`]: super::Handler

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use super::head::{has_control, is_token};

/// An answer being built. See the module docs.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<u8>,
    body: Vec<u8>,
    close: bool,
}

impl Default for Response {
    fn default() -> Response {
        Response {
            status: 200,
            headers: Vec::with_capacity(256),
            body: Vec::with_capacity(512),
            close: false,
        }
    }
}

/// Header names the server writes itself; a handler's copy is dropped.
const OWN_HEADERS: [&str; 4] = ["content-length", "connection", "date", "transfer-encoding"];

/// A token, and not one of the headers the server writes itself.
fn valid_name(name: &str) -> bool {
    is_token(name)
        && !OWN_HEADERS
            .iter()
            .any(|own| own.len() == name.len() && name.eq_ignore_ascii_case(own))
}

/// A field value may hold visible ASCII, spaces and tabs: no CR or LF
/// (which would end the header, a response-splitting hole) and no other
/// control character.
fn valid_value(value: &[u8]) -> bool {
    value.is_ascii() && !has_control(value)
}

impl Response {
    /// Gives back the buffers grown past `keep` bytes.
    pub(crate) fn trim(&mut self, keep: usize) {
        for buffer in [&mut self.headers, &mut self.body] {
            if buffer.capacity() > keep {
                *buffer = Vec::new();
            }
        }
    }

    pub(crate) fn reset(&mut self) {
        self.status = 200;
        self.headers.clear();
        self.body.clear();
        self.close = false;
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Sets the status code (200 until set).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// Adds a header line. Returns false, and adds nothing, for a name that
    /// is not a token, a value with a control character (CR and LF
    /// included), or a header the server writes itself (`Content-Length`,
    /// `Connection`, `Date`, `Transfer-Encoding`).
    pub fn add_header(&mut self, name: &str, value: &str) -> bool {
        if !valid_name(name) || !valid_value(value.as_bytes()) {
            return false;
        }
        self.headers.extend_from_slice(name.as_bytes());
        self.headers.extend_from_slice(b": ");
        self.headers.extend_from_slice(value.as_bytes());
        self.headers.extend_from_slice(b"\r\n");
        true
    }

    /// As [`Response::add_header`], with the value formatted in place (no
    /// allocation): `response.add_header_fmt("ETag", format_args!("\"{tag}\""))`.
    pub fn add_header_fmt(&mut self, name: &str, value: fmt::Arguments<'_>) -> bool {
        if !valid_name(name) {
            return false;
        }
        let mark = self.headers.len();
        self.headers.extend_from_slice(name.as_bytes());
        self.headers.extend_from_slice(b": ");
        let value_start = self.headers.len();
        if write!(ByteWriter(&mut self.headers), "{value}").is_err()
            || !valid_value(&self.headers[value_start..])
        {
            self.headers.truncate(mark);
            return false;
        }
        self.headers.extend_from_slice(b"\r\n");
        true
    }

    /// The body, to write into (`serde_json::to_writer(response.body_mut(), …)`).
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: &[u8]) {
        self.body.clear();
        self.body.extend_from_slice(body);
    }

    /// Asks for the connection to be closed after this answer (the server
    /// says `Connection: close`).
    pub fn close_after(&mut self) {
        self.close = true;
    }

    pub(crate) fn wants_close(&self) -> bool {
        self.close
    }

    /// Appends the whole answer to `out`. `with_body` is false for an
    /// answer to HEAD; `connection` is the `Connection` header's value, if
    /// one is needed.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>, with_body: bool, connection: Option<&str>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\nDate: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
        // RFC 9110 §8.6, §15: no body (and no length) for 1xx, 204 and 304.
        let bodiless = self.status < 200 || self.status == 204 || self.status == 304;
        if !bodiless {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, self.body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(value) = connection {
            out.extend_from_slice(b"Connection: ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.headers);
        out.extend_from_slice(b"\r\n");
        if with_body && !bodiless {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The reason phrase of a status line (upstream tiny_http's table, from its
/// `StatusCode::default_reason_phrase`).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",

        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",

        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",

        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",

        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

/// `fmt::Write` into a byte vector.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

thread_local! {
    /// The `Date` value for the current second, per thread: formatting a
    /// date costs far more than comparing a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            cached.1 = httpdate::fmt_http_date(now);
            cached.0 = second;
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(response: &Response, with_body: bool, connection: Option<&str>) -> String {
        let mut out = Vec::new();
        response.write_to(&mut out, with_body, connection);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_the_framing_then_the_handlers_headers_and_body() {
        let mut r = Response::default();
        r.set_status(202);
        assert!(r.add_header("Content-Type", "application/json"));
        assert!(r.add_header_fmt("ETag", format_args!("\"{}\"", 17)));
        r.body_mut().extend_from_slice(b"{}");
        let text = written(&r, true, Some("close"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 202 Accepted");
        assert!(
            lines[1].starts_with("Date: ") && lines[1].ends_with(" GMT"),
            "{}",
            lines[1]
        );
        assert_eq!(
            &lines[2..],
            [
                "Content-Length: 2",
                "Connection: close",
                "Content-Type: application/json",
                "ETag: \"17\""
            ]
        );
        assert_eq!(body, "{}");
        // HEAD: the same length, no body.
        assert!(written(&r, false, None).ends_with("ETag: \"17\"\r\n\r\n"));
    }

    #[test]
    fn bodiless_statuses_have_no_length_and_no_body() {
        let mut r = Response::default();
        r.set_status(304);
        r.set_body(b"ignored");
        let text = written(&r, true, None);
        assert!(
            !text.contains("Content-Length") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn refuses_headers_that_could_split_the_answer() {
        let mut r = Response::default();
        assert!(!r.add_header("X-Evil", "a\r\nSet-Cookie: x"));
        assert!(!r.add_header("X-Evil", "a\nb"));
        assert!(!r.add_header("Bad Name", "v"));
        assert!(!r.add_header("Content-Length", "5"));
        assert!(!r.add_header("connection", "keep-alive"));
        assert!(r.add_header("X-Ok", "tab\tok"));
        assert_eq!(
            String::from_utf8(r.headers.clone()).unwrap(),
            "X-Ok: tab\tok\r\n"
        );
    }

    /// The `Date` format (RFC 9110 §5.6.7), as `push_date` writes it.
    #[test]
    fn dates_are_formatted_as_http_asks() {
        let date = std::time::Duration::from_secs(420895020);
        assert_eq!(
            httpdate::fmt_http_date(UNIX_EPOCH + date),
            "Wed, 04 May 1983 11:17:00 GMT"
        );
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
