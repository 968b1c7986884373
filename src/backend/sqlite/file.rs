//! The SQLite file: opening it safely, its schema, loading the state at
//! startup, and the one transaction the committer writes each cycle.
//!
//! Only the committer thread writes (and only at startup does anyone
//! read): SQLite is the storage engine, the in-memory store stays the
//! serving copy. Every statement is prepared once and cached. Nothing here
//! has a thread of its own.
//!
//! # The schema (version 1)
//!
//! ```sql
//! products    (product_id TEXT PRIMARY KEY, price ANY, stock INTEGER,
//!              version ANY, updated_at TEXT NOT NULL,
//!              price_seq INTEGER NOT NULL, price_version ANY,
//!              stock_seq INTEGER NOT NULL, stock_version ANY)
//! journal     (seq INTEGER PRIMARY KEY, product_id TEXT NOT NULL, price ANY,
//!              stock INTEGER, version ANY, event_id TEXT,
//!              accepted_at TEXT NOT NULL)
//! idempotency (event_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,
//!              fingerprint INTEGER NOT NULL, accepted_at_ms INTEGER NOT NULL)
//! meta        (key TEXT PRIMARY KEY, value INTEGER NOT NULL)
//!              -- next_seq, applied_through, outbox_through (with a relay)
//! ```
//!
//! `products` holds each product's current values and, per field, the seq
//! and client version of the write that set it: exactly what the ordering
//! guards need (`WriteKey` in `store.rs`). `journal` holds the events
//! acknowledged (commit and fsync modes) and not yet reflected in
//! `products`; `meta.applied_through` says up to which seq `products` is
//! complete. With a relay publishing the journal (RabbitMQ's outbox),
//! `meta.outbox_through` says up to which seq it is published, and the
//! journal keeps every event after either. Tables are `STRICT`; `ANY` columns keep a value as given, so a
//! price written as `5` reads back as `5` and one written as `5.0` as
//! `5.0`, and a client version above 2^63 - 1 (which no SQLite INTEGER
//! holds) is kept as its decimal TEXT.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior, params};
use serde_json::Number;

use super::error::SqliteError;
use crate::backend::{Outbox, OutboxError};
use crate::config::{DATABASE_FILE, Durability};
use crate::event::ProductUpdate;
use crate::intake::dedupe::Remembered;
use crate::store::{Seq, Stored, WriteKey};

