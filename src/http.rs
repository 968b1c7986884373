//! The HTTP side: request threads, routing, and the answers.
//!
//! tiny_http runs its own accept thread and one thread per connection; those
//! parse requests and put them on tiny_http's internal queue. Our
//! `HTTP_THREADS` request threads (`http-0`, `http-1`, ...) each loop on
//! `server.recv()`, answer one request at a time, and share one [`Api`]:
//! the intake (to queue events) and a store handle (to read products).
//! A request thread never waits for a worker: `POST /events` is answered as
//! soon as the event is in the queue (202) or the queue refuses it (503).
//!
//! Routes:
//!
//! | method    | path             | answer                                  |
//! |-----------|------------------|-----------------------------------------|
//! | POST      | `/events`        | 202 + `{"status":"accepted","seq":..}`  |
//! | GET, HEAD | `/products/{id}` | 200 + the product, or 404               |
//!
//! Every error is an [`ApiError`] rendered as problem details.

use std::borrow::Cow;
use std::io::{self, Read};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::{HTTPVersion, Header, Method, Rejection, Request, Response, Server};

use crate::config::Config;
use crate::metrics::{Metrics, RejectReason, Route, Snapshot};
use crate::model::{self, ProductUpdate};
use crate::problem::{ApiError, NotReady};
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError, Submitted};
use crate::request_id::RequestIds;
use crate::store::{Seq, Store};
use crate::worker::WorkerCounters;

/// What the request threads share.
pub struct Api {
    intake: Arc<Intake>,
    store: Store,
    /// For `/metrics`: the workers' counts and the configuration.
    counters: Arc<WorkerCounters>,
    metrics: Arc<Metrics>,
    /// The applied watermark, for `min_seq` reads.
    progress: Arc<Progress>,
    /// Request threads waiting in a `min_seq` read, and the most allowed:
    /// a waiting thread answers nobody else, so some are always kept free.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Request threads reading a body from the network (a slow client can
    /// hold one for long), and the most allowed; see `read_body_slot`.
    body_readers: AtomicUsize,
    workers: usize,
    max_body_bytes: usize,
    max_products: usize,
    request_ids: RequestIds,
    /// Set when shutdown begins: every answer from then on says
    /// `Connection: close`, so keep-alive clients move elsewhere.
    draining: AtomicBool,
    headers: Headers,
    /// The connection limits, for the details of their problems.
    socket_timeout: Duration,
    keepalive_timeout: Duration,
    header_timeout: Duration,
    body_timeout: Duration,
    max_header_bytes: usize,
    max_connections: usize,
    /// Connections tiny_http is serving (it counts them).
    open_connections: Arc<AtomicUsize>,
}

/// Headers built once; tiny_http clones them into each response.
struct Headers {
    json: Header,
    prometheus: Header,
    problem_json: Header,
    close: Header,
    keep_alive: Header,
    retry_after: Header,
    allow_events: Header,
    allow_products: Header,
    caught_up_true: Header,
    caught_up_false: Header,
}

impl Headers {
    fn caught_up(&self, yes: bool) -> Header {
        if yes {
            self.caught_up_true.clone()
        } else {
            self.caught_up_false.clone()
        }
    }

