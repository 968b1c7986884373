//! The HTTP server's life and the one function every request goes through.
//!
//! [`HttpServer::start`] hands the vendored tiny_http's inline server a
//! [`Dispatch`]: its connection threads (see `tiny_http::inline`) call
//! [`Dispatch::handle`] for each request, on the thread that read it. That
//! function gives the request its id, routes it once, calls the handler,
//! renders an error as problem details, and counts and logs the answer.
//! [`HttpServer::stop`] is step 5 of the shutdown sequence.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use tiny_http::inline::{self, Handler, Rejection, Request, Response};

use super::handlers::Api;
use super::route::Route;
use super::wire;
use crate::metrics::RejectReason;
use crate::problem::{ApiError, NotReady};
use crate::request_id::{RequestId, RequestIds};

/// The running HTTP server.
pub struct HttpServer {
    server: inline::Server,
}

impl HttpServer {
    /// Serves `listener` with `api`'s handlers until [`HttpServer::stop`].
    pub fn start(listener: TcpListener, api: &Arc<Api>) -> io::Result<HttpServer> {
        let config = &api.config;
        let limits = inline::Config {
            max_connections: config.max_connections,
            socket_timeout: config.socket_timeout,
            keep_alive_timeout: config.keepalive_timeout,
            head_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            max_head_bytes: config.max_header_bytes,
            open_connections: Arc::clone(&api.open_connections),
            ..inline::Config::default()
        };
        let dispatch = Dispatch {
            api: Arc::clone(api),
            request_ids: RequestIds::default(),
            // Fixed for the life of the process (RUST_LOG is read once), so
            // asked once: the access line costs nothing when it is off.
            access_log: log::log_enabled!(target: "access", log::Level::Info),
        };
        let server = inline::Server::start(listener, limits, Arc::new(dispatch))?;
        Ok(HttpServer { server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops taking connections, closes the idle ones, lets the requests in
    /// hand finish (their answers say `Connection: close`), and returns once
    /// every connection thread has exited.
    pub fn stop(self) -> inline::Stopped {
        self.server.stop()
    }
}

/// What the connection threads call.
struct Dispatch {
    api: Arc<Api>,
    request_ids: RequestIds,
    access_log: bool,
}

impl Handler for Dispatch {
    fn handle(&self, request: &mut Request<'_>, response: &mut Response) {
        let started = Instant::now();
        let request_id = self.request_ids.for_request(request.header("X-Request-Id"));
        let route = Route::parse(request.method(), request.url());
        let result = self.route(route, request, request_id, response);
        if let Err(error) = &result {
            log::debug!(
                "{} {} -> {} {}: {error} request_id={request_id}",
                request.method(),
                request.url(),
                error.status(),
                error.code()
            );
            if route == Route::PostEvent {
                self.api.metrics.reject(reject_reason(error));
            }
            // The one refusal code a handler can answer too: a body is read
            // by the handler, so its timeout is noticed there.
            if let ApiError::BodyTimeout { .. } = error {
                self.api.metrics.http_rejected(error.code());
            }
            problem(error, request_id, response);
        }
        response.add_header("X-Request-Id", request_id.as_str(&mut [0; 25]));
        if self.api.is_draining() {
            // Keep-alive clients should move to another instance.
            response.close_after();
        }
        let took = started.elapsed();
        let status = response.status();
        self.api
            .metrics
            .request(route.label(), request.method().as_str(), status, took);
        if self.access_log {
            // One line per request, under its own target so it can be turned
            // off on its own (RUST_LOG=info,access=off).
            log::info!(
                target: "access",
                "{} {} {status} {}B {}us request_id={request_id}",
                request.method(),
                request.url(),
                response.body().len(),
                took.as_micros()
            );
        }
    }

    /// The answer to a request the server refused before routing it: the
    /// same problem details as every other error, counted in
    /// `http_rejections_total` and logged as an access line.
    fn refuse(&self, rejection: Rejection, response: &mut Response) {
        let config = &self.api.config;
        let error = match rejection {
            Rejection::MalformedRequestLine => ApiError::MalformedRequest {
                detail: "the request line is not 'METHOD /path HTTP/1.1' in ASCII",
            },
            Rejection::MalformedHeader => ApiError::MalformedRequest {
                detail: "a header line is not 'Name: value' in ASCII",
            },
            Rejection::UnsupportedTransferEncoding => ApiError::MalformedRequest {
                detail: "the only Transfer-Encoding supported is chunked (alone)",
            },
            Rejection::InvalidContentLength => ApiError::InvalidContentLength,
            Rejection::HeadTimeout => ApiError::HeaderTimeout {
                limit: config.header_timeout,
            },
            Rejection::BodyTimeout => wire::body_timeout(config),
            Rejection::ExpectationFailed => ApiError::ExpectationFailed,
            Rejection::HeadTooLarge => ApiError::HeaderTooLarge {
                limit: config.max_header_bytes,
            },
            Rejection::VersionNotSupported => ApiError::HttpVersionNotSupported,
            Rejection::TooManyConnections => ApiError::TooManyConnections {
                limit: config.max_connections,
            },
            Rejection::ShuttingDown => ApiError::ShuttingDown,
        };
        let request_id = self.request_ids.for_request(None);
        self.api.metrics.http_rejected(error.code());
        if self.access_log {
            log::info!(
                target: "access",
                "- - {} {} request_id={request_id}",
                error.status(),
                error.code()
            );
        }
        problem(&error, request_id, response);
        response.add_header("X-Request-Id", request_id.as_str(&mut [0; 25]));
    }
}

impl Dispatch {
    fn route(
        &self,
        route: Route<'_>,
        request: &mut Request<'_>,
        request_id: RequestId<'_>,
        response: &mut Response,
    ) -> Result<(), ApiError> {
        let api = &self.api;
        match route {
            Route::PostEvent => api.post_event(request, request_id, response),
            Route::GetProduct { raw_id, query } => {
                api.get_product(raw_id, query, request, response)
            }
            Route::ListProducts { query } => api.list_products(query, response),
            Route::Healthz => api.healthz(response),
            Route::Readyz => api.readyz(response),
            Route::Metrics => api.metrics(response),
            Route::OpenApi => api.openapi(response),
            Route::MethodNotAllowed { allow, .. } => Err(ApiError::MethodNotAllowed {
                method: request.method().to_string(),
                allow,
            }),
            Route::NotFound { path } => Err(ApiError::NotFound {
                path: path.to_owned(),
            }),
        }
    }
}

/// Renders `error` as problem details, with the headers its status calls
/// for (`Retry-After`, `Allow`). Headers a handler added before it failed
/// stay: `X-Caught-Up` on a 404 after a `min_seq` wait is meant. (Handlers
/// add their success headers only once they cannot fail.)
fn problem(error: &ApiError, request_id: RequestId<'_>, response: &mut Response) {
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
