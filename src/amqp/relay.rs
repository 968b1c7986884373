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
//! database) past it; the backend keeps the journal after the cursor. A
//! crash, of the process or of the broker, republishes at most the batch
//! that was not confirmed: downstream sees every seq at least once, in
//! seq order, and a repeated one has the same `message_id` (its seq).
//!
//! With several instances on one PostgreSQL database, every instance runs
//! this thread but only one relays at a time ([`Outbox::lead`]): the
//! others stand by, asking every [`STANDBY_POLL`], and the first to ask
//! after the relaying instance stops takes over from the cursor.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use futures_lite::future::block_on;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde::Serialize;

use super::topology::{self, Link};
use crate::backend::{Outbox, OutboxError};
use crate::event::ProductUpdate;
use crate::service::Service;
use crate::store::Seq;

/// Events one batch publishes before it waits for the confirms.
const BATCH: usize = 2000;
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
        let broker = &self.service.metrics().broker;
        broker.relaying(true);
        log::info!(
            "amqp: outbox relay publishing to {} from seq {}",
            self.exchange,
            cursor + 1
        );
        let result = loop {
            if let Err(crossbeam_channel::TryRecvError::Disconnected) = self.stop.try_recv() {
                break Ok(());
            }
            let head = self.outbox.head()?;
            broker.relay_lag(head.saturating_sub(cursor));
            let events = self.outbox.after(cursor, BATCH)?;
            let Some(&(last, _)) = events.last() else {
                match self.stop.recv_timeout(IDLE_WAIT) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => break Ok(()),
                }
            };
            publish_batch(&channel, &exchange, &events)?;
            self.outbox.advance(last)?;
            broker.relayed(events.len() as u64);
            cursor = last;
        };
        broker.relaying(false);
        result
    }
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

/// Publishes a batch and waits for the broker to confirm every message.
fn publish_batch(
    channel: &lapin::Channel,
    exchange: &ShortString,
    events: &[(Seq, ProductUpdate)],
) -> Result<(), RelayError> {
    let mut confirms = Vec::with_capacity(events.len());
    for (seq, update) in events {
        let routing_key = topology::name(&update.product_id);
        let body = body(*seq, update);
        let publish = channel.basic_publish(
            exchange.clone(),
            routing_key,
            BasicPublishOptions::default(),
            &body,
            properties(*seq),
        );
        confirms.push((*seq, block_on(publish)?));
    }
    for (seq, confirm) in confirms {
        if !block_on(confirm)?.is_ack() {
            return Err(RelayError::Refused(seq));
        }
    }
    Ok(())
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
