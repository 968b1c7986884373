//! The handlers: what each route answers, translated to and from the
//! service's operations (`service.rs`) and nothing else. [`Handlers`]
//! holds what they share; each fills in the [`Response`] and returns `Ok`,
//! or returns the [`ApiError`] that `answer.rs` renders as problem details.
//!
//! Handlers run on the connection's thread. `POST /events` answers as
//! soon as the service has queued the event (202) or refused it (503): it
//! never waits for a worker. When the service must commit the event first
//! (the durable modes), the answer is deferred and written by the answerer
//! (`answerer.rs`) once the outcome comes back, so that this thread goes on
//! reading the connection's next request. `GET /products/{id}?min_seq=N`
//! may wait, up to `wait` seconds, for the workers; that holds only its own
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::inline::{Request, Response};

use super::answer::{self, Asked};
use super::answerer::{Later, LaterBatch, Replies};
use super::ndjson;
use super::problem::ApiError;
use super::wire::{self, BodyFormat};
use crate::config::Config;
use crate::event::{self, Product};
use crate::service::{Accept, AcceptBatch, Service};
use crate::stats::Stats;
use crate::store::Seq;

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

/// What the handlers share; one per HTTP server, behind an `Arc`.
pub struct Handlers {
    pub(crate) service: Arc<Service>,
    /// The limits of a request (`MAX_BODY_BYTES`, the timeouts).
    pub(crate) config: Config,
    /// Where deferred answers are addressed.
    pub(crate) replies: Replies,
    /// Connections being served (the HTTP server keeps the count).
    pub(crate) open_connections: Arc<AtomicUsize>,
    /// Whether the access log is on. Fixed for the life of the process
    /// (RUST_LOG is read once), so asked once: the access line costs
    /// nothing when it is off.
    pub(crate) access_log: bool,
}

/// How a handler answered.
pub enum Answered {
    /// It filled in the response.
    Now,
    /// The answer is deferred: the answerer writes it, and completes it
    /// (`answer.rs`) there.
    Later,
}

impl Handlers {
    /// The core's counts and the HTTP server's own (connections).
    pub fn stats(&self) -> Stats {
        Stats {
            open_connections: self.open_connections.load(Ordering::Relaxed),
            max_connections: self.config.max_connections,
            ..self.service.stats()
        }
    }

    /// `POST /events`: check, read and decode the body, hand the event to
    /// the service. An event that must be committed first is posted with a
    /// deferred answer (see the module docs).
    pub fn post_event(
        &self,
        request: &mut Request<'_>,
        asked: &Asked<'_>,
        response: &mut Response,
    ) -> Result<Answered, ApiError> {
        if wire::check_content_type(request)? == BodyFormat::Ndjson {
            return self.post_batch(request, asked, response);
        }
        let body = wire::read_body(request, &self.config)?;
        let update = event::decode_event(body).map_err(ApiError::Event)?;
        let product_id = update.product_id.clone();
        let event_id = update.event_id.clone();
        let request_id = asked.request_id.to_owned();
        match self.service.accept(update, request_id) {
            Accept::Done(outcome) => {
                let metrics = self.service.metrics();
                answer::event_outcome(
                    outcome,
                    &product_id,
                    event_id.as_deref(),
                    metrics,
                    response,
                )?;
                Ok(Answered::Now)
            }
            Accept::Commit(commit) => {
                let later = Later {
                    deferred: request.defer(),
                    product_id,
                    event_id,
                    request_id: commit.request_id().clone(),
                    url: asked.url.into(),
                    started: asked.started,
                };
                commit.post(self.replies.reply_to(later));
                Ok(Answered::Later)
            }
        }
    }

