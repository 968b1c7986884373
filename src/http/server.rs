//! The HTTP server's life and the one function every request goes through.
//!
//! [`HttpServer::start`] starts the answerer (`answerer.rs`) and hands the
//! vendored tiny_http's inline server a [`Dispatch`]: its connection
//! threads (see `tiny_http::inline`) call [`Dispatch::handle`] for each
//! request, on the thread that read it. That function gives the request its
//! id, routes it once, calls the handler, and has the answer completed
//! (`answer.rs`: problem details for an error, counts, the access line).
//! [`HttpServer::stop`] is step 5 of the shutdown sequence.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use tiny_http::inline::{self, Handler, Rejection, Request, Response};

use super::answer::{self, Asked, Finishing};
use super::answerer::Answerer;
use super::auth;
use super::handlers::{Answered, Handlers};
use super::problem::ApiError;
use super::route::Route;
use crate::config::Config;
use crate::request_id::RequestIds;
use crate::service::Service;
use crate::stats::Stats;

/// The running HTTP server.
pub struct HttpServer {
    server: inline::Server,
    answerer: Answerer,
    handlers: Arc<Handlers>,
}

impl HttpServer {
    /// Serves `listener` with the service's operations until
    /// [`HttpServer::stop`].
    pub fn start(
        listener: TcpListener,
        service: &Arc<Service>,
        config: &Config,
    ) -> io::Result<HttpServer> {
        let access_log = log::log_enabled!(target: "access", log::Level::Info);
        let answerer = Answerer::start(Arc::clone(service), access_log)?;
        let handlers = Arc::new(Handlers {
            service: Arc::clone(service),
            config: config.clone(),
            replies: answerer.replies(),
            open_connections: Arc::new(AtomicUsize::new(0)),
            access_log,
        });
        let limits = inline::Config {
            max_connections: config.max_connections,
            socket_timeout: config.socket_timeout,
            keepalive_timeout: config.keepalive_timeout,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            max_header_bytes: config.max_header_bytes,
            max_connections_per_client: config.max_connections_per_client,
            open_connections: Arc::clone(&handlers.open_connections),
            ..inline::Config::default()
        };
        let dispatch = Dispatch {
            handlers: Arc::clone(&handlers),
            request_ids: RequestIds::default(),
        };
        let server = match inline::Server::start(listener, limits, Arc::new(dispatch)) {
            Ok(server) => server,
            Err(e) => {
                drop(handlers);
                answerer.stop();
                return Err(e);
            }
        };
        Ok(HttpServer {
            server,
            answerer,
            handlers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The service's counts with the server's own (connections).
    pub fn stats(&self) -> Stats {
        self.handlers.stats()
    }

    /// Stops taking connections, closes the idle ones, lets the requests in
    /// hand finish (their answers say `Connection: close`) until
    /// `deadline`, cuts short those still in hand then, and returns once
    /// every connection thread has exited; then stops the answerer, once it
    /// has written what it has.
    pub fn stop(self, deadline: Instant) -> inline::Stopped {
        let HttpServer {
            server,
            answerer,
            handlers,
        } = self;
        let stopped = server.stop_by(Some(deadline));
        // The handlers hold a sender of the answerer's channel.
        drop(handlers);
        answerer.stop();
        stopped
    }
}

/// What the connection threads call.
struct Dispatch {
    handlers: Arc<Handlers>,
    request_ids: RequestIds,
}

impl Dispatch {
    /// What every answer needs of the service, read now.
    fn finishing(&self) -> Finishing<'_> {
        let handlers = &self.handlers;
        Finishing {
            metrics: handlers.service.metrics(),
            draining: handlers.service.is_draining(),
            access_log: handlers.access_log,
        }
    }
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
        let authorized = auth::authorize(
            &self.handlers.config,
            &asked.route,
            request.header("Authorization"),
        );
        let routed = authorized.and_then(|()| self.route(&asked, request, response));
        let result = match routed {
            // Answered, counted and logged by whoever has the answer.
            Ok(Answered::Later) => return,
            Ok(Answered::Now) => Ok(()),
            Err(error) => Err(error),
        };
        answer::complete(self.finishing(), &asked, result, response);
    }

    /// The answer to a request the server refused before routing it: the
    /// same problem details as every other error, counted in
    /// `http_rejections_total` and logged as an access line.
    fn refuse(&self, rejection: Rejection, response: &mut Response) {
        let handlers = &self.handlers;
        let config = &handlers.config;
        let error = match rejection {
            Rejection::MalformedRequestLine => ApiError::MalformedRequest {
                detail: "the request line is not 'METHOD /path HTTP/1.1' in ASCII",
            },
            Rejection::MalformedHeader => ApiError::MalformedRequest {
                detail: "a header line is not 'Name: value' in ASCII",
            },
            Rejection::UnsupportedTransferEncoding => ApiError::UnsupportedTransferEncoding,
            Rejection::InvalidTransferEncoding => ApiError::MalformedRequest {
                detail: "Transfer-Encoding must end with chunked, listed once",
            },
            Rejection::InvalidHost => ApiError::InvalidHost,
            Rejection::InvalidContentLength => ApiError::InvalidContentLength,
            Rejection::HeaderTimeout => ApiError::HeaderTimeout {
                limit: config.header_timeout,
            },
            Rejection::ExpectationFailed => ApiError::ExpectationFailed,
            Rejection::HeaderTooLarge => ApiError::HeaderTooLarge {
                limit: config.max_header_bytes,
            },
            Rejection::VersionNotSupported => ApiError::HttpVersionNotSupported,
            Rejection::TooManyConnections => ApiError::TooManyConnections {
                limit: config.max_connections,
                per_client: config.max_connections_per_client,
            },
            Rejection::ShuttingDown => ApiError::ShuttingDown,
        };
        let request_id = self.request_ids.for_request(None);
        handlers.service.metrics().http_rejected(error.code());
        if handlers.access_log {
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
        let handlers = &self.handlers;
        let now = |done: Result<(), ApiError>| done.map(|()| Answered::Now);
        match asked.route {
            Route::PostEvent => handlers.post_event(request, asked, response),
            Route::GetProduct { raw_id, query } => {
                now(handlers.get_product(raw_id, query, request, response))
            }
            Route::ListProducts { query } => now(handlers.list_products(query, response)),
            Route::Healthz => now(handlers.healthz(response)),
            Route::Readyz => now(handlers.readyz(response)),
            Route::Metrics => now(handlers.metrics(response)),
            Route::OpenApi => now(handlers.openapi(response)),
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
