//! What every answer gets before it is written, whoever writes it: the
//! connection's thread (`server.rs`, for almost every request) or the
//! answerer (`answerer.rs`, for a `POST /events` that waited for its
//! commit). An error becomes problem details; every answer gets its
//! `X-Request-Id`, `Connection: close` while the service drains, its count
//! and latency in `/metrics`, and its access line. And the body of an
//! event's outcome, which both write.

use std::time::Instant;

use serde::Serialize;
use tiny_http::inline::Response;

use super::ndjson::LineError;
use super::problem::ApiError;
use super::route::Route;
use crate::intake::{Accepted, Outcome, Refusal};
use crate::metrics::{Metrics, RejectReason};
use crate::request_id::RequestId;
use crate::service::NotReady;
use crate::store::Seq;

const JSON: &str = "application/json";

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

/// What every answer needs of the service, read when it is written.
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
    let code = result.as_ref().err().map(ApiError::code);
    service
        .metrics
        .request(asked.route.label(), asked.method, status, took);
    if service.access_log {
        // One line per request, under its own target so it can be turned
        // off on its own (RUST_LOG=info,access=off).
        log::info!(
            target: "access",
            "{} {} {status} {}B {}us request_id={request_id}{}{}",
            asked.method,
            asked.url,
            response.body().len(),
            took.as_micros(),
            if code.is_some() { " code=" } else { "" },
            code.unwrap_or_default()
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
        ApiError::TokenRequired => {
            response.add_header(
                "WWW-Authenticate",
                "Bearer realm=\"product-update-service\"",
            );
        }
        ApiError::TokenInvalid => {
            response.add_header(
                "WWW-Authenticate",
                "Bearer realm=\"product-update-service\", error=\"invalid_token\"",
            );
        }
        ApiError::TokenReadOnly => {
            response.add_header(
                "WWW-Authenticate",
                "Bearer realm=\"product-update-service\", error=\"insufficient_scope\"",
            );
        }
        _ => {}
    }
    let body = response.body_mut();
    body.clear();
    error.write_json(&request_id, body);
    body.push(b'\n');
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

/// Fills in the answer to an event: 202 (or, for a retried `event_id`,
/// 200 `duplicate`), or the refusal as an error.
pub fn event_outcome(
    outcome: Outcome,
    product_id: &str,
    event_id: Option<&str>,
    metrics: &Metrics,
    response: &mut Response,
) -> Result<(), ApiError> {
    let accepted = outcome.map_err(|refusal| ApiError::refused(refusal, event_id))?;
    let (status, word) = if accepted.duplicate {
        metrics.duplicate();
        (200, "duplicate")
    } else {
        (202, "accepted")
    };
    let body = Acknowledged {
        status: word,
        seq: accepted.seq,
        product_id,
        // Only meaningful (and only sent) when the client gave an id.
        duplicate: event_id.is_some().then_some(accepted.duplicate),
    };
    json(response, status, &body);
    Ok(())
}

/// Fills in the answer to a batch request (NDJSON), given each event's
/// outcome and line: 202 with the new events' seqs (consecutive) and the
/// duplicates; 200 `duplicate` if every event was one; else the refusal of
/// the whole batch (409 naming the conflicting lines, or the one refusal
/// every event got).
pub fn batch_outcome(
    outcomes: Vec<Outcome>,
    lines: &[usize],
    metrics: &Metrics,
    response: &mut Response,
) -> Result<(), ApiError> {
    let mut conflicts = Vec::new();
    let mut refusal = None;
    let mut answer = BatchAcknowledged {
        status: "accepted",
        count: 0,
        first_seq: None,
        last_seq: None,
        duplicates: Vec::new(),
    };
    for (outcome, &line) in outcomes.iter().zip(lines) {
        match *outcome {
            Ok(Accepted {
                seq,
                duplicate: false,
            }) => {
                answer.count += 1;
                answer.first_seq.get_or_insert(seq);
                answer.last_seq = Some(seq);
            }
            Ok(Accepted {
                seq,
                duplicate: true,
            }) => answer.duplicates.push(LineSeq { line, seq }),
            Err(Refusal::IdempotencyConflict { seq }) => conflicts.push(LineError {
                line,
                code: "idempotency_conflict",
                field: Some("event_id".to_owned()),
                detail: format!("the event_id was already used for a different event (seq {seq})"),
                seq: Some(seq),
            }),
            Err(Refusal::ConflictInCommit) => conflicts.push(LineError {
                line,
                code: "idempotency_conflict",
                field: Some("event_id".to_owned()),
                detail: Refusal::ConflictInCommit.to_string(),
                seq: None,
            }),
            Err(Refusal::WithItsBatch) => {}
            Err(other) => refusal = refusal.or(Some(other)),
        }
    }
    if !conflicts.is_empty() {
        return Err(ApiError::BatchConflict { errors: conflicts });
    }
    if let Some(refusal) = refusal {
        return Err(ApiError::refused(refusal, None));
    }
    metrics.batch(answer.count as u64, answer.duplicates.len() as u64);
    let status = if answer.count == 0 {
        answer.status = "duplicate";
        200
    } else {
        202
    };
    json(response, status, &answer);
    Ok(())
}

/// The answer to a batch request.
#[derive(Serialize)]
struct BatchAcknowledged {
    status: &'static str,
    /// New events taken, with seqs `first_seq..=last_seq`.
    count: usize,
    first_seq: Option<Seq>,
    last_seq: Option<Seq>,
    /// Events whose `event_id` was taken before, with the seq it was
    /// taken with: not applied again.
    duplicates: Vec<LineSeq>,
}

#[derive(Serialize)]
struct LineSeq {
    line: usize,
    seq: Seq,
}

/// A JSON answer: status, content type, body serialized in place.
pub fn json<T: Serialize>(response: &mut Response, status: u16, value: &T) {
    response.set_status(status);
    response.add_header("Content-Type", JSON);
    // Our answers are structs of strings and numbers: cannot fail.
    let _ = serde_json::to_writer(response.body_mut(), value);
    // A line, so that a shell prompt after `curl` starts on its own line.
    response.body_mut().push(b'\n');
}

/// The 202 acknowledgement.
#[derive(Serialize)]
struct Acknowledged<'a> {
    status: &'static str,
    seq: Seq,
    product_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
}
