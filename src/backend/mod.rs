//! Backends: where the state is kept, behind one interface. The core
//! (`service.rs`) holds one `Box<dyn Backend>` and knows nothing else of
//! storage; each backend is a folder of its own:
//!
//! | backend | setting | cargo feature | a 202 means |
//! |---|---|---|---|
//! | [`memory`] | (none) | (always) | the event is queued |
//! | `sqlite/` | `DATA_DIR` | `sqlite` | committed to a local file (`DURABILITY`) |
//! | `postgres/` | `DATABASE_URL` | `postgres` | committed to a database that several instances share |
//!
//! # The interface
//!
//! A backend is opened at startup, before the service binds its socket, so
//! that a locked, damaged or unreachable store stops the start at once
//! ([`open`]: the only place that names the backends, and the only
//! `#[cfg(feature)]` of storage). [`Opened::start`] then puts the stored
//! state into the core's parts ([`CoreParts`]: the store, the intake's seqs
//! and idempotency window, the watermark) and starts the backend's threads,
//! before the workers start. From then on the core asks the running
//! [`Backend`] one question per event, [`Backend::admission`]:
//!
//! - [`Admission::Queue`]: the core numbers and queues the event itself and
//!   answers at once (memory mode; SQLite `async`, which writes the applied
//!   products in the background).
//! - [`Admission::Commit`]: the core posts the event in the backend's
//!   [`Mailbox`]; the backend's committers make it durable, queue it
//!   ([`Intake::enqueue`](crate::intake::Intake::enqueue), directly or
//!   through a tailer) and send its [`Outcome`](crate::intake::Outcome) to
//!   the front door's [`ReplyTo`](crate::intake::ReplyTo). The 202 waits
//!   for the commit.
//! - [`Admission::Refuse`]: storage is failing; 503 at once.
//!
//! At shutdown the core calls [`Backend::stop_taking`] (commit what was
//! posted, let it reach the queue) before it closes the intake, and
//! [`Backend::finish`] (write what is left, stop the threads) once the
//! workers have drained the queue.
//!
//! # Adding a backend
//!
//! A folder with its code, its settings in `config/mod.rs`'s table, and one
//! branch in [`open`]. Nothing above this file changes: the core, the
//! workers and the HTTP layer see only [`Backend`].

pub mod health;
pub mod interface;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod stop;

pub use interface::{
    Admission, Backend, Committed, CoreParts, Opened, Outbox, OutboxError, StorageError,
};

use crate::config::Config;

/// Opens the configured backend (the memory one when nothing is set).
pub fn open(config: &Config) -> Result<Box<dyn Opened>, StorageError> {
    if config.data_dir.is_some() {
        #[cfg(feature = "sqlite")]
        return sqlite::open(config);
        #[cfg(not(feature = "sqlite"))]
        return Err(StorageError::NotBuilt {
            variable: "DATA_DIR",
            feature: "sqlite",
        });
    }
    if config.database_url.is_some() {
        #[cfg(feature = "postgres")]
        return postgres::open(config);
        #[cfg(not(feature = "postgres"))]
        return Err(StorageError::NotBuilt {
            variable: "DATABASE_URL",
            feature: "postgres",
        });
    }
    Ok(Box::new(memory::Memory))
}
