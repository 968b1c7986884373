//! Shutdown: in-process through `Running::shutdown`, and the real binary
//! through SIGTERM and SIGINT. Every event answered 202 must be applied, or
//! counted as not applied when the drain deadline passes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::{DEADLINE, TestServer, agent, post_event, test_config, wait_until};

#[test]
fn idle_service_shuts_down_at_once() {
    let server = TestServer::start(test_config());
    let report = server.shutdown();
    assert_eq!(
        (report.accepted, report.applied, report.not_applied),
        (0, 0, 0)
    );
    assert!(report.drained);
    // Generous bound: an idle shutdown does no waiting at all.
    assert!(report.elapsed < Duration::from_secs(1), "{report}");
}

#[test]
fn shutdown_under_load_applies_every_accepted_event() {
    let mut config = test_config();
    config.workers = 5;
    let server = TestServer::start(config);
    let base = server.base.clone();
    let accepted = AtomicU64::new(0);

    // Set only if the test fails before the shutdown (see StopOnDrop).
    let abandoned = AtomicBool::new(false);
    let report = thread::scope(|scope| {
        let _abandon = common::StopOnDrop(&abandoned);
        let clients: Vec<_> = (0..6)
            .map(|c| {
                let (base, accepted, abandoned) = (base.clone(), &accepted, &abandoned);
                scope.spawn(move || {
                    let agent = agent();
                    let mut refused = 0;
                    for i in 0.. {
                        if abandoned.load(Ordering::SeqCst) {
                            return;
                        }
                        let body =
                            format!(r#"{{"product_id":"p{}","stock":{i}}}"#, i % 50 + c * 50);
                        let request = agent
                            .post(format!("{base}/events"))
                            .header("Content-Type", "application/json")
                            .send(body.as_str());
                        match request {
                            Ok(r) if r.status() == 202 => {
                                accepted.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(mut r) => {
                                let body = r.body_mut().read_to_string().unwrap_or_default();
                                assert_eq!(r.status(), 503, "{body}");
                                assert!(body.contains("shutting_down"), "{body}");
                                return;
                            }
                            // Connection refused or reset: the listener is gone.
                            Err(_) => {
                                refused += 1;
                                if refused > 3 {
                                    return;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        wait_until("clients to get 500 events accepted", || {
            (accepted.load(Ordering::SeqCst) >= 500).then_some(())
        });
        let report = server.running.shutdown().expect("clean shutdown");
        for client in clients {
            client.join().expect("client thread");
        }
        report
    });
    assert!(report.drained, "{report}");
    assert_eq!(report.accepted, accepted.load(Ordering::SeqCst), "{report}");
    assert_eq!(report.applied, report.accepted, "{report}");
    assert_eq!(report.not_applied, 0);
}

#[test]
fn posts_during_the_drain_get_503_shutting_down_and_gets_still_work() {
    let server = TestServer::start(test_config());
    let paused = server.running.pause_workers();
    for i in 0..3 {
        let r = server.post_event(&format!(r#"{{"product_id":"d","stock":{i}}}"#));
        assert_eq!(r.status, 202);
    }
    let agent = server.agent.clone();
    let base = server.base.clone();
    let TestServer { running, .. } = server;
    let (report_tx, report_rx) = mpsc::channel();
    thread::spawn(move || report_tx.send(running.shutdown()));

    // Shutdown closes the intake and then waits for the paused workers.
    // A POST that comes before the close is accepted (and must be applied
    // like the others): count those.
    let mut late_accepted = 0;
    let reply = wait_until("POST to be refused with shutting_down", || {
        let r = post_event(&agent, &base, r#"{"product_id":"late","stock":1}"#);
        if r.status == 202 {
            late_accepted += 1;
        }
        (r.status == 503).then_some(r)
    });
    reply.assert_problem(503, "shutting_down");
    assert_eq!(reply.header("connection"), Some("close"));
    let mut get = agent
        .get(format!("{base}/products/d"))
        .call()
        .expect("GET during drain");
    // Nothing applied yet (paused), so the product is still unknown.
    assert_eq!(get.status(), 404);
    let _ = get.body_mut().read_to_string();

    drop(paused);
    let report = report_rx
        .recv_timeout(DEADLINE)
        .expect("shutdown finishes once the workers resume")
        .expect("clean shutdown");
    assert_eq!(
        (report.accepted, report.applied, report.not_applied),
        (3 + late_accepted, 3 + late_accepted, 0)
    );
    assert!(report.drained);
}

#[test]
fn past_the_deadline_unapplied_events_are_counted() {
    let mut config = test_config();
    config.workers = 2;
    config.shutdown_timeout = Duration::from_millis(200);
    let server = TestServer::start(config);
    let _paused = server.running.pause_workers();
    for i in 0..10 {
        let r = server.post_event(&format!(r#"{{"product_id":"x{i}","price":1}}"#));
        assert_eq!(r.status, 202);
    }
    let report = server.running.shutdown().expect("clean shutdown");
    assert!(!report.drained, "{report}");
    assert_eq!(report.accepted, 10);
    assert_eq!(report.applied, 0, "paused workers applied nothing");
    assert_eq!(report.not_applied, 10, "{report}");
    assert!(report.elapsed >= Duration::from_millis(200), "{report}");
}

fn graceful_signal_drains_and_exits_zero(signal: &str) {
    let mut binary = Binary::start(&[("WORKERS", "3"), ("SHUTDOWN_TIMEOUT", "10")]);
    let agent = agent();
    let base = binary.base();
    for i in 0..200 {
        let r = post_event(
            &agent,
            &base,
            &format!(r#"{{"product_id":"b{}","stock":{i}}}"#, i % 7),
        );
        assert_eq!(r.status, 202, "{}", r.body);
    }
    binary.signal(signal);
    assert_eq!(binary.wait_exit(), 0, "log:\n{}", binary.lines.join("\n"));
    let summary = binary.wait_for_log("shutdown complete:");
    assert!(
        summary.contains("accepted=200 applied=200 panicked=0 not_applied=0 drained=true"),
        "{summary}"
    );
    // The listener is gone.
    assert!(
        TcpStream::connect(binary.addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    graceful_signal_drains_and_exits_zero("TERM");
}

#[test]
fn sigint_drains_and_exits_zero() {
    graceful_signal_drains_and_exits_zero("INT");
}

#[test]
fn idle_binary_exits_fast_on_sigterm() {
    let mut binary = Binary::start(&[]);
    let sent = Instant::now();
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
    let took = sent.elapsed();
    // Generous bound for a shared machine; the work itself takes ~1 ms.
    assert!(took < Duration::from_secs(2), "idle shutdown took {took:?}");
    binary.wait_for_log("shutdown complete: accepted=0 applied=0");
}

#[test]
fn a_second_signal_exits_at_once_with_a_nonzero_code() {
    let mut binary = Binary::start(&[]);
    // Hold a connection's thread inside a body read: it asks for the body
    // with "100 Continue" and then waits for bytes that never come. The
    // first SIGTERM's shutdown then waits for that request to end.
    let mut stuck = TcpStream::connect(binary.addr).expect("connect");
    stuck.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stuck
        .write_all(
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
        )
        .expect("send headers");
    let mut interim = [0u8; 25];
    stuck.read_exact(&mut interim).expect("100 Continue");
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );

    binary.signal("TERM");
    binary.wait_for_log("shutdown: intake closed");
    binary.signal("TERM");
    let code = binary.wait_exit();
    assert_eq!(code, 130, "log:\n{}", binary.lines.join("\n"));
    assert!(
        binary.lines.iter().any(|l| l.contains("second signal")),
        "log:\n{}",
        binary.lines.join("\n")
    );
}

#[test]
fn bad_settings_stop_the_binary_with_exit_code_2_and_one_clear_line() {
    for (var, value) in [
        ("WORKERS", "0"),
        ("QUEUE_SIZE", "0"),
        ("PORT", "http"),
        ("SHUTDOWN_TIMEOUT", "-5"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_product-update-service"))
            .env_clear()
            .env(var, value)
            .output()
            .expect("run the binary");
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var) && stderr.contains(value), "{stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[test]
fn help_prints_every_setting() {
    let output = Command::new(env!("CARGO_BIN_EXE_product-update-service"))
        .arg("--help")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for name in [
        "PORT",
        "BIND_ADDR",
        "WORKERS",
        "QUEUE_SIZE",
        "SHUTDOWN_TIMEOUT",
        "MAX_BODY_BYTES",
        "MAX_CONNECTIONS",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(name),
            "--help does not mention {name}:\n{help}"
        );
    }
    let retired = help
        .split_once("No longer used:")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert!(retired.contains("HTTP_THREADS"), "{help}");
}

/// A setting earlier versions had: the service starts anyway, as if it
/// were unset, and says once that it is not used and why.
#[test]
fn a_retired_setting_is_a_warning_not_an_error() {
    let mut binary = Binary::start(&[("HTTP_THREADS", "8")]);
    binary.wait_for_log("HTTP_THREADS is no longer used");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0, "log:\n{}", binary.lines.join("\n"));
}

#[test]
fn port_in_use_is_a_clear_startup_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_product-update-service"))
        .env_clear()
        .env("PORT", &port)
        .env("BIND_ADDR", "127.0.0.1")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("set PORT to a free port"), "{stderr}");
}

#[test]
fn a_shutdown_that_no_client_sees_logs_no_refusal() {
    // The HTTP server wakes its threads waiting in `accept` with
    // connections of its own: they are no clients, and get no 503 (which
    // would be logged, and counted in http_rejections_total).
    let mut binary = Binary::start(&[]);
    let reply = common::read_reply(agent().get(format!("{}/healthz", binary.base())).call());
    assert_eq!(reply.status, 200);
    binary.wait_for_log("GET /healthz 200");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
    assert!(
        binary.lines.iter().any(|l| l.contains("shutdown complete")),
        "{:?}",
        binary.lines
    );
    let refused: Vec<_> = binary
        .lines
        .iter()
        .filter(|l| l.contains(" 503 "))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[test]
fn one_update_can_be_traced_by_its_request_id_from_access_log_to_worker() {
    let mut binary = Binary::start(&[("RUST_LOG", "debug")]);
    let reply = common::read_reply(
        agent()
            .post(format!("{}/events", binary.base()))
            .header("Content-Type", "application/json")
            .header("X-Request-Id", "trace-me-42")
            .send(r#"{"product_id":"traced","price":1.25}"#),
    );
    assert_eq!(reply.status, 202);
    let applied = binary.wait_for_log("request_id=trace-me-42 fields_written");
    assert!(applied.contains("product_id=\"traced\""), "{applied}");
    let access = binary.wait_for_log("POST /events 202");
    assert!(access.contains("request_id=trace-me-42"), "{access}");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut binary = Binary::start(&[("LOG_FORMAT", "json")]);
    assert_eq!(
        common::read_reply(agent().get(format!("{}/healthz", binary.base())).call()).status,
        200
    );
    binary.wait_for_log("GET /healthz 200");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
    assert!(binary.lines.len() >= 4, "{:?}", binary.lines);
    for line in &binary.lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "{key} missing: {line}");
        }
    }
}

/// Clients that hold the shutdown up as long as they can (ones that never
/// read their answers, ones that send a body a few bytes at a time, and
/// `min_seq` readers waiting for a seq that never comes) cannot keep the
/// process past SHUTDOWN_TIMEOUT and a second: their requests are cut
/// short at the deadline, and every acknowledged event is still applied.
#[test]
fn slow_clients_cannot_hold_the_shutdown_past_its_deadline() {
    let timeout = Duration::from_secs(2);
    let mut binary = Binary::start(&[
        ("SHUTDOWN_TIMEOUT", "2"),
        ("SOCKET_TIMEOUT", "60"),
        ("BODY_TIMEOUT", "60"),
        ("MAX_CONNECTIONS_PER_CLIENT", "1000"),
    ]);
    let addr = binary.addr;
    let agent = agent();
    let base = binary.base();
    for i in 0..50 {
        let r = post_event(
            &agent,
            &base,
            &format!(r#"{{"product_id":"p{}","stock":{i}}}"#, i % 5),
        );
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // Readers that never read: many large answers asked for at once.
    let readers: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            let asks = "GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n".repeat(300);
            s.write_all(asks.as_bytes()).expect("send");
            s
        })
        .collect();
    // Bodies that stall after a few bytes.
    let bodies: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"product_id\":")
                .expect("send");
            s
        })
        .collect();
    // Readers waiting for a seq that will never be applied.
    let waiters: Vec<thread::JoinHandle<()>> = (0..10)
        .map(|_| {
            let base = base.clone();
            thread::spawn(move || {
                let _ = common::agent()
                    .get(format!("{base}/products/p1?min_seq=999999&wait=5"))
                    .call();
            })
        })
        .collect();
    wait_until("every slow client to be held", || {
        let metrics = agent
            .get(format!("{base}/metrics"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        metrics
            .lines()
            .any(|l| l == "min_seq_readers_waiting 10")
            .then_some(())
    });
    let started = Instant::now();
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
    let took = started.elapsed();
    assert!(
        took <= timeout + Duration::from_secs(1),
        "the shutdown took {took:?} with SHUTDOWN_TIMEOUT={timeout:?}"
    );
    let summary = binary
        .lines
        .iter()
        .find(|l| l.contains("accepted=50 applied=50"))
        .unwrap_or_else(|| panic!("no summary with every event applied: {:#?}", binary.lines));
    assert!(summary.contains("not_applied=0"), "{summary}");
    drop((readers, bodies));
    for waiter in waiters {
        waiter.join().expect("waiter");
    }
}
