//! The PostgreSQL database: the connection, the versioned schema, and the
//! few statements the service runs. Nothing here has a thread of its own;
//! the committers, the tailer and the compactor (`committer.rs`,
//! `tailer.rs`, `compactor.rs`) each own one [`PgSession`].
//!
//! # The schema (version 3)
//!
//! ```sql
//! schema_version (version, created_at)
//! seq_counter    (last_seq)                  -- one row: the last seq given out
//! journal        (first_seq PRIMARY KEY,     -- one row per committed batch: its events are
//!                 product_ids[], prices[],   -- seqs first_seq, first_seq + 1, ... (arrays
//!                 stocks[], versions[],      -- in batch order); kept EVENT_RETENTION, and
//!                 event_ids[], request_ids[],-- until compacted
//!                 accepted_by, accepted_at)
//! events         VIEW: one row per journal event (seq, product_id, price, stock,
//!                version, event_id, request_id, accepted_by, accepted_at)
//! compaction     (through, compacted_at)     -- one row: `products` holds every event up to `through`
//! products       (product_id PRIMARY KEY,
//!                 price, price_rank, price_order,
//!                 stock, stock_rank, stock_order,
//!                 last_seq, updated_at, updated_by)
//! idempotency    (event_id PRIMARY KEY, seq, fingerprint, accepted_at)
//! instances      (instance PRIMARY KEY, started_at, seen_at, applied_through)
//! outbox         (through, relayed_at,       -- one row once an instance relays the journal to
//!                 relayed_by)                -- RabbitMQ (`outbox.rs`): published through `through`
//! ```
//!
//! Version 1 had an `events` table (a row per event) and wrote `products`
//! in every commit; version 2 had no `outbox`. `prepare_schema` upgrades
//! both (`UPGRADE_FROM_1`, `VERSION_3`).
//!
//! # One statement per batch, in seq order
//!
//! [`PgSession::accept`] commits a batch of events with one statement,
//! which is its own transaction (one round trip):
//!
//! 0. (only if the batch has `event_id`s) look them up in `idempotency`;
//!    in Rust, the known ones are answered as duplicates or conflicts, the
//!    new ones numbered 1, 2, ...;
//! 1. `UPDATE seq_counter SET last_seq = last_seq + n RETURNING base`:
//!    this takes the counter row's lock, and gives the new events the
//!    seqs `base + 1 ..= base + n`;
//! 2. insert them as one `journal` row (and their ids into
//!    `idempotency`), `NOTIFY` the other instances;
//! 3. commit (and flush the WAL), which releases the lock.
//!
//! The counter row's lock is held until the commit, so batches commit one
//! after another in seq order, across every instance: seqs are gap-free
//! (a failed statement also rolls back its counter), and every snapshot
//! of `journal` holds a prefix of them. An `event_id` another instance
//! commits between steps 0 and 2 makes the `idempotency` insert fail, and
//! the batch is looked up and written again. That is what lets each instance's
//! tailer read the journal by `seq > last` and keep a plain "applied
//! through N" watermark, the same as one instance's. The price is that
//! commits do not overlap, so the statement holds the lock for as little
//! as it can: one row, whatever the batch's size, and no product rows.
//! ARCHITECTURE.md ("Several instances") has the figures.
//!
//! # Products: compacted from the journal
//!
//! [`PgSession::compact`] (the compactor thread of any instance,
//! `compactor.rs`) folds the journal rows after `compaction.through` into
//! `products` with the store's own rule, upserts each product once with the
//! per-field guards, and then moves `through`, under an advisory lock that
//! makes the instances take turns. [`PgSession::snapshot`] reads `products` and the
//! journal rows after `through` in one snapshot and folds them, so that a
//! starting instance sees every committed event; pruning keeps every row
//! after `through`.
//!
//! Each field's write key (`WriteKey` in `store.rs`) is stored as a
//! `(rank, order)` pair that compares the same way as the key: rank 0 and
//! order `seq` for an unversioned write, rank `version + 1` and order
//! `-seq` for a versioned one, `(0, 0)` for never set. The guard in SQL
//! (`COMPACT`) is then one row comparison, `(excluded.price_rank, excluded.price_order) >
//! (p.price_rank, p.price_order)`. `rank` is `numeric(20)` because a client
//! version reaches 2^64 - 2, beyond `bigint`. Prices are kept as the JSON
//! number the client wrote (`text`), so that `5` and `5.0` read back as
//! written.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, NoTls, Statement};
use serde_json::Number;

use super::error::PgError;
use crate::config::DatabaseUrl;
use crate::event::ProductUpdate;
use crate::intake::mailbox::Submission;
use crate::intake::{Accepted, Outcome, Refusal, batch};
use crate::product_id::ProductId;
use crate::store::{Seq, Store, Stored, WriteKey};

/// How long a connection attempt may take (once serving; at startup the
/// service waits longer: `postgres/mod.rs`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 3;

/// `pg_advisory_xact_lock` key of the schema preparation ("PUS1").
const SCHEMA_LOCK: i64 = 0x5055_5331;

/// `pg_try_advisory_xact_lock` key of the pruning: one instance at a time.
const PRUNE_LOCK: i64 = 0x5055_5350;

/// `pg_try_advisory_lock` key of the compaction: one instance at a time.
const COMPACT_LOCK: i64 = 0x5055_5343;

/// The channel the committers notify after each commit, and the tailers
/// listen on.
pub const CHANNEL: &str = "product_update_events";

/// How long journal rows are kept. A tailer that falls further behind
/// (an instance stopped for longer) finds its next rows gone and reloads
/// the products instead.
pub const EVENT_RETENTION: Duration = Duration::from_secs(600);

/// Set on every connection: a statement, a lock wait, or a transaction
/// left open by a stopped process is bounded, so a stuck peer cannot hold
/// the counter row (and every instance's commits) for long.
/// The isolation level is pinned: WRITE relies on READ COMMITTED's
/// re-read of the counter row after waiting for its lock (under
/// REPEATABLE READ it would fail with a serialization error instead).
/// Generic plans: left to itself, PostgreSQL planned WRITE afresh at every
/// execution (pg_stat_statements: plans = calls, 0.18 ms of planning per
/// batch beside 0.45 ms of execution); its plan does not depend on the
/// values, only on the arrays' lengths.
/// The server's keepalives: a client host that vanishes without closing
/// its connections (a power loss) is noticed by the server within about
/// 11 s, so that its session's locks (the compaction's) go with it.
const SESSION: &str = "SET plan_cache_mode = force_generic_plan; SET default_transaction_isolation = 'read committed'; SET lock_timeout = '5s'; SET statement_timeout = '10s'; SET idle_in_transaction_session_timeout = '10s'; SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3";

