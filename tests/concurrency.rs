//! Concurrency: many clients, several workers, a few hot products. After the
//! queue drains, each product must equal a sequential replay of the
//! acknowledged events in `seq` order, and no reader may ever see a field
//! go back to an older value.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{TestServer, agent, post_event, test_config};
use serde_json::Value;

/// A small deterministic PRNG (xorshift64*), so failures can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One event a client got 202 for.
#[derive(Debug, Clone)]
struct Acked {
    seq: u64,
    product: String,
    price: Option<f64>,
    stock: Option<u64>,
}

/// The state a sequential replay in seq order gives.
fn replay(acked: &mut [Acked]) -> HashMap<String, (Option<f64>, Option<u64>)> {
    acked.sort_by_key(|a| a.seq);
    let mut state: HashMap<String, (Option<f64>, Option<u64>)> = HashMap::new();
    for a in acked.iter() {
        let entry = state.entry(a.product.clone()).or_default();
        if a.price.is_some() {
            entry.0 = a.price;
        }
        if a.stock.is_some() {
            entry.1 = a.stock;
        }
    }
    state
}

/// Source of event values, unique across the whole test binary, so a value
/// read back names exactly one event.
static NEXT_VALUE: AtomicU64 = AtomicU64::new(1);

/// Runs `clients` threads each posting `per_client` random events over
/// `products` hot products; every value is unique so it names its event.
/// Returns the acknowledged events.
fn hammer(server: &TestServer, clients: u64, per_client: u64, products: u64) -> Vec<Acked> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    thread::scope(|scope| {
        for client in 0..clients {
            let acked = Arc::clone(&acked);
            let base = server.base.clone();
            scope.spawn(move || {
                let agent = agent();
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (client + 1));
                for _ in 0..per_client {
                    let product = format!("hot-{}", rng.below(products));
                    let value = NEXT_VALUE.fetch_add(1, Ordering::Relaxed);
                    // A third price-only, a third stock-only, a third both.
                    let (price, stock) = match rng.below(3) {
                        0 => (Some(value as f64 + 0.25), None),
                        1 => (None, Some(value)),
                        _ => (Some(value as f64 + 0.25), Some(value)),
                    };
                    let mut body = serde_json::json!({ "product_id": product });
                    if let Some(p) = price {
                        body["price"] = p.into();
                    }
                    if let Some(s) = stock {
                        body["stock"] = s.into();
                    }
                    let reply = post_event(&agent, &base, &body.to_string());
                    assert_eq!(reply.status, 202, "{}", reply.body);
                    let seq = reply.json()["seq"].as_u64().expect("seq in 202");
                    acked.lock().unwrap().push(Acked {
                        seq,
                        product,
                        price,
                        stock,
                    });
                }
            });
        }
    });
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

