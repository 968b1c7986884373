//! Nothing: this crate exists for its test (see Cargo.toml).