/// How long sent bytes may go unacknowledged before a connection counts
/// as lost (`tcp_user_timeout`).
const UNANSWERED: Duration = Duration::from_secs(3);

/// The tables every version has (version 1's `events` table aside).
const SCHEMA: &str = r#"
CREATE TABLE schema_version (
    version    integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE seq_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_seq bigint  NOT NULL
);
INSERT INTO seq_counter (last_seq) VALUES (0);
CREATE TABLE products (
    product_id  text COLLATE "C" PRIMARY KEY,
    price       text,
    price_rank  numeric(20, 0) NOT NULL,
    price_order bigint NOT NULL,
    stock       bigint,
    stock_rank  numeric(20, 0) NOT NULL,
    stock_order bigint NOT NULL,
    last_seq    bigint NOT NULL,
    updated_at  timestamptz NOT NULL,
    updated_by  text NOT NULL
);
CREATE TABLE idempotency (
    event_id    text COLLATE "C" PRIMARY KEY,
    seq         bigint NOT NULL,
    fingerprint bigint NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_seq ON idempotency (seq);
CREATE TABLE instances (
    instance        text PRIMARY KEY,
    started_at      timestamptz NOT NULL,
    seen_at         timestamptz NOT NULL,
    applied_through bigint NOT NULL DEFAULT 0
);
"#;

/// Version 2's journal: one row per committed batch, the compaction's
/// position, and `events`, a view with one row per event (for people
/// and psql; the service reads `journal`). Run on a new database after
/// `SCHEMA`, and by the upgrade from version 1, whose `products` table
/// already holds every committed event: `through` starts at the counter.
const JOURNAL: &str = r#"
CREATE TABLE journal (
    first_seq   bigint PRIMARY KEY,
    product_ids text[] NOT NULL,
    prices      text[] NOT NULL,
    stocks      bigint[] NOT NULL,
    versions    numeric(20, 0)[] NOT NULL,
    event_ids   text[] NOT NULL,
    request_ids text[] NOT NULL,
    accepted_by text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_accepted_at ON journal (accepted_at);
CREATE TABLE compaction (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    through      bigint NOT NULL,
    compacted_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO compaction (through) SELECT last_seq FROM seq_counter;
CREATE VIEW events AS
SELECT j.first_seq + e.i - 1 AS seq, e.product_id, e.price, e.stock, e.version,
       e.event_id, e.request_id, j.accepted_by, j.accepted_at
FROM journal j,
     unnest(j.product_ids, j.prices, j.stocks, j.versions, j.event_ids, j.request_ids)
     WITH ORDINALITY AS e(product_id, price, stock, version, event_id, request_id, i);
"#;

/// Version 3: the outbox cursor, empty until an instance with a relay
/// starts (`outbox.rs`; the housekeeping keeps the journal after it), and
/// the journal's arrays stored out of line without compression: a batch
/// request's row (1000 events, about 60 KB) is TOASTed, and compressing it
/// with pglz was two thirds of the server's time under batch requests
/// (perf), for a row that is pruned within minutes.
const VERSION_3: &str = r#"
CREATE TABLE outbox (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    through    bigint NOT NULL,
    relayed_at timestamptz NOT NULL DEFAULT now(),
    relayed_by text NOT NULL
);
ALTER TABLE journal
    ALTER COLUMN product_ids SET STORAGE EXTERNAL,
    ALTER COLUMN prices SET STORAGE EXTERNAL,
    ALTER COLUMN stocks SET STORAGE EXTERNAL,
    ALTER COLUMN versions SET STORAGE EXTERNAL,
    ALTER COLUMN event_ids SET STORAGE EXTERNAL,
    ALTER COLUMN request_ids SET STORAGE EXTERNAL;
"#;

/// From version 1 (one `events` row per event, `products` written by
/// every commit) to version 2. The counter is locked first, so that no
/// version-1 commit is in flight when `through` is read; a version-1
/// instance still running then fails its commits (no `events` table) and
/// reports it (`/readyz`): stop them before upgrading.
const UPGRADE_FROM_1: &str = "
LOCK TABLE seq_counter IN EXCLUSIVE MODE;
DROP TABLE events;
";

/// Before a batch with event ids: which of them the window knows (and,
/// in the same statement, the expired entries of those ids deleted, so
/// that the write's plain INSERT does not trip on them).
const LOOK_UP: &str = "
WITH expired AS (
    DELETE FROM idempotency
    WHERE event_id = ANY($1::text[]) AND accepted_at <= now() - make_interval(secs => $2::float8)
)
SELECT event_id, seq, fingerprint FROM idempotency
WHERE event_id = ANY($1::text[]) AND accepted_at > now() - make_interval(secs => $2::float8)";

/// The commit of a batch: one statement, run on its own (its own
/// transaction). `$1..$6` are the new events' columns (batch order: seq =
/// base + 1, base + 2, ...), `$7` this instance, and `$8..$10` the event
/// ids to remember (NULL where none, or with the window off) with their
/// events' numbers `i` (seq = base + i) and fingerprints.
const WRITE: &str = r#"
WITH counter AS (
    UPDATE seq_counter SET last_seq = last_seq + cardinality($1::text[])
    RETURNING last_seq - cardinality($1::text[]) AS base
), journaled AS (
    INSERT INTO journal (first_seq, product_ids, prices, stocks, versions, event_ids, request_ids, accepted_by)
    SELECT c.base + 1, $1::text[], $2::text[], $3::bigint[], $4::text[]::numeric[], $5::text[], $6::text[], $7
    FROM counter c
), new_ids AS (
    -- A plain INSERT: an id that another instance committed meanwhile
    -- fails the statement, and the committer looks the batch up again.
    INSERT INTO idempotency (event_id, seq, fingerprint)
    SELECT t.e, c.base + t.i, t.f
    FROM counter c, unnest($8::text[], $9::bigint[], $10::bigint[]) AS t(e, i, f)
    WHERE t.e IS NOT NULL
)
SELECT base, pg_notify('product_update_events', (base + cardinality($1::text[]))::text) FROM counter"#;

/// A slice of a compaction into `products`: `$1..$9` products folded from
/// journal rows (each field's value and write key as `(rank, order)`, the
/// product's last seq, and the `first_seq` of the journal row that holds
/// that event, for `updated_at` and `updated_by`). The guards keep
/// whatever is newer per field, whichever order slices and compactions
/// run in, and however often one is repeated.
const COMPACT: &str = r#"
WITH folded AS (
    SELECT t.id, t.pr, t.prk::numeric AS price_rank, t.po, t.st, t.srk::numeric AS stock_rank, t.so, t.ls,
           j.accepted_at, j.accepted_by
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                $5::bigint[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[])
         AS t(id, pr, prk, po, st, srk, so, ls, lb)
    JOIN journal j ON j.first_seq = t.lb
)
INSERT INTO products AS p (product_id, price, price_rank, price_order,
                           stock, stock_rank, stock_order, last_seq, updated_at, updated_by)
SELECT id, pr, price_rank, po, st, stock_rank, so, ls, accepted_at, accepted_by
FROM folded
ON CONFLICT (product_id) DO UPDATE SET
        price       = CASE WHEN (excluded.price_rank, excluded.price_order) > (p.price_rank, p.price_order)
                           THEN excluded.price ELSE p.price END,
        price_rank  = CASE WHEN (excluded.price_rank, excluded.price_order) > (p.price_rank, p.price_order)
                           THEN excluded.price_rank ELSE p.price_rank END,
        price_order = CASE WHEN (excluded.price_rank, excluded.price_order) > (p.price_rank, p.price_order)
                           THEN excluded.price_order ELSE p.price_order END,
        stock       = CASE WHEN (excluded.stock_rank, excluded.stock_order) > (p.stock_rank, p.stock_order)
                           THEN excluded.stock ELSE p.stock END,
        stock_rank  = CASE WHEN (excluded.stock_rank, excluded.stock_order) > (p.stock_rank, p.stock_order)
                           THEN excluded.stock_rank ELSE p.stock_rank END,
        stock_order = CASE WHEN (excluded.stock_rank, excluded.stock_order) > (p.stock_rank, p.stock_order)
                           THEN excluded.stock_order ELSE p.stock_order END,
        last_seq    = greatest(p.last_seq, excluded.last_seq),
        updated_at  = greatest(p.updated_at, excluded.updated_at),
        updated_by  = CASE WHEN excluded.last_seq > p.last_seq THEN excluded.updated_by ELSE p.updated_by END"#;

/// The journal rows that hold seqs after `$1`, from the one holding
/// `$1 + 1` up to the one starting at `$1 + $2` at most, and the counter,
/// in one snapshot (no rows: the one holding `$1 + 1` is pruned, or not
/// committed yet). The tailer's read, and the outbox relay's, which also
/// takes the event ids (column 7).
pub(super) const TAIL: &str = "
SELECT c.last_seq, j.first_seq, j.product_ids, j.prices, j.stocks, j.versions::text[], j.request_ids,
       j.event_ids
FROM seq_counter c
LEFT JOIN LATERAL (
    SELECT * FROM journal
    WHERE first_seq >= (SELECT max(first_seq) FROM journal WHERE first_seq <= $1::bigint + 1)
      AND first_seq <= $1::bigint + $2::bigint
    ORDER BY first_seq
) j ON true
ORDER BY j.first_seq";

const PRODUCTS: &str = "
SELECT product_id, price, price_rank::text, price_order, stock, stock_rank::text, stock_order
FROM products";

/// One connection and its prepared statements.
pub struct PgSession {
    client: Client,
    url: DatabaseUrl,
    statements: Option<Statements>,
}

#[derive(Clone)]
struct Statements {
    look_up: Statement,
    write: Statement,
    tail: Statement,
    compact: Statement,
}

/// A consistent copy of the state: every product, and the seq it reflects.
pub struct Snapshot {
    pub last_seq: Seq,
    pub products: Vec<(Box<str>, Stored)>,
}

/// What a compaction round did: journal rows and their events folded into
/// product rows.
#[derive(Default)]
pub struct Compacted {
    pub rows: usize,
    pub events: usize,
    pub products: usize,
}

/// What the tailer read: the journal rows after its position, and the
/// counter in the same snapshot.
pub struct Tail {
    pub last_seq: Seq,
    pub rows: Vec<(Seq, ProductUpdate, String)>,
}

impl PgSession {
    /// Connects, waiting at most `timeout` for the server, and bounds the
    /// session's waits (see `SESSION`). `role` (`committer-0`, `tailer`)
    /// names the connection in `pg_stat_activity.application_name`, as
    /// `product-update-service committer-0`.
    pub fn connect(url: &DatabaseUrl, timeout: Duration, role: &str) -> Result<PgSession, PgError> {
        let mut config: postgres::Config =
            url.expose()
                .parse()
                .map_err(|e: postgres::Error| PgError::BadUrl {
                    url: url.to_string(),
                    reason: url.mask_in(&e.to_string()),
                })?;
        config.connect_timeout(timeout);
        // A network that stops carrying what this side sends fails the
        // connection after this (3 s, also for the connections made at
        // startup with a longer `timeout`), instead of hanging a commit;
        // a server that takes it and never answers (a frozen host) is the
        // committers' watchdog's (`committer::COMMIT_PATIENCE`).
        let unanswered = timeout.min(UNANSWERED);
        config.tcp_user_timeout(unanswered);
        config.keepalives_idle(unanswered);
        config.application_name(&format!("product-update-service {role}"));
        let mut client = config.connect(NoTls).map_err(|e| PgError::Connect {
            url: url.to_string(),
            detail: url.mask_in(&describe(&e)),
        })?;
        client
            .batch_execute(SESSION)
            .map_err(|e| PgError::Connect {
                url: url.to_string(),
                detail: url.mask_in(&describe(&e)),
            })?;
        Ok(PgSession {
            client,
            url: url.clone(),
            statements: None,
        })
    }

    /// [`PgSession::connect`], given up on after `timeout` however far it
    /// got: a server that takes the TCP connection and never answers (a
    /// frozen host, a port that is not PostgreSQL's) would otherwise hold
    /// it for ever, since the driver's `connect_timeout` bounds only the
    /// TCP connect. For startup only: the attempt's thread is left behind
    /// if it never returns, and the service then exits.
    pub fn connect_within(
        url: &DatabaseUrl,
        timeout: Duration,
        role: &str,
    ) -> Result<PgSession, PgError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (attempt_url, attempt_role) = (url.clone(), role.to_owned());
        let given_up = |detail: String| PgError::Connect {
            url: url.to_string(),
            detail,
        };
        std::thread::Builder::new()
            .name(format!("connect-{role}"))
            .spawn(move || {
                // The receiver may have given up: nobody to tell then.
                let _ = tx.send(PgSession::connect(&attempt_url, timeout, &attempt_role));
            })
            .map_err(|e| given_up(format!("cannot start a thread to connect: {e}")))?;
        rx.recv_timeout(timeout).unwrap_or_else(|_| {
            Err(given_up(format!(
                "the server took the connection but did not answer within {} s (a frozen server, or not PostgreSQL on that port)",
                timeout.as_secs()
            )))
        })
    }

    /// The masked URL, for messages.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The connection, for the statements of another file's concern
    /// (the outbox's, `outbox.rs`).
    pub(super) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// A driver error as a message naming the masked URL.
    pub fn error(&self, e: &postgres::Error) -> PgError {
        PgError::Query {
            url: self.url.to_string(),
            detail: self.url.mask_in(&describe(e)),
        }
    }

    /// Creates the schema if the database has none, or checks its version.
    /// Under a transaction-scoped advisory lock: instances starting at once
    /// take turns, the first creates (or upgrades), the others find it done.
    pub fn prepare_schema(&mut self) -> Result<(), PgError> {
        let url = self.url.clone();
        let error = |e: postgres::Error| PgError::Query {
            url: url.to_string(),
            detail: if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                format!(
                    "{}; the user must be able to create tables: make it the database's owner (as a superuser: CREATE DATABASE <db> OWNER <user>, or ALTER DATABASE <db> OWNER TO <user>), or GRANT CREATE ON SCHEMA public TO <user>",
                    url.mask_in(&describe(&e))
                )
            } else {
                url.mask_in(&describe(&e))
            },
        };
        let mut tx = self.client.transaction().map_err(error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(error)?;
        let exists: bool = tx
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
            .map_err(error)?
            .get(0);
        if exists {
            let found: Option<i32> = tx
                .query_one("SELECT max(version) FROM schema_version", &[])
                .map_err(error)?
                .get(0);
            return match found {
                Some(SCHEMA_VERSION) => tx.commit().map_err(error),
                Some(found @ (1 | 2)) => {
                    if found == 1 {
                        tx.batch_execute(UPGRADE_FROM_1).map_err(error)?;
                        tx.batch_execute(JOURNAL).map_err(error)?;
                    }
                    tx.batch_execute(VERSION_3).map_err(error)?;
                    tx.execute(
                        "INSERT INTO schema_version (version) VALUES ($1)",
                        &[&SCHEMA_VERSION],
                    )
                    .map_err(error)?;
                    log::info!(
                        "storage: postgres {url}: schema upgraded from version {found} to {SCHEMA_VERSION} (the journal is one row per batch, and keeps what the outbox has not published)"
                    );
                    tx.commit().map_err(error)
                }
                Some(found) if found > SCHEMA_VERSION => Err(PgError::UnknownSchema {
                    url: url.to_string(),
                    found,
                    known: SCHEMA_VERSION,
                }),
                other => Err(PgError::Query {
                    url: url.to_string(),
                    detail: format!(
                        "schema_version holds {other:?}, not a version this service writes; was the table made by hand?"
                    ),
                }),
            };
        }
        tx.batch_execute(SCHEMA).map_err(error)?;
        tx.batch_execute(JOURNAL).map_err(error)?;
        tx.batch_execute(VERSION_3).map_err(error)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .map_err(error)?;
        tx.commit().map_err(error)
    }

    /// The prepared statements, prepared on first use (a `Statement` is a
    /// reference-counted handle: cloning it is cheap).
    fn statements(&mut self) -> Result<Statements, postgres::Error> {
        if let Some(statements) = &self.statements {
            return Ok(statements.clone());
        }
        let statements = Statements {
            look_up: self.client.prepare(LOOK_UP)?,
            write: self.client.prepare(WRITE)?,
            tail: self.client.prepare(TAIL)?,
            compact: self.client.prepare(COMPACT)?,
        };
        self.statements = Some(statements.clone());
        Ok(statements)
    }

    /// Every product and the seq they reflect, in one snapshot: the
    /// `products` table, as compacted through some seq, with the journal
    /// rows after it folded in.
    pub fn snapshot(&mut self) -> Result<Snapshot, PgError> {
        let url = self.url.clone();
        let error = |e: postgres::Error| PgError::Query {
            url: url.to_string(),
            detail: url.mask_in(&describe(&e)),
        };
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(error)?;
        let row = tx
            .query_one(
                "SELECT c.last_seq, k.through FROM seq_counter c, compaction k",
                &[],
            )
            .map_err(error)?;
        let (last, through): (i64, i64) = (row.get(0), row.get(1));
        let rows = tx.query(PRODUCTS, &[]).map_err(error)?;
        let journal = tx
            .query(
                "SELECT first_seq, product_ids, prices, stocks, versions::text[], request_ids
                 FROM journal WHERE first_seq > $1 ORDER BY first_seq",
                &[&through],
            )
            .map_err(error)?;
        tx.commit().map_err(error)?;
        let bad = |what: String| PgError::Query {
            url: url.to_string(),
            detail: what,
        };
        let mut compacted = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            let stored =
                stored_from(&row).map_err(|what| bad(format!("products row {id:?}: {what}")))?;
            compacted.push((id.into_boxed_str(), stored));
        }
        let mut ids: Vec<Box<str>> = compacted.iter().map(|(id, _)| id.clone()).collect();
        let store = Store::new();
        store.restore(compacted);
        let mut next = through as Seq + 1;
        for row in journal {
            let batch = batch_from(&row, 0).map_err(bad)?;
            if batch.first != next {
                return Err(bad(format!(
                    "the journal after the compaction (through seq {through}) starts at seq {} instead of {next}: a journal row is missing",
                    batch.first
                )));
            }
            for (update, _) in &batch.events {
                store.apply(next, update);
                ids.push(Box::from(&update.product_id));
                next += 1;
            }
        }
        if next != last as Seq + 1 {
            return Err(bad(format!(
                "the journal after the compaction (through seq {through}) ends at seq {}, the counter at {last}",
                next - 1
            )));
        }
        ids.sort_unstable();
        ids.dedup();
        let products = ids
            .into_iter()
            .filter_map(|id| store.stored(&id).map(|stored| (id, stored)))
            .collect();
        Ok(Snapshot {
            last_seq: last as Seq,
            products,
        })
    }

    /// Commits one batch (see the module docs) and returns each event's
    /// answer, in the batch's order (a new seq, a duplicate's original
    /// seq, or a conflict).
    /// `accepted_by` names this instance.
    pub fn accept(
        &mut self,
        batch: &[Submission],
        atomic: &[Range<usize>],
        window: Option<Duration>,
        accepted_by: &str,
    ) -> Result<Vec<Outcome>, postgres::Error> {
        // An id another instance commits between the look-up and the write
        // fails the write (see WRITE); the second look-up then finds it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_accept(batch, atomic, window, accepted_by) {
                Err(e) if attempts < 3 && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => continue,
                other => return other,
            }
        }
    }

    fn try_accept(
        &mut self,
        batch: &[Submission],
        atomic: &[Range<usize>],
        window: Option<Duration>,
        accepted_by: &str,
    ) -> Result<Vec<Outcome>, postgres::Error> {
        let Statements { look_up, write, .. } = self.statements()?;
        // The window off (`IDEMPOTENCY_WINDOW=0`): ids are journaled, not
        // remembered, and no retry is recognised.
        let ids: Vec<&str> = batch
            .iter()
            .filter_map(|s| window.and(s.update.event_id.as_deref()))
            .collect();
        let mut known: HashMap<String, (Seq, u64)> = HashMap::new();
        if !ids.is_empty() {
            let window_ttl = window.unwrap_or_default().as_secs_f64();
            for row in self.client.query(&look_up, &[&ids, &window_ttl])? {
                let (id, seq, fingerprint): (String, i64, i64) =
                    (row.get(0), row.get(1), row.get(2));
                known.insert(id, (seq as Seq, fingerprint as u64));
            }
        }
        let numbered = NumberedBatch::number(batch, &known, window.is_some(), atomic);
        if numbered.fresh.is_empty() {
            return Ok(numbered.settle(0));
        }
        let row = self
            .client
            .query_one(&write, &numbered.write_parameters(accepted_by).as_params())?;
        // `query_one`: exactly one row (the counter's), or an error, never
        // a 202 with made-up seqs.
        let base: i64 = row.get(0);
        Ok(numbered.settle(base))
    }

    /// Sets this connection up for compaction: its commits do not wait
    /// for the WAL flush (see `compact`).
    pub fn for_compaction(&mut self) -> Result<(), PgError> {
        self.client
            .batch_execute("SET synchronous_commit = off")
            .map_err(|e| self.error(&e))
    }

    /// Folds the journal rows after the compaction's position (at most
    /// `limit` rows) into `products`, `slice` products per statement, and
    /// then moves the position; nothing, if another instance is compacting
    /// right now (the session advisory lock `COMPACT_LOCK`).
    ///
    /// Each statement is its own transaction, so that no commit of a batch
    /// waits behind one large write: a round stopped half-way (an error,
    /// a crash) leaves products ahead of `through`, which the next round
    /// (or a snapshot's fold) re-applies without changing them, by the
    /// per-field keys. The commits need no flush of their own
    /// (`for_compaction`): what a crash takes of them is redone from the
    /// journal, and the WAL keeps their order, so `through` never survives
    /// the products it covers.
    pub fn compact(&mut self, limit: usize, slice: usize) -> Result<Compacted, PgError> {
        let ours: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&COMPACT_LOCK])
            .map_err(|e| self.error(&e))?
            .get(0);
        if !ours {
            return Ok(Compacted::default());
        }
        let outcome = self.compact_holding(limit, slice);
        // (A connection that failed is dropped, and the lock with it.)
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&COMPACT_LOCK]);
        outcome
    }

    fn compact_holding(&mut self, limit: usize, slice: usize) -> Result<Compacted, PgError> {
        let upsert = match self.statements() {
            Ok(s) => s.compact,
            Err(e) => return Err(self.error(&e)),
        };
        let url = self.url.clone();
        let error = |e: postgres::Error| PgError::Query {
            url: url.to_string(),
            detail: url.mask_in(&describe(&e)),
        };
        let through: i64 = self
            .client
            .query_one("SELECT through FROM compaction", &[])
            .map_err(error)?
            .get(0);
        let journal = self
            .client
            .query(
                "SELECT first_seq, product_ids, prices, stocks, versions::text[], request_ids
                 FROM journal WHERE first_seq > $1 ORDER BY first_seq LIMIT $2",
                &[&through, &(limit as i64)],
            )
            .map_err(error)?;
        let folded = Store::new();
        // Each product's last event: its seq and its journal row.
        let mut last_of: HashMap<ProductId, (Seq, Seq)> = HashMap::new();
        let mut next = through as Seq + 1;
        for row in &journal {
            let batch = batch_from(row, 0).map_err(|what| PgError::Query {
                url: url.to_string(),
                detail: what,
            })?;
            if batch.first != next {
                return Err(PgError::Query {
                    url: url.to_string(),
                    detail: format!(
                        "the journal after the compaction (through seq {through}) has no row starting at seq {next}"
                    ),
                });
            }
            for (update, _) in batch.events {
                folded.apply(next, &update);
                last_of.insert(update.product_id, (next, batch.first));
                next += 1;
            }
        }
        let events = (next - 1 - through as Seq) as usize;
        if events == 0 {
            return Ok(Compacted::default());
        }
        let mut ids: Vec<&str> = last_of.keys().map(|id| &**id).collect();
        // In one order, so that two compactions would lock rows alike.
        ids.sort_unstable();
        for ids in ids.chunks(slice.max(1)) {
            let mut products = Products::default();
            for &id in ids {
                let (last, row) = last_of[id];
                if let Some(stored) = folded.stored(id) {
                    products.push(id, &stored, last, row);
                }
            }
            self.client
                .execute(
                    &upsert,
                    &[
                        &products.ids,
                        &products.price,
                        &products.price_rank,
                        &products.price_order,
                        &products.stock,
                        &products.stock_rank,
                        &products.stock_order,
                        &products.last_seq,
                        &products.last_row,
                    ],
                )
                .map_err(error)?;
        }
        self.client
            .execute(
                "UPDATE compaction SET through = greatest(through, $1), compacted_at = now()",
                &[&((next - 1) as i64)],
            )
            .map_err(error)?;
        Ok(Compacted {
            rows: journal.len(),
            events,
            products: last_of.len(),
        })
    }

    /// The journal's events after `after` (those of the rows starting at
    /// most `limit` seqs after it), in seq order, and the counter in the
    /// same snapshot.
    pub fn tail(&mut self, after: Seq, limit: usize) -> Result<Tail, PgError> {
        let statement = match self.statements() {
            Ok(s) => s.tail.clone(),
            Err(e) => return Err(self.error(&e)),
        };
        let rows = self
            .client
            .query(&statement, &[&(after as i64), &(limit as i64)])
            .map_err(|e| self.error(&e))?;
        let mut tail = Tail {
            last_seq: rows
                .first()
                .map_or(after, |row| row.get::<_, i64>(0) as Seq),
            rows: Vec::new(),
        };
        for row in rows {
            if row.get::<_, Option<i64>>(1).is_none() {
                continue;
            }
            let batch = batch_from(&row, 1).map_err(|what| PgError::Query {
                url: self.url.to_string(),
                detail: what,
            })?;
            for (seq, event) in (batch.first..).zip(batch.events) {
                if seq > after {
                    tail.rows.push((seq, event.0, event.1));
                }
            }
        }
        Ok(tail)
    }

    /// Subscribes this connection to [`CHANNEL`].
    pub fn listen(&mut self) -> Result<(), PgError> {
        self.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| self.error(&e))
    }

    /// Waits at most `timeout` for a notification on [`CHANNEL`], then
    /// takes every other one already there. Returns the highest seq they
    /// announce (each commit's last), or `None` if none arrived.
    pub fn wait_for_notification(&mut self, timeout: Duration) -> Result<Option<Seq>, PgError> {
        let url = &self.url;
        let error = |e: postgres::Error| PgError::Query {
            url: url.to_string(),
            detail: url.mask_in(&describe(&e)),
        };
        let announced = |n: postgres::Notification| n.payload().parse::<Seq>().unwrap_or(0);
        let mut notifications = self.client.notifications();
        let Some(first) = notifications.timeout_iter(timeout).next().map_err(error)? else {
            return Ok(None);
        };
        let mut highest = announced(first);
        while let Some(more) = notifications.iter().next().map_err(error)? {
            highest = highest.max(announced(more));
        }
        Ok(Some(highest))
    }

    /// Records this instance (at start, and then every second with how far
    /// it has applied), and, if no other instance is doing it, deletes
    /// idempotency entries past the window and journal rows past
    /// [`EVENT_RETENTION`].
    pub fn housekeeping(
        &mut self,
        instance: &str,
        applied_through: Seq,
        window_ttl: Duration,
        window_len: usize,
    ) -> Result<(), postgres::Error> {
        self.client.execute(
            "INSERT INTO instances (instance, started_at, seen_at, applied_through)
             VALUES ($1, now(), now(), $2)
             ON CONFLICT (instance) DO UPDATE SET seen_at = now(), applied_through = $2",
            &[&instance, &(applied_through as i64)],
        )?;
        let mut tx = self.client.transaction()?;
        let ours: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])?
            .get(0);
        if ours {
            tx.execute(
                "DELETE FROM idempotency WHERE accepted_at < now() - make_interval(secs => $1::float8)
                    OR seq <= (SELECT seq FROM idempotency ORDER BY seq DESC OFFSET $2 LIMIT 1)",
                &[&window_ttl.as_secs_f64(), &(window_len as i64)],
            )?;
            // A prefix by seq (the tailers rely on the journal having no
            // holes), of whole rows: every row before the oldest one still
            // within the retention (`accepted_at` alone is not in seq
            // order: it is when each statement began), and only rows the
            // compaction has folded into `products`, and, with an outbox,
            // that the relay has published.
            tx.execute(
                "DELETE FROM journal WHERE first_seq < least(
                    (SELECT through + 1 FROM compaction),
                    coalesce(
                        (SELECT min(first_seq) FROM journal WHERE accepted_at >= now() - make_interval(secs => $1::float8)),
                        (SELECT last_seq + 1 FROM seq_counter)))
                  AND first_seq + cardinality(product_ids) - 1 <= (SELECT through FROM compaction)
                  AND first_seq + cardinality(product_ids) - 1 <= coalesce((SELECT through FROM outbox), first_seq + cardinality(product_ids))",
                &[&EVENT_RETENTION.as_secs_f64()],
            )?;
            // Instances not seen for a day are gone for good.
            tx.execute(
                "DELETE FROM instances WHERE seen_at < now() - interval '1 day'",
                &[],
            )?;
        }
        tx.commit()
    }
}

