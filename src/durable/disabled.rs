//! A build without the `sqlite` feature: the same interface as
//! `sqlite.rs`, with types that have no values. `DATA_DIR` set is an error
//! at startup; everything else is never called, and the compiler knows it.

use std::io;
use std::sync::Arc;

use super::{Committed, StorageError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::ProductUpdate;
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError, Submitted};
use crate::request_id::OwnedRequestId;
use crate::store::{Seq, Store};

/// Durable state opened and loaded, not yet serving (none in this build).
pub enum Recovered {}

/// The running committer (none in this build).
pub enum Durable {}

impl Recovered {
    /// `None` in memory mode; `DATA_DIR` set is [`StorageError::NotBuilt`].
    pub fn open(config: &Config) -> Result<Option<Recovered>, StorageError> {
        match config.data_dir {
            None => Ok(None),
            Some(_) => Err(StorageError::NotBuilt),
        }
    }

    pub fn restore(&mut self, _store: &Store, _intake: &Intake) -> Seq {
        match *self {}
    }

    pub fn start(
        self,
        _intake: Arc<Intake>,
        _store: Store,
        _progress: Arc<Progress>,
        _metrics: Arc<Metrics>,
    ) -> io::Result<Durable> {
        match self {}
    }
}

impl Durable {
    pub fn submit(
        &self,
        _update: ProductUpdate,
        _request_id: OwnedRequestId,
    ) -> Result<Submitted, SubmitError> {
        match *self {}
    }

    pub fn applied(&self, _product_id: &str) {
        match *self {}
    }

    pub fn unavailable(&self) -> Option<String> {
        match *self {}
    }

    pub fn finish(&self) -> Committed {
        match *self {}
    }
}
