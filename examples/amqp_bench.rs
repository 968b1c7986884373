//! RabbitMQ figures (`scripts/bench_amqp.sh` runs it against a throwaway
//! broker): events per second the service takes from the shard queues at
//! a prefetch, against a consumer that does nothing but acknowledge, on
//! the same topology and the same pre-filled queues.
//!
//! ```text
//! cargo run --release --features amqp --example amqp_bench -- AMQP_URL SERVICE_BINARY [EVENTS] [PREFETCH...]
//! ```
//!
//! For each prefetch: declare a fresh topology (`AMQP_SHARDS`=4), fill it
//! with EVENTS events over 1000 products, and time a do-nothing consumer
//! (one thread per shard, acknowledging each message) draining it; fill
//! another, start the service binary on it (memory mode), and time its
//! consumers from the first message taken to the last acknowledged (read
//! from `/metrics`). Prints one line per prefetch.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use product_update_service::amqp::topology::Topology;

const SHARDS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(binary)) = (args.first(), args.get(1)) else {
        eprintln!("usage: amqp_bench AMQP_URL SERVICE_BINARY [EVENTS] [PREFETCH...]");
        std::process::exit(2);
    };
    let events: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let prefetches: Vec<u16> = match args.get(3..) {
        Some(rest) if !rest.is_empty() => rest.iter().filter_map(|p| p.parse().ok()).collect(),
        _ => vec![1, 10],
    };
    println!("prefetch | do-nothing consumer ev/s | service ev/s | ratio");
    for prefetch in prefetches {
        let noop = run_noop(url, events, prefetch);
        let service = run_service(url, binary, events, prefetch);
        println!(
            "{prefetch} | {noop:.0} | {service:.0} | {:.2}",
            service / noop
        );
    }
}

fn topology(name: &str) -> Topology {
    Topology {
        exchange: name.to_owned(),
        shards: SHARDS,
        max_attempts: 5,
        retry_delay: Duration::from_secs(1),
    }
}

/// Declares `name`'s topology and publishes `events` to it, with confirms.
fn fill(url: &str, name: &str, events: u64) {
    let connection =
        block_on(Connection::connect(url, ConnectionProperties::default())).expect("connect");
    let channel = block_on(connection.create_channel()).expect("channel");
    block_on(topology(name).declare(&channel)).expect("declare");
    block_on(channel.confirm_select(ConfirmSelectOptions::default())).expect("confirms");
    for n in 0..events {
        let product = format!("bench-{}", n % 1000);
        let body = format!(r#"{{"product_id":"{product}","stock":{n}}}"#);
        // Its confirm is awaited with the others, below.
        let confirm = block_on(channel.basic_publish(
            name.into(),
            product.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        ))
        .expect("publish");
        drop(confirm);
        if n % 1000 == 999 {
            block_on(channel.wait_for_confirms()).expect("confirms");
        }
    }
    block_on(channel.wait_for_confirms()).expect("confirms");
    let _ = block_on(connection.close(200, "filled".into()));
}

/// A consumer per shard that acknowledges each message and does nothing
/// else; events per second until every message is acknowledged.
fn run_noop(url: &str, events: u64, prefetch: u16) -> f64 {
    let name = format!("bench-noop-{prefetch}-{}", std::process::id());
    fill(url, &name, events);
    let topology = topology(&name);
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for shard in 0..SHARDS {
            let (acked, queue) = (Arc::clone(&acked), topology.shard_queue(shard));
            scope.spawn(move || {
                let connection =
                    block_on(Connection::connect(url, ConnectionProperties::default()))
                        .expect("connect");
                let channel = block_on(connection.create_channel()).expect("channel");
                block_on(channel.basic_qos(prefetch, BasicQosOptions::default())).expect("qos");
                let consumer = block_on(channel.basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ))
                .expect("consume");
                // As the service's consumers take deliveries: lapin's
                // thread passes them on, this thread acknowledges.
                let (tx, rx) = crossbeam_channel::unbounded();
                consumer.set_delegate(move |delivery: lapin::message::DeliveryResult| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(delivery);
                    }
                });
                while acked.load(Ordering::SeqCst) < events {
                    if let Ok(Ok(Some(delivery))) = rx.recv_timeout(Duration::from_millis(50)) {
                        block_on(delivery.acker.ack(BasicAckOptions::default())).expect("ack");
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _ = block_on(connection.close(200, "done".into()));
            });
        }
    });
    events as f64 / started.elapsed().as_secs_f64()
}

/// The service binary on a filled topology; events per second from its
/// first message taken to its last acknowledged.
fn run_service(url: &str, binary: &str, events: u64, prefetch: u16) -> f64 {
    let name = format!("bench-service-{prefetch}-{}", std::process::id());
    fill(url, &name, events);
    let mut child = Service::start(binary, url, &name, prefetch);
    let metrics = format!("http://{}/metrics", child.addr);
    let counter = |name: &str| -> u64 {
        let body = ureq::get(&metrics)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    let (mut first, mut at_first) = (None, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let acked = counter("amqp_messages_acked_total");
        if first.is_none() && acked > 0 {
            first = Some(Instant::now());
            at_first = acked;
        }
        if acked >= events || Instant::now() > deadline {
            let took = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
            child.stop();
            return (acked - at_first) as f64 / took.max(1e-9);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Service {
    child: Child,
    addr: String,
}

impl Service {
    // The child moves into the `Service`, whose `stop` waits for it.
    #[allow(clippy::zombie_processes)]
    fn start(binary: &str, url: &str, exchange: &str, prefetch: u16) -> Service {
        let log = std::env::temp_dir().join(format!("amqp-bench-{exchange}.log"));
        let mut child = Command::new(binary)
            .env("PORT", "0")
            .env("AMQP_URL", url)
            .env("AMQP_EXCHANGE", exchange)
            .env("AMQP_SHARDS", SHARDS.to_string())
            .env("AMQP_PREFETCH", prefetch.to_string())
            .env("RUST_LOG", "warn,product_update_service=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the service");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                return Service {
                    child,
                    addr: addr.to_owned(),
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the service did not start: {text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