/// A batch's events before the write: each a duplicate of a committed
/// event, a conflict, a repeat of an id earlier in the batch, or new,
/// numbered i = 1, 2, ... (its seq is `base + i`, `base` known only once
/// the write holds the counter).
struct NumberedBatch<'a> {
    answers: Vec<Numbered>,
    /// The new events, with their fingerprints and whether their ids go
    /// into `idempotency`.
    fresh: Vec<(&'a Submission, u64, bool)>,
}

enum Numbered {
    Known(Outcome),
    New(i64),
    /// Like the new event `i`: a duplicate if the content is the same.
    SameAs(i64, bool),
}

/// The write statement's parameters, owned (see [`NumberedBatch::write_parameters`]).
struct WriteParameters<'a> {
    product_ids: Vec<&'a str>,
    prices: Vec<Option<String>>,
    stocks: Vec<Option<i64>>,
    versions: Vec<Option<String>>,
    event_ids: Vec<Option<&'a str>>,
    request_ids: Vec<String>,
    accepted_by: &'a str,
    remembered_ids: Vec<&'a str>,
    numbers: Vec<i64>,
    fingerprints: Vec<i64>,
}

impl<'a> NumberedBatch<'a> {
    /// Numbers `batch`, given the ids `known` to the database; `remember`:
    /// whether the window is on (ids are looked up and remembered). A
    /// batch request (`atomic`) is numbered whole or refused whole
    /// (`intake/batch.rs`); with the window off no id repeats, so every
    /// one is whole.
    fn number(
        batch: &'a [Submission],
        known: &HashMap<String, (Seq, u64)>,
        remember: bool,
        atomic: &[Range<usize>],
    ) -> NumberedBatch<'a> {
        let mut answers = Vec::with_capacity(batch.len());
        let mut fresh = Vec::new();
        let mut in_batch: HashMap<&str, (i64, u64)> = HashMap::new();
        let fingerprint_of =
            |update: &ProductUpdate| update.event_id.as_ref().map_or(0, |_| update.fingerprint());
        let known_answer = |event_id: &str, fingerprint: u64| {
            known.get(event_id).map(|&(seq, seen)| {
                if seen == fingerprint {
                    Ok(Accepted {
                        seq,
                        duplicate: true,
                    })
                } else {
                    Err(Refusal::IdempotencyConflict { seq })
                }
            })
        };
        let mut atomic = atomic.iter().peekable();
        // A refused batch request: where it starts, and its refusals.
        let mut refused: Option<(usize, Vec<Outcome>)> = None;
        for (k, submission) in batch.iter().enumerate() {
            if let Some(range) = atomic.next_if(|r| r.start == k).filter(|_| remember) {
                let events = batch[range.clone()]
                    .iter()
                    .map(|s| (s.update.event_id.as_deref(), fingerprint_of(&s.update)));
                // Numbers here are only compared, never written: 1-based
                // like `i`, whatever they start from.
                let (stood, new) = batch::stand(events, 1, |id, fingerprint| {
                    known_answer(id, fingerprint).or_else(|| {
                        in_batch.get(id).map(|&(_, seen)| {
                            if seen == fingerprint {
                                Ok(Accepted {
                                    seq: 0,
                                    duplicate: true,
                                })
                            } else {
                                // An event of this commit: no seq yet.
                                Err(Refusal::ConflictInCommit)
                            }
                        })
                    })
                });
                refused = batch::refuse_unless_whole(&stood, new, usize::MAX, 0)
                    .map(|refusals| (range.start, refusals));
            }
            if let Some(&refusal) = refused
                .as_ref()
                .and_then(|(start, refusals)| refusals.get(k - start))
            {
                answers.push(Numbered::Known(refusal));
                continue;
            }
            let update = &submission.update;
            let fingerprint = fingerprint_of(update);
            let remembered = update.event_id.as_deref().filter(|_| remember);
            if let Some(event_id) = remembered {
                if let Some(answer) = known_answer(event_id, fingerprint) {
                    answers.push(Numbered::Known(answer));
                    continue;
                }
                if let Some(&(i, seen)) = in_batch.get(event_id) {
                    answers.push(Numbered::SameAs(i, seen == fingerprint));
                    continue;
                }
            }
            let i = fresh.len() as i64 + 1;
            if let Some(event_id) = remembered {
                in_batch.insert(event_id, (i, fingerprint));
            }
            fresh.push((submission, fingerprint, remembered.is_some()));
            answers.push(Numbered::New(i));
        }
        NumberedBatch { answers, fresh }
    }

    /// The new events as the write statement's arrays (see `WRITE`).
    fn write_parameters(&self, accepted_by: &'a str) -> WriteParameters<'a> {
        let updates = || self.fresh.iter().map(|(s, _, _)| &s.update);
        let mut parameters = WriteParameters {
            product_ids: updates().map(|u| &*u.product_id).collect(),
            prices: updates()
                .map(|u| u.price.as_ref().map(Number::to_string))
                .collect(),
            stocks: updates().map(|u| u.stock.map(|v| v as i64)).collect(),
            versions: updates()
                .map(|u| u.version.map(|v| v.to_string()))
                .collect(),
            event_ids: updates().map(|u| u.event_id.as_deref()).collect(),
            request_ids: self
                .fresh
                .iter()
                .map(|(s, _, _)| s.request_id.to_string())
                .collect(),
            accepted_by,
            remembered_ids: Vec::new(),
            numbers: Vec::new(),
            fingerprints: Vec::new(),
        };
        // Only remembered ids go into `idempotency`.
        for (i, (submission, fingerprint, remembered)) in self.fresh.iter().enumerate() {
            if let (true, Some(event_id)) = (*remembered, submission.update.event_id.as_deref()) {
                parameters.remembered_ids.push(event_id);
                parameters.numbers.push(i as i64 + 1);
                parameters.fingerprints.push(*fingerprint as i64);
            }
        }
        parameters
    }

    /// Each event's outcome, once the write gave the new ones `base + i`.
    fn settle(&self, base: i64) -> Vec<Outcome> {
        let seq = |i: i64| (base + i) as Seq;
        self.answers
            .iter()
            .map(|answer| match *answer {
                Numbered::Known(outcome) => outcome,
                Numbered::New(i) => Ok(Accepted {
                    seq: seq(i),
                    duplicate: false,
                }),
                Numbered::SameAs(i, true) => Ok(Accepted {
                    seq: seq(i),
                    duplicate: true,
                }),
                Numbered::SameAs(i, false) => Err(Refusal::IdempotencyConflict { seq: seq(i) }),
            })
            .collect()
    }
}

