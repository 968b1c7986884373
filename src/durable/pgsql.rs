//! PostgreSQL as the shared source of truth of several instances (cargo
//! feature `postgres`, issue 13). **In progress:** this file has the parts
//! every later step builds on, tested against a throwaway server
//! (`tests/postgres.rs`), and is not yet a mode of the service:
//!
//! - [`DatabaseUrl`]: the connection URL, which prints with its password
//!   masked everywhere (`Display` and `Debug`), so that no log line, error
//!   or startup line can carry it;
//! - [`connect`]: a connection with a bounded connect time, whose errors
//!   name the masked URL;
//! - [`prepare_schema`]: creates the schema, or checks that the existing
//!   one is a version this build knows, under a transaction-scoped
//!   advisory lock, so that any number of instances starting at once
//!   create it exactly once.
//!
//! # The schema (version 1)
//!
//! ```sql
//! schema_version (version integer, created_at timestamptz)
//! events      (seq bigserial PRIMARY KEY,      -- the global order
//!              product_id, price, stock, version, event_id, fingerprint,
//!              accepted_by text,               -- the instance that took it
//!              accepted_at, applied_at)        -- applied_at NULL: pending
//! products    (product_id PRIMARY KEY, price, stock, version,
//!              price_rank, price_order, stock_rank, stock_order,
//!              updated_at, updated_by)
//! idempotency (event_id PRIMARY KEY, seq, fingerprint, accepted_at)
//! instances   (instance PRIMARY KEY, started_at, seen_at)
//! ```
//!
//! Each field's write key (`WriteKey` in `store.rs`) is stored as a
//! `(rank, order)` pair that compares the same way as the key: rank 0 and
//! order `seq` for an unversioned write, rank `version + 1` and order
//! `-seq` for a versioned one. The guard in SQL is then one row
//! comparison, `(excluded.price_rank, excluded.price_order) >
//! (products.price_rank, products.price_order)`, which concurrent workers
//! of different instances cannot get around. `rank` is `numeric(20)`
//! because a client version reaches 2^64 - 2, beyond `bigint`.

use std::fmt;
use std::time::Duration;

use postgres::{Client, NoTls};

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 1;

/// `pg_advisory_xact_lock` key of the schema preparation ("PUS1").
const SCHEMA_LOCK: i64 = 0x5055_5331;

const SCHEMA: &str = r#"
CREATE TABLE schema_version (
    version    integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE events (
    seq         bigserial PRIMARY KEY,
    product_id  text COLLATE "C" NOT NULL,
    price       numeric,
    stock       bigint,
    version     numeric(20, 0),
    event_id    text COLLATE "C",
    fingerprint bigint NOT NULL DEFAULT 0,
    accepted_by text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_at  timestamptz
);
CREATE INDEX events_pending ON events (seq) WHERE applied_at IS NULL;
CREATE TABLE products (
    product_id  text COLLATE "C" PRIMARY KEY,
    price       numeric,
    stock       bigint,
    version     numeric(20, 0),
    price_rank  numeric(20, 0) NOT NULL DEFAULT 0,
    price_order bigint NOT NULL DEFAULT 0,
    stock_rank  numeric(20, 0) NOT NULL DEFAULT 0,
    stock_order bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL,
    updated_by  text NOT NULL
);
CREATE TABLE idempotency (
    event_id    text COLLATE "C" PRIMARY KEY,
    seq         bigint NOT NULL,
    fingerprint bigint NOT NULL,
    accepted_at timestamptz NOT NULL
);
CREATE TABLE instances (
    instance   text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL
);
"#;

/// A PostgreSQL connection URL (`postgres://user:password@host:port/db`).
/// Prints with the password replaced by `***`; [`DatabaseUrl::expose`] is
/// the one way to the real text, for connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Accepts `postgres://` and `postgresql://` URLs.
    pub fn parse(url: &str) -> Result<DatabaseUrl, PgError> {
        let url = DatabaseUrl(url.to_owned());
        let known = ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.0.starts_with(scheme));
        if !known {
            return Err(PgError::BadUrl {
                url: url.to_string(),
                reason: "it must start with postgres:// or postgresql://".to_owned(),
            });
        }
        if let Err(e) = url.0.parse::<postgres::Config>() {
            return Err(PgError::BadUrl {
                url: url.to_string(),
                reason: mask_in(&e.to_string(), &url.0),
            });
        }
        Ok(url)
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password's byte range in the URL, if it has one.
    fn password(&self) -> Option<std::ops::Range<usize>> {
        let after_scheme = self.0.find("://")? + 3;
        let authority_end = self.0[after_scheme..]
            .find(['/', '?'])
            .map_or(self.0.len(), |i| after_scheme + i);
        let at = self.0[after_scheme..authority_end].rfind('@')? + after_scheme;
        let colon = self.0[after_scheme..at].find(':')? + after_scheme;
        Some(colon + 1..at)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = &self.0;
        match self.password() {
            Some(range) => {
                write!(f, "{}***{}", &text[..range.start], &text[range.end..])
            }
            None => f.write_str(text),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Replaces the password of `url`, wherever it appears in `text`, by `***`
/// (a driver's error message may quote it).
fn mask_in(text: &str, url: &str) -> String {
    let url = DatabaseUrl(url.to_owned());
    match url.password() {
        Some(range) if !range.is_empty() => text.replace(&url.0[range], "***"),
        _ => text.to_owned(),
    }
}

/// What went wrong with the database; every message names the masked URL.
#[derive(Debug)]
pub enum PgError {
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
    },
    Query {
        url: String,
        detail: String,
    },
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::BadUrl { url, reason } => {
                write!(
                    f,
                    "DATABASE_URL {url} is not a usable PostgreSQL URL: {reason}"
                )
            }
            PgError::Connect { url, detail } => write!(
                f,
                "cannot connect to {url}: {detail}; check that PostgreSQL runs there and accepts this user"
            ),
            PgError::UnknownSchema { url, found } => write!(
                f,
                "{url} has schema version {found}, and this build knows versions up to {SCHEMA_VERSION}: it was created by a newer product-update-service; run that version (it was left untouched)"
            ),
            PgError::Query { url, detail } => write!(f, "{url}: {detail}"),
        }
    }
}

