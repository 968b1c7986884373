//! PATCHED (product-update-service): where there is no epoll (not Unix)
//! there is no parking lot (see `lot.rs`): every connection keeps its
//! thread between requests, and `Config::park_above` is ignored. A `Lot`
//! cannot be made, so these methods are never called.

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
