//! The inline server (`tiny_http::inline`) over real sockets: keep-alive
//! and closing, pipelining, bodies (length, chunked, `Expect:
//! 100-continue`, unread), every refusal, the limits, a panicking handler,
//! stopping, answers deferred to another thread, and parked connections.
//! Each test starts its own server on a loopback port and talks to it as a
//! client would, from the test's thread.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::inline::{self, BodyError, Deferred, Handler, Rejection, Request, Response};

/// The longest any test waits for something before failing.
const DEADLINE: Duration = Duration::from_secs(20);

/// Answers `METHOD URL` and the body it read, as plain text. Paths:
/// `/panic` panics; `/noread` answers without reading the body; `/gate`
/// waits until the test opens the gate; `/body-limit` reads at most 10
/// bytes; `/defer...` reads the body and defers the answer, handing it to
/// the test (`deferred`), and `/defer-panic` panics after that.
struct Echo {
    gate: Mutex<Option<mpsc::Receiver<()>>>,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    refusals: Mutex<Vec<Rejection>>,
    deferred: Mutex<Option<mpsc::Sender<(Deferred, String)>>>,
    /// The URL of every request handled, in order.
    handled: Mutex<Vec<String>>,
}

impl Echo {
    fn new() -> Echo {
        Echo {
            gate: Mutex::new(None),
            entered: Mutex::new(None),
            refusals: Mutex::new(Vec::new()),
            deferred: Mutex::new(None),
            handled: Mutex::new(Vec::new()),
        }
    }
}

impl Handler for Echo {
    fn handle(&self, request: &mut Request<'_>, response: &mut Response) {
        let line = format!("{} {}", request.method(), request.url());
        self.handled.lock().unwrap().push(request.url().to_owned());
        if request.url().starts_with("/defer") {
            let body = request.read_body(1 << 20).map(<[u8]>::to_vec).unwrap();
            let deferred = request.defer();
            let text = format!("{line}\n{}", String::from_utf8(body).unwrap());
            let to = self
                .deferred
                .lock()
                .unwrap()
                .clone()
                .expect("a test taking deferred answers");
            to.send((deferred, text)).unwrap();
            if request.url() == "/defer-panic" {
                panic!("a deliberate handler panic after deferring");
            }
            // Ignored: the answer is the deferred one.
            response.set_status(418);
            return;
        }
        let body = match request.url() {
            "/panic" => panic!("a deliberate handler panic"),
            "/noread" => Ok(Vec::new()),
            "/gate" => {
                if let Some(entered) = self.entered.lock().unwrap().take() {
                    let _ = entered.send(());
                }
                let gate = self.gate.lock().unwrap().take();
                if let Some(gate) = gate {
                    let _ = gate.recv_timeout(DEADLINE);
                }
                Ok(Vec::new())
            }
            "/body-limit" => request.read_body(10).map(<[u8]>::to_vec),
            _ => request.read_body(1 << 20).map(<[u8]>::to_vec),
        };
        match body {
            Ok(body) => {
                response.set_status(200);
                response.add_header("Content-Type", "text/plain");
                response.body_mut().extend_from_slice(line.as_bytes());
                response.body_mut().push(b'\n');
                response.body_mut().extend_from_slice(&body);
            }
            Err(e) => {
                let status = match e {
                    BodyError::TooLarge { .. } => 413,
                    BodyError::TimedOut => 408,
                    BodyError::Incomplete { .. } | BodyError::Invalid(_) => 400,
                };
                response.set_status(status);
                response.set_body(e.to_string().as_bytes());
            }
        }
    }

    fn refuse(&self, rejection: Rejection, response: &mut Response) {
        self.refusals.lock().unwrap().push(rejection);
        response.set_body(format!("refused: {rejection:?}").as_bytes());
    }
}

struct TestServer {
    server: inline::Server,
    echo: Arc<Echo>,
    open: Arc<AtomicUsize>,
}

impl TestServer {
    /// Where `/defer` requests hand their answers.
    fn take_deferred(&self) -> mpsc::Receiver<(Deferred, String)> {
        let (to, from) = mpsc::channel();
        *self.echo.deferred.lock().unwrap() = Some(to);
        from
    }
}

/// Answers a deferred request with 200 and `text`, as the handler would.
fn answer_text(deferred: Deferred, text: &str) {
    deferred.answer(|response| {
        response.add_header("Content-Type", "text/plain");
        response.set_body(text.as_bytes());
    });
}

fn start(config: inline::Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = Arc::new(Echo::new());
    let open = Arc::clone(&config.open_connections);
    let server = inline::Server::start(listener, config, echo.clone()).unwrap();
    TestServer { server, echo, open }
}

