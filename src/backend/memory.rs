//! Memory mode: nothing is kept beyond the process. Every event is numbered
//! and queued by the intake and answered 202 at once; the store is the only
//! copy of the state, and a restart begins empty.

use std::io;

use super::interface::{Admission, Backend, CoreParts, Opened};

/// The memory backend: no state, no threads.
pub struct Memory;

impl Opened for Memory {
    fn start(self: Box<Self>, _parts: &CoreParts) -> io::Result<Box<dyn Backend>> {
        Ok(self)
    }
}

impl Backend for Memory {
    fn admission(&self) -> Admission<'_> {
        Admission::Queue
    }
}
