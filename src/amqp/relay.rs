//! The outbox relay thread (`amqp-relay`): product changes out. It
//! publishes every journaled event, in seq order, to the exchange
//! `AMQP_OUTBOX_EXCHANGE` (type topic, routing key the `product_id`), for
//! downstream consumers (search, caches, analytics).
//!
//! ```text
//!  journal (the outbox) ──after(cursor)──▶ this thread ──publish, confirms──▶ product-updates
//!        ▲                                     │
//!        └──────────── advance(cursor) ◀───────┘ once the broker has confirmed the batch
//! ```
//!
//! The journal is the outbox: an event is in it once committed, so there
//! is no second write to keep in step with the first. The relay reads a
//! batch after its cursor, publishes it with publisher confirms, and only
//! when the broker has confirmed every message moves the cursor (in the
//! database) past it; the backend keeps the journal after the cursor. One
//! batch is in flight while the next is read and published. A crash, of
//! the process or of the broker, republishes at most the two batches that
//! were not confirmed: downstream sees every seq at least once, in seq
//! order, and a repeated one has the same `message_id` (its seq).
//!
//! With several instances on one PostgreSQL database, every instance runs
//! this thread but only one relays at a time ([`Outbox::lead`]): the
//! others stand by, asking every [`STANDBY_POLL`], and the first to ask
//! after the relaying instance stops takes over from the cursor.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use futures_lite::future::{self, block_on};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde::Serialize;

use super::topology::{self, Link};
use crate::backend::{Outbox, OutboxError};
use crate::event::ProductUpdate;
use crate::service::Service;
use crate::store::Seq;

/// Events one batch publishes. Two batches are unconfirmed at most (one
/// waiting for its confirms, the next being published), so a crash
/// republishes at most twice this.
const BATCH: usize = 1000;
/// With nothing new, how long the relay waits before it looks again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How often an instance that does not relay asks to take over.
const STANDBY_POLL: Duration = Duration::from_secs(1);
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// What the relay thread needs.
pub struct Relay {
    /// `AMQP_URL`, password included: only for connecting.
    pub url: String,
    /// `AMQP_OUTBOX_EXCHANGE`.
    pub exchange: String,
    pub outbox: Box<dyn Outbox>,
    pub service: Arc<Service>,
    /// Disconnected when the front door stops.
    pub stop: Receiver<()>,
}

/// One event as downstream consumers get it.
#[derive(Serialize)]
struct Published<'a> {
    seq: Seq,
    product_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<&'a serde_json::Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stock: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
}

/// Why a relay's connection, or its read of the outbox, ended.
#[derive(Debug)]
enum RelayError {
    Broker(lapin::Error),
    Outbox(OutboxError),
    /// The broker refused (nacked) a message.
    Refused(Seq),
}

impl From<lapin::Error> for RelayError {
    fn from(e: lapin::Error) -> RelayError {
        RelayError::Broker(e)
    }
}

impl From<OutboxError> for RelayError {
    fn from(e: OutboxError) -> RelayError {
        RelayError::Outbox(e)
    }
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Broker(e) => write!(f, "{e}"),
            RelayError::Outbox(e) => write!(f, "{e}"),
            RelayError::Refused(seq) => {
                write!(f, "the broker refused (nacked) the event of seq {seq}")
            }
        }
    }
}

