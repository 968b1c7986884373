//! Batch requests: `POST /events` with `Content-Type: application/x-ndjson`,
//! over real HTTP, all or nothing. Run here in memory mode, and again in
//! SQLite commit mode (`durable_suite.rs`) and PostgreSQL mode
//! (`postgres_suite.rs`), where the 202 follows one commit for the whole
//! request.

mod common;

use common::{Reply, TestServer, agent, read_reply, test_config};
use product_update_service::Config;
use serde_json::{Value, json};

fn post_ndjson(server: &TestServer, body: &str) -> Reply {
    read_reply(
        agent()
            .post(server.url("/events"))
            .header("Content-Type", "application/x-ndjson")
            .send(body),
    )
}

/// `count` events as NDJSON lines: product `{prefix}-{n % 10}`, stock `n`,
/// with event ids `{prefix}-e{n}` if `ids`.
fn lines(prefix: &str, count: usize, ids: bool) -> String {
    (0..count)
        .map(|n| {
            let mut event = json!({"product_id": format!("{prefix}-{}", n % 10), "stock": n});
            if ids {
                event["event_id"] = json!(format!("{prefix}-e{n}"));
            }
            format!("{event}\n")
        })
        .collect()
}

/// The seq the next single event gets: nothing refused took one.
fn next_seq(server: &TestServer) -> u64 {
    let reply = server.post_event(r#"{"product_id":"probe","stock":1}"#);
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.json()["seq"].as_u64().expect("a seq")
}

fn stock(server: &TestServer, product_id: &str, seq: u64) -> Value {
    let reply = server.get(&format!("/products/{product_id}?min_seq={seq}&wait=5"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["stock"].clone()
}

#[test]
fn a_batch_is_taken_with_consecutive_seqs_and_applied() {
    let server = TestServer::start(test_config());
    let before = next_seq(&server);
    let reply = post_ndjson(&server, &lines("b", 100, false));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["count"], 100);
    assert_eq!(body["first_seq"], before + 1);
    assert_eq!(body["last_seq"], before + 100);
    assert_eq!(body["duplicates"], json!([]));
    // The last event of each product wins: stock 90..99 for b-0..b-9.
    let last = before + 100;
    for n in 0..10 {
        assert_eq!(stock(&server, &format!("b-{n}"), last), 90 + n);
    }
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("batch_requests_total 1\n"), "{metrics}");
    assert!(metrics.contains("batch_events_total 100\n"), "{metrics}");
    server.shutdown();
}

#[test]
fn one_bad_line_refuses_the_whole_batch_naming_the_lines() {
    let server = TestServer::start(test_config());
    let before = next_seq(&server);
    let body = format!(
        "{}{}\n{}not json\n",
        lines("bad", 3, false),
        r#"{"product_id":"bad-x","stok":1}"#,
        lines("bad", 2, false)
    );
    let reply = post_ndjson(&server, &body);
    let problem = reply.assert_problem(400, "invalid_events");
    let errors = problem["errors"].as_array().expect("errors").clone();
    assert_eq!(errors.len(), 2, "{problem}");
    assert_eq!(errors[0]["line"], 4);
    assert_eq!(errors[0]["code"], "unknown_field");
    assert_eq!(errors[0]["field"], "stok");
    assert_eq!(errors[1]["line"], 7);
    assert_eq!(errors[1]["code"], "malformed_json");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("2 of the 7 events") && detail.contains("line 4"),
        "{detail}"
    );
    // Nothing was queued or journaled: no seq was taken, no product made.
    assert_eq!(next_seq(&server), before + 1);
    assert_eq!(server.get("/products/bad-0").status, 404);
    server.shutdown();
}

