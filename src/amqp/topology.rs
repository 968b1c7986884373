//! The broker's side: the names of the exchanges and queues, their
//! declaration, and the two ways a message leaves a shard other than an
//! acknowledgement (a delay queue, the dead-letter queue).
//!
//! ```text
//!                       x-consistent-hash, by routing key (the product_id)
//! producers ──▶ product-events ──┬──▶ product-events.shard-0 ──▶ one active consumer (of all instances)
//!                     ▲          ├──▶ product-events.shard-1 ──▶ ...
//!                     │          └──▶ product-events.shard-N-1
//!                     │ TTL expired: dead-lettered back with its routing key, so to the same shard
//!   product-events.retry-1 (AMQP_RETRY_DELAY), retry-2 (twice that), ...
//!                     ▲ headers exchange product-events.retry, by retry-level
//!                     └── a consumer, for an event refused for now (queue full, storage down)
//!
//!   product-events.dead ◀── a consumer, for an event that can never succeed, with its reason
//! ```
//!
//! Every queue is a quorum queue (replicated, and durable on one node
//! too); each shard has a single active consumer, so one consumer at a
//! time, across every instance, takes a shard's messages in order.
//! Declaring is idempotent; an existing object declared with other
//! arguments is an error that stops the start (`PRECONDITION_FAILED`).

use std::time::Duration;

use futures_lite::future::block_on;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// The header a delay queue's binding matches (the retry level, as text).
/// Not `x-`: a headers exchange ignores `x-` headers when it matches
/// (every delay queue would get every copy).
const RETRY_LEVEL: &str = "retry-level";
/// How many times the service tried the message (an integer).
pub const ATTEMPTS: &str = "x-attempts";
/// A dead letter's reason: the problem's `code` and `detail`.
pub const PROBLEM_CODE: &str = "x-problem-code";
pub const PROBLEM_DETAIL: &str = "x-problem-detail";
/// Where a dead letter was published first, for a replay.
pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";

/// The longest delay a retry waits, however many attempts.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The topology's names and shape, from the settings.
#[derive(Debug, Clone)]
pub struct Topology {
    /// `AMQP_EXCHANGE`: the exchange producers publish to; every other
    /// name starts with it.
    pub exchange: String,
    /// `AMQP_SHARDS`.
    pub shards: usize,
    /// `AMQP_MAX_ATTEMPTS`: tries of an event refused for now.
    pub max_attempts: u32,
    /// `AMQP_RETRY_DELAY`: the wait before the first retry; each next one
    /// waits twice as long.
    pub retry_delay: Duration,
}

