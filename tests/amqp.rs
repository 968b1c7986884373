//! The RabbitMQ front door (`AMQP_URL`): events published to the sharded
//! exchange reach the store with the same rules as `POST /events`, poison
//! messages are dead-lettered with their reason, events refused for now
//! come back through the delay queues, and a broker whose objects conflict
//! stops the start. One throwaway broker for the binary
//! (`common/rabbitmq.rs`); each test has its own exchange.
#![cfg(feature = "amqp")]

mod common;

use std::time::Duration;

use common::rabbitmq::{RabbitMq, exchange, header_text};
use common::{TestServer, test_config, wait_until};
use lapin::BasicProperties;
use lapin::types::ShortString;
use product_update_service::config::AmqpUrl;
use product_update_service::{Config, StartError};

fn amqp_config(exchange: &str) -> Config {
    Config {
        amqp_url: AmqpUrl::parse(&RabbitMq::get().url()),
        amqp_exchange: exchange.to_owned(),
        amqp_shards: 3,
        amqp_prefetch: 10,
        ..test_config()
    }
}

fn with_id(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(ShortString::from(id))
}

/// One shard, one worker and a queue of one: with the workers paused, the
/// third event is refused `queue_full` and goes to the delay queues.
fn nearly_full(exchange: &str, max_attempts: u32, retry_delay: Duration) -> Config {
    Config {
        queue_size: 1,
        workers: 1,
        amqp_shards: 1,
        amqp_max_attempts: max_attempts,
        amqp_retry_delay: retry_delay,
        ..amqp_config(exchange)
    }
}

