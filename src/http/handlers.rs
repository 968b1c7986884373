//! The handlers: what each route answers. [`Api`] holds what they share
//! (the intake to queue events, the store to read products, the watermark
//! for `min_seq` reads, the counts for `/metrics`); each handler fills in
//! the [`Response`] and returns `Ok`, or returns the [`ApiError`] that
//! `answer.rs` renders as problem details.
//!
//! Handlers run on the connection's thread. `POST /events` answers as
//! soon as the event is in the queue (202) or the queue refuses it (503):
//! it never waits for a worker. In a durable mode the 202 waits for the
//! event's commit instead: the answer is deferred (`Later`), and the
//! committer writes it, so that the connection's thread is woken once per
//! request (by the next one) rather than twice. `GET /products/{id}?min_seq=N` may wait,
//! up to `wait` seconds, for the workers; that holds only its own
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::inline::{Deferred, Request, Response};

use super::answer::{self, Asked, Finishing};
use super::route::Route;
use super::wire;
use crate::config::Config;
use crate::durable::Durable;
use crate::metrics::Metrics;
use crate::model::{self, Product};
use crate::problem::{ApiError, NotReady};
use crate::progress::Progress;
use crate::queue::{Intake, SubmitError, Submitted};
use crate::request_id::OwnedRequestId;
use crate::stats::Stats;
use crate::store::{Seq, Store};
use crate::worker::WorkerCounters;

/// `/readyz` answers 503 once the queue holds this share of `QUEUE_SIZE`.
pub const HIGH_WATER_PERCENT: usize = 90;
/// Longest `wait` of a `min_seq` read (and its default).
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Products per page of `GET /products` unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 100;
/// Largest `limit`.
pub const MAX_PAGE: usize = 1000;

/// The OpenAPI 3.1 description of this API, written by hand and checked
/// against the live service by `tests/openapi.rs` and schemathesis.
const OPENAPI: &str = include_str!("../openapi.json");

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers share; one per service, behind an `Arc`.
pub struct Api {
    pub(crate) intake: Arc<Intake>,
    /// Durable mode (`DATA_DIR`): the committer; `None` in memory mode.
    pub(crate) durable: Option<Arc<Durable>>,
    pub(crate) store: Store,
    pub(crate) progress: Arc<Progress>,
    pub(crate) counters: Arc<WorkerCounters>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Config,
    /// Connections being served (the HTTP server keeps the count).
    pub(crate) open_connections: Arc<AtomicUsize>,
    /// Set when shutdown begins: `/readyz` says so, every answer asks the
    /// client to close.
    pub(crate) draining: AtomicBool,
    /// Whether the access log is on. Fixed for the life of the process
    /// (RUST_LOG is read once), so asked once: the access line costs
    /// nothing when it is off.
    pub(crate) access_log: bool,
}

impl Api {
    /// Shutdown step 1: close the intake (with a shared database, first stop
    /// taking events and let the tailer queue this instance's last ones, by
    /// `deadline`). From here on `POST /events` answers 503
    /// `shutting_down`, `/readyz` 503 `draining`, and every answer says
    /// `Connection: close`. Returns how many events were accepted in all.
    pub fn begin_drain(&self, deadline: std::time::Instant) -> u64 {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(durable) = &self.durable {
            durable.stop_accepting(deadline);
        }
        let queued = self.intake.close();
        self.durable
            .as_ref()
            .and_then(|d| d.accepted())
            .unwrap_or(queued)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// What `answer::complete` needs of the service, read now.
    pub fn finishing(&self) -> Finishing<'_> {
        Finishing {
            metrics: &self.metrics,
            draining: self.is_draining(),
            access_log: self.access_log,
        }
    }

    /// Every count, read now from its owner.
    pub fn stats(&self) -> Stats {
        Stats {
            accepted: self
                .durable
                .as_ref()
                .and_then(|d| d.accepted())
                .unwrap_or_else(|| self.intake.accepted()),
            applied: self.counters.applied.load(Ordering::Relaxed),
            panics: self.counters.panics.load(Ordering::Relaxed),
            stale_fields: self.counters.stale_fields.load(Ordering::Relaxed),
            queue_depth: self.intake.depth(),
            queue_capacity: self.intake.capacity(),
            products: self.store.len(),
            workers: self.config.workers,
            waiting_readers: self.progress.waiting(),
            idempotency_window: self.intake.window_len(),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            max_connections: self.config.max_connections,
            storage_unavailable: self
                .durable
                .as_ref()
                .map(|durable| durable.unavailable().is_some()),
        }
    }

