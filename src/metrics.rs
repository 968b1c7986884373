//! Prometheus metrics: counters and histograms kept with atomics on the hot
//! path, written out in the text exposition format (version 0.0.4) by
//! `GET /metrics`.
//!
//! Every connection thread and worker updates these with relaxed atomic
//! adds: no lock, no allocation. Gauges (queue depth, products, ...) are not
//! kept here at all; they are read from their owners when `/metrics` is
//! scraped, as one [`Stats`].
//!
//! Hand-written rather than the `prometheus-client` crate: the service
//! exports a dozen fixed series whose labels are all known at compile time,
//! so fixed arrays of atomics cover them, and the exposition format is a
//! few lines of `writeln!`. The crate would bring a registry, dynamic label
//! sets and a dependency tree for no gain here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::stats::Stats;

/// Why `POST /events` refused an event (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Validation,
    TooLarge,
    UnsupportedType,
    QueueFull,
    ShuttingDown,
    ProductLimit,
    StorageUnavailable,
}

impl RejectReason {
    const ALL: [RejectReason; 7] = [
        RejectReason::Validation,
        RejectReason::TooLarge,
        RejectReason::UnsupportedType,
        RejectReason::QueueFull,
        RejectReason::ShuttingDown,
        RejectReason::ProductLimit,
        RejectReason::StorageUnavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            RejectReason::Validation => "validation",
            RejectReason::TooLarge => "too_large",
            RejectReason::UnsupportedType => "unsupported_type",
            RejectReason::QueueFull => "queue_full",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::ProductLimit => "product_limit",
            RejectReason::StorageUnavailable => "storage_unavailable",
        }
    }
}

/// The route a request was for (the `route` label); a fixed set, so a
/// client cannot create new series by requesting new paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Events,
    ProductList,
    Product,
    Healthz,
    Readyz,
    Metrics,
    Other,
}

impl RouteLabel {
    const ALL: [RouteLabel; 7] = [
        RouteLabel::Events,
        RouteLabel::ProductList,
        RouteLabel::Product,
        RouteLabel::Healthz,
        RouteLabel::Readyz,
        RouteLabel::Metrics,
        RouteLabel::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            RouteLabel::Events => "/events",
            RouteLabel::ProductList => "/products",
            RouteLabel::Product => "/products/{id}",
            RouteLabel::Healthz => "/healthz",
            RouteLabel::Readyz => "/readyz",
            RouteLabel::Metrics => "/metrics",
            RouteLabel::Other => "other",
        }
    }
}

/// Problem codes of requests and connections tiny_http refuses before they
/// are routed (the `code` label of `http_rejections_total`).
const HTTP_REJECTION_CODES: [&str; 11] = [
    "malformed_request",
    "invalid_host",
    "unsupported_transfer_encoding",
    "invalid_content_length",
    "header_timeout",
    "body_timeout",
    "expectation_failed",
    "header_too_large",
    "http_version_not_supported",
    "too_many_connections",
    "shutting_down",
];

const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "other"];
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &str) -> usize {
    METHODS[..3].iter().position(|m| *m == method).unwrap_or(3)
}

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(2, 5) - 2
}

