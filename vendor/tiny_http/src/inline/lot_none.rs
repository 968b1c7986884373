//! The parking lot where there is none: without epoll (not Unix) every
//! connection keeps its thread between requests, and `Config::park_above`
//! is ignored.
//!
//! It exists so that the rest of the server compiles unchanged there: the
//! same names as `lot.rs`, but a `Lot` cannot be made, so no thread ever
//! calls these methods.

use std::time::{Duration, Instant};

use super::registry::Conn;

pub(crate) enum Lot {}

pub(crate) struct Parked {
    pub(crate) conn: Conn,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) since: Instant,
}

impl Lot {
    pub(crate) fn park(&self, _: Parked) -> Result<(), Parked> {
        match *self {}
    }

    pub(crate) fn take(&self) -> Option<Parked> {
        match *self {}
    }

    pub(crate) fn wake(&self) {
        match *self {}
    }
}
