//! Resource limits: each bound holds, and past it the service
//! answers with the same problem details as the rest of the API.

mod common;

use common::{TestServer, exchange_expecting_close, raw_exchange, test_config};
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
        body_timeout: Duration::from_secs(60),
        ..test_config()
    });
    let addr = server.running.local_addr();
    // Two connections held busy (each a reader waiting for a seq that will
    // not come): neither is idle to make room. (An idle one would be
    // closed for the new one: see
    // `at_the_limit_the_connection_idle_longest_makes_room`.)
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /products/x?min_seq=999999&wait=5 HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            s
        })
        .collect();
    common::wait_until("both connections to be busy", || {
        (server.stats().waiting_readers == 2).then_some(())
    });
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
    assert_eq!(reply.body, "{\"status\":\"ok\"}\n");
    drop(held);
    server.shutdown();
}

#[test]
fn a_request_head_over_max_header_bytes_gets_431_and_a_close() {
    let server = TestServer::start(Config {
        max_header_bytes: 4096,
        ..test_config()
    });
    let addr = server.running.local_addr();
    // A request of exactly `len` bytes, asking for a close.
    let head_of = |len: usize| {
        let start = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: ";
        let end = "\r\n\r\n";
        format!("{start}{}{end}", "a".repeat(len - start.len() - end.len()))
    };
    // One long header line.
    let reply = exchange_expecting_close(addr, head_of(5000).as_bytes());
    let body = reply.assert_problem(431, "header_too_large");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("4096") && d.contains("MAX_HEADER_BYTES")),
        "{body}"
    );
    assert_eq!(reply.header("connection"), Some("close"));
    // Many short header lines adding up to more than the limit.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(20)));
    }
    many.push_str("\r\n");
    exchange_expecting_close(addr, many.as_bytes()).assert_problem(431, "header_too_large");
    // Exactly the limit is fine; a byte more is not.
    let at_limit = raw_exchange(addr, head_of(4096).as_bytes());
    assert!(at_limit.starts_with("HTTP/1.1 200"), "{at_limit}");
    exchange_expecting_close(addr, head_of(4097).as_bytes())
        .assert_problem(431, "header_too_large");
    server.shutdown();
}

#[test]
fn the_default_head_limit_is_32_kib() {
    let server = TestServer::start(test_config());
    let addr = server.running.local_addr();
    let request = |pad: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(pad)
        )
    };
    exchange_expecting_close(addr, request(33 * 1024).as_bytes())
        .assert_problem(431, "header_too_large");
    assert!(raw_exchange(addr, request(31 * 1024).as_bytes()).starts_with("HTTP/1.1 200"));
    server.shutdown();
}

/// Everything tiny_http refuses before routing gets problem details (with a
/// request id), `Connection: close`, and then the close; and is counted.
#[test]
fn malformed_requests_get_problem_details_and_a_close() {
    let server = TestServer::start(test_config());
    let addr = server.running.local_addr();
    let cases: [(&[u8], u16, &str); 8] = [
        (b"NONSENSE\r\n\r\n", 400, "malformed_request"),
        (
            b"GET /products/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            "malformed_request",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
            400,
            "malformed_request",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Bin: \xc3\xa9\r\n\r\n",
            400,
            "malformed_request",
        ),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}",
            400,
            "invalid_content_length",
        ),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
            "invalid_content_length",
        ),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: the-moon\r\n\r\n{}",
            417,
            "expectation_failed",
        ),
        (
            b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
    ];
    for (request, status, code) in cases {
        let reply = exchange_expecting_close(addr, request);
        let body = reply.assert_problem(status, code);
        assert_eq!(reply.header("connection"), Some("close"), "{body}");
        let id = reply.header("x-request-id").expect("a request id");
        assert_eq!(body["request_id"], id);
    }
    let metrics = server.get("/metrics").body;
    for line in [
        "http_rejections_total{code=\"malformed_request\"} 4\n",
        "http_rejections_total{code=\"invalid_content_length\"} 2\n",
        "http_rejections_total{code=\"expectation_failed\"} 1\n",
        "http_rejections_total{code=\"http_version_not_supported\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // Nothing of that reached the queue, and the service goes on.
    assert_eq!(server.stats().accepted, 0);
    assert_eq!(server.get("/healthz").status, 200);
    server.shutdown();
}