/// A histogram with fixed bucket bounds: of seconds ([`Histogram::observe`])
/// or of counts ([`Histogram::observe_count`]).
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for `+Inf`; not cumulative.
    counts: Vec<AtomicU64>,
    /// The sum, in nanoseconds for durations, in units for counts.
    sum: AtomicU64,
    /// Units of `sum` per unit of the metric (1e9 for seconds).
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram::scaled(bounds, 1e9)
    }

    fn of_counts(bounds: &'static [f64]) -> Histogram {
        Histogram::scaled(bounds, 1.0)
    }

    fn scaled(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.record(duration.as_secs_f64(), nanos);
    }

    /// Records many durations (a worker's batch): a run of them in one
    /// bucket is one addition, so the atomics shared by every worker are
    /// touched about once per batch, not once per event.
    pub fn observe_all(&self, durations: impl IntoIterator<Item = Duration>) {
        let mut run = (0, 0);
        let mut nanos = 0u64;
        for duration in durations {
            nanos = nanos.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
            let bucket = self.bucket(duration.as_secs_f64());
            if run.1 > 0 && run.0 != bucket {
                self.counts[run.0].fetch_add(run.1, Ordering::Relaxed);
                run.1 = 0;
            }
            run = (bucket, run.1 + 1);
        }
        if run.1 > 0 {
            self.counts[run.0].fetch_add(run.1, Ordering::Relaxed);
            self.sum.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// Records one count (a histogram made with `of_counts`).
    pub fn observe_count(&self, n: u64) {
        self.record(n as f64, n);
    }

    fn record(&self, value: f64, units: u64) {
        self.counts[self.bucket(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(units, Ordering::Relaxed);
    }

    /// The index of the first bound `value` is within (`+Inf`'s if none).
    fn bucket(&self, value: f64) -> usize {
        self.bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len())
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Request handling time buckets: 50 µs to 1 s.
const REQUEST_BOUNDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Queue wait buckets: 10 µs to 5 s (an event reaches a worker that was
/// waiting within the lowest buckets; a backlog shows in the upper ones).
const QUEUE_WAIT_BOUNDS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Commit duration buckets: 100 µs (a WAL commit without fsync) to 5 s.
const COMMIT_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];
/// Events per commit: 1 (no concurrency) to thousands (a deep group commit).
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// What the durable store's committer counts (shown only in durable mode).
pub struct StorageMetrics {
    pub commit_seconds: Histogram,
    pub commit_events: Histogram,
    errors: AtomicU64,
    products_written: AtomicU64,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            commit_seconds: Histogram::new(COMMIT_BOUNDS),
            commit_events: Histogram::of_counts(BATCH_BOUNDS),
            errors: AtomicU64::new(0),
            products_written: AtomicU64::new(0),
        }
    }
}

impl StorageMetrics {
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_products_written(&self, n: u64) {
        self.products_written.fetch_add(n, Ordering::Relaxed);
    }
}

/// What RabbitMQ's consumers count (shown only with `AMQP_URL`).
pub struct BrokerMetrics {
    consumed: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    /// Dead letters by reason: the problem codes, a fixed set.
    dead: Mutex<BTreeMap<&'static str, u64>>,
    /// Whether each shard's consumer is connected (empty: no broker).
    connected: Mutex<Vec<bool>>,
    /// The outbox relay: running (1) or not (0), or none in this mode
    /// (`u64::MAX`); events it published, and of those, confirmed; its lag.
    relay: AtomicU64,
    published: AtomicU64,
    confirmed: AtomicU64,
    relay_lag: AtomicU64,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            consumed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: Mutex::new(BTreeMap::new()),
            connected: Mutex::new(Vec::new()),
            relay: AtomicU64::new(u64::MAX),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            relay_lag: AtomicU64::new(0),
        }
    }
}

impl BrokerMetrics {
    /// The front door runs with `shards` consumers, none connected yet.
    pub fn consumers(&self, shards: usize) {
        if let Ok(mut connected) = self.connected.lock() {
            *connected = vec![false; shards];
        }
    }

    /// Whether shard `shard`'s consumer is connected now.
    pub fn connected(&self, shard: usize, up: bool) {
        if let Ok(mut connected) = self.connected.lock()
            && let Some(slot) = connected.get_mut(shard)
        {
            *slot = up;
        }
    }

    /// An outbox relay runs in this mode.
    pub fn relay_started(&self) {
        self.relay.store(0, Ordering::Relaxed);
    }

    /// Whether the relay is connected and publishing.
    pub fn relaying(&self, up: bool) {
        self.relay.store(u64::from(up), Ordering::Relaxed);
    }

    /// The relay sent `events` to the broker.
    pub fn published(&self, events: u64) {
        self.published.fetch_add(events, Ordering::Relaxed);
    }

    /// The broker confirmed `events` the relay sent.
    pub fn confirmed(&self, events: u64) {
        self.confirmed.fetch_add(events, Ordering::Relaxed);
    }