    fn new() -> Headers {
        let h = |name: &str, value: &str| {
            Header::from_bytes(name.as_bytes(), value.as_bytes())
                .expect("static header names and values are valid ASCII")
        };
        Headers {
            json: h("Content-Type", "application/json"),
            prometheus: h("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            problem_json: h("Content-Type", "application/problem+json"),
            close: h("Connection", "close"),
            keep_alive: h("Connection", "keep-alive"),
            retry_after: h("Retry-After", "1"),
            allow_events: h("Allow", ALLOW_EVENTS),
            allow_products: h("Allow", ALLOW_PRODUCTS),
            caught_up_true: h("X-Caught-Up", "true"),
            caught_up_false: h("X-Caught-Up", "false"),
        }
    }
}

const ALLOW_EVENTS: &str = "POST";
const ALLOW_PRODUCTS: &str = "GET, HEAD";

impl Api {
    pub fn new(
        intake: Arc<Intake>,
        store: Store,
        counters: Arc<WorkerCounters>,
        metrics: Arc<Metrics>,
        progress: Arc<Progress>,
        config: &Config,
    ) -> Api {
        Api {
            intake,
            store,
            counters,
            metrics,
            progress,
            waiting: AtomicUsize::new(0),
            body_readers: AtomicUsize::new(0),
            max_waiting: config.http_threads.saturating_sub(1).max(1),
            workers: config.workers,
            max_body_bytes: config.max_body_bytes,
            max_products: config.max_products,
            request_ids: RequestIds::default(),
            draining: AtomicBool::new(false),
            headers: Headers::new(),
            socket_timeout: config.socket_timeout,
            keepalive_timeout: config.keepalive_timeout,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            max_header_bytes: config.max_header_bytes,
            max_connections: config.max_connections,
            open_connections: Arc::default(),
        }
    }

    /// The bounds tiny_http enforces on every connection, with this API's
    /// problem details as the answer to each refusal.
    pub fn server_limits(api: &Arc<Api>) -> tiny_http::Limits {
        let responder = Arc::clone(api);
        tiny_http::Limits {
            max_connections: Some(api.max_connections),
            open_connections: Arc::clone(&api.open_connections),
            socket_timeout: Some(api.socket_timeout),
            keep_alive_timeout: Some(api.keepalive_timeout),
            head_timeout: Some(api.header_timeout),
            body_timeout: Some(api.body_timeout),
            max_head_bytes: api.max_header_bytes,
            respond: Arc::new(move |rejection| responder.rejection(rejection)),
        }
    }

    /// The answer to a request tiny_http refused before routing it (it adds
    /// `Connection: close`): the same problem details as every other error,
    /// counted in `http_rejections_total` and logged as an access line.
    fn rejection(&self, rejection: Rejection) -> Response<io::Cursor<Vec<u8>>> {
        let error = match rejection {
            Rejection::MalformedRequestLine => ApiError::MalformedRequest {
                detail: "the request line is not 'METHOD /path HTTP/1.1' in ASCII",
            },
            Rejection::MalformedHeader => ApiError::MalformedRequest {
                detail: "a header line is not 'Name: value' in ASCII",
            },
            Rejection::InvalidContentLength => ApiError::InvalidContentLength,
            Rejection::HeadTimeout => ApiError::HeaderTimeout {
                limit: self.header_timeout,
            },
            Rejection::BodyTimeout => self.body_timeout(),
            Rejection::ExpectationFailed => ApiError::ExpectationFailed,
            Rejection::HeadTooLarge => ApiError::HeaderTooLarge {
                limit: self.max_header_bytes,
            },
            Rejection::VersionNotSupported => ApiError::HttpVersionNotSupported,
            Rejection::TooManyConnections => ApiError::TooManyConnections {
                limit: self.max_connections,
            },
            Rejection::ShuttingDown => ApiError::ShuttingDown,
        };
        let request_id = self.request_ids.for_request(None);
        self.metrics.http_rejected(error.code());
        log::info!(
            target: "access",
            "- - {} {} request_id={request_id}",
            error.status(),
            error.code()
        );
        with_request_id(self.error_response(&error, &request_id), &request_id)
    }

    fn body_timeout(&self) -> ApiError {
        ApiError::BodyTimeout {
            limit: self.body_timeout,
            stall: self.socket_timeout,
        }
    }

    /// Shutdown step 1: close the intake. From here on `POST /events` answers
    /// 503 `shutting_down`, and every response asks the client to close.
    /// Returns how many events were accepted in all.
    pub fn begin_drain(&self) -> u64 {
        self.draining.store(true, Ordering::Relaxed);
        self.intake.close()
    }