fn assert_matches_replay(server: &TestServer, acked: &mut [Acked]) {
    let expected = replay(acked);
    for (product, (price, stock)) in &expected {
        let reply = server.get(&format!("/products/{product}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.json();
        assert_eq!(body["price"].as_f64(), *price, "{product}: {body}");
        assert_eq!(body["stock"].as_u64(), *stock, "{product}: {body}");
    }
}

fn check_final_state_equals_sequential_replay(workers: usize) {
    let mut config = test_config();
    config.workers = workers;
    config.queue_size = 10_000;
    let server = TestServer::start(config);

    // Hold the workers while the clients fill the queue, then let all of
    // them loose on it at once: events for the same product are then taken
    // by different workers concurrently and applied out of order, which is
    // what the per-field guards must make harmless.
    let paused = server.running.pause_workers();
    let mut acked = hammer(&server, 8, 250, 4);
    // Each paused worker holds at most the one event it took before pausing.
    common::wait_until("each paused worker to hold one event", || {
        (server.stats().queue_depth + workers == 2000).then_some(())
    });
    drop(paused);
    let stats = server.wait_applied();
    assert_eq!(stats.accepted, 2000);

    // Sequence numbers: unique, and exactly 1..=accepted.
    let mut seqs: Vec<u64> = acked.iter().map(|a| a.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=2000).collect::<Vec<u64>>());

    assert_matches_replay(&server, &mut acked);
    let report = server.shutdown();
    assert_eq!(
        (report.accepted, report.applied, report.not_applied),
        (2000, 2000, 0)
    );
}

#[test]
fn final_state_equals_sequential_replay_with_five_workers() {
    check_final_state_equals_sequential_replay(5);
}

#[test]
fn final_state_equals_sequential_replay_with_one_worker() {
    check_final_state_equals_sequential_replay(1);
}

#[test]
fn reads_never_go_backwards() {
    let mut config = test_config();
    config.workers = 5;
    let server = TestServer::start(config);
    // Seed the product so the reader has something to read from the start.
    assert_eq!(
        server
            .post_event(r#"{"product_id":"hot-0","price":0.25,"stock":0}"#)
            .status,
        202
    );
    server.wait_applied();

    let stop = AtomicBool::new(false);
    let observed: Mutex<Vec<(Option<f64>, Option<u64>)>> = Mutex::new(Vec::new());
    let mut acked = thread::scope(|scope| {
        let _stop = common::StopOnDrop(&stop);
        let reader = scope.spawn(|| {
            let agent = agent();
            let url = server.url("/products/hot-0");
            while !stop.load(Ordering::Relaxed) {
                let mut response = agent.get(&url).call().expect("GET");
                let body: Value =
                    serde_json::from_str(&response.body_mut().read_to_string().expect("body"))
                        .expect("JSON");
                observed
                    .lock()
                    .unwrap()
                    .push((body["price"].as_f64(), body["stock"].as_u64()));
            }
        });
        // Rounds of "fill the queue while paused, then release five workers
        // at once", so reordering happens while the reader is reading.
        let mut acked = Vec::new();
        for _ in 0..10 {
            let paused = server.running.pause_workers();
            acked.extend(hammer(&server, 4, 50, 1));
            drop(paused);
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader thread");
        acked
    });
    server.wait_applied();

    // Every value is unique, so it names the event (and seq) that set it.
    let seed = Acked {
        seq: 1,
        product: "hot-0".into(),
        price: Some(0.25),
        stock: Some(0),
    };
    acked.push(seed);
    let price_seq: HashMap<u64, u64> = acked
        .iter()
        .filter_map(|a| a.price.map(|p| (p.to_bits(), a.seq)))
        .collect();
    let stock_seq: HashMap<u64, u64> = acked
        .iter()
        .filter_map(|a| a.stock.map(|s| (s, a.seq)))
        .collect();
    let observed = observed.into_inner().unwrap();
    assert!(
        observed.len() > 10,
        "the reader made only {} reads",
        observed.len()
    );
    let (mut last_price_seq, mut last_stock_seq) = (0, 0);
    for (i, (price, stock)) in observed.iter().enumerate() {
        let p = price_seq[&price.expect("price set").to_bits()];
        let s = stock_seq[&stock.expect("stock set")];
        assert!(
            p >= last_price_seq,
            "read {i}: price went back from seq {last_price_seq} to {p}"
        );
        assert!(
            s >= last_stock_seq,
            "read {i}: stock went back from seq {last_stock_seq} to {s}"
        );
        (last_price_seq, last_stock_seq) = (p, s);
    }
    assert_matches_replay(&server, &mut acked);
    let report = server.shutdown();
    assert_eq!(report.not_applied, 0);
}

#[test]
fn many_products_from_many_clients_are_all_stored() {
    let mut config = test_config();
    config.workers = 3;
    let server = TestServer::start(config);
    let mut acked = hammer(&server, 4, 250, 500);
    let stats = server.wait_applied();
    let distinct: std::collections::HashSet<&str> =
        acked.iter().map(|a| a.product.as_str()).collect();
    assert_eq!(stats.products, distinct.len());
    assert_matches_replay(&server, &mut acked);
    assert_eq!(server.shutdown().not_applied, 0);
}
