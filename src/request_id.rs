//! Request ids: every request gets one, so one product update can be traced
//! from the access log line of its `POST /events`, through its problem
//! details (if refused), to the worker's debug line that applied it.
//!
//! A client may send its own in `X-Request-Id`. It is kept if it is 1 to
//! [`MAX_LEN`] characters of `A-Z a-z 0-9 - _ . :` (safe in logs, headers
//! and JSON); otherwise, or without the header, the service makes one:
//! a random per-process prefix and a counter, e.g. `3f9a1c07-1b`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest accepted client-supplied id.
pub const MAX_LEN: usize = 64;

/// Makes request ids; one per service, shared by the request threads.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        // std's RandomState is seeded from the OS: a cheap random prefix, so
        // ids from two runs (or two instances) do not collide.
        let random = RandomState::new().build_hasher().finish();
        RequestIds {
            prefix: format!("{:08x}", random as u32),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The client's id if it is acceptable, otherwise a new one.
    pub fn for_request(&self, from_client: Option<&str>) -> Box<str> {
        match from_client {
            Some(id) if is_acceptable(id) => id.into(),
            _ => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                format!("{}-{n:x}", self.prefix).into_boxed_str()
            }
        }
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
        assert_eq!(&*ids.for_request(Some("abc-123_x.y:z")), "abc-123_x.y:z");
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
            let id = ids.for_request(Some(bad));
            assert_ne!(&*id, bad);
            assert!(is_acceptable(&id), "{id}");
        }
        let (a, b) = (ids.for_request(None), ids.for_request(None));
        assert_ne!(a, b);
        assert!(is_acceptable(&a) && is_acceptable(&b));
        assert!(is_acceptable(&"a".repeat(MAX_LEN)));
    }
}