fn quick() -> inline::Config {
    inline::Config {
        socket_timeout: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(10),
        ..inline::Config::default()
    }
}

fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.server.local_addr()).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// One answer: status, headers, body (read by Content-Length).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer from `stream` (fails past DEADLINE).
fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("an answer"),
            1,
            "closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.trim_end().split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// True if the server closed `stream` (EOF) rather than leaving it open.
fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn keep_alive_connection_close_and_http_1_0() {
    let t = start(quick());
    let mut s = connect(&t);
    for i in 0..3 {
        write!(s, "GET /k{i} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let a = read_answer(&mut s);
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, format!("GET /k{i}\n").as_str())
        );
        assert_eq!(a.header("Connection"), None);
        assert!(a.header("Date").is_some_and(|d| d.ends_with(" GMT")));
    }
    write!(
        s,
        "GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_answer(&mut s).header("Connection"), Some("close"));
    assert!(closed(&mut s));

    let mut old = connect(&t);
    old.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut old).header("Connection"), Some("close"));
    assert!(closed(&mut old));

    let mut kept = connect(&t);
    for _ in 0..2 {
        kept.write_all(b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_answer(&mut kept).header("Connection"),
            Some("keep-alive")
        );
    }
    drop((s, old, kept));
    t.server.stop();
}

#[test]
fn pipelined_requests_are_answered_in_order_and_together() {
    let t = start(quick());
    let mut s = connect(&t);
    let requests: String = (0..20)
        .map(|i| format!("POST /p{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{i:02}"))
        .collect();
    s.write_all(requests.as_bytes()).unwrap();
    for i in 0..20 {
        let a = read_answer(&mut s);
        assert_eq!(a.body, format!("POST /p{i}\n{i:02}"));
    }
    drop(s);
    t.server.stop();
}

