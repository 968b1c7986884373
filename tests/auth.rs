//! Bearer tokens (`API_TOKENS`, `API_TOKENS_FILE`, `PUBLIC_PATHS`) over
//! real HTTP: every route but the public operability ones needs a token, a
//! read-only token cannot post, the answers are 401 and 403 problem
//! details with `WWW-Authenticate`, and no token ever reaches the log.

mod common;

use common::binary::Binary;
use common::{TestServer, scratch_dir, test_config};
use product_update_service::Config;
use product_update_service::config::{ApiTokens, PublicPaths};

const WRITER: &str = "writer-0123456789abcdef";
const READER: &str = "reader-0123456789abcdef";

fn with_tokens() -> Config {
    Config {
        api_tokens: ApiTokens::parse(&format!("{WRITER},read:{READER}"), ',').expect("tokens"),
        ..test_config()
    }
}

fn request(server: &TestServer, method: &str, path: &str, token: Option<&str>) -> common::Reply {
    request_at(&server.agent, &server.url(path), method, token)
}

/// A GET, or a POST of a small update, to `url`, with `token` if any.
fn request_at(agent: &ureq::Agent, url: &str, method: &str, token: Option<&str>) -> common::Reply {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let call = match method {
        "POST" => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(bearer) = &bearer {
                r = r.header("Authorization", bearer);
            }
            r.send(r#"{"product_id":"a1","stock":3}"#)
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(bearer) = &bearer {
                r = r.header("Authorization", bearer);
            }
            r.call()
        }
    };
    common::read_reply(call)
}

#[test]
fn every_route_but_the_public_ones_needs_a_token() {
    let server = TestServer::start(with_tokens());
    for (method, path) in [
        ("POST", "/events"),
        ("GET", "/products/a1"),
        ("GET", "/products"),
        ("GET", "/nope"),
    ] {
        let r = request(&server, method, path, None);
        r.assert_problem(401, "token_required");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="product-update-service""#),
            "{method} {path}"
        );
        let r = request(&server, method, path, Some("not-a-token"));
        r.assert_problem(401, "token_invalid");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains(r#"error="invalid_token""#)),
            "{method} {path}"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(request(&server, "GET", path, None).status, 200, "{path}");
    }
    server.shutdown();
}

#[test]
fn a_read_only_token_reads_and_a_writer_writes() {
    let server = TestServer::start(with_tokens());
    let r = request(&server, "POST", "/events", Some(READER));
    r.assert_problem(403, "token_read_only");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains(r#"error="insufficient_scope""#))
    );
    let r = request(&server, "POST", "/events", Some(WRITER));
    assert_eq!(r.status, 202, "{}", r.body);
    let seq = r.json()["seq"].as_u64().expect("seq");
    let r = request(
        &server,
        "GET",
        &format!("/products/a1?min_seq={seq}"),
        Some(READER),
    );
    assert_eq!((r.status, r.json()["stock"].as_u64()), (200, Some(3)));
    assert_eq!(
        request(&server, "GET", "/products", Some(WRITER)).status,
        200
    );
    server.shutdown();
}

#[test]
fn public_paths_none_closes_the_operability_routes_too() {
    let server = TestServer::start(Config {
        public_paths: PublicPaths::parse("none").expect("none"),
        ..with_tokens()
    });
    request(&server, "GET", "/healthz", None).assert_problem(401, "token_required");
    assert_eq!(
        request(&server, "GET", "/healthz", Some(READER)).status,
        200
    );
    server.shutdown();
}

/// The binary, with tokens from the environment and from a file, logging
/// at debug: the tokens appear in no log line (not in the startup line,
/// not in the access lines, not in a refusal's).
#[test]
fn tokens_never_reach_the_log() {
    let dir = scratch_dir("tokens");
    let file = dir.join("tokens");
    std::fs::write(&file, format!("# a comment\nread:{READER}\n")).expect("token file");
    let mut binary = Binary::start(&[
        ("API_TOKENS", WRITER),
        ("API_TOKENS_FILE", file.to_str().expect("path")),
        ("RUST_LOG", "debug"),
    ]);
    let agent = common::agent();
    let base = binary.base();
    let events = format!("{base}/events");
    assert_eq!(
        request_at(&agent, &events, "POST", Some(WRITER)).status,
        202
    );
    assert_eq!(
        request_at(&agent, &events, "POST", Some(READER)).status,
        403
    );
    let product = format!("{base}/products/a1");
    let wrong = Some("a-wrong-token-0123456789");
    assert_eq!(request_at(&agent, &product, "GET", wrong).status, 401);
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
    let startup = binary
        .lines
        .iter()
        .find(|l| l.contains("listening on"))
        .expect("startup line");
    assert!(
        startup.contains("api_tokens=2 tokens (1 read-only)"),
        "{startup}"
    );
    for line in &binary.lines {
        for secret in [WRITER, READER, "a-wrong-token-0123456789"] {
            assert!(!line.contains(secret), "a token in the log: {line}");
        }
    }
    assert!(
        binary
            .lines
            .iter()
            .any(|l| l.contains(" 403 ") && l.contains("code=token_read_only")),
        "no access line for the refusal: {:#?}",
        binary.lines
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A short token works, and the start warns that it is guessable (without
/// printing it).
#[test]
fn a_short_token_is_a_warning_at_startup() {
    let mut binary = Binary::start(&[("API_TOKENS", "short-1")]);
    let agent = common::agent();
    let events = format!("{}/events", binary.base());
    assert_eq!(
        request_at(&agent, &events, "POST", Some("short-1")).status,
        202
    );
    let warning = binary.wait_for_log("shorter than 16 characters");
    assert!(warning.contains("1 API token(s)"), "{warning}");
    assert!(!warning.contains("short-1"), "{warning}");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(), 0);
}
