//! The throwaway PostgreSQL server that the PostgreSQL-mode tests build on
//! (`common/postgres.rs`): it starts from the system's binaries in a temp
//! dir on a free loopback port, answers, survives a stop and a start on
//! the same data, and leaves nothing behind. In CI the binaries must be
//! there (`.ci/run` installs them); a missing one fails this test saying
//! which package to install.

mod common;

use std::net::TcpStream;

use common::postgres::Postgres;

#[test]
fn a_throwaway_server_starts_answers_restarts_and_is_removed() {
    let server = Postgres::start();
    assert!(
        server.url().starts_with("postgres://") && server.url().ends_with("/products"),
        "{}",
        server.url()
    );
    assert_eq!(server.psql("SELECT 1"), "1");
    server.psql("CREATE TABLE t (x integer); INSERT INTO t VALUES (7)");

    server.stop();
    assert!(
        TcpStream::connect(("127.0.0.1", server.port())).is_err(),
        "nothing listens once it is stopped"
    );
    server.restart();
    assert_eq!(
        server.psql("SELECT x FROM t"),
        "7",
        "same data after a restart"
    );

    let dir = server.dir().to_owned();
    drop(server);
    assert!(!dir.exists(), "{} removed", dir.display());
}