#[test]
fn bodies_by_length_chunked_and_after_100_continue() {
    let t = start(quick());
    let mut s = connect(&t);
    let big = "b".repeat(100_000);
    write!(
        s,
        "POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    )
    .unwrap();
    assert_eq!(read_answer(&mut s).body, format!("POST /big\n{big}"));

    s.write_all(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s).body, "POST /chunked\nhello world");

    s.write_all(
        b"POST /continue HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"abc").unwrap();
    assert_eq!(read_answer(&mut s).body, "POST /continue\nabc");
    drop(s);
    t.server.stop();
}

#[test]
fn an_unread_body_closes_the_connection_and_is_not_drained() {
    let t = start(quick());
    let mut s = connect(&t);
    // Declares far more than it sends: the handler never reads it.
    s.write_all(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\nxyz")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (200, Some("close")));
    assert!(
        closed(&mut s),
        "the connection stays open for a body nobody reads"
    );
    // A body over the handler's limit: refused from Content-Length.
    let mut s = connect(&t);
    s.write_all(b"POST /body-limit HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (413, Some("close")));
    assert!(closed(&mut s));
    t.server.stop();
}

/// Sends `request` on a new connection and reads one answer.
fn exchange(t: &TestServer, request: &[u8]) -> (TcpStream, Answer) {
    let mut s = connect(t);
    s.write_all(request).unwrap();
    let answer = read_answer(&mut s);
    (s, answer)
}

/// RFC 9112 §6.1: `Transfer-Encoding` in an HTTP/1.0 request is faulty
/// framing; the request is answered and the connection closed, even when
/// the client asked to keep it.
#[test]
fn transfer_encoding_in_http_1_0_closes_after_the_answer() {
    let t = start(quick());
    let (mut s, a) = exchange(
        &t,
        b"POST /te HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!((a.status, a.body.as_str()), (200, "POST /te\nabc"));
    assert_eq!(a.header("Connection"), Some("close"));
    assert!(
        closed(&mut s),
        "kept open after Transfer-Encoding in HTTP/1.0"
    );
    t.server.stop();
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, any request with two,
/// or one with an invalid value is answered 400. HTTP/1.0 needs none.
#[test]
fn host_is_required_once_and_valid() {
    let t = start(quick());
    for request in [
        &b"GET /no-host HTTP/1.1\r\n\r\n"[..],
        b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /two HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /bad HTTP/1.1\r\nHost: exa mple\r\n\r\n",
        b"GET /bad HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET /bad HTTP/1.1\r\nHost: a:80x\r\n\r\n",
        b"GET /bad HTTP/1.1\r\nHost: [::1\r\n\r\n",
    ] {
        let (mut s, a) = exchange(&t, request);
        let shown = String::from_utf8_lossy(request);
        assert_eq!(
            (a.status, a.body.as_str()),
            (400, "refused: InvalidHost"),
            "{shown}"
        );
        assert!(closed(&mut s), "{shown}");
    }
    for request in [
        &b"GET /ok HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"[..],
        b"GET /ok HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET /ok HTTP/1.0\r\n\r\n",
    ] {
        let (_s, a) = exchange(&t, request);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(request));
    }
    t.server.stop();
}

/// RFC 9110 §10.1.1: an HTTP/1.0 client must not get a 1xx answer; its
/// `Expect: 100-continue` is ignored.
#[test]
fn an_http_1_0_client_gets_no_100_continue() {
    let t = start(quick());
    let (_s, a) = exchange(
        &t,
        b"POST /c HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    );
    // `read_answer` reads the first status line: a 100 would be it.
    assert_eq!((a.status, a.body.as_str()), (200, "POST /c\nabc"));
    t.server.stop();
}

/// RFC 9112 §3.2.2: a target in absolute form is accepted, and the
/// handler sees its path and query.
#[test]
fn an_absolute_form_target_is_served_by_its_path() {
    let t = start(quick());
    for (target, seen) in [
        ("http://example.com/abs?x=1", "/abs?x=1"),
        ("http://example.com", "/"),
        ("HTTPS://example.com:8443?q", "/?q"),
        ("http://user@example.com/a/b", "/a/b"),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let (_s, a) = exchange(&t, request.as_bytes());
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, format!("GET {seen}\n").as_str())
        );
    }
    t.server.stop();
}

/// RFC 9112 §2.2: empty lines before a request line are skipped, before
/// the first request and between pipelined ones.
#[test]
fn empty_lines_before_a_request_line_are_ignored() {
    let t = start(quick());
    let mut s = connect(&t);
    s.write_all(
        b"\r\n\r\nGET /one HTTP/1.1\r\nHost: t\r\n\r\n\nGET /two HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_answer(&mut s).body, "GET /one\n");
    assert_eq!(read_answer(&mut s).body, "GET /two\n");
    drop(s);
    t.server.stop();
}

/// RFC 9112 §6.1 and §6.3: a coding other than chunked is not implemented
/// (501); a `Transfer-Encoding` that does not end with chunked, once, has
/// no knowable length (400).
#[test]
fn transfer_codings_are_chunked_once_and_last() {
    let t = start(quick());
    for (te, status, rejection) in [
        ("gzip", 501, Rejection::UnsupportedTransferEncoding),
        ("gzip, chunked", 501, Rejection::UnsupportedTransferEncoding),
        ("chunked, chunked", 400, Rejection::InvalidTransferEncoding),
        ("", 400, Rejection::InvalidTransferEncoding),
    ] {
        let request = format!("POST /te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\n\r\n");
        let (mut s, a) = exchange(&t, request.as_bytes());
        assert_eq!(
            (a.status, a.body.as_str()),
            (status, format!("refused: {rejection:?}").as_str()),
            "{te:?}"
        );
        assert!(closed(&mut s), "{te:?}");
    }
    t.server.stop();
}

/// RFC 9110 §2.5: a later HTTP/1.x is served as HTTP/1.1.
#[test]
fn a_later_http_1_minor_version_is_served_as_1_1() {
    let t = start(quick());
    let mut s = connect(&t);
    s.write_all(b"GET /v HTTP/1.2\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    drop(s);
    t.server.stop();
}

#[test]
fn every_refusal_is_answered_through_the_handler_and_closes() {
    let t = start(inline::Config {
        max_header_bytes: 1024,
        header_timeout: Duration::from_millis(300),
        ..quick()
    });
    let cases: [(&[u8], Rejection, u16); 7] = [
        (
            b"NOT HTTP AT ALL\r\n\r\n",
            Rejection::MalformedRequestLine,
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nno colon\r\n\r\n",
            Rejection::MalformedHeader,
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n",
            Rejection::InvalidContentLength,
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
            Rejection::UnsupportedTransferEncoding,
            501,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nExpect: nothing\r\n\r\n",
            Rejection::ExpectationFailed,
            417,
        ),
        (
            b"GET / HTTP/2.0\r\n\r\n",
            Rejection::VersionNotSupported,
            505,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: never ends",
            Rejection::HeaderTimeout,
            408,
        ),
    ];
    for (request, rejection, status) in cases {
        let mut s = connect(&t);
        s.write_all(request).unwrap();
        let a = read_answer(&mut s);
        assert_eq!(a.status, status, "{rejection:?}");
        assert_eq!(a.body, format!("refused: {rejection:?}"));
        assert_eq!(a.header("Connection"), Some("close"));
        assert!(closed(&mut s), "{rejection:?}");
    }
    let mut s = connect(&t);
    let long = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "x".repeat(2000)
    );
    s.write_all(long.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut s).status, 431);
    let seen = t.echo.refusals.lock().unwrap().clone();
    assert_eq!(seen.len(), 8);
    assert_eq!(seen[7], Rejection::HeaderTooLarge);
    t.server.stop();
}

#[test]
fn a_head_trickled_byte_by_byte_is_cut_off_at_the_head_deadline() {
    let header_timeout = Duration::from_millis(400);
    let t = start(inline::Config {
        header_timeout,
        socket_timeout: Duration::from_secs(60),
        ..quick()
    });
    let mut s = connect(&t);
    let mut writer = s.try_clone().unwrap();
    let started = Instant::now();
    let trickle = thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: "
            .iter()
            .chain(b"y".repeat(10_000).iter())
        {
            if writer.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
    let a = read_answer(&mut s);
    assert_eq!(a.status, 408);
    assert!(started.elapsed() >= header_timeout);
    drop(s);
    let _ = trickle.join();
    t.server.stop();
}

#[test]
fn a_stalled_body_times_out_for_the_handler() {
    let t = start(inline::Config {
        body_timeout: Duration::from_millis(300),
        ..quick()
    });
    let mut s = connect(&t);
    s.write_all(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (408, Some("close")));
    t.server.stop();
}

#[test]
fn an_idle_connection_is_closed_quietly_after_the_keep_alive_timeout() {
    let t = start(inline::Config {
        keepalive_timeout: Duration::from_millis(200),
        ..quick()
    });
    let mut s = connect(&t);
    assert!(closed(&mut s), "an idle connection was answered or kept");
    t.server.stop();
}

#[test]
fn the_only_connection_polls_for_its_next_request_then_blocks_as_before() {
    // A spin window of 5 ms: requests sent at once land in it; the pauses
    // below (30 ms, the 300 ms timeout) are far past it, where the thread
    // must be blocking on a blocking socket again.
    let t = start(inline::Config {
        spin: Duration::from_millis(5),
        keepalive_timeout: Duration::from_millis(300),
        ..quick()
    });
    let mut s = connect(&t);
    for i in 0..50 {
        write!(s, "GET /spin{i} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_answer(&mut s).body, format!("GET /spin{i}\n"));
    }
    // A request that starts inside the window and ends after it.
    s.write_all(b"GET /split HTTP/1.1\r\nHost: t\r\n").unwrap();
    thread::sleep(Duration::from_millis(30));
    s.write_all(b"\r\n").unwrap();
    assert_eq!(read_answer(&mut s).body, "GET /split\n");
    // Past the window: a socket left non-blocking would fail the next
    // read at once and close the connection.
    thread::sleep(Duration::from_millis(30));
    // Taken before the request: the server's keep-alive clock starts
    // after its answer, so the close comes at least 300 ms from here.
    let sent = Instant::now();
    s.write_all(b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s).body, "GET /later\n");
    assert!(closed(&mut s), "an idle connection was answered or kept");
    assert!(
        sent.elapsed() >= Duration::from_millis(290),
        "closed {:?} after the last request, before the keep-alive timeout",
        sent.elapsed()
    );
    t.server.stop();
}

#[test]
fn past_max_connections_the_accepting_thread_refuses() {
    let t = start(inline::Config {
        max_connections: 2,
        ..quick()
    });
    // Both busy (their handlers wait for bodies): none to make room.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&t);
            s.write_all(b"POST /wait HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    wait_until("both connections to be counted", || {
        t.open.load(Ordering::SeqCst) == 2 && t.echo.handled.lock().unwrap().len() == 2
    });
    let mut third = connect(&t);
    let a = read_answer(&mut third);
    assert_eq!(
        (a.status, a.body.as_str()),
        (503, "refused: TooManyConnections")
    );
    drop(held);
    wait_until("the held connections to close", || {
        t.open.load(Ordering::SeqCst) == 0
    });
    let mut again = connect(&t);
    again
        .write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut again).status, 200);
    drop(again);
    t.server.stop();
}

/// At the limit, the connection idle longest (between requests, or never
/// having sent one) is closed quietly to make room for a new one.
#[test]
fn at_the_limit_the_connection_idle_longest_makes_room() {
    let t = start(inline::Config {
        max_connections: 2,
        ..quick()
    });
    let mut oldest = connect(&t);
    oldest
        .write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut oldest).status, 200);
    let mut newer = connect(&t);
    newer
        .write_all(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut newer).status, 200);
    let mut third = connect(&t);
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut third).status, 200);
    assert!(closed(&mut oldest), "the connection idle longest is closed");
    newer
        .write_all(b"GET /still HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut newer).status, 200);
    drop((newer, third));
    t.server.stop();
}