    /// `POST /events`: check, read and decode the body, queue the event.
    /// In durable mode the answer waits for the commit: it is deferred,
    /// and the committer that committed the event writes it (see
    /// [`Later`]), so that this thread goes on to read the connection's
    /// next request instead of sleeping until then.
    pub fn post_event(
        api: &Arc<Api>,
        request: &mut Request<'_>,
        asked: &Asked<'_>,
        response: &mut Response,
    ) -> Result<Answered, ApiError> {
        wire::check_content_type(request)?;
        let body = wire::read_body(request, &api.config)?;
        let update = model::decode_event(body).map_err(ApiError::Event)?;
        // The count is a lock-free read; the map is only consulted at the limit.
        let max_products = api.config.max_products;
        if api.store.len() >= max_products && !api.store.contains(&update.product_id) {
            return Err(ApiError::ProductLimit {
                limit: max_products,
            });
        }
        let product_id = update.product_id.clone();
        let event_id = update.event_id.clone();
        let request_id = asked.request_id.to_owned();
        let Some(durable) = &api.durable else {
            let submitted = api
                .intake
                .submit(update, request_id)
                .map_err(|e| refused(e, event_id.as_deref()))?;
            api.accepted(&submitted, &product_id, event_id.is_some(), response);
            return Ok(Answered::Now);
        };
        let later = Later {
            api: Arc::clone(api),
            deferred: request.defer(),
            product_id,
            event_id,
            request_id: request_id.clone(),
            url: asked.url.into(),
            started: asked.started,
        };
        durable.submit_with_reply(
            update,
            request_id,
            Box::new(move |answer| later.answer(answer)),
        );
        Ok(Answered::Later)
    }

    /// Fills in the 202 (or, for a duplicate `event_id`, the 200).
    fn accepted(
        &self,
        submitted: &Submitted,
        product_id: &str,
        with_id: bool,
        response: &mut Response,
    ) {
        let (status, word) = if submitted.duplicate {
            self.metrics.duplicate();
            (200, "duplicate")
        } else {
            (202, "accepted")
        };
        reply_json(
            response,
            status,
            &Accepted {
                status: word,
                seq: submitted.seq,
                product_id,
                // Only meaningful (and only sent) when the client gave an id.
                duplicate: with_id.then_some(submitted.duplicate),
            },
        );
    }

    /// `GET /products/{id}`: the product, with an `ETag`; `If-None-Match`
    /// with that tag (or `*`) answers 304 without a body, so pollers pay
    /// almost nothing while nothing changes. With `min_seq`, first waits
    /// for the watermark (see [`Api::wait_for_min_seq`]); its headers stay
    /// on a 404 too.
    pub fn get_product(
        &self,
        raw_id: &str,
        query: &str,
        request: &Request<'_>,
        response: &mut Response,
    ) -> Result<(), ApiError> {
        let id = wire::percent_decode(raw_id)?;
        model::check_product_id(&id).map_err(|reason| ApiError::InvalidPathProductId { reason })?;
        self.wait_for_min_seq(query, response)?;
        let Some(product) = self.store.get(&id) else {
            return Err(ApiError::ProductNotFound {
                product_id: id.into_owned(),
            });
        };
        let tag = product.tag;
        let unchanged = wire::if_none_match_names(request, &tag);
        response.add_header_fmt("ETag", format_args!("\"{tag}\""));
        if unchanged {
            response.set_status(304);
        } else {
            reply_json(
                response,
                200,
                &Product {
                    product_id: &id,
                    price: product.price,
                    stock: product.stock,
                },
            );
        }
        Ok(())
    }