/// `PRAGMA user_version` of the schema this build writes. A file with a
/// higher one was written by a newer release: refused, never rewritten.
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` ("PUS1"): tells this service's files from other
/// SQLite databases (`file products.db` names it too).
const APPLICATION_ID: i64 = 0x5055_5331;

const SCHEMA: &str = "
CREATE TABLE products (
    product_id    TEXT PRIMARY KEY,
    price         ANY,
    stock         INTEGER,
    version       ANY,
    updated_at    TEXT NOT NULL,
    price_seq     INTEGER NOT NULL,
    price_version ANY,
    stock_seq     INTEGER NOT NULL,
    stock_version ANY
) STRICT, WITHOUT ROWID;
CREATE TABLE journal (
    seq         INTEGER PRIMARY KEY,
    product_id  TEXT NOT NULL,
    price       ANY,
    stock       INTEGER,
    version     ANY,
    event_id    TEXT,
    accepted_at TEXT NOT NULL
) STRICT;
CREATE TABLE idempotency (
    event_id       TEXT PRIMARY KEY,
    seq            INTEGER NOT NULL,
    fingerprint    INTEGER NOT NULL,
    accepted_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_by_seq ON idempotency (seq);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('next_seq', 1), ('applied_through', 0);
";

/// The open database, with the lock that keeps other processes out.
pub struct SqliteFile {
    conn: Connection,
    path: PathBuf,
    /// Held (locked) for the life of the process; see [`lock`].
    _lock: File,
}

/// What the database held at startup.
pub struct Loaded {
    pub products: Vec<(Box<str>, Stored)>,
    /// Acknowledged events not yet reflected in `products`, in seq order.
    pub journal: Vec<(Seq, ProductUpdate)>,
    /// The idempotency window, oldest first.
    pub window: Vec<Remembered>,
    /// The seq the next accepted event gets.
    pub next_seq: Seq,
}

/// An event admitted in this cycle, for the journal and the window.
pub struct JournalRow<'a> {
    pub seq: Seq,
    pub update: &'a ProductUpdate,
    pub fingerprint: u64,
}

/// An `event_id` to remember across restarts.
pub struct WindowRow {
    pub event_id: Box<str>,
    pub seq: Seq,
    pub fingerprint: u64,
    pub accepted_at: SystemTime,
}

/// Everything one committer cycle writes, in one transaction.
pub struct Cycle<'a> {
    pub journal: &'a [JournalRow<'a>],
    pub window: &'a [WindowRow],
    /// Products to write with their current values (`None`: the store no
    /// longer has it, which cannot happen today: products are never
    /// removed).
    pub products: &'a [(&'a str, Stored)],
    /// `Some(W)` when `products` brings the table up to the watermark `W`
    /// (every event up to `W` is in it): recorded, and the journal's rows
    /// up to `W` deleted. `None` in a cycle that only journals events.
    pub applied_through: Option<Seq>,
    /// `Some` to record a new `next_seq`.
    pub next_seq: Option<Seq>,
    /// Forget window entries accepted before this (and beyond the count).
    pub prune: Option<(SystemTime, usize)>,
}

impl SqliteFile {
    /// Opens (or creates) `dir/products.db` for this process alone. Never
    /// writes to a file that is not this service's, fails its integrity
    /// check, or has a schema this build does not know.
    pub fn open(dir: &Path, durability: Durability) -> Result<SqliteFile, SqliteError> {
        let directory = |source: io::Error| SqliteError::Directory {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(directory)?;
        let path = dir.join(DATABASE_FILE);
        let lock = lock(&path).map_err(|e| match e {
            Locked::Io(source) => directory(source),
            Locked::ByOther(holder) => SqliteError::Locked {
                path: path.clone(),
                holder,
            },
        })?;
        let existing = fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        if existing && !has_sqlite_header(&path).map_err(directory)? {
            return Err(SqliteError::NotADatabase { path });
        }
        let sqlite = |e: rusqlite::Error| SqliteError::Sqlite {
            path: path.clone(),
            detail: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        // Checks first, while nothing has been written: a file that fails
        // one is left exactly as it was.
        let (app_id, version) = identity(&conn).map_err(|e| not_a_database_or(&path, e))?;
        let fresh = app_id == 0 && version == 0 && is_empty(&conn).map_err(sqlite)?;
        if !fresh {
            if app_id != APPLICATION_ID {
                return Err(SqliteError::Foreign { path, app_id });
            }
            if version > SCHEMA_VERSION {
                return Err(SqliteError::UnknownSchema {
                    path,
                    found: version,
                    known: SCHEMA_VERSION,
                });
            }
            let verdict = quick_check(&conn).map_err(|e| not_a_database_or(&path, e))?;
            if verdict != "ok" {
                return Err(SqliteError::Corrupt {
                    path,
                    detail: verdict,
                });
            }
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        let synchronous = match durability {
            // In WAL mode NORMAL syncs only at checkpoints: a commit is in
            // the OS's hands (safe from a process crash) when it returns.
            Durability::Commit | Durability::Async => "NORMAL",
            // FULL syncs the WAL at every commit: safe from a power cut.
            Durability::Fsync => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(sqlite)?;
        // Checkpoints (copying the WAL into the database file, and the
        // fsync that ends each) run on the checkpointer thread, never in a
        // commit: on a busy disk one fsync can take 100 ms, and inside a
        // commit it would hold up every waiting POST.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sqlite)?;
        conn.set_prepared_statement_cache_capacity(32);
        if fresh {
            let create = format!(
                "BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            );
            conn.execute_batch(&create).map_err(sqlite)?;
        }
        Ok(SqliteFile {
            conn,
            path,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second connection to the file, for the checkpointer thread.
    pub fn checkpointer(&self) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok(Checkpointer { conn })
    }

    /// Bytes in the write-ahead log.
    pub fn wal_bytes(&self) -> u64 {
        fs::metadata(wal_path(&self.path)).map_or(0, |m| m.len())
    }

    /// Copies the whole WAL into the database file and empties it: when
    /// the checkpointer cannot keep it short (writes never pause long
    /// enough for the log to start over), and at shutdown. Holds up
    /// writes while it runs.
    pub fn checkpoint_truncate(&mut self) -> rusqlite::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }

    /// Reads the whole state (at startup, before anything else runs).
    pub fn load(&self, window_ttl: Duration, window_len: usize) -> Result<Loaded, SqliteError> {
        let mut next_seq = self.meta("next_seq")?;
        let applied_through = self.meta("applied_through")?;
        let products = self.load_products()?;
        let journal = self.load_journal(applied_through)?;
        if let Some((last, _)) = journal.last() {
            next_seq = next_seq.max(last + 1);
        }
        let window = self.load_window(window_ttl, window_len)?;
        Ok(Loaded {
            products,
            journal,
            window,
            next_seq,
        })
    }

    /// A row of `meta`, which holds seqs.
    fn meta(&self, key: &str) -> Result<Seq, SqliteError> {
        let value: i64 = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .map_err(|e| self.corrupt(format!("meta.{key}: {e}")))?;
        Seq::try_from(value).map_err(|_| self.corrupt(format!("meta.{key} is {value}")))
    }

    /// The file holds what this service never writes.
    fn corrupt(&self, detail: String) -> SqliteError {
        SqliteError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// Every product with the write keys of its fields.
    fn load_products(&self) -> Result<Vec<(Box<str>, Stored)>, SqliteError> {
        let sqlite = |e: rusqlite::Error| self.corrupt(e.to_string());
        let mut products = Vec::new();
        let mut statement = self
            .conn
            .prepare(
                "SELECT product_id, price, stock, price_seq, price_version, stock_seq, stock_version FROM products",
            )
            .map_err(sqlite)?;
        let mut rows = statement.query([]).map_err(sqlite)?;
        while let Some(row) = rows.next().map_err(sqlite)? {
            let id: String = row.get(0).map_err(sqlite)?;
            let bad = |what: String| self.corrupt(format!("products row {id:?}: {what}"));
            let price = price_from(row.get_ref(1).map_err(sqlite)?).map_err(bad)?;
            let stock = stock_from(row.get(2).map_err(sqlite)?).map_err(bad)?;
            let key = |seq: usize, version: usize| -> Result<WriteKey, SqliteError> {
                let seq: i64 = row.get(seq).map_err(sqlite)?;
                let version = version_from(row.get_ref(version).map_err(sqlite)?).map_err(bad)?;
                Ok(match seq {
                    0 => WriteKey::default(),
                    seq => WriteKey::new(seq as Seq, version),
                })
            };
            let (price_key, stock_key) = (key(3, 4)?, key(5, 6)?);
            let stored = Stored {
                price,
                price_key,
                stock,
                stock_key,
            };
            products.push((id.into_boxed_str(), stored));
        }
        Ok(products)
    }

    /// The journal's events after `applied_through`, in seq order.
    fn load_journal(&self, applied_through: Seq) -> Result<Vec<(Seq, ProductUpdate)>, SqliteError> {
        read_journal(&self.conn, applied_through, i64::MAX).map_err(|e| self.corrupt(e))
    }

    /// The idempotency window: the newest `window_len` ids younger than
    /// `window_ttl`, oldest first.
    fn load_window(
        &self,
        window_ttl: Duration,
        window_len: usize,
    ) -> Result<Vec<Remembered>, SqliteError> {
        let sqlite = |e: rusqlite::Error| self.corrupt(e.to_string());
        let now = SystemTime::now();
        let oldest = millis(now.checked_sub(window_ttl).unwrap_or(UNIX_EPOCH));
        let mut window = Vec::new();
        let mut statement = self
            .conn
            .prepare(
                "SELECT event_id, seq, fingerprint, accepted_at_ms FROM (
                     SELECT * FROM idempotency WHERE accepted_at_ms >= ?1 ORDER BY seq DESC LIMIT ?2
                 ) ORDER BY seq",
            )
            .map_err(sqlite)?;
        let mut rows = statement
            .query(params![oldest, window_len as i64])
            .map_err(sqlite)?;
        while let Some(row) = rows.next().map_err(sqlite)? {
            let event_id: String = row.get(0).map_err(sqlite)?;
            let seq: i64 = row.get(1).map_err(sqlite)?;
            let fingerprint: i64 = row.get(2).map_err(sqlite)?;
            let at: i64 = row.get(3).map_err(sqlite)?;
            let age = Duration::from_millis(u64::try_from(millis(now) - at).unwrap_or(0));
            window.push(Remembered {
                event_id: event_id.into_boxed_str(),
                seq: seq as Seq,
                fingerprint: fingerprint as u64,
                age,
            });
        }
        Ok(window)
    }

    /// Writes one cycle in one transaction: all of it, or (on an error)
    /// none of it.
    pub fn write(&mut self, cycle: &Cycle<'_>) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = SystemTime::now();
        write_journal(&tx, cycle.journal, now)?;
        write_window(&tx, cycle.window)?;
        write_products(&tx, cycle.products, now)?;
        write_meta(&tx, cycle)?;
        tx.commit()
    }

    /// A write that changes nothing visible, to learn whether writes work
    /// again after a failure when there is nothing else to write.
    pub fn probe(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_probe_ms', ?1)",
            [millis(SystemTime::now())],
        )?;
        tx.commit()
    }
}

/// The cycle's events into `journal`, and their ids into `idempotency`.
fn write_journal(
    tx: &Transaction<'_>,
    journal: &[JournalRow<'_>],
    now: SystemTime,
) -> rusqlite::Result<()> {
    if journal.is_empty() {
        return Ok(());
    }
    let accepted_at = rfc3339(now);
    // Rows in groups of `JOURNAL_ROWS_PER_INSERT` per statement (the
    // statement's own cost, paid once per group, was most of a row's at
    // batch requests of 1000 events); the rest one by one.
    let mut chunks = journal.chunks_exact(JOURNAL_ROWS_PER_INSERT);
    let mut insert = tx.prepare_cached(&JOURNAL_INSERT_MANY)?;
    for chunk in &mut chunks {
        for (i, row) in chunk.iter().enumerate() {
            bind_journal_row(&mut insert, i * 7, row, &accepted_at)?;
        }
        insert.raw_execute()?;
    }
    let mut insert = tx.prepare_cached(&JOURNAL_INSERT_ONE)?;
    for row in chunks.remainder() {
        bind_journal_row(&mut insert, 0, row, &accepted_at)?;
        insert.raw_execute()?;
    }
    let mut remember = tx.prepare_cached(REMEMBER)?;
    for row in journal {
        if let Some(id) = &row.update.event_id {
            remember.execute(params![
                &**id,
                row.seq as i64,
                row.fingerprint as i64,
                millis(now)
            ])?;
        }
    }
    Ok(())
}

/// Journal rows one `INSERT` writes, but for a cycle's last few.
const JOURNAL_ROWS_PER_INSERT: usize = 64;

/// `INSERT INTO journal ... VALUES (?, ... ?)` for `rows` rows.
fn journal_insert(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO journal (seq, product_id, price, stock, version, event_id, accepted_at) VALUES {values}"
    )
}

static JOURNAL_INSERT_MANY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| journal_insert(JOURNAL_ROWS_PER_INSERT));
static JOURNAL_INSERT_ONE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| journal_insert(1));

/// Binds one journal row's 7 values from parameter `at + 1` on.
fn bind_journal_row(
    insert: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    row: &JournalRow<'_>,
    accepted_at: &str,
) -> rusqlite::Result<()> {
    let u = row.update;
    insert.raw_bind_parameter(at + 1, row.seq as i64)?;
    insert.raw_bind_parameter(at + 2, &*u.product_id)?;
    insert.raw_bind_parameter(at + 3, price_value(u.price.as_ref()))?;
    insert.raw_bind_parameter(at + 4, u.stock.map(|s| s as i64))?;
    insert.raw_bind_parameter(at + 5, version_value(u.version))?;
    insert.raw_bind_parameter(at + 6, u.event_id.as_deref())?;
    insert.raw_bind_parameter(at + 7, accepted_at)
}

/// Ids to remember (`async` mode: those of events a products write covers).
fn write_window(tx: &Transaction<'_>, window: &[WindowRow]) -> rusqlite::Result<()> {
    if window.is_empty() {
        return Ok(());
    }
    let mut remember = tx.prepare_cached(REMEMBER)?;
    for row in window {
        remember.execute(params![
            &*row.event_id,
            row.seq as i64,
            row.fingerprint as i64,
            millis(row.accepted_at)
        ])?;
    }
    Ok(())
}

/// Products with their current values and write keys.
fn write_products(
    tx: &Transaction<'_>,
    products: &[(&str, Stored)],
    now: SystemTime,
) -> rusqlite::Result<()> {
    if products.is_empty() {
        return Ok(());
    }
    let updated_at = rfc3339(now);
    let mut upsert = tx.prepare_cached(
        "INSERT INTO products
             (product_id, price, stock, version, updated_at, price_seq, price_version, stock_seq, stock_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (product_id) DO UPDATE SET
             price = excluded.price, stock = excluded.stock, version = excluded.version,
             updated_at = excluded.updated_at, price_seq = excluded.price_seq,
             price_version = excluded.price_version, stock_seq = excluded.stock_seq,
             stock_version = excluded.stock_version",
    )?;
    for (id, stored) in products {
        let (price_seq, price_version) = stored.price_key.parts().unwrap_or((0, None));
        let (stock_seq, stock_version) = stored.stock_key.parts().unwrap_or((0, None));
        upsert.execute(params![
            id,
            price_value(stored.price.as_ref()),
            stored.stock.map(|s| s as i64),
            version_value(price_version.max(stock_version)),
            &updated_at,
            price_seq as i64,
            version_value(price_version),
            stock_seq as i64,
            version_value(stock_version),
        ])?;
    }
    Ok(())
}

/// `applied_through` and `next_seq`; the journal up to the former deleted;
/// old ids forgotten.
fn write_meta(tx: &Transaction<'_>, cycle: &Cycle<'_>) -> rusqlite::Result<()> {
    let mut set = tx.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
    if let Some(through) = cycle.applied_through {
        set.execute(params!["applied_through", through as i64])?;
    }
    if let Some(next) = cycle.next_seq {
        set.execute(params!["next_seq", next as i64])?;
    }
    drop(set);
    if let Some(through) = cycle.applied_through {
        // Not past the outbox's cursor either, if there is one.
        tx.prepare_cached(
            "DELETE FROM journal WHERE seq <= ?1
             AND seq <= coalesce((SELECT value FROM meta WHERE key = 'outbox_through'), ?1)",
        )?
        .execute([through as i64])?;
    }
    if let Some((before, keep)) = cycle.prune {
        tx.prepare_cached("DELETE FROM idempotency WHERE accepted_at_ms < ?1")?
            .execute([millis(before)])?;
        tx.prepare_cached(
            "DELETE FROM idempotency WHERE seq <= (SELECT seq FROM idempotency ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
        )?
        .execute([keep as i64])?;
    }
    Ok(())
}

/// Up to `limit` journal events after `after`, in seq order; the error
/// names the row that does not read.
fn read_journal(
    conn: &Connection,
    after: Seq,
    limit: i64,
) -> Result<Vec<(Seq, ProductUpdate)>, String> {
    let sqlite = |e: rusqlite::Error| e.to_string();
    let mut journal = Vec::new();
    let mut statement = conn
        .prepare_cached(
            "SELECT seq, product_id, price, stock, version, event_id FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(sqlite)?;
    let mut rows = statement
        .query(params![after as i64, limit])
        .map_err(sqlite)?;
    while let Some(row) = rows.next().map_err(sqlite)? {
        let seq: i64 = row.get(0).map_err(sqlite)?;
        let bad = |what: String| format!("journal row {seq}: {what}");
        let update = ProductUpdate {
            product_id: row.get::<_, String>(1).map_err(sqlite)?.into(),
            price: price_from(row.get_ref(2).map_err(sqlite)?).map_err(bad)?,
            stock: stock_from(row.get(3).map_err(sqlite)?).map_err(bad)?,
            version: version_from(row.get_ref(4).map_err(sqlite)?).map_err(bad)?,
            event_id: row
                .get::<_, Option<String>>(5)
                .map_err(sqlite)?
                .map(String::into_boxed_str),
        };
        journal.push((seq as Seq, update));
    }
    Ok(journal)
}

/// The relay's connection to the file: it reads the journal and writes
/// only its cursor (`meta.outbox_through`); SQLite serialises that write
/// with the committer's.
pub struct OutboxFile {
    conn: Connection,
    path: PathBuf,
}

impl SqliteFile {
    /// A connection to the database file at `path` for the outbox's
    /// relay (the file is open and locked by this process already). On a
    /// journal that never had a cursor, it starts where the journal
    /// begins (everything applied before is no longer in it), before the
    /// first event is taken.
    pub fn open_outbox(path: &Path) -> rusqlite::Result<OutboxFile> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value)
             SELECT 'outbox_through', value FROM meta WHERE key = 'applied_through'",
            [],
        )?;
        Ok(OutboxFile {
            conn,
            path: path.to_owned(),
        })
    }
}

impl OutboxFile {
    fn error(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError(format!("{}: {e}", self.path.display()))
    }
}

impl Outbox for OutboxFile {
    fn cursor(&mut self) -> Result<Seq, OutboxError> {
        let cursor: i64 = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'outbox_through'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.error(e))?;
        Ok(cursor.max(0) as Seq)
    }

    fn after(
        &mut self,
        cursor: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, ProductUpdate)>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        read_journal(&self.conn, cursor, limit).map_err(|e| self.error(e))
    }

    fn head(&mut self) -> Result<Seq, OutboxError> {
        let next: i64 = self
            .conn
            .query_row(
                "SELECT max(coalesce((SELECT max(seq) FROM journal), 0), (SELECT value FROM meta WHERE key = 'next_seq') - 1)",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.error(e))?;
        Ok(next.max(0) as Seq)
    }

    fn advance(&mut self, through: Seq) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'outbox_through' AND value < ?1",
                [through as i64],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// Remembers an `event_id` (or replaces what was remembered for it).
const REMEMBER: &str =
    "INSERT OR REPLACE INTO idempotency (event_id, seq, fingerprint, accepted_at_ms)
     VALUES (?1, ?2, ?3, ?4)";

/// The checkpointer thread's connection.
pub struct Checkpointer {
    conn: Connection,
}

/// The WAL file beside the database file.
fn wal_path(database: &Path) -> PathBuf {
    let mut wal = database.to_owned().into_os_string();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl Checkpointer {
    /// Copies what the WAL holds into the database file without holding up
    /// the writer (SQLite's PASSIVE checkpoint), then syncs the file.
    pub fn passive(&self) -> rusqlite::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    }
}

/// Why the lock file could not be taken.
enum Locked {
    Io(io::Error),
    /// Another process holds it; what it wrote there (its pid).
    ByOther(Option<String>),
}

/// Takes `products.db.lock` beside the database, an OS file lock that lasts
/// until the process exits (however it exits: the kernel drops it), and
/// writes this process's id into it for the next one's error message.
fn lock(database: &Path) -> Result<File, Locked> {
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(Locked::Io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Locked::ByOther(
                (!holder.is_empty()).then(|| holder.to_owned()),
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(Locked::Io(e)),
    }
    file.set_len(0).map_err(Locked::Io)?;
    writeln!(file, "pid {}", std::process::id()).map_err(Locked::Io)?;
    Ok(file)
}

/// Whether the file starts with SQLite's 16-byte magic string.
fn has_sqlite_header(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 16];
    let mut file = File::open(path)?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"SQLite format 3\0"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn identity(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let app_id = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let version = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    Ok((app_id, version))
}

fn is_empty(conn: &Connection) -> rusqlite::Result<bool> {
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
    Ok(tables == 0)
}

/// SQLite's `quick_check`: the checks of `integrity_check` but the
/// index-content ones, O(N) and a few times faster; "ok" when it passes.
fn quick_check(conn: &Connection) -> rusqlite::Result<String> {
    let mut statement = conn.prepare("PRAGMA quick_check")?;
    let lines: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(lines.join("; "))
}

fn not_a_database_or(path: &Path, e: rusqlite::Error) -> SqliteError {
    let code = e.sqlite_error_code();
    match code {
        Some(rusqlite::ErrorCode::NotADatabase) => SqliteError::NotADatabase {
            path: path.to_owned(),
        },
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => SqliteError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => SqliteError::Sqlite {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    }
}

fn price_value(price: Option<&Number>) -> Value {
    match price {
        None => Value::Null,
        Some(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(f)) => Value::Real(f),
            (None, None) => Value::Null,
        },
    }
}

fn price_from(value: ValueRef<'_>) -> Result<Option<Number>, String> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(i) => Ok(Some(Number::from(i))),
        ValueRef::Real(f) => Number::from_f64(f)
            .map(Some)
            .ok_or_else(|| format!("price {f} is not a finite number")),
        other => Err(format!("price of type {:?}", other.data_type())),
    }
}

/// A client version: INTEGER when it fits, else its decimal TEXT.
fn version_value(version: Option<u64>) -> Value {
    match version {
        None => Value::Null,
        Some(v) => match i64::try_from(v) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Text(v.to_string()),
        },
    }
}

/// A stock column as written: NULL or a non-negative integer.
fn stock_from(value: Option<i64>) -> Result<Option<u64>, String> {
    value
        .map(u64::try_from)
        .transpose()
        .map_err(|_| "negative stock".to_owned())
}

fn version_from(value: ValueRef<'_>) -> Result<Option<u64>, String> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(i) => u64::try_from(i)
            .map(Some)
            .map_err(|_| format!("negative version {i}")),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.parse().ok())
            .map(Some)
            .ok_or_else(|| "a version that is not a number".to_owned()),
        other => Err(format!("version of type {:?}", other.data_type())),
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `2026-12-01T21:05:09.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = millis(t);
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// Whether `e` is the disk (or the database) being full.
pub fn is_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_with_milliseconds() {
        let at = |ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_796_245_509_123), "2026-12-02T21:05:09.123Z");
    }

    #[test]
    fn versions_above_i64_are_kept_as_text_and_read_back() {
        for v in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX - 1] {
            let value = version_value(Some(v));
            let back = version_from(ValueRef::from(&value)).unwrap();
            assert_eq!(back, Some(v));
        }
    }
}
