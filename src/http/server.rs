//! The HTTP server's life and the one function every request goes through.
//!
//! [`HttpServer::start`] hands the vendored tiny_http's inline server a
//! [`Dispatch`]: its connection threads (see `tiny_http::inline`) call
//! [`Dispatch::handle`] for each request, on the thread that read it. That
//! function gives the request its id, routes it once, calls the handler,
//! and has the answer completed (`answer.rs`: problem details for an
//! error, counts, the access line).
//! [`HttpServer::stop`] is step 5 of the shutdown sequence.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use tiny_http::inline::{self, Handler, Rejection, Request, Response};

use super::answer::{self, Asked};
use super::handlers::{Answered, Api};
use super::route::Route;
use super::wire;
use crate::problem::ApiError;
use crate::request_id::RequestIds;

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
}

impl Handler for Dispatch {
    fn handle(&self, request: &mut Request<'_>, response: &mut Response) {
        let asked = Asked {
            route: Route::parse(request.method(), request.url()),
            method: request.method().as_str(),
            url: request.url(),
            request_id: self.request_ids.for_request(request.header("X-Request-Id")),
            started: Instant::now(),
        };
        let result = match self.route(&asked, request, response) {
            // Answered, counted and logged by whoever has the answer.
            Ok(Answered::Later) => return,
            Ok(Answered::Now) => Ok(()),
            Err(error) => Err(error),
        };
        answer::complete(self.api.finishing(), &asked, result, response);
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
        if self.api.access_log {
            log::info!(
                target: "access",
                "- - {} {} request_id={request_id}",
                error.status(),
                error.code()
            );
        }
        answer::problem(&error, request_id, response);
        response.add_header("X-Request-Id", request_id.as_str(&mut [0; 25]));
    }
}

impl Dispatch {
    fn route(
        &self,
        asked: &Asked<'_>,
        request: &mut Request<'_>,
        response: &mut Response,
    ) -> Result<Answered, ApiError> {
        let api = &self.api;
        let now = |done: Result<(), ApiError>| done.map(|()| Answered::Now);
        match asked.route {
            Route::PostEvent => Api::post_event(api, request, asked, response),
            Route::GetProduct { raw_id, query } => {
                now(api.get_product(raw_id, query, request, response))
            }
            Route::ListProducts { query } => now(api.list_products(query, response)),
            Route::Healthz => now(api.healthz(response)),
            Route::Readyz => now(api.readyz(response)),
            Route::Metrics => now(api.metrics(response)),
            Route::OpenApi => now(api.openapi(response)),
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
