//! Service settings: their defaults, their allowed ranges, and how they are
//! read from the environment.
//!
//! Each setting is written once, in [`SETTINGS`]: its name, its meaning,
//! its range and default, and the field it sets. `Config::default`,
//! `Config::from_lookup`, `--help` and every error message come from that
//! table, so they cannot disagree.
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
use std::path::PathBuf;
use std::time::Duration;

mod amqp_url;
mod database_url;
mod tokens;

pub use amqp_url::AmqpUrl;
pub use database_url::DatabaseUrl;
pub use tokens::{ApiTokens, PublicPaths, SHORT_TOKEN, Scope};

/// Everything the service needs to know before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on. Port 0 asks the OS for a free port; the one it
    /// picked is in [`crate::Running::local_addr`].
    pub bind: SocketAddr,
    /// Worker threads applying events to the store.
    pub workers: usize,
    /// Capacity of the event queue between the HTTP side and the workers.
    /// When it is full, `POST /events` answers 503 at once.
    pub queue_size: usize,
    /// How long a graceful shutdown waits for the workers to drain the queue.
    pub shutdown_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most events one batch request (NDJSON) may carry.
    pub max_batch_events: usize,
    /// Largest accepted batch request body (NDJSON), in bytes.
    pub max_batch_bytes: usize,
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
    /// Most client connections served at once (each has its thread). At
    /// the limit the connection idle longest is closed to make room; with
    /// none idle, a new connection gets 503 and is closed.
    pub max_connections: usize,
    /// Most connections one client address holds at once; beyond it that
    /// address's new connections get 503. Behind a proxy, every client has
    /// the proxy's address: set it to `max_connections` there.
    pub max_connections_per_client: usize,
    /// Bearer tokens a request must carry (none: every route is open).
    pub api_tokens: ApiTokens,
    /// The operability routes that need no token when tokens are set.
    pub public_paths: PublicPaths,
    /// Where the durable state lives (a SQLite database in this directory);
    /// `None`: in memory only. Needs the `sqlite` feature.
    pub data_dir: Option<PathBuf>,
    /// When a 202 is sent relative to the event's commit (with `data_dir`).
    pub durability: Durability,
    /// The PostgreSQL database that several instances share as their
    /// source of truth; `None`: not in this mode. Needs the `postgres`
    /// feature. Prints with its password masked.
    pub database_url: Option<DatabaseUrl>,
    /// With `database_url`: the committer connections (and threads) of
    /// this instance; it opens one more, for the tailer.
    pub db_pool_size: usize,
    /// RabbitMQ, to take events from as well as HTTP; `None`: HTTP only.
    /// Needs the `amqp` feature. Prints with its password masked.
    pub amqp_url: Option<AmqpUrl>,
    /// The exchange producers publish to; the queues' names start with it.
    pub amqp_exchange: String,
    /// Queues the exchange spreads products over (each consumed by one
    /// instance at a time).
    pub amqp_shards: usize,
    /// Messages each shard's consumer holds unacknowledged at once.
    pub amqp_prefetch: u16,
    /// Tries of an event refused for now before it is dead-lettered.
    pub amqp_max_attempts: u32,
    /// The wait before the first retry; it doubles each time.
    pub amqp_retry_delay: Duration,
    /// The exchange the outbox relay publishes every journaled event to;
    /// `None`: no relay.
    pub amqp_outbox_exchange: Option<String>,
}

/// `DURABILITY`: what a 202 promises in durable mode (`DATA_DIR`).
/// Its default is in `SETTINGS`, with every other setting's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The 202 is sent once the event is committed (SQLite WAL, no fsync):
    /// it survives `kill -9` and any crash of the process; an OS crash or
    /// power cut may lose the last commits.
    Commit,
    /// As `Commit`, and the commit is fsynced: survives an OS crash or a
    /// power cut too.
    Fsync,
    /// The 202 is sent once the event is queued, as in memory mode; applied
    /// state is committed in the background (see `backend/sqlite/`): a crash loses
    /// the events of the last moments, a graceful shutdown nothing.
    Async,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Commit => "commit",
            Durability::Fsync => "fsync",
            Durability::Async => "async",
        }
    }
}