/// Which connection is idle longest is what the client saw: one whose
/// answer it read first (or which it opened first and sent nothing) has
/// been idle longer than one it opened after. Repeated, as it was a race:
/// the server marked a connection idle, and noted since when, only after
/// its thread had written the answer (or, for a new one, once its thread
/// got to it), so a thread preempted there let the client open and use
/// another connection first, which was then closed in its stead.
#[test]
fn the_connection_idle_longest_is_the_one_the_client_left_first() {
    for round in 0..50 {
        let t = start(inline::Config {
            max_connections: 2,
            ..quick()
        });
        let mut oldest = connect(&t);
        assert_eq!(get(&mut oldest, "/first").status, 200);
        let mut newer = connect(&t);
        assert_eq!(get(&mut newer, "/second").status, 200);
        let mut third = connect(&t);
        assert_eq!(get(&mut third, "/third").status, 200);
        // The newer one first: were the oldest left open, `closed` would
        // wait for its keep-alive timeout.
        newer
            .write_all(b"GET /still HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            newer.read(&mut byte).unwrap(),
            1,
            "round {round}: the newer connection was closed to make room"
        );
        assert!(closed(&mut oldest), "round {round}");
        drop((newer, third));
        t.server.stop();

        // Connections that never sent a request: the first one opened.
        let t = start(inline::Config {
            max_connections: 2,
            ..quick()
        });
        // Each counted before the next: two accepting threads may take two
        // waiting connections in either order.
        let mut oldest = connect(&t);
        wait_until("the oldest counted", || t.open.load(Ordering::SeqCst) == 1);
        let mut newer = connect(&t);
        wait_until("both counted", || t.open.load(Ordering::SeqCst) == 2);
        let mut third = connect(&t);
        assert_eq!(get(&mut third, "/third").status, 200);
        newer
            .write_all(b"GET /still HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(
            newer.read(&mut byte).unwrap(),
            1,
            "round {round}: the newer unused connection was closed to make room"
        );
        assert!(closed(&mut oldest), "round {round}");
        drop((newer, third));
        t.server.stop();
    }
}

