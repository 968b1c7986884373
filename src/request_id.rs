//! Request ids: every request gets one, so one product update can be traced
//! from the access log line of its `POST /events`, through its problem
//! details (if refused), to the worker's debug line that applied it.
//!
//! A client may send its own in `X-Request-Id`. It is kept if it is 1 to
//! [`MAX_LEN`] characters of `A-Z a-z 0-9 - _ . :` (safe in logs, headers
//! and JSON); otherwise, or without the header, the service makes one:
//! a random per-process prefix and a counter, e.g. `3f9a1c07-1b`.
//!
//! A made id is two numbers, formatted only where it is written (a header,
//! a log line), so the common case costs no allocation per request.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest accepted client-supplied id.
pub const MAX_LEN: usize = 64;

/// Makes request ids; one per service, shared by the connection threads.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        // std's RandomState is seeded from the OS: a cheap random prefix, so
        // ids from two runs (or two instances) do not collide.
        let random = RandomState::new().build_hasher().finish();
        RequestIds {
            prefix: random as u32,
            next: AtomicU64::new(1),
        }
    }
}

/// One request's id: the client's (borrowed from its request), or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestId<'a> {
    Client(&'a str),
    Made { prefix: u32, n: u64 },
}

/// A request id kept beyond its request (an event's, in the queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedRequestId {
    Client(Box<str>),
    Made { prefix: u32, n: u64 },
}

impl RequestIds {
    /// The client's id if it is acceptable, otherwise a new one.
    pub fn for_request<'a>(&self, from_client: Option<&'a str>) -> RequestId<'a> {
        match from_client {
            Some(id) if is_acceptable(id) => RequestId::Client(id),
            _ => RequestId::Made {
                prefix: self.prefix,
                n: self.next.fetch_add(1, Ordering::Relaxed),
            },
        }
    }
}

impl RequestId<'_> {
    pub fn to_owned(self) -> OwnedRequestId {
        match self {
            RequestId::Client(id) => OwnedRequestId::Client(id.into()),
            RequestId::Made { prefix, n } => OwnedRequestId::Made { prefix, n },
        }
    }
}

/// Room for a made id: 8 hex digits, `-`, up to 16 hex digits.
pub type IdBuffer = [u8; 25];

impl<'a> RequestId<'a> {
    /// The id as text; a made one is written into `buf` (no allocation, no
    /// formatting machinery: this runs for every request).
    pub fn as_str<'b>(&self, buf: &'b mut IdBuffer) -> &'b str
    where
        'a: 'b,
    {
        match *self {
            RequestId::Client(id) => id,
            RequestId::Made { prefix, n } => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for (i, slot) in buf[..8].iter_mut().enumerate() {
                    *slot = HEX[(prefix >> (28 - 4 * i)) as usize & 0xf];
                }
                buf[8] = b'-';
                let digits = (16 - n.leading_zeros() as usize / 4).max(1);
                for (i, slot) in buf[9..9 + digits].iter_mut().enumerate() {
                    *slot = HEX[(n >> (4 * (digits - 1 - i))) as usize & 0xf];
                }
                // Only hex digits and '-' were written.
                std::str::from_utf8(&buf[..9 + digits]).unwrap_or("")
            }
        }
    }
}

impl fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str(&mut [0; 25]))
    }
}

impl OwnedRequestId {
    pub fn borrow(&self) -> RequestId<'_> {
        match *self {
            OwnedRequestId::Client(ref id) => RequestId::Client(id),
            OwnedRequestId::Made { prefix, n } => RequestId::Made { prefix, n },
        }
    }
}

impl fmt::Display for OwnedRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnedRequestId::Client(id) => f.write_str(id),
            OwnedRequestId::Made { prefix, n } => RequestId::Made {
                prefix: *prefix,
                n: *n,
            }
            .fmt(f),
        }
    }
}

impl From<&str> for OwnedRequestId {
    fn from(id: &str) -> Self {
        OwnedRequestId::Client(id.into())
    }
}

fn is_acceptable(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_acceptable_client_ids() {
        let ids = RequestIds::default();
        let id = ids.for_request(Some("abc-123_x.y:z"));
        assert_eq!(id, RequestId::Client("abc-123_x.y:z"));
        assert_eq!(id.to_string(), "abc-123_x.y:z");
        assert_eq!(id.to_owned().to_string(), "abc-123_x.y:z");
    }

    #[test]
    fn replaces_unsafe_or_long_ids_and_generates_unique_ones() {
        let ids = RequestIds::default();
        let long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "",
            "has space",
            "new\nline",
            "quote\"",
            "ünï",
            long.as_str(),
        ] {
            let id = ids.for_request(Some(bad)).to_string();
            assert_ne!(id, bad);
            assert!(is_acceptable(&id), "{id}");
        }
        let (a, b) = (ids.for_request(None), ids.for_request(None));
        for (prefix, n, text) in [
            (0x3f9a1c07, 0x1b, "3f9a1c07-1b"),
            (0, 0, "00000000-0"),
            (u32::MAX, u64::MAX, "ffffffff-ffffffffffffffff"),
        ] {
            assert_eq!(RequestId::Made { prefix, n }.to_string(), text);
        }
        assert_ne!(a.to_string(), b.to_string());
        assert!(is_acceptable(&a.to_string()) && is_acceptable(&b.to_string()));
        assert_eq!(a.to_owned().to_string(), a.to_string());
        assert!(is_acceptable(&"a".repeat(MAX_LEN)));
    }
}
