//! Finding and parsing a request head (RFC 9112 §2-3, §5-6), without an
//! allocation per request: the head is copied into a `String` the
//! connection reuses, and the request line and fields are kept as ranges
//! into it.
//!
//! Runs on the thread serving the connection, once per request, before
//! the handler sees it (`connection.rs`); the handler then reads the head
//! through `Request`. Parsing is a file of its own because every decision
//! about what a request means is taken here, in one place:
//!
//! - the head is ASCII without control characters but tabs (as upstream
//!   requires; anything else is a malformed request), lines end in CRLF or
//!   a bare LF; empty lines before the request line are skipped
//!   ([`leading_empty_lines`], §2.2);
//! - the request line is exactly `method SP target SP HTTP/x.y`, the
//!   method a token, the target without spaces or control characters;
//!   HTTP/1.0 and 1.1 are served, a later 1.x is served as 1.1 (§2.3), 2
//!   and above get 505; a target in absolute form (`http://host/path`) is
//!   taken as its path and query (§3.2.2);
//! - a field is `name: value` with a token name and no space before the
//!   colon; an obsolete line folding (a line starting with a space) is
//!   malformed;
//! - `Host` (§3.2): an HTTP/1.1 request without one, a request with two,
//!   or one whose value is not `host[:port]` is refused (400);
//! - the body's framing (§6): `Transfer-Encoding` must end with `chunked`,
//!   once (else 400); a coding other than `chunked` is not implemented
//!   (501: the body would reach the application still encoded);
//!   `Transfer-Encoding` wins over `Content-Length`, and then the
//!   connection closes after the answer, as it does after any
//!   `Transfer-Encoding` in an HTTP/1.0 request (§6.1, §6.3); every
//!   `Content-Length` must be the same run of digits;
//! - `Connection` (`close`, `keep-alive`, `upgrade`) and
//!   `Expect: 100-continue` (anything else gets 417; an HTTP/1.0 client's
//!   is ignored, since it must not get a 1xx answer, RFC 9110 §10.1.1).

use std::ops::Range;
use std::str::FromStr;

use super::rejection::Rejection;
use crate::request_line::{HTTPVersion, Method};

/// How many bytes at the start of `bytes` are whole empty lines (CRLF or
/// LF), which a server should skip before a request line (RFC 9112 §2.2).
pub(crate) fn leading_empty_lines(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &bytes[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

/// Where a head ends in `bytes`, searching from `from`: the index just past
/// the empty line that ends it. `from` lets a caller resume the search as
/// more bytes arrive; a head is the bytes before the first empty line.
pub(crate) fn find_end(bytes: &[u8], from: usize) -> Option<usize> {
    // An empty line is a `\n` followed by `\n` or by `\r\n`. Start one
    // byte early so that an end split across two reads is found.
    let mut i = from.saturating_sub(2);
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'\n') {
        let at = i + offset;
        match bytes.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if bytes.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
        i = at + 1;
    }
    None
}

/// A parsed request head.
#[derive(Default)]
pub(crate) struct Head {
    /// The head as received (ASCII), reused from request to request.
    text: String,
    method: Option<Method>,
    target: Range<usize>,
    /// A target sent in absolute form, as its path and query (`/` when it
    /// had no path); empty for the usual origin form.
    origin_form: String,
    version: (u8, u8),
    /// Each field's name and value (value without surrounding whitespace).
    fields: Vec<(Range<usize>, Range<usize>)>,
    pub(crate) framing: Framing,
}

/// What the head says about the body and the connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    pub(crate) content_length: Option<u64>,
    pub(crate) chunked: bool,
    pub(crate) expect_continue: bool,
    /// The client will send nothing more after this request: it said
    /// `Connection: close`, or is HTTP/1.0 without `keep-alive`, or asked
    /// for an upgrade (which this server does not do).
    pub(crate) last_request: bool,
    /// HTTP/1.0 with `Connection: keep-alive`: the answer must say so.
    pub(crate) keep_alive_1_0: bool,
    /// Both `Transfer-Encoding` and `Content-Length`: close after the
    /// answer (a request-smuggling shape).
    pub(crate) ambiguous: bool,
}