/// `LOG_FORMAT`: human-readable lines, or one JSON object per line.
/// Its default is in `SETTINGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One environment setting. Its range and default are written here and
/// nowhere else.
struct Setting {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

enum Kind {
    /// A whole number in `min..=max`; `note` follows the range in `--help`.
    Number {
        min: u64,
        max: u64,
        default: u64,
        note: &'static str,
        set: fn(&mut Config, u64),
    },
    /// Seconds in `min..=max`, decimals allowed.
    Seconds {
        min: f64,
        max: f64,
        default: f64,
        set: fn(&mut Config, Duration),
    },
    /// Text, parsed by `set`, which returns false for a value outside
    /// `allowed`.
    Text {
        allowed: &'static str,
        default: &'static str,
        set: fn(&mut Config, &str) -> bool,
    },
    /// Read by someone else (the logger), listed for `--help`.
    Elsewhere {
        allowed: &'static str,
        default: &'static str,
    },
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "PORT",
        help: "TCP port to listen on",
        kind: Kind::Number {
            min: 0,
            max: 65535,
            default: 8080,
            note: " (0 = any free port)",
            set: |c, v| c.bind.set_port(v as u16),
        },
    },
    Setting {
        name: "BIND_ADDR",
        help: "address to listen on: 127.0.0.1 serves this machine only, 0.0.0.0 every network it is on (then set API_TOKENS)",
        kind: Kind::Text {
            allowed: "an IPv4 or IPv6 address",
            default: "127.0.0.1",
            set: |c, v| v.parse::<IpAddr>().map(|ip| c.bind.set_ip(ip)).is_ok(),
        },
    },
    Setting {
        name: "WORKERS",
        help: "worker threads applying events to the store (3-5 suggested)",
        kind: Kind::Number {
            min: 1,
            max: 256,
            default: 4,
            note: "",
            set: |c, v| c.workers = v as usize,
        },
    },
    Setting {
        name: "QUEUE_SIZE",
        help: "events the queue holds before POST /events answers 503",
        // About a sixth of a second of peak intake on the 2-core reference
        // machine in about 1 MiB, while four workers drain a full queue in
        // milliseconds (docs/PERFORMANCE.md).
        kind: Kind::Number {
            min: 1,
            max: 1_000_000,
            default: 10_000,
            note: "",
            set: |c, v| c.queue_size = v as usize,
        },
    },
    Setting {
        name: "SHUTDOWN_TIMEOUT",
        help: "how long shutdown waits for queued events to be applied",
        kind: Kind::Seconds {
            min: 0.0,
            max: 3600.0,
            default: 10.0,
            set: |c, v| c.shutdown_timeout = v,
        },
    },
    Setting {
        name: "MAX_BODY_BYTES",
        help: "largest accepted request body; larger ones get 413",
        // The largest valid event is about 1.1 KB (a 128-character id and
        // event_id of 4-byte characters): a smaller limit would refuse
        // valid events.
        kind: Kind::Number {
            min: 1024,
            max: 16 * 1024 * 1024,
            default: 64 * 1024,
            note: "",
            set: |c, v| c.max_body_bytes = v as usize,
        },
    },
    Setting {
        name: "MAX_BATCH_EVENTS",
        help: "most events one NDJSON POST /events may carry; more get 413",
        kind: Kind::Number {
            min: 1,
            max: 1_000_000,
            default: 1000,
            note: "",
            set: |c, v| c.max_batch_events = v as usize,
        },
    },
    Setting {
        name: "MAX_BATCH_BYTES",
        help: "largest accepted NDJSON POST /events body; larger ones get 413",
        // 1000 events of up to about 1 KB each.
        kind: Kind::Number {
            min: 1024,
            max: 256 * 1024 * 1024,
            default: 1024 * 1024,
            note: "",
            set: |c, v| c.max_batch_bytes = v as usize,
        },
    },
    Setting {
        name: "SOCKET_TIMEOUT",
        help: "a client silent (or not reading) this long mid-request is disconnected",
        kind: Kind::Seconds {
            min: 0.1,
            max: 3600.0,
            default: 10.0,
            set: |c, v| c.socket_timeout = v,
        },
    },
    Setting {
        name: "KEEPALIVE_TIMEOUT",
        help: "a connection with no request begun this long is closed",
        kind: Kind::Seconds {
            min: 0.1,
            max: 3600.0,
            default: 10.0,
            set: |c, v| c.keepalive_timeout = v,
        },
    },
    Setting {
        name: "HEADER_TIMEOUT",
        help: "a request head not complete this long after its first byte gets 408",
        kind: Kind::Seconds {
            min: 0.1,
            max: 3600.0,
            default: 10.0,
            set: |c, v| c.header_timeout = v,
        },
    },
    Setting {
        name: "BODY_TIMEOUT",
        help: "a request body not complete this long after reading began gets 408",
        // A 64 KiB body then needs 6.5 KB/s.
        kind: Kind::Seconds {
            min: 0.1,
            max: 3600.0,
            default: 10.0,
            set: |c, v| c.body_timeout = v,
        },
    },
    Setting {
        name: "MAX_HEADER_BYTES",
        help: "largest request head (request line and headers); larger get 431",
        kind: Kind::Number {
            min: 1024,
            max: 1024 * 1024,
            default: 32 * 1024,
            note: "",
            set: |c, v| c.max_header_bytes = v as usize,
        },
    },
    Setting {
        name: "MAX_CONNECTIONS",
        help: "client connections open at once (a thread each while a request is read or answered); at the limit the connection idle longest is closed to make room, and with none idle a new one gets 503",
        kind: Kind::Number {
            min: 1,
            max: 100_000,
            default: 1000,
            note: "",
            set: |c, v| c.max_connections = v as usize,
        },
    },
    Setting {
        name: "MAX_CONNECTIONS_PER_CLIENT",
        help: "connections one client address may hold at once; past it that address's connection idle longest is closed to make room, or, none idle, its new one gets 503 (behind a proxy, where every client has the proxy's address, set it to MAX_CONNECTIONS)",
        kind: Kind::Number {
            min: 1,
            max: 100_000,
            default: 256,
            note: "",
            set: |c, v| c.max_connections_per_client = v as usize,
        },
    },
    Setting {
        name: "MAX_PRODUCTS",
        help: "most products stored; events for new ones beyond it get 507",
        // About 190 MiB of products (docs/PERFORMANCE.md).
        kind: Kind::Number {
            min: 1,
            max: 100_000_000,
            default: 1_000_000,
            note: "",
            set: |c, v| c.max_products = v as usize,
        },
    },
    Setting {
        name: "IDEMPOTENCY_WINDOW",
        help: "event ids remembered to recognise retried events",
        kind: Kind::Number {
            min: 0,
            max: 10_000_000,
            default: 100_000,
            note: " (0 = off)",
            set: |c, v| c.idempotency_window = v as usize,
        },
    },
    Setting {
        name: "IDEMPOTENCY_TTL",
        help: "how long an event id is remembered",
        kind: Kind::Seconds {
            min: 1.0,
            max: 86_400.0,
            default: 600.0,
            set: |c, v| c.idempotency_ttl = v,
        },
    },
    Setting {
        name: "DATA_DIR",
        help: "keep the state in a SQLite database (products.db) in this directory, created if missing; unset: in memory only (needs a build with --features sqlite)",
        kind: Kind::Text {
            allowed: "a directory path",
            default: "",
            set: |c, v| {
                c.data_dir = (!v.is_empty()).then(|| PathBuf::from(v));
                true
            },
        },
    },
    Setting {
        name: "DURABILITY",
        help: "with DATA_DIR: commit (202 after the commit), fsync (and fsynced), async (202 when queued, committed once applied, within 100 ms)",
        kind: Kind::Text {
            allowed: "commit, fsync or async",
            default: "commit",
            set: |c, v| {
                c.durability = match v.to_ascii_lowercase().as_str() {
                    "commit" => Durability::Commit,
                    "fsync" => Durability::Fsync,
                    "async" => Durability::Async,
                    _ => return false,
                };
                true
            },
        },
    },
    Setting {
        name: "DATABASE_URL",
        help: "share the state with other instances in this PostgreSQL database (postgres://user:password@host:port/db; the password is never printed); unset: not shared (needs a build with --features postgres)",
        kind: Kind::Text {
            allowed: "a URL starting with postgres:// or postgresql://",
            default: "",
            set: |c, v| {
                if v.is_empty() {
                    c.database_url = None;
                    return true;
                }
                match DatabaseUrl::parse(v) {
                    Ok(url) => c.database_url = Some(url),
                    Err(_) => return false,
                }
                true
            },
        },
    },
    Setting {
        name: "DB_POOL_SIZE",
        help: "with DATABASE_URL: connections that commit events (each with its thread); two more read the journal and compact it",
        kind: Kind::Number {
            min: 1,
            max: 32,
            default: 1,
            note: "",
            set: |c, v| c.db_pool_size = v as usize,
        },
    },
    Setting {
        name: "AMQP_URL",
        help: "take events from RabbitMQ too, through AMQP_SHARDS queues (amqp://user:password@host:port/vhost; the password is never printed); unset: HTTP only (needs a build with --features amqp)",
        kind: Kind::Text {
            allowed: "a URL starting with amqp://",
            default: "",
            set: |c, v| {
                c.amqp_url = AmqpUrl::parse(v);
                v.is_empty() || c.amqp_url.is_some()
            },
        },
    },
    Setting {
        name: "AMQP_EXCHANGE",
        help: "with AMQP_URL: the exchange producers publish to (routing key: the product_id); the queues are named after it (.shard-N, .retry-N, .dead)",
        kind: Kind::Text {
            allowed: "1 to 200 letters, digits and -_.:",
            default: "product-events",
            set: |c, v| {
                let ok = is_exchange_name(v);
                if ok {
                    c.amqp_exchange = v.to_owned();
                }
                ok
            },
        },
    },
    Setting {
        name: "AMQP_SHARDS",
        help: "with AMQP_URL: queues the exchange spreads products over, each taken by one instance at a time (every instance must use the same number)",
        kind: Kind::Number {
            min: 1,
            max: 64,
            default: 4,
            note: "",
            set: |c, v| c.amqp_shards = v as usize,
        },
    },
    Setting {
        name: "AMQP_PREFETCH",
        help: "with AMQP_URL: messages a shard's consumer holds unacknowledged at once",
        kind: Kind::Number {
            min: 1,
            max: 10_000,
            default: 1,
            note: "",
            set: |c, v| c.amqp_prefetch = v as u16,
        },
    },
    Setting {
        name: "AMQP_MAX_ATTEMPTS",
        help: "with AMQP_URL: tries of an event refused for now (queue full, storage down) before it is dead-lettered",
        kind: Kind::Number {
            min: 1,
            max: 20,
            default: 5,
            note: "",
            set: |c, v| c.amqp_max_attempts = v as u32,
        },
    },
    Setting {
        name: "AMQP_RETRY_DELAY",
        help: "with AMQP_URL: the wait before the first retry of an event refused for now; each next retry waits twice as long",
        kind: Kind::Seconds {
            min: 0.01,
            max: 3600.0,
            default: 1.0,
            set: |c, v| c.amqp_retry_delay = v,
        },
    },
    Setting {
        name: "AMQP_OUTBOX_EXCHANGE",
        help: "with AMQP_URL, in SQLite commit/fsync mode: the topic exchange every committed event is published to, in seq order (routing key: the product_id); empty: none",
        kind: Kind::Text {
            allowed: "empty, or 1 to 200 letters, digits and -_.:",
            default: "product-updates",
            set: |c, v| {
                if v.is_empty() {
                    c.amqp_outbox_exchange = None;
                    return true;
                }
                let ok = is_exchange_name(v);
                if ok {
                    c.amqp_outbox_exchange = Some(v.to_owned());
                }
                ok
            },
        },
    },
    Setting {
        name: "API_TOKENS",
        help: "bearer tokens a request must carry, comma-separated: TOKEN may read and write, read:TOKEN may only read; unset: every route is open to whoever can reach BIND_ADDR",
        kind: Kind::Text {
            allowed: "tokens of letters, digits and -._~+/ separated by commas, each optionally read:",
            default: "",
            set: |c, v| match ApiTokens::parse(v, ',') {
                Ok(tokens) => {
                    c.api_tokens = tokens;
                    true
                }
                Err(_) => false,
            },
        },
    },
    Setting {
        name: "API_TOKENS_FILE",
        help: "a file of more tokens, one per line (TOKEN or read:TOKEN; # starts a comment), to keep them out of the environment",
        kind: Kind::Text {
            allowed: "a readable file with one token per line (TOKEN, or read:TOKEN for one that may only read)",
            default: "",
            set: |c, v| {
                if v.is_empty() {
                    return true;
                }
                let Ok(text) = std::fs::read_to_string(v) else {
                    return false;
                };
                match ApiTokens::parse(&text, '\n') {
                    Ok(tokens) => {
                        c.api_tokens = std::mem::take(&mut c.api_tokens).merged(tokens);
                        true
                    }
                    Err(_) => false,
                }
            },
        },
    },
    Setting {
        name: "PUBLIC_PATHS",
        help: "with API_TOKENS: the operability routes that still answer without a token (none: every route needs one)",
        kind: Kind::Text {
            allowed: PublicPaths::ALLOWED,
            default: "/healthz,/readyz,/metrics,/openapi.json",
            set: |c, v| match PublicPaths::parse(v) {
                Some(paths) => {
                    c.public_paths = paths;
                    true
                }
                None => false,
            },
        },
    },
    Setting {
        name: "LOG_FORMAT",
        help: "log lines as text, or one JSON object per line",
        kind: Kind::Text {
            allowed: "text or json",
            default: "text",
            set: |c, v| {
                c.log_format = match v.to_ascii_lowercase().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return false,
                };
                true
            },
        },
    },
    Setting {
        name: "RUST_LOG",
        help: "log level",
        kind: Kind::Elsewhere {
            allowed: "a level (off, error, warn, info, debug, trace), or comma-separated target=level directives for product_update_service, access, tiny_http, postgres, tokio_postgres, rusqlite",
            default: "info",
        },
    },
];

