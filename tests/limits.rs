//! Resource limits (issue 6): each bound holds, and past it the service
//! answers with the same problem details as the rest of the API.

mod common;

use common::{TestServer, test_config};
use product_update_service::Config;

#[test]
fn past_max_products_new_products_are_refused_and_existing_ones_still_update() {
    let server = TestServer::start(Config {
        max_products: 3,
        ..test_config()
    });
    for id in ["a", "b", "c"] {
        let r = server.post_event(&format!(r#"{{"product_id":"{id}","stock":1}}"#));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    server.wait_applied();
    let refused = server.post_event(r#"{"product_id":"d","stock":1}"#);
    let body = refused.assert_problem(507, "product_limit_reached");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("MAX_PRODUCTS"))
    );
    // Updates to existing products still work.
    assert_eq!(
        server.post_event(r#"{"product_id":"b","stock":9}"#).status,
        202
    );
    server.wait_applied();
    assert_eq!(server.get("/products/b").json()["stock"], 9);
    assert_eq!(server.get("/products/d").status, 404);
    assert_eq!(server.stats().products, 3);
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("events_rejected_total{reason=\"product_limit\"} 1\n"),
        "{metrics}"
    );
    server.shutdown();
}

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::DEADLINE;

fn read_all(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn connections_past_max_connections_get_503_and_a_close() {
    let server = TestServer::start(Config {
        max_connections: 2,
        // Long enough that the held connections stay open during the test.
        socket_timeout: Duration::from_secs(60),
        ..test_config()
    });
    let addr = server.running.local_addr();
    // Two connections held open (each has sent a request and keeps alive).
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            let mut head = [0u8; 12];
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            s.read_exact(&mut head).expect("answered");
            assert_eq!(&head, b"HTTP/1.1 200");
            s
        })
        .collect();
    // The third is refused at once, with problem details and a close.
    let mut third = TcpStream::connect(addr).expect("connect");
    let answer = read_all(&mut third);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert!(
        answer.contains(r#""code":"too_many_connections""#),
        "{answer}"
    );
    // Closing one makes room again.
    drop(held.pop());
    let reply = common::wait_until("a connection slot to free up", || {
        let r = server.get("/healthz");
        (r.status == 200).then_some(r)
    });
    assert_eq!(reply.body, r#"{"status":"ok"}"#);
    drop(held);
    server.shutdown();
}

#[test]
fn an_oversized_request_head_gets_431_and_a_close() {
    let server = TestServer::start(test_config());
    let addr = server.running.local_addr();
    // One endless header line (more than 8 KiB).
    let mut long_line = TcpStream::connect(addr).expect("connect");
    let request = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = long_line.write_all(request.as_bytes());
    let answer = read_all(&mut long_line);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains(r#""code":"header_too_large""#));
    // Many short header lines adding up to more than 64 KiB.
    let mut many = TcpStream::connect(addr).expect("connect");
    let mut request = String::from("GET /healthz HTTP/1.1\r\n");
    for i in 0..2000 {
        request.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(40)));
    }
    request.push_str("\r\n");
    let _ = many.write_all(request.as_bytes());
    assert!(read_all(&mut many).starts_with("HTTP/1.1 431"));
    // Normal requests are unaffected.
    assert_eq!(server.get("/healthz").status, 200);
    server.shutdown();
}

#[test]
fn an_http2_request_line_is_answered_505_and_closed_not_left_hanging() {
    let server = TestServer::start(test_config());
    let mut stream = TcpStream::connect(server.running.local_addr()).expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n")
        .expect("send");
    let answer = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 505"), "{answer:?}");
    server.shutdown();
}

/// A client trickling a large body holds a request thread; the others stay
/// free for everyone else, and more large bodies get 503 `busy` at once.
#[test]
fn a_slow_body_cannot_take_every_request_thread() {
    let server = TestServer::start(Config {
        http_threads: 2,
        socket_timeout: Duration::from_secs(60),
        ..test_config()
    });
    let addr = server.running.local_addr();
    let large_head = "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                      Content-Length: 2000\r\nExpect: 100-continue\r\n\r\n";
    // The slow client: the service asks for its body ("100 Continue") and
    // then waits for bytes that do not come.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.set_read_timeout(Some(DEADLINE)).expect("timeout");
    slow.write_all(large_head.as_bytes()).expect("send head");
    let mut interim = [0u8; 25];
    slow.read_exact(&mut interim).expect("100 Continue");
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"));

    // Everyone else is still served by the other request thread.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(
        server
            .post_event(r#"{"product_id":"small","stock":1}"#)
            .status,
        202
    );
    // Another large body would need a second body-reading thread: refused.
    let mut second = TcpStream::connect(addr).expect("connect");
    second.write_all(large_head.as_bytes()).expect("send head");
    let answer = read_all(&mut second);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains(r#""code":"busy""#) && answer.contains("Retry-After: 1"),
        "{answer}"
    );

    // Once the slow client goes, large bodies are read again.
    drop(slow);
    let body = format!(r#"{{"product_id":"large","stock":1{}}}"#, " ".repeat(1500));
    let accepted = common::wait_until("a large body to be accepted again", || {
        let r = server.post_event(&body);
        (r.status == 202).then_some(r)
    });
    assert_eq!(accepted.json()["product_id"], "large");
    server.wait_applied();
    server.shutdown();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start(test_config());
    let mut stream = TcpStream::connect(server.running.local_addr()).expect("connect");
    let body = r#"{"product_id":"pipe","stock":3}"#;
    let requests = format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\
         GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /products/none HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(requests.as_bytes())
        .expect("send all three at once");
    let answer = read_all(&mut stream);
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["202", "200", "404"], "{answer}");
    server.wait_applied();
    server.shutdown();
}

#[test]
fn a_chunked_body_that_never_ends_is_cut_off() {
    let server = TestServer::start(Config {
        max_body_bytes: 4096,
        socket_timeout: Duration::from_millis(500),
        ..test_config()
    });
    let addr = server.running.local_addr();
    // Endless: chunks beyond the limit get 413 without reading on.
    let mut endless = TcpStream::connect(addr).expect("connect");
    endless
        .write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
    for _ in 0..8 {
        let _ = endless.write_all(chunk.as_bytes());
    }
    let answer = read_all(&mut endless);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Stalled: a chunked body that stops coming gets 400 after the timeout.
    let mut stalled = TcpStream::connect(addr).expect("connect");
    stalled
        .write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"pro")
        .expect("head");
    let answer = read_all(&mut stalled);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("unreadable_body"), "{answer}");
    assert_eq!(server.get("/healthz").status, 200);
    server.shutdown();
}

#[test]
fn invalid_utf8_in_a_path_is_a_clean_error() {
    let server = TestServer::start(test_config());
    let addr = server.running.local_addr();
    // Percent-encoded bytes that are not UTF-8: a problem-details 400.
    let r = server.get("/products/%FF%FE");
    r.assert_problem(400, "invalid_path");
    // Raw non-ASCII bytes in the request line: tiny_http refuses the line
    // (400) and closes; nothing hangs or panics, and the service goes on.
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.write_all(b"GET /products/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let answer = read_all(&mut raw);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    assert_eq!(server.get("/healthz").status, 200);
    server.shutdown();
}

#[test]
fn expect_100_continue_uploads_work() {
    let server = TestServer::start(test_config());
    let body = format!(r#"{{"product_id":"cont","stock":4{}}}"#, " ".repeat(1200));
    let mut stream = TcpStream::connect(server.running.local_addr()).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
        .write_all(
            format!(
                "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("100 Continue");
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"));
    stream.write_all(body.as_bytes()).expect("body");
    let answer = read_all(&mut stream);
    assert!(answer.contains("HTTP/1.1 202"), "{answer}");
    server.wait_applied();
    assert_eq!(server.get("/products/cont").json()["stock"], 4);
    server.shutdown();
}