    /// Answers one request. Every path answers on purpose: a request dropped
    /// unanswered would get tiny_http's bare 500.
    fn handle(&self, mut request: Request) {
        let started = Instant::now();
        let route = route_of(request.url());
        let request_id = self
            .request_ids
            .for_request(header(&request, "X-Request-Id"));
        let mut body_read = false;
        let mut caught_up = None;
        let result = self.route(&mut request, &mut body_read, &request_id, &mut caught_up);
        // A body left unread would be drained from the socket by tiny_http
        // on this thread, as slowly as the client likes: close instead.
        let unread_body = has_body(&request) && !body_read;
        let close =
            unread_body || self.draining.load(Ordering::Relaxed) || client_wants_close(&request);
        let status = match &result {
            Ok(reply) => reply.status,
            Err(error) => error.status(),
        };
        if let (Route::Events, Method::Post, Err(error)) = (route, request.method(), &result) {
            self.metrics.reject(reject_reason(error));
        }
        let response = match result {
            Ok(reply) => {
                let content_type = match reply.kind {
                    ReplyKind::Json => &self.headers.json,
                    ReplyKind::Prometheus => &self.headers.prometheus,
                };
                let response = Response::from_data(reply.body)
                    .with_status_code(reply.status)
                    .with_header(content_type.clone());
                // An entity tag is `"<digits>"`: always a valid header value.
                match reply
                    .etag
                    .and_then(|tag| Header::from_bytes(&b"ETag"[..], tag.as_bytes()).ok())
                {
                    Some(etag) => response.with_header(etag),
                    None => response,
                }
            }
            Err(error) => {
                log::debug!(
                    "{} {} -> {} {}: {error} request_id={request_id}",
                    request.method(),
                    request.url(),
                    error.status(),
                    error.code()
                );
                self.error_response(&error, &request_id)
            }
        };
        let response = match caught_up {
            Some((caught_up, through)) => response
                .with_header(self.headers.caught_up(caught_up))
                .with_header(header_value("X-Applied-Through", &through.to_string())),
            None => response,
        };
        let bytes = response.data_length().unwrap_or(0);
        let response = with_request_id(response, &request_id);
        let response = if close {
            response.with_header(self.headers.close.clone())
        } else if *request.http_version() == HTTPVersion(1, 0) {
            // An HTTP/1.0 client only keeps the connection if told so.
            response.with_header(self.headers.keep_alive.clone())
        } else {
            response
        };
        let method = request.method().as_str().to_owned();
        let url = request.url().to_owned();
        if let Err(e) = request.respond(response) {
            log::debug!("could not send a response: {e}");
        }
        let took = started.elapsed();
        self.metrics.request(route, &method, status, took);
        // One line per request, under its own target so it can be turned off
        // on its own (RUST_LOG=info,access=off).
        log::info!(
            target: "access",
            "{method} {url} {status} {bytes}B {}us request_id={request_id}",
            took.as_micros()
        );
    }

    /// The problem-details response for `error`, with the headers its status
    /// calls for (`Retry-After`, `Allow`). `handle` adds `Connection`.
    fn error_response(&self, error: &ApiError, request_id: &str) -> Response<io::Cursor<Vec<u8>>> {
        let response = Response::from_data(error.to_json(request_id))
            .with_status_code(error.status())
            .with_header(self.headers.problem_json.clone());
        match error {
            ApiError::QueueFull { .. }
            | ApiError::Busy { .. }
            | ApiError::TooManyConnections { .. } => {
                response.with_header(self.headers.retry_after.clone())
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                let header = if *allow == ALLOW_EVENTS {
                    &self.headers.allow_events
                } else {
                    &self.headers.allow_products
                };
                response.with_header(header.clone())
            }
            _ => response,
        }
    }

    /// Answers a request the request threads will no longer route (shutdown).
    fn shutting_down(&self) -> Response<io::Cursor<Vec<u8>>> {
        let request_id = self.request_ids.for_request(None);
        self.error_response(&ApiError::ShuttingDown, &request_id)
            .with_header(self.headers.close.clone())
    }

