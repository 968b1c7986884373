//! Slow-client tolerance, for `scripts/slow_clients.sh`.
//!
//! Against a running service it holds SILENT connections that say nothing,
//! HEADS connections sending a request head one byte every GAP_MS, and
//! BODIES connections sending a large body one byte every GAP_MS. While
//! they are held it measures REQUESTS ordinary requests (alternately
//! `POST /events` and `GET /products/{id}`) over one more keep-alive
//! connection, then tries one new connection. Then it waits (at most
//! WAIT_S seconds) for the service to cut the slow clients off, and reports
//! what each kind got and when.
//!
//! Run: `cargo run --release --example slow_clients -- ADDR SILENT HEADS
//! BODIES [REQUESTS] [GAP_MS] [WAIT_S]`, e.g.
//! `... -- 127.0.0.1:8080 990 5 3 2000 100 40`.
//!
//! One thread drives every slow client with non-blocking sockets, polled
//! every GAP_MS: a write of one byte, then a read of whatever arrived.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Silent,
    Head,
    Body,
}

struct Slow {
    kind: Kind,
    stream: TcpStream,
    answer: Vec<u8>,
    /// When the service closed the connection, from the start.
    closed_after: Option<Duration>,
}

const HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
const BODY: &[u8] = b"POST /events HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{";

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str, default: Option<T>) -> T {
    match args.get(i) {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        None => default.unwrap_or_else(|| panic!("missing {name}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let silent: usize = arg(&args, 1, "SILENT", Some(0));
    let heads: usize = arg(&args, 2, "HEADS", Some(0));
    let bodies: usize = arg(&args, 3, "BODIES", Some(0));
    let requests: usize = arg(&args, 4, "REQUESTS", Some(2000));
    let gap = Duration::from_millis(arg(&args, 5, "GAP_MS", Some(100)));
    let wait = Duration::from_secs(arg(&args, 6, "WAIT_S", Some(40)));

    let start = Instant::now();
    let mut slow = Vec::new();
    for (kind, count, head) in [
        (Kind::Silent, silent, &b""[..]),
        (Kind::Head, heads, HEAD),
        (Kind::Body, bodies, BODY),
    ] {
        for _ in 0..count {
            let mut stream = match TcpStream::connect(&addr) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("slow_clients: connect: {e}");
                    return ExitCode::from(2);
                }
            };
            if stream.write_all(head).is_err() {
                eprintln!("slow_clients: could not send a head");
                return ExitCode::from(2);
            }
            let _ = stream.set_nonblocking(true);
            slow.push(Slow {
                kind,
                stream,
                answer: Vec::new(),
                closed_after: None,
            });
        }
    }
    println!(
        "held: {silent} silent, {heads} trickling a head, {bodies} trickling a body (a byte every {gap:?}); open per /metrics: {}",
        open_connections(&addr).map_or("?".into(), |n| n.to_string())
    );

    let driver = thread::spawn(move || drive(slow, gap, start, wait));

    let measured = measure(&addr, requests);
    let extra = one_more_connection(&addr);
    let still_held = open_connections(&addr);
    println!("{measured}");
    println!("one more connection: {extra}");
    println!(
        "open per /metrics after the measurement: {}",
        still_held.map_or("?".into(), |n| n.to_string())
    );

    let slow = match driver.join() {
        Ok(slow) => slow,
        Err(_) => return ExitCode::from(2),
    };
    for kind in [Kind::Silent, Kind::Head, Kind::Body] {
        report(&slow, kind, wait);
    }
    println!(
        "a new connection once they are gone: {}",
        one_more_connection(&addr)
    );
    ExitCode::SUCCESS
}

/// Keeps the slow clients slow until the service has closed all of them or
/// `wait` has passed; returns them with what they got.
fn drive(mut slow: Vec<Slow>, gap: Duration, start: Instant, wait: Duration) -> Vec<Slow> {
    let mut buf = [0u8; 4096];
    while start.elapsed() < wait && slow.iter().any(|s| s.closed_after.is_none()) {
        for s in slow.iter_mut().filter(|s| s.closed_after.is_none()) {
            if s.kind != Kind::Silent && s.answer.is_empty() {
                // Past the service's close, a write fails; the read below
                // then sees the end.
                let _ = s
                    .stream
                    .write(if s.kind == Kind::Head { b"a" } else { b" " });
            }
            loop {
                match s.stream.read(&mut buf) {
                    Ok(0) => {
                        s.closed_after = Some(start.elapsed());
                        break;
                    }
                    Ok(n) => s.answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        s.closed_after = Some(start.elapsed());
                        break;
                    }
                }
            }
        }
        thread::sleep(gap);
    }
    slow
}

