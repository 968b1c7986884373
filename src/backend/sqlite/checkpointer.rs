//! The checkpointer thread: every [`CHECKPOINT_INTERVAL`] it copies the
//! WAL into the database file (and syncs it) on a connection of its own,
//! so that no commit waits for that. A failed checkpoint only leaves a
//! longer log, which the next one copies.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::file::SqliteFile;
use crate::backend::health::lock;
use crate::backend::stop::StopSignal;

/// How often the checkpointer copies the WAL into the database file. Each
/// checkpoint that copied anything ends with an fsync, which on a busy disk
/// slows the writes around it: once a second keeps those rare, and the WAL
/// short.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The running checkpointer thread.
pub struct Checkpoints {
    stop: Arc<StopSignal>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpoints {
    /// Opens the checkpointer's connection to `file` and starts the thread.
    pub fn start(file: &SqliteFile) -> io::Result<Checkpoints> {
        let connection = file.checkpointer().map_err(io::Error::other)?;
        let stop = Arc::new(StopSignal::default());
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("checkpointer".to_owned())
                .spawn(move || {
                    while !stop.pause(CHECKPOINT_INTERVAL) {
                        if let Err(e) = connection.passive() {
                            log::debug!("storage: checkpoint: {e}");
                        }
                    }
                })?
        };
        Ok(Checkpoints {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread and waits for it (a second call does nothing).
    pub fn finish(&self) {
        self.stop.stop();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}