    /// Routes the request. `body_read` is set once the body has been read
    /// to its end.
    fn route(
        &self,
        request: &mut Request,
        body_read: &mut bool,
        request_id: &str,
        caught_up: &mut Option<(bool, Seq)>,
    ) -> Result<Reply, ApiError> {
        let url = request.url();
        let path = url.split_once('?').map_or(url, |(path, _query)| path);
        if path == "/events" {
            return match request.method() {
                Method::Post => self.post_event(request, body_read, request_id),
                other => Err(method_not_allowed(other, ALLOW_EVENTS)),
            };
        }
        if path == "/openapi.json" {
            return match request.method() {
                Method::Get | Method::Head => Ok(Reply {
                    status: 200,
                    body: OPENAPI.as_bytes().to_vec(),
                    kind: ReplyKind::Json,
                    etag: None,
                }),
                other => Err(method_not_allowed(other, ALLOW_PRODUCTS)),
            };
        }
        if matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return match request.method() {
                Method::Get | Method::Head => match path {
                    "/healthz" => Ok(Reply::json(200, &Status { status: "ok" })),
                    "/readyz" => self.readiness(),
                    _ => Ok(self.metrics_reply()),
                },
                other => Err(method_not_allowed(other, ALLOW_PRODUCTS)),
            };
        }
        if path == "/products" {
            let query = url.split_once('?').map_or("", |(_path, query)| query);
            return match request.method() {
                Method::Get | Method::Head => self.list_products(query),
                other => Err(method_not_allowed(other, ALLOW_PRODUCTS)),
            };
        }
        if let Some(raw_id) = path.strip_prefix("/products/") {
            if raw_id.is_empty() || raw_id.contains('/') {
                return Err(ApiError::NotFound {
                    path: path.to_owned(),
                });
            }
            return match request.method() {
                Method::Get | Method::Head => {
                    let query = url.split_once('?').map_or("", |(_path, query)| query);
                    self.wait_for_query(query, caught_up)?;
                    self.get_product(raw_id, header(request, "If-None-Match"))
                }
                other => Err(method_not_allowed(other, ALLOW_PRODUCTS)),
            };
        }
        Err(ApiError::NotFound {
            path: path.to_owned(),
        })
    }

