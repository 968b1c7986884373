//! The PostgreSQL database: the connection, the versioned schema, and the
//! few statements the service runs. Nothing here has a thread of its own;
//! the committer and the tailer (`committer.rs`, `tailer.rs`) each own one
//! [`Database`].
//!
//! # The schema (version 1)
//!
//! ```sql
//! schema_version (version, created_at)
//! seq_counter    (last_seq)                  -- one row: the last seq given out
//! events         (seq PRIMARY KEY, product_id, price, stock, version,
//!                 event_id, request_id,
//!                 accepted_by, accepted_at)  -- the journal, kept EVENT_RETENTION
//! products       (product_id PRIMARY KEY,
//!                 price, price_rank, price_order,
//!                 stock, stock_rank, stock_order,
//!                 last_seq, updated_at, updated_by)
//! idempotency    (event_id PRIMARY KEY, seq, fingerprint, accepted_at)
//! instances      (instance PRIMARY KEY, started_at, seen_at, applied_through)
//! ```
//!
//! # One statement per batch, in seq order
//!
//! [`Database::accept`] commits a batch of events with one statement,
//! which is its own transaction (one round trip):
//!
//! 0. (only if the batch has `event_id`s) look them up in `idempotency`;
//!    in Rust, the known ones are answered as duplicates or conflicts, the
//!    new ones numbered 1, 2, ... and folded per product by the store's
//!    own rule;
//! 1. `UPDATE seq_counter SET last_seq = last_seq + n RETURNING base`:
//!    this takes the counter row's lock, and gives the new events the
//!    seqs `base + 1 ..= base + n`;
//! 2. insert them into `events` and `idempotency`, upsert their products
//!    with the per-field guards, `NOTIFY` the other instances;
//! 3. commit (and flush the WAL), which releases the lock.
//!
//! The counter row's lock is held until the commit, so batches commit one
//! after another in seq order, across every instance: seqs are gap-free
//! (a failed statement also rolls back its counter), and every snapshot
//! of `events` holds a prefix of them. An `event_id` another instance
//! commits between steps 0 and 2 makes the `idempotency` insert fail, and
//! the batch is looked up and written again. That is what lets each instance's
//! tailer read the journal by `seq > last` and keep a plain "applied
//! through N" watermark, the same as one instance's. The price is that
//! commits do not overlap; ARCHITECTURE.md ("Several instances") has the
//! figures and the way past it.
//!
//! Each field's write key (`WriteKey` in `store.rs`) is stored as a
//! `(rank, order)` pair that compares the same way as the key: rank 0 and
//! order `seq` for an unversioned write, rank `version + 1` and order
//! `-seq` for a versioned one, `(0, 0)` for never set. The guard in SQL is
//! then one row comparison, `(excluded.price_rank, excluded.price_order) >
//! (p.price_rank, p.price_order)`. `rank` is `numeric(20)` because a client
//! version reaches 2^64 - 2, beyond `bigint`. Prices are kept as the JSON
//! number the client wrote (`text`), so that `5` and `5.0` read back as
//! written.

use std::collections::HashMap;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, NoTls, Statement};
use serde_json::Number;

use super::super::PgError;
use super::super::url::DatabaseUrl;
use crate::model::ProductUpdate;
use crate::queue::{Submission, SubmitError, Submitted};
use crate::store::{Seq, Store, Stored, WriteKey};

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 1;

/// `pg_advisory_xact_lock` key of the schema preparation ("PUS1").
const SCHEMA_LOCK: i64 = 0x5055_5331;