/// Clients that ask for a body to be read and then never send it hold
/// their own connections and nothing else: every one of them is asked for
/// its body ("100 Continue"), however many there are, and everyone else is
/// served meanwhile.
#[test]
fn slow_bodies_hold_only_their_own_connections() {
    let server = TestServer::start(Config {
        socket_timeout: Duration::from_secs(60),
        ..test_config()
    });
    let addr = server.running.local_addr();
    let large_head = "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                      Content-Length: 2000\r\nExpect: 100-continue\r\n\r\n";
    let slow: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut slow = TcpStream::connect(addr).expect("connect");
            slow.set_read_timeout(Some(DEADLINE)).expect("timeout");
            slow.write_all(large_head.as_bytes()).expect("send head");
            let mut interim = [0u8; 25];
            slow.read_exact(&mut interim).expect("100 Continue");
            assert!(interim.starts_with(b"HTTP/1.1 100 Continue"));
            slow
        })
        .collect();

    // Everyone else is still served, large bodies included.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(
        server
            .post_event(r#"{"product_id":"small","stock":1}"#)
            .status,
        202
    );
    let body = format!(r#"{{"product_id":"large","stock":1{}}}"#, " ".repeat(1500));
    assert_eq!(server.post_event(&body).json()["product_id"], "large");
    drop(slow);
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
    // Stalled: a chunked body that stops coming gets 408 after the timeout.
    let mut stalled = TcpStream::connect(addr).expect("connect");
    stalled
        .write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"pro")
        .expect("head");
    let answer = read_all(&mut stalled);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
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
    // Raw non-ASCII bytes in the request line: refused before routing with
    // problem details, then closed; nothing hangs or panics.
    exchange_expecting_close(addr, b"GET /products/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n")
        .assert_problem(400, "malformed_request");
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

/// A slow client: sends `head` at once, then one byte of `filler` every
/// `gap` from another thread, until the server answers or closes. The
/// pacing is the behaviour under test (a client this slow), not a wait for
/// the service: the test waits on the answer itself.
struct Trickler {
    stream: TcpStream,
    started: Instant,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
}

impl Trickler {
    fn start(addr: std::net::SocketAddr, head: &[u8], gap: Duration) -> Trickler {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(head).expect("send head");
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = stream.try_clone().expect("clone");
        let stopping = Arc::clone(&stop);
        let sender = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) && writer.write_all(b" ").is_ok() {
                std::thread::sleep(gap);
            }
        });
        Trickler {
            stream,
            started,
            stop,
            sender: Some(sender),
        }
    }

    /// Reads until the server closes (failing past DEADLINE); returns the
    /// answer and how long after the head it came.
    fn answer(mut self) -> (String, Duration) {
        let answer = read_all(&mut self.stream);
        (answer, self.started.elapsed())
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
    }
}

fn problem_code(answer: &str) -> String {
    let reply = common::parse_raw(answer);
    reply.json()["code"].as_str().unwrap_or("").to_owned()
}

