//! The backfill tool's HTTP client: `POST /events` with an NDJSON body
//! over one kept-alive connection, and the answer read back. A few lines
//! of `std` rather than a client crate, because the default build has no
//! HTTP client and the tool talks to one kind of server: plain `http://`
//! (put a TLS proxy in front, and send to it over loopback), answers with
//! `Content-Length` or chunked.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting, and any one read or write, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (the service's are a few KiB).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Where to send: `http://host:port`, with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, for the connection and the `Host` header.
    pub authority: String,
    /// The path of `/events` on it (`/events`, or `/prefix/events`).
    pub path: String,
}

impl Target {
    /// Reads `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "--url {url:?}: only http:// URLs are supported (for https, send to a TLS proxy's plain side)"
            ));
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(format!("--url {url:?} has no host"));
        }
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let prefix = prefix.trim_end_matches('/');
        let path = if prefix.is_empty() {
            "/events".to_owned()
        } else {
            format!("/{prefix}/events")
        };
        Ok(Target { authority, path })
    }
}

/// An answer: status, `Retry-After` (seconds), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

/// One connection, made again when the server closes it.
pub struct Client {
    target: Target,
    token: Option<String>,
    connection: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(target: Target, token: Option<String>) -> Client {
        Client {
            target,
            token,
            connection: None,
        }
    }

    /// Posts `body` (NDJSON) and reads the answer. An error is the
    /// connection's (refused, reset, timed out): the request may or may not
    /// have been taken.
    pub fn post(&mut self, body: &[u8]) -> io::Result<Answer> {
        let result = self.try_post(body);
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    fn try_post(&mut self, body: &[u8]) -> io::Result<Answer> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self.connection.insert(connect(&self.target.authority)?),
        };
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nUser-Agent: product-update-service-send\r\n",
            self.target.path,
            self.target.authority,
            body.len()
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        let stream = connection.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let (answer, close) = read_answer(connection)?;
        if close {
            self.connection = None;
        }
        Ok(answer)
    }
}

fn connect(authority: &str) -> io::Result<BufReader<TcpStream>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{authority}: no address"));
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                stream.set_nodelay(true)?;
                return Ok(BufReader::new(stream));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads a status line, headers and body; says whether the server closes
/// the connection after it.
fn read_answer(reader: &mut BufReader<TcpStream>) -> io::Result<(Answer, bool)> {
    let mut line = String::new();
    read_line(reader, &mut line)?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_owned();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("not an HTTP status line: {:?}", line.trim_end())))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    let mut retry_after = None;
    loop {
        read_line(reader, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(invalid(format!("not a header line: {header:?}")));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<u64>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "retry-after" => retry_after = value.parse().ok(),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(reader, &mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = u64::from_str_radix(size.trim(), 16)
                .map_err(|_| invalid(format!("not a chunk size: {:?}", line.trim_end())))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while {
                    read_line(reader, &mut line)?;
                    !line.trim_end().is_empty()
                } {}
                break;
            }
            read_exactly(reader, size, &mut body)?;
            read_line(reader, &mut line)?;
        }
    } else if let Some(length) = length {
        read_exactly(reader, length, &mut body)?;
    } else {
        // Delimited by the close.
        reader.take(MAX_ANSWER).read_to_end(&mut body)?;
        close = true;
    }
    Ok((
        Answer {
            status,
            retry_after,
            body,
        },
        close,
    ))
}

fn read_line(reader: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<()> {
    line.clear();
    if reader.take(64 * 1024).read_line(line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection before its answer",
        ));
    }
    Ok(())
}

fn read_exactly(reader: &mut BufReader<TcpStream>, n: u64, into: &mut Vec<u8>) -> io::Result<()> {
    if into.len() as u64 + n > MAX_ANSWER {
        return Err(invalid(format!("an answer over {MAX_ANSWER} bytes")));
    }
    let before = into.len();
    reader.take(n).read_to_end(into)?;
    if (into.len() - before) as u64 != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the answer's body was cut short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_events_route() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080"),
            Ok(Target {
                authority: "127.0.0.1:8080".into(),
                path: "/events".into()
            })
        );
        assert_eq!(
            Target::parse("http://example.org/api/").map(|t| (t.authority, t.path)),
            Ok(("example.org:80".into(), "/api/events".into()))
        );
        assert!(Target::parse("https://example.org").is_err());
        assert!(Target::parse("http://").is_err());
    }
}