    pub fn relay_lag(&self, events: u64) {
        self.relay_lag.store(events, Ordering::Relaxed);
    }

    pub fn consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acked_many(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead(&self, code: &'static str) {
        if let Ok(mut dead) = self.dead.lock() {
            *dead.entry(code).or_default() += 1;
        }
    }

    /// Consumers configured and connected now; `None` without a broker.
    pub fn consumers_connected(&self) -> Option<(usize, usize)> {
        let connected = self.connected.lock().ok()?;
        let up = connected.iter().filter(|up| **up).count();
        (!connected.is_empty()).then_some((connected.len(), up))
    }
}

impl std::fmt::Display for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dead: Vec<String> = match self.dead.lock() {
            Ok(dead) => dead.iter().map(|(code, n)| format!("{code}={n}")).collect(),
            Err(_) => Vec::new(),
        };
        write!(
            f,
            "consumed={} acked={} retried={} dead_lettered=[{}]",
            self.consumed.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            dead.join(" ")
        )
    }
}

/// The counters and histograms, shared by every thread.
pub struct Metrics {
    started: SystemTime,
    duplicates: AtomicU64,
    /// Batch requests (NDJSON) taken, and the new events they carried.
    batches: AtomicU64,
    batch_events: AtomicU64,
    rejected: [AtomicU64; 7],
    /// One per `HTTP_REJECTION_CODES`.
    http_rejected: [AtomicU64; HTTP_REJECTION_CODES.len()],
    /// `[route][method][status class]`.
    requests: [[[AtomicU64; CLASSES.len()]; METHODS.len()]; RouteLabel::ALL.len()],
    pub request_seconds: Histogram,
    pub queue_wait_seconds: Histogram,
    pub storage: StorageMetrics,
    pub broker: BrokerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: SystemTime::now(),
            duplicates: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_events: AtomicU64::new(0),
            rejected: Default::default(),
            http_rejected: Default::default(),
            requests: Default::default(),
            request_seconds: Histogram::new(REQUEST_BOUNDS),
            queue_wait_seconds: Histogram::new(QUEUE_WAIT_BOUNDS),
            storage: StorageMetrics::default(),
            broker: BrokerMetrics::default(),
        }
    }
}

