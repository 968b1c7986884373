//! The outbox (SQLite commit mode, the real binary): the relaying instance
//! killed with SIGKILL in the middle of a load; after the restart,
//! downstream has seen every seq at least once, in seq order, none
//! missing, and repeats only of the batch that was not confirmed.
#![cfg(all(feature = "amqp", feature = "sqlite"))]

mod common;

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::binary::Binary;
use common::rabbitmq::{RabbitMq, exchange};
use common::{StopOnDrop, agent, post_event, read_reply, scratch_dir, wait_until_within};

/// The most events one batch of the relay publishes (`relay.rs`).
const BATCH: usize = 2000;
const WITHIN: Duration = Duration::from_secs(120);

/// Posts events until told to stop or the instance is gone; records the
/// seq of each 202.
fn post_until_stopped(base: &str, stop: &AtomicBool, acked: &Mutex<Vec<u64>>) {
    let agent = agent();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let body = format!(r#"{{"product_id":"k-{}","stock":{n}}}"#, n % 10);
        let sent = agent
            .post(format!("{base}/events"))
            .header("Content-Type", "application/json")
            .send(&body);
        // The instance was killed.
        let Ok(response) = sent else {
            return;
        };
        let reply = read_reply(Ok(response));
        match reply.status {
            202 => {
                let seq = reply.json()["seq"].as_u64().expect("a seq");
                acked.lock().expect("not poisoned").push(seq);
            }
            // The instance was killed.
            _ => return,
        }
    }
}

#[test]
fn a_kill_9_of_the_relaying_instance_skips_nothing() {
    let exchange = exchange("outbox-kill");
    let updates = format!("{exchange}.updates");
    let dir = scratch_dir("amqp-outbox-kill");
    let (url, data_dir) = (RabbitMq::get().url(), dir.display().to_string());
    let env = [
        ("DATA_DIR", data_dir.as_str()),
        ("AMQP_URL", url.as_str()),
        ("AMQP_EXCHANGE", exchange.as_str()),
        ("AMQP_OUTBOX_EXCHANGE", updates.as_str()),
    ];
    let mut first = Binary::start(&env);
    wait_until_within(WITHIN, "the relay is connected", || {
        (first.metric("amqp_outbox_relay_connected") == 1).then_some(())
    });
    let client = RabbitMq::get().client();
    let downstream = format!("{exchange}.downstream");
    client.subscribe(&downstream, &updates);

    let acked = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let base = first.base();
    thread::scope(|scope| {
        let _stop_posting = StopOnDrop(&stop);
        scope.spawn(|| post_until_stopped(&base, &stop, &acked));
        wait_until_within(WITHIN, "300 events acknowledged and some published", || {
            let enough = acked.lock().expect("not poisoned").len() >= 300;
            (enough && first.metric("amqp_outbox_published_total") > 0).then_some(())
        });
        first.signal("KILL");
        first.wait_exit();
    });

    let second = Binary::start(&env);
    let http = agent();
    let mut last = 0;
    for n in 0..20 {
        let reply = post_event(
            &http,
            &second.base(),
            &format!(r#"{{"product_id":"k-{n}","stock":1}}"#),
        );
        assert_eq!(reply.status, 202, "{}", reply.body);
        last = reply.json()["seq"].as_u64().expect("a seq");
    }
    let mut seen = Vec::new();
    wait_until_within(WITHIN, "downstream has every seq", || {
        seen.extend(
            client
                .drain_json(&downstream)
                .iter()
                .filter_map(|m| m["seq"].as_u64()),
        );
        let distinct: HashSet<u64> = seen.iter().copied().collect();
        (distinct.len() as u64 == last).then_some(())
    });
    let distinct: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct, (1..=last).collect(), "every seq, none missing");
    for seq in acked.lock().expect("not poisoned").iter() {
        assert!(
            distinct.contains(seq),
            "acknowledged seq {seq} was published"
        );
    }
    // In seq order: each message repeats an earlier seq or is the next one.
    let mut highest = 0;
    let mut repeats = 0;
    for &seq in &seen {
        if seq <= highest {
            repeats += 1;
        } else {
            assert_eq!(seq, highest + 1, "published in seq order: {seen:?}");
            highest = seq;
        }
    }
    assert!(
        repeats <= BATCH,
        "{repeats} repeats: more than the batch that was not confirmed"
    );
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}