fn report(slow: &[Slow], kind: Kind, wait: Duration) {
    let of_kind: Vec<&Slow> = slow.iter().filter(|s| s.kind == kind).collect();
    if of_kind.is_empty() {
        return;
    }
    let times: Vec<f64> = of_kind
        .iter()
        .filter_map(|s| s.closed_after.map(|d| d.as_secs_f64()))
        .collect();
    let mut answers: Vec<(String, usize)> = Vec::new();
    for s in &of_kind {
        let text = String::from_utf8_lossy(&s.answer);
        let status = text.get(9..12).unwrap_or("none").to_owned();
        let code = text
            .split("\"code\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("");
        let label = if code.is_empty() {
            status
        } else {
            format!("{status} {code}")
        };
        match answers.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => answers.push((label, 1)),
        }
    }
    let range = if times.is_empty() {
        "none".to_owned()
    } else {
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = times.iter().cloned().fold(0.0, f64::max);
        format!("{min:.1}-{max:.1} s after the start")
    };
    println!(
        "{kind:?}: {} of {} closed by the service within {wait:?} ({range}); answers: {answers:?}",
        times.len(),
        of_kind.len()
    );
}

/// `REQUESTS` ordinary requests on one keep-alive connection.
fn measure(addr: &str, requests: usize) -> String {
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return format!("ordinary requests: could not connect: {e}"),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut latencies = Vec::with_capacity(requests);
    let mut statuses: Vec<(u16, usize)> = Vec::new();
    for i in 0..requests {
        // The GET asks for the product the POST before it updated.
        let id = format!("slow-test-{}", (i / 2) % 100);
        let request = if i % 2 == 0 {
            let body = format!(r#"{{"product_id":"{id}","stock":{i}}}"#);
            format!(
                "POST /events HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!("GET /products/{id} HTTP/1.1\r\nHost: m\r\n\r\n")
        };
        let sent = Instant::now();
        let status = stream
            .write_all(request.as_bytes())
            .ok()
            .and_then(|()| read_response(&mut stream));
        latencies.push(sent.elapsed());
        let Some(status) = status else {
            return format!("ordinary requests: the connection failed after {i} requests");
        };
        match statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => statuses.push((status, 1)),
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    format!(
        "ordinary requests: {requests} on one keep-alive connection, statuses {statuses:?}, latency p50 {:?} p99 {:?} max {:?}",
        at(0.5),
        at(0.99),
        latencies[latencies.len() - 1]
    )
}

/// Reads one response (Content-Length framed); returns its status.
fn read_response(stream: &mut TcpStream) -> Option<u16> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while data.len() < end + 4 + length {
                let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
                data.extend_from_slice(&buf[..n]);
            }
            return head.get(9..12)?.parse().ok();
        }
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&buf[..n]);
    }
}

/// A new connection asking for `/healthz`: its status and code, and how
/// long the answer took.
fn one_more_connection(addr: &str) -> String {
    let sent = Instant::now();
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return "could not connect".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    // Past MAX_CONNECTIONS the accept thread answers before reading, so a
    // failed write still leaves an answer to read.
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let code = text
        .split("\"code\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("");
    format!(
        "{} {code} after {:?}",
        text.get(9..12).unwrap_or("no answer"),
        sent.elapsed()
    )
}

/// `http_connections_open` from `/metrics` (over a new connection, so it
/// fails when the service is at MAX_CONNECTIONS).
fn open_connections(addr: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("http_connections_open "))
        .and_then(|v| v.trim().parse().ok())
}
