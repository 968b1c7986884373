//! Every HTTP error the service can answer, and its RFC 9457 body.
//!
//! An [`ApiError`] knows its status, a stable machine `code`, a short title
//! and a detail sentence naming the field or limit involved. The body is
//! always `application/problem+json`:
//!
//! ```json
//! {"type":"urn:product-update-service:problem:invalid_price","title":"Invalid field value",
//!  "status":400,"detail":"field \"price\" must not be negative, got -1","code":"invalid_price",
//!  "field":"price"}
//! ```
//!
//! The codes are part of the API: clients may branch on them, so they never
//! change meaning. The README lists them all.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::ndjson::LineError;
use crate::event::EventError;
use crate::intake::Refusal;
use crate::service::NotReady;

/// One HTTP error answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// The event body broke a rule (400).
    Event(EventError),
    /// The body could not be read: the client closed early or sent a broken
    /// chunked encoding (400).
    UnreadableBody { detail: String },
    /// The body is larger than `setting` (`MAX_BODY_BYTES`, or
    /// `MAX_BATCH_BYTES` for NDJSON) allows (413). `declared` is the
    /// Content-Length, when the client sent one.
    PayloadTooLarge {
        limit: usize,
        declared: Option<usize>,
        setting: &'static str,
    },
    /// An NDJSON body with no event (400).
    EmptyBatch,
    /// An NDJSON body with more events than `setting` allows: the
    /// request's own limit, or the queue's, which a batch could never fit
    /// in whole (400: the request, not its size, is at fault).
    TooManyEvents {
        count: usize,
        limit: usize,
        setting: &'static str,
    },
    /// Lines of an NDJSON body break a rule (`failing` of `count`; the
    /// first of them listed); nothing was queued (400).
    InvalidBatch {
        errors: Vec<LineError>,
        failing: usize,
        count: usize,
    },
    /// Lines of an NDJSON body reuse an `event_id` for a different event;
    /// nothing was queued (409).
    BatchConflict { errors: Vec<LineError> },
    /// Content-Type is present and is not `application/json` (415).
    UnsupportedMediaType { found: String },
    /// The queue is full (503 with `Retry-After: 1`).
    QueueFull { capacity: usize },
    /// Shutdown has begun (503 with `Connection: close`).
    ShuttingDown,
    /// Durable mode: the event could not be committed, or (async mode)
    /// writes are failing; nothing was acknowledged (503 with
    /// `Retry-After: 1`).
    StorageUnavailable,
    /// No route for this path (404).
    NotFound { path: String },
    /// No event for this product has been applied (404).
    ProductNotFound { product_id: String },
    /// The path's percent-encoding is broken or decodes to invalid UTF-8 (400).
    InvalidPath { detail: String },
    /// The product id in the path can never be valid (400).
    InvalidPathProductId { reason: String },
    /// The path exists but not for this method (405 with `Allow`).
    MethodNotAllowed { method: String, allow: &'static str },
    /// `/readyz`: the service should not get new traffic (503).
    NotReady(NotReady),
    /// A query parameter of `GET /products` is unknown or invalid (400).
    InvalidQuery { parameter: String, detail: String },
    /// The `event_id` was used within the window for a different event (409).
    IdempotencyConflict { event_id: String, seq: u64 },
    /// The store holds `MAX_PRODUCTS` products and this event is for a new
    /// one (507).
    ProductLimit { limit: usize },
    /// The request line or a header line is not HTTP (400; tiny_http
    /// answers it and closes the connection, as the ones below).
    MalformedRequest { detail: &'static str },
    /// `Content-Length` is not one decimal number (400).
    InvalidContentLength,
    /// The request head did not arrive within `HEADER_TIMEOUT` (408).
    HeaderTimeout { limit: Duration },
    /// The body did not arrive within `BODY_TIMEOUT`, or stalled for
    /// `SOCKET_TIMEOUT` (408).
    BodyTimeout { limit: Duration, stall: Duration },
    /// An `Expect` header other than `100-continue` (417).
    ExpectationFailed,
    /// The request head is over `MAX_HEADER_BYTES` (431).
    HeaderTooLarge { limit: usize },
    /// An HTTP version above 1.1 (505).
    HttpVersionNotSupported,
    /// An HTTP/1.1 request without `Host`, or one with two or an invalid
    /// one (400).
    InvalidHost,
    /// A transfer coding other than chunked (501).
    UnsupportedTransferEncoding,
    /// `MAX_CONNECTIONS` connections are open already and none is idle, or
    /// the client's address holds `MAX_CONNECTIONS_PER_CLIENT` (503 with
    /// `Retry-After: 1`; answered by the thread that accepted it).
    TooManyConnections { limit: usize, per_client: usize },
    /// API tokens are configured and the request carries none (401).
    TokenRequired,
    /// The request's bearer token is not one of the configured ones (401).
    TokenInvalid,
    /// The request's token may only read (403).
    TokenReadOnly,
}

/// The problem's `reason` member of a `/readyz` 503.
fn reason(not_ready: &NotReady) -> &'static str {
    match not_ready {
        NotReady::Draining => "draining",
        NotReady::QueueAboveHighWater { .. } => "queue_above_high_water",
        NotReady::StorageUnavailable { .. } => "storage_unavailable",
    }
}

