//! The service behind nginx (Debian's nginx-light): a pipelined set of
//! tricky requests sent to nginx reaches the service as exactly the
//! requests nginx forwarded, no more, no fewer, none split or merged. That
//! is what makes request smuggling impossible through this pair: the two
//! agree on where each request ends.
//!
//! A recorder between nginx and the service keeps every byte nginx sends
//! upstream and every byte the service answers. The requests nginx sent
//! are parsed with `httparse` (an independent parser) and the body framing
//! they declare; each carries an `X-Request-Id`, which the service echoes
//! in its answer. The ids of the requests nginx forwarded must be, in
//! order, the ids of the answers the service gave.
//!
//! nginx must be installed (`apt-get install nginx-light`): without it the
//! test fails, it is never skipped.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use common::{DEADLINE, TestServer, scratch_dir, test_config, wait_until};

/// What the recorder saw on each connection from nginx: the bytes nginx
/// sent, and the bytes the service answered.
type Recorded = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// Accepts nginx's upstream connections on `listener` and relays each to
/// `service`, keeping both directions.
fn start_recorder(listener: TcpListener, service: SocketAddr) -> Recorded {
    let recorded: Recorded = Arc::default();
    let all = Arc::clone(&recorded);
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let all = Arc::clone(&all);
            thread::spawn(move || relay(client, service, &all));
        }
    });
    recorded
}

fn relay(client: TcpStream, service: SocketAddr, recorded: &Recorded) {
    let Ok(upstream) = TcpStream::connect(service) else {
        return;
    };
    let index = {
        let mut all = recorded.lock().unwrap();
        all.push((Vec::new(), Vec::new()));
        all.len() - 1
    };
    let pump =
        move |mut from: TcpStream, mut to: TcpStream, upstream_side: bool, recorded: Recorded| {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        {
                            let mut all = recorded.lock().unwrap();
                            let side = if upstream_side {
                                &mut all[index].0
                            } else {
                                &mut all[index].1
                            };
                            side.extend_from_slice(&buf[..n]);
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        };
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let r = Arc::clone(recorded);
    let up = thread::spawn(move || pump(client, upstream, true, r));
    pump(u2, c2, false, Arc::clone(recorded));
    let _ = up.join();
}

/// nginx, run as a child process with its own config in `dir`.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed: apt-get install nginx-light (this test needs it)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_nginx(dir: &Path, upstream: SocketAddr) -> Nginx {
    let port = free_port();
    let config = format!(
        "daemon off;
master_process off;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream service {{ server {upstream}; keepalive 2; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://service;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host service;
        }}
    }}
}}
",
        dir = dir.display()
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config).expect("write nginx.conf");
    let child = Command::new(nginx_binary())
        .arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut nginx = Nginx { child, addr };
    wait_until("nginx to listen", || {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!(
                "nginx exited ({status}): {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        TcpStream::connect(addr).ok().map(|_| ())
    });
    nginx.addr = addr;
    nginx
}

/// The requests in `bytes` as an independent parser sees them: each one's
/// `X-Request-Id`, its body framed by `Content-Length` or chunked.
fn request_ids(mut bytes: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let head = match request.parse(bytes).expect("nginx sent a valid request") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("a partial request from nginx"),
        };
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        ids.push(header("x-request-id").unwrap_or_default());
        let mut rest = &bytes[head..];
        if let Some(length) = header("content-length") {
            let length: usize = length.trim().parse().expect("a length");
            rest = &rest[length..];
        } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let line_end = rest
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("chunk size");
                let size_text = String::from_utf8_lossy(&rest[..line_end]);
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("hex size");
                rest = &rest[line_end + 2..];
                if size == 0 {
                    let end = rest
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .expect("trailer end");
                    rest = &rest[end + 2..];
                    break;
                }
                rest = &rest[size + 2..];
            }
        }
        bytes = rest;
    }
    ids
}

/// The `X-Request-Id` of each answer in `bytes` (every answer of the
/// service has a `Content-Length`).
fn answer_ids(mut bytes: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(bytes).expect("a valid answer") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => break,
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        ids.push(header("x-request-id").unwrap_or_default());
        let length: usize = header("content-length").map_or(0, |l| l.parse().expect("length"));
        bytes = &bytes[head + length..];
    }
    ids
}

