//! Why the SQLite file could not be opened or loaded at startup. Each
//! message names the file and what to do; nothing is ever written to a
//! file that fails a check.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::backend::interface::StorageError;

#[derive(Debug)]
pub enum SqliteError {
    /// `DATA_DIR` cannot be created or written.
    Directory { path: PathBuf, source: io::Error },
    /// Another process has the database open.
    Locked {
        path: PathBuf,
        holder: Option<String>,
    },
    /// The file is not a SQLite database.
    NotADatabase { path: PathBuf },
    /// A SQLite database, but not this service's.
    Foreign { path: PathBuf, app_id: i64 },
    /// The file fails SQLite's integrity check, or its rows are not what
    /// this service writes.
    Corrupt { path: PathBuf, detail: String },
    /// Written by a newer release, with a schema this build does not know.
    UnknownSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// Any other SQLite error while opening or loading.
    Sqlite { path: PathBuf, detail: String },
}

impl From<SqliteError> for StorageError {
    /// A directory to fix is a setting (exit 2); the rest need a person's
    /// decision about the file (exit 1).
    fn from(e: SqliteError) -> StorageError {
        match e {
            SqliteError::Directory { .. } => StorageError::Setting(Box::new(e)),
            _ => StorageError::Store(Box::new(e)),
        }
    }
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNTOUCHED: &str = "it was left untouched";
        match self {
            SqliteError::Directory { path, source } => write!(
                f,
                "DATA_DIR {}: cannot create or write there ({source}); create the directory and let the service's user write to it, or set DATA_DIR to another directory",
                path.display()
            ),
            SqliteError::Locked { path, holder } => write!(
                f,
                "{} is in use by another product-update-service ({}); two processes must not share one DATA_DIR: stop the other one, or give this one its own DATA_DIR",
                path.display(),
                holder.as_deref().unwrap_or("holder unknown")
            ),
            SqliteError::NotADatabase { path } => write!(
                f,
                "{} is not a SQLite database; {UNTOUCHED}: move it away (or set DATA_DIR to another directory) and start again",
                path.display()
            ),
            SqliteError::Foreign { path, app_id } => write!(
                f,
                "{} is a SQLite database of another application (application_id {app_id:#x}), not of product-update-service; {UNTOUCHED}: set DATA_DIR to another directory",
                path.display()
            ),
            SqliteError::Corrupt { path, detail } => write!(
                f,
                "{} is damaged ({detail}); {UNTOUCHED}: restore it from a backup, or move it away to start with an empty store",
                path.display()
            ),
            SqliteError::UnknownSchema { path, found, known } => write!(
                f,
                "{} has schema version {found}, and this build knows versions up to {known}: it was written by a newer product-update-service; {UNTOUCHED}: run that version, or move the file away",
                path.display()
            ),
            SqliteError::Sqlite { path, detail } => {
                write!(f, "{}: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SqliteError::Directory { source, .. } => Some(source),
            _ => None,
        }
    }
}
