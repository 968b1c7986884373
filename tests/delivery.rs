//! Delivery semantics: read-your-writes with `min_seq` (and, in
//! tests/api.rs, ETag/304).

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, Reply, TestServer, test_config};
use product_update_service::Config;

fn accepted_seq(reply: &Reply) -> u64 {
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.json()["seq"].as_u64().expect("seq")
}

#[test]
fn min_seq_already_applied_answers_at_once_as_caught_up() {
    let server = TestServer::start(test_config());
    let seq = accepted_seq(&server.post_event(r#"{"product_id":"m","stock":1}"#));
    server.wait_applied();
    let r = server.get(&format!("/products/m?min_seq={seq}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-caught-up"), Some("true"));
    assert_eq!(
        r.header("x-applied-through"),
        Some(seq.to_string().as_str())
    );
    server.shutdown();
}

#[test]
fn min_seq_waits_until_the_event_is_applied() {
    let server = TestServer::start(test_config());
    let paused = server.running.pause_workers();
    let seq = accepted_seq(&server.post_event(r#"{"product_id":"w","stock":7}"#));
    let (agent, url) = (
        server.agent.clone(),
        server.url(&format!("/products/w?min_seq={seq}&wait=5")),
    );
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let started = Instant::now();
        let reply = common::read_reply(agent.get(&url).call());
        tx.send(()).ok();
        (reply, started.elapsed())
    });
    // While paused, the reader is still waiting (a bounded look for
    // something that must not happen; the release below proves it returns).
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "answered before applied"
    );
    drop(paused);
    let (reply, took) = reader.join().expect("reader");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["stock"], 7);
    assert_eq!(reply.header("x-caught-up"), Some("true"));
    assert!(
        took < Duration::from_secs(5),
        "waited the whole wait: {took:?}"
    );
    server.shutdown();
}

