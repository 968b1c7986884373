//! The compactor thread: folds the journal into the `products` table, so
//! that the journal can be pruned and a starting instance has little of
//! it to read.
//!
//! ```text
//!  journal rows after `compaction.through` ──fold (the store's rule)──▶ UPSERT products (guarded), through = last seq
//! ```
//!
//! Commits write only the journal (`database.rs`): the products table is
//! not on the path of a `POST`, and every instance's reads come from its
//! own memory store anyway. Each instance runs a compactor; they take
//! turns on an advisory lock (`pg_try_advisory_lock`), so whoever holds it
//! does the round and the others skip it: no leader to elect, and an
//! instance that dies (the lock goes with its connection) leaves the work
//! to the others' next round. A round folds the rows after `through` in
//! seq order, upserts each product once, with the same per-field guards
//! as ever, a slice of products per statement, and then moves `through`:
//! products may get ahead of `through`, never behind it
//! (`PgSession::compact` says why that is enough).
//!
//! Failures only delay it (the journal is kept until it is compacted):
//! they are logged, the connection is made again, and `/readyz` does not
//! depend on it.

use std::sync::Arc;
use std::time::Duration;

use super::session::{CONNECT_TIMEOUT, Compacted, PgSession};
use crate::backend::health::RETRY_INTERVAL;
use crate::backend::stop::StopSignal;
use crate::config::DatabaseUrl;
use crate::metrics::Metrics;

/// How often a compaction round runs: what the products table lags behind
/// the journal, at most (a round that finds more than `ROUND_ROWS` rows
/// goes on at once).
pub const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// The most journal rows one round folds.
const ROUND_ROWS: usize = 2000;

/// The most products one statement of a round upserts (each is its own
/// transaction: see `PgSession::compact`).
const SLICE_PRODUCTS: usize = 256;

/// The compactor's settings and stop signal, shared with the backend's
/// handle.
pub struct Compactor {
    pub url: DatabaseUrl,
    pub metrics: Arc<Metrics>,
    pub stop: StopSignal,
}

/// The compactor thread's body. A panic inside (a bug) is caught and
/// logged: the products table then lags until a restart (another
/// instance's compactor, if any, carries on).
pub fn run(compactor: &Compactor) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rounds(compactor)));
    if outcome.is_err() {
        log::error!(
            "storage: the compactor thread panicked (a bug; see the panic above); the products table is no longer compacted by this instance"
        );
    }
}

fn rounds(compactor: &Compactor) {
    let mut db: Option<PgSession> = None;
    // The last failure's message, so that a lasting one is logged once.
    let mut failing: Option<String> = None;
    while !compactor.stop.is_stopped() {
        let connection = match db.as_mut() {
            Some(connection) => connection,
            None => match PgSession::connect(&compactor.url, CONNECT_TIMEOUT, "compactor")
                .and_then(|mut c| c.for_compaction().map(|()| c))
            {
                Ok(connection) => db.insert(connection),
                Err(e) => {
                    report(&mut failing, e.to_string());
                    if compactor.stop.pause(RETRY_INTERVAL) {
                        return;
                    }
                    continue;
                }
            },
        };
        let more = match connection.compact(ROUND_ROWS, SLICE_PRODUCTS) {
            Ok(Compacted {
                rows,
                events,
                products,
            }) => {
                if failing.take().is_some() {
                    log::info!("storage: compacting the journal works again");
                }
                if events > 0 {
                    log::debug!("storage: compacted {events} events into {products} products");
                }
                compactor
                    .metrics
                    .storage
                    .record_products_written(products as u64);
                rows == ROUND_ROWS
            }
            Err(e) => {
                // Made again next round, whatever the error: compaction is
                // never in a hurry.
                report(&mut failing, e.to_string());
                db = None;
                false
            }
        };
        if !more && compactor.stop.pause(COMPACT_EVERY) {
            return;
        }
    }
}

fn report(failing: &mut Option<String>, e: String) {
    if failing.as_ref() != Some(&e) {
        log::warn!(
            "storage: compacting the journal into products failed (retried every {RETRY_INTERVAL:?}; the journal is kept meanwhile): {e}"
        );
    }
    *failing = Some(e);
}