    /// `/readyz`: ready unless draining or the queue is above its high-water
    /// mark ([`HIGH_WATER_PERCENT`] of `QUEUE_SIZE`).
    fn readiness(&self) -> Result<Reply, ApiError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(ApiError::NotReady(NotReady::Draining));
        }
        let depth = self.intake.depth();
        let capacity = self.intake.capacity();
        if depth * 100 >= capacity * HIGH_WATER_PERCENT {
            return Err(ApiError::NotReady(NotReady::QueueAboveHighWater {
                depth,
                capacity,
            }));
        }
        Ok(Reply::json(200, &Status { status: "ready" }))
    }

    /// Bodies of up to 1024 bytes (without `Expect: 100-continue`) are read
    /// by tiny_http's connection thread before the request reaches us; any
    /// other body is read here, from the network, as slowly as the client
    /// sends it. At most `max_waiting` request threads may do that at once,
    /// so a few trickling clients cannot take every thread: past the limit
    /// the answer is 503 `busy` at once (and the connection is closed).
    fn read_body_slot(&self, request: &Request) -> Result<Option<SlotGuard<'_>>, ApiError> {
        let declared = request.body_length();
        let chunked = header(request, "Transfer-Encoding").is_some();
        let expects_continue = header(request, "Expect").is_some();
        let from_network = chunked
            || (expects_continue && declared.is_some_and(|n| n > 0))
            || declared.is_some_and(|n| n > 1024);
        if !from_network {
            return Ok(None);
        }
        if self.body_readers.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.body_readers.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Busy {
                readers: self.max_waiting,
            });
        }
        Ok(Some(SlotGuard(&self.body_readers)))
    }

    /// Read-your-writes: with `min_seq=N` (and optionally `wait=S`, seconds,
    /// at most [`MAX_WAIT`]), blocks until every event up to seq N is
    /// applied or the wait runs out, and records whether it caught up. No
    /// polling: the request thread sleeps on the watermark's condition
    /// variable. Beyond `max_waiting` concurrent waiters it does not wait.
    /// Other query parameters are ignored.
    fn wait_for_query(
        &self,
        query: &str,
        caught_up: &mut Option<(bool, Seq)>,
    ) -> Result<(), ApiError> {
        let mut min_seq = None;
        let mut wait = MAX_WAIT;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let invalid = |detail: &str| ApiError::InvalidQuery {
                parameter: name.to_owned(),
                detail: detail.to_owned(),
            };
            match name {
                "min_seq" => {
                    min_seq = Some(value.parse::<Seq>().map_err(|_| {
                        invalid("must be a seq from a 202 (a non-negative integer)")
                    })?);
                }
                "wait" => {
                    wait = value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && (0.0..=MAX_WAIT.as_secs_f64()).contains(s))
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| invalid("must be a number of seconds from 0 to 5"))?;
                }
                // Other parameters (cache busters, say) are ignored, as they
                // always were on this route.
                _ => {}
            }
        }
        let Some(min_seq) = min_seq else {
            return Ok(());
        };
        let mut through = self.progress.through();
        if through < min_seq && self.waiting.fetch_add(1, Ordering::AcqRel) < self.max_waiting {
            through = self.progress.wait_through(min_seq, Instant::now() + wait);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        } else if through < min_seq {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        *caught_up = Some((through >= min_seq, through));
        Ok(())
    }

    /// `GET /products?limit=N&cursor=C`: one page, ids in byte order.
    fn list_products(&self, query: &str) -> Result<Reply, ApiError> {
        let mut limit = DEFAULT_PAGE;
        let mut after = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let invalid = |detail: String| ApiError::InvalidQuery {
                parameter: name.to_owned(),
                detail,
            };
            match name {
                "limit" => {
                    limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            invalid(format!("must be an integer from 1 to {MAX_PAGE}"))
                        })?;
                }
                "cursor" => {
                    after = Some(cursor_decode(value).ok_or_else(|| {
                        invalid(
                            "must be a next_cursor value from a previous page (an even number of hex digits)"
                                .to_owned(),
                        )
                    })?);
                }
                _ => return Err(invalid("is unknown; use limit and cursor".to_owned())),
            }
        }
        let products = self.store.list_after(after.as_deref(), limit);
        let next_cursor = (products.len() == limit)
            .then(|| products.last().map(|p| cursor_encode(&p.product_id)))
            .flatten();
        Ok(Reply::json(
            200,
            &Page {
                products,
                next_cursor,
            },
        ))
    }

    fn metrics_reply(&self) -> Reply {
        let snapshot = Snapshot {
            accepted: self.intake.accepted(),
            applied: self.counters.applied.load(Ordering::Relaxed),
            stale_fields: self.counters.stale_fields.load(Ordering::Relaxed),
            panics: self.counters.panics.load(Ordering::Relaxed),
            queue_depth: self.intake.depth(),
            queue_capacity: self.intake.capacity(),
            workers: self.workers,
            products: self.store.len(),
            waiting_readers: self.waiting.load(Ordering::Relaxed),
            idempotency_window: self.intake.window_len(),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            body_readers: self.body_readers.load(Ordering::Relaxed),
            max_connections: self.max_connections,
        };
        Reply {
            status: 200,
            body: self.metrics.render(&snapshot).into_bytes(),
            kind: ReplyKind::Prometheus,
            etag: None,
        }
    }

    fn post_event(
        &self,
        request: &mut Request,
        body_read: &mut bool,
        request_id: &str,
    ) -> Result<Reply, ApiError> {
        check_content_type(request)?;
        let _slot = self.read_body_slot(request)?;
        let body = read_body(request, self.max_body_bytes, || self.body_timeout())?;
        *body_read = true;
        let update = model::decode_event(&body).map_err(ApiError::Event)?;
        // The count is a lock-free read; the map is only consulted at the limit.
        if self.store.len() >= self.max_products && !self.store.contains(&update.product_id) {
            return Err(ApiError::ProductLimit {
                limit: self.max_products,
            });
        }
        let product_id = update.product_id.clone();
        let has_event_id = update.event_id.is_some();
        let submitted = self.submit(update, request_id.into())?;
        let (status, word) = if submitted.duplicate {
            self.metrics.duplicate();
            (200, "duplicate")
        } else {
            (202, "accepted")
        };
        Ok(Reply::json(
            status,
            &Accepted {
                status: word,
                seq: submitted.seq,
                product_id: &product_id,
                // Only meaningful (and only sent) when the client gave an id.
                duplicate: has_event_id.then_some(submitted.duplicate),
            },
        ))
    }

    fn submit(&self, update: ProductUpdate, request_id: Box<str>) -> Result<Submitted, ApiError> {
        let event_id = update.event_id.clone();
        self.intake.submit(update, request_id).map_err(|e| match e {
            SubmitError::Full { capacity } => ApiError::QueueFull { capacity },
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::IdempotencyConflict { seq } => ApiError::IdempotencyConflict {
                event_id: event_id.map(String::from).unwrap_or_default(),
                seq,
            },
        })
    }

    /// `GET /products/{id}`, with an `ETag` made from the product's last
    /// applied seq; `If-None-Match` with that tag (or `*`) answers 304
    /// without a body, so pollers pay almost nothing while nothing changes.
    fn get_product(&self, raw_id: &str, if_none_match: Option<&str>) -> Result<Reply, ApiError> {
        let id = percent_decode(raw_id)?;
        model::check_product_id(&id).map_err(|reason| ApiError::InvalidPathProductId { reason })?;
        let Some((product, tag)) = self.store.get_with_tag(&id) else {
            return Err(ApiError::ProductNotFound {
                product_id: id.into_owned(),
            });
        };
        let etag = format!("\"{tag}\"");
        let unchanged = if_none_match.is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        });
        let mut reply = if unchanged {
            Reply {
                status: 304,
                body: Vec::new(),
                kind: ReplyKind::Json,
                etag: None,
            }
        } else {
            Reply::json(200, &product)
        };
        reply.etag = Some(etag);
        Ok(reply)
    }
}