/// An exchange name the service accepts: 1 to 200 of letters, digits and
/// `-_.:` (the queues' names add a suffix within AMQP's 255 bytes).
fn is_exchange_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Settings that earlier versions had and this one does not, with what to
/// do instead. Setting one is not an error (the service runs as intended
/// without it), but `main` says so at startup.
pub const RETIRED: &[(&str, &str)] = &[(
    "HTTP_THREADS",
    "is no longer used: each request is answered on the thread of its connection, so there are no request threads to size; MAX_CONNECTIONS bounds the connections (and their threads)",
)];

impl Kind {
    /// What `--help` and errors say is allowed.
    fn allowed(&self) -> String {
        match self {
            Kind::Number { min, max, note, .. } => format!("{min}..={max}{note}"),
            Kind::Seconds { min, max, .. } => format!("{min}..={max} seconds, decimals allowed"),
            Kind::Text { allowed, .. } | Kind::Elsewhere { allowed, .. } => (*allowed).to_owned(),
        }
    }

    fn default_text(&self) -> String {
        match self {
            Kind::Number { default, .. } => default.to_string(),
            Kind::Seconds { default, .. } => default.to_string(),
            Kind::Text { default, .. } | Kind::Elsewhere { default, .. } => (*default).to_owned(),
        }
    }

