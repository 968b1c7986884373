//! Service settings: their defaults, their allowed ranges, and how they are
//! read from the environment.
//!
//! Only `main` reads the environment. Library users and tests build a
//! [`Config`] directly (usually from [`Config::default`]), so two servers in
//! one test process never share settings by accident.
//!
//! Every value is checked once, at startup: a service that starts is a
//! service whose settings are all in range. A bad value stops the process
//! with a [`ConfigError`] naming the variable, the value and the allowed range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Everything the service needs to know before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on. Port 0 asks the OS for a free port; the one it
    /// picked is in [`crate::Running::local_addr`].
    pub bind: SocketAddr,
    /// Worker threads applying events to the store.
    pub workers: usize,
    /// Capacity of the event queue between the HTTP threads and the workers.
    /// When it is full, `POST /events` answers 503 at once.
    pub queue_size: usize,
    /// How long a graceful shutdown waits for the workers to drain the queue.
    pub shutdown_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Threads taking parsed requests from tiny_http and answering them.
    pub http_threads: usize,
    /// The longest one read or write on a client connection may wait: a
    /// client that sends nothing (or reads nothing) for this long in the
    /// middle of a request or response is disconnected.
    pub socket_timeout: Duration,
    /// How long a connection may wait for a request to begin (a new
    /// connection, or a keep-alive one between requests) before it is
    /// closed.
    pub keepalive_timeout: Duration,
    /// A whole request head must arrive within this of its first byte.
    pub header_timeout: Duration,
    /// A whole request body must arrive within this of the first read of it.
    pub body_timeout: Duration,
    /// Largest request head (request line plus headers), in bytes.
    pub max_header_bytes: usize,
    /// How log lines are written (the binary's logger; the library only
    /// uses the `log` facade).
    pub log_format: LogFormat,
    /// Event ids remembered for idempotent retries (0: off).
    pub idempotency_window: usize,
    /// How long an event id is remembered.
    pub idempotency_ttl: Duration,
    /// Most products the store takes; events for new products beyond it get
    /// 507 (events already queued may exceed it by at most `queue_size`).
    pub max_products: usize,
    /// Most client connections served at once (tiny_http gives each a
    /// thread); beyond it a connection gets 503 and is closed.
    pub max_connections: usize,
}

/// `LOG_FORMAT`: human-readable lines, or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Default `PORT`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default `WORKERS`.
pub const DEFAULT_WORKERS: usize = 4;
/// Default `QUEUE_SIZE`: absorbs about a sixth of a second of peak intake
/// (about 60 000 events/s on the 2-core reference machine) in about 1 MiB,
/// while four workers drain a full queue in under 4 ms; see the README's
/// Performance section.
pub const DEFAULT_QUEUE_SIZE: usize = 10_000;
/// Default `SHUTDOWN_TIMEOUT`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `MAX_BODY_BYTES` (64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default `HTTP_THREADS`.
pub const DEFAULT_HTTP_THREADS: usize = 4;
/// Default `MAX_PRODUCTS`: about 190 MiB of products (see the README's
/// Performance section).
pub const DEFAULT_MAX_PRODUCTS: usize = 1_000_000;
/// Default `MAX_CONNECTIONS`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Default `SOCKET_TIMEOUT`.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `KEEPALIVE_TIMEOUT`.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `HEADER_TIMEOUT`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `BODY_TIMEOUT`: a 64 KiB body then needs 6.5 KB/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `MAX_HEADER_BYTES` (32 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            workers: DEFAULT_WORKERS,
            queue_size: DEFAULT_QUEUE_SIZE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            http_threads: DEFAULT_HTTP_THREADS,
            socket_timeout: DEFAULT_SOCKET_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            log_format: LogFormat::Text,
            idempotency_window: crate::queue::DEFAULT_WINDOW,
            idempotency_ttl: crate::queue::DEFAULT_WINDOW_TTL,
            max_products: DEFAULT_MAX_PRODUCTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// One environment setting: its name, what it means, its range.