impl ApiError {
    /// The problem an event refused by the service is answered with.
    pub fn refused(refusal: Refusal, event_id: Option<&str>) -> ApiError {
        match refusal {
            Refusal::QueueFull { capacity } => ApiError::QueueFull { capacity },
            Refusal::ShuttingDown => ApiError::ShuttingDown,
            Refusal::StorageUnavailable => ApiError::StorageUnavailable,
            Refusal::ProductLimit { limit } => ApiError::ProductLimit { limit },
            Refusal::IdempotencyConflict { seq } => ApiError::IdempotencyConflict {
                event_id: event_id.unwrap_or_default().to_owned(),
                seq,
            },
            // Only a batch request's events are refused with their batch,
            // and a batch is answered as one (`answer::batch_outcome`).
            Refusal::WithItsBatch | Refusal::ConflictInCommit => {
                ApiError::BatchConflict { errors: Vec::new() }
            }
        }
    }
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Event(_)
            | ApiError::UnreadableBody { .. }
            | ApiError::InvalidPath { .. }
            | ApiError::InvalidPathProductId { .. }
            | ApiError::InvalidQuery { .. }
            | ApiError::MalformedRequest { .. }
            | ApiError::InvalidHost
            | ApiError::InvalidContentLength => 400,
            ApiError::TokenRequired | ApiError::TokenInvalid => 401,
            ApiError::TokenReadOnly => 403,
            ApiError::UnsupportedTransferEncoding => 501,
            ApiError::HeaderTimeout { .. } | ApiError::BodyTimeout { .. } => 408,
            ApiError::ExpectationFailed => 417,
            ApiError::HeaderTooLarge { .. } => 431,
            ApiError::HttpVersionNotSupported => 505,
            ApiError::NotFound { .. } | ApiError::ProductNotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::IdempotencyConflict { .. } | ApiError::BatchConflict { .. } => 409,
            ApiError::EmptyBatch
            | ApiError::InvalidBatch { .. }
            | ApiError::TooManyEvents { .. } => 400,
            ApiError::ProductLimit { .. } => 507,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::QueueFull { .. }
            | ApiError::ShuttingDown
            | ApiError::StorageUnavailable
            | ApiError::NotReady(_)
            | ApiError::TooManyConnections { .. } => 503,
        }
    }

    /// Stable machine-readable code (the problem's `code` member).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Event(e) => e.code(),
            ApiError::UnreadableBody { .. } => "unreadable_body",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::EmptyBatch => "empty_batch",
            ApiError::TooManyEvents { .. } => "too_many_events",
            ApiError::InvalidBatch { .. } => "invalid_events",
            ApiError::BatchConflict { .. } => "idempotency_conflict",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::StorageUnavailable => "storage_unavailable",
            ApiError::NotFound { .. } => "not_found",
            ApiError::ProductNotFound { .. } => "product_not_found",
            ApiError::InvalidPath { .. } => "invalid_path",
            ApiError::InvalidPathProductId { .. } => "invalid_product_id",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::NotReady(_) => "not_ready",
            ApiError::InvalidQuery { .. } => "invalid_query",
            ApiError::IdempotencyConflict { .. } => "idempotency_conflict",
            ApiError::ProductLimit { .. } => "product_limit_reached",
            ApiError::MalformedRequest { .. } => "malformed_request",
            ApiError::InvalidContentLength => "invalid_content_length",
            ApiError::HeaderTimeout { .. } => "header_timeout",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::ExpectationFailed => "expectation_failed",
            ApiError::HeaderTooLarge { .. } => "header_too_large",
            ApiError::HttpVersionNotSupported => "http_version_not_supported",
            ApiError::InvalidHost => "invalid_host",
            ApiError::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            ApiError::TooManyConnections { .. } => "too_many_connections",
            ApiError::TokenRequired => "token_required",
            ApiError::TokenInvalid => "token_invalid",
            ApiError::TokenReadOnly => "token_read_only",
        }
    }

    /// Short, fixed summary of the problem type (the problem's `title`).
    pub fn title(&self) -> &'static str {
        match self {
            ApiError::Event(EventError::MalformedJson { .. }) => "Malformed JSON",
            ApiError::Event(EventError::NotAnObject { .. })
            | ApiError::Event(EventError::TrailingData { .. }) => "Body is not one JSON object",
            ApiError::Event(EventError::UnknownField { .. }) => "Unknown field",
            ApiError::Event(EventError::DuplicateField { .. }) => "Duplicate field",
            ApiError::Event(EventError::MissingProductId) => "Missing field",
            ApiError::Event(EventError::NoUpdateFields) => "Nothing to update",
            ApiError::Event(_) | ApiError::InvalidPathProductId { .. } => "Invalid field value",
            ApiError::UnreadableBody { .. } => "Unreadable request body",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::EmptyBatch => "Empty batch",
            ApiError::TooManyEvents { .. } => "Too many events",
            ApiError::InvalidBatch { .. } => "Invalid events",
            ApiError::BatchConflict { .. } => "Idempotency conflict",
            ApiError::UnsupportedMediaType { .. } => "Unsupported media type",
            ApiError::QueueFull { .. } => "Queue full",
            ApiError::ShuttingDown => "Shutting down",
            ApiError::StorageUnavailable => "Storage unavailable",
            ApiError::NotFound { .. } => "Not found",
            ApiError::ProductNotFound { .. } => "Product not found",
            ApiError::InvalidPath { .. } => "Invalid path",
            ApiError::MethodNotAllowed { .. } => "Method not allowed",
            ApiError::NotReady(_) => "Not ready",
            ApiError::InvalidQuery { .. } => "Invalid query parameter",
            ApiError::IdempotencyConflict { .. } => "Idempotency conflict",
            ApiError::ProductLimit { .. } => "Product limit reached",
            ApiError::MalformedRequest { .. } => "Malformed request",
            ApiError::InvalidContentLength => "Invalid Content-Length",
            ApiError::HeaderTimeout { .. } => "Request head timed out",
            ApiError::BodyTimeout { .. } => "Request body timed out",
            ApiError::ExpectationFailed => "Expectation failed",
            ApiError::HeaderTooLarge { .. } => "Request header too large",
            ApiError::HttpVersionNotSupported => "HTTP version not supported",
            ApiError::InvalidHost => "Invalid Host header",
            ApiError::UnsupportedTransferEncoding => "Transfer coding not implemented",
            ApiError::TooManyConnections { .. } => "Too many connections",
            ApiError::TokenRequired | ApiError::TokenInvalid => "Unauthorized",
            ApiError::TokenReadOnly => "Forbidden",
        }
    }

    /// The field the problem is about, if any (the problem's `field`).
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Event(e) => e.field(),
            ApiError::InvalidPathProductId { .. } | ApiError::ProductNotFound { .. } => {
                Some("product_id")
            }
            ApiError::InvalidQuery { parameter, .. } => Some(parameter),
            ApiError::IdempotencyConflict { .. } => Some("event_id"),
            ApiError::ProductLimit { .. } => Some("product_id"),
            _ => None,
        }
    }

    /// The JSON body, naming the request it answers, appended to `out`.
    pub fn write_json(&self, request_id: &dyn fmt::Display, out: &mut Vec<u8>) {
        let problem = Problem {
            kind: Urn(self.code()),
            title: self.title(),
            status: self.status(),
            detail: Text(self),
            code: self.code(),
            field: self.field(),
            reason: match self {
                ApiError::NotReady(not_ready) => Some(reason(not_ready)),
                _ => None,
            },
            errors: match self {
                ApiError::InvalidBatch { errors, .. } | ApiError::BatchConflict { errors } => {
                    Some(errors)
                }
                _ => None,
            },
            request_id: Text(request_id),
        };
        // Serializing strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &problem);
    }

    /// [`ApiError::write_json`] into a new buffer.
    pub fn to_json(&self, request_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&request_id, &mut out);
        out
    }
}