impl Metrics {
    /// A retried event (same `event_id`) was recognised and not queued again.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch request was taken: `events` new events, `duplicates`
    /// events recognised and not queued again.
    pub fn batch(&self, events: u64, duplicates: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_events.fetch_add(events, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request or connection refused before routing, by its
    /// problem code (codes outside the fixed set are not counted).
    pub fn http_rejected(&self, code: &str) {
        if let Some(i) = HTTP_REJECTION_CODES.iter().position(|c| *c == code) {
            self.http_rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one answered request and its handling time.
    pub fn request(&self, route: RouteLabel, method: &str, status: u16, took: Duration) {
        self.requests[route as usize][method_index(method)][class_index(status)]
            .fetch_add(1, Ordering::Relaxed);
        self.request_seconds.observe(took);
    }

    /// The whole exposition, in text format 0.0.4.
    pub fn render(&self, s: &Stats) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_events(s, &mut out);
        self.render_queue(s, &mut out);
        self.render_http(s, &mut out);
        self.render_storage(s, &mut out);
        self.render_broker(&mut out);
        self.render_process(&mut out);
        out
    }

    /// Events: accepted, refused, duplicate, applied, stale, panicked.
    fn render_events(&self, s: &Stats, out: &mut String) {
        counter(
            out,
            "events_accepted_total",
            "Events answered 202 and queued.",
            s.accepted,
        );
        header(
            out,
            "events_rejected_total",
            "counter",
            "Events refused by POST /events, by reason.",
        );
        for reason in RejectReason::ALL {
            let n = self.rejected[reason as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "events_rejected_total{{reason=\"{}\"}} {n}",
                reason.label()
            );
        }
        header(
            out,
            "http_rejections_total",
            "counter",
            "Requests and connections refused by the HTTP layer before routing (answered, then closed), by problem code.",
        );
        for (code, n) in HTTP_REJECTION_CODES.iter().zip(&self.http_rejected) {
            let _ = writeln!(
                out,
                "http_rejections_total{{code=\"{code}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        counter(
            out,
            "batch_requests_total",
            "Batch requests (NDJSON POST /events) taken; their events count in events_accepted_total, and in batch_events_total.",
            self.batches.load(Ordering::Relaxed),
        );
        counter(
            out,
            "batch_events_total",
            "New events taken in batch requests.",
            self.batch_events.load(Ordering::Relaxed),
        );
        counter(
            out,
            "events_duplicate_total",
            "Retried events (same event_id) answered with their original seq and not queued again.",
            self.duplicates.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "idempotency_window_entries",
            "Event ids remembered for recognising retries.",
            s.idempotency_window,
        );
        counter(
            out,
            "events_applied_total",
            "Events applied to the store.",
            s.applied,
        );
        counter(
            out,
            "stale_field_writes_skipped_total",
            "Fields not written because a newer event had already set them.",
            s.stale_fields,
        );
        counter(
            out,
            "worker_panics_total",
            "Events whose apply panicked (caught; the event was not applied).",
            s.panics,
        );
        gauge(
            out,
            "events_unapplied",
            "Events queued or being applied (in PostgreSQL mode, every instance's events this one applies).",
            usize::try_from(s.queued.saturating_sub(s.applied + s.panics)).unwrap_or(usize::MAX),
        );
    }

    /// The queue, the workers, the store and the `min_seq` readers.
    fn render_queue(&self, s: &Stats, out: &mut String) {
        gauge(
            out,
            "queue_depth",
            "Events waiting in the queue.",
            s.queue_depth,
        );
        gauge(
            out,
            "queue_capacity",
            "Events the queue can hold (QUEUE_SIZE).",
            s.queue_capacity,
        );
        gauge(out, "workers", "Worker threads (WORKERS).", s.workers);
        gauge(out, "products", "Products in the store.", s.products);
        gauge(
            out,
            "min_seq_readers_waiting",
            "GET /products/{id}?min_seq=... requests waiting for the workers.",
            s.waiting_readers,
        );
    }

    /// Connections, requests and their latency; the time events wait.
    fn render_http(&self, s: &Stats, out: &mut String) {
        gauge(
            out,
            "http_connections_open",
            "Client connections being served (each has its thread), idle keep-alive ones included.",
            s.open_connections,
        );
        gauge(
            out,
            "http_connections_max",
            "Connections served at once before new ones get 503 (MAX_CONNECTIONS).",
            s.max_connections,
        );
        header(
            out,
            "http_requests_total",
            "counter",
            "HTTP requests answered, by route, method and status class.",
        );
        for route in RouteLabel::ALL {
            for (m, method) in METHODS.iter().enumerate() {
                for (c, class) in CLASSES.iter().enumerate() {
                    let n = self.requests[route as usize][m][c].load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{class}\"}} {n}",
                            route.label()
                        );
                    }
                }
            }
        }
        self.request_seconds.render(
            out,
            "http_request_duration_seconds",
            "Time from taking a request to having answered it.",
        );
        self.queue_wait_seconds.render(
            out,
            "queue_wait_seconds",
            "Time from accepting an event (202) to having applied it.",
        );
    }

    /// The durable store, in the modes that have one.
    fn render_storage(&self, s: &Stats, out: &mut String) {
        if let Some(lag) = s.journal_lag {
            gauge(
                out,
                "storage_journal_lag_events",
                "PostgreSQL mode: events committed to the database (by any instance) that this instance has not applied yet.",
                usize::try_from(lag).unwrap_or(usize::MAX),
            );
        }
        if let Some(unavailable) = s.storage_unavailable {
            let storage = &self.storage;
            gauge(
                out,
                "storage_unavailable",
                "1 while writes to the durable store fail (POST /events answers 503 storage_unavailable), else 0.",
                usize::from(unavailable),
            );
            counter(
                out,
                "storage_errors_total",
                "Writes to the durable store that failed (each is retried).",
                storage.errors.load(Ordering::Relaxed),
            );
            counter(
                out,
                "storage_products_written_total",
                "Product rows written to the durable store.",
                storage.products_written.load(Ordering::Relaxed),
            );
            storage.commit_seconds.render(
                out,
                "storage_commit_duration_seconds",
                "Time of one commit of the durable store (one batch of events and products).",
            );
            storage.commit_events.render(
                out,
                "storage_commit_batch_events",
                "Events made durable by one commit (group commit: the events that arrived during the previous one).",
            );
        }
    }

    /// RabbitMQ's consumers, with `AMQP_URL`.
    fn render_broker(&self, out: &mut String) {
        let broker = &self.broker;
        let Some((_, connected)) = broker.consumers_connected() else {
            return;
        };
        gauge(
            out,
            "amqp_consumers_connected",
            "Shard consumers of this instance connected to RabbitMQ now (of AMQP_SHARDS).",
            connected,
        );
        counter(
            out,
            "amqp_messages_consumed_total",
            "Messages taken from the shard queues.",
            broker.consumed.load(Ordering::Relaxed),
        );
        counter(
            out,
            "amqp_messages_acked_total",
            "Messages acknowledged: their event is as safe as a 202 makes it, or a copy went to a delay or dead-letter queue.",
            broker.acked.load(Ordering::Relaxed),
        );
        counter(
            out,
            "amqp_messages_retried_total",
            "Messages refused for now (queue full, storage down) and sent to a delay queue.",
            broker.retried.load(Ordering::Relaxed),
        );
        header(
            out,
            "amqp_messages_dead_lettered_total",
            "counter",
            "Messages sent to the dead-letter queue, by reason (the problem code).",
        );
        if let Ok(dead) = broker.dead.lock() {
            for (code, n) in dead.iter() {
                let _ = writeln!(
                    out,
                    "amqp_messages_dead_lettered_total{{reason=\"{code}\"}} {n}"
                );
            }
        }
        let relay = broker.relay.load(Ordering::Relaxed);
        if relay == u64::MAX {
            return;
        }
        gauge(
            out,
            "amqp_outbox_relay_connected",
            "1 while the outbox relay is connected and publishing, else 0.",
            usize::from(relay == 1),
        );
        counter(
            out,
            "amqp_outbox_published_total",
            "Journaled events published to AMQP_OUTBOX_EXCHANGE (a batch not confirmed is published again).",
            broker.published.load(Ordering::Relaxed),
        );
        counter(
            out,
            "amqp_outbox_confirmed_total",
            "Published events the broker has confirmed (the relay's cursor moves with them).",
            broker.confirmed.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "amqp_outbox_lag_events",
            "Journaled events not yet published (the last committed seq minus the relay's cursor), as last seen by the relay.",
            usize::try_from(broker.relay_lag.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
        );
    }

    /// The process.
    fn render_process(&self, out: &mut String) {
        let start = self
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        header(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {start}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: usize) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 2.0055\n"), "{out}");
    }

    #[test]
    fn a_batch_of_durations_counts_as_each_one_would() {
        let durations = [500, 700, 5_000, 600, 2_000_000, 2_000_000].map(Duration::from_micros);
        let (one_by_one, all) = (
            Histogram::new(&[0.001, 0.01]),
            Histogram::new(&[0.001, 0.01]),
        );
        durations.into_iter().for_each(|d| one_by_one.observe(d));
        all.observe_all(durations);
        all.observe_all([]);
        let (mut expected, mut out) = (String::new(), String::new());
        one_by_one.render(&mut expected, "x_seconds", "help");
        all.render(&mut out, "x_seconds", "help");
        assert_eq!(out, expected);
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 6\n"), "{out}");
    }

    #[test]
    fn status_classes_and_methods_map_to_fixed_labels() {
        assert_eq!(class_index(200), 0);
        assert_eq!(class_index(304), 1);
        assert_eq!(class_index(404), 2);
        assert_eq!(class_index(503), 3);
        assert_eq!(method_index("POST"), 2);
        assert_eq!(method_index("PATCH"), 3);
    }
}
