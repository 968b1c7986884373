//! Store and worker-pool microbenchmark: can the queue and the store keep
//! up with HTTP intake?
//!
//! Measures, with the library's own types and no HTTP:
//!
//! 1. `Store::apply` on one thread: 1M events spread over 10k products.
//! 2. The worker pool, built as `start` builds it (4 workers sharing the
//!    queue's receiver and one store), draining a queue that was filled
//!    before the workers started: once at the default `QUEUE_SIZE`
//!    (the default `QUEUE_SIZE`, "how long does a full queue take to
//!    drain") and once with 1M events (the sustained rate).
//!
//! Targets: workers apply >= 1M events/s, and a full default
//! queue drains in well under a second.
//!
//! Run: `cargo run --release --example store_bench`

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use product_update_service::Config;
use product_update_service::event::{self, ProductUpdate};
use product_update_service::intake::Intake;
use product_update_service::store::Store;
use product_update_service::worker::{self, Control, Worker, WorkerCounters};

const PRODUCTS: usize = 10_000;
const EVENTS: usize = 1_000_000;

/// Event `i`: product `i % PRODUCTS`, a price and a stock, decoded from
/// JSON by the same function `POST /events` uses.
fn event(i: usize) -> ProductUpdate {
    let body = format!(
        r#"{{"product_id":"p{:05}","price":{}.{:02},"stock":{}}}"#,
        i % PRODUCTS,
        i % 1_000,
        i % 100,
        i % 10_000
    );
    event::decode_event(body.as_bytes()).expect("a valid event")
}

fn rate(events: usize, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64()
}

/// (a) One thread applying events straight to the store.
fn single_thread_apply() {
    let events: Vec<ProductUpdate> = (0..EVENTS).map(event).collect();
    let store = Store::new();
    let start = Instant::now();
    for (i, update) in events.iter().enumerate() {
        store.apply(i as u64 + 1, update);
    }
    let took = start.elapsed();
    assert_eq!(store.len(), PRODUCTS);
    println!(
        "store apply, 1 thread:  {EVENTS} events over {PRODUCTS} products in {:.1} ms = {:.2} M events/s",
        took.as_secs_f64() * 1e3,
        rate(EVENTS, took) / 1e6
    );
}

/// (b) `workers` threads draining a queue pre-filled with `events` events.
/// Returns the time from starting the workers until the last one exits.
fn drain(workers: usize, events: usize) -> Duration {
    let store = Store::new();
    let (intake, jobs) = Intake::new(events);
    for i in 0..events {
        intake
            .accept(event(i), "bench".into())
            .expect("the queue has room for every event");
    }
    // Closed before the workers start: they exit once the queue is empty.
    intake.close();

    let control = Arc::new(Control::default());
    let counters = Arc::new(WorkerCounters::default());
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let start = Instant::now();
    let pool: Vec<Worker> = (0..workers)
        .map(|id| {
            let apply = worker::apply_to(store.clone(), Arc::default(), Arc::default());
            Worker::spawn(
                id,
                jobs.clone(),
                done_tx.clone(),
                Arc::clone(&control),
                Arc::clone(&counters),
                apply,
            )
            .expect("spawn a worker")
        })
        .collect();
    drop((done_tx, jobs));
    // Never sent on: it disconnects when the last worker drops its sender.
    let _ = done_rx.recv();
    let took = start.elapsed();

    for worker in pool {
        worker.join().expect("worker thread panicked");
    }
    let applied = counters.applied.load(Ordering::Relaxed);
    assert_eq!(applied, events as u64, "every queued event is applied");
    took
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Config {
        workers,
        queue_size,
        ..
    } = Config::default();
    println!("store_bench: {cores} cores, {workers} workers, QUEUE_SIZE={queue_size}");

    single_thread_apply();

    let took = drain(workers, queue_size);
    println!(
        "worker pool, {workers} workers: full default queue ({queue_size} events) drained in {:.2} ms = {:.2} M events/s",
        took.as_secs_f64() * 1e3,
        rate(queue_size, took) / 1e6
    );

    let took = drain(workers, EVENTS);
    println!(
        "worker pool, {workers} workers: {EVENTS} queued events drained in {:.1} ms = {:.2} M events/s",
        took.as_secs_f64() * 1e3,
        rate(EVENTS, took) / 1e6
    );
}