#[test]
fn min_seq_times_out_with_the_current_state_when_workers_are_paused() {
    let server = TestServer::start(test_config());
    let first = accepted_seq(&server.post_event(r#"{"product_id":"t","stock":1}"#));
    server.wait_applied();
    let paused = server.running.pause_workers();
    let second = accepted_seq(&server.post_event(r#"{"product_id":"t","stock":2}"#));
    let started = Instant::now();
    let r = server.get(&format!("/products/t?min_seq={second}&wait=0.3"));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "did not wait: {took:?}");
    assert!(took < DEADLINE);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["stock"], 1, "the current (older) state");
    assert_eq!(r.header("x-caught-up"), Some("false"));
    assert_eq!(
        r.header("x-applied-through"),
        Some(first.to_string().as_str())
    );
    // A product nothing has applied yet: 404, also saying not caught up.
    let seq = accepted_seq(&server.post_event(r#"{"product_id":"new","stock":1}"#));
    let r = server.get(&format!("/products/new?min_seq={seq}&wait=0"));
    r.assert_problem(404, "product_not_found");
    assert_eq!(r.header("x-caught-up"), Some("false"));
    drop(paused);
    server.wait_applied();
    server.shutdown();
}

/// Every `min_seq` reader waits on its own connection's thread: many wait
/// at once, each is answered as soon as its own seq is applied, and the
/// API answers everyone else meanwhile.
#[test]
fn many_readers_wait_at_once_and_the_api_stays_responsive() {
    let server = TestServer::start(test_config());
    let paused = server.running.pause_workers();
    let seqs: Vec<u64> = (0..20)
        .map(|i| {
            accepted_seq(&server.post_event(&format!(r#"{{"product_id":"c{i}","stock":{i}}}"#)))
        })
        .collect();
    let waiters: Vec<_> = seqs
        .iter()
        .enumerate()
        .map(|(i, seq)| {
            let (agent, url) = (
                server.agent.clone(),
                server.url(&format!("/products/c{i}?min_seq={seq}&wait=5")),
            );
            thread::spawn(move || common::read_reply(agent.get(&url).call()))
        })
        .collect();
    common::wait_until("all 20 readers to be waiting", || {
        server
            .get("/metrics")
            .body
            .contains("\nmin_seq_readers_waiting 20\n")
            .then_some(())
    });
    assert_eq!(server.get("/healthz").status, 200, "the API still answers");
    assert_eq!(
        server
            .post_event(r#"{"product_id":"other","stock":1}"#)
            .status,
        202
    );
    drop(paused);
    for (i, waiter) in waiters.into_iter().enumerate() {
        let r = waiter.join().expect("waiter");
        assert_eq!(
            r.header("x-caught-up"),
            Some("true"),
            "reader {i}: {}",
            r.body
        );
        assert_eq!(r.json()["stock"], i);
    }
    server.shutdown();
}

#[test]
fn bad_min_seq_and_wait_are_refused() {
    let server = TestServer::start(test_config());
    for (query, parameter) in [
        ("min_seq=-1", "min_seq"),
        ("min_seq=abc", "min_seq"),
        ("min_seq=1&wait=6", "wait"),
        ("min_seq=1&wait=-1", "wait"),
        ("min_seq=1&wait=soon", "wait"),
    ] {
        let r = server.get(&format!("/products/x?{query}"));
        assert_eq!(
            r.assert_problem(400, "invalid_query")["field"],
            parameter,
            "{query}"
        );
    }
    server.shutdown();
}

fn metric(server: &TestServer, name: &str) -> f64 {
    let body = server.get("/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn a_retried_event_is_not_applied_twice_and_cannot_revert_a_newer_value() {
    let server = TestServer::start(test_config());
    let first = server.post_event(r#"{"product_id":"i","price":1,"event_id":"evt-1"}"#);
    assert_eq!(first.status, 202);
    let body = first.json();
    assert_eq!(
        (body["status"].as_str(), body["duplicate"].as_bool()),
        (Some("accepted"), Some(false))
    );
    let seq = body["seq"].as_u64().expect("seq");
    let newer = accepted_seq(&server.post_event(r#"{"product_id":"i","price":2}"#));
    server.wait_applied();

    // The producer retries evt-1 (say its first answer was lost).
    let retry = server.post_event(r#"{"product_id":"i","price":1,"event_id":"evt-1"}"#);
    assert_eq!(retry.status, 200, "{}", retry.body);
    let body = retry.json();
    assert_eq!(body["status"], "duplicate");
    assert_eq!(body["duplicate"], true);
    assert_eq!(body["seq"].as_u64(), Some(seq), "the original seq");
    server.wait_applied();
    assert_eq!(
        server.get("/products/i").json()["price"],
        2,
        "not reverted by the retry"
    );
    assert_eq!(metric(&server, "events_duplicate_total"), 1.0);
    let stats = server.stats();
    assert_eq!(
        (stats.accepted, stats.applied),
        (newer, newer),
        "the retry was not queued"
    );
    server.shutdown();
}

#[test]
fn reusing_an_event_id_for_a_different_event_is_a_conflict() {
    let server = TestServer::start(test_config());
    let seq = accepted_seq(&server.post_event(r#"{"product_id":"k","stock":1,"event_id":"e"}"#));
    let r = server.post_event(r#"{"product_id":"k","stock":2,"event_id":"e"}"#);
    let body = r.assert_problem(409, "idempotency_conflict");
    assert_eq!(body["field"], "event_id");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("seq {seq}")))
    );
    server.wait_applied();
    assert_eq!(server.get("/products/k").json()["stock"], 1);
    server.shutdown();
}

#[test]
fn the_idempotency_window_stays_bounded_under_a_flood_of_unique_ids() {
    if common::differs_in_postgres_mode(
        "the window is the database's idempotency table there: its age bound holds at once, its count bound at the next pruning (every second)",
    ) {
        return;
    }
    let server = TestServer::start(Config {
        idempotency_window: 50,
        ..test_config()
    });
    for i in 0..500 {
        let r = server.post_event(&format!(
            r#"{{"product_id":"f","stock":{i},"event_id":"u-{i}"}}"#
        ));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    assert_eq!(metric(&server, "idempotency_window_entries"), 50.0);
    // The newest ids are still recognised; the oldest are forgotten.
    assert_eq!(
        server
            .post_event(r#"{"product_id":"f","stock":499,"event_id":"u-499"}"#)
            .status,
        200
    );
    assert_eq!(
        server
            .post_event(r#"{"product_id":"f","stock":0,"event_id":"u-0"}"#)
            .status,
        202
    );
    server.wait_applied();
    server.shutdown();
}

#[test]
fn an_event_id_is_forgotten_after_the_ttl() {
    let server = TestServer::start(Config {
        idempotency_ttl: Duration::from_millis(200),
        ..test_config()
    });
    assert_eq!(
        server
            .post_event(r#"{"product_id":"t","stock":1,"event_id":"old"}"#)
            .status,
        202
    );
    // Within the TTL a retry is a duplicate; after it, the same id is new.
    let r = common::wait_until("the id to leave the window", || {
        let r = server.post_event(r#"{"product_id":"t","stock":1,"event_id":"old"}"#);
        (r.status == 202).then_some(r)
    });
    assert_eq!(r.json()["duplicate"], false);
    server.wait_applied();
    server.shutdown();
}

#[test]
fn a_bad_event_id_is_refused() {
    let server = TestServer::start(test_config());
    for bad in [r#""""#, r#""  ""#, "7", r#""a/b""#, "null"] {
        let r = server.post_event(&format!(
            r#"{{"product_id":"b","stock":1,"event_id":{bad}}}"#
        ));
        assert_eq!(
            r.assert_problem(400, "invalid_event_id")["field"],
            "event_id",
            "{bad}"
        );
    }
    server.shutdown();
}

#[test]
fn versions_decide_which_write_wins_and_stale_ones_are_skipped_and_counted() {
    let server = TestServer::start(test_config());
    let post = |body: &str| {
        let r = server.post_event(body);
        assert_eq!(r.status, 202, "{}", r.body);
    };
    post(r#"{"product_id":"v","price":10,"version":5}"#);
    // Older version, accepted later: acknowledged, but skipped.
    post(r#"{"product_id":"v","price":9,"version":4}"#);
    // Unversioned: never overrides a versioned value.
    post(r#"{"product_id":"v","price":8}"#);
    server.wait_applied();
    assert_eq!(server.get("/products/v").json()["price"], 10);
    assert_eq!(metric(&server, "stale_field_writes_skipped_total"), 2.0);
    // A higher version wins.
    post(r#"{"product_id":"v","price":11,"version":6}"#);
    server.wait_applied();
    assert_eq!(server.get("/products/v").json()["price"], 11);
    for bad in ["-1", "1.5", r#""7""#, "18446744073709551615"] {
        let r = server.post_event(&format!(
            r#"{{"product_id":"v","price":1,"version":{bad}}}"#
        ));
        assert_eq!(
            r.assert_problem(400, "invalid_version")["field"],
            "version",
            "{bad}"
        );
    }
    server.shutdown();
}

// How answers reach their clients. In the durable suites every 202 below
// is written by the committer, not by the connection's thread (see
// `tiny_http::inline::Deferred`); these hold in every mode.

/// A POST as one pipelined request on a raw connection.
fn raw_post(body: &str) -> String {
    format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The answers in `text`, in order: each status and, for a 202, its seq.
fn answers(text: &str) -> Vec<(u16, Option<u64>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("HTTP/1.1 ") {
        let reply = &rest[start..];
        let (head, after) = reply.split_once("\r\n\r\n").expect("a whole head");
        let status: u16 = head[9..12].parse().expect("a status");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |n| n.trim().parse().expect("a length"));
        let body = &after[..length];
        let seq = (status == 202).then(|| {
            serde_json::from_str::<serde_json::Value>(body).expect("JSON")["seq"]
                .as_u64()
                .expect("seq")
        });
        out.push((status, seq));
        rest = &after[length..];
    }
    out
}

#[test]
fn pipelined_posts_are_answered_in_order() {
    let server = TestServer::start(test_config());
    let mut requests: String = (0..20)
        .map(|i| raw_post(&format!(r#"{{"product_id":"pipe","stock":{i}}}"#)))
        .collect();
    requests.push_str("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let text = common::raw_exchange(server.running.local_addr(), requests.as_bytes());
    let got = answers(&text);
    assert_eq!(got.len(), 21, "{text}");
    assert!(
        got[..20].iter().all(|(status, _)| *status == 202),
        "{got:?}"
    );
    assert_eq!(got[20].0, 200, "the GET after the POSTs: {got:?}");
    let seqs: Vec<u64> = got[..20].iter().filter_map(|(_, seq)| *seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "answers out of order: {seqs:?}"
    );
    let last = seqs[19];
    let r = server.get(&format!("/products/pipe?min_seq={last}"));
    assert_eq!(r.json()["stock"], 19, "{}", r.body);
    server.shutdown();
}

/// A client that pipelines POSTs and reads none of the answers: its
/// answers pile up in its own connection, and nobody else waits for them
/// (in the durable modes the committer, which answers every client, never
/// blocks on this one's socket).
#[test]
fn a_client_that_reads_no_answers_holds_up_nobody() {
    let server = TestServer::start(Config {
        // Longer than the test's deadline: anything that blocked on the
        // client's socket would fail the test rather than time out.
        socket_timeout: DEADLINE * 3,
        ..test_config()
    });
    let mut hostile = std::net::TcpStream::connect(server.running.local_addr()).expect("connect");
    hostile
        .set_write_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let batch = raw_post(r#"{"product_id":"deaf","stock":1}"#).repeat(200);
    let mut sent = 0usize;
    let started = Instant::now();
    // Until the service stops reading it: the answers fill the socket's
    // buffers, its thread is stuck writing them, and the requests back up.
    while sent < 256 * 1024 * 1024 && started.elapsed() < DEADLINE {
        match std::io::Write::write(&mut hostile, batch.as_bytes()) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let accepted = server.post_event(r#"{"product_id":"other","stock":2}"#);
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(server.get("/healthz").status, 200);
    drop(hostile);
    server.shutdown();
}

/// Shutdown while POSTs are in flight on several connections: every
/// connection gets whole answers and is closed, and every 202 a client
/// read is one the service counts as accepted.
#[test]
fn shutdown_in_the_middle_of_pipelined_posts_answers_every_one_it_took() {
    let server = TestServer::start(test_config());
    let addr = server.running.local_addr();
    let (first_answer, started) = mpsc::channel();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let first_answer = first_answer.clone();
            thread::spawn(move || {
                let requests: String = (0..200)
                    .map(|i| raw_post(&format!(r#"{{"product_id":"s{c}","stock":{i}}}"#)))
                    .collect();
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
                std::io::Write::write_all(&mut stream, requests.as_bytes()).expect("send");
                let mut text = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match std::io::Read::read(&mut stream, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if text.is_empty() {
                                let _ = first_answer.send(());
                            }
                            text.extend_from_slice(&buf[..n]);
                        }
                        Err(e) => panic!("client {c}: not closed by shutdown: {e}"),
                    }
                }
                answers(&String::from_utf8(text).expect("UTF-8"))
            })
        })
        .collect();
    for _ in 0..6 {
        started.recv_timeout(DEADLINE).expect("a first answer");
    }
    let report = server.shutdown();
    let mut accepted = 0;
    for client in clients {
        let got = client.join().expect("a client");
        assert!(
            got.iter()
                .all(|(status, _)| *status == 202 || *status == 503),
            "{got:?}"
        );
        accepted += got.iter().filter(|(status, _)| *status == 202).count() as u64;
    }
    assert!(accepted > 0);
    assert_eq!(
        report.accepted, accepted,
        "202s read by the clients against the service's count"
    );
}