impl WriteParameters<'_> {
    /// In the order of `WRITE`'s placeholders.
    fn as_params(&self) -> [&(dyn postgres::types::ToSql + Sync); 10] {
        [
            &self.product_ids,
            &self.prices,
            &self.stocks,
            &self.versions,
            &self.event_ids,
            &self.request_ids,
            &self.accepted_by,
            &self.remembered_ids,
            &self.numbers,
            &self.fingerprints,
        ]
    }
}

/// Whether the connection is to be dropped after `e`: closed, any error
/// not from the server (I/O, or the client's own, after which the
/// connection's state is not known), or a server error after which the
/// server ends the session: severity `FATAL` or `PANIC`, or SQLSTATE
/// class 57P (a terminated backend, a shutdown). Any other server error
/// (a timeout, a constraint) leaves the connection usable.
pub fn is_lost(e: &postgres::Error) -> bool {
    use postgres::error::Severity;
    e.is_closed()
        || e.as_db_error().is_none_or(|db| {
            let ends_session = match db.parsed_severity() {
                Some(severity) => matches!(severity, Severity::Fatal | Severity::Panic),
                // Before PostgreSQL 9.6 only the localized text is sent.
                None => matches!(db.severity(), "FATAL" | "PANIC"),
            };
            ends_session || db.code().code().starts_with("57P")
        })
}

