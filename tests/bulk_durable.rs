//! Batch requests in the durable modes, with the real binary: a batch cut
//! by kill -9 in SQLite commit mode is there whole after the restart, or
//! not at all, and a batch whose 202 the client saw is there; in
//! PostgreSQL mode a batch is one journal row (one commit).
#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::binary::Binary;
use common::{StopOnDrop, agent, read_reply, wait_until};

const BATCH: usize = 1000;

/// Batch `k`: products `b{k}-0` .. `b{k}-999`, each with stock `k`.
fn batch(k: usize) -> String {
    (0..BATCH)
        .map(|n| format!("{{\"product_id\":\"b{k}-{n}\",\"stock\":{k}}}\n"))
        .collect()
}

fn post_batch(base: &str, body: String) -> Result<common::Reply, ureq::Error> {
    agent()
        .post(format!("{base}/events"))
        .header("Content-Type", "application/x-ndjson")
        .send(body)
        .map(|response| read_reply(Ok(response)))
}

/// Every product id the instance holds, page by page.
fn product_ids(base: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/products?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = read_reply(agent().get(url).call());
        assert_eq!(page.status, 200, "{}", page.body);
        let body = page.json();
        for product in body["products"].as_array().into_iter().flatten() {
            ids.push(
                product["product_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn a_batch_cut_by_kill_9_is_there_whole_or_not_at_all() {
    let dir = common::scratch_dir("bulk-kill");
    let data_dir = dir.display().to_string();
    let env = [("DATA_DIR", data_dir.as_str())];
    let mut first = Binary::start(&env);
    let base = first.base();
    // What the client saw of each batch it sent: 202 or not.
    let sent: Mutex<HashMap<usize, bool>> = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let _stop_posting = StopOnDrop(&stop);
        scope.spawn(|| {
            for k in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let reply = post_batch(&base, batch(k));
                let acknowledged = reply.as_ref().is_ok_and(|r| r.status == 202);
                sent.lock().expect("not poisoned").insert(k, acknowledged);
                if reply.is_err() {
                    // The instance was killed.
                    return;
                }
            }
        });
        wait_until("five batches acknowledged", || {
            let acknowledged = sent
                .lock()
                .expect("not poisoned")
                .values()
                .filter(|a| **a)
                .count();
            (acknowledged >= 5).then_some(())
        });
        first.signal("KILL");
        first.wait_exit();
    });

    let second = Binary::start(&env);
    let mut held: HashMap<usize, usize> = HashMap::new();
    for id in product_ids(&second.base()) {
        let k = id
            .strip_prefix('b')
            .and_then(|rest| rest.split('-').next())
            .and_then(|k| k.parse().ok())
            .expect("a batch's product");
        *held.entry(k).or_default() += 1;
    }
    let sent = sent.lock().expect("not poisoned").clone();
    for (k, acknowledged) in &sent {
        let count = held.get(k).copied().unwrap_or(0);
        assert!(
            count == 0 || count == BATCH,
            "batch {k}: {count} of its {BATCH} events after the restart"
        );
        if *acknowledged {
            assert_eq!(count, BATCH, "batch {k} was acknowledged");
        }
    }
    assert!(held.keys().all(|k| sent.contains_key(k)), "{held:?}");
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(feature = "postgres")]
#[test]
fn in_postgres_mode_a_batch_is_one_journal_row() {
    let database = common::postgres::Postgres::start();
    let url = database.url();
    let instance = Binary::start(&[("DATABASE_URL", url.as_str())]);
    let reply = post_batch(&instance.base(), batch(1)).expect("answered");
    assert_eq!(reply.status, 202, "{}", reply.body);
    let (first, last) = (
        reply.json()["first_seq"].clone(),
        reply.json()["last_seq"].clone(),
    );
    assert_eq!(
        database.psql(&format!(
            "SELECT count(*), min(first_seq), max(first_seq + cardinality(product_ids) - 1) FROM journal WHERE first_seq BETWEEN {first} AND {last}"
        )),
        format!("1|{first}|{last}")
    );
}