/// What each byte may be in a head: a bit for "token character" (RFC 9110
/// `tchar`) and one for "control character" (not allowed, but for HT).
/// A table, so that a whole line is checked with a fold and no branches.
const TCHAR: u8 = 1;
const CONTROL: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            table[b] |= TCHAR;
        }
        if (c < 0x20 && c != b'\t') || c == 0x7f {
            table[b] |= CONTROL;
        }
        b += 1;
    }
    table
};

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().fold(TCHAR, |all, b| all & CLASSES[b as usize]) == TCHAR
}

/// Whether `bytes` holds a control character other than HT (CR included).
pub(crate) fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().fold(0, |any, &b| any | CLASSES[b as usize]) & CONTROL != 0
}

/// Splits `text` into lines (without their line ends), with their ranges.
fn lines(text: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= text.len() {
            return None;
        }
        let rest = &text.as_bytes()[start..];
        let len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let mut end = start + len;
        if end > start && text.as_bytes()[end - 1] == b'\r' {
            end -= 1;
        }
        let line = start..end;
        start += len + 1;
        Some(line)
    })
}

fn trim(text: &str, range: Range<usize>) -> Range<usize> {
    let bytes = text.as_bytes();
    let (mut start, mut end) = (range.start, range.end);
    while start < end && matches!(bytes[start], b' ' | b'\t') {
        start += 1;
    }
    while end > start && matches!(bytes[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    start..end
}

impl Head {
    /// Parses `raw`, the bytes of one head up to and including its empty
    /// line. On error, the rejection to answer with.
    pub(crate) fn parse(&mut self, raw: &[u8]) -> Result<(), Rejection> {
        self.text.clear();
        self.fields.clear();
        self.origin_form.clear();
        self.framing = Framing::default();
        self.method = None;
        self.text.push_str(ascii(raw)?);
        let text = self.text.as_str();
        let mut lines = lines(text);
        let line = lines.next().ok_or(Rejection::MalformedRequestLine)?;
        let (method, target, version) = parse_request_line(text, line)?;
        self.target = target;
        self.version = version;
        let mut framing_fields = FramingFields::default();
        let mut fields = std::mem::take(&mut self.fields);
        for line in lines {
            if line.is_empty() {
                break;
            }
            let (name, value) = parse_field(text, line)?;
            framing_fields.note(&text[name.clone()], &text[value.clone()])?;
            fields.push((name, value));
        }
        self.fields = fields;
        framing_fields.check(version)?;
        self.framing = framing_fields.framing(version);
        if let Some(origin_form) = origin_form(&text[self.target.clone()]) {
            self.origin_form.push_str(origin_form.0);
            self.origin_form.push_str(origin_form.1);
        }
        // Parsed last: `Method::from_str` allocates for a method it does not know.
        self.method = Some(Method::from_str(method).map_err(|()| Rejection::MalformedRequestLine)?);
        Ok(())
    }

    pub(crate) fn method(&self) -> &Method {
        // `parse` succeeded before anyone asks.
        self.method.as_ref().unwrap_or(&Method::Get)
    }

    /// The target in origin form (`/path?query`).
    pub(crate) fn target(&self) -> &str {
        if self.origin_form.is_empty() {
            &self.text[self.target.clone()]
        } else {
            &self.origin_form
        }
    }

    pub(crate) fn version(&self) -> HTTPVersion {
        HTTPVersion(self.version.0, self.version.1)
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.fields
            .iter()
            .map(move |(name, value)| (&self.text[name.clone()], &self.text[value.clone()]))
    }

    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| {
                field.len() == name.len() && self.text[field.clone()].eq_ignore_ascii_case(name)
            })
            .map(|(_, value)| &self.text[value.clone()])
    }
}

/// `raw` as a `&str` to slice, if it is ASCII (checked a word at a
/// time); else which line is at fault.
fn ascii(raw: &[u8]) -> Result<&str, Rejection> {
    match std::str::from_utf8(raw).ok().filter(|text| text.is_ascii()) {
        Some(text) => Ok(text),
        None => {
            let request_line_end = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
            Err(if raw[..request_line_end].is_ascii() {
                Rejection::MalformedHeader
            } else {
                Rejection::MalformedRequestLine
            })
        }
    }
}

