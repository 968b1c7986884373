//! What every answer gets before it is written, whoever writes it: the
//! connection's thread (`server.rs`, for almost every request) or the
//! thread that had the answer (a durable mode's committer, for
//! `POST /events`; see `handlers.rs`). An error becomes problem details;
//! every answer gets its `X-Request-Id`, `Connection: close` while the
//! service drains, its count and latency in `/metrics`, and its access
//! line.

use std::time::Instant;

use tiny_http::inline::Response;

use super::route::Route;
use crate::metrics::{Metrics, RejectReason};
use crate::problem::{ApiError, NotReady};
use crate::request_id::RequestId;

/// The request an answer is for, as its epilogue needs it.
pub struct Asked<'a> {
    pub route: Route<'a>,
    pub method: &'a str,
    /// The request target, for the log lines.
    pub url: &'a str,
    pub request_id: RequestId<'a>,
    /// When its head was read: the latency counts from here.
    pub started: Instant,
}

/// What every answer needs of the service (`Api::finishing`).
pub struct Finishing<'a> {
    /// Where the answer is counted.
    pub metrics: &'a Metrics,
    /// Shutdown has begun: the client is asked to close.
    pub draining: bool,
    /// Whether the access line is written.
    pub access_log: bool,
}

/// Finishes `response` (see the module docs): `result` is the handler's.
pub fn complete(
    service: Finishing<'_>,
    asked: &Asked<'_>,
    result: Result<(), ApiError>,
    response: &mut Response,
) {
    let request_id = asked.request_id;
    if let Err(error) = &result {
        log::debug!(
            "{} {} -> {} {}: {error} request_id={request_id}",
            asked.method,
            asked.url,
            error.status(),
            error.code()
        );
        if asked.route == Route::PostEvent {
            service.metrics.reject(reject_reason(error));
        }
        // The one refusal code a handler can answer too: a body is read
        // by the handler, so its timeout is noticed there.
        if let ApiError::BodyTimeout { .. } = error {
            service.metrics.http_rejected(error.code());
        }
        problem(error, request_id, response);
    }
    response.add_header("X-Request-Id", request_id.as_str(&mut [0; 25]));
    if service.draining {
        // Keep-alive clients should move to another instance.
        response.close_after();
    }
    let took = asked.started.elapsed();
    let status = response.status();
    service
        .metrics
        .request(asked.route.label(), asked.method, status, took);
    if service.access_log {
        // One line per request, under its own target so it can be turned
        // off on its own (RUST_LOG=info,access=off).
        log::info!(
            target: "access",
            "{} {} {status} {}B {}us request_id={request_id}",
            asked.method,
            asked.url,
            response.body().len(),
            took.as_micros()
        );
    }
}

/// Renders `error` as problem details, with the headers its status calls
/// for (`Retry-After`, `Allow`). Headers a handler added before it failed
/// stay: `X-Caught-Up` on a 404 after a `min_seq` wait is meant. (Handlers
/// add their success headers only once they cannot fail.)
pub fn problem(error: &ApiError, request_id: RequestId<'_>, response: &mut Response) {
    response.set_status(error.status());
    response.add_header("Content-Type", "application/problem+json");
    match error {
        ApiError::QueueFull { .. }
        | ApiError::TooManyConnections { .. }
        | ApiError::StorageUnavailable
        | ApiError::NotReady(NotReady::StorageUnavailable { .. }) => {
            response.add_header("Retry-After", "1");
        }
        ApiError::MethodNotAllowed { allow, .. } => {
            response.add_header("Allow", allow);
        }
        _ => {}
    }
    let body = response.body_mut();
    body.clear();
    error.write_json(&request_id, body);
}

/// The `events_rejected_total` reason for an error answered on `/events`.
fn reject_reason(error: &ApiError) -> RejectReason {
    match error {
        ApiError::PayloadTooLarge { .. } => RejectReason::TooLarge,
        ApiError::UnsupportedMediaType { .. } => RejectReason::UnsupportedType,
        ApiError::QueueFull { .. } => RejectReason::QueueFull,
        ApiError::ShuttingDown => RejectReason::ShuttingDown,
        ApiError::StorageUnavailable => RejectReason::StorageUnavailable,
        ApiError::ProductLimit { .. } => RejectReason::ProductLimit,
        _ => RejectReason::Validation,
    }
}
