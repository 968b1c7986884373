//! Durable state (`DATA_DIR`, feature `sqlite`) against the real binary:
//! restarts after a graceful shutdown and after `kill -9`, retries across a
//! crash, every startup fault, a full disk, two processes on one
//! directory. (`tests/durable_suite.rs` runs the API, concurrency and
//! delivery tests against a durable instance as well.)
#![cfg(feature = "sqlite")]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::binary::{Binary, failed_start};
use common::{
    Reply, TestServer, agent, post_event, read_reply, scratch_dir, test_config, wait_until,
};
use serde_json::{Value, json};

/// A row of `products` as docs/STORAGE.md's `sqlite3` command shows it:
/// product_id, price, stock, updated_at, version.
type Row = (String, Option<f64>, Option<i64>, String, Option<i64>);
/// What one client of the kill -9 test saw: per product, the stock value
/// of its last 202 and the highest value it sent; and how many 202s it got.
type ClientLog = (HashMap<String, (u64, u64)>, u64);
/// A way to damage a database file: name, damage, the line expected.
type Corruption<'a> = (&'a str, Box<dyn Fn(&Path)>, &'a str);

/// The binary on a data directory, with `env` on top.
fn durable(dir: &Path, env: &[(&str, &str)]) -> Binary {
    let dir = dir.to_str().expect("UTF-8 temp path");
    let mut all = vec![("DATA_DIR", dir)];
    all.extend_from_slice(env);
    Binary::start(&all)
}

fn get(base: &str, path: &str) -> Reply {
    read_reply(agent().get(format!("{base}{path}")).call())
}

/// Posts `body`, expects 202 (or 200 for a duplicate), returns its seq.
fn accepted(base: &str, body: &Value) -> u64 {
    let reply = post_event(&agent(), base, &body.to_string());
    assert!(
        matches!(reply.status, 200 | 202),
        "{body}: {} {}",
        reply.status,
        reply.body
    );
    reply.json()["seq"].as_u64().expect("seq")
}

/// Every product, all pages, as the API lists them.
fn all_products(base: &str) -> Vec<Value> {
    let mut products = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(base, &format!("/products?limit=1000{cursor}")).json();
        products.extend(page["products"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return products,
        }
    }
}

/// Waits until the event with `seq` is applied (a `min_seq` read).
fn wait_applied(base: &str, product_id: &str, seq: u64) {
    let reply = get(base, &format!("/products/{product_id}?min_seq={seq}"));
    assert_eq!(reply.header("x-caught-up"), Some("true"), "{}", reply.body);
}

fn database(dir: &Path) -> PathBuf {
    dir.join("products.db")
}