/// `pg_try_advisory_xact_lock` key of the pruning: one instance at a time.
const PRUNE_LOCK: i64 = 0x5055_5350;

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
const SESSION: &str = "SET plan_cache_mode = force_generic_plan; SET default_transaction_isolation = 'read committed'; SET lock_timeout = '5s'; SET statement_timeout = '10s'; SET idle_in_transaction_session_timeout = '10s'";

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
CREATE TABLE events (
    seq         bigint PRIMARY KEY,
    product_id  text COLLATE "C" NOT NULL,
    price       text,
    stock       bigint,
    version     numeric(20, 0),
    event_id    text COLLATE "C",
    request_id  text NOT NULL,
    accepted_by text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_accepted_at ON events (accepted_at);
CREATE INDEX events_event_id ON events (event_id) WHERE event_id IS NOT NULL;
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
/// transaction). `$1..$7` are the new events (`i` = 1, 2, ... in batch
/// order; seq = base + i), `$8` their fingerprints, `$9` this instance,
/// `$10..$17` the products folded from them (each field's winning event
/// as its `i`, 0 for none), `$18` the number of events, `$19` the event
/// ids to remember (NULL where none, or with the window off).
const WRITE: &str = r#"
WITH counter AS (
    UPDATE seq_counter SET last_seq = last_seq + $18::bigint
    RETURNING last_seq - $18::bigint AS base
), new_events AS (
    INSERT INTO events (seq, product_id, price, stock, version, event_id, request_id, accepted_by)
    SELECT c.base + t.i, t.p, t.pr, t.st, t.v::numeric, t.e, t.r, $9
    FROM counter c,
         unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
         AS t(i, p, pr, st, v, e, r)
), new_ids AS (
    -- A plain INSERT: an id that another instance committed meanwhile
    -- fails the statement, and the committer looks the batch up again.
    INSERT INTO idempotency (event_id, seq, fingerprint)
    SELECT t.e, c.base + t.i, t.f
    FROM counter c, unnest($19::text[], $1::bigint[], $8::bigint[]) AS t(e, i, f)
    WHERE t.e IS NOT NULL
), folded AS (
    SELECT t.id, t.pr,
           t.prk::numeric AS price_rank,
           CASE WHEN t.pi = 0 THEN 0 WHEN t.prk = '0' THEN c.base + t.pi ELSE -(c.base + t.pi) END AS price_order,
           t.st,
           t.srk::numeric AS stock_rank,
           CASE WHEN t.si = 0 THEN 0 WHEN t.srk = '0' THEN c.base + t.si ELSE -(c.base + t.si) END AS stock_order,
           c.base + t.li AS last_seq
    FROM counter c,
         unnest($10::text[], $11::text[], $12::text[], $13::bigint[],
                $14::bigint[], $15::text[], $16::bigint[], $17::bigint[])
         AS t(id, pr, prk, pi, st, srk, si, li)
), upserted AS (
    INSERT INTO products AS p (product_id, price, price_rank, price_order,
                               stock, stock_rank, stock_order, last_seq, updated_at, updated_by)
    SELECT id, pr, price_rank, price_order, st, stock_rank, stock_order, last_seq, now(), $9
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
        updated_at  = now(),
        updated_by  = excluded.updated_by
)
SELECT base, pg_notify('product_update_events', (base + $18::bigint)::text) FROM counter"#;

/// The tailer's read: the counter and the journal rows after `$1`, in one
/// snapshot.
const TAIL: &str = "
SELECT c.last_seq, e.seq, e.product_id, e.price, e.stock, e.version::text, e.request_id
FROM seq_counter c
LEFT JOIN LATERAL (
    SELECT * FROM events WHERE seq > $1 ORDER BY seq LIMIT $2
) e ON true
ORDER BY e.seq";

const PRODUCTS: &str = "
SELECT product_id, price, price_rank::text, price_order, stock, stock_rank::text, stock_order
FROM products";

/// One connection and its prepared statements.
pub struct Database {
    client: Client,
    url: DatabaseUrl,
    statements: Option<Statements>,
}

#[derive(Clone)]
struct Statements {
    look_up: Statement,
    write: Statement,
    tail: Statement,
}

/// A consistent copy of the state: every product, and the seq it reflects.
pub struct Snapshot {
    pub last_seq: Seq,
    pub products: Vec<(Box<str>, Stored)>,
}

/// What the tailer read: the journal rows after its position, and the
/// counter in the same snapshot.
pub struct Tail {
    pub last_seq: Seq,
    pub rows: Vec<(Seq, ProductUpdate, String)>,
}

impl Database {
    /// Connects, waiting at most `timeout` for the server, and bounds the
    /// session's waits (see `SESSION`). `role` (`committer-0`, `tailer`)
    /// names the connection in `pg_stat_activity.application_name`, as
    /// `product-update-service committer-0`.
    pub fn connect(url: &DatabaseUrl, timeout: Duration, role: &str) -> Result<Database, PgError> {
        let mut config: postgres::Config =
            url.expose()
                .parse()
                .map_err(|e: postgres::Error| PgError::BadUrl {
                    url: url.to_string(),
                    reason: url.mask_in(&e.to_string()),
                })?;
        config.connect_timeout(timeout);
        // A server that stops answering (a dropped network, a frozen host)
        // fails the connection after this, instead of hanging a commit.
        config.tcp_user_timeout(timeout);
        config.keepalives_idle(timeout);
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
        Ok(Database {
            client,
            url: url.clone(),
            statements: None,
        })
    }

    /// The masked URL, for messages.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
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
    /// take turns, the first creates, the others find version 1.
    pub fn prepare_schema(&mut self) -> Result<(), PgError> {
        let url = self.url.clone();
        let error = |e: postgres::Error| PgError::Query {
            url: url.to_string(),
            detail: url.mask_in(&describe(&e)),
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
        };
        self.statements = Some(statements.clone());
        Ok(statements)
    }

    /// Every product and the seq they reflect, in one snapshot.
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
        let last: i64 = tx
            .query_one("SELECT last_seq FROM seq_counter", &[])
            .map_err(error)?
            .get(0);
        let rows = tx.query(PRODUCTS, &[]).map_err(error)?;
        tx.commit().map_err(error)?;
        let mut products = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            let stored = stored_from(&row).map_err(|what| PgError::Query {
                url: url.to_string(),
                detail: format!("products row {id:?}: {what}"),
            })?;
            products.push((id.into_boxed_str(), stored));
        }
        Ok(Snapshot {
            last_seq: last as Seq,
            products,
        })
    }

    /// Commits one batch (see the module docs) and returns each event's
    /// answer, in the batch's order (a new seq, a duplicate's original
    /// seq, or a conflict), and how many product rows it wrote.
    /// `accepted_by` names this instance.
    pub fn accept(
        &mut self,
        batch: &[Submission],
        window: Option<Duration>,
        accepted_by: &str,
    ) -> Result<(Vec<Result<Submitted, SubmitError>>, usize), postgres::Error> {
        // An id another instance commits between the look-up and the write
        // fails the write (see WRITE); the second look-up then finds it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_accept(batch, window, accepted_by) {
                Err(e) if attempts < 3 && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => continue,
                other => return other,
            }
        }
    }

    fn try_accept(
        &mut self,
        batch: &[Submission],
        window: Option<Duration>,
        accepted_by: &str,
    ) -> Result<(Vec<Result<Submitted, SubmitError>>, usize), postgres::Error> {
        let Statements { look_up, write, .. } = self.statements()?;
        // The window off (`IDEMPOTENCY_WINDOW=0`): ids are journaled, not
        // remembered, and no retry is recognised.
        let window_ttl = window.unwrap_or_default();
        fn remembered_in(window: Option<Duration>, s: &Submission) -> Option<&str> {
            window.and(s.update.event_id.as_deref())
        }
        let remembered = |s| remembered_in(window, s);
        let ids: Vec<&str> = batch.iter().filter_map(remembered).collect();
        let mut known: HashMap<String, (Seq, u64)> = HashMap::new();
        if !ids.is_empty() {
            for row in self
                .client
                .query(&look_up, &[&ids, &window_ttl.as_secs_f64()])?
            {
                let (id, seq, fingerprint): (String, i64, i64) =
                    (row.get(0), row.get(1), row.get(2));
                known.insert(id, (seq as Seq, fingerprint as u64));
            }
        }

        // Each event: a duplicate (of a committed event), a conflict, or
        // new, numbered i = 1, 2, ... (its seq is base + i, base known only
        // once the write holds the counter). Repeats of an id within the
        // batch answer like the first.
        enum Answer {
            Known(Result<Submitted, SubmitError>),
            New(i64),
            SameAs(i64, bool),
        }
        let mut answers = Vec::with_capacity(batch.len());
        let mut fresh: Vec<(i64, &Submission, u64)> = Vec::new();
        let mut in_batch: HashMap<&str, (i64, u64)> = HashMap::new();
        for submission in batch {
            let update = &submission.update;
            let fingerprint = update.event_id.as_ref().map_or(0, |_| update.fingerprint());
            if let Some(event_id) = remembered(submission) {
                if let Some(&(seq, seen)) = known.get(event_id) {
                    answers.push(Answer::Known(if seen == fingerprint {
                        Ok(Submitted {
                            seq,
                            duplicate: true,
                        })
                    } else {
                        Err(SubmitError::IdempotencyConflict { seq })
                    }));
                    continue;
                }
                if let Some(&(i, seen)) = in_batch.get(event_id) {
                    answers.push(Answer::SameAs(i, seen == fingerprint));
                    continue;
                }
            }
            let i = fresh.len() as i64 + 1;
            if let Some(event_id) = remembered(submission) {
                in_batch.insert(event_id, (i, fingerprint));
            }
            fresh.push((i, submission, fingerprint));
            answers.push(Answer::New(i));
        }
        let settle = |base: i64| -> Vec<Result<Submitted, SubmitError>> {
            let seq = |i: i64| (base + i) as Seq;
            answers
                .iter()
                .map(|answer| match *answer {
                    Answer::Known(result) => result,
                    Answer::New(i) => Ok(Submitted {
                        seq: seq(i),
                        duplicate: false,
                    }),
                    Answer::SameAs(i, true) => Ok(Submitted {
                        seq: seq(i),
                        duplicate: true,
                    }),
                    Answer::SameAs(i, false) => {
                        Err(SubmitError::IdempotencyConflict { seq: seq(i) })
                    }
                })
                .collect()
        };
        if fresh.is_empty() {
            return Ok((settle(0), 0));
        }

        let numbers: Vec<i64> = fresh.iter().map(|(i, ..)| *i).collect();
        let product_ids: Vec<&str> = fresh
            .iter()
            .map(|(_, s, _)| &*s.update.product_id)
            .collect();
        let prices: Vec<Option<String>> = fresh
            .iter()
            .map(|(_, s, _)| s.update.price.as_ref().map(Number::to_string))
            .collect();
        let stocks: Vec<Option<i64>> = fresh
            .iter()
            .map(|(_, s, _)| s.update.stock.map(|v| v as i64))
            .collect();
        let versions: Vec<Option<String>> = fresh
            .iter()
            .map(|(_, s, _)| s.update.version.map(|v| v.to_string()))
            .collect();
        let event_ids: Vec<Option<&str>> = fresh
            .iter()
            .map(|(_, s, _)| s.update.event_id.as_deref())
            .collect();
        // Only remembered ids go into `idempotency` ($19).
        let remembered_ids: Vec<Option<&str>> =
            fresh.iter().map(|(_, s, _)| remembered(s)).collect();
        let request_ids: Vec<String> = fresh
            .iter()
            .map(|(_, s, _)| s.request_id.to_string())
            .collect();
        let fingerprints: Vec<i64> = fresh.iter().map(|(.., f)| *f as i64).collect();

        // The batch folded into one row per product by the store's own
        // rule, with i standing in for the seq (which is base + i: the
        // same order), so that the upsert touches each row once.
        let folded = Store::new();
        let mut last_of: HashMap<&str, i64> = HashMap::new();
        for (i, submission, _) in &fresh {
            folded.apply(*i as Seq, &submission.update);
            last_of.insert(&submission.update.product_id, *i);
        }
        let mut products = Products::default();
        for (id, last) in last_of {
            if let Some(stored) = folded.stored(id) {
                products.push(id, &stored, last);
            }
        }
        let rows = self.client.query_one(
            &write,
            &[
                &numbers,
                &product_ids,
                &prices,
                &stocks,
                &versions,
                &event_ids,
                &request_ids,
                &fingerprints,
                &accepted_by,
                &products.ids,
                &products.price,
                &products.price_rank,
                &products.price_event,
                &products.stock,
                &products.stock_rank,
                &products.stock_event,
                &products.last_event,
                &(fresh.len() as i64),
                &remembered_ids,
            ],
        )?;
        // `query_one`: exactly one row (the counter's), or an error, never
        // a 202 with made-up seqs.
        let base: i64 = rows.get(0);
        Ok((settle(base), products.ids.len()))
    }

    /// The journal rows after `after` (at most `limit`), in seq order, and
    /// the counter in the same snapshot.
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
            rows: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            let Some(seq) = row.get::<_, Option<i64>>(1) else {
                continue;
            };
            let seq = seq as Seq;
            let update = update_from(&row).map_err(|what| PgError::Query {
                url: self.url.to_string(),
                detail: format!("events row seq={seq}: {what}"),
            })?;
            let request_id: String = row.get(6);
            tail.rows.push((seq, update, request_id));
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
            // holes): everything below the oldest row still within the
            // retention. (`accepted_at` alone is not in seq order: it is
            // when each statement began.)
            tx.execute(
                "DELETE FROM events WHERE seq < coalesce(
                    (SELECT min(seq) FROM events WHERE accepted_at >= now() - make_interval(secs => $1::float8)),
                    (SELECT last_seq + 1 FROM seq_counter))",
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