struct Setting {
    name: &'static str,
    range: &'static str,
    default: &'static str,
    help: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "PORT",
        range: "0..=65535 (0 = any free port)",
        default: "8080",
        help: "TCP port to listen on",
    },
    Setting {
        name: "BIND_ADDR",
        range: "an IPv4 or IPv6 address",
        default: "0.0.0.0",
        help: "address to listen on (127.0.0.1 for local only)",
    },
    Setting {
        name: "WORKERS",
        range: "1..=256",
        default: "4",
        help: "worker threads applying events to the store",
    },
    Setting {
        name: "QUEUE_SIZE",
        range: "1..=1000000",
        default: "10000",
        help: "events the queue holds before POST /events answers 503",
    },
    Setting {
        name: "SHUTDOWN_TIMEOUT",
        range: "0..=3600 seconds, decimals allowed",
        default: "10",
        help: "how long shutdown waits for queued events to be applied",
    },
    Setting {
        name: "MAX_BODY_BYTES",
        range: "1024..=16777216",
        default: "65536",
        help: "largest accepted request body; larger ones get 413",
    },
    Setting {
        name: "HTTP_THREADS",
        range: "1..=256",
        default: "4",
        help: "threads answering HTTP requests",
    },
    Setting {
        name: "SOCKET_TIMEOUT",
        range: "0.1..=3600 seconds, decimals allowed",
        default: "10",
        help: "a client silent (or not reading) this long mid-request is disconnected",
    },
    Setting {
        name: "KEEPALIVE_TIMEOUT",
        range: "0.1..=3600 seconds, decimals allowed",
        default: "10",
        help: "a connection with no request begun this long is closed",
    },
    Setting {
        name: "HEADER_TIMEOUT",
        range: "0.1..=3600 seconds, decimals allowed",
        default: "10",
        help: "a request head not complete this long after its first byte gets 408",
    },
    Setting {
        name: "BODY_TIMEOUT",
        range: "0.1..=3600 seconds, decimals allowed",
        default: "10",
        help: "a request body not complete this long after reading began gets 408",
    },
    Setting {
        name: "MAX_HEADER_BYTES",
        range: "1024..=1048576",
        default: "32768",
        help: "largest request head (request line and headers); larger get 431",
    },
    Setting {
        name: "MAX_CONNECTIONS",
        range: "1..=100000",
        default: "1000",
        help: "client connections served at once; more get 503 and are closed",
    },
    Setting {
        name: "MAX_PRODUCTS",
        range: "1..=100000000",
        default: "1000000",
        help: "most products stored; events for new ones beyond it get 507",
    },
    Setting {
        name: "IDEMPOTENCY_WINDOW",
        range: "0..=10000000 (0 = off)",
        default: "100000",
        help: "event ids remembered to recognise retried events",
    },
    Setting {
        name: "IDEMPOTENCY_TTL",
        range: "1..=86400 seconds, decimals allowed",
        default: "600",
        help: "how long an event id is remembered",
    },
    Setting {
        name: "LOG_FORMAT",
        range: "text or json",
        default: "text",
        help: "log lines as text, or one JSON object per line",
    },
    Setting {
        name: "RUST_LOG",
        range: "error, warn, info, debug, trace, or env_logger directives",
        default: "info",
        help: "log level",
    },
];