/// A driver error's message with the server's own text, which `Display`
/// alone leaves out ("db error" for every server error).
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let hint = if db.code() == &SqlState::LOCK_NOT_AVAILABLE {
                " (another instance held the seq counter for longer than lock_timeout)"
            } else {
                ""
            };
            format!("{}: {}{hint}", db.severity(), db.message())
        }
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Folded products, as the compaction's columns: each field's value and
/// write key (see the module docs), the product's last seq, and the
/// journal row that holds that event.
#[derive(Default)]
struct Products<'a> {
    ids: Vec<&'a str>,
    price: Vec<Option<String>>,
    price_rank: Vec<String>,
    price_order: Vec<i64>,
    stock: Vec<Option<i64>>,
    stock_rank: Vec<String>,
    stock_order: Vec<i64>,
    last_seq: Vec<i64>,
    last_row: Vec<i64>,
}

impl<'a> Products<'a> {
    fn push(&mut self, id: &'a str, stored: &Stored, last: Seq, row: Seq) {
        let (price_rank, price_order) = key_columns(stored.price_key);
        let (stock_rank, stock_order) = key_columns(stored.stock_key);
        self.ids.push(id);
        self.price
            .push(stored.price.as_ref().map(Number::to_string));
        self.price_rank.push(price_rank);
        self.price_order.push(price_order);
        self.stock.push(stored.stock.map(|v| v as i64));
        self.stock_rank.push(stock_rank);
        self.stock_order.push(stock_order);
        self.last_seq.push(last as i64);
        self.last_row.push(row as i64);
    }
}