#[test]
fn duplicates_within_and_across_batches_are_reported_not_applied_twice() {
    let server = TestServer::start(test_config());
    let first = post_ndjson(&server, &lines("d", 5, true));
    assert_eq!(first.status, 202, "{}", first.body);
    let first_seq = first.json()["first_seq"].as_u64().expect("seq");

    // A retry of the whole request: every line a duplicate.
    let retry = post_ndjson(&server, &lines("d", 5, true));
    assert_eq!(retry.status, 200, "{}", retry.body);
    let body = retry.json();
    assert_eq!(body["status"], "duplicate");
    assert_eq!(body["count"], 0);
    assert_eq!(body["first_seq"], Value::Null);
    let duplicates: Vec<(u64, u64)> = body["duplicates"]
        .as_array()
        .expect("duplicates")
        .iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap_or(0),
                d["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected: Vec<(u64, u64)> = (0..5).map(|n| (n + 1, first_seq + n)).collect();
    assert_eq!(duplicates, expected);

    // Old and new lines, and a line repeated within the batch.
    let repeated = r#"{"product_id":"d-9","stock":77,"event_id":"d-new"}"#;
    let mixed = format!("{}{repeated}\n{repeated}\n", lines("d", 2, true));
    let reply = post_ndjson(&server, &mixed);
    assert_eq!(reply.status, 202, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["count"], 1, "{body}");
    let new_seq = body["first_seq"].as_u64().expect("seq");
    assert_eq!(body["last_seq"], new_seq);
    assert_eq!(
        body["duplicates"],
        json!([{"line":1,"seq":first_seq},{"line":2,"seq":first_seq + 1},{"line":4,"seq":new_seq}])
    );
    assert_eq!(stock(&server, "d-9", new_seq), 77);
    server.shutdown();
}

#[test]
fn a_reused_event_id_refuses_the_whole_batch() {
    let server = TestServer::start(test_config());
    let taken = server.post_event(r#"{"product_id":"c-1","stock":1,"event_id":"c-taken"}"#);
    assert_eq!(taken.status, 202, "{}", taken.body);
    let taken_seq = taken.json()["seq"].as_u64().expect("seq");
    let body = format!(
        "{}{}\n",
        lines("c", 3, false),
        r#"{"product_id":"c-1","stock":2,"event_id":"c-taken"}"#
    );
    let problem = post_ndjson(&server, &body).assert_problem(409, "idempotency_conflict");
    assert_eq!(
        problem["errors"],
        json!([{
            "line": 4,
            "code": "idempotency_conflict",
            "field": "event_id",
            "detail": format!("the event_id was already used for a different event (seq {taken_seq})"),
            "seq": taken_seq
        }])
    );
    assert_eq!(
        next_seq(&server),
        taken_seq + 1,
        "nothing of the batch was taken"
    );
    assert_eq!(server.get("/products/c-0").status, 404);
    server.shutdown();
}

/// Two lines of one request with one `event_id` and different content:
/// the 409 names the line, and no seq (none was given out).
#[test]
fn an_event_id_reused_within_the_request_refuses_it_naming_no_seq() {
    let server = TestServer::start(test_config());
    let before = next_seq(&server);
    let body = "{\"product_id\":\"z\",\"stock\":1,\"event_id\":\"z1\"}\n{\"product_id\":\"z\",\"stock\":2,\"event_id\":\"z1\"}\n";
    let problem = post_ndjson(&server, body).assert_problem(409, "idempotency_conflict");
    let errors = problem["errors"].as_array().expect("errors").clone();
    assert_eq!(errors.len(), 1, "{problem}");
    assert_eq!(errors[0]["line"], 2);
    assert!(errors[0].get("seq").is_none(), "{problem}");
    assert_eq!(next_seq(&server), before + 1, "no seq was taken");
    server.shutdown();
}

#[test]
fn the_limits_are_named() {
    let server = TestServer::start(Config {
        max_batch_events: 5,
        max_batch_bytes: 2048,
        queue_size: 8,
        ..test_config()
    });
    let before = next_seq(&server);
    let problem =
        post_ndjson(&server, &lines("l", 6, false)).assert_problem(400, "too_many_events");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("MAX_BATCH_EVENTS"),
        "{problem}"
    );
    let big = format!(
        "{}\n",
        json!({"product_id":"l-big","stock":1,"event_id":"x".repeat(128)})
    )
    .repeat(20);
    let problem = post_ndjson(&server, &big).assert_problem(413, "payload_too_large");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("MAX_BATCH_BYTES"),
        "{problem}"
    );
    post_ndjson(&server, "\n\n").assert_problem(400, "empty_batch");
    assert_eq!(next_seq(&server), before + 1);
    server.shutdown();

    let server = TestServer::start(Config {
        max_batch_events: 50,
        queue_size: 8,
        ..test_config()
    });
    let problem =
        post_ndjson(&server, &lines("q", 9, false)).assert_problem(400, "too_many_events");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("QUEUE_SIZE"),
        "{problem}"
    );
    server.shutdown();
}

/// A batch that does not fit in the queue now: 503 with `Retry-After`,
/// nothing queued; once the queue has room, the same batch is taken.
#[test]
fn a_batch_that_does_not_fit_now_gets_503_and_nothing_is_queued() {
    if common::differs_in_postgres_mode(
        "the workers' queue is filled by the tailer there, after the commit",
    ) {
        return;
    }
    // One worker, paused: it may hold one event in hand, the queue the
    // rest, so that 7 posted leave room for 2 at most.
    let server = TestServer::start(Config {
        queue_size: 8,
        workers: 1,
        ..test_config()
    });
    let paused = server.running.pause_workers();
    let mut queued = 0;
    while queued < 7 {
        let reply = server.post_event(&format!(r#"{{"product_id":"f-{queued}","stock":1}}"#));
        assert_eq!(reply.status, 202, "{}", reply.body);
        queued += 1;
    }
    let reply = post_ndjson(&server, &lines("full", 4, false));
    let problem = reply.assert_problem(503, "queue_full");
    assert_eq!(reply.header("retry-after"), Some("1"), "{problem}");
    drop(paused);
    server.wait_applied();
    assert_eq!(server.get("/products/full-0").status, 404, "nothing queued");
    let retried = post_ndjson(&server, &lines("full", 4, false));
    assert_eq!(retried.status, 202, "{}", retried.body);
    server.shutdown();
}

#[test]
fn a_json_body_keeps_its_meaning_and_other_types_are_refused() {
    let server = TestServer::start(test_config());
    let one = server.post_event(r#"{"product_id":"j","stock":1}"#);
    assert_eq!(one.status, 202, "{}", one.body);
    assert!(one.json().get("count").is_none());
    let reply = read_reply(
        agent()
            .post(server.url("/events"))
            .header("Content-Type", "text/plain")
            .send("x"),
    );
    let problem = reply.assert_problem(415, "unsupported_media_type");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("application/x-ndjson")
    );
    server.shutdown();
}
