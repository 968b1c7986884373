//! What went wrong with the PostgreSQL database; every message names the
//! URL with its password masked.

use std::fmt;

use crate::backend::interface::StorageError;

#[derive(Debug)]
pub enum PgError {
    /// `DATABASE_URL` is not a URL the driver accepts.
    BadUrl {
        url: String,
        reason: String,
    },
    Connect {
        url: String,
        detail: String,
    },
    /// The database has a schema newer than this build knows.
    UnknownSchema {
        url: String,
        found: i32,
        known: i32,
    },
    Query {
        url: String,
        detail: String,
    },
}

impl From<PgError> for StorageError {
    /// A URL the driver refuses is a setting to fix (exit 2); the rest need
    /// the database looked at (exit 1).
    fn from(e: PgError) -> StorageError {
        match e {
            PgError::BadUrl { .. } => StorageError::Setting(Box::new(e)),
            _ => StorageError::Store(Box::new(e)),
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::BadUrl { url, reason } => write!(
                f,
                "DATABASE_URL {url} is not a usable PostgreSQL URL: {reason}"
            ),
            PgError::Connect { url, detail } => write!(
                f,
                "cannot connect to {url}: {detail}; check that PostgreSQL runs there and accepts this user"
            ),
            PgError::UnknownSchema { url, found, known } => write!(
                f,
                "{url} has schema version {found}, and this build knows versions up to {known}: it was created by a newer product-update-service; run that version (the database was left untouched)"
            ),
            PgError::Query { url, detail } => write!(f, "{url}: {detail}"),
        }
    }
}

impl std::error::Error for PgError {}