/// A successful answer: status and JSON body.
struct Reply {
    status: u16,
    body: Vec<u8>,
    kind: ReplyKind,
    /// For `GET /products/{id}`: the product's entity tag.
    etag: Option<String>,
}

enum ReplyKind {
    Json,
    Prometheus,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        Reply {
            status,
            // Our replies are structs of strings and numbers: cannot fail.
            body: serde_json::to_vec(value).unwrap_or_default(),
            kind: ReplyKind::Json,
            etag: None,
        }
    }
}

/// `/readyz` answers 503 once the queue holds this share of `QUEUE_SIZE`.
pub const HIGH_WATER_PERCENT: usize = 90;

/// The OpenAPI 3.1 description of this API, written by hand and checked
/// against the live service by `tests/openapi.rs`.
const OPENAPI: &str = include_str!("openapi.json");

/// Holds one of the body-reader slots until dropped.
struct SlotGuard<'a>(&'a AtomicUsize);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Longest `wait` of a `min_seq` read (and its default).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// A header from a name and a value built from digits or `true`/`false`.
/// Adds `X-Request-Id`. The id passed `RequestIds`' character check, so it
/// is a valid header value; if it somehow were not, the header is left out.
fn with_request_id(
    response: Response<io::Cursor<Vec<u8>>>,
    request_id: &str,
) -> Response<io::Cursor<Vec<u8>>> {
    match Header::from_bytes(&b"X-Request-Id"[..], request_id.as_bytes()) {
        Ok(id_header) => response.with_header(id_header),
        Err(()) => response,
    }
}

fn header_value(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names are static ASCII and values are digits")
}