    /// Parses `value` into `config`; false if it is not allowed.
    fn apply(&self, config: &mut Config, value: &str) -> bool {
        let value = value.trim();
        match self {
            Kind::Number { min, max, set, .. } => match value.parse::<u64>() {
                Ok(n) if (*min..=*max).contains(&n) => {
                    set(config, n);
                    true
                }
                _ => false,
            },
            Kind::Seconds { min, max, set, .. } => match value.parse::<f64>() {
                Ok(secs) if secs.is_finite() && (*min..=*max).contains(&secs) => {
                    set(config, Duration::from_secs_f64(secs));
                    true
                }
                _ => false,
            },
            Kind::Text { set, .. } => set(config, value),
            Kind::Elsewhere { .. } => true,
        }
    }
}

impl Default for Config {
    /// Every setting at its default (from [`SETTINGS`]).
    fn default() -> Self {
        // Placeholders, each overwritten by its setting's default below.
        let mut config = Config {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            workers: 0,
            queue_size: 0,
            shutdown_timeout: Duration::ZERO,
            max_body_bytes: 0,
            max_batch_events: 0,
            max_batch_bytes: 0,
            socket_timeout: Duration::ZERO,
            keepalive_timeout: Duration::ZERO,
            header_timeout: Duration::ZERO,
            body_timeout: Duration::ZERO,
            max_header_bytes: 0,
            log_format: LogFormat::Text,
            idempotency_window: 0,
            idempotency_ttl: Duration::ZERO,
            max_products: 0,
            max_connections: 0,
            max_connections_per_client: 0,
            api_tokens: ApiTokens::default(),
            public_paths: PublicPaths {
                healthz: false,
                readyz: false,
                metrics: false,
                openapi: false,
            },
            data_dir: None,
            durability: Durability::Commit,
            database_url: None,
            db_pool_size: 0,
            amqp_url: None,
            amqp_exchange: String::new(),
            amqp_shards: 0,
            amqp_prefetch: 0,
            amqp_max_attempts: 0,
            amqp_retry_delay: Duration::ZERO,
            amqp_outbox_exchange: None,
        };
        for setting in SETTINGS {
            let applied = setting
                .kind
                .apply(&mut config, &setting.kind.default_text());
            debug_assert!(applied, "the default of {} is not allowed", setting.name);
        }
        config
    }
}