/// Each read is well inside SOCKET_TIMEOUT, so only the whole-body
/// deadline can stop these; at one byte per 20 ms each would take longer
/// than DEADLINE to finish.
#[test]
fn a_body_trickled_inside_the_socket_timeout_is_cut_off_at_the_body_timeout() {
    let body_timeout = Duration::from_millis(400);
    let server = TestServer::start(Config {
        socket_timeout: Duration::from_secs(600),
        body_timeout,
        ..test_config()
    });
    let addr = server.running.local_addr();
    let gap = Duration::from_millis(20);
    let heads: [&[u8]; 3] = [
        b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{",
        b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        // Chunked: one chunk of 2000 bytes.
        b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{",
    ];
    for head in heads {
        let (answer, took) = Trickler::start(addr, head, gap).answer();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert_eq!(problem_code(&answer), "body_timeout", "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        assert!(took >= body_timeout, "cut off early, after {took:?}");
    }
    let body = format!(r#"{{"product_id":"after","stock":1{}}}"#, " ".repeat(1500));
    assert_eq!(server.post_event(&body).status, 202);
    server.wait_applied();
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("http_rejections_total{code=\"body_timeout\"} 3\n"),
        "{metrics}"
    );
    server.shutdown();
}

/// A head sent one byte at a time, each inside SOCKET_TIMEOUT, is cut off at
/// HEADER_TIMEOUT (it would otherwise take minutes to reach the size limit).
#[test]
fn a_head_trickled_inside_the_socket_timeout_is_cut_off_at_the_header_timeout() {
    let header_timeout = Duration::from_millis(400);
    let server = TestServer::start(Config {
        socket_timeout: Duration::from_secs(600),
        keepalive_timeout: Duration::from_secs(600),
        header_timeout,
        ..test_config()
    });
    let addr = server.running.local_addr();
    let trickler = Trickler::start(
        addr,
        b"GET /healthz HTTP/1.1\r\nX-Slow: ",
        Duration::from_millis(20),
    );
    let (answer, took) = trickler.answer();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(problem_code(&answer), "header_timeout", "{answer}");
    assert!(took >= header_timeout, "cut off early, after {took:?}");
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("http_rejections_total{code=\"header_timeout\"} 1\n"),
        "{metrics}"
    );
    server.shutdown();
}

fn gauge(server: &TestServer, name: &str) -> u64 {
    let metrics = server.get("/metrics").body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// A `GET /products/x?min_seq=<far ahead>&wait=5` held open on its own
/// connection: it is answered (not caught up) after 5 s.
fn far_ahead_reader(server: &TestServer) -> JoinHandle<common::Reply> {
    let url = server.url("/products/x?min_seq=1000000000&wait=5");
    let agent = common::agent();
    std::thread::spawn(move || common::read_reply(agent.get(&url).call()))
}

/// With the defaults: three POSTs trickling a 2000-byte
/// body and a `min_seq` reader waiting 5 s used to take every request
/// thread, and a health check then waited seconds. Each slow client now
/// holds only its own connection: the health check is answered while all
/// four are still held.
#[test]
fn a_health_check_is_answered_while_slow_bodies_and_a_waiting_reader_are_held() {
    let server = TestServer::start(test_config());
    let addr = server.running.local_addr();
    let slow_body = b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{";
    let tricklers: Vec<Trickler> = (0..3)
        .map(|_| Trickler::start(addr, slow_body, Duration::from_millis(100)))
        .collect();
    let reader = far_ahead_reader(&server);
    common::wait_until("the four slow clients to be held", || {
        (gauge(&server, "http_connections_open") >= 5
            && gauge(&server, "min_seq_readers_waiting") == 1)
            .then_some(())
    });
    let health = common::read_reply(common::agent().get(server.url("/healthz")).call());
    assert_eq!(health.status, 200);
    assert!(
        !reader.is_finished(),
        "the health check waited for the reader's 5 s"
    );
    // The four slow clients and the connection reading the gauge, once
    // the health check's own connection is counted out (its client has
    // closed it; the server may not have read the end yet).
    let open = common::wait_until("the health check's connection counted out", || {
        let open = gauge(&server, "http_connections_open");
        (open <= 5).then_some(open)
    });
    assert_eq!(open, 5, "a slow client was let go early");
    assert_eq!(
        reader.join().expect("reader").header("x-caught-up"),
        Some("false")
    );
    drop(tricklers);
    server.shutdown();
}

/// How many slow clients of each kind [`slow_clients_leave_others_served`]
/// holds at once.
struct Mix {
    silent: usize,
    heads: usize,
    bodies: usize,
    readers: usize,
}

/// Every kind of slow client at once, up to MAX_CONNECTIONS: silent
/// connections, heads and bodies trickled a byte at a time, and `min_seq`
/// readers waiting for a seq that will not come.
#[test]
fn any_mix_of_slow_clients_up_to_max_connections_leaves_others_served() {
    slow_clients_leave_others_served(Mix {
        silent: 12,
        heads: 12,
        bodies: 12,
        readers: 12,
    });
}

/// MAX_CONNECTIONS but one taken by connections that never send a byte.
#[test]
fn silent_connections_up_to_max_connections_leave_others_served() {
    slow_clients_leave_others_served(Mix {
        silent: 48,
        heads: 0,
        bodies: 0,
        readers: 0,
    });
}

/// MAX_CONNECTIONS but one taken by heads trickled a byte at a time.
#[test]
fn trickled_heads_up_to_max_connections_leave_others_served() {
    slow_clients_leave_others_served(Mix {
        silent: 0,
        heads: 48,
        bodies: 0,
        readers: 0,
    });
}

/// MAX_CONNECTIONS but one taken by bodies trickled a byte at a time.
#[test]
fn trickled_bodies_up_to_max_connections_leave_others_served() {
    slow_clients_leave_others_served(Mix {
        silent: 0,
        heads: 0,
        bodies: 48,
        readers: 0,
    });
}

/// MAX_CONNECTIONS but one taken by `min_seq` readers waiting 5 s.
#[test]
fn min_seq_readers_up_to_max_connections_leave_others_served() {
    slow_clients_leave_others_served(Mix {
        silent: 0,
        heads: 0,
        bodies: 0,
        readers: 48,
    });
}

/// Holds `mix` and one more connection, the ordinary client's, which fill
/// MAX_CONNECTIONS. That client's requests are all answered before any
/// slow one is done with, and a connection past the limit is refused at
/// once.
fn slow_clients_leave_others_served(mix: Mix) {
    // The slow ones, and the ordinary client's one keep-alive connection.
    let max_connections = mix.silent + mix.heads + mix.bodies + mix.readers + 1;
    let server = TestServer::start(Config {
        max_connections,
        // Long enough that no slow client is cut off during the test.
        header_timeout: Duration::from_secs(120),
        body_timeout: Duration::from_secs(120),
        keepalive_timeout: Duration::from_secs(120),
        socket_timeout: Duration::from_secs(120),
        ..test_config()
    });
    let addr = server.running.local_addr();
    let gap = Duration::from_millis(50);
    let silent: Vec<TcpStream> = (0..mix.silent)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let head_tricklers: Vec<Trickler> = (0..mix.heads)
        .map(|_| Trickler::start(addr, b"GET /healthz HTTP/1.1\r\nX-Slow: ", gap))
        .collect();
    let body_tricklers: Vec<Trickler> = (0..mix.bodies)
        .map(|_| {
            Trickler::start(
                addr,
                b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{",
                gap,
            )
        })
        .collect();
    let readers: Vec<_> = (0..mix.readers)
        .map(|_| far_ahead_reader(&server))
        .collect();
    common::wait_until("every slow client to be connected and held", || {
        (gauge(&server, "http_connections_open") == max_connections as u64
            && gauge(&server, "min_seq_readers_waiting") == mix.readers as u64)
            .then_some(())
    });
    for i in 0..100 {
        let id = format!("p{}", i % 10);
        let r = server.post_event(&format!(r#"{{"product_id":"{id}","stock":{i}}}"#));
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(server.get("/healthz").status, 200);
        assert_eq!(
            server
                .get(&format!("/products/{id}?min_seq={}", r.json()["seq"]))
                .status,
            200
        );
    }
    assert_eq!(server.get("/products/p9").json()["stock"], 99);
    // Past the limit, a new client is served too: the connection idle
    // longest (a silent or trickling one, or else the ordinary client's
    // own, between its requests) is closed to make room.
    let past = common::exchange_expecting_close(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(past.status, 200, "{}", past.body);
    // No slow client but the ones idle was done with meanwhile.
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "a reader's 5 s ran out first"
    );
    // The connection closed to make room counts as open until its thread
    // has seen the close (a limit is exceeded by it for that moment); then
    // the count is back within the limit. Read in-process: the one closed
    // may have been the ordinary client's, and a new connection for
    // /metrics, in that moment, would find no room.
    common::wait_until("the connection closed to make room to be gone", || {
        (server.stats().open_connections <= max_connections).then_some(())
    });

    drop(silent);
    drop(head_tricklers);
    drop(body_tricklers);
    for reader in readers {
        assert_eq!(
            reader.join().expect("reader").header("x-caught-up"),
            Some("false")
        );
    }
    common::wait_until("the slow clients' connections to close", || {
        (gauge(&server, "http_connections_open") <= 1).then_some(())
    });
    server.shutdown();
}

/// A client that pipelines requests and never reads the answers: the
/// service stops reading from it once an answer is stuck, instead of
/// queueing everything it sends (memory), and it holds its own connection's
/// thread, nothing else.
#[test]
fn pipelined_requests_are_not_read_without_limit() {
    let server = TestServer::start(Config {
        // Far longer than the test: the write timeout plays no part here.
        socket_timeout: Duration::from_secs(600),
        ..test_config()
    });
    let mut hostile = TcpStream::connect(server.running.local_addr()).expect("connect");
    hostile
        .set_write_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    // Each answer is several KiB, so unread answers soon fill the buffers.
    let request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let total = 60 * 1024 * 1024;
    let batch: Vec<u8> = request.repeat(64 * 1024 / request.len());
    let mut sent = 0;
    while sent < total {
        match hostile.write(&batch) {
            Ok(n) => sent += n,
            Err(_) => break, // blocked for 1 s: the service stopped reading
        }
    }
    assert!(
        sent < total,
        "the service read all {sent} bytes of requests nobody reads the answers to"
    );
    // Everyone else is still served.
    assert_eq!(server.get("/healthz").status, 200);
    drop(hostile);
    server.shutdown();
}

/// A client that does not read its answers holds its connection's thread
/// for at most SOCKET_TIMEOUT (the write timeout); then its connection is
/// closed, rather than each further request waiting out the timeout again.
#[test]
fn a_client_that_does_not_read_is_disconnected_after_the_socket_timeout() {
    let server = TestServer::start(Config {
        socket_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut hostile = TcpStream::connect(server.running.local_addr()).expect("connect");
    hostile
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // Each answer is several KiB: a few thousand fill every socket buffer.
    let request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let _ = hostile.write_all(&request.repeat(20_000));
    common::wait_until("the non-reading client to be disconnected", || {
        (gauge(&server, "http_connections_open") <= 1).then_some(())
    });
    assert_eq!(server.get("/healthz").status, 200);
    drop(hostile);
    server.shutdown();
}

/// A connection to the service from `source`, another loopback address
/// than the test's other clients (Linux routes all of 127.0.0.0/8 to
/// loopback): a different client, as the service counts them.
fn connect_from(source: &str, addr: std::net::SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let from: std::net::SocketAddr = format!("{source}:0").parse().expect("address");
    socket
        .bind(&from.into())
        .expect("bind the client's address");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

/// One request on a new connection from `source`, answered and closed;
/// returns the answer and how long it took.
fn timed_request(
    source: &str,
    addr: std::net::SocketAddr,
    request: &str,
) -> (common::Reply, Duration) {
    let started = Instant::now();
    let mut stream = connect_from(source, addr);
    stream.write_all(request.as_bytes()).expect("send");
    let answer = read_all(&mut stream);
    (common::parse_raw(&answer), started.elapsed())
}

/// Another client's health check, event and read, each on a new
/// connection from `source`: each must be answered within 100 ms.
fn another_client_is_served_at_once(source: &str, addr: std::net::SocketAddr) {
    let limit = Duration::from_millis(100);
    let event = r#"{"product_id":"other","stock":7}"#;
    let requests = [
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "POST /events HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{event}",
            event.len()
        ),
        "GET /products/other?min_seq=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned(),
    ];
    for (request, status) in requests.iter().zip([200, 202, 200]) {
        let (answer, took) = timed_request(source, addr, request);
        assert_eq!(answer.status, status, "{request:?}: {}", answer.body);
        assert!(
            took <= limit,
            "{request:?} took {took:?}, more than {limit:?}"
        );
    }
}

/// One client address opening more than MAX_CONNECTIONS connections,
/// silent and trickling heads, holds at most MAX_CONNECTIONS_PER_CLIENT
/// of them at any time (each one past its share closes its own idle
/// longest); another client is served meanwhile, each request within 100
/// ms.
#[test]
fn one_address_cannot_shut_the_others_out() {
    let server = TestServer::start(Config {
        max_connections: 40,
        max_connections_per_client: 10,
        header_timeout: Duration::from_secs(120),
        keepalive_timeout: Duration::from_secs(120),
        ..test_config()
    });
    let addr = server.running.local_addr();
    // More than MAX_CONNECTIONS from 127.0.0.1: silent ones, and heads
    // trickled a byte every 50 ms.
    let mut silent: Vec<TcpStream> = (0..45).map(|_| connect_from("127.0.0.1", addr)).collect();
    let tricklers: Vec<Trickler> = (0..5)
        .map(|_| {
            Trickler::start(
                addr,
                b"GET /healthz HTTP/1.1\r\nX-Slow: ",
                Duration::from_millis(50),
            )
        })
        .collect();
    // Every one past the share closed one of its own: the first 35 silent
    // ones by the time the tricklers came, and 40 of the 50 in all.
    common::wait_until("the greedy address to hold no more than its share", || {
        let open = server.stats().open_connections;
        (open <= 10 && closed_count(&mut silent) >= 35).then_some(())
    });
    another_client_is_served_at_once("127.0.0.2", addr);
    drop(silent);
    drop(tricklers);
    server.shutdown();
}

/// With the per-client share off (as behind a proxy, where every client
/// has the proxy's address), one address filling MAX_CONNECTIONS with idle
/// connections still leaves room: at the limit, the connection idle
/// longest is closed, quietly, for the new one.
#[test]
fn at_the_limit_the_connection_idle_longest_makes_room() {
    let server = TestServer::start(Config {
        max_connections: 20,
        max_connections_per_client: 20,
        keepalive_timeout: Duration::from_secs(120),
        ..test_config()
    });
    let addr = server.running.local_addr();
    let mut first: Vec<TcpStream> = (0..20).map(|_| connect_from("127.0.0.1", addr)).collect();
    common::wait_until("the limit to be reached", || {
        (server.stats().open_connections == 20).then_some(())
    });
    // Five more: each closes one of the first twenty.
    let mut later: Vec<TcpStream> = (0..5).map(|_| connect_from("127.0.0.1", addr)).collect();
    common::wait_until("five of the first twenty to be closed", || {
        (closed_count(&mut first) == 5 && server.stats().open_connections == 20).then_some(())
    });
    assert_eq!(
        closed_count(&mut later),
        0,
        "a newer connection was closed first"
    );
    another_client_is_served_at_once("127.0.0.1", addr);
    another_client_is_served_at_once("127.0.0.2", addr);
    drop((first, later));
    server.shutdown();
}

/// How many of `streams` the server has closed (read returns the end at
/// once; an open one has nothing to read).
fn closed_count(streams: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    for stream in streams.iter_mut() {
        stream.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Ok(0)) {
            closed += 1;
        }
        stream.set_nonblocking(false).expect("blocking");
    }
    closed
}
