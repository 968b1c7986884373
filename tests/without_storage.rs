//! The default build (without the `sqlite`, `postgres` and `amqp`
//! features) asked for durable or shared state, or for RabbitMQ: exit 2
//! with one line saying how to build with it. Only compiled without the features; `.ci/run` runs it that way
//! (`cargo test --test without_storage`).
#![cfg(not(any(feature = "sqlite", feature = "postgres", feature = "amqp")))]

use std::process::Command;

#[test]
fn data_dir_on_a_build_without_sqlite_exits_2_saying_how_to_build_it() {
    let dir = std::env::temp_dir().join(format!("pus-without-storage-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_product-update-service"))
        .env_clear()
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("DATA_DIR", &dir)
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features sqlite"), "{stderr}");
    assert!(!dir.exists(), "nothing was created");
}

#[test]
fn database_url_on_a_build_without_postgres_exits_2_saying_how_to_build_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_product-update-service"))
        .env_clear()
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1:1/products",
        )
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features postgres"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn amqp_url_on_a_build_without_amqp_exits_2_saying_how_to_build_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_product-update-service"))
        .env_clear()
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("AMQP_URL", "amqp://app:hunter2@127.0.0.1:1/%2f")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features amqp"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
