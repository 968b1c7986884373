//! PostgreSQL mode (`DATABASE_URL`): several instances of the real binary
//! on one throwaway server per test (`common/postgres.rs`).
#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64};
use std::thread;
use std::time::{Duration, Instant};

use common::binary::{Binary, failed_start};
use common::postgres::Postgres;
use common::{TestServer, agent, post_event, read_reply, test_config};
use product_update_service::Config;
use product_update_service::backend::postgres::SCHEMA_VERSION;
use product_update_service::config::DatabaseUrl;

fn instance(server: &Postgres) -> Binary {
    let url = server.url();
    Binary::start(&[("DATABASE_URL", url.as_str())])
}

fn get(base: &str, path: &str) -> common::Reply {
    read_reply(agent().get(format!("{base}{path}")).call())
}

/// What one instance acknowledges, another serves: `min_seq` with the seq
/// from A's 202 waits on B until B has applied it; a retry of A's event id
/// on B is a duplicate with A's seq; the ETag is the same on both.
#[test]
fn an_event_accepted_by_one_instance_is_read_and_recognised_on_another() {
    let server = Postgres::start();
    let (a, b) = (instance(&server), instance(&server));
    let http = agent();
    let posted = post_event(
        &http,
        &a.base(),
        r#"{"product_id":"p1","price":49.99,"stock":100,"event_id":"e-1"}"#,
    );
    assert_eq!(
        posted.status,
        202,
        "{} {}",
        posted.body,
        get(&a.base(), "/readyz").body
    );
    let seq = posted.json()["seq"].as_u64().expect("seq");
    let read = get(&b.base(), &format!("/products/p1?min_seq={seq}&wait=5"));
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["price"], 49.99);
    assert_eq!(read.json()["stock"], 100);

    let retried = post_event(
        &http,
        &b.base(),
        r#"{"product_id":"p1","price":49.99,"stock":100,"event_id":"e-1"}"#,
    );
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.json()["seq"].as_u64(), Some(seq));
    let conflicting = post_event(
        &http,
        &b.base(),
        r#"{"product_id":"p1","price":1,"event_id":"e-1"}"#,
    );
    assert_eq!(conflicting.status, 409, "{}", conflicting.body);

    let on_a = get(&a.base(), &format!("/products/p1?min_seq={seq}&wait=5"));
    assert_eq!(on_a.header("etag"), read.header("etag"));
    assert_eq!(
        server.psql("SELECT seq, product_id, price, stock FROM events"),
        format!("{seq}|p1|49.99|100")
    );
}

/// Instances that start at once create the schema exactly once.
#[test]
fn instances_starting_at_once_create_the_schema_once() {
    let server = Postgres::start();
    let started: Vec<Binary> = thread::scope(|scope| {
        let starts: Vec<_> = (0..3).map(|_| scope.spawn(|| instance(&server))).collect();
        starts
            .into_iter()
            .map(|s| s.join().expect("started"))
            .collect()
    });
    assert_eq!(started.len(), 3);
    assert_eq!(
        server.psql("SELECT count(*), max(version) FROM schema_version"),
        format!("1|{SCHEMA_VERSION}")
    );
    assert_eq!(server.psql("SELECT count(*) FROM instances"), "3");
}

/// A schema from a newer release: exit 1 with a line naming the version,
/// and the database left as it was.
#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let server = Postgres::start();
    server.psql("CREATE TABLE schema_version (version integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); INSERT INTO schema_version (version) VALUES (7)");
    let (code, log) = failed_start(&[("DATABASE_URL", server.url().as_str())]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("schema version 7") && log.contains("newer"),
        "{log}"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "1",
        "nothing created"
    );
}

/// Version 1's schema (one `events` row per event, `products` written by
/// every commit), as a database made by an earlier release holds it.
const SCHEMA_1: &str = r#"
CREATE TABLE schema_version (version integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE seq_counter (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row), last_seq bigint NOT NULL);
INSERT INTO seq_counter (last_seq) VALUES (2);
CREATE TABLE events (seq bigint PRIMARY KEY, product_id text COLLATE "C" NOT NULL, price text, stock bigint,
    version numeric(20, 0), event_id text COLLATE "C", request_id text NOT NULL, accepted_by text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now());
INSERT INTO events (seq, product_id, price, stock, version, event_id, request_id, accepted_by)
    VALUES (1, 'old', '1.5', NULL, NULL, NULL, 'r-1', 'v1'), (2, 'old', NULL, 7, NULL, 'e-old', 'r-2', 'v1');
CREATE TABLE products (product_id text COLLATE "C" PRIMARY KEY, price text, price_rank numeric(20, 0) NOT NULL,
    price_order bigint NOT NULL, stock bigint, stock_rank numeric(20, 0) NOT NULL, stock_order bigint NOT NULL,
    last_seq bigint NOT NULL, updated_at timestamptz NOT NULL, updated_by text NOT NULL);