/// `name: value`: where the name and the value (without surrounding
/// whitespace) are in `text`.
fn parse_field(text: &str, line: Range<usize>) -> Result<(Range<usize>, Range<usize>), Rejection> {
    let bytes = &text.as_bytes()[line.clone()];
    // Obsolete line folding (a line starting with whitespace) is refused,
    // as are control characters (a CR that does not end the line among
    // them); the name ends at the first colon.
    if matches!(bytes[0], b' ' | b'\t') {
        return Err(Rejection::MalformedHeader);
    }
    if has_control(bytes) {
        return Err(Rejection::MalformedHeader);
    }
    // A byte loop: a field name is short, and `str::find`'s set-up costs
    // more than the scan.
    let colon = bytes
        .iter()
        .position(|&b| b == b':')
        .ok_or(Rejection::MalformedHeader)?;
    let name = line.start..line.start + colon;
    if !is_token(&text[name.clone()]) {
        return Err(Rejection::MalformedHeader);
    }
    let value = trim(text, line.start + colon + 1..line.end);
    Ok((name, value))
}

/// What the fields that frame the body and the connection said, gathered
/// field by field; [`FramingFields::framing`] decides from them.
#[derive(Default)]
struct FramingFields {
    content_length: Option<u64>,
    /// A `Transfer-Encoding` field was sent.
    transfer_encoding: bool,
    /// How many times `chunked` was listed, whether it was the last coding,
    /// and whether another coding was listed.
    chunked: u8,
    chunked_last: bool,
    other_coding: bool,
    expect_continue: bool,
    /// `Connection: close` (or `upgrade`).
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// `Host` fields, and whether one was not a valid `host[:port]`.
    hosts: u8,
    invalid_host: bool,
}

impl FramingFields {
    /// Notes the field if it is one of the four that matter here.
    fn note(&mut self, name: &str, value: &str) -> Result<(), Rejection> {
        // The lengths first: most fields are none of these four.
        let is = |known: &str| name.len() == known.len() && name.eq_ignore_ascii_case(known);
        if is("content-length") {
            let n = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                value.parse::<u64>().ok()
            } else {
                None
            };
            match (n, self.content_length) {
                (Some(n), None) => self.content_length = Some(n),
                (Some(n), Some(seen)) if n == seen => {}
                _ => return Err(Rejection::InvalidContentLength),
            }
        } else if is("transfer-encoding") {
            // A list, maybe over several fields; `check` decides.
            self.transfer_encoding = true;
            for coding in value.split(',').map(str::trim) {
                let name = coding.split(';').next().unwrap_or_default().trim_end();
                if name.is_empty() {
                    continue;
                }
                let chunked = name.eq_ignore_ascii_case("chunked");
                self.chunked = self.chunked.saturating_add(u8::from(chunked));
                self.other_coding |= !chunked;
                self.chunked_last = chunked;
            }
        } else if is("host") {
            self.hosts = self.hosts.saturating_add(1);
            self.invalid_host |= !valid_host(value);
        } else if is("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("upgrade") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    self.keep_alive = true;
                }
            }
        } else if is("expect") {
            if value.eq_ignore_ascii_case("100-continue") {
                self.expect_continue = true;
            } else {
                return Err(Rejection::ExpectationFailed);
            }
        }
        Ok(())
    }

    /// What no request of this HTTP version may say: no `Host` in
    /// HTTP/1.1, two, or an invalid one (RFC 9112 §3.2); a transfer
    /// coding this server does not implement (501), or a
    /// `Transfer-Encoding` that does not end with `chunked`, once (§6.3:
    /// the body's length cannot be known).
    fn check(&self, version: (u8, u8)) -> Result<(), Rejection> {
        if self.invalid_host || self.hosts > 1 || (self.hosts == 0 && version == (1, 1)) {
            return Err(Rejection::InvalidHost);
        }
        if self.other_coding {
            return Err(Rejection::UnsupportedTransferEncoding);
        }
        if self.transfer_encoding && (self.chunked != 1 || !self.chunked_last) {
            return Err(Rejection::InvalidTransferEncoding);
        }
        Ok(())
    }

    /// The body's framing and the connection's fate, for a request of this
    /// HTTP version.
    fn framing(&self, version: (u8, u8)) -> Framing {
        let http_1_0 = version == (1, 0);
        let chunked = self.transfer_encoding;
        let mut framing = Framing {
            chunked,
            // An HTTP/1.0 client must not get a 1xx answer.
            expect_continue: self.expect_continue && !http_1_0,
            ..Framing::default()
        };
        if chunked {
            framing.ambiguous = self.content_length.is_some();
        } else {
            framing.content_length = self.content_length;
        }
        // `Transfer-Encoding` in HTTP/1.0 is faulty framing: answered, then
        // closed (RFC 9112 §6.1).
        let faulty = http_1_0 && chunked;
        framing.last_request =
            self.close || (http_1_0 && !self.keep_alive) || framing.ambiguous || faulty;
        framing.keep_alive_1_0 = http_1_0 && self.keep_alive && !framing.last_request;
        framing
    }
}

