//! The outbox (the real binary), in SQLite commit mode and with two
//! instances on one PostgreSQL database: the relaying instance killed
//! with SIGKILL in the middle of a load; afterwards (after a restart, or
//! once the other instance has taken over), downstream has seen every seq
//! at least once, in seq order, none missing, and repeats only of the
//! two batches that were not confirmed.
#![cfg(feature = "amqp")]
#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod common;

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::binary::Binary;
use common::rabbitmq::{RabbitMq, exchange};
use common::{StopOnDrop, agent, post_event, read_reply, wait_until_within};

/// The most events one batch of the relay publishes (`relay.rs`).
const BATCH: usize = 1000;
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

/// Every instance's environment: the broker and the two exchanges.
fn broker_env(exchange: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URL", RabbitMq::get().url()),
        ("AMQP_EXCHANGE", exchange.to_owned()),
        ("AMQP_OUTBOX_EXCHANGE", format!("{exchange}.updates")),
    ]
}

fn start(env: &[(&'static str, String)]) -> Binary {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Binary::start(&env)
}

/// A queue bound to the outbox exchange of `exchange`, as a downstream
/// consumer has it.
fn downstream(exchange: &str) -> String {
    let queue = format!("{exchange}.downstream");
    RabbitMq::get()
        .client()
        .subscribe(&queue, &format!("{exchange}.updates"));
    queue
}

/// Posts 20 events to `base` once the load has stopped: the last one's
/// seq is the last of all.
fn post_last_events(base: &str) -> u64 {
    let http = agent();
    let mut last = 0;
    for n in 0..20 {
        let reply = post_event(
            &http,
            base,
            &format!(r#"{{"product_id":"k-{n}","stock":1}}"#),
        );
        assert_eq!(reply.status, 202, "{}", reply.body);
        last = reply.json()["seq"].as_u64().expect("a seq");
    }
    last
}

/// Waits for `queue` to have every seq up to `last`, then checks what
/// downstream saw: none missing, every acknowledged seq there, in seq
/// order, and no more repeats than one unconfirmed batch.
fn check_downstream(queue: &str, last: u64, acked: &[u64]) {
    let client = RabbitMq::get().client();
    let mut seen = Vec::new();
    wait_until_within(WITHIN, "downstream has every seq", || {
        seen.extend(
            client
                .drain_json(queue)
                .iter()
                .filter_map(|m| m["seq"].as_u64()),
        );
        let distinct: HashSet<u64> = seen.iter().copied().collect();
        (distinct.len() as u64 == last).then_some(())
    });
    let distinct: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct, (1..=last).collect(), "every seq, none missing");
    for seq in acked {
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
        repeats <= 2 * BATCH,
        "{repeats} repeats: more than the two batches that were not confirmed"
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn a_kill_9_of_the_relaying_instance_skips_nothing() {
    let exchange = exchange("outbox-kill");
    let dir = common::scratch_dir("amqp-outbox-kill");
    let mut env = broker_env(&exchange);
    env.push(("DATA_DIR", dir.display().to_string()));
    let mut first = start(&env);
    wait_until_within(WITHIN, "the relay is connected", || {
        (first.metric("amqp_outbox_relay_connected") == 1).then_some(())
    });
    let queue = downstream(&exchange);

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

    let second = start(&env);
    let last = post_last_events(&second.base());
    check_downstream(&queue, last, &acked.lock().expect("not poisoned"));
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

/// Two instances on one database: one relays, the other stands by; the
/// relaying one killed with SIGKILL under a load posted to both, the other
/// takes over from the cursor and skips nothing.
#[cfg(feature = "postgres")]
#[test]
fn with_two_postgres_instances_the_other_takes_the_relay_over_after_a_kill_9() {
    let exchange = exchange("outbox-pg");
    let database = common::postgres::Postgres::start();
    let mut env = broker_env(&exchange);
    env.push(("DATABASE_URL", database.url()));
    let (a, b) = (start(&env), start(&env));
    let relaying = |binary: &Binary| binary.metric("amqp_outbox_relay_connected") == 1;
    let a_relays = wait_until_within(WITHIN, "one instance relays", || {
        match (relaying(&a), relaying(&b)) {
            (true, true) => panic!("both instances relay at once"),
            (false, false) => None,
            (a_relays, _) => Some(a_relays),
        }
    });
    let (mut leader, mut survivor) = if a_relays { (a, b) } else { (b, a) };
    survivor.wait_for_log("another instance relays");
    assert!(!relaying(&survivor), "only one instance relays");
    let queue = downstream(&exchange);

    let acked = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let (leader_base, survivor_base) = (leader.base(), survivor.base());
    thread::scope(|scope| {
        let _stop_posting = StopOnDrop(&stop);
        scope.spawn(|| post_until_stopped(&leader_base, &stop, &acked));
        scope.spawn(|| post_until_stopped(&survivor_base, &stop, &acked));
        wait_until_within(WITHIN, "300 events acknowledged and some published", || {
            let enough = acked.lock().expect("not poisoned").len() >= 300;
            (enough && leader.metric("amqp_outbox_published_total") > 0).then_some(())
        });
        leader.signal("KILL");
        leader.wait_exit();
        // The load goes on at the survivor while it takes over.
        wait_until_within(WITHIN, "the other instance relays", || {
            relaying(&survivor).then_some(())
        });
    });

    let last = post_last_events(&survivor.base());
    check_downstream(&queue, last, &acked.lock().expect("not poisoned"));
    assert_eq!(
        database.psql("SELECT through FROM outbox"),
        last.to_string(),
        "the cursor reaches the last seq"
    );
}
