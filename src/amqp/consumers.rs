//! The consumer threads as a whole: the check at startup, one thread per
//! shard, their counts and link states, and their stop.

use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use futures_lite::future::block_on;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{Connection, ConnectionProperties, ErrorKind};

use super::BrokerError;
use super::relay::{self, Relay};
use super::shard::{self, Shard};
use super::topology::Topology;
use crate::config::Config;
use crate::request_id::RequestIds;
use crate::service::Service;
use crate::shutdown::FrontDoor;

/// How long the check at startup waits for the broker.
const CHECK_WAIT: Duration = Duration::from_secs(30);

/// The settings, once the broker has been reached.
pub struct Checked {
    url: String,
    masked_url: String,
    topology: Arc<Topology>,
    prefetch: u16,
    max_body_bytes: usize,
    outbox_exchange: Option<String>,
}

/// Connects once and declares the topology, on a helper thread so that a
/// broker that never answers costs [`CHECK_WAIT`], not a TCP timeout.
pub fn check(config: &Config) -> Result<Checked, BrokerError> {
    let Some(url) = &config.amqp_url else {
        return Err(BrokerError::NotBuilt);
    };
    let checked = Checked {
        url: url.expose().to_owned(),
        masked_url: url.to_string(),
        topology: Arc::new(Topology {
            exchange: config.amqp_exchange.clone(),
            shards: config.amqp_shards,
            max_attempts: config.amqp_max_attempts,
            retry_delay: config.amqp_retry_delay,
        }),
        prefetch: config.amqp_prefetch,
        max_body_bytes: config.max_body_bytes,
        outbox_exchange: config.amqp_outbox_exchange.clone(),
    };
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let (url, topology) = (checked.url.clone(), Arc::clone(&checked.topology));
    let outbox = checked.outbox_exchange.clone();
    let unreachable = |detail: String| BrokerError::Unreachable {
        url: checked.masked_url.clone(),
        detail,
    };
    thread::Builder::new()
        .name("amqp-check".to_owned())
        .spawn(move || {
            let _ = done_tx.send(declare_once(&url, &topology, outbox.as_deref()));
        })
        .map_err(|e| unreachable(format!("cannot start a thread: {e}")))?;
    match done.recv_timeout(CHECK_WAIT) {
        Ok(Ok(())) => Ok(checked),
        Ok(Err(Failed::Conflict(detail))) => Err(BrokerError::Conflict { detail }),
        Ok(Err(Failed::Other(detail))) => Err(unreachable(detail)),
        Err(_) => Err(unreachable(format!("no answer in {CHECK_WAIT:?}"))),
    }
}

enum Failed {
    Conflict(String),
    Other(String),
}

fn declare_once(url: &str, topology: &Topology, outbox: Option<&str>) -> Result<(), Failed> {
    let other = |e: lapin::Error| Failed::Other(e.to_string());
    let connection =
        block_on(Connection::connect(url, ConnectionProperties::default())).map_err(other)?;
    let channel = block_on(connection.create_channel()).map_err(other)?;
    let declared = block_on(async {
        topology.declare(&channel).await?;
        match outbox {
            Some(exchange) => super::relay::declare(&channel, exchange).await,
            None => Ok(()),
        }
    })
    .map_err(|e| {
        let conflict = matches!(
            e.kind(),
            ErrorKind::ProtocolError(amqp) if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        );
        if conflict {
            Failed::Conflict(e.to_string())
        } else {
            Failed::Other(e.to_string())
        }
    });
    let _ = block_on(connection.close(200, "checked".into()));
    declared
}

impl Checked {
    /// Starts one consumer thread per shard.
    pub fn start(self, service: &Arc<Service>) -> std::io::Result<Box<dyn FrontDoor>> {
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        service.metrics().broker.consumers(self.topology.shards);
        let request_ids = Arc::new(RequestIds::default());
        let deadline = Arc::new(OnceLock::new());
        let mut threads = Vec::new();
        for index in 0..self.topology.shards {
            let shard = Shard {
                index,
                url: self.url.clone(),
                topology: Arc::clone(&self.topology),
                prefetch: self.prefetch,
                max_body_bytes: self.max_body_bytes,
                service: Arc::clone(service),
                request_ids: Arc::clone(&request_ids),
                stop: stop.clone(),
                deadline: Arc::clone(&deadline),
            };
            let done_tx = done_tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("amqp-shard-{index}"))
                .spawn(move || {
                    shard::run(shard);
                    drop(done_tx);
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // The threads started stop with the sender.
                    drop(stop_tx);
                    return Err(e);
                }
            }
        }
        match self.relay(service, &stop, done_tx) {
            Ok(Some(relay)) => threads.push(relay),
            Ok(None) => {}
            Err(e) => {
                drop(stop_tx);
                return Err(e);
            }
        }
        log::info!(
            "amqp: consuming {} shards of {} at {} (prefetch {})",
            self.topology.shards,
            self.topology.exchange,
            self.masked_url,
            self.prefetch
        );
        Ok(Box::new(Consumers {
            stop_tx: Some(stop_tx),
            deadline,
            done,
            threads,
            service: Arc::clone(service),
        }))
    }
}

impl Checked {
    /// The outbox relay's thread, in the modes with a journal to publish.
    fn relay(
        &self,
        service: &Arc<Service>,
        stop: &Receiver<()>,
        done_tx: Sender<()>,
    ) -> std::io::Result<Option<JoinHandle<()>>> {
        let Some(exchange) = &self.outbox_exchange else {
            return Ok(None);
        };
        let outbox = match service.outbox() {
            None => return Ok(None),
            Some(Ok(outbox)) => outbox,
            Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
        };
        service.metrics().broker.relay_started();
        let relay = Relay {
            url: self.url.clone(),
            exchange: exchange.clone(),
            outbox,
            service: Arc::clone(service),
            stop: stop.clone(),
        };
        thread::Builder::new()
            .name("amqp-relay".to_owned())
            .spawn(move || {
                relay::run(relay);
                drop(done_tx);
            })
            .map(Some)
    }
}

/// The running consumer threads.
struct Consumers {
    /// Dropped to stop the threads.
    stop_tx: Option<Sender<()>>,
    deadline: Arc<OnceLock<Instant>>,
    /// Disconnected once every thread has exited.
    done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
    service: Arc<Service>,
}

impl FrontDoor for Consumers {
    fn stop(mut self: Box<Self>, deadline: Instant) {
        let _ = self.deadline.set(deadline);
        drop(self.stop_tx.take());
        // A thread stuck connecting to a broker that does not answer is
        // left behind at the deadline; it holds nothing of the service's.
        let _ = self.done.recv_deadline(deadline);
        let mut panicked = 0;
        for thread in std::mem::take(&mut self.threads) {
            if thread.is_finished() && thread.join().is_err() {
                panicked += 1;
            }
        }
        if panicked > 0 {
            log::error!("amqp: {panicked} consumer thread(s) had panicked");
        }
        log::info!("amqp: consumers stopped; {}", self.service.metrics().broker);
    }
}