impl Topology {
    pub fn shard_queue(&self, shard: usize) -> String {
        format!("{}.shard-{shard}", self.exchange)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.exchange)
    }

    fn retry_exchange(&self) -> String {
        format!("{}.retry", self.exchange)
    }

    fn retry_queue(&self, level: u32) -> String {
        format!("{}.retry-{level}", self.exchange)
    }

    /// How long a message waits after its `level`-th failed attempt.
    pub fn delay(&self, level: u32) -> Duration {
        let factor = 1u32 << level.saturating_sub(1).min(20);
        self.retry_delay.saturating_mul(factor).min(MAX_DELAY)
    }

    /// Declares every exchange, queue and binding (idempotent).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let kind = ExchangeKind::Custom("x-consistent-hash".into());
        channel
            .exchange_declare(name(&self.exchange), kind, durable, FieldTable::default())
            .await?;
        for shard in 0..self.shards {
            let queue = self.shard_queue(shard);
            let mut arguments = quorum();
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            declare_queue(channel, &queue, arguments).await?;
            // The consistent-hash exchange reads a binding's key as the
            // queue's weight: every shard the same.
            let weight = "1".into();
            let bind = QueueBindOptions::default();
            channel
                .queue_bind(
                    name(&queue),
                    name(&self.exchange),
                    weight,
                    bind,
                    FieldTable::default(),
                )
                .await?;
        }
        declare_queue(channel, &self.dead_queue(), quorum()).await?;
        let retry = self.retry_exchange();
        channel
            .exchange_declare(
                name(&retry),
                ExchangeKind::Headers,
                durable,
                FieldTable::default(),
            )
            .await?;
        for level in 1..self.max_attempts {
            let queue = self.retry_queue(level);
            let mut arguments = quorum();
            let ttl = self.delay(level).as_millis().min(u32::MAX as u128) as u32;
            arguments.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl));
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.exchange.as_str().into()),
            );
            // Quorum queues dead-letter at least once only when asked, and
            // only if a full queue refuses new messages.
            arguments.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            arguments.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
            declare_queue(channel, &queue, arguments).await?;
            let mut matching = FieldTable::default();
            matching.insert("x-match".into(), AMQPValue::LongString("all".into()));
            matching.insert(RETRY_LEVEL.into(), level_value(level));
            channel
                .queue_bind(
                    name(&queue),
                    name(&retry),
                    "".into(),
                    QueueBindOptions::default(),
                    matching,
                )
                .await?;
        }
        Ok(())
    }

    /// Publishes a copy of the message to the delay queue of its
    /// `attempts`-th failure, with its routing key (so it comes back to the
    /// same shard), and waits for the broker's confirm.
    pub async fn publish_retry(
        &self,
        channel: &Channel,
        message: &Message<'_>,
        attempts: u32,
    ) -> lapin::Result<()> {
        let mut headers = message.headers();
        headers.insert(ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
        headers.insert(RETRY_LEVEL.into(), level_value(attempts));
        let exchange = self.retry_exchange();
        publish_confirmed(channel, &exchange, message.routing_key, message, headers).await
    }

    /// Publishes a copy of the message to the dead-letter queue with its
    /// reason, and waits for the broker's confirm.
    pub async fn publish_dead(
        &self,
        channel: &Channel,
        message: &Message<'_>,
        attempts: u32,
        code: &str,
        detail: &str,
    ) -> lapin::Result<()> {
        let mut headers = message.headers();
        headers.insert(ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
        headers.insert(PROBLEM_CODE.into(), long(code));
        headers.insert(PROBLEM_DETAIL.into(), long(detail));
        headers.insert(ORIGINAL_EXCHANGE.into(), long(&self.exchange));
        headers.insert(ORIGINAL_ROUTING_KEY.into(), long(message.routing_key));
        let dead = self.dead_queue();
        publish_confirmed(channel, "", &dead, message, headers).await
    }
}

impl Topology {
    /// Publishes a dead letter back to the exchange with `routing_key`,
    /// without the headers this service added, and waits for the confirm.
    pub async fn publish_replay(
        &self,
        channel: &Channel,
        message: &Message<'_>,
    ) -> lapin::Result<()> {
        let ours = [
            ATTEMPTS,
            RETRY_LEVEL,
            PROBLEM_CODE,
            PROBLEM_DETAIL,
            ORIGINAL_EXCHANGE,
            ORIGINAL_ROUTING_KEY,
        ];
        let headers = message.headers_without(&ours);
        publish_confirmed(
            channel,
            &self.exchange,
            message.routing_key,
            message,
            headers,
        )
        .await
    }
}

/// A connection that is closed when dropped. lapin leaves a dropped
/// connection open, and with it its consumers, which keep their place as
/// a shard's single active consumer: so every way out of a thread's
/// connection (an error, a panic, a stop) must close it.
pub struct Link(Connection);

impl Link {
    pub fn connect(url: &str) -> lapin::Result<Link> {
        block_on(Connection::connect(url, ConnectionProperties::default())).map(Link)
    }

    pub fn is_open(&self) -> bool {
        self.0.status().connected()
    }
}

impl std::ops::Deref for Link {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // One that is not open has nothing to close (and closing it would
        // wait for a broker that is not there).
        if self.is_open() {
            let _ = block_on(self.0.close(200, "closing".into()));
        }
    }
}

/// The parts of a delivery that a copy of it carries.
pub struct Message<'a> {
    pub routing_key: &'a str,
    pub properties: &'a BasicProperties,
    pub body: &'a [u8],
}

