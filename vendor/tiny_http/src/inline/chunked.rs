//! A `Transfer-Encoding: chunked` body decoder with bounds (RFC 9112
//! §7.1).
//!
//! Runs on the thread serving the connection, when the handler reads a
//! chunked body (`request.rs`); the decoder's state lives in the request
//! between reads. It exists because the decoder upstream tiny_http used
//! (the `chunked_transfer` crate) collects a chunk-size line into a `Vec`
//! until it sees a CR, without a limit: a client sending an endless size
//! line (`0000…`) grows the server's memory at network speed for as long
//! as the body deadline lets it. Here every line of framing (a size line with its extensions, a
//! trailer line) is at most [`MAX_LINE`] bytes, and the trailers at most
//! [`MAX_TRAILERS`] in all. Line ends may be CRLF or a bare LF (RFC 9112
//! §2.2 allows a recipient to accept either).
//!
//! Errors from the source (a timeout, the connection closing) are passed
//! on with their own kind, so a caller can tell a slow client
//! (`TimedOut`) from a broken encoding (`InvalidData`) or a cut-off body
//! (`UnexpectedEof`).

use std::convert::TryFrom;
use std::io::{self, ErrorKind, Read};

/// Longest line of chunk framing: the hex size and any extensions.
pub const MAX_LINE: usize = 4096;
/// Most bytes of trailer fields after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many data bytes left.
    Data(u64),
    /// After a chunk's data: its line end.
    DataEnd,
    /// After the last chunk: trailer lines, then an empty line.
    Trailers { seen: usize },
    /// The body is complete.
    Done,
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message)
}

/// The decoder's state: what comes next in the body. It does not own its
/// source, so that a connection can keep it between reads that each lend
/// it the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked { state: State::Size }
    }
}

fn byte(source: &mut impl Read) -> io::Result<u8> {
    let mut one = [0u8; 1];
    loop {
        match source.read(&mut one) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a chunked body",
                ))
            }
            Ok(_) => return Ok(one[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads one line of framing into `line` (without its line end), at most
/// `MAX_LINE` bytes.
fn line(source: &mut impl Read, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    loop {
        match byte(source)? {
            b'\n' => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(());
            }
            byte => {
                if line.len() >= MAX_LINE {
                    return Err(invalid("a line of chunked framing is too long"));
                }
                line.push(byte);
            }
        }
    }
}

/// Parses `1*HEXDIG [ BWS ";" chunk-ext ]`; extensions are ignored.
fn size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid("a chunk size is not 1 to 16 hex digits"));
    }
    let mut after = line[digits..]
        .iter()
        .skip_while(|b| matches!(b, b' ' | b'\t'));
    if after.next().is_some_and(|&b| b != b';') {
        return Err(invalid(
            "a chunk size is followed by something other than ';'",
        ));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
        size = size * 16 + digit; // 16 hex digits at most: no overflow
    }
    Ok(size)
}

impl Chunked {
    /// True once the last chunk and the trailers have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads framing until there is data to read or the body is done.
    fn advance(&mut self, source: &mut impl Read) -> io::Result<()> {
        let mut text = Vec::new();
        loop {
            match self.state {
                State::Data(_) | State::Done => return Ok(()),
                State::Size => {
                    line(source, &mut text)?;
                    self.state = match size(&text)? {
                        0 => State::Trailers { seen: 0 },
                        n => State::Data(n),
                    };
                }
                State::DataEnd => {
                    line(source, &mut text)?;
                    if !text.is_empty() {
                        return Err(invalid("a chunk's data is longer than its size"));
                    }
                    self.state = State::Size;
                }
                State::Trailers { seen } => {
                    line(source, &mut text)?;
                    if text.is_empty() {
                        self.state = State::Done;
                    } else {
                        let seen = seen + text.len() + 2;
                        if seen > MAX_TRAILERS {
                            return Err(invalid("the trailers of a chunked body are too large"));
                        }
                        self.state = State::Trailers { seen };
                    }
                }
            }
        }
    }

    /// Reads decoded body bytes from `source` into `buf`; 0 at the end.
    pub(crate) fn read(&mut self, source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.advance(source)?;
        let left = match self.state {
            State::Data(left) => left,
            _ => return Ok(0), // Done
        };
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = source.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the connection closed in the middle of a chunk",
            ));
        }
        let left = left - n as u64;
        self.state = if left == 0 {
            State::DataEnd
        } else {
            State::Data(left)
        };
        Ok(n)
    }
}

/// A chunked body read from `source`, as a reader; reads no byte past its
/// end.
pub struct ChunkedReader<R> {
    source: R,
    chunked: Chunked,
}

impl<R: Read> ChunkedReader<R> {
    pub fn new(source: R) -> ChunkedReader<R> {
        ChunkedReader {
            source,
            chunked: Chunked::default(),
        }
    }

    /// True once the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.chunked.is_done()
    }
}

impl<R: Read> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.chunked.read(&mut self.source, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> io::Result<(Vec<u8>, usize)> {
        let mut source = input;
        let mut reader = ChunkedReader::new(&mut source);
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        assert!(reader.is_done());
        let left = source.len();
        Ok((out, left))
    }

    #[test]
    fn decodes_chunks_and_stops_at_the_end() {
        let (out, left) =
            decode(b"3\r\nhel\r\nB\r\nlo world!!!\r\n0\r\n\r\nGET / HTTP/1.1").unwrap();
        assert_eq!(out, b"hello world!!!");
        // The next pipelined request is left untouched.
        assert_eq!(left, b"GET / HTTP/1.1".len());
    }

    #[test]
    fn accepts_extensions_trailers_and_bare_line_feeds() {
        let (out, left) =
            decode(b"4;name=value\r\nwiki\n5 ; x\r\npedia\r\n0\r\nExpires: never\r\nX: y\n\r\n")
                .unwrap();
        assert_eq!(out, b"wikipedia");
        assert_eq!(left, 0);
    }

    #[test]
    fn refuses_broken_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3 4\r\nabc\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
        ] {
            let err = decode(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidData,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_endless_size_line_is_cut_off_at_the_limit() {
        let endless = vec![b'0'; MAX_LINE * 4];
        let err = decode(&endless).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        let trailers = [&b"0\r\n"[..], &b"X: y\r\n".repeat(MAX_TRAILERS)].concat();
        assert_eq!(
            decode(&trailers).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_body_cut_short_is_unexpected_eof() {
        for cut in [
            &b"5\r\nab"[..],
            b"5\r\nabcde\r\n",
            b"5\r\nabcde\r\n0\r\n",
            b"5",
        ] {
            assert_eq!(decode(cut).unwrap_err().kind(), ErrorKind::UnexpectedEof);
        }
    }
}