/// A setting that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable, e.g. `WORKERS`.
    pub variable: &'static str,
    /// The value as found (lossily decoded if it was not UTF-8).
    pub value: String,
    /// What is allowed, e.g. `1..=256`.
    pub allowed: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}; fix or unset {} (run with --help to see every setting)",
            self.variable, self.value, self.allowed, self.variable
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the settings from `lookup` (in `main`, the process environment).
    /// Unset variables take their defaults; set ones must parse and be in range.
    pub fn from_lookup<F>(lookup: F) -> Result<Config, ConfigError>
    where
        F: Fn(&str) -> Option<std::ffi::OsString>,
    {
        let get = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match lookup(name) {
                None => Ok(None),
                Some(raw) => match raw.into_string() {
                    Ok(s) => Ok(Some(s)),
                    Err(raw) => Err(error(name, &raw.to_string_lossy())),
                },
            }
        };

        let mut config = Config::default();
        let port = match get("PORT")? {
            Some(v) => parse_int(&v, "PORT", 0, u64::from(u16::MAX))? as u16,
            None => DEFAULT_PORT,
        };
        let ip = match get("BIND_ADDR")? {
            Some(v) => v
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| error("BIND_ADDR", &v))?,
            None => config.bind.ip(),
        };
        config.bind = SocketAddr::new(ip, port);
        if let Some(v) = get("WORKERS")? {
            config.workers = parse_int(&v, "WORKERS", 1, 256)? as usize;
        }
        if let Some(v) = get("QUEUE_SIZE")? {
            config.queue_size = parse_int(&v, "QUEUE_SIZE", 1, 1_000_000)? as usize;
        }
        if let Some(v) = get("SHUTDOWN_TIMEOUT")? {
            config.shutdown_timeout = parse_seconds(&v, "SHUTDOWN_TIMEOUT", 0.0, 3600.0)?;
        }
        if let Some(v) = get("MAX_BODY_BYTES")? {
            // tiny_http reads bodies of up to 1024 bytes before the service
            // sees the request, so a smaller limit could not be honoured.
            config.max_body_bytes =
                parse_int(&v, "MAX_BODY_BYTES", 1024, 16 * 1024 * 1024)? as usize;
        }
        if let Some(v) = get("HTTP_THREADS")? {
            config.http_threads = parse_int(&v, "HTTP_THREADS", 1, 256)? as usize;
        }
        if let Some(v) = get("MAX_CONNECTIONS")? {
            config.max_connections = parse_int(&v, "MAX_CONNECTIONS", 1, 100_000)? as usize;
        }
        if let Some(v) = get("MAX_PRODUCTS")? {
            config.max_products = parse_int(&v, "MAX_PRODUCTS", 1, 100_000_000)? as usize;
        }
        if let Some(v) = get("IDEMPOTENCY_WINDOW")? {
            config.idempotency_window =
                parse_int(&v, "IDEMPOTENCY_WINDOW", 0, 10_000_000)? as usize;
        }
        if let Some(v) = get("IDEMPOTENCY_TTL")? {
            config.idempotency_ttl = parse_seconds(&v, "IDEMPOTENCY_TTL", 1.0, 86_400.0)?;
        }
        if let Some(v) = get("LOG_FORMAT")? {
            config.log_format = match v.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(error("LOG_FORMAT", &v)),
            };
        }
        if let Some(v) = get("SOCKET_TIMEOUT")? {
            config.socket_timeout = parse_seconds(&v, "SOCKET_TIMEOUT", 0.1, 3600.0)?;
        }
        if let Some(v) = get("KEEPALIVE_TIMEOUT")? {
            config.keepalive_timeout = parse_seconds(&v, "KEEPALIVE_TIMEOUT", 0.1, 3600.0)?;
        }
        if let Some(v) = get("HEADER_TIMEOUT")? {
            config.header_timeout = parse_seconds(&v, "HEADER_TIMEOUT", 0.1, 3600.0)?;
        }
        if let Some(v) = get("BODY_TIMEOUT")? {
            config.body_timeout = parse_seconds(&v, "BODY_TIMEOUT", 0.1, 3600.0)?;
        }
        if let Some(v) = get("MAX_HEADER_BYTES")? {
            config.max_header_bytes =
                parse_int(&v, "MAX_HEADER_BYTES", 1024, 1024 * 1024)? as usize;
        }
        Ok(config)
    }

    /// The `--help` text: every setting with its default and range.
    pub fn help() -> String {
        let mut out = String::from(
            "product-update-service: accepts product update events over HTTP and applies them\n\
             with a pool of worker threads.\n\n\
             Usage: product-update-service [--help | --version]\n\n\
             Settings (environment variables):\n",
        );
        for s in SETTINGS {
            out.push_str(&format!(
                "  {:<18} {} (default {}; allowed {})\n",
                s.name, s.help, s.default, s.range
            ));
        }
        out.push_str(
            "\nSIGINT or SIGTERM starts a graceful shutdown; a second signal exits at once.\n",
        );
        out
    }
}

impl fmt::Display for Config {
    /// The effective configuration, as one log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bind={} workers={} queue_size={} shutdown_timeout={:?} max_body_bytes={} http_threads={} socket_timeout={:?} keepalive_timeout={:?} header_timeout={:?} body_timeout={:?} max_header_bytes={} log_format={:?} idempotency_window={} idempotency_ttl={:?} max_products={} max_connections={}",
            self.bind,
            self.workers,
            self.queue_size,
            self.shutdown_timeout,
            self.max_body_bytes,
            self.http_threads,
            self.socket_timeout,
            self.keepalive_timeout,
            self.header_timeout,
            self.body_timeout,
            self.max_header_bytes,
            self.log_format,
            self.idempotency_window,
            self.idempotency_ttl,
            self.max_products,
            self.max_connections
        )
    }
}

