//! One shard's consumer thread (`amqp-shard-N`): takes the shard queue's
//! messages and hands each to the core, as the HTTP handlers hand a
//! request's event, then settles the message by its [`Verdict`].
//!
//! ```text
//!  lapin's I/O thread ──delivery──▶ this thread ──accept()──▶ Service
//!                                      ▲   │ (durable modes: the committer sends the outcome back)
//!                                      └───┘ ack / delay queue / dead-letter queue
//! ```
//!
//! The thread owns its connection and its two channels: one consuming
//! (prefetch `AMQP_PREFETCH`, manual acknowledgement) and one publishing
//! copies to the delay and dead-letter queues with confirms. Up to
//! `AMQP_PREFETCH` messages are in hand at once: an event that waits for
//! its commit (or, in memory mode, for a worker) does not hold back the
//! next one. Acknowledgements are per message and in any order.
//!
//! When anything on the connection fails, the thread drops it (the broker
//! then gives the messages not yet acknowledged to the shard's next
//! consumer, or back to this one), waits, connects again, declares the
//! topology again and goes on: a broker restart needs nobody.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use futures_lite::future::block_on;
use lapin::Channel;
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;

use super::topology::{self, Link, Message, Topology};
use super::verdict::{self, Verdict};
use crate::event;
use crate::intake::{Outcome, ReplyTo};
use crate::metrics::BrokerMetrics;
use crate::request_id::RequestIds;
use crate::service::{Accept, Service};
use crate::store::Seq;

/// The first wait before connecting again; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How long one look at the watermark waits for the workers (memory mode).
const APPLIED_WAIT: Duration = Duration::from_millis(20);
/// How often the thread looks whether its connection and channel are
/// still open: lapin tells a consumer's delegate when the broker cancels
/// it, but not always when the connection closes (a broker restart).
const LINK_CHECK: Duration = Duration::from_millis(250);

/// What one consumer thread needs.
pub struct Shard {
    pub index: usize,
    /// `AMQP_URL`, password included: only for connecting.
    pub url: String,
    pub topology: Arc<Topology>,
    pub prefetch: u16,
    /// `MAX_BODY_BYTES`: a larger message is dead at once.
    pub max_body_bytes: usize,
    pub service: Arc<Service>,
    pub request_ids: Arc<RequestIds>,
    /// Disconnected when the front door stops.
    pub stop: Receiver<()>,
    /// When the front door stops, messages in hand get until then to settle.
    pub deadline: Arc<std::sync::OnceLock<Instant>>,
}

