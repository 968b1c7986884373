//! RabbitMQ with several instances of the real binary on one PostgreSQL
//! database (its own throwaway broker, and a throwaway PostgreSQL server
//! per test): the shards are shared out by single active consumer, every
//! instance ends with the same state, and an instance killed with SIGKILL
//! hands its shards to another without losing or doubling an event.
#![cfg(all(feature = "amqp", feature = "postgres"))]

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::binary::Binary;
use common::postgres::Postgres;
use common::rabbitmq::{RabbitMq, exchange};
use common::{agent, read_reply, wait_until_within};
use lapin::BasicProperties;
use lapin::types::ShortString;

const SHARDS: usize = 4;
/// Several instances' worth of work on a busy machine.
const WITHIN: Duration = Duration::from_secs(120);

fn instance(database: &Postgres, exchange: &str) -> Binary {
    let (db, broker) = (database.url(), RabbitMq::get().url());
    let shards = SHARDS.to_string();
    Binary::start(&[
        ("DATABASE_URL", db.as_str()),
        ("AMQP_URL", broker.as_str()),
        ("AMQP_EXCHANGE", exchange),
        ("AMQP_SHARDS", shards.as_str()),
        ("AMQP_PREFETCH", "10"),
    ])
}

/// What producers sent: the newest `version` of each product.
#[derive(Default)]
struct Sent {
    next_version: AtomicU64,
    newest: Mutex<HashMap<String, u64>>,
}

impl Sent {
    /// `count` events over `products` hot products, each a new `version`
    /// (drawn from one counter shared by every producer), its stock the
    /// version, a unique message id.
    fn produce(&self, exchange: &str, producer: usize, products: u64, count: u64) {
        let client = RabbitMq::get().client();
        for n in 0..count {
            let product = format!("hot-{}", (n + producer as u64) % products);
            let version = self.next_version.fetch_add(1, Ordering::SeqCst) + 1;
            let body =
                format!(r#"{{"product_id":"{product}","stock":{version},"version":{version}}}"#);
            let id = ShortString::from(format!("producer-{producer}-{n}"));
            let properties = BasicProperties::default().with_message_id(id);
            client.publish(exchange, &product, body.as_bytes(), properties);
            let mut newest = self.newest.lock().expect("not poisoned");
            let entry = newest.entry(product).or_default();
            *entry = (*entry).max(version);
        }
    }

    fn newest(&self) -> HashMap<String, u64> {
        self.newest.lock().expect("not poisoned").clone()
    }
}

/// Waits until `instance` serves every product at its newest stock.
fn wait_newest(instance: &Binary, newest: &HashMap<String, u64>) {
    let agent = agent();
    for (product, version) in newest {
        let url = format!("{}/products/{product}", instance.base());
        wait_until_within(
            WITHIN,
            &format!("{product} at version {version} on {}", instance.addr),
            || {
                let reply = read_reply(agent.get(&url).call());
                (reply.status == 200 && reply.json()["stock"] == *version).then_some(())
            },
        );
    }
}

/// Three instances, one database, one broker; three producers publish to
/// five hot products at once. Afterwards every instance serves every
/// product at its newest event, and each event was accepted once.
#[test]
fn three_instances_share_the_shards_and_end_the_same() {
    let database = Postgres::start();
    let exchange = exchange("three");
    let instances: Vec<Binary> = (0..3).map(|_| instance(&database, &exchange)).collect();
    let sent = Sent::default();
    thread::scope(|scope| {
        for producer in 0..3 {
            let (sent, exchange) = (&sent, &exchange);
            scope.spawn(move || sent.produce(exchange, producer, 5, 200));
        }
    });
    let newest = sent.newest();
    for instance in &instances {
        wait_newest(instance, &newest);
    }
    // Seqs are gap-free and a duplicate gets none: one per event.
    let committed = database.psql("SELECT last_seq FROM seq_counter");
    assert_eq!(committed, "600", "each event committed once");
    let consumed: u64 = instances
        .iter()
        .map(|i| i.metric("amqp_messages_consumed_total"))
        .sum();
    assert!(
        consumed >= 600,
        "every message was taken by some instance ({consumed})"
    );
}

/// The instance holding the shards is killed with SIGKILL in the middle
/// of a load: another takes the shards over and goes on; nothing is lost
/// and nothing is committed twice.
#[test]
fn a_killed_instances_shards_are_taken_over() {
    let database = Postgres::start();
    let exchange = exchange("takeover");
    // The first to subscribe is each shard's active consumer.
    let mut first = instance(&database, &exchange);
    let sent = Sent::default();
    sent.produce(&exchange, 0, 8, 100);
    wait_until_within(WITHIN, "the first instance takes messages", || {
        (first.metric("amqp_messages_consumed_total") > 0).then_some(())
    });
    let second = instance(&database, &exchange);
    thread::scope(|scope| {
        let producing = scope.spawn(|| sent.produce(&exchange, 1, 8, 300));
        wait_until_within(WITHIN, "the first instance has taken more", || {
            (first.metric("amqp_messages_consumed_total") > 150).then_some(())
        });
        first.signal("KILL");
        first.wait_exit();
        producing.join().expect("the producer");
    });
    wait_newest(&second, &sent.newest());
    assert!(
        second.metric("amqp_messages_consumed_total") > 0,
        "the second instance took the shards over"
    );
    let committed = database.psql("SELECT last_seq FROM seq_counter");
    assert_eq!(committed, "400", "each event committed once");
}
