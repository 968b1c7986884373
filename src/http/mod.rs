//! The HTTP front door: HTTP in, the service's operations (`service.rs`),
//! HTTP out. In the order a request meets it:
//!
//! 1. [`server`]: the connection threads' entry point. The vendored
//!    tiny_http reads a request on its connection's thread and calls
//!    `Dispatch::handle` on that same thread, which gives the request its
//!    id, routes it, answers it, and counts and logs the answer.
//! 2. [`route`]: the method and path, parsed once into a `Route` that picks
//!    the handler and is the metrics label; [`auth`]: whether the request's
//!    bearer token lets it through (`API_TOKENS`).
//! 3. [`handlers`]: what each route answers, as calls to the service.
//! 4. [`wire`]: the small parsing jobs under the handlers (body with its
//!    limit, `Content-Type`, `If-None-Match`, percent-decoding, query,
//!    cursor).
//! 5. [`answerer`]: the thread that writes the answers to events that
//!    waited for a commit.
//! 6. [`answer`]: what every answer gets before it is written, whoever
//!    writes it (problem details for an error, `X-Request-Id`, the count
//!    in `/metrics`, the access line), and the body of an event's outcome.
//! 7. [`problem`]: every error as an RFC 9457 problem.
//!
//! Routes:
//!
//! | method    | path             | answer                                  |
//! |-----------|------------------|-----------------------------------------|
//! | POST      | `/events`        | 202 + `{"status":"accepted","seq":..}`  |
//! | GET, HEAD | `/products/{id}` | 200 + the product, or 404               |
//! | GET, HEAD | `/products`      | 200 + one page of products              |
//! | GET, HEAD | `/healthz`, `/readyz`, `/metrics`, `/openapi.json` | operability |

pub mod answer;
pub mod answerer;
pub mod auth;
pub mod handlers;
pub mod ndjson;
pub mod problem;
pub mod route;
pub mod server;
pub mod wire;

pub use server::HttpServer;
