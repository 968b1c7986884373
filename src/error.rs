//! Errors of the service's lifecycle: starting and stopping. Each says what
//! failed and what to do about it. (HTTP errors live in `problem.rs`,
//! configuration errors in `config.rs`.)

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::amqp::BrokerError;
use crate::backend::StorageError;
use crate::stats::ShutdownReport;

/// The service could not start.
#[derive(Debug)]
pub enum StartError {
    /// The listening socket could not be bound.
    Bind { addr: SocketAddr, source: io::Error },
    /// The OS refused to start a thread (usually a process or memory limit).
    Spawn { thread: String, source: io::Error },
    /// The durable store (`DATA_DIR`) could not be opened or loaded.
    Storage(StorageError),
    /// RabbitMQ (`AMQP_URL`) could not be reached or holds conflicting
    /// objects.
    Broker(BrokerError),
}

impl StartError {
    /// What `main` exits with: 2 for a setting to fix, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Storage(e) => e.exit_code(),
            StartError::Broker(e) => e.exit_code(),
            StartError::Bind { .. } | StartError::Spawn { .. } => 1,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { addr, source } => {
                write!(f, "cannot listen on {addr}: {source}")?;
                match source.kind() {
                    io::ErrorKind::AddrInUse => {
                        write!(
                            f,
                            "; another process uses port {}: set PORT to a free port",
                            addr.port()
                        )
                    }
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        "; ports below 1024 need privileges: set PORT to 1024 or above"
                    ),
                    io::ErrorKind::AddrNotAvailable => write!(
                        f,
                        "; {} is not an address of this machine: set BIND_ADDR to one (0.0.0.0 for all)",
                        addr.ip()
                    ),
                    _ => Ok(()),
                }
            }
            StartError::Spawn { thread, source } => write!(
                f,
                "cannot start thread {thread}: {source}; lower WORKERS (or MAX_CONNECTIONS), or raise the process's thread limit"
            ),
            StartError::Storage(e) => e.fmt(f),
            StartError::Broker(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. } | StartError::Spawn { source, .. } => Some(source),
            StartError::Storage(e) => e.source(),
            StartError::Broker(_) => None,
        }
    }
}

/// Shutdown finished, but a thread had panicked outside the places that
/// catch panics (a bug). The report is still complete.
#[derive(Debug)]
pub struct ShutdownError {
    /// Names of the kinds of thread that panicked, e.g. `worker` or `http`.
    pub panicked: Vec<&'static str>,
    pub report: ShutdownReport,
}

impl fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown completed but {} thread(s) had panicked ({}); see the log above; {}",
            self.panicked.len(),
            self.panicked.join(", "),
            self.report
        )
    }
}

impl std::error::Error for ShutdownError {}
