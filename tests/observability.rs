//! Operability endpoints: `/healthz`, `/readyz`, `/metrics`.

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;

use common::{DEADLINE, TestServer, test_config, wait_until};
use product_update_service::Config;

#[test]
fn healthz_is_ok() {
    let server = TestServer::start(test_config());
    let reply = server.get("/healthz");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body, "{\"status\":\"ok\"}\n");
    server.shutdown();
}

#[test]
fn readyz_flips_to_503_as_soon_as_a_drain_starts_while_healthz_stays_ok() {
    let server = TestServer::start(test_config());
    assert_eq!(server.get("/readyz").body, "{\"status\":\"ready\"}\n");
    // Keep the drain going (paused workers, one queued event) while we look.
    let paused = server.running.pause_workers();
    assert_eq!(
        server.post_event(r#"{"product_id":"a","stock":1}"#).status,
        202
    );
    let (agent, base) = (server.agent.clone(), server.base.clone());
    let TestServer { running, .. } = server;
    let (report_tx, report_rx) = mpsc::channel();
    thread::spawn(move || report_tx.send(running.shutdown()));

    let get = |path: &str| common::read_reply(agent.get(format!("{base}{path}")).call());
    let not_ready = wait_until("readyz to say not ready", || {
        let r = get("/readyz");
        (r.status == 503).then_some(r)
    });
    let body = not_ready.assert_problem(503, "not_ready");
    assert_eq!(body["reason"], "draining");
    assert_eq!(get("/healthz").status, 200, "liveness holds while draining");

    drop(paused);
    let report = report_rx
        .recv_timeout(DEADLINE)
        .expect("shutdown finishes")
        .expect("clean shutdown");
    assert_eq!((report.accepted, report.applied), (1, 1));
}

#[test]
fn readyz_is_503_while_the_queue_is_above_its_high_water_mark() {
    let server = TestServer::start(Config {
        workers: 1,
        queue_size: 10,
        ..test_config()
    });
    let paused = server.running.pause_workers();
    // The worker may hold one event; the queue then holds the rest.
    for i in 0..10 {
        let r = server.post_event(&format!(r#"{{"product_id":"q{i}","stock":1}}"#));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    wait_until("9 or more events queued", || {
        (server.stats().queue_depth >= 9).then_some(())
    });
    let body = server.get("/readyz").assert_problem(503, "not_ready");
    assert_eq!(body["reason"], "queue_above_high_water");
    drop(paused);
    server.wait_applied();
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(server.shutdown().applied, 10);
}

/// Checks every line of a text exposition (format 0.0.4) and returns the
/// samples by their full name with labels.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_metric_name(name) && !help.is_empty(), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unknown type: {line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line: {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("sample: series value");
            let name = series.split('{').next().expect("name");
            assert!(is_metric_name(name), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(family), "sample before its TYPE: {line}");
            if let Some(labels) = series.strip_prefix(name)
                && !labels.is_empty()
            {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(is_metric_name(k), "{line}");
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
            }
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate: {line}"
            );
        }
    }
    samples
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn metrics_follow_the_exposition_format_and_count_what_happened() {
    let server = TestServer::start(test_config());
    for i in 0..3 {
        let r = server.post_event(&format!(r#"{{"product_id":"m{i}","price":1.5}}"#));
        assert_eq!(r.status, 202);
    }
    assert_eq!(
        server
            .post_event(r#"{"product_id":"m0","price":-1}"#)
            .status,
        400
    );
    assert_eq!(
        server.post_event(r#"{"product_id":"m0","stok":1}"#).status,
        400
    );
    let r = common::read_reply(
        server
            .agent
            .post(server.url("/events"))
            .header("Content-Type", "text/plain")
            .send("x"),
    );
    assert_eq!(r.status, 415);
    server.wait_applied();
    assert_eq!(server.get("/products/m1").status, 200);
    assert_eq!(server.get("/products/none").status, 404);

    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = parse_exposition(&reply.body);
    let get = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in:\n{}", reply.body))
    };
    assert_eq!(get("events_accepted_total"), 3.0);
    assert_eq!(get("events_applied_total"), 3.0);
    assert_eq!(get(r#"events_rejected_total{reason="validation"}"#), 2.0);
    assert_eq!(
        get(r#"events_rejected_total{reason="unsupported_type"}"#),
        1.0
    );
    assert_eq!(get(r#"events_rejected_total{reason="too_large"}"#), 0.0);
    assert_eq!(get(r#"events_rejected_total{reason="queue_full"}"#), 0.0);
    assert_eq!(get(r#"events_rejected_total{reason="shutting_down"}"#), 0.0);
    assert_eq!(get("worker_panics_total"), 0.0);
    assert_eq!(get("stale_field_writes_skipped_total"), 0.0);
    assert_eq!(get("queue_depth"), 0.0);
    assert_eq!(get("queue_capacity"), 10_000.0);
    assert_eq!(get("workers"), 4.0);
    assert_eq!(get("products"), 3.0);
    assert_eq!(
        get(r#"http_requests_total{route="/events",method="POST",status="2xx"}"#),
        3.0
    );
    assert_eq!(
        get(r#"http_requests_total{route="/events",method="POST",status="4xx"}"#),
        3.0
    );
    assert_eq!(
        get(r#"http_requests_total{route="/products/{id}",method="GET",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"http_requests_total{route="/products/{id}",method="GET",status="4xx"}"#),
        1.0
    );
    // Eight requests answered before this scrape; each one observed once.
    assert_eq!(get("http_request_duration_seconds_count"), 8.0);
    assert_eq!(
        get(r#"http_request_duration_seconds_bucket{le="+Inf"}"#),
        8.0
    );
    assert_eq!(get("queue_wait_seconds_count"), 3.0);
    assert!(get("process_start_time_seconds") > 1.7e9);

    // The scrape itself is counted by the next one.
    let again = parse_exposition(&server.get("/metrics").body);
    assert_eq!(
        again[r#"http_requests_total{route="/metrics",method="GET",status="2xx"}"#],
        1.0
    );
    server.shutdown();
}

#[test]
fn queue_full_rejections_are_counted() {
    let server = TestServer::start(Config {
        workers: 1,
        queue_size: 2,
        ..test_config()
    });
    let paused = server.running.pause_workers();
    let mut accepted: u32 = 0;
    let mut full: u32 = 0;
    for i in 0..10 {
        let r = server.post_event(&format!(r#"{{"product_id":"s","price":{i}}}"#));
        match r.status {
            202 => accepted += 1,
            503 => full += 1,
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(full > 0, "the queue never filled");
    drop(paused);
    server.wait_applied();
    let m = parse_exposition(&server.get("/metrics").body);
    assert_eq!(
        m[r#"events_rejected_total{reason="queue_full"}"#],
        f64::from(full)
    );
    assert_eq!(m["events_accepted_total"], f64::from(accepted));
    assert_eq!(server.shutdown().applied, u64::from(accepted));
}

#[test]
fn operability_routes_refuse_other_methods() {
    let server = TestServer::start(test_config());
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = common::read_reply(server.agent.delete(server.url(path)).call());
        r.assert_problem(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{path}");
    }
    server.shutdown();
}

#[test]
fn request_ids_are_echoed_generated_and_sanitized() {
    let server = TestServer::start(test_config());
    let with_id = |id: &str| {
        common::read_reply(
            server
                .agent
                .get(server.url("/products/none"))
                .header("X-Request-Id", id)
                .call(),
        )
    };
    // A client's acceptable id comes back, in the header and the problem.
    let r = with_id("client-id_1.2:3");
    assert_eq!(r.header("x-request-id"), Some("client-id_1.2:3"));
    assert_eq!(
        r.assert_problem(404, "product_not_found")["request_id"],
        "client-id_1.2:3"
    );
    // Without one, or with an unacceptable one, the service makes its own.
    let generated = server.get("/healthz");
    let first = generated
        .header("x-request-id")
        .expect("generated id")
        .to_owned();
    let second = server
        .get("/healthz")
        .header("x-request-id")
        .map(str::to_owned);
    assert!(
        !first.is_empty() && Some(&first) != second.as_ref(),
        "{first} {second:?}"
    );
    let long = "x".repeat(65);
    for bad in ["with space", long.as_str(), "quote\"d"] {
        let r = with_id(bad);
        let id = r.header("x-request-id").expect("an id");
        assert_ne!(id, bad);
        assert!(
            id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        );
    }
    // On success too.
    let r = common::read_reply(
        server
            .agent
            .post(server.url("/events"))
            .header("Content-Type", "application/json")
            .header("X-Request-Id", "post-1")
            .send(r#"{"product_id":"r","stock":1}"#),
    );
    assert_eq!((r.status, r.header("x-request-id")), (202, Some("post-1")));
    server.wait_applied();
    server.shutdown();
}

#[test]
fn the_product_list_pages_through_every_product_exactly_once_in_id_order() {
    let server = TestServer::start(test_config());
    let mut expected: Vec<String> = (0..257).map(|i| format!("item-{i:03}")).collect();
    expected.push("ünï/€".replace('/', "-"));
    for id in &expected {
        let r = server.post_event(&format!(r#"{{"product_id":"{id}","stock":7}}"#));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    server.wait_applied();
    expected.sort();

    let mut seen = Vec::new();
    let mut path = "/products?limit=50".to_owned();
    for page in 0.. {
        assert!(page < 20, "too many pages");
        let body = server.get(&path).json();
        let products = body["products"].as_array().expect("products array");
        assert!(products.len() <= 50);
        for p in products {
            assert_eq!(p["stock"], 7);
            assert!(p["price"].is_null());
            seen.push(p["product_id"].as_str().expect("id").to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/products?limit=50&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, expected, "every product once, in id order");

    // Default page size, and an empty store page.
    let first = server.get("/products").json();
    assert_eq!(first["products"].as_array().map(Vec::len), Some(100));
    server.shutdown();
}

#[test]
fn the_product_list_refuses_bad_parameters() {
    let server = TestServer::start(test_config());
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=xyz", "cursor"),
        ("cursor=abc", "cursor"),
        ("sort=desc", "sort"),
    ] {
        let r = server.get(&format!("/products?{query}"));
        let body = r.assert_problem(400, "invalid_query");
        assert_eq!(body["field"], parameter, "{query}");
    }
    let empty = server.get("/products").json();
    assert_eq!(
        empty,
        serde_json::json!({"products": [], "next_cursor": null})
    );
    server.shutdown();
}
