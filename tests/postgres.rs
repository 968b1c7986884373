//! PostgreSQL (issue 13, in progress): the connection and the schema,
//! against a throwaway server per test (`common/postgres.rs`). Not yet a
//! mode of the service: these are the parts it will be built on.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use product_update_service::durable::pgsql::{self, DatabaseUrl, PgError, SCHEMA_VERSION};

fn url(server: &Postgres) -> DatabaseUrl {
    DatabaseUrl::parse(&server.url()).expect("the harness's URL")
}

/// Instances that start at once create the schema exactly once; later
/// starts find it and leave it as it is.
#[test]
fn instances_starting_at_once_create_the_schema_once() {
    let server = Postgres::start();
    let url = url(&server);
    let barrier = Barrier::new(4);
    thread::scope(|scope| {
        let starts: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut client = pgsql::connect(&url, Duration::from_secs(5)).expect("connect");
                    barrier.wait();
                    pgsql::prepare_schema(&mut client, &url)
                })
            })
            .collect();
        for start in starts {
            start.join().expect("thread").expect("schema ready");
        }
    });
    assert_eq!(
        server.psql("SELECT count(*), max(version) FROM schema_version"),
        format!("1|{SCHEMA_VERSION}")
    );
    assert_eq!(
        server.psql(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "events,idempotency,instances,products,schema_version"
    );
    // Data survives a later start untouched.
    server.psql("INSERT INTO instances VALUES ('a', now(), now())");
    let mut client = pgsql::connect(&url, Duration::from_secs(5)).expect("connect");
    pgsql::prepare_schema(&mut client, &url).expect("again");
    assert_eq!(server.psql("SELECT count(*) FROM instances"), "1");
}

/// A schema from a newer release: refused with a line naming the version,
/// and left as it was.
#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let server = Postgres::start();
    server.psql("CREATE TABLE schema_version (version integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); INSERT INTO schema_version (version) VALUES (7)");
    let url = url(&server);
    let mut client = pgsql::connect(&url, Duration::from_secs(5)).expect("connect");
    let e = pgsql::prepare_schema(&mut client, &url).expect_err("unknown version");
    assert!(
        matches!(e, PgError::UnknownSchema { found: 7, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("schema version 7") && text.contains("newer"),
        "{text}"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "1",
        "nothing created"
    );
}

/// A server that is down: the connection fails within its bound, and the
/// error names the URL with its password masked.
#[test]
fn an_unreachable_server_fails_fast_without_showing_the_password() {
    let server = Postgres::start();
    server.psql("CREATE ROLE app LOGIN PASSWORD 'hunter2'");
    let with_password = format!(
        "postgres://app:hunter2@127.0.0.1:{}/products",
        server.port()
    );
    let url = DatabaseUrl::parse(&with_password).expect("valid");
    // Reachable: connects (trust authentication; the password is unused).
    pgsql::connect(&url, Duration::from_secs(5)).expect("connect");
    server.stop();
    let started = Instant::now();
    let Err(e) = pgsql::connect(&url, Duration::from_secs(2)) else {
        panic!("connected to a stopped server");
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("postgres://app:***@127.0.0.1"), "{text}");
    assert!(!format!("{e:?}").contains("hunter2"));
}
