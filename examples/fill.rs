//! Load generator for `scripts/memory.sh`: posts one event (price and stock)
//! for each of COUNT distinct product ids `p0000000`, `p0000001`, ... to a
//! running service, from THREADS threads, each over its own keep-alive
//! connection. An event answered 503 `queue_full` is sent again; any other
//! answer than 202 stops the run with an error.
//!
//! The last id is posted alone, after every other event was answered, so
//! once `GET /products/<last id>` finds it, the workers have taken every
//! event off the queue.
//!
//! Run: `cargo run --release --example fill -- BASE_URL [COUNT] [THREADS]`,
//! e.g. `cargo run --release --example fill -- http://127.0.0.1:8080 1000000 8`.

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let count: usize = args.next().map_or(1_000_000, |a| a.parse().expect("COUNT"));
    let threads: usize = args.next().map_or(8, |a| a.parse().expect("THREADS"));
    assert!(count > 0 && threads > 0, "COUNT and THREADS must be > 0");
    let last = count - 1;

    let start = Instant::now();
    let results: Vec<Result<u64, String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|first| {
                let base = &base;
                s.spawn(move || post_ids(base, (first..last).step_by(threads)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut retried = 0;
    for result in results.into_iter().chain([post_ids(&base, last..count)]) {
        match result {
            Ok(n) => retried += n,
            Err(e) => {
                eprintln!("fill: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "fill: {count} events accepted (202) in {took:.1} s = {:.0} events/s, {threads} connections, {retried} resent after 503",
        count as f64 / took
    );
    ExitCode::SUCCESS
}

/// Posts one event per id over one keep-alive connection; returns how many
/// 503s were retried.
fn post_ids(base: &str, ids: impl Iterator<Item = usize>) -> Result<u64, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("{base}/events");
    let mut retried = 0;
    for i in ids {
        let body = format!(
            r#"{{"product_id":"p{i:07}","price":{}.99,"stock":{}}}"#,
            i % 1000,
            i % 10_000
        );
        loop {
            let mut response = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.as_str())
                .map_err(|e| format!("POST p{i:07}: {e}"))?;
            // Read the reply to the end so the connection is reused.
            let reply = response
                .body_mut()
                .read_to_string()
                .map_err(|e| format!("POST p{i:07}: reading the reply: {e}"))?;
            match response.status().as_u16() {
                202 => break,
                503 if reply.contains("queue_full") => {
                    // Queue full: back off briefly, as Retry-After asks.
                    retried += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                status => return Err(format!("POST p{i:07}: HTTP {status}: {reply}")),
            }
        }
    }
    Ok(retried)
}