impl Message<'_> {
    /// Its headers, less the delay queues' routing header.
    fn headers(&self) -> FieldTable {
        self.headers_without(&[RETRY_LEVEL])
    }

    /// Its headers, less `names`.
    fn headers_without(&self, names: &[&str]) -> FieldTable {
        let mut headers = FieldTable::default();
        if let Some(theirs) = self.properties.headers() {
            for (key, value) in theirs.inner() {
                if !names.contains(&key.as_str()) {
                    headers.insert(key.clone(), value.clone());
                }
            }
        }
        headers
    }
}

/// The number of attempts a delivery's headers record (0: none yet).
pub fn attempts(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(ATTEMPTS));
    let number = match value {
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        _ => 0,
    };
    number.clamp(0, i64::from(u32::MAX)) as u32
}

async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: &Message<'_>,
    headers: FieldTable,
) -> lapin::Result<()> {
    let confirm = channel
        .basic_publish(
            name(exchange),
            name(routing_key),
            // A copy no queue takes comes back: an error, not a loss.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            message.body,
            copy_properties(message.properties, headers),
        )
        .await?
        .await?;
    if !confirm.is_ack() {
        let refused = "the broker refused (nacked) the copy of a message";
        return Err(std::io::Error::other(refused).into());
    }
    if confirm.take_message().is_some() {
        let unroutable = "no queue took the copy of a message (was a delay queue deleted?)";
        return Err(std::io::Error::other(unroutable).into());
    }
    Ok(())
}

/// A copy's properties: what identifies and describes the message, with
/// `headers`, persistent. Not the producer's `expiration` (a dead letter
/// must not expire) nor its `user_id` (the broker refuses one that is not
/// this connection's user).
fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut copy = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(id) = original.message_id() {
        copy = copy.with_message_id(id.clone());
    }
    if let Some(kind) = original.content_type() {
        copy = copy.with_content_type(kind.clone());
    }
    if let Some(id) = original.correlation_id() {
        copy = copy.with_correlation_id(id.clone());
    }
    if let Some(at) = original.timestamp() {
        copy = copy.with_timestamp(*at);
    }
    copy
}

async fn declare_queue(channel: &Channel, queue: &str, arguments: FieldTable) -> lapin::Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name(queue), options, arguments)
        .await?;
    Ok(())
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

fn level_value(level: u32) -> AMQPValue {
    AMQPValue::LongString(level.to_string().into())
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

/// A name as the protocol's short string, at most 255 bytes. Every name
/// of the topology fits (`AMQP_EXCHANGE` is at most 200 bytes), and a
/// routing key from a delivery was one already; a product id may be
/// longer (128 characters of up to 4 bytes): the outbox routes it by its
/// first 255 bytes, cut at a character boundary.
pub fn name(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&text[..end]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology {
            exchange: "product-events".to_owned(),
            shards: 4,
            max_attempts: 5,
            retry_delay: Duration::from_millis(500),
        }
    }

    #[test]
    fn names_start_with_the_exchange() {
        let t = topology();
        assert_eq!(t.shard_queue(3), "product-events.shard-3");
        assert_eq!(t.dead_queue(), "product-events.dead");
        assert_eq!(t.retry_queue(2), "product-events.retry-2");
    }

    #[test]
    fn each_retry_waits_twice_as_long_up_to_an_hour() {
        let t = topology();
        assert_eq!(t.delay(1), Duration::from_millis(500));
        assert_eq!(t.delay(2), Duration::from_secs(1));
        assert_eq!(t.delay(4), Duration::from_secs(4));
        assert_eq!(t.delay(40), MAX_DELAY);
    }

    #[test]
    fn attempts_read_any_integer_header_and_default_to_zero() {
        assert_eq!(attempts(&BasicProperties::default()), 0);
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(3));
        assert_eq!(
            attempts(&BasicProperties::default().with_headers(headers)),
            3
        );
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPTS.into(), AMQPValue::LongInt(-2));
        assert_eq!(
            attempts(&BasicProperties::default().with_headers(headers)),
            0
        );
    }
}