    /// Read-your-writes: with `min_seq=N` (and optionally `wait=S`, seconds,
    /// at most [`MAX_WAIT`]), blocks until every event up to seq N is
    /// applied or the wait runs out, and says which in `X-Caught-Up` and
    /// `X-Applied-Through`. No polling: the thread parks until the
    /// watermark reaches N (see `progress.rs`). Other query parameters are
    /// ignored.
    fn wait_for_min_seq(&self, query: &str, response: &mut Response) -> Result<(), ApiError> {
        let mut min_seq = None;
        let mut wait = MAX_WAIT;
        for (name, value) in wire::query_pairs(query) {
            match name {
                "min_seq" => {
                    min_seq = Some(value.parse::<Seq>().map_err(|_| {
                        wire::invalid_query(
                            name,
                            "must be a seq from a 202 (a non-negative integer)",
                        )
                    })?);
                }
                "wait" => {
                    wait = value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && (0.0..=MAX_WAIT.as_secs_f64()).contains(s))
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| {
                            wire::invalid_query(name, "must be a number of seconds from 0 to 5")
                        })?;
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
        if through < min_seq {
            through = self.progress.wait_through(min_seq, Instant::now() + wait);
        }
        let caught_up = if through >= min_seq { "true" } else { "false" };
        response.add_header("X-Caught-Up", caught_up);
        response.add_header_fmt("X-Applied-Through", format_args!("{through}"));
        Ok(())
    }

    /// `GET /products?limit=N&cursor=C`: one page, ids in byte order.
    pub fn list_products(&self, query: &str, response: &mut Response) -> Result<(), ApiError> {
        let mut limit = DEFAULT_PAGE;
        let mut after = None;
        for (name, value) in wire::query_pairs(query) {
            match name {
                "limit" => {
                    limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            wire::invalid_query(
                                name,
                                format!("must be an integer from 1 to {MAX_PAGE}"),
                            )
                        })?;
                }
                "cursor" => {
                    after = Some(wire::cursor_decode(value).ok_or_else(|| {
                        wire::invalid_query(
                            name,
                            "must be a next_cursor value from a previous page (an even number of hex digits)",
                        )
                    })?);
                }
                _ => {
                    return Err(wire::invalid_query(
                        name,
                        "is unknown; use limit and cursor",
                    ));
                }
            }
        }
        let page = self.store.list_after(after.as_deref(), limit);
        let next_cursor = (page.len() == limit)
            .then(|| page.last().map(|(id, _)| wire::cursor_encode(id)))
            .flatten();
        let products: Vec<Product<'_>> = page
            .iter()
            .map(|(id, state)| Product {
                product_id: id,
                price: state.price.clone(),
                stock: state.stock,
            })
            .collect();
        reply_json(
            response,
            200,
            &Page {
                products,
                next_cursor,
            },
        );
        Ok(())
    }

    /// `/healthz`: the process can answer.
    pub fn healthz(&self, response: &mut Response) -> Result<(), ApiError> {
        reply_json(response, 200, &Status { status: "ok" });
        Ok(())
    }

    /// `/readyz`: ready unless draining or the queue is above its high-water
    /// mark ([`HIGH_WATER_PERCENT`] of `QUEUE_SIZE`).
    pub fn readyz(&self, response: &mut Response) -> Result<(), ApiError> {
        if self.is_draining() {
            return Err(ApiError::NotReady(NotReady::Draining));
        }
        if let Some(detail) = self.durable.as_ref().and_then(|d| d.unavailable()) {
            return Err(ApiError::NotReady(NotReady::StorageUnavailable { detail }));
        }
        let (depth, capacity) = (self.intake.depth(), self.intake.capacity());
        if depth * 100 >= capacity * HIGH_WATER_PERCENT {
            return Err(ApiError::NotReady(NotReady::QueueAboveHighWater {
                depth,
                capacity,
            }));
        }
        reply_json(response, 200, &Status { status: "ready" });
        Ok(())
    }

    /// `/metrics`: the Prometheus exposition.
    pub fn metrics(&self, response: &mut Response) -> Result<(), ApiError> {
        response.set_status(200);
        response.add_header("Content-Type", PROMETHEUS);
        response.set_body(self.metrics.render(&self.stats()).as_bytes());
        Ok(())
    }

    /// `/openapi.json`: the document.
    pub fn openapi(&self, response: &mut Response) -> Result<(), ApiError> {
        response.set_status(200);
        response.add_header("Content-Type", JSON);
        response.set_body(OPENAPI.as_bytes());
        Ok(())
    }
}

/// How a handler answered.
pub enum Answered {
    /// It filled in the response.
    Now,
    /// The answer is deferred: another thread writes it, and completes it
    /// (`answer.rs`) there.
    Later,
}

/// A `POST /events` whose answer waits for its commit: what the answer
/// needs, carried to the committer in the event's reply.
struct Later {
    api: Arc<Api>,
    deferred: Deferred,
    product_id: Box<str>,
    event_id: Option<Box<str>>,
    request_id: OwnedRequestId,
    url: Box<str>,
    started: Instant,
}

impl Later {
    /// On the committer's thread: the same answer the connection's thread
    /// would have written, written from here (the fork never blocks on the
    /// client: see `tiny_http::inline::Deferred`).
    fn answer(self, answer: crate::durable::Answer) {
        let Later {
            api,
            deferred,
            product_id,
            event_id,
            request_id,
            url,
            started,
        } = self;
        deferred.answer(|response| {
            let result = answer
                .map(|submitted| {
                    api.accepted(&submitted, &product_id, event_id.is_some(), response)
                })
                .map_err(|e| refused(e, event_id.as_deref()));
            let asked = Asked {
                route: Route::PostEvent,
                method: "POST",
                url: &url,
                request_id: request_id.borrow(),
                started,
            };
            answer::complete(api.finishing(), &asked, result, response);
        });
    }
}

/// The problem a refused event is answered with.
fn refused(error: SubmitError, event_id: Option<&str>) -> ApiError {
    match error {
        SubmitError::Full { capacity } => ApiError::QueueFull { capacity },
        SubmitError::ShuttingDown => ApiError::ShuttingDown,
        SubmitError::StorageUnavailable => ApiError::StorageUnavailable,
        SubmitError::IdempotencyConflict { seq } => ApiError::IdempotencyConflict {
            event_id: event_id.unwrap_or_default().to_owned(),
            seq,
        },
    }
}

/// A JSON answer: status, content type, body serialized in place.
fn reply_json<T: Serialize>(response: &mut Response, status: u16, value: &T) {
    response.set_status(status);
    response.add_header("Content-Type", JSON);
    // Our answers are structs of strings and numbers: cannot fail.
    let _ = serde_json::to_writer(response.body_mut(), value);
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

/// One page of `GET /products`.
#[derive(Serialize)]
struct Page<'a> {
    products: Vec<Product<'a>>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `{"status":"ok"}` and `{"status":"ready"}`.
#[derive(Serialize)]
struct Status {
    status: &'static str,
}
