//! The RabbitMQ front door: events in through sharded queues (cargo
//! feature `amqp`, turned on by `AMQP_URL`).
//!
//! A producer publishes the same JSON as `POST /events` to the exchange
//! `AMQP_EXCHANGE` with the `product_id` as routing key; the exchange
//! routes it by a consistent hash of that key to one of `AMQP_SHARDS`
//! queues (`topology.rs`), so one product's events always share a queue.
//! Each instance runs one consumer thread per shard (`shard.rs`); each
//! queue has a single active consumer across all instances, so a shard's
//! messages are taken in order, by one instance at a time, and another
//! instance's consumer takes over when that one goes away. Each message is
//! handed to the core with the same rules, seq, idempotency (`event_id`,
//! or the message's `message_id`) and durability as a `POST /events`, and
//! settled by `verdict.rs`: acknowledged once as safe as a 202, retried
//! later through a delay queue, or dead-lettered with its reason.
//!
//! The file order going down: this file (settings, start and stop),
//! `consumers.rs` (the threads as a whole), `shard.rs` (one thread),
//! `verdict.rs` (what becomes of a message), `topology.rs` (the broker's
//! names, declarations and copies). What they count is in the core's
//! metrics (`metrics.rs`, `BrokerMetrics`).
//!
//! lapin, the AMQP client, runs its own small executor
//! (async-global-executor: one thread per core, an I/O reactor thread,
//! `lapin-io-loop`, and a thread for blocking work); the service's threads
//! drive it with `block_on` and no async runtime is involved anywhere else.

use std::fmt;

use crate::config::Config;
use crate::service::Service;
use crate::shutdown::FrontDoor;

#[cfg(feature = "amqp")]
mod consumers;
#[cfg(feature = "amqp")]
pub mod dead_letters;
#[cfg(feature = "amqp")]
pub mod relay;
#[cfg(feature = "amqp")]
pub mod shard;
#[cfg(feature = "amqp")]
pub mod topology;
#[cfg(feature = "amqp")]
pub mod verdict;

/// The front door, checked and ready to start: the broker was reached and
/// its topology declared.
pub struct Checked {
    #[cfg(feature = "amqp")]
    inner: consumers::Checked,
}

/// Reaches the broker and declares the topology (nothing when `AMQP_URL`
/// is unset), so that a broker that cannot be reached, or whose objects
/// have other arguments, stops the start before anything runs.
pub fn check(config: &Config) -> Result<Option<Checked>, BrokerError> {
    if config.amqp_url.is_none() {
        return Ok(None);
    }
    #[cfg(feature = "amqp")]
    return consumers::check(config).map(|inner| Some(Checked { inner }));
    #[cfg(not(feature = "amqp"))]
    return Err(BrokerError::NotBuilt);
}

impl Checked {
    /// Starts the consumer threads; they hand events to `service`.
    pub fn start(self, service: &std::sync::Arc<Service>) -> std::io::Result<Box<dyn FrontDoor>> {
        #[cfg(feature = "amqp")]
        return self.inner.start(service);
        #[cfg(not(feature = "amqp"))]
        {
            let _ = service;
            Err(std::io::Error::other("built without the amqp feature"))
        }
    }
}

/// `product-update-service dead-letters ...` (see `dead_letters.rs`):
/// returns the exit code, having written the output to `out` and an error
/// to `err`: 0 done, 1 the broker failed, 2 a bad argument or setting.
pub fn dead_letters_command(
    args: &[String],
    config: &Config,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> u8 {
    #[cfg(feature = "amqp")]
    {
        let command = match dead_letters::parse(args) {
            Ok(command) => command,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return 2;
            }
        };
        if config.amqp_url.is_none() {
            let _ = writeln!(
                err,
                "error: AMQP_URL is not set: set it (and AMQP_EXCHANGE, if not the default) as for the service"
            );
            return 2;
        }
        match dead_letters::run(config, &command, out) {
            Ok(n) => {
                let verb = match command {
                    dead_letters::Command::List { .. } => "listed",
                    dead_letters::Command::Replay { .. } => "replayed",
                };
                let _ = writeln!(err, "{verb} {n} dead letters");
                0
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                1
            }
        }
    }
    #[cfg(not(feature = "amqp"))]
    {
        let _ = (args, config, out);
        let _ = writeln!(err, "error: {}", BrokerError::NotBuilt);
        2
    }
}

/// Why the RabbitMQ front door could not start. [`exit_code`] is what
/// `main` exits with.
///
/// [`exit_code`]: BrokerError::exit_code
#[derive(Debug)]
pub enum BrokerError {
    /// `AMQP_URL` is set but this build lacks the `amqp` feature.
    NotBuilt,
    /// The broker could not be reached (or refused the login) in time.
    Unreachable { url: String, detail: String },
    /// An exchange or queue exists with other arguments than this
    /// service declares (another application's, or an older layout).
    Conflict { detail: String },
}

impl BrokerError {
    /// 2 for a setting to fix, 1 for a broker to fix.
    pub fn exit_code(&self) -> u8 {
        match self {
            BrokerError::NotBuilt | BrokerError::Conflict { .. } => 2,
            BrokerError::Unreachable { .. } => 1,
        }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::NotBuilt => f.write_str(
                "AMQP_URL is set, but this build has no RabbitMQ support: build with `cargo build --release --features amqp` (or unset AMQP_URL to take events over HTTP only)",
            ),
            BrokerError::Unreachable { url, detail } => write!(
                f,
                "cannot reach RabbitMQ at {url}: {detail}; check that the broker runs and AMQP_URL's host, port, user, password and vhost"
            ),
            BrokerError::Conflict { detail } => write!(
                f,
                "RabbitMQ holds an exchange or queue of this service's names with other arguments: {detail}; delete it (when empty) or set AMQP_EXCHANGE (or AMQP_OUTBOX_EXCHANGE) to another name"
            ),
        }
    }
}

impl std::error::Error for BrokerError {}
