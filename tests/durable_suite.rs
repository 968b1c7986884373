//! The API, concurrency and delivery tests once more, each against a
//! durable instance (`DATA_DIR` in a fresh directory, `DURABILITY=commit`):
//! the same test code, included here, with `common::test_config` giving a
//! data directory in this binary (`common::durable_suite`). Every promise
//! those tests check holds in durable mode too.
#![cfg(feature = "sqlite")]
// Each included file declares its own `mod common;`, exactly as it does as
// its own test binary, so the helpers are compiled once per file here: the
// price of running the same test code without copying it.
#![allow(clippy::duplicate_mod)]

#[path = "api.rs"]
mod api;
#[path = "bulk.rs"]
mod bulk;
#[path = "concurrency.rs"]
mod concurrency;
#[path = "delivery.rs"]
mod delivery;