/// One client address holds at most `max_connections_per_client`: past
/// it, its own connection idle longest makes room, and with none idle it is
/// refused, while another address is served.
#[test]
fn one_client_address_holds_at_most_its_share() {
    let t = start(inline::Config {
        max_connections: 10,
        max_connections_per_client: 2,
        ..quick()
    });
    let mut idle = connect(&t);
    let mut busy = connect(&t);
    busy.write_all(b"POST /wait HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    wait_until("both counted, one busy", || {
        t.open.load(Ordering::SeqCst) == 2 && t.echo.handled.lock().unwrap().len() == 1
    });
    // A third from the same address: its idle one makes room.
    let mut third = connect(&t);
    third
        .write_all(b"POST /wait HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    assert!(closed(&mut idle), "the client's idle connection made room");
    wait_until("the third busy", || {
        t.echo.handled.lock().unwrap().len() == 2
    });
    // A fourth: none of the client's is idle now.
    let mut fourth = connect(&t);
    let a = read_answer(&mut fourth);
    assert_eq!(
        (a.status, a.body.as_str()),
        (503, "refused: TooManyConnections")
    );
    let held = vec![busy, third];
    // Another address (all of 127.0.0.0/8 is loopback on Linux) is served.
    let mut other = connect_from("127.0.0.2", &t);
    other
        .write_all(b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut other).status, 200);
    drop((held, other));
    t.server.stop();
}

/// A connection from `source`, a loopback address other than 127.0.0.1.
fn connect_from(source: &str, t: &TestServer) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&t.server.local_addr().into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

#[test]
fn a_panicking_handler_costs_one_request() {
    let t = start(quick());
    let mut s = connect(&t);
    s.write_all(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (500, Some("close")));
    let mut s = connect(&t);
    s.write_all(b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s).status, 200);
    drop(s);
    t.server.stop();
}

#[test]
fn head_answers_have_the_length_and_no_body() {
    let t = start(quick());
    let mut s = connect(&t);
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.contains("Content-Length: 8\r\n"), "{head}");
    // The next bytes are the GET's answer, not a body for the HEAD.
    assert_eq!(read_answer(&mut s).body, "GET /g\n");
    drop(s);
    t.server.stop();
}

