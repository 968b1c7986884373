//! The limit for bulk intake (`scripts/bench_bulk.sh`): NDJSON events like
//! `bench/bulk.lua`'s, split into lines and each parsed and checked by the
//! service's own rules (`event::decode_event`, serde_json underneath) in a
//! tight loop on one core, with nothing else: no HTTP, no queue, no store.
//!
//! ```text
//! cargo run --release --example ndjson_parse -- [SECONDS] [BATCH]
//! ```
//!
//! Prints the events per second.

use std::time::{Duration, Instant};

use product_update_service::event::decode_event;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let batch: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    // The same shape as bench/bulk.lua's lines, from a small fixed generator.
    let mut state: u64 = 1;
    let mut next = |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (state >> 33) % below
    };
    let body: String = (0..batch)
        .map(|_| {
            format!(
                "{{\"product_id\":\"p{:05}\",\"price\":{}.{:02},\"stock\":{}}}\n",
                next(10_000),
                next(1000),
                next(100),
                next(100_001)
            )
        })
        .collect();
    let bytes = body.as_bytes();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut events = 0u64;
    while Instant::now() < deadline {
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match decode_event(line) {
                Ok(update) => {
                    std::hint::black_box(update);
                    events += 1;
                }
                Err(e) => panic!("a generated line is invalid: {e}"),
            }
        }
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0} events/s parsed and checked on one core ({batch}-line bodies)");
}