/// Connects, serves, and connects again after a failure, until stopped.
pub fn run(shard: Shard) {
    let mut wait = RECONNECT_FIRST;
    loop {
        // A panic (a bug) ends this connection, not the shard's consumer:
        // `Link` closes the connection as the panic unwinds, and the
        // thread connects again.
        let served = panic::catch_unwind(AssertUnwindSafe(|| serve(&shard, &mut wait)))
            .unwrap_or(Err(LinkError::Panicked));
        shard.service.metrics().broker.connected(shard.index, false);
        let Err(error) = served else {
            return;
        };
        log::warn!(
            "amqp: shard {} ({}): {error}; connecting again in {wait:?}",
            shard.index,
            shard.topology.shard_queue(shard.index)
        );
        if let Err(RecvTimeoutError::Disconnected) = shard.stop.recv_timeout(wait) {
            return;
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// One connection's life: returns `Ok` once stopped, or the error that
/// ended the connection.
fn serve(shard: &Shard, wait: &mut Duration) -> Result<(), LinkError> {
    let connection = Link::connect(&shard.url)?;
    let publisher = block_on(connection.create_channel())?;
    block_on(shard.topology.declare(&publisher))?;
    block_on(publisher.confirm_select(ConfirmSelectOptions::default()))?;
    let consuming = block_on(connection.create_channel())?;
    block_on(consuming.basic_qos(shard.prefetch, BasicQosOptions::default()))?;
    let queue = shard.topology.shard_queue(shard.index);
    let consumer = block_on(consuming.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))?;
    // A thread of its own reads the consumer's stream, in delivery order,
    // and passes each delivery on. (Not lapin's delegate: it runs each
    // delivery as a task of its own on the executor's threads, and two
    // tasks may pass each other: one shard's messages taken out of order.)
    let (delivery_tx, deliveries) = crossbeam_channel::unbounded::<DeliveryResult>();
    thread::Builder::new()
        .name(format!("amqp-shard-{}-in", shard.index))
        .spawn(move || forward(consumer, &delivery_tx))
        .map_err(|e| LinkError::Broker(e.into()))?;
    shard.service.metrics().broker.connected(shard.index, true);
    *wait = RECONNECT_FIRST;
    log::info!("amqp: shard {} consuming {queue}", shard.index);
    let mut hand = InHand::new(shard, &publisher);
    let open = || connection.is_open() && consuming.status().connected();
    // Whatever is not acknowledged goes back to the queue when the
    // connection closes, as `Link` does however this ends.
    hand.serve(&deliveries, &open)
}

/// Passes the consumer's deliveries on, in order, until the stream ends
/// (the connection closed, or the consumer was cancelled: `Ok(None)`) or
/// nobody listens any more.
fn forward(mut consumer: lapin::Consumer, delivery_tx: &Sender<DeliveryResult>) {
    loop {
        let next = block_on(futures_lite::StreamExt::next(&mut consumer));
        let end = !matches!(next, Some(Ok(_)));
        let delivery = match next {
            Some(Ok(delivery)) => Ok(Some(delivery)),
            Some(Err(error)) => Err(error),
            None => Ok(None),
        };
        if delivery_tx.send(delivery).is_err() || end {
            return;
        }
    }
}

/// The messages this connection holds and what settles them.
struct InHand<'a> {
    shard: &'a Shard,
    publisher: &'a Channel,
    /// Outcomes of events waiting for their commit come back here.
    reply_tx: Sender<(Delivery, Outcome)>,
    replies: Receiver<(Delivery, Outcome)>,
    /// Events waiting for their commit.
    committing: usize,
    /// Memory mode: events accepted, acknowledged once applied.
    applying: Vec<(Seq, Delivery)>,
}

impl<'a> InHand<'a> {
    fn new(shard: &'a Shard, publisher: &'a Channel) -> InHand<'a> {
        let (reply_tx, replies) = crossbeam_channel::unbounded();
        InHand {
            shard,
            publisher,
            reply_tx,
            replies,
            committing: 0,
            applying: Vec::new(),
        }
    }

    fn serve(
        &mut self,
        deliveries: &Receiver<DeliveryResult>,
        open: &dyn Fn() -> bool,
    ) -> Result<(), LinkError> {
        let link_check = crossbeam_channel::tick(LINK_CHECK);
        loop {
            // With events waiting for the workers, look at the watermark
            // again soon; otherwise sleep until something arrives.
            let tick = if self.applying.is_empty() {
                crossbeam_channel::never()
            } else {
                crossbeam_channel::after(APPLIED_WAIT)
            };
            select! {
                recv(self.shard.stop) -> _ => return self.settle_before_stopping(),
                recv(deliveries) -> delivery => {
                    self.take_delivery(delivery)?;
                    // Take what else has arrived before waiting for the
                    // workers once for all of them.
                    while let Ok(delivery) = deliveries.try_recv() {
                        self.take_delivery(Ok(delivery))?;
                    }
                },
                recv(self.replies) -> reply => {
                    if let Ok((delivery, outcome)) = reply {
                        self.committing -= 1;
                        let verdict = verdict::of_outcome(outcome, true);
                        self.settle(delivery, verdict)?;
                    }
                },
                recv(tick) -> _ => {},
                recv(link_check) -> _ => if !open() {
                    return Err(LinkError::Closed);
                },
            }
            self.ack_applied(Instant::now() + APPLIED_WAIT)?;
        }
    }

    /// A delivery, or the end of the consumer.
    fn take_delivery(
        &mut self,
        delivery: Result<DeliveryResult, crossbeam_channel::RecvError>,
    ) -> Result<(), LinkError> {
        match delivery {
            Ok(Ok(Some(delivery))) => self.take(delivery),
            Ok(Ok(None)) => Err(LinkError::Cancelled),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(LinkError::Closed),
        }
    }

    /// Hands one message to the core, or settles it at once.
    fn take(&mut self, delivery: Delivery) -> Result<(), LinkError> {
        self.shard.service.metrics().broker.consumed();
        let body = &delivery.data;
        if body.len() > self.shard.max_body_bytes {
            let verdict = verdict::too_large(body.len(), self.shard.max_body_bytes);
            return self.settle(delivery, verdict);
        }
        let mut update = match event::decode_event(body) {
            Ok(update) => update,
            Err(error) => return self.settle(delivery, verdict::invalid(&error)),
        };
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str());
        if let (None, Some(id)) = (&update.event_id, message_id) {
            if let Err(reason) = event::check_product_id(id) {
                return self.settle(delivery, verdict::invalid_message_id(&reason));
            }
            update.event_id = Some(id.into());
        }
        let request_id = self.shard.request_ids.for_request(message_id).to_owned();
        let service = &self.shard.service;
        match service.accept(update, request_id) {
            Accept::Done(outcome) => {
                let verdict = verdict::of_outcome(outcome, service.journals());
                self.settle(delivery, verdict)
            }
            Accept::Commit(commit) => {
                self.committing += 1;
                commit.post(ReplyTo::new(&self.reply_tx, delivery));
                Ok(())
            }
        }
    }

    fn settle(&mut self, delivery: Delivery, verdict: Verdict) -> Result<(), LinkError> {
        // A producer may set the header too: at its largest it is dead.
        let attempts = topology::attempts(&delivery.properties).saturating_add(1);
        let verdict = verdict::after_attempts(verdict, attempts, self.shard.topology.max_attempts);
        let message = Message {
            routing_key: delivery.routing_key.as_str(),
            properties: &delivery.properties,
            body: &delivery.data,
        };
        let topology = &self.shard.topology;
        let broker = &self.shard.service.metrics().broker;
        match verdict {
            Verdict::Ack => {}
            Verdict::AckOnceApplied(seq) => {
                self.applying.push((seq, delivery));
                return Ok(());
            }
            Verdict::Retry { code, detail } => {
                log::debug!("amqp: retrying a message ({code}: {detail}), attempt {attempts}");
                // The delay queue hands the copy back at least once (maybe
                // twice): a copy with no id of its own gets one, so that a
                // second copy is a duplicate, not a second event.
                let named;
                let message = match delivery.properties.message_id() {
                    Some(_) => message,
                    None => {
                        let id = format!("retry-{}", self.shard.request_ids.for_request(None));
                        named = delivery.properties.clone().with_message_id(id.into());
                        Message {
                            properties: &named,
                            ..message
                        }
                    }
                };
                block_on(topology.publish_retry(self.publisher, &message, attempts))?;
                broker.retried();
            }
            Verdict::Dead { code, detail } => {
                log::warn!(
                    "amqp: dead-lettered a message to {} ({code}: {detail})",
                    topology.dead_queue()
                );
                block_on(topology.publish_dead(self.publisher, &message, attempts, code, &detail))?;
                broker.dead(code);
            }
        }
        ack(&delivery, broker)
    }

    /// Memory mode: acknowledges the events the workers have applied,
    /// waiting for them until `deadline` at most.
    fn ack_applied(&mut self, deadline: Instant) -> Result<(), LinkError> {
        let Some(highest) = self.applying.iter().map(|(seq, _)| *seq).max() else {
            return Ok(());
        };
        let through = self.shard.service.wait_applied(highest, deadline);
        let (applied, waiting): (Vec<_>, Vec<_>) = self
            .applying
            .drain(..)
            .partition(|(seq, _)| *seq <= through);
        self.applying = waiting;
        let broker = &self.shard.service.metrics().broker;
        // Every message taken is settled now: one acknowledgement of the
        // last one covers them all (`multiple`), since the channel
        // delivers in tag order and the ones not taken yet come after it.
        let all_settled = self.applying.is_empty() && self.committing == 0;
        if let (true, Some((_, last))) = (
            all_settled,
            applied.iter().max_by_key(|(_, d)| d.delivery_tag),
        ) {
            let every = BasicAckOptions { multiple: true };
            if !block_on(last.acker.ack(every))? {
                return Err(LinkError::Closed);
            }
            broker.acked_many(applied.len() as u64);
            return Ok(());
        }
        for (_, delivery) in &applied {
            ack(delivery, broker)?;
        }
        Ok(())
    }

    /// Stopping: takes no new message (those delivered and not taken go
    /// back to the queue with the connection) and settles the ones in hand
    /// by the deadline.
    fn settle_before_stopping(&mut self) -> Result<(), LinkError> {
        let deadline = *self.shard.deadline.get_or_init(Instant::now);
        while self.committing > 0 {
            match self.replies.recv_deadline(deadline) {
                Ok((delivery, outcome)) => {
                    self.committing -= 1;
                    self.settle(delivery, verdict::of_outcome(outcome, true))?;
                }
                Err(_) => break,
            }
        }
        while !self.applying.is_empty() && Instant::now() < deadline {
            self.ack_applied(deadline)?;
        }
        Ok(())
    }
}

fn ack(delivery: &Delivery, broker: &BrokerMetrics) -> Result<(), LinkError> {
    // `false`: the channel is gone, and the broker will deliver the
    // message again.
    if !block_on(delivery.acker.ack(BasicAckOptions::default()))? {
        return Err(LinkError::Closed);
    }
    broker.acked();
    Ok(())
}

/// Why a consumer's connection ended.
#[derive(Debug)]
pub enum LinkError {
    /// The broker or the connection failed (lapin says how).
    Broker(lapin::Error),
    /// The broker cancelled the consumer (its queue was deleted, say).
    Cancelled,
    /// The connection or the consuming channel closed.
    Closed,
    /// The thread's code panicked (a bug; the log has the panic).
    Panicked,
}

impl From<lapin::Error> for LinkError {
    fn from(error: lapin::Error) -> LinkError {
        LinkError::Broker(error)
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Broker(e) => write!(f, "{e}"),
            LinkError::Cancelled => f.write_str("the broker cancelled the consumer"),
            LinkError::Closed => f.write_str("the connection to the broker closed"),
            LinkError::Panicked => {
                f.write_str("the consumer panicked (a bug: see the panic above)")
            }
        }
    }
}
