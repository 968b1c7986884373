//! What every thread of the server reads while it serves a connection: the
//! handler, the configuration, the open connections and the parking lot.
//!
//! Made once by [`Server::start`](super::Server::start) and shared by the
//! accepting threads, the lot's threads and `stop`. It holds no socket of
//! the server's own (the listening socket belongs to the accepting threads,
//! see `server.rs`), so a thread still holding it after the server stopped
//! keeps nothing open.

use std::sync::Arc;

use super::config::Config;
use super::handler::Handler;
use super::lot::Lot;
use super::registry::Registry;

pub(crate) struct Shared {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) config: Config,
    /// The open connections and the stop gate; an `Arc` of its own so a
    /// deferred answer can hold it (see `registry.rs`).
    pub(crate) registry: Arc<Registry>,
    /// Where connections wait between requests once more than
    /// `config.park_above` are open (see `lot.rs`); None if never.
    pub(crate) lot: Option<Lot>,
}
