//! Routing: a request's method and target, parsed once into a [`Route`]
//! that says which handler answers it, with the parts of the target that
//! handler needs, and which metrics label it counts under.
//!
//! | method    | path             | route                      |
//! |-----------|------------------|----------------------------|
//! | POST      | `/events`        | [`Route::PostEvent`]       |
//! | GET, HEAD | `/products`      | [`Route::ListProducts`]    |
//! | GET, HEAD | `/products/{id}` | [`Route::GetProduct`]      |
//! | GET, HEAD | `/healthz`, `/readyz`, `/metrics`, `/openapi.json` | one each |
//!
//! A known path with another method is [`Route::MethodNotAllowed`] (405,
//! with the `Allow` header), anything else [`Route::NotFound`].

use tiny_http::Method;

use crate::metrics::RouteLabel;

/// `Allow` for `/events`.
pub const ALLOW_EVENTS: &str = "POST";
/// `Allow` for every other path.
pub const ALLOW_READS: &str = "GET, HEAD";

/// What answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    PostEvent,
    ListProducts {
        query: &'a str,
    },
    /// `raw_id` is still percent-encoded.
    GetProduct {
        raw_id: &'a str,
        query: &'a str,
    },
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    MethodNotAllowed {
        path: Path,
        allow: &'static str,
    },
    NotFound {
        path: &'a str,
    },
}

/// The known paths, for the label of a request with the wrong method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Events,
    Products,
    Product,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
}

impl<'a> Route<'a> {
    /// Routes `target` (the path and query as sent) for `method`.
    pub fn parse(method: &Method, target: &'a str) -> Route<'a> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let known = match path {
            "/events" => Path::Events,
            "/products" => Path::Products,
            "/healthz" => Path::Healthz,
            "/readyz" => Path::Readyz,
            "/metrics" => Path::Metrics,
            "/openapi.json" => Path::OpenApi,
            _ => match path.strip_prefix("/products/") {
                Some(raw_id) if !raw_id.is_empty() && !raw_id.contains('/') => Path::Product,
                _ => return Route::NotFound { path },
            },
        };
        let read = matches!(method, Method::Get | Method::Head);
        match (known, read) {
            (Path::Events, _) if *method == Method::Post => Route::PostEvent,
            (Path::Events, _) => Route::MethodNotAllowed {
                path: known,
                allow: ALLOW_EVENTS,
            },
            (_, false) => Route::MethodNotAllowed {
                path: known,
                allow: ALLOW_READS,
            },
            (Path::Products, true) => Route::ListProducts { query },
            (Path::Product, true) => Route::GetProduct {
                raw_id: &path["/products/".len()..],
                query,
            },
            (Path::Healthz, true) => Route::Healthz,
            (Path::Readyz, true) => Route::Readyz,
            (Path::Metrics, true) => Route::Metrics,
            (Path::OpenApi, true) => Route::OpenApi,
        }
    }

    /// The `route` label of `http_requests_total`: a fixed set, so a
    /// client cannot create new series by requesting new paths.
    pub fn label(&self) -> RouteLabel {
        let path = match self {
            Route::PostEvent => Path::Events,
            Route::ListProducts { .. } => Path::Products,
            Route::GetProduct { .. } => Path::Product,
            Route::Healthz => Path::Healthz,
            Route::Readyz => Path::Readyz,
            Route::Metrics => Path::Metrics,
            Route::OpenApi => Path::OpenApi,
            Route::MethodNotAllowed { path, .. } => *path,
            Route::NotFound { .. } => return RouteLabel::Other,
        };
        match path {
            Path::Events => RouteLabel::Events,
            Path::Products => RouteLabel::ProductList,
            Path::Product => RouteLabel::Product,
            Path::Healthz => RouteLabel::Healthz,
            Path::Readyz => RouteLabel::Readyz,
            Path::Metrics => RouteLabel::Metrics,
            Path::OpenApi => RouteLabel::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_path_and_method() {
        let r = |method: Method, target: &'static str| Route::parse(&method, target);
        assert_eq!(r(Method::Post, "/events"), Route::PostEvent);
        assert_eq!(
            r(Method::Get, "/events"),
            Route::MethodNotAllowed {
                path: Path::Events,
                allow: ALLOW_EVENTS
            }
        );
        assert_eq!(
            r(Method::Head, "/products/a%20b?min_seq=3"),
            Route::GetProduct {
                raw_id: "a%20b",
                query: "min_seq=3"
            }
        );
        assert_eq!(
            r(Method::Get, "/products?limit=2"),
            Route::ListProducts { query: "limit=2" }
        );
        assert_eq!(
            r(Method::Delete, "/products/x"),
            Route::MethodNotAllowed {
                path: Path::Product,
                allow: ALLOW_READS
            }
        );
        assert_eq!(
            r(Method::Get, "/products/"),
            Route::NotFound { path: "/products/" }
        );
        assert_eq!(
            r(Method::Get, "/products/a/b"),
            Route::NotFound {
                path: "/products/a/b"
            }
        );
        assert_eq!(r(Method::Get, "/nope?x"), Route::NotFound { path: "/nope" });
        assert_eq!(r(Method::Head, "/openapi.json"), Route::OpenApi);
        assert_eq!(r(Method::Post, "/healthz").label(), RouteLabel::Healthz);
        assert_eq!(r(Method::Get, "/nope").label(), RouteLabel::Other);
    }
}