fn allowed(name: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .map_or("a valid value", |s| s.range)
}

fn error(variable: &'static str, value: &str) -> ConfigError {
    ConfigError {
        variable,
        value: value.to_owned(),
        allowed: allowed(variable),
    }
}

fn parse_int(value: &str, variable: &'static str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(error(variable, value)),
    }
}

fn parse_seconds(
    value: &str,
    variable: &'static str,
    min: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (min..=max).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(error(variable, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        assert_eq!(from(&[]).unwrap(), Config::default());
        assert_eq!(Config::default().bind.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn reads_every_setting() {
        let c = from(&[
            ("PORT", "9000"),
            ("BIND_ADDR", "127.0.0.1"),
            ("WORKERS", "5"),
            ("QUEUE_SIZE", "123"),
            ("SHUTDOWN_TIMEOUT", "2.5"),
            ("MAX_BODY_BYTES", "2048"),
            ("HTTP_THREADS", "2"),
            ("SOCKET_TIMEOUT", "0.5"),
            ("KEEPALIVE_TIMEOUT", "1.5"),
            ("HEADER_TIMEOUT", "2"),
            ("BODY_TIMEOUT", "3"),
            ("MAX_HEADER_BYTES", "4096"),
            ("LOG_FORMAT", "JSON"),
        ])
        .unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:9000");
        assert_eq!(c.workers, 5);
        assert_eq!(c.queue_size, 123);
        assert_eq!(c.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.http_threads, 2);
        assert_eq!(c.socket_timeout, Duration::from_millis(500));
        assert_eq!(c.keepalive_timeout, Duration::from_millis(1500));
        assert_eq!(c.header_timeout, Duration::from_secs(2));
        assert_eq!(c.body_timeout, Duration::from_secs(3));
        assert_eq!(c.max_header_bytes, 4096);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn ipv6_bind_address() {
        let c = from(&[("BIND_ADDR", "::1"), ("PORT", "0")]).unwrap();
        assert_eq!(c.bind.to_string(), "[::1]:0");
    }

    #[test]
    fn rejects_out_of_range_and_unparsable_values() {
        for (var, value) in [
            ("WORKERS", "0"),
            ("WORKERS", "257"),
            ("WORKERS", "four"),
            ("WORKERS", "-1"),
            ("WORKERS", ""),
            ("QUEUE_SIZE", "0"),
            ("QUEUE_SIZE", "1000001"),
            ("PORT", "65536"),
            ("PORT", "80a"),
            ("BIND_ADDR", "localhost"),
            ("SHUTDOWN_TIMEOUT", "-1"),
            ("SHUTDOWN_TIMEOUT", "10s"),
            ("SHUTDOWN_TIMEOUT", "NaN"),
            ("SHUTDOWN_TIMEOUT", "3601"),
            ("MAX_BODY_BYTES", "1023"),
            ("HTTP_THREADS", "0"),
            ("SOCKET_TIMEOUT", "0"),
            ("SOCKET_TIMEOUT", "0.05"),
            ("KEEPALIVE_TIMEOUT", "0"),
            ("HEADER_TIMEOUT", "3601"),
            ("BODY_TIMEOUT", "soon"),
            ("MAX_HEADER_BYTES", "1023"),
            ("MAX_HEADER_BYTES", "1048577"),
            ("LOG_FORMAT", "yaml"),
        ] {
            let err = from(&[(var, value)]).expect_err(&format!("{var}={value:?} must be refused"));
            assert_eq!(err.variable, var);
            assert_eq!(err.value, value);
            let line = err.to_string();
            assert!(line.contains(var) && line.contains(err.allowed), "{line}");
        }
    }

    #[test]
    fn error_names_variable_value_and_range() {
        let err = from(&[("WORKERS", "0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WORKERS=\"0\": expected 1..=256; fix or unset WORKERS (run with --help to see every setting)"
        );
    }

    #[test]
    fn surrounding_whitespace_is_tolerated() {
        assert_eq!(from(&[("WORKERS", " 3 ")]).unwrap().workers, 3);
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = Config::help();
        for s in SETTINGS {
            assert!(
                help.contains(s.name) && help.contains(s.default),
                "{}",
                s.name
            );
        }
    }
}