#[test]
fn stop_closes_idle_connections_finishes_requests_in_hand_and_refuses_new_ones() {
    let t = start(quick());
    let (open_gate, gate) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    *t.echo.gate.lock().unwrap() = Some(gate);
    *t.echo.entered.lock().unwrap() = Some(entered_tx);
    let addr = t.server.local_addr();
    let mut idle = connect(&t);
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut idle).status, 200);
    let mut busy = connect(&t);
    busy.write_all(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    entered
        .recv_timeout(DEADLINE)
        .expect("the handler to be entered");

    let stopper = thread::spawn(move || t.server.stop());
    // The idle connection is closed at once, without an answer.
    assert!(closed(&mut idle));
    // `stop` waits for the request in hand, which is still answered and
    // told to close.
    assert!(
        !stopper.is_finished(),
        "stop returned with a request in hand"
    );
    open_gate.send(()).unwrap();
    let a = read_answer(&mut busy);
    assert_eq!((a.status, a.header("Connection")), (200, Some("close")));
    assert!(closed(&mut busy));
    let stopped = stopper.join().unwrap();
    assert_eq!(stopped.idle_closed, 1);
    // The listening socket is closed.
    assert!(
        TcpStream::connect(addr).is_err(),
        "a new connection was accepted after stop"
    );
    busy.shutdown(Shutdown::Both).ok();
}

#[test]
fn stop_wakes_the_accepting_threads_without_refusing_anyone() {
    // `stop` wakes the threads waiting in `accept` with connections of its
    // own. No client sent those, so none is answered `ShuttingDown`, which
    // the handler would log and count as a refused client.
    let t = start(quick());
    let mut stream = connect(&t);
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut stream).status, 200);
    assert!(closed(&mut stream));
    let echo = Arc::clone(&t.echo);
    t.server.stop();
    assert_eq!(*echo.refusals.lock().unwrap(), []);
}

#[test]
fn a_deferred_answer_is_written_by_the_answering_thread_in_order() {
    let t = start(quick());
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    // Keep-alive: answered from this thread, and the connection goes on.
    for i in 0..3 {
        write!(
            s,
            "POST /defer HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n{i}"
        )
        .unwrap();
        let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
        answer_text(answer, &text);
        let a = read_answer(&mut s);
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, format!("POST /defer\n{i}").as_str())
        );
        assert_eq!(a.header("Connection"), None);
        assert!(a.header("Date").is_some());
    }
    // Pipelined behind a deferred answer: a request is handled, and
    // answered, only after it.
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nPOST /defer HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nxGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
    assert_eq!(read_answer(&mut s).body, "GET /a\n");
    assert!(
        !t.echo.handled.lock().unwrap().contains(&"/b".to_owned()),
        "a request was handled before the deferred answer ahead of it"
    );
    answer_text(answer, &text);
    assert_eq!(read_answer(&mut s).body, "POST /defer\nx");
    assert_eq!(read_answer(&mut s).body, "GET /b\n");
    // HEAD: the length, no body.
    s.write_all(b"HEAD /defer HTTP/1.1\r\nHost: t\r\n\r\nGET /c HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, _) = deferred.recv_timeout(DEADLINE).unwrap();
    answer_text(answer, "12345");
    let mut head = [0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("GET /c\n") {
        let n = s.read(&mut head).unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&head[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.contains("Content-Length: 5\r\n"),
        "{got}"
    );
    assert!(
        !got.contains("12345"),
        "a body in the answer to HEAD: {got}"
    );
    // HTTP/1.0 with keep-alive keeps it; the last request closes.
    s.write_all(b"POST /defer HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
    answer_text(answer, &text);
    assert_eq!(read_answer(&mut s).header("Connection"), Some("keep-alive"));
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
    answer_text(answer, &text);
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (200, Some("close")));
    assert!(closed(&mut s));
    t.server.stop();
}

#[test]
fn an_answer_that_asks_to_close_closes_and_one_given_at_once_is_written_too() {
    let t = start(quick());
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    // Answered before the handler has even returned.
    let (to, from) = mpsc::channel();
    *t.echo.deferred.lock().unwrap() = Some(to);
    let answerer = thread::spawn(move || {
        let (answer, text) = from.recv_timeout(DEADLINE).unwrap();
        answer_text(answer, &text);
        let (answer, text) = from.recv_timeout(DEADLINE).unwrap();
        answer.answer(|response| {
            response.set_body(text.as_bytes());
            response.close_after();
        });
    });
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s).status, 200);
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (200, Some("close")));
    assert!(closed(&mut s));
    answerer.join().unwrap();
    drop(deferred);
    t.server.stop();
}

