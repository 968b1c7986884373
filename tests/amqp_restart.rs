//! The broker restarted in the middle of a load (its own throwaway broker,
//! so the other tests' consumers are not disturbed): no acknowledged
//! message is lost, nothing is applied twice, and the consumers come back
//! by themselves.
#![cfg(feature = "amqp")]

mod common;

use common::rabbitmq::{RabbitMq, exchange};
use common::{TestServer, test_config, wait_until, wait_until_within};
use lapin::BasicProperties;
use lapin::types::ShortString;
use product_update_service::Config;
use product_update_service::config::AmqpUrl;

const PRODUCTS: u64 = 10;
const EVENTS: u64 = 300;

fn publish(client: &common::rabbitmq::Client, exchange: &str, events: std::ops::Range<u64>) {
    for n in events {
        let product = format!("b-{}", n % PRODUCTS);
        // `version` orders a product's events whatever the broker does.
        let body = format!(r#"{{"product_id":"{product}","stock":{n},"version":{n}}}"#);
        let id = ShortString::from(format!("event-{n}"));
        let properties = BasicProperties::default().with_message_id(id);
        client.publish(exchange, &product, body.as_bytes(), properties);
    }
}

fn connected(server: &TestServer) -> serde_json::Value {
    server.get("/readyz").json()["amqp_consumers_connected"].clone()
}

#[test]
fn a_broker_restart_loses_nothing_and_the_consumers_come_back() {
    let broker = RabbitMq::get();
    let exchange = exchange("restart");
    let config = Config {
        amqp_url: AmqpUrl::parse(&broker.url()),
        amqp_exchange: exchange.clone(),
        amqp_shards: 3,
        amqp_prefetch: 10,
        ..test_config()
    };
    let server = TestServer::start(config);
    publish(&broker.client(), &exchange, 0..EVENTS / 2);

    // The broker goes away (every connection closed) and comes back.
    let stopped = broker.ctl(&["stop_app"]);
    assert!(stopped.status.success(), "{stopped:?}");
    wait_until("/readyz sees the consumers disconnected", || {
        (connected(&server) == 0).then_some(())
    });
    let started = broker.ctl(&["start_app"]);
    assert!(started.status.success(), "{started:?}");
    wait_until_within(
        std::time::Duration::from_secs(60),
        "the consumers reconnect",
        || (connected(&server) == 3).then_some(()),
    );
    publish(&broker.client(), &exchange, EVENTS / 2..EVENTS);

    for p in 0..PRODUCTS {
        let newest = EVENTS - PRODUCTS + p;
        wait_until(&format!("b-{p} has its newest stock {newest}"), || {
            let reply = server.get(&format!("/products/b-{p}"));
            (reply.status == 200 && reply.json()["stock"] == newest).then_some(())
        });
    }
    let client = broker.client();
    wait_until("every message acknowledged", || {
        (0..3)
            .all(|shard| client.ready(&format!("{exchange}.shard-{shard}")) == 0)
            .then_some(())
    });
    let report = server.shutdown();
    // A message whose acknowledgement the restart lost came again: its
    // message_id made it a duplicate.
    assert_eq!(report.accepted, EVENTS, "{report}");
    assert_eq!(report.applied, EVENTS, "{report}");
}