/// Requests that are tricky but valid (chunked with an extension and a
/// trailer, bare LF line ends, odd spacing), pipelined on one connection to
/// nginx, each with its own `X-Request-Id`.
fn tricky_requests() -> Vec<u8> {
    let event = r#"{"product_id":"n1","stock":1}"#;
    let mut out = Vec::new();
    let mut add = |id: usize, text: String| {
        out.extend_from_slice(text.replace("{ID}", &format!("rq-{id}")).as_bytes());
    };
    add(
        1,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-Id: {ID}\r\n\r\n".to_owned(),
    );
    add(
        2,
        format!(
            "POST /events HTTP/1.1\r\nHost: a\r\nX-Request-Id: {{ID}}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{event}",
            event.len()
        ),
    );
    // Chunked, with an extension and a trailer.
    add(
        3,
        format!(
            "POST /events HTTP/1.1\r\nHost: a\r\nX-Request-Id: {{ID}}\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{event}\r\n0\r\nX-Trailer: t\r\n\r\n",
            event.len()
        ),
    );
    // Bare LF line ends.
    add(
        4,
        "GET /products/n1 HTTP/1.1\nHost: a\nX-Request-Id: {ID}\n\n".to_owned(),
    );
    // A header with an empty value and odd spacing.
    add(
        5,
        "GET /readyz HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Request-Id:   {ID}  \r\n\r\n".to_owned(),
    );
    add(
        6,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-Id: {ID}\r\nConnection: close\r\n\r\n"
            .to_owned(),
    );
    out
}

/// Batches with requests nginx may refuse or rewrite (conflicting
/// lengths, a length and a coding, an obsolete line folding, a bare CR,
/// a bare LF), each among ordinary ones, pipelined. Whatever nginx does
/// with each (refuse it and close, drop a field, forward it), what it
/// forwards must be what the service answers.
fn tricky_batches() -> Vec<Vec<u8>> {
    let ok = |id: &str| format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-Id: {id}\r\n\r\n");
    let last = |id: &str| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
        )
    };
    [
        "POST /events HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad-1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /events HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad-2\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad-3\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad-4\rX-Bare: cr\r\n\r\n",
        "GET /healthz HTTP/1.1\nHost: a\nX-Request-Id: bad-5\nX-Bare: lf\n\n",
        "POST /events HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad-6\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST /events HTTP/1.0\r\nHost: a\r\nX-Request-Id: bad-7\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ]
    .iter()
    .enumerate()
    .map(|(n, tricky)| format!("{}{tricky}{}", ok(&format!("before-{n}")), last(&format!("after-{n}"))).into_bytes())
    .collect()
}

/// For each upstream connection so far: the request ids nginx forwarded
/// on it, and the ones the service answered on it.
fn recorded_ids(recorded: &Recorded) -> Vec<(Vec<String>, Vec<String>)> {
    let recorded = recorded.lock().unwrap().clone();
    recorded
        .iter()
        .map(|(to_service, from_service)| (request_ids(to_service), answer_ids(from_service)))
        .collect()
}

fn send_and_read_all(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect to nginx");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(bytes).expect("send");
    let mut out = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading nginx's answers: {e} after {:?}", started.elapsed()),
        }
    }
    out
}

#[test]
fn nginx_in_front_forwards_exactly_the_requests_the_service_answers() {
    let server = TestServer::start(test_config());
    let recorder_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let recorder_addr = recorder_listener.local_addr().unwrap();
    let recorded = start_recorder(recorder_listener, server.running.local_addr());
    let dir = scratch_dir("nginx");
    let nginx = start_nginx(&dir, recorder_addr);

    let answers = send_and_read_all(nginx.addr, &tricky_requests());
    let statuses: Vec<&str> = std::str::from_utf8(&answers)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("HTTP/1."))
        .collect();
    assert_eq!(statuses.len(), 6, "nginx's answers: {statuses:?}");
    let mut clean: Vec<String> = recorded_ids(&recorded)
        .into_iter()
        .flat_map(|(forwarded, _)| forwarded)
        .collect();
    clean.sort();
    let expected: Vec<String> = (1..=6).map(|i| format!("rq-{i}")).collect();
    assert_eq!(
        clean, expected,
        "what nginx forwarded of the ordinary requests"
    );
    for batch in tricky_batches() {
        send_and_read_all(nginx.addr, &batch);
    }
    drop(nginx);

    let connections = recorded_ids(&recorded);
    let forwarded: usize = connections.iter().map(|(f, _)| f.len()).sum();
    assert!(
        forwarded > expected.len() + 7,
        "nginx forwarded only {connections:?}"
    );
    for (forwarded, answered) in &connections {
        assert_eq!(
            answered, forwarded,
            "what the service answered on one upstream connection, against what nginx forwarded on it"
        );
    }
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