/// A setting that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable, e.g. `WORKERS`.
    pub variable: &'static str,
    /// The value as found (lossily decoded if it was not UTF-8).
    pub value: String,
    /// What is allowed, e.g. `1..=256`.
    pub allowed: String,
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
        let mut config = Config::default();
        for setting in SETTINGS {
            let Some(raw) = lookup(setting.name) else {
                continue;
            };
            let error = |value: String| ConfigError {
                variable: setting.name,
                // A URL's password is never printed, even in a bad one.
                value: DatabaseUrl::masked(&value),
                allowed: setting.kind.allowed(),
            };
            let value = raw
                .into_string()
                .map_err(|raw| error(raw.to_string_lossy().into_owned()))?;
            if !setting.kind.apply(&mut config, &value) {
                return Err(error(value));
            }
        }
        // DURABILITY says what a commit promises; without DATA_DIR nothing
        // is committed, and a silently ignored DURABILITY=fsync would make
        // an operator believe the state is on disk.
        if let (None, Some(raw)) = (&config.data_dir, lookup("DURABILITY")) {
            return Err(ConfigError {
                variable: "DURABILITY",
                value: raw.to_string_lossy().into_owned(),
                allowed: "DURABILITY only together with DATA_DIR (in memory mode nothing is written to disk; with DATABASE_URL every 202 comes after the PostgreSQL commit)".to_owned(),
            });
        }
        // A typo in RUST_LOG (`debg`) is a filter env_logger accepts and
        // that silences every line, errors included: refuse it instead.
        if let Some(raw) = lookup("RUST_LOG") {
            let value = raw.to_string_lossy().into_owned();
            if let Err(allowed) = check_log_filter(&value) {
                return Err(ConfigError {
                    variable: "RUST_LOG",
                    value,
                    allowed,
                });
            }
        }
        // The outbox's exchange is a topic exchange of its own: the same
        // name as the events' exchange (or its delay exchange) would
        // publish every change back in as an event.
        if let Some(outbox) = &config.amqp_outbox_exchange
            && (*outbox == config.amqp_exchange
                || *outbox == format!("{}.retry", config.amqp_exchange))
        {
            return Err(ConfigError {
                variable: "AMQP_OUTBOX_EXCHANGE",
                value: outbox.clone(),
                allowed: format!(
                    "a name other than AMQP_EXCHANGE ({0}) and {0}.retry: the outbox publishes to an exchange of its own",
                    config.amqp_exchange
                ),
            });
        }
        // One source of truth: a local database or a shared one.
        if let (Some(_), Some(url)) = (&config.data_dir, &config.database_url) {
            return Err(ConfigError {
                variable: "DATABASE_URL",
                value: url.to_string(),
                allowed: "DATABASE_URL or DATA_DIR, not both: pick one (DATA_DIR keeps the state in a local SQLite file, DATABASE_URL shares it with other instances in PostgreSQL)".to_owned(),
            });
        }
        Ok(config)
    }

    /// The retired settings that `lookup` has, each with what to do instead.
    pub fn retired_in<F>(lookup: F) -> Vec<String>
    where
        F: Fn(&str) -> Option<std::ffi::OsString>,
    {
        RETIRED
            .iter()
            .filter(|(name, _)| lookup(name).is_some())
            .map(|(name, instead)| format!("{name} {instead}"))
            .collect()
    }

    /// The `--help` text: every setting with its default and range.
    pub fn help() -> String {
        let mut out = String::from(
            "product-update-service: accepts product update events over HTTP and applies them\n\
             with a pool of worker threads.\n\n\
             Usage: product-update-service [--help | --version]\n\
             \x20      product-update-service dead-letters list [--limit N] | replay [--code CODE] [--limit N]\n\
             \x20      product-update-service send FILE [--url http://HOST:PORT] [--batch N] ... (send --help)\n\n\
             Settings (environment variables):\n",
        );
        for s in SETTINGS {
            let mut default = s.kind.default_text();
            if default.is_empty() {
                default = "unset".to_owned();
            }
            out.push_str(&format!(
                "  {:<18} {} (default {default}; allowed {})\n",
                s.name,
                s.help,
                s.kind.allowed()
            ));
        }
        out.push_str("\nNo longer used:\n");
        for (name, instead) in RETIRED {
            out.push_str(&format!("  {name:<18} {instead}\n"));
        }
        out.push_str(
            "\nSIGINT or SIGTERM starts a graceful shutdown; a second signal exits at once.\n",
        );
        out
    }
}