/// Products per page of `GET /products` unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 100;
/// Largest `limit`.
pub const MAX_PAGE: usize = 1000;

/// One page of `GET /products`.
#[derive(Serialize)]
struct Page {
    products: Vec<model::Product>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// Cursors are the last id of a page, hex-encoded: opaque, and safe in a
/// URL without any escaping.
fn cursor_encode(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Any even number of hex digits (either case) is a cursor: the bytes mark
/// a place in the id order, whether or not they are an id (see
/// `Store::list_after`). So the OpenAPI pattern `^([0-9A-Fa-f]{2})*$` is
/// the whole rule.
fn cursor_decode(cursor: &str) -> Option<Vec<u8>> {
    if cursor.len() % 2 != 0 {
        return None;
    }
    (0..cursor.len())
        .step_by(2)
        .map(|i| {
            let pair = cursor.get(i..i + 2)?;
            // `from_str_radix` alone would take a sign: "+f" is not hex.
            pair.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| u8::from_str_radix(pair, 16).ok())
                .flatten()
        })
        .collect()
}

/// `{"status":"ok"}` and `{"status":"ready"}`.
#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// The metrics label for a request's path.
fn route_of(url: &str) -> Route {
    let path = url.split_once('?').map_or(url, |(path, _query)| path);
    match path {
        "/events" => Route::Events,
        "/products" => Route::ProductList,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        p if p.starts_with("/products/") => Route::Product,
        _ => Route::Other,
    }
}

/// The `events_rejected_total` reason for an error answered on `/events`.
fn reject_reason(error: &ApiError) -> RejectReason {
    match error {
        ApiError::PayloadTooLarge { .. } => RejectReason::TooLarge,
        ApiError::UnsupportedMediaType { .. } => RejectReason::UnsupportedType,
        ApiError::QueueFull { .. } | ApiError::Busy { .. } => RejectReason::QueueFull,
        ApiError::ShuttingDown => RejectReason::ShuttingDown,
        ApiError::ProductLimit { .. } => RejectReason::ProductLimit,
        _ => RejectReason::Validation,
    }
}

/// The 202 acknowledgement.
#[derive(Serialize)]
struct Accepted<'a> {
    status: &'static str,
    seq: Seq,
    product_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
}

fn method_not_allowed(method: &Method, allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow,
    }
}

fn header<'r>(request: &'r Request, name: &'static str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// True when the client will not send another request on this connection:
/// it said `Connection: close`, or speaks HTTP/1.0 without keep-alive.
/// (tiny_http closes the connection after the response in both cases; we
/// say so in the response.)
fn client_wants_close(request: &Request) -> bool {
    let connection = header(request, "Connection");
    let has = |token: &str| {
        connection.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has("close") || (*request.http_version() == HTTPVersion(1, 0) && !has("keep-alive"))
}

/// `application/json`, with any parameters and in any case, or no
/// Content-Type at all. Anything else is a 415.
fn check_content_type(request: &Request) -> Result<(), ApiError> {
    let Some(value) = header(request, "Content-Type") else {
        return Ok(());
    };
    let media_type = value.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            found: value.to_owned(),
        })
    }
}

/// Whether the request carries a body (a non-zero Content-Length, or a
/// Transfer-Encoding).
fn has_body(request: &Request) -> bool {
    request.body_length().is_some_and(|len| len > 0)
        || header(request, "Transfer-Encoding").is_some()
}