/// The folded products of a batch, as the write's columns: each field's
/// value, its rank, and its winning event's number in the batch (0: the
/// batch does not set it).
#[derive(Default)]
struct Products<'a> {
    ids: Vec<&'a str>,
    price: Vec<Option<String>>,
    price_rank: Vec<String>,
    price_event: Vec<i64>,
    stock: Vec<Option<i64>>,
    stock_rank: Vec<String>,
    stock_event: Vec<i64>,
    last_event: Vec<i64>,
}

impl<'a> Products<'a> {
    fn push(&mut self, id: &'a str, stored: &Stored, last: i64) {
        let (price_rank, price_event) = rank_and_event(stored.price_key);
        let (stock_rank, stock_event) = rank_and_event(stored.stock_key);
        self.ids.push(id);
        self.price
            .push(stored.price.as_ref().map(Number::to_string));
        self.price_rank.push(price_rank);
        self.price_event.push(price_event);
        self.stock.push(stored.stock.map(|v| v as i64));
        self.stock_rank.push(stock_rank);
        self.stock_event.push(stock_event);
        self.last_event.push(last);
    }
}

/// A key made from a batch number (`WriteKey::new(i, version)`) as its
/// rank and that number; the write turns the number into the order
/// column (`base + i`, negated for a versioned write).
fn rank_and_event(key: WriteKey) -> (String, i64) {
    match key.parts() {
        None => ("0".to_owned(), 0),
        Some((i, None)) => ("0".to_owned(), i as i64),
        Some((i, Some(version))) => ((u128::from(version) + 1).to_string(), i as i64),
    }
}

/// A write key as its `(rank, order)` columns (see the module docs): what
/// WRITE computes from `rank_and_event` and the batch's base.
#[cfg(test)]
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

fn update_from(row: &postgres::Row) -> Result<ProductUpdate, String> {
    let version: Option<String> = row.get(5);
    Ok(ProductUpdate {
        product_id: row.get::<_, String>(2).into_boxed_str(),
        price: price_from(row.get(3))?,
        stock: stock_from(row.get(4))?,
        // The database has already told duplicates apart.
        event_id: None,
        version: version
            .map(|v| v.parse().map_err(|_| format!("version {v:?}")))
            .transpose()?,
    })
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