#[test]
fn a_deferred_answer_dropped_unanswered_is_a_500_and_a_handler_panic_cancels_it() {
    let t = start(quick());
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, _) = deferred.recv_timeout(DEADLINE).unwrap();
    drop(answer);
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (500, Some("close")));
    assert!(closed(&mut s));

    let mut s = connect(&t);
    s.write_all(b"POST /defer-panic HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (500, Some("close")));
    assert!(closed(&mut s));
    // Too late: dropped, nothing more is written.
    answer_text(answer, &text);
    t.server.stop();
}

#[test]
fn a_client_that_does_not_read_never_blocks_the_answering_thread() {
    // Longer than DEADLINE: a write that blocked on the client would fail
    // the test rather than time out and let it pass.
    let t = start(inline::Config {
        socket_timeout: DEADLINE * 2,
        ..quick()
    });
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, _) = deferred.recv_timeout(DEADLINE).unwrap();
    // Far more than the socket buffers on both sides hold.
    let big = "z".repeat(64 << 20);
    let (done, answered) = mpsc::channel();
    let answerer = thread::spawn(move || {
        answer_text(answer, &big);
        done.send(()).unwrap();
    });
    answered
        .recv_timeout(DEADLINE)
        .expect("answer() to return while the client reads nothing");
    answerer.join().unwrap();
    // The connection's thread writes the rest, then closes.
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.body.len()), (200, 64 << 20));
    assert!(closed(&mut s));
    t.server.stop();
}

#[test]
fn stop_waits_for_a_released_answer_then_closes_its_connection() {
    let t = start(quick());
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
    // Released: the connection's thread is reading again by now, or soon.
    let server = t.server;
    let stopper = thread::spawn(move || server.stop());
    assert!(!stopper.is_finished(), "stop returned with an answer owed");
    answer_text(answer, &text);
    let a = read_answer(&mut s);
    assert_eq!(a.body, "POST /defer\n");
    assert!(closed(&mut s));
    stopper.join().unwrap();
}

#[test]
fn a_connection_whose_deferred_answer_was_written_is_idle_for_stop() {
    // Longer than DEADLINE: a connection left busy after its answer would
    // keep `stop` (and the read below) waiting past it.
    let t = start(inline::Config {
        keepalive_timeout: DEADLINE * 2,
        ..quick()
    });
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
    answer_text(answer, &text);
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (200, None));
    // Closed by `stop` (or, if it came between the write and the mark, by
    // the answerer), long before the keep-alive timeout.
    let stopped = t.server.stop();
    assert!(stopped.idle_closed <= 1);
    assert!(closed(&mut s), "the connection stayed open after stop");
}

#[test]
fn an_answer_slower_than_the_keep_alive_timeout_keeps_the_connection() {
    let keep_alive = Duration::from_millis(150);
    let t = start(inline::Config {
        keepalive_timeout: keep_alive,
        ..quick()
    });
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    s.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();
    // The answer takes longer than the keep-alive timeout (a slow
    // commit): the connection's idle clock must not run out meanwhile.
    thread::sleep(keep_alive * 4);
    answer_text(answer, &text);
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.header("Connection")), (200, None));
    // Kept open: the next request on it is answered.
    s.write_all(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s).body, "GET /after\n");
    t.server.stop();
}

/// Every connection is parked between requests (see `inline/lot.rs`).
fn parking() -> inline::Config {
    inline::Config {
        park_above: 0,
        ..quick()
    }
}

