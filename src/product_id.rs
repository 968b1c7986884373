//! A product id as an event carries it: short ids (most are) are kept
//! inline, so decoding and queueing an event without an `event_id`
//! allocates nothing.
//!
//! Why it matters: an event is decoded on a connection thread and dropped
//! by a worker. Had its id a heap allocation, every event would be a
//! `malloc` on one thread and a `free` on another, and an allocator's
//! per-thread cache never gets back what another thread freed: under bulk
//! intake that slow path was a tenth of the connection thread's time. The
//! store keeps its own `Box<str>` key, made once per new product.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Ids up to this many bytes are kept inline: with the length and the
/// variant's tag, the id is 24 bytes, as big as a `String`.
const INLINE: usize = 22;

/// A product id, inline up to [`INLINE`] bytes. Reads as a `&str`.
#[derive(Clone)]
pub struct ProductId(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl ProductId {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // The bytes were copied from a `str` whole (see `From<&str>`), so
            // they are UTF-8: the check cannot fail, and costs a few
            // nanoseconds on an id this short.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Heap(id) => id,
        }
    }
}

impl From<&str> for ProductId {
    fn from(id: &str) -> ProductId {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                ProductId(Repr::Inline { len, bytes })
            }
            _ => ProductId(Repr::Heap(id.into())),
        }
    }
}

impl From<String> for ProductId {
    fn from(id: String) -> ProductId {
        if id.len() <= INLINE {
            ProductId::from(id.as_str())
        } else {
            ProductId(Repr::Heap(id.into_boxed_str()))
        }
    }
}

impl From<&ProductId> for Box<str> {
    fn from(id: &ProductId) -> Box<str> {
        id.as_str().into()
    }
}

/// Hashes and compares as its `str`, so a map keyed by ids is looked up
/// with a `&str`.
impl Borrow<str> for ProductId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Deref for ProductId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ProductId {
    fn eq(&self, other: &ProductId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ProductId {}

impl Hash for ProductId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_ids_read_back_as_written() {
        let long = "x".repeat(INLINE + 1);
        for id in ["", "a", "p01234", "ünï cödé ☃", &"y".repeat(INLINE), &long] {
            let from_str = ProductId::from(id);
            let from_string = ProductId::from(id.to_owned());
            assert_eq!(&*from_str, id);
            assert_eq!(from_str, from_string);
            assert_eq!(format!("{from_str:?}"), format!("{id:?}"));
            assert_eq!(&*Box::<str>::from(&from_str), id);
        }
        assert!(matches!(
            ProductId::from("y".repeat(INLINE)).0,
            Repr::Inline { .. }
        ));
        assert!(matches!(ProductId::from(long.as_str()).0, Repr::Heap(_)));
        assert_eq!(size_of::<ProductId>(), 24);
    }
}