#[test]
fn a_graceful_restart_restores_exactly_the_final_state() {
    let dir = scratch_dir("restart");
    let mut first = durable(&dir, &[]);
    let base = first.base();
    let startup = first.wait_for_log("storage: sqlite");
    assert!(
        startup.contains("durability=commit") && startup.contains("0 products loaded"),
        "{startup}"
    );
    accepted(&base, &json!({"product_id":"a","price":10,"stock":5}));
    accepted(&base, &json!({"product_id":"b","price":2.5,"version":7}));
    accepted(&base, &json!({"product_id":"c","stock":3,"event_id":"e-1"}));
    accepted(&base, &json!({"product_id":"a","price":12.0}));
    let last = accepted(&base, &json!({"product_id":"d\u{e9}j\u{e0}","stock":0}));
    wait_applied(&base, "d%C3%A9j%C3%A0", last);
    let before = all_products(&base);
    let etag_b = get(&base, "/products/b").header("etag").map(str::to_owned);
    assert_eq!(before.len(), 4, "{before:?}");

    // Readable while the service runs, with the columns docs/STORAGE.md names.
    let rows = wait_until("the products table to have every product", || {
        let conn = rusqlite::Connection::open_with_flags(
            database(&dir),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        let mut statement = conn
            .prepare("SELECT product_id, price, stock, updated_at, version FROM products ORDER BY product_id")
            .ok()?;
        let rows: Vec<Row> = statement
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        (rows.len() == 4 && rows[0].1 == Some(12.0)).then_some(rows)
    });
    assert_eq!(rows[0].0, "a");
    assert_eq!((rows[0].1, rows[0].2), (Some(12.0), Some(5)));
    assert_eq!(rows[1].4, Some(7), "b's client version");
    assert!(
        rows[0].3.ends_with('Z') && rows[0].3.len() == 24,
        "{:?}",
        rows[0].3
    );

    first.signal("TERM");
    assert_eq!(first.wait_exit(), 0, "{}", first.lines.join("\n"));
    let summary = first.wait_for_log("shutdown complete");
    assert!(summary.contains("committed=5"), "{summary}");

    let mut second = durable(&dir, &[]);
    let base = second.base();
    let startup = second.wait_for_log("storage: sqlite");
    assert!(startup.contains("4 products loaded"), "{startup}");
    assert!(
        startup.contains(" in "),
        "the line says how long it took: {startup}"
    );
    assert_eq!(all_products(&base), before, "same products, same order");
    assert_eq!(
        get(&base, "/products/b").header("etag").map(str::to_owned),
        etag_b,
        "same write keys, so the same entity tag"
    );
    // Seqs continue after the highest one acknowledged.
    let next = accepted(&base, &json!({"product_id":"e","stock":1}));
    assert_eq!(next, last + 1);
    // The idempotency window survived.
    let retry = post_event(
        &agent(),
        &base,
        &json!({"product_id":"c","stock":3,"event_id":"e-1"}).to_string(),
    );
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.json()["seq"], 3);
    // Client versions still order writes: an older version, and an
    // unversioned write, both lose to version 7.
    accepted(&base, &json!({"product_id":"b","price":1,"version":3}));
    let seq = accepted(&base, &json!({"product_id":"b","price":1}));
    wait_applied(&base, "b", seq);
    assert_eq!(get(&base, "/products/b").json()["price"], 2.5);
    second.signal("TERM");
    assert_eq!(second.wait_exit(), 0);
    let _ = fs::remove_dir_all(dir);
}