INSERT INTO products VALUES ('old', '1.5', 0, 1, 7, 0, 2, 2, now(), 'v1');
CREATE TABLE idempotency (event_id text COLLATE "C" PRIMARY KEY, seq bigint NOT NULL, fingerprint bigint NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX idempotency_seq ON idempotency (seq);
INSERT INTO idempotency (event_id, seq, fingerprint) VALUES ('e-old', 2, 1);
CREATE TABLE instances (instance text PRIMARY KEY, started_at timestamptz NOT NULL, seen_at timestamptz NOT NULL,
    applied_through bigint NOT NULL DEFAULT 0);
"#;

/// A database of version 1 is upgraded at startup: its products and
/// idempotency entries kept, the seqs continued, the journal one row per
/// batch from then on (and `events` a view of it).
#[test]
fn a_version_1_schema_is_upgraded_and_keeps_its_products() {
    let server = Postgres::start();
    server.psql(SCHEMA_1);
    let a = instance(&server);
    assert_eq!(
        server.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version"),
        format!("1,{SCHEMA_VERSION}")
    );
    let read = get(&a.base(), "/products/old");
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(
        (read.json()["price"].clone(), read.json()["stock"].clone()),
        (1.5.into(), 7.into())
    );
    let http = agent();
    let posted = post_event(&http, &a.base(), r#"{"product_id":"old","price":2}"#);
    assert_eq!(posted.status, 202, "{}", posted.body);
    assert_eq!(posted.json()["seq"], 3);
    // The id the old release remembered is still a conflict (another body).
    let retried = post_event(
        &http,
        &a.base(),
        r#"{"product_id":"old","stock":8,"event_id":"e-old"}"#,
    );
    assert_eq!(retried.status, 409, "{}", retried.body);
    assert_eq!(
        server.psql("SELECT seq, product_id, price FROM events"),
        "3|old|2"
    );
    common::wait_until("the new event compacted", || {
        (server.psql("SELECT price, stock, last_seq FROM products") == "2|7|3").then_some(())
    });
}

/// Waits for two housekeeping rounds of every instance (the second starts
/// after the first has pruned).
fn two_housekeeping_rounds(server: &Postgres) {
    for _ in 0..2 {
        let since = server.psql("SELECT now()");
        common::wait_until("a housekeeping round", || {
            let seen = server.psql(&format!(
                "SELECT bool_and(seen_at > '{since}'::timestamptz) FROM instances"
            ));
            (seen == "t").then_some(())
        });
    }
}

/// With an outbox (RabbitMQ's relay), the journal is kept after its
/// cursor, however old and compacted: rows are pruned once published.
/// The cursor is set by hand here (no broker: nothing moves it).
#[test]
fn the_journal_is_kept_after_the_outbox_cursor() {
    let server = Postgres::start();
    let a = instance(&server);
    server.psql("INSERT INTO outbox (through, relayed_by) VALUES (1, 'test')");
    let http = agent();
    for n in 1..=3 {
        let posted = post_event(
            &http,
            &a.base(),
            &format!(r#"{{"product_id":"p{n}","stock":{n}}}"#),
        );
        assert_eq!(posted.json()["seq"], n, "{}", posted.body);
    }
    common::wait_until("seq 3 compacted", || {
        (server.psql("SELECT through FROM compaction") == "3").then_some(())
    });
    server.psql("UPDATE journal SET accepted_at = now() - interval '1 hour'");
    two_housekeeping_rounds(&server);
    assert_eq!(
        server.psql("SELECT string_agg(seq::text, ',' ORDER BY seq) FROM events"),
        "2,3",
        "the published row pruned, the others kept"
    );
    server.psql("UPDATE outbox SET through = 3");
    common::wait_until("the journal pruned", || {
        (server.psql("SELECT count(*) FROM journal") == "0").then_some(())
    });
}

/// A database of version 2 (no `outbox` table) is upgraded at startup.
#[test]
fn a_version_2_schema_is_upgraded() {
    let server = Postgres::start();
    let a = instance(&server);
    drop(a);
    server.psql(
        "DROP TABLE outbox; DELETE FROM schema_version; INSERT INTO schema_version (version) VALUES (2)",
    );
    let b = instance(&server);
    assert_eq!(
        server.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version"),
        format!("2,{SCHEMA_VERSION}")
    );
    assert_eq!(server.psql("SELECT count(*) FROM outbox"), "0");
    let posted = post_event(&agent(), &b.base(), r#"{"product_id":"p1","stock":1}"#);
    assert_eq!(posted.status, 202, "{}", posted.body);
}

/// The products table follows the journal (compaction), never ahead of
/// what it may drop: journal rows past the retention are pruned only once
/// compacted, and an instance that starts while rows are not compacted
/// yet folds them in. Compaction is held back here by a session holding
/// the compaction's advisory lock (`pg_try_advisory_lock(0x50555343)`),
/// which every instance's compactor then leaves to it.
#[test]
fn the_journal_is_pruned_only_once_compacted_and_a_start_folds_the_rest() {
    let server = Postgres::start();
    let a = instance(&server);
    let http = agent();
    let post = |body: &str| {
        let posted = post_event(&http, &a.base(), body);
        assert_eq!(posted.status, 202, "{}", posted.body);
        posted.json()["seq"].as_u64().expect("seq")
    };
    let through = || -> u64 {
        server
            .psql("SELECT through FROM compaction")
            .parse()
            .expect("through")
    };
    assert_eq!(post(r#"{"product_id":"p1","price":1}"#), 1);
    common::wait_until("seq 1 compacted", || (through() == 1).then_some(()));

    let held = server.hold("SELECT pg_advisory_lock(x'50555343'::int)");
    assert_eq!(post(r#"{"product_id":"p1","price":2}"#), 2);
    assert_eq!(post(r#"{"product_id":"p2","stock":5,"version":3}"#), 3);
    // Every row older than the retention now.
    server.psql("UPDATE journal SET accepted_at = now() - interval '1 hour'");
    two_housekeeping_rounds(&server);
    assert_eq!(through(), 1);
    assert_eq!(
        server.psql("SELECT string_agg(seq::text, ',' ORDER BY seq) FROM events"),
        "2,3",
        "the compacted row pruned, the others kept"
    );
    assert_eq!(
        server.psql("SELECT product_id, price FROM products"),
        "p1|1"
    );

    // A new instance: the products table and the journal after it.
    let b = instance(&server);
    let p1 = get(&b.base(), "/products/p1");
    assert_eq!(p1.status, 200, "{}", p1.body);
    assert_eq!(p1.json()["price"], 2);
    let p2 = get(&b.base(), "/products/p2");
    assert_eq!(p2.status, 200, "{}", p2.body);
    assert_eq!(p2.json()["stock"], 5);
    let etags = |base: &str| {
        ["p1", "p2"].map(|id| {
            get(base, &format!("/products/{id}"))
                .header("etag")
                .map(str::to_owned)
        })
    };
    assert_eq!(etags(&b.base()), etags(&a.base()));

    // Let go: compacted, then pruned.
    drop(held);
    common::wait_until("seq 3 compacted", || (through() == 3).then_some(()));
    assert_eq!(
        server.psql("SELECT product_id, price, stock FROM products ORDER BY 1"),
        "p1|2|\np2||5"
    );
    common::wait_until("the journal pruned", || {
        (server.psql("SELECT count(*) FROM journal") == "0").then_some(())
    });
    let c = instance(&server);
    assert_eq!(etags(&c.base()), etags(&a.base()));
    assert_eq!(get(&c.base(), "/products/p1").json()["price"], 2);
}

/// A server that is down at startup: exit 1 within the connect bound, and
/// the password never printed.
#[test]
fn an_unreachable_server_fails_the_start_without_showing_the_password() {
    let server = Postgres::start();
    let url = format!(
        "postgres://app:hunter2@127.0.0.1:{}/products",
        server.port()
    );
    server.stop();
    let started = Instant::now();
    let (code, log) = failed_start(&[("DATABASE_URL", url.as_str())]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(!log.contains("hunter2"), "{log}");
    assert!(log.contains("postgres://app:***@127.0.0.1"), "{log}");
}

/// A port that takes the connection and never answers (a frozen host, or
/// not PostgreSQL): the start gives up after its 10 s, exit 1, saying so.
#[test]
fn a_server_that_never_answers_fails_the_start_within_its_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    // Connections wait in the listener's backlog: accepted by the kernel,
    // never answered.
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/products");
    let started = Instant::now();
    // `failed_start` waits with a deadline: a start that hangs fails.
    let (code, log) = failed_start(&[("DATABASE_URL", url.as_str())]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(log.contains("did not answer within 10 s"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    drop(silent);
}

/// One event a client sent, and what became of it.
#[derive(Clone, Debug)]
struct Sent {
    request_id: String,
    product: String,
    price: Option<String>,
    stock: Option<u64>,
    version: Option<u64>,
    /// The seq of a 202 (or of the original, for a duplicate's 200).
    acked: Option<u64>,
}

/// A small deterministic random number generator (xorshift), one per
/// client, so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Posts `body` with `request_id` to `base`: Some(status, seq) if an
/// answer came, None if the connection failed (outcome unknown).
fn send(base: &str, body: &str, request_id: &str) -> Option<(u16, Option<u64>)> {
    let response = agent()
        .post(format!("{base}/events"))
        .header("Content-Type", "application/json")
        .header("X-Request-Id", request_id)
        .send(body);
    if matches!(response, Err(ref e) if !matches!(e, ureq::Error::StatusCode(_))) {
        return None;
    }
    let reply = read_reply(response);
    let seq = serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["seq"].as_u64());
    Some((reply.status, seq))
}

/// A field's write key, the service's rule (`WriteKey` in `store.rs`): a
/// higher client version wins, of equal versions the first, and any
/// versioned write beats any unversioned one; else the later seq.
fn key(seq: u64, version: Option<u64>) -> (u64, u64) {
    match version {
        None => (0, seq),
        Some(v) => (v + 1, u64::MAX - seq),
    }
}

/// A journal row: seq, product, price, stock, version, request id.
type Row = (
    u64,
    String,
    Option<String>,
    Option<u64>,
    Option<u64>,
    String,
);

/// A field's winning write: its key and value, or never set.
type Winner = Option<((u64, u64), String)>;

/// The journal, in seq order.
fn journal(server: &Postgres) -> Vec<Row> {
    let text = server.psql(
        "SELECT seq, product_id, coalesce(price, '-'), coalesce(stock::text, '-'), coalesce(version::text, '-'), request_id FROM events ORDER BY seq",
    );
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let opt = |s: &str| (s != "-").then(|| s.to_owned());
            (
                f[0].parse().expect("seq"),
                f[1].to_owned(),
                opt(f[2]),
                opt(f[3]).map(|s| s.parse().expect("stock")),
                opt(f[4]).map(|s| s.parse().expect("version")),
                f[5].to_owned(),
            )
        })
        .collect()
}

/// Three instances of the real binary on one database; clients spread
/// partial and full updates of a few hot products over all three, some
/// with versions, some retried with their event id on another instance;
/// one instance is killed with SIGKILL in the middle. Then: every
/// acknowledged event is in the journal with its seq and content, and
/// nothing that was refused; seqs are gap-free; every field in the
/// database holds the value of the journal's winning event by the
/// service's rule, which is at least the acknowledged event with the
/// highest key; and both survivors, and the killed one restarted, serve
/// exactly that.
#[test]
fn three_instances_one_killed_agree_on_every_field() {
    let server = Postgres::start();
    let mut instances: Vec<Binary> = (0..3).map(|_| instance(&server)).collect();
    let bases: Vec<String> = instances.iter().map(Binary::base).collect();
    let sent = load_killing_the_third(&mut instances, &bases);
    let journal = journal(&server);
    let acked = journal_holds_what_was_acknowledged(&journal, &sent);
    let expected = winners(&journal);
    // At least as new as the newest acknowledged write of each field.
    for event in &acked {
        let k = key(event.acked.expect("acked"), event.version);
        let fields = &expected[&event.product];
        if event.price.is_some() {
            assert!(fields[0].as_ref().is_some_and(|(w, _)| *w >= k));
        }
        if event.stock.is_some() {
            assert!(fields[1].as_ref().is_some_and(|(w, _)| *w >= k));
        }
    }
    let last = journal.len() as u64;
    // The products table follows the journal within a compaction round
    // (a surviving instance's, whichever instance was compacting).
    common::wait_until("the products table compacted through the last seq", || {
        let through: u64 = server.psql("SELECT through FROM compaction").parse().ok()?;
        (through >= last).then_some(())
    });
    let db = server.psql("SELECT product_id, coalesce(price, 'null'), coalesce(stock::text, 'null') FROM products ORDER BY 1");
    let db: Vec<String> = db.lines().map(str::to_owned).collect();
    let want: Vec<String> = expected
        .iter()
        .map(|(id, [p, s])| {
            format!(
                "{id}|{}|{}",
                p.as_ref().map_or("null", |(_, v)| v),
                s.as_ref().map_or("null", |(_, v)| v)
            )
        })
        .collect();
    assert_eq!(db, want, "the products table");
    let etags = survivors_serve_the_winners(&bases[..2], &expected, last);
    // The killed instance, restarted: it loads the products and follows
    // the journal, and serves the same values and ETags (nothing applied
    // twice changes anything), without a write to the database.
    let journal_before = server.psql("SELECT count(*), max(seq) FROM events");
    let restarted = instance(&server);
    let again = survivors_serve_the_winners(&[restarted.base()], &expected, last);
    assert_eq!(again, etags, "the restarted instance's ETags");
    assert_eq!(
        server.psql("SELECT count(*), max(seq) FROM events"),
        journal_before
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM products"),
        expected.len().to_string()
    );
}

const HOT_PRODUCTS: u64 = 4;
const CLIENTS: u64 = 6;
const EVENTS_PER_CLIENT: u64 = 150;

/// The clients' load over all three instances; the third is killed with
/// SIGKILL once about half the events are acknowledged. Returns every
/// event sent.
fn load_killing_the_third(instances: &mut [Binary], bases: &[String]) -> Vec<Sent> {
    let acked = AtomicU64::new(0);
    let killed = AtomicBool::new(false);
    thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (acked, killed) = (&acked, &killed);
                scope.spawn(move || one_client(client, bases, acked, killed))
            })
            .collect();
        common::wait_until("half the events acknowledged", || {
            (acked.load(SeqCst) >= CLIENTS * EVENTS_PER_CLIENT / 2).then_some(())
        });
        killed.store(true, SeqCst);
        instances[2].signal("KILL");
        instances[2].wait_exit();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("client"))
            .collect()
    })
}

/// One client's events: random partial and full updates of the hot
/// products, some versioned, some with an event id (retried on the next
/// instance when an answer is lost or a 503 comes back, and now and then
/// sent again on purpose: a duplicate).
fn one_client(client: u64, bases: &[String], acked: &AtomicU64, killed: &AtomicBool) -> Vec<Sent> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (client + 1));
    let mut sent = Vec::new();
    for n in 0..EVENTS_PER_CLIENT {
        let product = format!("hot-{}", rng.below(HOT_PRODUCTS));
        let (price, stock) = match rng.below(3) {
            0 => (
                Some(format!("{}.{}", rng.below(100), rng.below(9) + 1)),
                None,
            ),
            1 => (None, Some(rng.below(1000))),
            _ => (Some(rng.below(500).to_string()), Some(rng.below(1000))),
        };
        let version = (rng.below(4) == 0).then(|| rng.below(5));
        let event_id = (rng.below(2) == 0).then(|| format!("c{client}-{n}"));
        let mut body = format!(r#"{{"product_id":"{product}""#);
        if let Some(p) = &price {
            body += &format!(r#","price":{p}"#);
        }
        if let Some(s) = stock {
            body += &format!(r#","stock":{s}"#);
        }
        if let Some(v) = version {
            body += &format!(r#","version":{v}"#);
        }
        if let Some(id) = &event_id {
            body += &format!(r#","event_id":"{id}""#);
        }
        body += "}";
        let mut event = Sent {
            request_id: format!("c{client}-{n}"),
            product,
            price,
            stock,
            version,
            acked: None,
        };
        let first = rng.below(3) as usize;
        for attempt in 0..3 {
            let i = (first + attempt) % 3;
            if i == 2 && killed.load(SeqCst) {
                continue;
            }
            match send(&bases[i], &body, &event.request_id) {
                Some((202 | 200, Some(seq))) => {
                    event.acked = Some(seq);
                    acked.fetch_add(1, SeqCst);
                    if event_id.is_some() && rng.below(3) == 0 {
                        let j = (i + 1) % 2;
                        let again = send(&bases[j], &body, "retry");
                        assert_eq!(again, Some((200, Some(seq))), "{body}");
                    }
                    break;
                }
                Some((status, _)) if status != 503 => panic!("{body}: status {status}"),
                _ if event_id.is_none() => break,
                _ => {}
            }
        }
        sent.push(event);
    }
    sent
}

/// The journal is gap-free from 1; every row is an event that was sent
/// (acknowledged, or its answer lost to the kill), with its content; every
/// acknowledged event is in it with its seq. Returns the acknowledged
/// events.
fn journal_holds_what_was_acknowledged<'a>(journal: &[Row], sent: &'a [Sent]) -> Vec<&'a Sent> {
    for (i, row) in journal.iter().enumerate() {
        assert_eq!(row.0, i as u64 + 1, "seqs are gap-free");
    }
    let by_request: std::collections::HashMap<&str, &Sent> =
        sent.iter().map(|s| (s.request_id.as_str(), s)).collect();
    for row in journal {
        let event = by_request
            .get(row.5.as_str())
            .unwrap_or_else(|| panic!("journal row {row:?} was never sent"));
        assert_eq!(
            (&row.1, &row.2, row.3, row.4),
            (&event.product, &event.price, event.stock, event.version),
            "journal row {row:?}"
        );
        if let Some(seq) = event.acked {
            assert_eq!(seq, row.0, "acknowledged seq of {}", event.request_id);
        }
    }
    let journaled: std::collections::HashSet<u64> = journal.iter().map(|r| r.0).collect();
    let acked: Vec<&Sent> = sent.iter().filter(|s| s.acked.is_some()).collect();
    assert!(
        acked.len() as u64 >= CLIENTS * EVENTS_PER_CLIENT / 2,
        "{}",
        acked.len()
    );
    for event in &acked {
        assert!(
            journaled.contains(&event.acked.expect("acked")),
            "{event:?}"
        );
    }
    acked
}

/// The winner of each field by the service's rule, over the journal.
fn winners(journal: &[Row]) -> std::collections::BTreeMap<String, [Winner; 2]> {
    let mut expected: std::collections::BTreeMap<String, [Winner; 2]> = Default::default();
    for (seq, product, price, stock, version, _) in journal {
        let fields = expected.entry(product.clone()).or_default();
        let k = key(*seq, *version);
        for (slot, value) in fields
            .iter_mut()
            .zip([price.clone(), stock.map(|s| s.to_string())])
        {
            if let Some(value) = value
                && slot.as_ref().is_none_or(|(old, _)| k > *old)
            {
                *slot = Some((k, value));
            }
        }
    }
    expected
}

/// Each instance at `bases`, once it has applied through `last`, serves
/// every product's winners, the same list, and the same ETags on each;
/// returns the ETags.
fn survivors_serve_the_winners(
    bases: &[String],
    expected: &std::collections::BTreeMap<String, [Winner; 2]>,
    last: u64,
) -> Vec<(String, Option<String>)> {
    let as_json = |v: &Winner| match v {
        Some((_, text)) => serde_json::from_str::<serde_json::Value>(text).expect("number"),
        None => serde_json::Value::Null,
    };
    let mut all_etags: Vec<Vec<(String, Option<String>)>> = Vec::new();
    let mut lists = Vec::new();
    for base in bases {
        let mut etags = Vec::new();
        for (id, fields) in expected {
            let read = get(base, &format!("/products/{id}?min_seq={last}&wait=5"));
            assert_eq!(read.status, 200, "{base} {id}: {}", read.body);
            let body = read.json();
            assert_eq!(body["price"], as_json(&fields[0]), "{base} {id} price");
            assert_eq!(body["stock"], as_json(&fields[1]), "{base} {id} stock");
            etags.push((id.clone(), read.header("etag").map(str::to_owned)));
        }
        all_etags.push(etags);
        let list = get(base, "/products?limit=1000");
        assert_eq!(list.status, 200, "{base}: {}", list.body);
        assert_eq!(
            list.json()["products"].as_array().map(Vec::len),
            Some(expected.len()),
            "{base}: {}",
            list.body
        );
        lists.push(list.body);
    }
    for (etags, list) in all_etags.iter().zip(&lists).skip(1) {
        assert_eq!(etags, &all_etags[0], "the same ETags on every instance");
        assert_eq!(list, &lists[0], "GET /products on every instance");
    }
    all_etags.swap_remove(0)
}

/// The database crashes in the middle of a load (immediate shutdown: what
/// its processes had not written out is gone, as in a power loss) and
/// starts again: while it is down, POST answers 503
/// `storage_unavailable` with `Retry-After` at once, `/readyz` 503 with
/// the reason, `/healthz` 200; once it is back the instance carries on by
/// itself; no acknowledged event is lost (each event is retried with its
/// id until acknowledged, and then read back). (A change that committed
/// asynchronously and answered after a "flush" that did not really flush
/// lost acknowledged events here.)
#[test]
fn a_database_outage_refuses_events_and_recovers_without_a_restart() {
    let server = Postgres::start();
    let a = instance(&server);
    let base = a.base();
    let load = OutageLoad::default();
    let acked: Vec<(String, u64, u64)> = thread::scope(|scope| {
        // However this scope ends (a failed assertion too), the load stops,
        // so that the scope can join it.
        let _stop = common::StopOnDrop(&load.stop);
        let writer = scope.spawn(|| load.run(&base));
        load.wait_for("events acknowledged before the outage", &load.acked, 50);
        load.phase.store(DOWN, SeqCst);
        server.crash();
        load.wait_for(
            "a 503 while the database is down",
            &load.refused_while_down,
            3,
        );
        let ready = get(&base, "/readyz");
        let problem = ready.assert_problem(503, "not_ready");
        assert_eq!(problem["reason"], "storage_unavailable", "{}", ready.body);
        assert!(!ready.body.contains("password"), "{}", ready.body);
        assert_eq!(get(&base, "/healthz").status, 200);
        load.phase.store(UP_AGAIN, SeqCst);
        server.restart();
        load.wait_for(
            "events acknowledged after the outage",
            &load.acked_after,
            20,
        );
        common::wait_until("ready again", || {
            (get(&base, "/readyz").status == 200).then_some(())
        });
        load.stop.store(true, SeqCst);
        writer.join().expect("load")
    });
    let last = acked.iter().map(|(.., seq)| *seq).max().expect("acked");
    for (product, stock, _) in &acked {
        let read = get(&base, &format!("/products/{product}?min_seq={last}&wait=5"));
        assert_eq!(read.status, 200, "{product}: {}", read.body);
        assert_eq!(read.json()["stock"].as_u64(), Some(*stock), "{product}");
    }
    let in_db: u64 = server
        .psql("SELECT count(*) FROM events")
        .parse()
        .expect("count");
    assert_eq!(
        in_db,
        acked.len() as u64,
        "one journal row per event, retries included"
    );
}

const DOWN: u8 = 1;
const UP_AGAIN: u8 = 2;

/// The outage test's writer: posts p1, p2, ... in turn, each until it is
/// acknowledged, and counts what happened in which phase (0 up, `DOWN`,
/// `UP_AGAIN`).
#[derive(Default)]
struct OutageLoad {
    phase: AtomicU8,
    acked: AtomicU64,
    refused_while_down: AtomicU64,
    acked_after: AtomicU64,
    stop: AtomicBool,
}

impl OutageLoad {
    /// (product, stock, seq) of every acknowledged event.
    fn run(&self, base: &str) -> Vec<(String, u64, u64)> {
        let mut acked = Vec::new();
        let mut n = 0u64;
        while !self.stop.load(SeqCst) {
            n += 1;
            let seq = self.post_until_acknowledged(base, n);
            acked.push((format!("p{n}"), n, seq));
        }
        acked
    }

    fn post_until_acknowledged(&self, base: &str, n: u64) -> u64 {
        let body = format!(r#"{{"product_id":"p{n}","stock":{n},"event_id":"e{n}"}}"#);
        loop {
            let started = Instant::now();
            let reply = read_reply(
                agent()
                    .post(format!("{base}/events"))
                    .header("Content-Type", "application/json")
                    .send(&body),
            );
            match reply.status {
                202 | 200 => {
                    self.acked.fetch_add(1, SeqCst);
                    if self.phase.load(SeqCst) == UP_AGAIN {
                        self.acked_after.fetch_add(1, SeqCst);
                    }
                    return reply.json()["seq"].as_u64().expect("seq");
                }
                503 => {
                    reply.assert_problem(503, "storage_unavailable");
                    assert!(reply.header("retry-after").is_some(), "{}", reply.body);
                    // "At once": no thread held for anything like a timeout
                    // (the bound here is generous).
                    let took = started.elapsed();
                    assert!(took < Duration::from_secs(5), "{took:?}");
                    if self.phase.load(SeqCst) == DOWN {
                        self.refused_while_down.fetch_add(1, SeqCst);
                    }
                    thread::yield_now();
                }
                other => panic!("status {other}: {}", reply.body),
            }
        }
    }

    fn wait_for(&self, what: &str, counter: &AtomicU64, at_least: u64) {
        common::wait_until(what, || (counter.load(SeqCst) >= at_least).then_some(()));
    }
}

/// A server that stops answering without closing its connections (frozen
/// with SIGSTOP, as a hung host looks): the POST whose commit it holds is
/// answered 503 `storage_unavailable` once the commit has waited the
/// watchdog's 3 s, later POSTs at once (`DB_POOL_SIZE=1`: with a pool,
/// each committer's first batch waits its 3 s), `/readyz` 503 with the reason,
/// `/healthz` 200. Thawed, the instance commits again by itself, and the
/// held event retried with its event id is either the one committed (a
/// duplicate) or new: applied once either way.
#[test]
fn a_frozen_database_is_given_up_on_within_seconds_and_recovers_by_itself() {
    let server = Postgres::start();
    let mut a = instance(&server);
    let (base, http) = (a.base(), agent());
    let first = post_event(
        &http,
        &base,
        r#"{"product_id":"f","stock":1,"event_id":"f-1"}"#,
    );
    assert_eq!(first.status, 202, "{}", first.body);

    let frozen = server.freeze();
    let held_body = r#"{"product_id":"f","stock":2,"event_id":"f-2"}"#;
    let started = Instant::now();
    let held = post_event(&http, &base, held_body);
    let waited = started.elapsed();
    held.assert_problem(503, "storage_unavailable");
    assert!(held.header("retry-after").is_some(), "{:?}", held.headers);
    // Given up on by the watchdog: after 3 s (12 s if the freeze caught
    // the committer in its once-a-second housekeeping), not by a TCP or
    // statement timeout (the kernel still takes what is sent: none would
    // come for minutes).
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(16),
        "answered after {waited:?}"
    );
    let started = Instant::now();
    let later = post_event(&http, &base, r#"{"product_id":"g","stock":1}"#);
    later.assert_problem(503, "storage_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let ready = get(&base, "/readyz");
    let problem = ready.assert_problem(503, "not_ready");
    assert_eq!(problem["reason"], "storage_unavailable", "{}", ready.body);
    assert!(
        ready.body.contains("has not answered for"),
        "{}",
        ready.body
    );
    assert_eq!(get(&base, "/healthz").status, 200);

    drop(frozen);
    let (seq, duplicate) = common::wait_until("a POST accepted after the thaw", || {
        let retried = post_event(&http, &base, held_body);
        matches!(retried.status, 200 | 202).then(|| {
            let seq = retried.json()["seq"].as_u64().expect("seq");
            (seq, retried.status == 200)
        })
    });
    common::wait_until("ready again", || {
        (get(&base, "/readyz").status == 200).then_some(())
    });
    let read = get(&base, &format!("/products/f?min_seq={seq}&wait=5"));
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["stock"], 2, "{}", read.body);
    assert_eq!(
        server.psql("SELECT count(*) FROM events WHERE event_id = 'f-2'"),
        "1",
        "the held event is in the journal once"
    );
    // The held commit went through once thawed (the server had it; unless
    // the freeze caught the housekeeping, and the event waited in the
    // mailbox): then the log says so, since its client was told 503.
    if duplicate {
        let line = a.wait_for_log("went through after all");
        assert!(line.contains("1 events"), "{line}");
    }
}

/// A pool (`DB_POOL_SIZE=2`) whose second connection is lost again and
/// again (its backend terminated each time it comes back) keeps
/// committing on the first: at most one event per loss is refused (the
/// batch that found the connection dead), `/readyz` stays 200, and once
/// left alone the lost connection is made again by itself.
#[test]
fn a_pool_that_loses_one_connection_commits_on_the_other() {
    const LOSSES: usize = 3;
    let server = Postgres::start();
    let url = server.url();
    let a = Binary::start(&[("DATABASE_URL", url.as_str()), ("DB_POOL_SIZE", "2")]);
    let base = a.base();
    let committer_1 = || {
        server.psql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'product-update-service committer-1'",
        )
    };
    common::wait_until("committer-1 connected", || {
        (!committer_1().is_empty()).then_some(())
    });

    let (mut refused, mut acked, mut n) = (0, Vec::new(), 0u64);
    let mut post = |refused: &mut usize| {
        n += 1;
        let body = format!(r#"{{"product_id":"p{n}","stock":{n}}}"#);
        match send(&base, &body, &format!("r{n}")) {
            Some((202, Some(seq))) => acked.push((n, seq)),
            Some((503, _)) => *refused += 1,
            other => panic!("event {n}: {other:?}"),
        }
        let ready = get(&base, "/readyz");
        assert_eq!(
            ready.status, 200,
            "one connection of two works: {}",
            ready.body
        );
    };
    // Each loss is noticed when committer-1 next takes a batch, and its
    // connection made again a second later, when it is terminated again.
    let mut killed: Vec<String> = Vec::new();
    common::wait_until("committer-1's connection lost three times", || {
        post(&mut refused);
        let pid = committer_1();
        if !pid.is_empty() && !killed.contains(&pid) {
            assert_eq!(
                server.psql(&format!("SELECT pg_terminate_backend({pid})")),
                "t"
            );
            killed.push(pid);
        }
        (killed.len() == LOSSES).then_some(())
    });
    common::wait_until("committer-1 connected again", || {
        post(&mut refused);
        let pid = committer_1();
        (!pid.is_empty() && !killed.contains(&pid)).then_some(())
    });
    for _ in 0..50 {
        post(&mut refused);
    }
    assert!(
        refused <= LOSSES,
        "{refused} events refused for {LOSSES} losses of one connection of the pool"
    );
    let (last_n, last_seq) = *acked.last().expect("acked");
    let read = get(
        &base,
        &format!("/products/p{last_n}?min_seq={last_seq}&wait=5"),
    );
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["stock"].as_u64(), Some(last_n));
}

/// A database whose seq counter went back (a fail-over to a replica
/// without the last commits, a restore): the instance's copy cannot be
/// merged with it, so `/readyz` says so (and a load balancer takes the
/// instance out) instead of serving a mix.
#[test]
fn a_seq_counter_that_goes_back_makes_the_instance_unready() {
    let server = Postgres::start();
    let a = instance(&server);
    let http = agent();
    for i in 0..3 {
        let posted = post_event(
            &http,
            &a.base(),
            &format!(r#"{{"product_id":"p{i}","stock":{i}}}"#),
        );
        assert_eq!(posted.status, 202, "{}", posted.body);
    }
    common::wait_until("seq 3 applied", || {
        (get(&a.base(), "/products/p2?min_seq=3&wait=1").status == 200).then_some(())
    });
    server.psql("UPDATE seq_counter SET last_seq = 1");
    let ready = common::wait_until("/readyz 503", || {
        let ready = get(&a.base(), "/readyz");
        (ready.status == 503).then_some(ready)
    });
    let problem = ready.assert_problem(503, "not_ready");
    let detail = problem["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        detail.contains("seq counter went back from 3 to 1"),
        "{detail}"
    );
    assert_eq!(get(&a.base(), "/healthz").status, 200);
}

/// `events_unapplied` (and the shutdown's `not_applied`) count what this
/// instance has queued and not applied, the other instances' events
/// included: an instance applies every instance's events, so its accepted
/// count minus its applied count means nothing (it read 0 here, with five
/// events waiting).
#[test]
fn events_unapplied_counts_other_instances_events_waiting_here() {
    let server = Postgres::start();
    let b = TestServer::start(Config {
        database_url: Some(DatabaseUrl::parse(&server.url()).expect("url")),
        ..test_config()
    });
    let paused = b.running.pause_workers();
    let a = instance(&server);
    let http = agent();
    for i in 0..5 {
        let body = format!(r#"{{"product_id":"u{i}","stock":{i}}}"#);
        assert_eq!(post_event(&http, &a.base(), &body).status, 202);
    }
    common::wait_until("b to queue the five events a accepted", || {
        (b.stats().queued >= 5).then_some(())
    });
    assert_eq!(b.stats().accepted, 0);
    assert_eq!(unapplied(&b), 5);
    drop(paused);
    common::wait_until("b to apply them", || (unapplied(&b) == 0).then_some(()));
    let report = b.running.shutdown().expect("shutdown");
    assert_eq!(report.not_applied, 0, "{report}");
}

fn unapplied(server: &TestServer) -> u64 {
    let metrics = server.get("/metrics").body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("events_unapplied ")?.parse().ok())
        .unwrap_or_else(|| panic!("no events_unapplied in {metrics}"))
}
