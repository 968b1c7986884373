//! tiny_http 0.12.0, forked for product-update-service, and cut down to
//! the one server the service runs: [`inline`], where each request is read,
//! handled and answered on its connection's thread.
//!
//! What came from upstream tiny_http: the crate's name, its license, the
//! [`Method`] and [`HTTPVersion`] types (`request_line.rs`), and the table
//! of reason phrases (in `inline/response.rs`). Everything under
//! `inline/` is new. Upstream's own server (`Server::recv` and the
//! threads, queues and readers behind it) is gone, with the fixes this
//! fork once made to it; the README says what each remaining part does
//! and which test shows it.
//!
//! The crate keeps the name `tiny_http` so that code written against
//! tiny_http says `tiny_http::Method` as before.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod inline;
mod request_line;

pub use request_line::{HTTPVersion, Method};
