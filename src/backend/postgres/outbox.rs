//! The journal as an outbox (RabbitMQ's relay, `amqp/relay.rs`) in
//! PostgreSQL mode: one relay among all the instances, the cursor in the
//! database.
//!
//! ```text
//!  every instance's relay ──pg_try_advisory_lock(RELAY_LOCK)──▶ one holds it: it reads the journal
//!                                                                 after outbox.through, publishes,
//!                                                                 and moves outbox.through
//!                          the others try again every second (standing by)
//! ```
//!
//! - **One relay at a time.** The lock is a session lock on the relay's
//!   own connection, the one that reads the journal and moves the cursor.
//!   While that connection lives the lock is held; when its instance dies
//!   (kill -9, a lost host) the server closes the session and the lock
//!   goes with it, and the next instance to try takes over from the cursor.
//!   The cursor is written on the connection that holds the lock, so a
//!   relay that lost the lock has lost the connection too, and cannot move
//!   the cursor under the new one.
//! - **Nothing skipped.** The cursor row is made when the first instance
//!   with a relay opens it, at the counter (events from then on are
//!   published), before that instance takes its first event. The
//!   housekeeping keeps every journal row after the cursor
//!   (`session.rs`), and commits are in seq order across instances, so the
//!   journal after the cursor has no holes; [`PgOutbox::after`] checks it
//!   all the same, and stops the relay with an error rather than skip.
//! - **Any error ends the session**, and with it the lock: the relay
//!   starts again from [`Outbox::lead`], on a new connection.

use postgres::Row;

use super::session::{CONNECT_TIMEOUT, PgSession, TAIL, batch_from};
use crate::backend::interface::{Outbox, OutboxError};
use crate::config::DatabaseUrl;
use crate::event::ProductUpdate;
use crate::store::Seq;

/// `pg_try_advisory_lock` key of the outbox relay: one instance at a time
/// ("PUSR").
const RELAY_LOCK: i64 = 0x5055_5352;

/// The cursor, made once, at the counter.
const START: &str = "INSERT INTO outbox (through, relayed_by)
SELECT last_seq, $1 FROM seq_counter
ON CONFLICT (only_row) DO NOTHING";

/// The relay's connection to the database, made again after an error.
pub struct PgOutbox {
    url: DatabaseUrl,
    /// This instance, in `outbox.relayed_by`.
    instance: String,
    session: Option<PgSession>,
    /// Whether `session` holds [`RELAY_LOCK`].
    leading: bool,
}

impl PgOutbox {
    /// Connects and makes the cursor if there is none yet (at startup,
    /// before the first event is taken).
    pub fn open(url: &DatabaseUrl, instance: &str) -> Result<PgOutbox, OutboxError> {
        let mut outbox = PgOutbox {
            url: url.clone(),
            instance: instance.to_owned(),
            session: None,
            leading: false,
        };
        let instance = outbox.instance.clone();
        outbox.run(|client| client.execute(START, &[&instance]).map(drop))?;
        Ok(outbox)
    }

    /// Runs `statement` on the session (connecting first if there is
    /// none); an error drops the session, and the lock with it.
    fn run<T>(
        &mut self,
        statement: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, OutboxError> {
        let session = match &mut self.session {
            Some(session) => session,
            None => {
                let session = PgSession::connect(&self.url, CONNECT_TIMEOUT, "outbox-relay")
                    .map_err(|e| OutboxError(e.to_string()))?;
                self.session.insert(session)
            }
        };
        match statement(session.client()) {
            Ok(value) => Ok(value),
            Err(e) => {
                let error = OutboxError(session.error(&e).to_string());
                self.session = None;
                self.leading = false;
                Err(error)
            }
        }
    }

    /// Drops the session (and the lock) after an inconsistency.
    fn give_up(&mut self, detail: String) -> OutboxError {
        self.session = None;
        self.leading = false;
        OutboxError(format!("{}: {detail}", self.url))
    }
}

impl Outbox for PgOutbox {
    fn lead(&mut self) -> Result<bool, OutboxError> {
        if !self.leading {
            self.leading = self.run(|client| {
                client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&RELAY_LOCK])
                    .map(|row| row.get(0))
            })?;
        }
        Ok(self.leading)
    }

    fn cursor(&mut self) -> Result<Seq, OutboxError> {
        let through: Option<i64> = self.run(|client| {
            client
                .query_opt("SELECT through FROM outbox", &[])
                .map(|row| row.map(|row| row.get(0)))
        })?;
        match through {
            Some(through) => Ok(through.max(0) as Seq),
            None => Err(self.give_up(
                "the table outbox has no row (was it deleted?): restart the instance to start the outbox again from the newest event".to_owned(),
            )),
        }
    }

    fn after(
        &mut self,
        cursor: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, ProductUpdate)>, OutboxError> {
        let bound = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.run(|client| client.query(TAIL, &[&(cursor as i64), &bound]))?;
        let last_seq = rows
            .first()
            .map_or(0, |row| row.get::<_, i64>(0).max(0) as Seq);
        let mut events = Vec::new();
        for row in &rows {
            if row.get::<_, Option<i64>>(1).is_none() {
                continue;
            }
            let batch = events_of(row).map_err(|detail| self.give_up(detail))?;
            events.extend(batch.into_iter().filter(|(seq, _)| *seq > cursor));
        }
        events.truncate(limit);
        // The journal after the cursor has no holes (the housekeeping keeps
        // it): anything else is a bug or a hand-made deletion, and
        // publishing past it would skip events for good.
        let expected = (cursor + 1..).take(events.len());
        let whole = events.iter().map(|(seq, _)| *seq).eq(expected);
        if !whole || (events.is_empty() && last_seq > cursor) {
            return Err(self.give_up(format!(
                "the journal no longer holds every event after the outbox's cursor (seq {cursor}): they were deleted before they were published; nothing more is published until this is looked into"
            )));
        }
        Ok(events)
    }

    fn head(&mut self) -> Result<Seq, OutboxError> {
        let last: i64 = self.run(|client| {
            client
                .query_one("SELECT last_seq FROM seq_counter", &[])
                .map(|row| row.get(0))
        })?;
        Ok(last.max(0) as Seq)
    }

    fn advance(&mut self, through: Seq) -> Result<(), OutboxError> {
        let instance = self.instance.clone();
        self.run(|client| {
            client.execute(
                "UPDATE outbox SET through = $1, relayed_at = now(), relayed_by = $2 WHERE through < $1",
                &[&(through as i64), &instance],
            )
        })?;
        Ok(())
    }
}

/// A journal row's events, with their event ids (column 7).
fn events_of(row: &Row) -> Result<Vec<(Seq, ProductUpdate)>, String> {
    let batch = batch_from(row, 1)?;
    let event_ids: Vec<Option<String>> = row.get(7);
    if event_ids.len() != batch.events.len() {
        return Err(format!(
            "journal row first_seq={}: its arrays differ in length",
            batch.first
        ));
    }
    Ok((batch.first..)
        .zip(batch.events.into_iter().zip(event_ids))
        .map(|(seq, ((mut update, _request_id), event_id))| {
            update.event_id = event_id.map(String::into_boxed_str);
            (seq, update)
        })
        .collect())
}