/// Publishes until stopped, connecting again after a failure.
pub fn run(mut relay: Relay) {
    let mut wait = RECONNECT_FIRST;
    let mut standing_by = false;
    loop {
        let error = match relay.outbox.lead() {
            Ok(false) => {
                if !standing_by {
                    log::info!(
                        "amqp: outbox relay: another instance relays; this one takes over if it stops"
                    );
                    standing_by = true;
                }
                if let (Ok(head), Ok(cursor)) = (relay.outbox.head(), relay.outbox.cursor()) {
                    relay
                        .service
                        .metrics()
                        .broker
                        .relay_lag(head.saturating_sub(cursor));
                }
                match relay.stop.recv_timeout(STANDBY_POLL) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            }
            Ok(true) => {
                standing_by = false;
                match relay.serve(&mut wait) {
                    Ok(()) => return,
                    Err(error) => error,
                }
            }
            Err(error) => RelayError::Outbox(error),
        };
        let broker = &relay.service.metrics().broker;
        broker.relaying(false);
        // The lag grows while the broker is away: say so.
        if let (Ok(head), Ok(cursor)) = (relay.outbox.head(), relay.outbox.cursor()) {
            broker.relay_lag(head.saturating_sub(cursor));
        }
        log::warn!("amqp: outbox relay: {error}; trying again in {wait:?}");
        if let Err(RecvTimeoutError::Disconnected) = relay.stop.recv_timeout(wait) {
            return;
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

impl Relay {
    /// One connection's life: `Ok` once stopped.
    fn serve(&mut self, wait: &mut Duration) -> Result<(), RelayError> {
        let connection = Link::connect(&self.url)?;
        let channel = block_on(connection.create_channel())?;
        block_on(declare(&channel, &self.exchange))?;
        let exchange = topology::name(&self.exchange);
        block_on(channel.confirm_select(ConfirmSelectOptions::default()))?;
        let mut cursor = self.outbox.cursor()?;
        *wait = RECONNECT_FIRST;
        let service = Arc::clone(&self.service);
        let broker = &service.metrics().broker;
        broker.relaying(true);
        log::info!(
            "amqp: outbox relay publishing to {} from seq {}",
            self.exchange,
            cursor + 1
        );
        // One batch in flight: the next one is read and published while
        // the broker confirms it. Published is not confirmed: the cursor
        // moves only with the confirms, and a batch in flight when the
        // relay stops is published again next time.
        let mut published = cursor;
        let mut in_flight: Option<InFlight> = None;
        let result = loop {
            if let Err(crossbeam_channel::TryRecvError::Disconnected) = self.stop.try_recv() {
                // What is published is confirmed before the relay stops.
                if let Some(batch) = in_flight.take() {
                    self.settle(batch)?;
                }
                break Ok(());
            }
            let head = self.outbox.head()?;
            broker.relay_lag(head.saturating_sub(cursor));
            let events = self.outbox.after(published, BATCH)?;
            let Some(&(last, _)) = events.last() else {
                if let Some(batch) = in_flight.take() {
                    cursor = self.settle(batch)?;
                    continue;
                }
                match self.stop.recv_timeout(IDLE_WAIT) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => break Ok(()),
                }
            };
            let batch = publish_batch(&channel, &exchange, &events)?;
            broker.published(batch.count);
            published = last;
            if let Some(previous) = in_flight.replace(batch) {
                cursor = self.settle(previous)?;
            }
        };
        broker.relaying(false);
        result
    }

    /// Waits for a batch's confirms, then moves the cursor past it.
    fn settle(&mut self, batch: InFlight) -> Result<Seq, RelayError> {
        for (seq, confirm) in batch.confirms {
            if !block_on(confirm)?.is_ack() {
                return Err(RelayError::Refused(seq));
            }
        }
        self.outbox.advance(batch.last)?;
        self.service.metrics().broker.confirmed(batch.count);
        Ok(batch.last)
    }
}

/// A published batch whose confirms have not all come.
struct InFlight {
    last: Seq,
    count: u64,
    confirms: Vec<(Seq, lapin::PublisherConfirm)>,
}

/// Declares the outbox exchange (a durable topic exchange; idempotent).
pub async fn declare(channel: &lapin::Channel, exchange: &str) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            topology::name(exchange),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
}

/// Publishes a batch; the broker's confirms are to be waited for.
///
/// lapin's `basic_publish` queues a message's frames at its first poll and
/// then waits for the connection's writer to send them. Awaited one by
/// one, every message would wait for that thread; so each is polled once,
/// in seq order (which queues the frames in that order), and only then
/// are they awaited: the writer sends the batch in a few writes.
fn publish_batch(
    channel: &lapin::Channel,
    exchange: &ShortString,
    events: &[(Seq, ProductUpdate)],
) -> Result<InFlight, RelayError> {
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .map(|(seq, update)| body(*seq, update))
        .collect();
    let mut publishes: Vec<_> = events
        .iter()
        .zip(&bodies)
        .map(|((seq, update), body)| {
            Box::pin(channel.basic_publish(
                exchange.clone(),
                topology::name(&update.product_id),
                BasicPublishOptions::default(),
                body,
                properties(*seq),
            ))
        })
        .collect();
    let confirms = block_on(async {
        let mut first_polls = Vec::with_capacity(publishes.len());
        for publish in &mut publishes {
            first_polls.push(future::poll_once(publish.as_mut()).await);
        }
        let mut confirms = Vec::with_capacity(publishes.len());
        for (((seq, _), publish), polled) in events.iter().zip(&mut publishes).zip(first_polls) {
            let confirm = match polled {
                Some(sent) => sent?,
                None => publish.await?,
            };
            confirms.push((*seq, confirm));
        }
        Ok::<_, RelayError>(confirms)
    })?;
    Ok(InFlight {
        last: events.last().map_or(0, |(seq, _)| *seq),
        count: events.len() as u64,
        confirms,
    })
}

/// The message's body: the event with its seq.
fn body(seq: Seq, update: &ProductUpdate) -> Vec<u8> {
    let published = Published {
        seq,
        product_id: &update.product_id,
        price: update.price.as_ref(),
        stock: update.stock,
        version: update.version,
        event_id: update.event_id.as_deref(),
    };
    serde_json::to_vec(&published).unwrap_or_default()
}

/// Persistent, JSON, `message_id` the seq, and a `seq` header.
fn properties(seq: Seq) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("seq".into(), AMQPValue::LongLongInt(seq as i64));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(seq.to_string().into())
        .with_headers(headers)
}