/// A write key as its `(rank, order)` columns (see the module docs).
fn key_columns(key: WriteKey) -> (String, i64) {
    match key.parts() {
        None => ("0".to_owned(), 0),
        Some((seq, None)) => ("0".to_owned(), seq as i64),
        Some((seq, Some(version))) => ((u128::from(version) + 1).to_string(), -(seq as i64)),
    }
}

/// The columns back into a write key.
fn key_from(rank: &str, order: i64) -> Result<WriteKey, String> {
    let rank: u128 = rank
        .parse()
        .map_err(|_| format!("a rank that is not a whole number: {rank:?}"))?;
    match (rank, order) {
        (0, 0) => Ok(WriteKey::default()),
        (0, seq) if seq > 0 => Ok(WriteKey::new(seq as Seq, None)),
        (rank, seq) if seq < 0 && rank <= u128::from(u64::MAX) => {
            Ok(WriteKey::new(seq.unsigned_abs(), Some((rank - 1) as u64)))
        }
        _ => Err(format!(
            "a write key that this service does not write: ({rank}, {order})"
        )),
    }
}

fn price_from(text: Option<String>) -> Result<Option<Number>, String> {
    text.map(|text| {
        serde_json::from_str::<Number>(&text)
            .map_err(|_| format!("price {text:?} is not a JSON number"))
    })
    .transpose()
}