/// The sentence in the problem's `detail`. One match with an arm per error,
/// kept whole: each arm is the sentence a client reads, and they are best
/// read side by side.
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Event(e) => e.fmt(f),
            ApiError::UnreadableBody { detail } => {
                write!(f, "could not read the request body: {detail}")
            }
            ApiError::PayloadTooLarge {
                limit,
                declared: Some(len),
                setting,
            } => write!(
                f,
                "request body is {len} bytes (Content-Length); the limit is {limit} bytes ({setting})"
            ),
            ApiError::PayloadTooLarge {
                limit,
                declared: None,
                setting,
            } => write!(
                f,
                "request body is larger than the limit of {limit} bytes ({setting})"
            ),
            ApiError::EmptyBatch => write!(
                f,
                "the application/x-ndjson body has no event; send one JSON event per line"
            ),
            ApiError::TooManyEvents {
                count,
                limit,
                setting: "QUEUE_SIZE",
            } => write!(
                f,
                "the request has {count} events and the queue holds at most {limit} (QUEUE_SIZE): it could never be taken whole; send at most {limit} events per request"
            ),
            ApiError::TooManyEvents {
                count,
                limit,
                setting,
            } => write!(
                f,
                "the request has {count} events; the limit is {limit} events per request ({setting}); split it"
            ),
            ApiError::InvalidBatch {
                errors,
                failing,
                count,
            } => {
                write!(
                    f,
                    "{failing} of the {count} events break a rule, so none was queued; fix them (listed in errors) and send the request again"
                )?;
                if let Some(first) = errors.first() {
                    write!(f, "; line {}: {}", first.line, first.detail)?;
                }
                Ok(())
            }
            ApiError::BatchConflict { errors } => {
                write!(
                    f,
                    "{} events reuse an event_id for a different event, so none was queued; use a new id for a new event",
                    errors.len()
                )?;
                if let Some(first) = errors.first() {
                    write!(f, "; line {}: {}", first.line, first.detail)?;
                }
                Ok(())
            }
            ApiError::UnsupportedMediaType { found } => write!(
                f,
                "Content-Type {found:?} is not supported; send 'Content-Type: application/json' for one event, or 'Content-Type: application/x-ndjson' for one event per line (curl: -H 'Content-Type: application/json')"
            ),
            ApiError::QueueFull { capacity } => write!(
                f,
                "the event queue is full ({capacity} events, QUEUE_SIZE); retry after 1 second"
            ),
            ApiError::ShuttingDown => write!(
                f,
                "the service is shutting down and accepts no new events; retry against another instance or after restart"
            ),
            ApiError::NotFound { path } => write!(
                f,
                "no route for {path:?}; routes are POST /events, GET /products, GET /products/{{id}}, GET /healthz, GET /readyz, GET /metrics and GET /openapi.json"
            ),
            ApiError::ProductNotFound { product_id } => write!(
                f,
                "no product with product_id {product_id:?}; it appears once an event for it has been applied"
            ),
            ApiError::InvalidPath { detail } => write!(f, "the request path is invalid: {detail}"),
            ApiError::InvalidPathProductId { reason } => {
                write!(f, "the product id in the path {reason}")
            }
            ApiError::MethodNotAllowed { method, allow } => {
                write!(f, "method {method} is not allowed here; allowed: {allow}")
            }
            ApiError::ProductLimit { limit } => write!(
                f,
                "the store holds its limit of {limit} products (MAX_PRODUCTS); updates to existing products are still accepted, new products are not"
            ),
            ApiError::IdempotencyConflict { event_id, seq } => write!(
                f,
                "event_id {event_id:?} was already used for a different event (seq {seq}); use a new id for a new event"
            ),
            ApiError::InvalidQuery { parameter, detail } => {
                write!(f, "query parameter {parameter:?} {detail}")
            }
            ApiError::MalformedRequest { detail } => {
                write!(f, "{detail}; the connection is closed")
            }
            ApiError::InvalidContentLength => write!(
                f,
                "the Content-Length header must be one decimal number (digits only, the same in every copy); the body cannot be delimited, so the connection is closed"
            ),
            ApiError::HeaderTimeout { limit } => write!(
                f,
                "the request head was not complete {} after its first byte (HEADER_TIMEOUT); the connection is closed",
                Seconds(*limit)
            ),
            ApiError::BodyTimeout { limit, stall } => write!(
                f,
                "the request body did not arrive in time: it must be complete within {} (BODY_TIMEOUT) and never stall for {} (SOCKET_TIMEOUT); the connection is closed",
                Seconds(*limit),
                Seconds(*stall)
            ),
            ApiError::ExpectationFailed => write!(
                f,
                "the only Expect value supported is 100-continue; the connection is closed"
            ),
            ApiError::HeaderTooLarge { limit } => write!(
                f,
                "the request head (request line and headers) is over {limit} bytes (MAX_HEADER_BYTES); the connection is closed"
            ),
            ApiError::HttpVersionNotSupported => write!(
                f,
                "only HTTP/1.0 and HTTP/1.1 are supported; the connection is closed"
            ),
            ApiError::InvalidHost => write!(
                f,
                "an HTTP/1.1 request needs exactly one Host header, whose value is host[:port]; the connection is closed"
            ),
            ApiError::UnsupportedTransferEncoding => write!(
                f,
                "the only transfer coding implemented is chunked; send the body with Content-Length or Transfer-Encoding: chunked; the connection is closed"
            ),
            ApiError::TooManyConnections { limit, per_client } => write!(
                f,
                "the service is serving its limit of connections ({limit} in all, MAX_CONNECTIONS, none of them idle; or {per_client} from this client address, MAX_CONNECTIONS_PER_CLIENT); retry after 1 second"
            ),
            ApiError::TokenRequired => write!(
                f,
                "this service needs a token: send Authorization: Bearer <token> with one of its API tokens"
            ),
            ApiError::TokenInvalid => write!(
                f,
                "the bearer token is not one of this service's API tokens"
            ),
            ApiError::TokenReadOnly => write!(
                f,
                "the bearer token may only read (a read: token); POST /events needs a token that may write"
            ),
            ApiError::StorageUnavailable => write!(
                f,
                "the event could not be committed to the durable store (DATA_DIR or DATABASE_URL) and is not acknowledged; if the store failed in the middle of its commit it may be stored all the same: retry after 1 second with the same event_id to be told which (GET /readyz says why the store fails)"
            ),
            ApiError::NotReady(NotReady::StorageUnavailable { detail }) => write!(
                f,
                "the durable store fails: {detail}; this instance should get no traffic until it works again"
            ),
            ApiError::NotReady(NotReady::Draining) => write!(
                f,
                "the service is shutting down and takes no new events; send traffic elsewhere"
            ),
            ApiError::NotReady(NotReady::QueueAboveHighWater { depth, capacity }) => write!(
                f,
                "the event queue holds {depth} of {capacity} events (QUEUE_SIZE), at or above the 90% high-water mark; the workers are behind"
            ),
        }
    }
}