/// Several clients, each writing its own products in sequence, recording
/// every 202; `kill -9` in the middle; after the restart each product holds
/// the last value its client had acknowledged, or one it sent after that.
fn kill_9_loses_nothing_acknowledged(durability: &str) {
    let dir = scratch_dir(&format!("kill-{durability}"));
    let mut first = durable(&dir, &[("DURABILITY", durability)]);
    let base = first.base();
    let stop = AtomicBool::new(false);
    // 202s the clients have read (the service's own count runs ahead of
    // them: it counts a batch when it is committed, before its answers
    // are written).
    let acked_so_far = AtomicU64::new(0);
    const CLIENTS: usize = 4;
    const PRODUCTS: usize = 5;
    let results: Vec<ClientLog> = thread::scope(|scope| {
        // However this scope ends (a failed wait too), the clients stop, so
        // that the scope can join them.
        let _stop = common::StopOnDrop(&stop);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (base, stop, acked_so_far) = (base.clone(), &stop, &acked_so_far);
                scope.spawn(move || {
                    let agent = agent();
                    // product -> (last acknowledged stock, last sent stock)
                    let mut state: HashMap<String, (u64, u64)> = HashMap::new();
                    let mut acked = 0;
                    for i in 1u64.. {
                        let product = format!("k{c}-{}", i as usize % PRODUCTS);
                        let body = json!({"product_id": product, "stock": i}).to_string();
                        state.entry(product.clone()).or_insert((0, 0)).1 = i;
                        let sent = agent
                            .post(format!("{base}/events"))
                            .header("Content-Type", "application/json")
                            .send(body.as_str());
                        match sent {
                            Ok(r) if r.status() == 202 => {
                                state.get_mut(&product).expect("entry").0 = i;
                                acked += 1;
                                acked_so_far.fetch_add(1, Ordering::Relaxed);
                            }
                            // The process is gone (or going): stop.
                            _ => return (state, acked),
                        }
                        if stop.load(Ordering::Relaxed) {
                            return (state, acked);
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        // Kill once a good number of events are acknowledged, mid-load. On a
        // busy machine, with the fsync test's load beside this one, a debug
        // build acknowledged under 75 a second: the wait is for the work,
        // so its deadline is longer than the usual one.
        common::wait_until_within(Duration::from_secs(120), "1500 events acknowledged", || {
            (acked_so_far.load(Ordering::Relaxed) >= 1500).then_some(())
        });
        first.child.kill().expect("kill -9");
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    });
    let _ = first.child.wait();
    let total_acked: u64 = results.iter().map(|(_, acked)| acked).sum();
    assert!(total_acked >= 1500, "{total_acked}");

    let mut second = durable(&dir, &[("DURABILITY", durability)]);
    let base = second.base();
    let startup = second.wait_for_log("storage: sqlite");
    for (state, _) in &results {
        for (product, &(acked, sent)) in state {
            let reply = get(&base, &format!("/products/{product}"));
            if acked == 0 {
                assert!(
                    matches!(reply.status, 200 | 404),
                    "{product}: {}",
                    reply.body
                );
                continue;
            }
            assert_eq!(reply.status, 200, "{product} lost after restart; {startup}");
            let stock = reply.json()["stock"].as_u64().expect("stock");
            assert!(
                (acked..=sent).contains(&stock),
                "{product}: stock {stock}, last acknowledged {acked}, last sent {sent}; {startup}"
            );
        }
    }
    // New events get seqs after every acknowledged one.
    let seq = accepted(&base, &json!({"product_id":"after","stock":1}));
    assert!(
        seq > total_acked,
        "seq {seq} after {total_acked} acknowledged"
    );
    second.signal("TERM");
    assert_eq!(second.wait_exit(), 0);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn kill_9_in_commit_mode_loses_no_acknowledged_event() {
    kill_9_loses_nothing_acknowledged("commit");
}

#[test]
fn kill_9_in_fsync_mode_loses_no_acknowledged_event() {
    kill_9_loses_nothing_acknowledged("fsync");
}

/// A producer that never saw its 202 (the process died) retries: the retry
/// is recognised, and it does not overwrite a newer value.
/// Async mode writes an `event_id` only together with the products that
/// include its event: at no moment does the file hold an id whose event it
/// does not (a retry after a crash would then be answered `duplicate` for
/// an event that was lost). Once written, the ids survive `kill -9`.
#[test]
fn async_mode_saves_an_event_id_only_with_its_event() {
    let dir = scratch_dir("async-window");
    let mut first = durable(&dir, &[("DURABILITY", "async")]);
    let base = first.base();
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"product_id": format!("w{}", i % 7), "stock": i, "event_id": format!("w-{i}")}))
        .collect();
    // While the events arrive: every saved id is at or below the seq up to
    // which the saved products are complete.
    let ahead = |db: &Path| -> Option<(i64, i64)> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        conn.query_row(
            "SELECT (SELECT count(*) FROM idempotency WHERE seq > m.value), m.value FROM meta m WHERE m.key = 'applied_through'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
    };
    let mut looks = 0;
    thread::scope(|scope| {
        let poster = scope.spawn(|| {
            let agent = agent();
            events
                .iter()
                .map(|e| {
                    let reply = post_event(&agent, &base, &e.to_string());
                    assert_eq!(reply.status, 202, "{}", reply.body);
                    reply.json()["seq"].as_u64().expect("seq")
                })
                .max()
                .unwrap_or(0)
        });
        while !poster.is_finished() {
            if let Some((count, through)) = ahead(&database(&dir)) {
                assert_eq!(count, 0, "ids saved above applied_through {through}");
                looks += 1;
            }
        }
        let last = poster.join().expect("poster");
        wait_until("every event and its id to be written", || {
            let (count, through) = ahead(&database(&dir))?;
            (count == 0 && through >= last as i64).then_some(())
        });
    });
    assert!(looks > 0, "the file was looked at while events arrived");
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();

    let mut second = durable(&dir, &[("DURABILITY", "async")]);
    let base = second.base();
    for e in &events {
        let retry = post_event(&agent(), &base, &e.to_string());
        assert_eq!(retry.status, 200, "{e}: {}", retry.body);
        assert_eq!(retry.json()["duplicate"], true);
    }
    second.signal("TERM");
    assert_eq!(second.wait_exit(), 0);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_retry_after_a_crash_is_not_applied_twice() {
    let dir = scratch_dir("retry");
    let mut first = durable(&dir, &[]);
    let base = first.base();
    let event = json!({"product_id":"r","stock":1,"event_id":"order-7"});
    let seq = accepted(&base, &event);
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();

    let mut second = durable(&dir, &[]);
    let base = second.base();
    let newer = accepted(&base, &json!({"product_id":"r","stock":2}));
    assert!(newer > seq);
    let retry = post_event(&agent(), &base, &event.to_string());
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.json()["seq"], seq);
    assert_eq!(retry.json()["duplicate"], true);
    wait_applied(&base, "r", newer);
    assert_eq!(get(&base, "/products/r").json()["stock"], 2);
    second.signal("TERM");
    assert_eq!(second.wait_exit(), 0);
    let _ = fs::remove_dir_all(dir);
}

/// `async`: the 202 comes before the commit; a graceful shutdown still
/// loses nothing, and a restart continues the seqs.
#[test]
fn async_mode_loses_nothing_on_a_graceful_shutdown() {
    let dir = scratch_dir("async");
    let mut first = durable(&dir, &[("DURABILITY", "async")]);
    let base = first.base();
    let mut last = 0;
    for i in 0..200 {
        last = accepted(
            &base,
            &json!({"product_id": format!("a{}", i % 20), "stock": i}),
        );
    }
    first.signal("TERM");
    assert_eq!(first.wait_exit(), 0, "{}", first.lines.join("\n"));
    let mut second = durable(&dir, &[("DURABILITY", "async")]);
    let base = second.base();
    for p in 0..20u64 {
        let stock = get(&base, &format!("/products/a{p}")).json()["stock"].clone();
        assert_eq!(stock, 180 + p, "a{p}");
    }
    assert_eq!(
        accepted(&base, &json!({"product_id":"z","stock":1})),
        last + 1
    );
    second.signal("TERM");
    assert_eq!(second.wait_exit(), 0);
    let _ = fs::remove_dir_all(dir);
}

/// Events acknowledged but not applied when the service stopped (here: its
/// drain deadline passed with the workers paused) are applied by the next
/// start, before it serves.
#[test]
fn acknowledged_but_unapplied_events_are_applied_at_the_next_start() {
    let dir = scratch_dir("replay");
    let mut config = test_config();
    config.data_dir = Some(dir.clone());
    config.shutdown_timeout = Duration::ZERO;
    let server = TestServer::start(config.clone());
    let paused = server.running.pause_workers();
    for i in 1..=5 {
        let reply = server.post_event(&json!({"product_id":"q","stock":i}).to_string());
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let report = server.running.shutdown().expect("shutdown");
    drop(paused);
    assert_eq!(report.not_applied, 5, "{report}");

    let server = TestServer::start(config);
    // Ready at once, and already applied: no min_seq needed.
    let reply = server.get("/products/q");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["stock"], 5);
    assert_eq!(
        server.post_event(r#"{"product_id":"q","stock":6}"#).json()["seq"],
        6
    );
    server.shutdown();
    let _ = fs::remove_dir_all(dir);
}

/// A file that is not a database, one that fails the integrity check, one
/// of another application, one from a newer schema: exit 1, one line naming
/// the file, and the file exactly as it was.
#[test]
fn a_bad_database_file_stops_the_start_and_is_left_untouched() {
    // A valid database to damage.
    let valid = scratch_dir("valid");
    let mut binary = durable(&valid, &[]);
    let base = binary.base();
    for i in 0..300 {
        accepted(
            &base,
            &json!({"product_id": format!("p{i:04}"), "price": i}),
        );
    }
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
    let valid_bytes = fs::read(database(&valid)).expect("the database");
    assert!(valid_bytes.len() > 8192, "{}", valid_bytes.len());

    let cases: Vec<Corruption> = vec![
        (
            "not-sqlite",
            Box::new(|db: &Path| fs::write(db, b"product_id,price\nabc,1\n").expect("write")),
            "is not a SQLite database",
        ),
        (
            "damaged",
            Box::new(move |db: &Path| {
                let mut bytes = valid_bytes.clone();
                // Overwrite the second page (a b-tree page) with garbage.
                for (i, b) in bytes[4096..8192].iter_mut().enumerate() {
                    *b = (i * 7 + 3) as u8;
                }
                fs::write(db, bytes).expect("write");
            }),
            "is damaged",
        ),
        (
            "foreign",
            Box::new(|db: &Path| {
                let conn = rusqlite::Connection::open(db).expect("open");
                conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY);")
                    .expect("create");
            }),
            "another application",
        ),
        (
            "newer",
            Box::new({
                let valid = valid.clone();
                move |db: &Path| {
                    fs::copy(database(&valid), db).expect("copy");
                    let conn = rusqlite::Connection::open(db).expect("open");
                    conn.pragma_update(None, "user_version", 99)
                        .expect("pragma");
                }
            }),
            "schema version 99",
        ),
    ];
    for (name, make, expected) in cases {
        let dir = scratch_dir(name);
        make(&database(&dir));
        let before = fs::read(database(&dir)).expect("read");
        let (code, stderr) = failed_start(&[("DATA_DIR", dir.to_str().expect("path"))]);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{name}: one line: {stderr}");
        assert!(
            errors[0].contains(expected) && errors[0].contains("products.db"),
            "{name}: {stderr}"
        );
        assert!(errors[0].contains("untouched"), "{name}: {stderr}");
        assert_eq!(
            fs::read(database(&dir)).expect("read"),
            before,
            "{name}: file changed"
        );
        let _ = fs::remove_dir_all(dir);
    }
    let _ = fs::remove_dir_all(valid);
}

#[test]
fn a_data_dir_that_cannot_be_created_is_a_setting_error() {
    let file = scratch_dir("notadir").join("a-file");
    fs::write(&file, b"x").expect("write");
    let inside = file.join("data");
    let (code, stderr) = failed_start(&[("DATA_DIR", inside.to_str().expect("path"))]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(inside.to_str().expect("path")) && stderr.contains("DATA_DIR"),
        "{stderr}"
    );
}

#[test]
fn durability_without_data_dir_is_a_setting_error() {
    let (code, stderr) = failed_start(&[("DURABILITY", "fsync")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("DURABILITY") && stderr.contains("DATA_DIR"),
        "{stderr}"
    );
}

#[test]
fn a_second_process_on_the_same_data_dir_refuses_to_start() {
    let dir = scratch_dir("twice");
    let mut first = durable(&dir, &[]);
    let (code, stderr) = failed_start(&[("DATA_DIR", dir.to_str().expect("path"))]);
    assert_eq!(code, Some(1), "{stderr}");
    let pid = format!("pid {}", first.child.id());
    assert!(
        stderr.contains("in use by another product-update-service") && stderr.contains(&pid),
        "{stderr}"
    );
    // The first one is unaffected.
    accepted(&first.base(), &json!({"product_id":"x","stock":1}));
    first.signal("TERM");
    assert_eq!(first.wait_exit(), 0);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn metrics_show_the_commits() {
    let dir = scratch_dir("metrics");
    let mut binary = durable(&dir, &[]);
    let base = binary.base();
    for i in 0..20 {
        accepted(&base, &json!({"product_id":"m","stock":i}));
    }
    let text = get(&base, "/metrics").body;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert!(
        value("storage_commit_duration_seconds_count") >= 20.0,
        "20 events one after another: 20 commits\n{text}"
    );
    assert!(value("storage_commit_batch_events_sum") >= 20.0);
    assert_eq!(value("storage_errors_total"), 0.0);
    assert_eq!(value("storage_unavailable"), 0.0);
    assert!(text.contains("events_unapplied "), "{text}");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
    let _ = fs::remove_dir_all(dir);
}

/// A full disk (a small tmpfs, filled up): 503 `storage_unavailable` with
/// `Retry-After`, `/readyz` 503 naming the cause, GETs answered, nothing
/// acknowledged that is lost; and recovery on its own once space is back.
/// Needs root (to mount); in CI it must run.
#[test]
fn a_full_disk_refuses_events_and_recovers_by_itself() {
    let Some(mount) = small_tmpfs("a_full_disk_refuses_events_and_recovers_by_itself") else {
        return;
    };
    let dir = mount.path.join("data");
    let mut binary = durable(&dir, &[]);
    let base = binary.base();
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    for i in 0..50u64 {
        let id = format!("before-{i}");
        accepted(&base, &json!({"product_id": id, "stock": i}));
        acknowledged.push((id, i));
    }
    // Fill the file system.
    let filler = mount.path.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    // New products need new pages: the writes fail soon.
    let agent = agent();
    let refused = wait_until("a POST to be refused with storage_unavailable", || {
        let id = format!("full-{}", acknowledged.len());
        let body = json!({"product_id": id, "stock": 1, "price": 9.99}).to_string();
        let reply = post_event(&agent, &base, &body);
        match reply.status {
            202 => {
                acknowledged.push((id, 1));
                None
            }
            _ => Some(reply),
        }
    });
    assert_eq!(refused.status, 503, "the first refusal: {}", refused.body);
    let problem = refused.assert_problem(503, "storage_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"), "{problem}");
    let ready = get(&base, "/readyz");
    let ready_body = ready.assert_problem(503, "not_ready");
    assert_eq!(ready_body["reason"], "storage_unavailable", "{ready_body}");
    assert!(
        ready_body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("full")),
        "{ready_body}"
    );
    the_document_promises(&problem, &ready_body);
    assert_eq!(
        get(&base, "/products/before-1").status,
        200,
        "GETs still work"
    );
    assert_eq!(get(&base, "/healthz").status, 200);

    fs::remove_file(&filler).expect("free the space");
    wait_until("/readyz to be ready again", || {
        (get(&base, "/readyz").status == 200).then_some(())
    });
    accepted(&base, &json!({"product_id":"after","stock":7}));
    acknowledged.push(("after".to_owned(), 7));

    // Nothing acknowledged was lost: all there after a crash and restart.
    binary.child.kill().expect("kill -9");
    let _ = binary.child.wait();
    let mut second = durable(&dir, &[]);
    let base = second.base();
    for (id, stock) in &acknowledged {
        let reply = get(&base, &format!("/products/{id}"));
        assert_eq!(reply.status, 200, "{id} lost");
        assert_eq!(reply.json()["stock"], *stock, "{id}");
    }
    second.signal("TERM");
    assert_eq!(second.wait_exit(), 0);
}

/// A 3 MiB tmpfs, unmounted when dropped; `None` (the test skipped) only
/// outside CI when not root, as mounting needs root.
fn small_tmpfs(test: &str) -> Option<Mounted> {
    let path = scratch_dir("tmpfs");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (needs root): {test} must run in CI"
        );
        eprintln!("SKIPPED: {test} needs root to mount a tmpfs");
        return None;
    }
    Some(Mounted { path })
}

struct Mounted {
    path: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The refusal's `code` and the readiness `reason` are values the OpenAPI
/// document lists, and the document names the code under POST's 503.
fn the_document_promises(problem: &Value, ready_body: &Value) {
    let doc: Value = serde_json::from_str(include_str!("../src/openapi.json")).expect("openapi");
    let problem_schema = &doc["components"]["schemas"]["Problem"]["properties"];
    for (member, value) in [
        ("code", &problem["code"]),
        ("reason", &ready_body["reason"]),
    ] {
        let allowed = problem_schema[member]["enum"].as_array().expect("enum");
        assert!(
            allowed.contains(value),
            "{member} {value} not in the document"
        );
    }
    let post_503 = doc["paths"]["/events"]["post"]["responses"]["503"]["description"].as_str();
    assert!(post_503.is_some_and(|d| d.contains("storage_unavailable")));
}