fn stock_from(value: Option<i64>) -> Result<Option<u64>, String> {
    value
        .map(u64::try_from)
        .transpose()
        .map_err(|_| "negative stock".to_owned())
}

fn stored_from(row: &postgres::Row) -> Result<Stored, String> {
    Ok(Stored {
        price: price_from(row.get(1))?,
        price_key: key_from(&row.get::<_, String>(2), row.get(3))?,
        stock: stock_from(row.get(4))?,
        stock_key: key_from(&row.get::<_, String>(5), row.get(6))?,
    })
}

/// One journal row: its events, with their request ids, from seq `first`.
pub(super) struct BatchRow {
    pub first: Seq,
    pub events: Vec<(ProductUpdate, String)>,
}

/// A journal row from `row`'s columns `at..`: `first_seq, product_ids,
/// prices, stocks, versions::text[], request_ids`.
pub(super) fn batch_from(row: &postgres::Row, at: usize) -> Result<BatchRow, String> {
    let first: i64 = row.get(at);
    let ids: Vec<String> = row.get(at + 1);
    let prices: Vec<Option<String>> = row.get(at + 2);
    let stocks: Vec<Option<i64>> = row.get(at + 3);
    let versions: Vec<Option<String>> = row.get(at + 4);
    let request_ids: Vec<String> = row.get(at + 5);
    let n = ids.len();
    if [
        prices.len(),
        stocks.len(),
        versions.len(),
        request_ids.len(),
    ] != [n; 4]
    {
        return Err(format!(
            "journal row first_seq={first}: its arrays differ in length"
        ));
    }
    let first = Seq::try_from(first).map_err(|_| format!("journal row first_seq={first}"))?;
    let mut events = Vec::with_capacity(n);
    for (i, (((id, price), stock), (version, request_id))) in ids
        .into_iter()
        .zip(prices)
        .zip(stocks)
        .zip(versions.into_iter().zip(request_ids))
        .enumerate()
    {
        let seq = first + i as Seq;
        let what = |what: String| format!("journal event seq={seq}: {what}");
        let update = ProductUpdate {
            product_id: id.into(),
            price: price_from(price).map_err(what)?,
            stock: stock_from(stock).map_err(what)?,
            // The database has already told duplicates apart.
            event_id: None,
            version: version
                .map(|v| v.parse().map_err(|_| what(format!("version {v:?}"))))
                .transpose()?,
        };
        events.push((update, request_id));
    }
    Ok(BatchRow { first, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_keys_survive_their_columns_and_compare_the_same() {
        let keys = [
            WriteKey::default(),
            WriteKey::new(1, None),
            WriteKey::new(7, None),
            WriteKey::new(9, Some(0)),
            WriteKey::new(3, Some(5)),
            WriteKey::new(2, Some(5)),
            WriteKey::new(1, Some(u64::MAX - 1)),
        ];
        for key in keys {
            let (rank, order) = key_columns(key);
            assert_eq!(key_from(&rank, order), Ok(key), "{key:?}");
        }
        let columns = |k: WriteKey| {
            let (rank, order) = key_columns(k);
            (rank.parse::<u128>().expect("number"), order)
        };
        for a in keys {
            for b in keys {
                assert_eq!(a.cmp(&b), columns(a).cmp(&columns(b)), "{a:?} {b:?}");
            }
        }
    }
}
