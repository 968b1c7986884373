//! A throwaway RabbitMQ server for a test binary: Debian's
//! `rabbitmq-server` in a fresh directory, on free loopback ports, with its
//! own epmd and the consistent-hash exchange plugin. Never a shared or
//! pre-existing server. Each test declares its own names
//! (`AMQP_EXCHANGE`), so the tests of one binary share one server, which
//! takes 5 to 20 s to boot.
//!
//! The server runs under a shell that stops it and removes its directory
//! once the test process has exited (statics are never dropped). When the
//! binaries are missing, the test fails saying which package to install:
//! in CI that is a failure like any other (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_lite::future::block_on;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::scratch_dir;

/// The broker of this test binary.
pub struct RabbitMq {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// The shell that runs the server; it ends with this process.
    shell: Option<std::process::Child>,
}

impl RabbitMq {
    /// Starts the server on first use; later calls get the same one.
    pub fn get() -> &'static RabbitMq {
        static SERVER: OnceLock<RabbitMq> = OnceLock::new();
        SERVER.get_or_init(RabbitMq::boot)
    }

    fn boot() -> RabbitMq {
        let bin = binaries();
        let dir = scratch_dir("rabbitmq");
        std::fs::write(
            dir.join("enabled_plugins"),
            "[rabbitmq_consistent_hash_exchange].\n",
        )
        .expect("write enabled_plugins");
        std::fs::write(dir.join("rabbitmq.conf"), "").expect("write rabbitmq.conf");
        let mut server = RabbitMq {
            port: free_port(),
            dir,
            bin,
            shell: None,
        };
        // The server's parent is a shell that reads a pipe whose writing
        // end only this process holds: its end of input is this process's
        // exit (however it exits), on which it stops the server and its
        // epmd and removes the directory.
        let script = format!(
            "{server} >{dir}/server.log 2>&1 & server=$!; cat >/dev/null; \
             {ctl} stop >/dev/null 2>&1; kill $server 2>/dev/null; wait $server; \
             epmd -kill >/dev/null 2>&1; rm -rf {dir}",
            server = server.bin.join("rabbitmq-server").display(),
            ctl = server.bin.join("rabbitmqctl").display(),
            dir = server.dir.display(),
        );
        let mut shell = Command::new("sh");
        shell
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        server.environment(&mut shell);
        let mut child = shell.spawn().expect("start the rabbitmq-server shell");
        // Held open until the process exits.
        std::mem::forget(child.stdin.take());
        server.shell = Some(child);
        let waited = server
            .ctl(&[
                "wait",
                "--timeout",
                "120",
                &server.dir.join("pid").display().to_string(),
            ])
            .status
            .success();
        assert!(
            waited,
            "rabbitmq-server did not start; its log: {}",
            std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
        );
        server
    }

    /// The variables that make this server's node its own: its name,
    /// ports, directories and Erlang cookie (in `HOME`).
    fn environment(&self, command: &mut Command) {
        let dir = self.dir.display().to_string();
        let node = format!("rabbit-test-{}@localhost", self.port);
        command
            .env("HOME", &dir)
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", (self.port + 1).to_string())
            .env("ERL_EPMD_PORT", (self.port + 2).to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", format!("{dir}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{dir}/log"))
            .env("RABBITMQ_LOGS", format!("{dir}/rabbit.log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{dir}/enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", format!("{dir}/rabbitmq"))
            .env("RABBITMQ_PID_FILE", format!("{dir}/pid"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", format!("{dir}/plugins"))
            .env(
                "RABBITMQ_FEATURE_FLAGS_FILE",
                format!("{dir}/feature_flags"),
            )
            .env("RABBITMQ_QUORUM_DIR", format!("{dir}/quorum"));
    }

    /// Runs `rabbitmqctl` against this server.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(self.bin.join("rabbitmqctl"));
        self.environment(&mut command);
        command.args(args).output().expect("run rabbitmqctl")
    }

    /// The URL as `AMQP_URL` takes it (the default guest user may log in
    /// over loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A client connection with a publisher-confirm channel.
    pub fn client(&self) -> Client {
        let connection = block_on(Connection::connect(
            &self.url(),
            ConnectionProperties::default(),
        ))
        .expect("connect to the test broker");
        let channel = block_on(connection.create_channel()).expect("a channel");
        block_on(channel.confirm_select(ConfirmSelectOptions::default())).expect("confirms");
        Client {
            _connection: connection,
            channel,
        }
    }
}

/// A producer and inspector of the test broker.
pub struct Client {
    _connection: Connection,
    pub channel: Channel,
}

impl Client {
    /// Publishes `body` to `exchange` with `routing_key` and waits for the
    /// broker's confirm.
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let confirm = block_on(self.channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        ))
        .expect("publish");
        let confirm = block_on(confirm).expect("confirm");
        assert!(confirm.is_ack(), "the broker refused a message");
    }

    /// Declares a durable queue that gets every message of the topic
    /// exchange `exchange` (which must exist).
    pub fn subscribe(&self, queue: &str, exchange: &str) {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        block_on(
            self.channel
                .queue_declare(queue.into(), options, FieldTable::default()),
        )
        .expect("declare the downstream queue");
        block_on(self.channel.queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .expect("bind the downstream queue");
    }

    /// Every message now in `queue`, taken: their bodies as JSON.
    pub fn drain_json(&self, queue: &str) -> Vec<serde_json::Value> {
        let mut taken = Vec::new();
        while let Some((body, _)) = self.take(queue) {
            taken.push(serde_json::from_slice(&body).expect("a JSON body"));
        }
        taken
    }

    /// Messages waiting in `queue` (ready, not held by a consumer).
    pub fn ready(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        block_on(
            self.channel
                .queue_declare(queue.into(), options, FieldTable::default()),
        )
        .expect("the queue exists")
        .message_count()
    }

    /// Takes one message from `queue` (acknowledged), if there is one:
    /// its body and headers.
    pub fn take(&self, queue: &str) -> Option<(Vec<u8>, FieldTable)> {
        let options = BasicGetOptions { no_ack: true };
        let message =
            block_on(self.channel.basic_get(queue.into(), options)).expect("basic.get")?;
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        Some((message.delivery.data.clone(), headers))
    }
}

/// A header as text (the service writes its reasons as long strings).
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A name for one test's exchange: unique in this process.
pub fn exchange(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{tag}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Where `rabbitmq-server` and `rabbitmqctl` are; fails the test saying
/// what to install.
fn binaries() -> PathBuf {
    let candidates = std::env::var_os("RABBITMQ_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/lib/rabbitmq/bin")]);
    for dir in candidates {
        if dir.join("rabbitmq-server").exists() && dir.join("rabbitmqctl").exists() {
            return dir;
        }
    }
    panic!(
        "RabbitMQ's server is not installed: apt-get install rabbitmq-server (or set RABBITMQ_BIN to the directory of rabbitmq-server and rabbitmqctl); the amqp tests need it"
    )
}

/// A free loopback port whose next two are free too (the node's
/// distribution port and its epmd), below the kernel's range of ephemeral
/// ports: there the other tests' client connections take ports all the
/// time, and one took the distribution port between this check and the
/// broker's bind.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_from.saturating_sub(3).max(10_100));
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..1000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = low + (random % u64::from(high - low)) as u16;
        if free(port) && free(port + 1) && free(port + 2) {
            return port;
        }
    }
    panic!("no three free loopback ports in a row below {ephemeral_from}")
}
