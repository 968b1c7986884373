//! The API, concurrency and delivery tests once more, each against an
//! instance in PostgreSQL mode (`DATABASE_URL`, a fresh database per test
//! on one throwaway server for this binary): the same test code, included
//! here, with `common::test_config` giving the database
//! (`common::postgres_suite`).
#![cfg(feature = "postgres")]
// As in `durable_suite.rs`: each included file declares its own
// `mod common;`.
#![allow(clippy::duplicate_mod)]

#[path = "api.rs"]
mod api;
#[path = "bulk.rs"]
mod bulk;
#[path = "concurrency.rs"]
mod concurrency;
#[path = "delivery.rs"]
mod delivery;
