//! Bearer tokens (`API_TOKENS`): whether a request may go on to its
//! handler. Runs on the connection's thread, after routing and before the
//! handler, for every request.
//!
//! With no token configured every route is open (the README says so, and
//! the default `BIND_ADDR` is loopback). With tokens, a request needs
//! `Authorization: Bearer <token>` naming one of them, except on the
//! operability routes left public (`PUBLIC_PATHS`); `POST /events` needs a
//! token that may write. The token's text is compared in constant time
//! (`config/tokens.rs`) and never logged: the access line holds no header.

use super::problem::ApiError;
use super::route::Route;
use crate::config::{Config, Scope};

/// `Ok` if the request may go on; the 401 or 403 to answer if not.
pub fn authorize(
    config: &Config,
    route: &Route<'_>,
    authorization: Option<&str>,
) -> Result<(), ApiError> {
    let tokens = &config.api_tokens;
    if !tokens.any() || is_public(config, route) {
        return Ok(());
    }
    let presented = authorization
        .and_then(bearer)
        .ok_or(ApiError::TokenRequired)?;
    match tokens.scope_of(presented.as_bytes()) {
        None => Err(ApiError::TokenInvalid),
        Some(Scope::Read) if *route == Route::PostEvent => Err(ApiError::TokenReadOnly),
        Some(_) => Ok(()),
    }
}

/// Whether the route answers without a token (`PUBLIC_PATHS`).
fn is_public(config: &Config, route: &Route<'_>) -> bool {
    let public = &config.public_paths;
    match route {
        Route::Healthz => public.healthz,
        Route::Readyz => public.readyz,
        Route::Metrics => public.metrics,
        Route::OpenApi => public.openapi,
        _ => false,
    }
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 9110
/// §11.1), or `None` for another scheme or no token.
fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiTokens;

    fn config(tokens: &str) -> Config {
        Config {
            api_tokens: ApiTokens::parse(tokens, ',').unwrap(),
            ..Config::default()
        }
    }

    #[test]
    fn without_tokens_everything_is_open() {
        assert_eq!(
            authorize(&Config::default(), &Route::PostEvent, None),
            Ok(())
        );
    }

    #[test]
    fn tokens_guard_every_route_but_the_public_ones() {
        let config = config("writer-token-0001,read:reader-token-0001");
        let post = Route::PostEvent;
        assert_eq!(
            authorize(&config, &post, None),
            Err(ApiError::TokenRequired)
        );
        assert_eq!(
            authorize(&config, &post, Some("Basic abc")),
            Err(ApiError::TokenRequired)
        );
        assert_eq!(
            authorize(&config, &post, Some("Bearer nope")),
            Err(ApiError::TokenInvalid)
        );
        assert_eq!(
            authorize(&config, &post, Some("Bearer reader-token-0001")),
            Err(ApiError::TokenReadOnly)
        );
        assert_eq!(
            authorize(&config, &post, Some("bearer writer-token-0001")),
            Ok(())
        );
        let list = Route::ListProducts { query: "" };
        assert_eq!(
            authorize(&config, &list, Some("Bearer reader-token-0001")),
            Ok(())
        );
        assert_eq!(authorize(&config, &Route::Healthz, None), Ok(()));
        assert_eq!(authorize(&config, &Route::Metrics, None), Ok(()));
        let closed = Config {
            public_paths: crate::config::PublicPaths::parse("none").unwrap(),
            ..config
        };
        assert_eq!(
            authorize(&closed, &Route::Healthz, None),
            Err(ApiError::TokenRequired)
        );
    }
}