/// Reads the body, never more than `limit` bytes. A declared Content-Length
/// over the limit is refused before anything is read; a chunked body is read
/// to at most `limit + 1` bytes (one more tells "too large"). Never reads past
/// the declared length: for a `Connection: Upgrade` request tiny_http hands
/// over the raw socket, where reading "to the end" would wait for the client
/// to close.
/// A read that times out (`BODY_TIMEOUT` for the whole body, or
/// `SOCKET_TIMEOUT` without a byte) is answered with `timed_out()`.
fn read_body(
    request: &mut Request,
    limit: usize,
    timed_out: impl FnOnce() -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let declared = request.body_length();
    if let Some(len) = declared.filter(|&len| len > limit) {
        return Err(ApiError::PayloadTooLarge {
            limit,
            declared: Some(len),
        });
    }
    let chunked = header(request, "Transfer-Encoding").is_some();
    let to_read = match declared {
        Some(len) => len as u64,
        None if chunked => limit as u64 + 1,
        // Neither: HTTP says there is no body.
        None => 0,
    };
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
    request
        .as_reader()
        .take(to_read)
        .read_to_end(&mut body)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            _ => ApiError::UnreadableBody {
                detail: e.to_string(),
            },
        })?;
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge {
            limit,
            declared: None,
        });
    }
    if declared.is_some_and(|len| body.len() < len) {
        return Err(ApiError::UnreadableBody {
            detail: format!(
                "the connection ended after {} of the {} bytes declared in Content-Length",
                body.len(),
                declared.unwrap_or(0)
            ),
        });
    }
    Ok(body)
}

/// Decodes `%XX` escapes in a path segment. Borrows when there are none.
fn percent_decode(segment: &str) -> Result<Cow<'_, str>, ApiError> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::InvalidPath {
                    detail: format!(
                        "'%' at byte {i} of the product id is not followed by two hex digits"
                    ),
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| ApiError::InvalidPath {
            detail: "the product id decodes to bytes that are not UTF-8".to_owned(),
        })
}

/// The request threads and the flag that tells them a wake-up means "stop".
pub struct HttpThreads {
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl HttpThreads {
    /// Starts `count` request threads named `http-{i}`.
    pub fn spawn(server: &Arc<Server>, api: &Arc<Api>, count: usize) -> io::Result<HttpThreads> {
        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let (thread_server, thread_api) = (Arc::clone(server), Arc::clone(api));
            let thread_stopping = Arc::clone(&stopping);
            let spawned = thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || serve(i, &thread_server, &thread_api, &thread_stopping));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    // Stop the ones already started before reporting.
                    HttpThreads { threads, stopping }.stop(server, api);
                    return Err(e);
                }
            }
        }
        Ok(HttpThreads { threads, stopping })
    }

    /// Wakes each request thread once with tiny_http's `unblock()` (which
    /// queues a marker *behind* requests already parsed, so those are still
    /// answered) and joins them. Returns how many panicked.
    pub fn stop(self, server: &Server, api: &Api) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in &self.threads {
            server.unblock();
        }
        let panicked = self
            .threads
            .into_iter()
            .map(JoinHandle::join)
            .filter(Result::is_err)
            .count();
        // Requests parsed after the markers: answer rather than let
        // tiny_http drop them with a bare 500.
        while let Ok(Some(request)) = server.try_recv() {
            let _ = request.respond(api.shutting_down());
        }
        panicked
    }
}

fn serve(id: usize, server: &Server, api: &Api, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => {
                // A bug in a handler must cost one request, not a thread.
                if panic::catch_unwind(AssertUnwindSafe(|| api.handle(request))).is_err() {
                    log::error!("http-{id}: handler panicked; the client got a 500");
                }
            }
            Err(_) if stopping.load(Ordering::SeqCst) => break,
            Err(e) => {
                // tiny_http's accept thread reports an accept failure once and
                // then stops accepting; existing connections are still served.
                log::error!(
                    "http-{id}: tiny_http reported: {e}; new connections may not be accepted"
                );
            }
        }
    }
    log::debug!("http-{id} exiting");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc").unwrap(), "abc");
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
        assert_eq!(percent_decode("%E2%82%AC").unwrap(), "€");
        assert_eq!(percent_decode("a%2fb").unwrap(), "a/b");
        assert_eq!(percent_decode("a+b").unwrap(), "a+b");
        for bad in ["%", "%4", "%zz", "a%g1", "%ff", "%C3"] {
            assert_eq!(
                percent_decode(bad).unwrap_err().code(),
                "invalid_path",
                "{bad}"
            );
        }
    }
}