/// A request line's parts: the method's text, where the target is, the
/// version.
type RequestLine<'a> = (&'a str, Range<usize>, (u8, u8));

/// `method SP request-target SP HTTP-version`.
fn parse_request_line(text: &str, line: Range<usize>) -> Result<RequestLine<'_>, Rejection> {
    let line_text = &text[line.clone()];
    let mut parts = line_text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::MalformedRequestLine);
    };
    if !is_token(method)
        || target.is_empty()
        || has_control(target.as_bytes())
        || target.contains('\t')
    {
        return Err(Rejection::MalformedRequestLine);
    }
    let version = match version.as_bytes() {
        b"HTTP/1.1" => (1, 1),
        b"HTTP/1.0" => (1, 0),
        // A later HTTP/1.x is served as 1.1, the highest this server
        // speaks of that major version (RFC 9110 §2.5).
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => (1, 1),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() && *major >= b'2' =>
        {
            return Err(Rejection::VersionNotSupported)
        }
        _ => return Err(Rejection::MalformedRequestLine),
    };
    let start = line.start + method.len() + 1;
    Ok((method, start..start + target.len(), version))
}

/// A target in absolute form (`scheme://authority/path?query`, RFC 9112
/// §3.2.2) as the path and the query of its origin form: `("/", "?q")`
/// when it has no path. `None` for a target in any other form.
fn origin_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let after_authority = rest.find(['/', '?']).map_or("", |at| &rest[at..]);
    Some(match after_authority.strip_prefix('?') {
        Some(_) => ("/", after_authority),
        None if after_authority.is_empty() => ("/", ""),
        None => (after_authority, ""),
    })
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a name of
/// unreserved characters, percent-escapes and sub-delimiters, an IPv4
/// address (the same characters), or an IP literal in brackets; the port
/// digits. An empty value is allowed (a target without an authority).
fn valid_host(value: &str) -> bool {
    let (host, port) = match value.strip_prefix('[') {
        Some(literal) => match literal.split_once(']') {
            Some((address, rest)) => {
                let address_ok = !address.is_empty()
                    && address
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
                if !address_ok {
                    return false;
                }
                match rest.strip_prefix(':') {
                    Some(port) => ("", port),
                    None if rest.is_empty() => ("", ""),
                    None => return false,
                }
            }
            None => return false,
        },
        None => value.split_once(':').unwrap_or((value, "")),
    };
    let host_ok = host.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    host_ok && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Head, Rejection> {
        let mut head = Head::default();
        head.parse(raw.as_bytes()).map(|()| head)
    }

    #[test]
    fn finds_the_end_of_a_head_however_it_is_split() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody";
        assert_eq!(find_end(raw, 0), Some(raw.len() - 4));
        for split in 0..raw.len() {
            let found = find_end(&raw[..split], 0).or_else(|| find_end(raw, split));
            assert_eq!(found, Some(raw.len() - 4), "split at {split}");
        }
        assert_eq!(find_end(b"GET / HTTP/1.1\nHost: x\n\n", 0), Some(24));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
    }

    #[test]
    fn parses_the_request_line_and_fields() {
        let head = parse(
            "POST /events?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length:  12 \r\nX-Empty:\r\n\r\n",
        )
        .unwrap();
        assert_eq!(*head.method(), Method::Post);
        assert_eq!(head.target(), "/events?a=1");
        assert_eq!(head.version(), HTTPVersion(1, 1));
        assert_eq!(head.field("content-length"), Some("12"));
        assert_eq!(head.field("x-empty"), Some(""));
        assert_eq!(head.field("nope"), None);
        assert_eq!(head.framing.content_length, Some(12));
        assert!(!head.framing.last_request);
    }

    #[test]
    fn refuses_what_is_not_http() {
        use Rejection::*;
        for (raw, expected) in [
            ("GET /\r\n\r\n", MalformedRequestLine),
            ("GET  / HTTP/1.1\r\nHost: t\r\n\r\n", MalformedRequestLine),
            ("G(T / HTTP/1.1\r\nHost: t\r\n\r\n", MalformedRequestLine),
            ("GET / HTTP/1.1 extra\r\n\r\n", MalformedRequestLine),
            ("GET / HTTP/0.9\r\n\r\n", MalformedRequestLine),
            (
                "GET /\u{e9} HTTP/1.1\r\nHost: t\r\n\r\n",
                MalformedRequestLine,
            ),
            ("GET / HTTP/2.0\r\n\r\n", VersionNotSupported),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nNo colon\r\n\r\n",
                MalformedHeader,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nName : v\r\n\r\n",
                MalformedHeader,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nA: b\r\n folded\r\n\r\n",
                MalformedHeader,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nA: caf\u{e9}\r\n\r\n",
                MalformedHeader,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nA: b\x01\r\n\r\n",
                MalformedHeader,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
                InvalidContentLength,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\n",
                InvalidContentLength,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                InvalidContentLength,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nExpect: the-moon\r\n\r\n",
                ExpectationFailed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
                UnsupportedTransferEncoding,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                UnsupportedTransferEncoding,
            ),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nA: b\rc\r\n\r\n",
                MalformedHeader,
            ),
        ] {
            assert_eq!(parse(raw).err(), Some(expected), "{raw:?}");
        }
    }

    #[test]
    fn decides_framing_and_the_connection() {
        let f = |raw: &str| parse(raw).unwrap().framing;
        let chunked = f("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(chunked.chunked && !chunked.ambiguous && chunked.content_length.is_none());
        let both = f(
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert!(both.chunked && both.ambiguous && both.last_request);
        assert_eq!(both.content_length, None);
        assert!(
            f("GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Close\r\n\r\n").last_request
        );
        assert!(f("GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\r\n").last_request);
        assert!(f("GET / HTTP/1.0\r\n\r\n").last_request);
        let kept = f("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!kept.last_request && kept.keep_alive_1_0);
        assert!(f("PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert_eq!(f("GET / HTTP/1.1\nHost: t\n\n"), Framing::default());
        // An HTTP/1.0 client's expectation is ignored; its Transfer-Encoding
        // closes the connection after the answer.
        let old = f("POST / HTTP/1.0\r\nExpect: 100-continue\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(!old.expect_continue && old.chunked && old.last_request && !old.keep_alive_1_0);
    }

    #[test]
    fn host_and_target_forms() {
        use Rejection::InvalidHost;
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n").err(), Some(InvalidHost));
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n").err(),
            Some(InvalidHost)
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a b\r\n\r\n").err(),
            Some(InvalidHost)
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
        for host in [
            "a",
            "a.b:80",
            "[::1]",
            "[::1]:8080",
            "127.0.0.1",
            "",
            "xn--e1afmkfd.xn--p1ai",
            "a%20b",
        ] {
            assert!(valid_host(host), "{host}");
        }
        for host in ["a b", "a/b", "a:b", "[::1", "[::1]x", "a:8080:1", "[]"] {
            assert!(!valid_host(host), "{host}");
        }
        let target = |raw: &str| parse(raw).unwrap().target().to_owned();
        assert_eq!(
            target("GET http://h/p?q HTTP/1.1\r\nHost: h\r\n\r\n"),
            "/p?q"
        );
        assert_eq!(target("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n"), "/");
        assert_eq!(target("GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n"), "/?q");
        assert_eq!(target("GET /o?x HTTP/1.1\r\nHost: h\r\n\r\n"), "/o?x");
        assert_eq!(target("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), "*");
        assert_eq!(leading_empty_lines(b"\r\n\nGET"), 3);
        assert_eq!(leading_empty_lines(b"\r"), 0);
        assert_eq!(
            parse("GET / HTTP/1.9\r\nHost: h\r\n\r\n")
                .unwrap()
                .version(),
            HTTPVersion(1, 1)
        );
    }

    #[test]
    fn unknown_methods_are_kept() {
        let head = parse("PURGE /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(head.method().as_str(), "PURGE");
    }
}