    /// `POST /events` with NDJSON: a batch request, taken all or none
    /// (`ndjson.rs`, `Service::accept_batch`); in the durable modes its
    /// answer waits for its one commit, as a single event's does.
    fn post_batch(
        &self,
        request: &mut Request<'_>,
        asked: &Asked<'_>,
        response: &mut Response,
    ) -> Result<Answered, ApiError> {
        let config = &self.config;
        let body =
            wire::read_body_within(request, config, config.max_batch_bytes, "MAX_BATCH_BYTES")?;
        let ndjson::Batch { updates, lines } =
            ndjson::decode(body, config.max_batch_events, config.queue_size)?;
        match self
            .service
            .accept_batch(updates, asked.request_id.to_owned())
        {
            AcceptBatch::Done(outcomes) => {
                answer::batch_outcome(outcomes, &lines, self.service.metrics(), response)?;
                Ok(Answered::Now)
            }
            AcceptBatch::Commit(commit) => {
                let later = LaterBatch {
                    deferred: request.defer(),
                    lines,
                    request_id: asked.request_id.to_owned(),
                    url: asked.url.into(),
                    started: asked.started,
                };
                commit.post(self.replies.batch_reply_to(later));
                Ok(Answered::Later)
            }
        }
    }

    /// `GET /products/{id}`: the product, with an `ETag`; `If-None-Match`
    /// with that tag (or `*`) answers 304 without a body, so pollers pay
    /// almost nothing while nothing changes. With `min_seq`, first waits
    /// for the watermark (see [`Handlers::wait_for_min_seq`]); its headers
    /// stay on a 404 too.
    pub fn get_product(
        &self,
        raw_id: &str,
        query: &str,
        request: &Request<'_>,
        response: &mut Response,
    ) -> Result<(), ApiError> {
        let id = wire::percent_decode(raw_id)?;
        event::check_product_id(&id).map_err(|reason| ApiError::InvalidPathProductId { reason })?;
        self.wait_for_min_seq(query, response)?;
        let Some(product) = self.service.product(&id) else {
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
            let product = Product {
                product_id: &id,
                price: product.price,
                stock: product.stock,
            };
            answer::json(response, 200, &product);
        }
        Ok(())
    }

    /// Read-your-writes: with `min_seq=N` (and optionally `wait=S`, seconds,
    /// at most [`MAX_WAIT`]), waits until every event up to seq N is
    /// applied or the wait runs out, and says which in `X-Caught-Up` and
    /// `X-Applied-Through`. Other query parameters are ignored.
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
        let through = self.service.wait_applied(min_seq, Instant::now() + wait);
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
        // One more than asked: a cursor only if there is a next page.
        let mut page = self.service.products_after(after.as_deref(), limit + 1);
        let more = page.len() > limit;
        page.truncate(limit);
        let next_cursor = more
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
        answer::json(
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
        answer::json(response, 200, &Status { status: "ok" });
        Ok(())
    }

    /// `/readyz`: ready unless draining, storage failing, or the queue
    /// above its high-water mark.
    pub fn readyz(&self, response: &mut Response) -> Result<(), ApiError> {
        self.service.readiness().map_err(ApiError::NotReady)?;
        let broker = self.service.metrics().broker.consumers_connected();
        let ready = Ready {
            status: "ready",
            amqp_consumers: broker.map(|(consumers, _)| consumers),
            amqp_consumers_connected: broker.map(|(_, connected)| connected),
        };
        answer::json(response, 200, &ready);
        Ok(())
    }

    /// `/metrics`: the Prometheus exposition.
    pub fn metrics(&self, response: &mut Response) -> Result<(), ApiError> {
        response.set_status(200);
        response.add_header("Content-Type", PROMETHEUS);
        let text = self.service.metrics().render(&self.stats());
        response.set_body(text.as_bytes());
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

/// One page of `GET /products`.
#[derive(Serialize)]
struct Page<'a> {
    products: Vec<Product<'a>>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `/readyz`'s 200: `{"status":"ready"}`, and with `AMQP_URL` how many
/// of the RabbitMQ shard consumers are connected (the HTTP side is ready
/// either way).
#[derive(Serialize)]
struct Ready {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_consumers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_consumers_connected: Option<usize>,
}

/// `{"status":"ok"}`.
#[derive(Serialize)]
struct Status {
    status: &'static str,
}
