//! Memory comes back: after a burst of connections that each held a large
//! body, the binary's resident memory returns to within 32 MB of where it
//! was before the burst (what a burst costs at its peak is in the README:
//! about MAX_CONNECTIONS x (MAX_BODY_BYTES + a thread's stack and buffers)).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use common::binary::Binary;
use common::{DEADLINE, wait_until};

/// The process's resident set, in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// An event padded with spaces to `size` bytes (valid JSON).
fn padded_event(id: usize, size: usize) -> String {
    let event = format!(r#"{{"product_id":"p{id}","stock":1}}"#);
    format!("{event}{}", " ".repeat(size - event.len()))
}

/// Opens `count` connections that each send one event of `size` bytes and
/// read its 202, keeping every connection open until all have; returns the
/// resident memory then, and closes them all.
fn burst(binary: &Binary, count: usize, size: usize) -> u64 {
    let addr = binary.addr;
    let per_thread = count.div_ceil(8);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<TcpStream>>();
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let done_tx = done_tx.clone();
            thread::spawn(move || {
                let mut held = Vec::new();
                for i in t * per_thread..((t + 1) * per_thread).min(count) {
                    let body = padded_event(i, size);
                    let mut s = TcpStream::connect(addr).expect("connect");
                    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
                    let head = format!(
                        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    s.write_all(head.as_bytes()).expect("head");
                    s.write_all(body.as_bytes()).expect("body");
                    let mut answer = [0u8; 12];
                    s.read_exact(&mut answer).expect("answer");
                    assert_eq!(&answer, b"HTTP/1.1 202", "event {i}");
                    held.push(s);
                }
                done_tx.send(held).expect("hand the connections over");
            })
        })
        .collect();
    drop(done_tx);
    let held: Vec<Vec<TcpStream>> = done_rx.iter().collect();
    for sender in senders {
        sender.join().expect("sender");
    }
    let peak = rss(binary.child.id());
    drop(held);
    peak
}

fn open_connections(binary: &Binary) -> u64 {
    let metrics = ureq::get(format!("{}/metrics", binary.base()))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("body");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("http_connections_open ")?.parse().ok())
        .expect("http_connections_open")
}

fn memory_returns_after(env: &[(&str, &str)], count: usize, size: usize) {
    let mut binary = Binary::start(env);
    let pid = binary.child.id();
    // A few requests first, so that the first-use allocations are in the
    // baseline.
    burst(&binary, 16, size);
    let before = rss(pid);
    let peak = burst(&binary, count, size);
    wait_until("every connection of the burst to be closed", || {
        (open_connections(&binary) <= 1).then_some(())
    });
    let limit = before + 32 * 1024 * 1024;
    wait_until("the resident memory to come back", || {
        (rss(pid) <= limit).then_some(())
    });
    eprintln!(
        "{count} x {size} bytes: before {} MB, at the peak {} MB, after {} MB",
        before >> 20,
        peak >> 20,
        rss(pid) >> 20
    );
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
}

#[test]
fn memory_comes_back_after_900_connections_held_64_kib_bodies() {
    memory_returns_after(
        &[
            ("MAX_CONNECTIONS", "1000"),
            ("MAX_CONNECTIONS_PER_CLIENT", "1000"),
        ],
        900,
        64 * 1024,
    );
}

#[test]
fn memory_comes_back_after_connections_held_16_mib_bodies() {
    memory_returns_after(
        &[
            ("MAX_BODY_BYTES", "16777216"),
            ("MAX_CONNECTIONS_PER_CLIENT", "1000"),
        ],
        40,
        16 * 1024 * 1024,
    );
}