/// A duration as a person writes it in a setting: `10 s`, `0.5 s`.
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", self.0.as_secs_f64())
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: Urn,
    title: &'static str,
    status: u16,
    detail: Text<'a, ApiError>,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// An NDJSON request's failing lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [LineError]>,
    request_id: Text<'a, dyn fmt::Display + 'a>,
}

/// `urn:product-update-service:problem:<code>`, written without building
/// the string first.
struct Urn(&'static str);

impl Serialize for Urn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!(
            "urn:product-update-service:problem:{}",
            self.0
        ))
    }
}

/// A `Display` value as a JSON string, formatted straight into the output.
struct Text<'a, T: ?Sized>(&'a T);

impl<T: fmt::Display + ?Sized> Serialize for Text<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// HTTP answers a refusal with the code every front door reports it by.
    #[test]
    fn a_refusal_has_the_same_code_over_http() {
        let refusals = [
            Refusal::IdempotencyConflict { seq: 1 },
            Refusal::QueueFull { capacity: 2 },
            Refusal::ProductLimit { limit: 3 },
            Refusal::ShuttingDown,
            Refusal::StorageUnavailable,
        ];
        for refusal in refusals {
            assert_eq!(ApiError::refused(refusal, Some("e")).code(), refusal.code());
        }
    }

    #[test]
    fn body_has_the_rfc_9457_members_and_a_code() {
        let err = ApiError::Event(EventError::InvalidPrice {
            reason: "must not be negative, got -1".into(),
        });
        let body: Value = serde_json::from_slice(&err.to_json("req-1")).unwrap();
        assert_eq!(
            body["type"],
            "urn:product-update-service:problem:invalid_price"
        );
        assert_eq!(body["title"], "Invalid field value");
        assert_eq!(body["status"], 400);
        assert_eq!(body["code"], "invalid_price");
        assert_eq!(body["field"], "price");
        assert_eq!(
            body["detail"],
            "field \"price\" must not be negative, got -1"
        );
    }

    #[test]
    fn field_is_omitted_when_there_is_none() {
        let body: Value = serde_json::from_slice(&ApiError::ShuttingDown.to_json("req-1")).unwrap();
        assert!(body.get("field").is_none());
        assert_eq!(body["status"], 503);
    }

    #[test]
    fn limits_are_named() {
        let err = ApiError::PayloadTooLarge {
            limit: 65536,
            declared: Some(70000),
            setting: "MAX_BODY_BYTES",
        };
        assert!(err.to_string().contains("65536") && err.to_string().contains("MAX_BODY_BYTES"));
        let err = ApiError::QueueFull { capacity: 7 };
        assert!(err.to_string().contains("QUEUE_SIZE"));
    }
}