/// Publishes events `range` for `products` products named `{prefix}-N`
/// (event n goes to product n mod products, with stock n), routed by id.
fn publish_stock(
    client: &common::rabbitmq::Client,
    exchange: &str,
    prefix: &str,
    products: u64,
    range: std::ops::Range<u64>,
) {
    for n in range {
        let product = format!("{prefix}-{}", n % products);
        let body = format!(r#"{{"product_id":"{product}","stock":{n}}}"#);
        client.publish(
            exchange,
            &product,
            body.as_bytes(),
            BasicProperties::default(),
        );
    }
}

/// A counter's value in `GET /metrics` (0 while it is not there).
fn metric(server: &TestServer, name: &str) -> u64 {
    let text = server.get("/metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Every shard queue of `exchange` is empty: every message was
/// acknowledged (once the consumers are gone, unacknowledged ones would be
/// ready again).
fn shards_empty(client: &common::rabbitmq::Client, exchange: &str, shards: usize) -> bool {
    (0..shards).all(|shard| client.ready(&format!("{exchange}.shard-{shard}")) == 0)
}

/// Events for 20 products, published in order, each product's stock
/// counting up: afterwards each product holds its newest stock, and every
/// message was acknowledged.
#[test]
fn published_events_reach_the_store_and_are_acknowledged() {
    let exchange = exchange("events");
    let server = TestServer::start(amqp_config(&exchange));
    wait_until("/readyz says all three consumers are connected", || {
        let ready = server.get("/readyz").json();
        (ready["amqp_consumers"] == 3 && ready["amqp_consumers_connected"] == 3).then_some(())
    });
    let client = RabbitMq::get().client();
    publish_stock(&client, &exchange, "p", 20, 0..200);
    for p in 0..20 {
        let path = format!("/products/p-{p}");
        let newest = 180 + p;
        wait_until(&format!("p-{p} has stock {newest}"), || {
            let reply = server.get(&path);
            (reply.status == 200 && reply.json()["stock"] == newest).then_some(())
        });
    }
    assert_eq!(metric(&server, "amqp_messages_consumed_total"), 200);
    assert_eq!(metric(&server, "amqp_consumers_connected"), 3);
    let report = server.shutdown();
    assert_eq!(report.accepted, 200, "{report}");
    assert_eq!(report.applied, 200, "{report}");
    assert!(
        shards_empty(&client, &exchange, 3),
        "a message was not acknowledged"
    );
}

/// Messages that can never succeed go to the dead-letter queue at once,
/// with the problem's code and detail in headers, and do not hold back
/// the next message of their shard.
#[test]
fn poison_messages_are_dead_lettered_with_their_reason() {
    let exchange = exchange("poison");
    let server = TestServer::start(amqp_config(&exchange));
    let client = RabbitMq::get().client();
    let poison: [(&[u8], &str, &str); 4] = [
        (b"not json", "malformed_json", "JSON"),
        (br#"{"product_id":"a","stok":1}"#, "unknown_field", "stok"),
        (
            br#"{"product_id":"a","price":-1}"#,
            "invalid_price",
            "price",
        ),
        (br#"{"product_id":"a"}"#, "no_update_fields", "price"),
    ];
    for (body, _, _) in poison {
        client.publish(&exchange, "a", body, BasicProperties::default());
    }
    client.publish(
        &exchange,
        "a",
        br#"{"product_id":"a","stock":5}"#,
        BasicProperties::default(),
    );
    wait_until("the valid event after the poison is applied", || {
        let reply = server.get("/products/a");
        (reply.status == 200 && reply.json()["stock"] == 5).then_some(())
    });
    let dead_queue = format!("{exchange}.dead");
    let mut dead = Vec::new();
    while dead.len() < poison.len() {
        let message = wait_until("a dead letter", || client.take(&dead_queue));
        dead.push(message);
    }
    for ((body, code, in_detail), (dead_body, headers)) in poison.iter().zip(&dead) {
        assert_eq!(
            &dead_body[..],
            *body,
            "the dead letter carries the message as sent"
        );
        assert_eq!(
            header_text(headers, "x-problem-code").as_deref(),
            Some(*code)
        );
        let detail = header_text(headers, "x-problem-detail").unwrap_or_default();
        assert!(detail.contains(in_detail), "{code}: {detail}");
        assert_eq!(
            header_text(headers, "x-original-routing-key").as_deref(),
            Some("a")
        );
    }
    let dead_metric = r#"amqp_messages_dead_lettered_total{reason="unknown_field"}"#;
    assert_eq!(metric(&server, dead_metric), 1);
    let report = server.shutdown();
    assert_eq!(report.accepted, 1, "{report}");
    assert!(shards_empty(&client, &exchange, 3));
}

/// A message's `message_id` is its event's `event_id` when the body has
/// none: a redelivered copy is a duplicate, applied once; the same id on
/// other content is dead-lettered as a conflict.
#[test]
fn a_message_id_makes_redeliveries_duplicates() {
    let exchange = exchange("ids");
    let server = TestServer::start(amqp_config(&exchange));
    let client = RabbitMq::get().client();
    let body = br#"{"product_id":"m","stock":1}"#;
    client.publish(&exchange, "m", body, with_id("order-1"));
    client.publish(&exchange, "m", body, with_id("order-1"));
    client.publish(
        &exchange,
        "m",
        br#"{"product_id":"m","stock":2}"#,
        with_id("order-1"),
    );
    let dead_queue = format!("{exchange}.dead");
    let (_, headers) = wait_until("the conflicting reuse is dead-lettered", || {
        client.take(&dead_queue)
    });
    assert_eq!(
        header_text(&headers, "x-problem-code").as_deref(),
        Some("idempotency_conflict")
    );
    server.wait_applied();
    assert_eq!(server.get("/products/m").json()["stock"], 1);
    let report = server.shutdown();
    assert_eq!(report.accepted, 1, "the copy is a duplicate: {report}");
    assert_eq!(report.applied, 1, "{report}");
}

/// An event refused for now (the queue is full) is not lost and not
/// requeued in front of its shard: it waits in a delay queue and is taken
/// again, until it fits.
#[test]
fn an_event_refused_for_now_comes_back_until_it_fits() {
    let exchange = exchange("retry");
    let server = TestServer::start(nearly_full(&exchange, 20, Duration::from_millis(50)));
    let client = RabbitMq::get().client();
    let paused = server.running.pause_workers();
    publish_stock(&client, &exchange, "r", 5, 0..5);
    // One event fills the queue (the worker may hold one more); the
    // others are refused `queue_full` and go round the delay queue.
    wait_until("an event refused for now went to a delay queue", || {
        (metric(&server, "amqp_messages_retried_total") > 0).then_some(())
    });
    drop(paused);
    for n in 0..5 {
        wait_until(&format!("r-{n} is applied"), || {
            (server.get(&format!("/products/r-{n}")).status == 200).then_some(())
        });
    }
    let report = server.shutdown();
    assert_eq!(report.applied, 5, "{report}");
    assert_eq!(
        client.ready(&format!("{exchange}.dead")),
        0,
        "nothing was dead-lettered"
    );
}

/// A queue of this service's name declared with other arguments (here a
/// classic queue where a quorum one belongs) stops the start, exit code 2,
/// naming the queue.
#[test]
fn a_conflicting_queue_stops_the_start() {
    let exchange = exchange("conflict");
    let client = RabbitMq::get().client();
    let queue = format!("{exchange}.shard-0");
    let options = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    futures_lite::future::block_on(client.channel.queue_declare(
        queue.as_str().into(),
        options,
        lapin::types::FieldTable::default(),
    ))
    .expect("declare the conflicting queue");
    let error = match product_update_service::start(amqp_config(&exchange)) {
        Err(error) => error,
        Ok(running) => {
            let _ = running.shutdown();
            panic!("started although {queue} conflicts");
        }
    };
    assert!(matches!(error, StartError::Broker(_)), "{error}");
    assert_eq!(error.exit_code(), 2);
    let message = error.to_string();
    assert!(message.contains(&queue), "{message}");
    assert!(message.contains("AMQP_EXCHANGE"), "{message}");
}

/// A broker that cannot be reached stops the start, exit code 1, with the
/// URL's password masked.
#[test]
fn an_unreachable_broker_stops_the_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = Config {
        amqp_url: AmqpUrl::parse(&format!("amqp://app:hunter2@127.0.0.1:{port}/%2f")),
        ..test_config()
    };
    let error = match product_update_service::start(config) {
        Err(error) => error,
        Ok(running) => {
            let _ = running.shutdown();
            panic!("started without a broker");
        }
    };
    assert_eq!(error.exit_code(), 1, "{error}");
    let message = error.to_string();
    assert!(message.contains("cannot reach RabbitMQ"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

/// SQLite mode: a message is acknowledged once its event is committed
/// (the committer sends the outcome back to the consumer, as it does to
/// an HTTP request waiting for its 202), and the events are there after a
/// restart.
#[cfg(feature = "sqlite")]
#[test]
fn in_sqlite_mode_acknowledged_events_are_committed() {
    let exchange = exchange("sqlite");
    let dir = common::scratch_dir("amqp-sqlite");
    let config = Config {
        data_dir: Some(dir.clone()),
        ..amqp_config(&exchange)
    };
    let server = TestServer::start(config);
    let client = RabbitMq::get().client();
    publish_stock(&client, &exchange, "s", 6, 0..60);
    wait_until("every message acknowledged", || {
        (metric(&server, "amqp_messages_acked_total") == 60).then_some(())
    });
    let report = server.shutdown();
    assert_eq!(report.committed, Some(60), "{report}");
    assert!(shards_empty(&client, &exchange, 3));
    let again = TestServer::start(Config {
        data_dir: Some(dir.clone()),
        ..test_config()
    });
    for p in 0..6 {
        assert_eq!(
            again.get(&format!("/products/s-{p}")).json()["stock"],
            54 + p
        );
    }
    again.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `product-update-service dead-letters <args>` against the test
/// broker and `exchange`; returns its exit code, stdout and stderr.
fn dead_letters(exchange: &str, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_product-update-service"))
        .arg("dead-letters")
        .args(args)
        .env_clear()
        .env("AMQP_URL", RabbitMq::get().url())
        .env("AMQP_EXCHANGE", exchange)
        .output()
        .expect("run the binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The dead-letter queue can be read without changing it, and its messages
/// of one reason replayed once the cause is fixed (here: a product limit
/// raised); the others stay.
#[test]
fn dead_letters_are_listed_and_replayed_after_a_fix() {
    let exchange = exchange("replay");
    let dead_queue = format!("{exchange}.dead");
    let limited = Config {
        max_products: 1,
        ..amqp_config(&exchange)
    };
    let server = TestServer::start(limited);
    let client = RabbitMq::get().client();
    client.publish(
        &exchange,
        "x1",
        br#"{"product_id":"x1","stock":1}"#,
        with_id("e-1"),
    );
    // The limit counts applied products: x2 must come after x1 is in.
    wait_until("x1 applied", || {
        (server.get("/products/x1").status == 200).then_some(())
    });
    client.publish(
        &exchange,
        "x2",
        br#"{"product_id":"x2","stock":2}"#,
        with_id("e-2"),
    );
    client.publish(&exchange, "x3", b"{oops", with_id("e-3"));
    wait_until("two dead letters", || {
        (client.ready(&dead_queue) == 2).then_some(())
    });
    server.shutdown();

    let (code, out, err) = dead_letters(&exchange, &["list"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    // Two shards dead-lettered them, in either order.
    let limit = listed
        .iter()
        .find(|d| d["code"] == "product_limit_reached")
        .unwrap_or_else(|| panic!("no product_limit_reached in {out}"));
    assert_eq!(limit["routing_key"], "x2");
    assert_eq!(limit["message_id"], "e-2");
    assert_eq!(limit["body"], r#"{"product_id":"x2","stock":2}"#);
    assert!(
        listed.iter().any(|d| d["code"] == "malformed_json"),
        "{out}"
    );
    assert_eq!(listed.len(), 2, "{out}");
    wait_until("the list left both in the queue", || {
        (client.ready(&dead_queue) == 2).then_some(())
    });

    // The fix: a higher limit. Replay only what it fixes.
    let fixed = TestServer::start(amqp_config(&exchange));
    let (code, _, err) = dead_letters(&exchange, &["replay", "--code", "product_limit_reached"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("replayed 1 dead letters"), "{err}");
    wait_until("x2 applied from the replay", || {
        let reply = fixed.get("/products/x2");
        (reply.status == 200 && reply.json()["stock"] == 2).then_some(())
    });
    wait_until("the malformed one stays", || {
        (client.ready(&dead_queue) == 1).then_some(())
    });
    fixed.shutdown();

    let (code, _, err) = dead_letters(&exchange, &["drop"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("usage"), "{err}");
}

/// SQLite commit mode: every committed event, from HTTP or the broker, is
/// published to the outbox exchange in seq order, with its seq as
/// `message_id`, once.
#[cfg(feature = "sqlite")]
#[test]
fn in_sqlite_mode_every_committed_event_is_published_in_seq_order() {
    let exchange = exchange("outbox");
    let updates = format!("{exchange}.updates");
    let dir = common::scratch_dir("amqp-outbox");
    let config = Config {
        data_dir: Some(dir.clone()),
        amqp_outbox_exchange: Some(updates.clone()),
        ..amqp_config(&exchange)
    };
    let server = TestServer::start(config);
    wait_until("the relay is connected", || {
        (metric(&server, "amqp_outbox_relay_connected") == 1).then_some(())
    });
    let client = RabbitMq::get().client();
    let downstream = format!("{exchange}.downstream");
    client.subscribe(&downstream, &updates);
    for n in 0..50 {
        let body = format!(r#"{{"product_id":"o-{}","stock":{n}}}"#, n % 5);
        assert_eq!(server.post_event(&body).status, 202);
    }
    publish_stock(&client, &exchange, "o", 5, 50..60);
    wait_until("60 events published and confirmed", || {
        let counts = ["published", "confirmed"]
            .map(|what| metric(&server, &format!("amqp_outbox_{what}_total")));
        (counts == [60, 60] && metric(&server, "amqp_outbox_lag_events") == 0).then_some(())
    });
    let published = client.drain_json(&downstream);
    let seqs: Vec<u64> = published.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=60).collect::<Vec<u64>>(),
        "every seq once, in order"
    );
    assert_eq!(published[0]["product_id"], "o-0");
    assert_eq!(published[0]["stock"], 0);
    assert_eq!(metric(&server, "amqp_outbox_lag_events"), 0);
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// An event refused for now waits in the delay queue of its attempt and
/// in no other (a headers exchange ignores `x-` headers when it matches:
/// with one, every delay queue got a copy).
#[test]
fn a_refused_event_waits_in_one_delay_queue() {
    let exchange = exchange("one-delay");
    // Long enough that the copies are still there when counted.
    let server = TestServer::start(nearly_full(&exchange, 4, Duration::from_secs(120)));
    let client = RabbitMq::get().client();
    let paused = server.running.pause_workers();
    publish_stock(&client, &exchange, "d", 5, 0..5);
    // Two fit (the queue, and the worker's hand); the rest are refused.
    wait_until("the refused events are sent to a delay queue", || {
        (metric(&server, "amqp_messages_retried_total") >= 3).then_some(())
    });
    let retried = metric(&server, "amqp_messages_retried_total");
    let waiting: Vec<u32> = (1..4)
        .map(|level| client.ready(&format!("{exchange}.retry-{level}")))
        .collect();
    assert_eq!(waiting, [retried as u32, 0, 0], "copies per delay queue");
    drop(paused);
    server.shutdown();
}

/// A producer's own `x-attempts` header, however large, is only a number:
/// the event is taken, and the shard's consumer goes on.
#[test]
fn a_huge_attempts_header_does_not_stop_the_consumer() {
    let exchange = exchange("attempts");
    let server = TestServer::start(amqp_config(&exchange));
    wait_until("every consumer connected", || {
        (metric(&server, "amqp_consumers_connected") == 3).then_some(())
    });
    let client = RabbitMq::get().client();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-attempts".into(),
        lapin::types::AMQPValue::LongUInt(u32::MAX),
    );
    let properties = BasicProperties::default().with_headers(headers);
    client.publish(
        &exchange,
        "h",
        br#"{"product_id":"h","stock":1}"#,
        properties,
    );
    publish_stock(&client, &exchange, "h", 1, 2..3);
    wait_until("both events applied", || {
        let reply = server.get("/products/h-0");
        (reply.status == 200 && server.get("/products/h").status == 200).then_some(())
    });
    assert_eq!(metric(&server, "amqp_consumers_connected"), 3);
    server.shutdown();
}