impl Config {
    /// Where the state lives, for the log: `memory`,
    /// `sqlite:<dir>/products.db (durability=commit)`, or
    /// `postgres:postgres://user:***@host/db`.
    pub fn storage(&self) -> String {
        match (&self.data_dir, &self.database_url) {
            (Some(dir), _) => format!(
                "sqlite:{} (durability={})",
                dir.join(DATABASE_FILE).display(),
                self.durability.as_str()
            ),
            (None, Some(url)) => format!("postgres:{url} (db_pool_size={})", self.db_pool_size),
            (None, None) => "memory".to_owned(),
        }
    }
}

/// The log targets this binary writes under: a `RUST_LOG` directive must
/// name one of them (or a module below one), or be a level.
const LOG_TARGETS: [&str; 6] = [
    "product_update_service",
    "access",
    "tiny_http",
    "postgres",
    "tokio_postgres",
    "rusqlite",
];
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks `RUST_LOG` as env_logger reads it (`directive[,directive...]`,
/// each `level`, `target` or `target=level`, and an optional `/regex` at
/// the end), with this binary's targets; the error says what is allowed.
fn check_log_filter(value: &str) -> Result<(), String> {
    let directives = value
        .split_once('/')
        .map_or(value, |(directives, _)| directives);
    let is_level = |word: &str| LOG_LEVELS.iter().any(|l| word.eq_ignore_ascii_case(l));
    let is_target = |word: &str| {
        LOG_TARGETS.iter().any(|t| {
            word == *t
                || word
                    .strip_prefix(t)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
    };
    for directive in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let ok = match directive.split_once('=') {
            Some((target, level)) => is_target(target.trim()) && is_level(level.trim()),
            None => is_level(directive) || is_target(directive),
        };
        if !ok {
            return Err(format!(
                "comma-separated directives, each a level ({}), a target ({}) or target=level; {directive:?} is none of them",
                LOG_LEVELS.join(", "),
                LOG_TARGETS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The database's file name inside `DATA_DIR` (its WAL and lock files sit
/// beside it: `products.db-wal`, `products.db-shm`, `products.db.lock`).
pub const DATABASE_FILE: &str = "products.db";

impl fmt::Display for Config {
    /// The effective configuration, as one log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bind={} workers={} queue_size={} shutdown_timeout={:?} max_body_bytes={} max_batch_events={} max_batch_bytes={} socket_timeout={:?} keepalive_timeout={:?} header_timeout={:?} body_timeout={:?} max_header_bytes={} log_format={:?} idempotency_window={} idempotency_ttl={:?} max_products={} max_connections={} max_connections_per_client={} api_tokens={} public_paths={} storage={}{}",
            self.bind,
            self.workers,
            self.queue_size,
            self.shutdown_timeout,
            self.max_body_bytes,
            self.max_batch_events,
            self.max_batch_bytes,
            self.socket_timeout,
            self.keepalive_timeout,
            self.header_timeout,
            self.body_timeout,
            self.max_header_bytes,
            self.log_format,
            self.idempotency_window,
            self.idempotency_ttl,
            self.max_products,
            self.max_connections,
            self.max_connections_per_client,
            self.api_tokens,
            self.public_paths,
            self.storage(),
            match &self.amqp_url {
                Some(url) => format!(
                    " amqp={url} amqp_exchange={} amqp_shards={} amqp_prefetch={} amqp_max_attempts={} amqp_retry_delay={:?} amqp_outbox_exchange={}",
                    self.amqp_exchange,
                    self.amqp_shards,
                    self.amqp_prefetch,
                    self.amqp_max_attempts,
                    self.amqp_retry_delay,
                    self.amqp_outbox_exchange.as_deref().unwrap_or("(none)")
                ),
                None => String::new(),
            }
        )
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
    fn database_url_is_masked_and_excludes_data_dir() {
        let c =
            from(&[("DATABASE_URL", "postgres://app:hunter2@db:5432/products")]).expect("valid");
        let url = c.database_url.as_ref().expect("set");
        assert_eq!(url.expose(), "postgres://app:hunter2@db:5432/products");
        assert!(!c.to_string().contains("hunter2"), "{c}");
        assert!(
            c.to_string()
                .contains("storage=postgres:postgres://app:***@db:5432/products (db_pool_size=1)"),
            "{c}"
        );
        assert!(!format!("{c:?}").contains("hunter2"));

        let e = from(&[("DATABASE_URL", "mysql://root:hunter2@db/x")]).expect_err("not postgres");
        assert_eq!(e.variable, "DATABASE_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");

        let both = from(&[
            ("DATABASE_URL", "postgres://app:hunter2@db/products"),
            ("DATA_DIR", "/var/lib/pus"),
        ])
        .expect_err("both");
        assert_eq!(both.variable, "DATABASE_URL");
        assert!(both.allowed.contains("not both"), "{both}");
        assert!(!both.to_string().contains("hunter2"), "{both}");

        let e = from(&[("DATABASE_URL", "postgres://db/p"), ("DURABILITY", "fsync")])
            .expect_err("DURABILITY is DATA_DIR's");
        assert_eq!(e.variable, "DURABILITY");
        assert_eq!(
            from(&[("DB_POOL_SIZE", "0")]).expect_err("range").allowed,
            "1..=32"
        );
        assert_eq!(
            from(&[("DB_POOL_SIZE", "4")]).expect("valid").db_pool_size,
            4
        );
    }

    #[test]
    fn a_rust_log_typo_stops_the_start() {
        for good in [
            "info",
            "warn,access=off",
            "product_update_service::backend=debug",
            "DEBUG",
            "info/regex",
        ] {
            assert!(from(&[("RUST_LOG", good)]).is_ok(), "{good}");
        }
        for bad in ["debg", "info,acess=off", "access=loud", "hyper=debug"] {
            let e = from(&[("RUST_LOG", bad)]).unwrap_err();
            assert_eq!(e.variable, "RUST_LOG", "{bad}");
        }
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = Config::default();
        assert_eq!(from(&[]).unwrap(), c);
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(
            (c.workers, c.queue_size, c.max_connections),
            (4, 10_000, 1000)
        );
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(600));
        assert_eq!((c.max_body_bytes, c.max_header_bytes), (65_536, 32_768));
    }

    #[test]
    fn every_default_is_allowed() {
        for s in SETTINGS {
            let mut c = Config::default();
            assert!(s.kind.apply(&mut c, &s.kind.default_text()), "{}", s.name);
        }
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
            ("SOCKET_TIMEOUT", "0.5"),
            ("KEEPALIVE_TIMEOUT", "1.5"),
            ("HEADER_TIMEOUT", "2"),
            ("BODY_TIMEOUT", "3"),
            ("MAX_HEADER_BYTES", "4096"),
            ("MAX_CONNECTIONS", "7"),
            ("MAX_PRODUCTS", "8"),
            ("IDEMPOTENCY_WINDOW", "0"),
            ("IDEMPOTENCY_TTL", "1.5"),
            ("LOG_FORMAT", "JSON"),
        ])
        .unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:9000");
        assert_eq!(c.workers, 5);
        assert_eq!(c.queue_size, 123);
        assert_eq!(c.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.socket_timeout, Duration::from_millis(500));
        assert_eq!(c.keepalive_timeout, Duration::from_millis(1500));
        assert_eq!(c.header_timeout, Duration::from_secs(2));
        assert_eq!(c.body_timeout, Duration::from_secs(3));
        assert_eq!(c.max_header_bytes, 4096);
        assert_eq!((c.max_connections, c.max_products), (7, 8));
        assert_eq!(c.idempotency_window, 0);
        assert_eq!(c.idempotency_ttl, Duration::from_millis(1500));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn ipv6_bind_address() {
        let c = from(&[("BIND_ADDR", "::1"), ("PORT", "0")]).unwrap();
        assert_eq!(c.bind.to_string(), "[::1]:0");
    }

    #[test]
    fn reads_the_rabbitmq_settings() {
        let c = from(&[
            ("AMQP_URL", "amqp://app:secret@mq:5672/%2f"),
            ("AMQP_EXCHANGE", "shop.events"),
            ("AMQP_SHARDS", "8"),
            ("AMQP_PREFETCH", "10"),
            ("AMQP_MAX_ATTEMPTS", "3"),
            ("AMQP_RETRY_DELAY", "0.5"),
            ("AMQP_OUTBOX_EXCHANGE", ""),
        ])
        .expect("valid");
        assert_eq!(
            c.amqp_url.as_ref().map(AmqpUrl::expose),
            Some("amqp://app:secret@mq:5672/%2f")
        );
        assert_eq!(c.amqp_exchange, "shop.events");
        assert_eq!(
            (c.amqp_shards, c.amqp_prefetch, c.amqp_max_attempts),
            (8, 10, 3)
        );
        assert_eq!(c.amqp_retry_delay, Duration::from_millis(500));
        assert_eq!(c.amqp_outbox_exchange, None, "empty: no relay");
        let line = c.to_string();
        assert!(line.contains("amqp=amqp://app:***@mq"), "{line}");
        assert!(!line.contains("secret"), "{line}");
        let defaults = Config::default();
        assert_eq!(defaults.amqp_url, None);
        assert_eq!(
            defaults.amqp_outbox_exchange.as_deref(),
            Some("product-updates")
        );
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
            ("SOCKET_TIMEOUT", "0"),
            ("SOCKET_TIMEOUT", "0.05"),
            ("KEEPALIVE_TIMEOUT", "0"),
            ("HEADER_TIMEOUT", "3601"),
            ("BODY_TIMEOUT", "soon"),
            ("MAX_HEADER_BYTES", "1023"),
            ("MAX_HEADER_BYTES", "1048577"),
            ("MAX_CONNECTIONS", "0"),
            ("IDEMPOTENCY_TTL", "0.5"),
            ("LOG_FORMAT", "yaml"),
            ("AMQP_URL", "amqps://mq"),
            ("AMQP_URL", "http://mq"),
            ("AMQP_EXCHANGE", ""),
            ("AMQP_EXCHANGE", "has space"),
            ("AMQP_OUTBOX_EXCHANGE", "a/b"),
            ("AMQP_SHARDS", "0"),
            ("AMQP_SHARDS", "65"),
            ("AMQP_PREFETCH", "0"),
            ("AMQP_MAX_ATTEMPTS", "21"),
            ("AMQP_RETRY_DELAY", "0"),
            ("AMQP_OUTBOX_EXCHANGE", "product-events"),
            ("AMQP_OUTBOX_EXCHANGE", "product-events.retry"),
        ] {
            let err = from(&[(var, value)]).expect_err(&format!("{var}={value:?} must be refused"));
            assert_eq!(err.variable, var);
            assert_eq!(err.value, value);
            let line = err.to_string();
            assert!(line.contains(var) && line.contains(&err.allowed), "{line}");
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
    fn help_lists_every_setting_with_its_default_and_range() {
        let help = Config::help();
        for s in SETTINGS {
            assert!(
                help.contains(s.name)
                    && help.contains(&s.kind.default_text())
                    && help.contains(&s.kind.allowed()),
                "{}",
                s.name
            );
        }
        for (name, _) in RETIRED {
            assert!(help.contains(name), "{name}");
        }
    }

    #[test]
    fn a_retired_setting_is_named_with_what_to_do_instead() {
        let found = Config::retired_in(|k| (k == "HTTP_THREADS").then(|| "4".into()));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("HTTP_THREADS is no longer used"),
            "{found:?}"
        );
        assert!(Config::retired_in(|_| None).is_empty());
    }
}