fn get(stream: &mut TcpStream, url: &str) -> Answer {
    write!(stream, "GET {url} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_answer(stream)
}

#[test]
fn parked_connections_are_served_closed_when_idle_and_closed_by_stop() {
    let t = start(inline::Config {
        keepalive_timeout: Duration::from_millis(300),
        ..parking()
    });
    let mut streams: Vec<TcpStream> = (0..3).map(|_| connect(&t)).collect();
    for round in 0..3 {
        for (i, s) in streams.iter_mut().enumerate() {
            let a = get(s, &format!("/r{round}c{i}"));
            assert_eq!(
                (a.status, a.body.as_str()),
                (200, format!("GET /r{round}c{i}\n").as_str())
            );
        }
    }
    // Parked connections that send nothing are closed quietly after the
    // keep-alive timeout, like those that hold their threads.
    for s in &mut streams {
        assert!(closed(s), "a parked idle connection was answered or kept");
    }
    wait_until("the closed connections are no longer counted", || {
        t.open.load(Ordering::SeqCst) == 0
    });
    t.server.stop();

    // Parked connections are idle for `stop`: closed at once.
    let t = start(parking());
    let mut streams: Vec<TcpStream> = (0..2).map(|_| connect(&t)).collect();
    for s in &mut streams {
        assert_eq!(get(s, "/again").status, 200);
    }
    let stopped = t.server.stop();
    assert_eq!(stopped.idle_closed, 2);
    for s in &mut streams {
        assert!(closed(s), "stop left a parked connection open");
    }
}

#[test]
fn a_parked_connection_is_served_while_the_lot_threads_are_held() {
    let t = start(parking());
    let (open_gate, gate) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    *t.echo.gate.lock().unwrap() = Some(gate);
    *t.echo.entered.lock().unwrap() = Some(entered_tx);
    let mut held = connect(&t);
    let mut other = connect(&t);
    // Both parked after a first answer; then one holds the thread that
    // took it up, in the handler.
    assert_eq!(get(&mut held, "/first").status, 200);
    assert_eq!(get(&mut other, "/first").status, 200);
    held.write_all(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    entered
        .recv_timeout(DEADLINE)
        .expect("the handler to be entered");
    // The other connection is answered while that thread is held (the
    // lot starts another thread when none is free to watch).
    for i in 0..3 {
        assert_eq!(get(&mut other, &format!("/other{i}")).status, 200);
    }
    open_gate.send(()).unwrap();
    assert_eq!(read_answer(&mut held).status, 200);
    assert_eq!(get(&mut held, "/after").status, 200);
    t.server.stop();
}

#[test]
fn deferred_answers_on_parked_connections_reach_the_thread_that_serves_them() {
    let t = start(parking());
    let deferred = t.take_deferred();
    let mut s = connect(&t);
    for i in 0..5 {
        assert_eq!(get(&mut s, &format!("/plain{i}")).status, 200);
        write!(s, "GET /defer{i} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let (answer, text) = deferred.recv_timeout(DEADLINE).expect("a deferred request");
        answer_text(answer, &text);
        let a = read_answer(&mut s);
        assert_eq!((a.status, a.body), (200, format!("GET /defer{i}\n")));
    }
    t.server.stop();
}

#[test]
fn stop_closes_many_parked_connections_and_finishes_those_taken_up_again() {
    let t = start(parking());
    let (open_gate, gate) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    *t.echo.gate.lock().unwrap() = Some(gate);
    *t.echo.entered.lock().unwrap() = Some(entered_tx);
    let deferred = t.take_deferred();
    let addr = t.server.local_addr();
    // Each answered once, so parked (or about to park) between requests.
    let mut idle: Vec<TcpStream> = (0..32).map(|_| connect(&t)).collect();
    for (i, s) in idle.iter_mut().enumerate() {
        assert_eq!(get(s, &format!("/first{i}")).status, 200);
    }
    // Two more, parked and then taken up again by lot threads: one held
    // in the handler, one whose deferred answer is owed.
    let mut busy = connect(&t);
    let mut owed = connect(&t);
    assert_eq!(get(&mut busy, "/first").status, 200);
    assert_eq!(get(&mut owed, "/first").status, 200);
    busy.write_all(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    entered
        .recv_timeout(DEADLINE)
        .expect("the handler to be entered");
    owed.write_all(b"POST /defer HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (answer, text) = deferred.recv_timeout(DEADLINE).unwrap();

    let server = t.server;
    let stopper = thread::spawn(move || server.stop());
    // The parked ones are closed at once, without an answer.
    for s in &mut idle {
        assert!(closed(s), "stop left a parked connection open");
    }
    assert!(!stopper.is_finished(), "stop returned with an answer owed");
    // The owed answer is still written, and its connection closed.
    answer_text(answer, &text);
    let a = read_answer(&mut owed);
    assert_eq!(
        (a.body.as_str(), a.header("Connection")),
        ("POST /defer\n", Some("close"))
    );
    assert!(closed(&mut owed));
    assert!(
        !stopper.is_finished(),
        "stop returned with a request in hand"
    );
    // So is the one in the handler.
    open_gate.send(()).unwrap();
    let a = read_answer(&mut busy);
    assert_eq!((a.status, a.header("Connection")), (200, Some("close")));
    assert!(closed(&mut busy));
    let stopped = stopper.join().unwrap();
    assert_eq!(stopped.idle_closed, idle.len());
    assert!(
        TcpStream::connect(addr).is_err(),
        "a new connection was accepted after stop"
    );
}