impl std::error::Error for PgError {}

/// Connects, waiting at most `timeout` for the server.
pub fn connect(url: &DatabaseUrl, timeout: Duration) -> Result<Client, PgError> {
    let connect_error = |e: postgres::Error| PgError::Connect {
        url: url.to_string(),
        detail: mask_in(&e.to_string(), url.expose()),
    };
    let mut config: postgres::Config = url.expose().parse().map_err(connect_error)?;
    config.connect_timeout(timeout);
    config.application_name("product-update-service");
    config.connect(NoTls).map_err(connect_error)
}

/// Creates the schema if the database has none, or checks its version.
/// Under a transaction-scoped advisory lock: instances starting at once
/// take turns, the first creates, the others find version 1.
pub fn prepare_schema(client: &mut Client, url: &DatabaseUrl) -> Result<(), PgError> {
    let query_error = |e: postgres::Error| PgError::Query {
        url: url.to_string(),
        detail: mask_in(&e.to_string(), url.expose()),
    };
    let mut tx = client.transaction().map_err(query_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(query_error)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .map_err(query_error)?
        .get(0);
    if exists {
        let found: Option<i32> = tx
            .query_one("SELECT max(version) FROM schema_version", &[])
            .map_err(query_error)?
            .get(0);
        return match found {
            Some(SCHEMA_VERSION) => tx.commit().map_err(query_error),
            Some(found) if found > SCHEMA_VERSION => Err(PgError::UnknownSchema {
                url: url.to_string(),
                found,
            }),
            other => Err(PgError::Query {
                url: url.to_string(),
                detail: format!(
                    "schema_version holds {other:?}, not a version this service writes; was the table made by hand?"
                ),
            }),
        };
    }
    tx.batch_execute(SCHEMA).map_err(query_error)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )
    .map_err(query_error)?;
    tx.commit().map_err(query_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let url =
            DatabaseUrl::parse("postgres://app:s3cr%40t@db.example:5433/products").expect("valid");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db.example:5433/products"
        );
        assert_eq!(
            format!("{url:?}"),
            "DatabaseUrl(postgres://app:***@db.example:5433/products)"
        );
        assert_eq!(
            url.expose(),
            "postgres://app:s3cr%40t@db.example:5433/products"
        );
        // No password, or no user: printed as is.
        for plain in [
            "postgres://app@db/products",
            "postgresql://db:5432/products",
        ] {
            assert_eq!(DatabaseUrl::parse(plain).expect("valid").to_string(), plain);
        }
        // A password with '@' and ':' in it (unescaped): still all of it.
        let odd = DatabaseUrl("postgres://u:p:a@ss@h/db".to_owned());
        assert_eq!(odd.to_string(), "postgres://u:***@h/db");
        assert_eq!(
            mask_in("password p:a@ss rejected", odd.expose()),
            "password *** rejected"
        );
    }

    #[test]
    fn a_url_of_another_kind_is_refused_without_its_password() {
        let e = DatabaseUrl::parse("mysql://root:hunter2@db/x").expect_err("not postgres");
        let text = e.to_string();
        assert!(text.contains("postgres://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
