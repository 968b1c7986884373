//! Keeps `GET /openapi.json` true: a set of requests must produce every
//! documented (path, method, status), every answer's status must be
//! documented for its operation, every answer must carry the headers
//! documented as required, and every answer's body must match the
//! documented schema for its status and content type.
//!
//! This is the fast check inside `cargo test`. CI also runs schemathesis
//! against the release binary (`scripts/schemathesis.sh`), which generates
//! requests from the document itself, valid and invalid, and checks the
//! rules this file cannot (the `pattern`s, for one).

mod common;

use std::collections::BTreeSet;

use common::{Reply, TestServer, test_config, wait_until};
use product_update_service::Config;
use product_update_service::config::{ApiTokens, PublicPaths};
use serde_json::Value;

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {reference}")),
            )
        }
        None => node,
    }
}

/// `assert!` for `validate`: returns the message instead of panicking.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {{
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($message)+));
        }
    }};
}

/// Checks `value` against the JSON Schema subset the document uses: type
/// (one or several), enum, properties, required, additionalProperties:
/// false, items, minimum, maximum, minLength, maxLength, anyOf, oneOf.
/// `pattern` is not checked here (no regex engine among the test
/// dependencies); schemathesis checks it in CI.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Err(problem) = validate(doc, schema, value, at) {
        panic!("{problem}");
    }
}

/// `check`, as a result: the first rule `value` breaks.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => panic!("bad type {other}"),
        };
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            other => panic!("unknown type {other}"),
        });
        ensure!(ok, "{at}: {value} is not {types:?}");
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        ensure!(allowed.contains(value), "{at}: {value} not in {allowed:?}");
    }
    if let (Some(n), Some(min)) = (
        value.as_f64(),
        schema.get("minimum").and_then(Value::as_f64),
    ) {
        ensure!(n >= min, "{at}: {n} < {min}");
    }
    if let (Some(n), Some(max)) = (
        value.as_f64(),
        schema.get("maximum").and_then(Value::as_f64),
    ) {
        ensure!(n <= max, "{at}: {n} > {max}");
    }
    if let Some(s) = value.as_str() {
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            ensure!(s.chars().count() as u64 >= min, "{at}: too short");
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            ensure!(s.chars().count() as u64 <= max, "{at}: too long");
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().expect("required name");
            ensure!(object.contains_key(name), "{at}: missing {name} in {value}");
        }
        for (name, member) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(member_schema) => {
                    validate(doc, member_schema, member, &format!("{at}.{name}"))?
                }
                None => ensure!(
                    schema.get("additionalProperties") != Some(&Value::Bool(false)),
                    "{at}: undocumented member {name} in {value}"
                ),
            }
        }
    }
    if let Some(any_of) = schema.get("anyOf").and_then(Value::as_array) {
        ensure!(
            any_of.iter().any(|s| validate(doc, s, value, at).is_ok()),
            "{at}: {value} matches none of anyOf"
        );
    }
    if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = one_of
            .iter()
            .filter(|s| validate(doc, s, value, at).is_ok())
            .count();
        ensure!(matching == 1, "{at}: {value} matches {matching} of oneOf");
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// One request of the set, and the documented operation it exercises.
struct Case {
    doc_path: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
    if_none_match: Option<&'static str>,
    /// `Authorization: Bearer <token>`.
    token: Option<&'static str>,
}

fn case(doc_path: &'static str, method: &'static str, path: &str) -> Case {
    Case {
        doc_path,
        method,
        path: path.to_owned(),
        content_type: None,
        body: None,
        if_none_match: None,
        token: None,
    }
}

fn post(path: &str, content_type: &'static str, body: &str) -> Case {
    Case {
        content_type: Some(content_type),
        body: Some(body.to_owned()),
        ..case("/events", "post", path)
    }
}

fn send(server: &TestServer, c: &Case) -> Reply {
    let url = server.url(&c.path);
    let bearer = c.token.map(|t| format!("Bearer {t}"));
    let request = match c.method {
        "get" | "head" => {
            let mut builder = if c.method == "get" {
                server.agent.get(&url)
            } else {
                server.agent.head(&url)
            };
            if let Some(tags) = c.if_none_match {
                builder = builder.header("If-None-Match", tags);
            }
            if let Some(bearer) = &bearer {
                builder = builder.header("Authorization", bearer);
            }
            builder.call()
        }
        "post" => {
            let mut builder = server.agent.post(&url);
            if let Some(ct) = c.content_type {
                builder = builder.header("Content-Type", ct);
            }
            if let Some(bearer) = &bearer {
                builder = builder.header("Authorization", bearer);
            }
            builder.send(c.body.as_deref().unwrap_or(""))
        }
        other => panic!("method {other}"),
    };
    common::read_reply(request)
}

/// Checks one answer against the document; returns its status.
fn conform(doc: &Value, c: &Case, reply: &Reply) -> u16 {
    let operation = doc["paths"][c.doc_path][c.method].clone();
    assert!(
        operation.is_object(),
        "{} {} is not documented",
        c.method,
        c.doc_path
    );
    let status = reply.status.to_string();
    let documented = resolve(doc, &operation["responses"][&status]);
    assert!(
        documented.is_object(),
        "{} {} answered {status}, which is not documented: {}",
        c.method,
        c.path,
        reply.body
    );
    for (name, header) in documented
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let header = resolve(doc, header);
        if header.get("required") == Some(&Value::Bool(true)) {
            assert!(
                reply.header(name).is_some(),
                "{} {} {status}: no {name} header, documented as required",
                c.method,
                c.path
            );
        }
    }
    assert!(
        reply.header("x-request-id").is_some(),
        "no X-Request-Id on {}",
        c.path
    );
    if c.method == "head" {
        assert!(reply.body.is_empty(), "HEAD {} has a body", c.path);
        assert!(
            documented.get("content").is_none(),
            "HEAD {} {status} documents a body",
            c.path
        );
    }
    if let Some(content) = documented.get("content").and_then(Value::as_object) {
        let content_type = reply.header("content-type").expect("a content type");
        let media = content.get(content_type).unwrap_or_else(|| {
            panic!(
                "{} {}: content type {content_type} not documented",
                c.method, c.path
            )
        });
        if content_type.contains("json") {
            let body: Value = serde_json::from_str(&reply.body).expect("JSON body");
            check(
                doc,
                &media["schema"],
                &body,
                &format!("{} {} {status}", c.method, c.path),
            );
        }
    }
    reply.status
}

/// A (path, method, status) the live service produced.
type Produced = BTreeSet<(String, String, String)>;

#[test]
fn every_documented_operation_and_status_matches_the_live_service() {
    let server = TestServer::start(Config {
        workers: 1,
        queue_size: 4,
        ..test_config()
    });
    let doc = server.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut seen = Produced::new();
    routed_answers(&server, &doc, &mut seen);
    full_queue_answers(&server, &doc, &mut seen);
    full_store_answer(&doc, &mut seen);
    token_answers(&doc, &mut seen);
    // The answers the HTTP layer gives before routing, on any path.
    for status in before_routing(&doc) {
        for (path, method) in operations(&doc) {
            seen.insert((path, method, status.to_string()));
        }
    }
    // Every documented (path, method, status) was produced.
    let mut documented = Produced::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if method == "parameters" {
                continue;
            }
            for status in operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
            {
                documented.insert((path.clone(), method.clone(), status.clone()));
            }
        }
    }
    let missing: Vec<_> = documented.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "documented but never produced: {missing:?}"
    );
    server.shutdown();
}

/// Sends `c`, checks the answer against the document, and notes it.
fn produce(server: &TestServer, doc: &Value, c: &Case, seen: &mut Produced) -> u16 {
    let reply = send(server, c);
    let status = conform(doc, c, &reply);
    seen.insert((
        c.doc_path.to_owned(),
        c.method.to_owned(),
        status.to_string(),
    ));
    status
}

const EVENT: &str = r#"{"product_id":"doc-1","price":49.99,"stock":100}"#;
const NDJSON: &str = "application/x-ndjson";
/// A batch request with event ids: a second copy is all duplicates.
const BATCH: &str = "{\"product_id\":\"doc-3\",\"stock\":1,\"event_id\":\"batch-1\"}\n{\"product_id\":\"doc-3\",\"price\":2,\"event_id\":\"batch-2\"}\n";

/// Every route's ordinary answers and the errors of its input.
fn routed_answers(server: &TestServer, doc: &Value, seen: &mut Produced) {
    let big = format!(r#"{{"product_id":"x","price":1{}}}"#, " ".repeat(70_000));
    let many = "{\"product_id\":\"doc-5\",\"stock\":1}\n".repeat(1001);
    let cases = vec![
        post("/events", "application/json", EVENT),
        post(
            "/events",
            "application/json",
            r#"{"product_id":"doc-1","stok":1}"#,
        ),
        post("/events", "application/json", &big),
        post("/events", "text/plain", EVENT),
        post(
            "/events",
            "application/json",
            r#"{"product_id":"doc-2","stock":1,"event_id":"once"}"#,
        ),
        post(
            "/events",
            "application/json",
            r#"{"product_id":"doc-2","stock":1,"event_id":"once"}"#,
        ),
        post(
            "/events",
            "application/json",
            r#"{"product_id":"doc-2","stock":2,"event_id":"once"}"#,
        ),
        // Batch requests (NDJSON): taken, all duplicates, a bad line, a
        // reused event_id, empty, too many events.
        post("/events", NDJSON, BATCH),
        post("/events", NDJSON, BATCH),
        post(
            "/events",
            NDJSON,
            "{\"product_id\":\"doc-4\",\"stock\":1}\n{\"product_id\":\"doc-4\",\"stok\":1}\n",
        ),
        post(
            "/events",
            NDJSON,
            "{\"product_id\":\"doc-3\",\"stock\":9,\"event_id\":\"batch-1\"}\n",
        ),
        post("/events", NDJSON, "\n"),
        post("/events", NDJSON, &many),
        case("/products/{id}", "get", "/products/doc-1"),
        case("/products/{id}", "get", "/products/none"),
        Case {
            // `*` matches any current tag.
            if_none_match: Some("*"),
            ..case("/products/{id}", "get", "/products/doc-1")
        },
        case("/products/{id}", "get", "/products/%zz"),
        case("/products/{id}", "get", "/products/doc-1?min_seq=x"),
        case("/products/{id}", "head", "/products/doc-1"),
        case("/products/{id}", "head", "/products/none"),
        case("/products/{id}", "head", "/products/%ff"),
        Case {
            if_none_match: Some("*"),
            ..case("/products/{id}", "head", "/products/doc-1")
        },
        case("/products", "get", "/products?limit=1"),
        case("/products", "get", "/products?limit=0"),
        case("/products", "get", "/products?cursor=ff00"),
        case("/products", "head", "/products?limit=1"),
        case("/products", "head", "/products?cursor=odd"),
        case("/healthz", "get", "/healthz"),
        case("/healthz", "head", "/healthz"),
        case("/readyz", "get", "/readyz"),
        case("/readyz", "head", "/readyz"),
        case("/metrics", "get", "/metrics"),
        case("/metrics", "head", "/metrics"),
        case("/openapi.json", "get", "/openapi.json"),
        case("/openapi.json", "head", "/openapi.json"),
    ];
    for (i, c) in cases.iter().enumerate() {
        produce(server, doc, c, seen);
        if i == 0 {
            server.wait_applied();
        }
    }
}

/// The 503s: a full queue, readiness above high water.
fn full_queue_answers(server: &TestServer, doc: &Value, seen: &mut Produced) {
    let paused = server.running.pause_workers();
    let full = wait_until("the queue to refuse an event", || {
        let c = post(
            "/events",
            "application/json",
            r#"{"product_id":"f","stock":1}"#,
        );
        let reply = send(server, &c);
        (reply.status == 503).then_some((c, reply))
    });
    seen.insert((
        "/events".into(),
        "post".into(),
        conform(doc, &full.0, &full.1).to_string(),
    ));
    for method in ["get", "head"] {
        produce(server, doc, &case("/readyz", method, "/readyz"), seen);
    }
    drop(paused);
    server.wait_applied();
}

/// 507: a second service whose store is full.
fn full_store_answer(doc: &Value, seen: &mut Produced) {
    let full = TestServer::start(Config {
        max_products: 1,
        ..test_config()
    });
    let first = post(
        "/events",
        "application/json",
        r#"{"product_id":"one","stock":1}"#,
    );
    assert_eq!(send(&full, &first).status, 202);
    full.wait_applied();
    let second = post(
        "/events",
        "application/json",
        r#"{"product_id":"two","stock":1}"#,
    );
    assert_eq!(produce(&full, doc, &second, seen), 507);
    full.shutdown();
}

/// 401 and 403: a service with tokens and no public route.
fn token_answers(doc: &Value, seen: &mut Produced) {
    let guarded = TestServer::start(Config {
        api_tokens: ApiTokens::parse("read:reader-0123456789abcdef", ',').expect("token"),
        public_paths: PublicPaths::parse("none").expect("none"),
        ..test_config()
    });
    for (path, method) in operations(doc) {
        let concrete = path.replace("{id}", "doc-1");
        let c = match method.as_str() {
            "post" => post(&concrete, "application/json", EVENT),
            _ => Case {
                method: if method == "get" { "get" } else { "head" },
                ..case(doc_path(&path), "get", &concrete)
            },
        };
        assert_eq!(produce(&guarded, doc, &c, seen), 401, "{method} {path}");
    }
    let read_only = Case {
        token: Some("reader-0123456789abcdef"),
        ..post("/events", "application/json", EVENT)
    };
    assert_eq!(produce(&guarded, doc, &read_only, seen), 403);
    guarded.shutdown();
}

/// `path` as one of the documented paths (a `Case` names its path so).
fn doc_path(path: &str) -> &'static str {
    [
        "/events",
        "/products",
        "/products/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ]
    .into_iter()
    .find(|known| *known == path)
    .unwrap_or_else(|| panic!("{path} is documented but not known to this test"))
}

/// Every (path, method) the document has.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if method != "parameters" {
                all.push((path.clone(), method.clone()));
            }
        }
    }
    all
}

/// Produces each answer the HTTP layer gives before a request is routed
/// (so whatever its path): checks that every operation documents its
/// status, and that its body is the documented problem. Returns the
/// statuses. 400 and 503 are produced by routed requests as well; here
/// their pre-routing codes are checked against every operation.
fn before_routing(doc: &Value) -> Vec<u16> {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;
    let server = TestServer::start(Config {
        header_timeout: Duration::from_millis(200),
        max_connections: 2,
        ..test_config()
    });
    let addr = server.running.local_addr();
    let long = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "x".repeat(40_000)
    );
    let refusals: Vec<(u16, &str, Vec<u8>)> = vec![
        (400, "malformed_request", b"NOT HTTP\r\n\r\n".to_vec()),
        (
            400,
            "invalid_content_length",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n".to_vec(),
        ),
        (
            408,
            "header_timeout",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n".to_vec(),
        ),
        (
            417,
            "expectation_failed",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nExpect: the-moon\r\n\r\n".to_vec(),
        ),
        (431, "header_too_large", long.into_bytes()),
        (
            505,
            "http_version_not_supported",
            b"GET /healthz HTTP/2.0\r\n\r\n".to_vec(),
        ),
        (
            400,
            "invalid_host",
            b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            501,
            "unsupported_transfer_encoding",
            b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
        ),
    ];
    let mut statuses = Vec::new();
    let mut check_everywhere = |reply: &Reply, status: u16, code: &str| {
        let body = reply.assert_problem(status, code);
        for (path, method) in operations(doc) {
            let documented = resolve(
                doc,
                &doc["paths"][&path][&method]["responses"][status.to_string()],
            );
            assert!(
                documented.is_object(),
                "{method} {path} does not document {status} ({code}), answered before routing"
            );
            if method != "head" {
                let schema = &documented["content"]["application/problem+json"]["schema"];
                check(doc, schema, &body, &format!("{code} for {method} {path}"));
            }
        }
        statuses.push(status);
    };
    // Before each connection the earlier ones must be gone on the server's
    // side too: a connection is counted until its thread has finished with
    // it, a moment after the client sees it closed, and with a limit of two
    // a new one arriving in that moment would be refused 503.
    let let_go = || {
        wait_until("the earlier connections to be let go", || {
            (server.running.stats().open_connections == 0).then_some(())
        })
    };
    for (status, code, request) in &refusals {
        let_go();
        let reply = common::exchange_expecting_close(addr, request);
        check_everywhere(&reply, *status, code);
    }
    // 503 too_many_connections: hold every connection the limit allows.
    let_go();
    // Busy, not idle (an idle one would be closed to make room): readers
    // waiting for a seq that will not come.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /products/x?min_seq=999999&wait=5 HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            s
        })
        .collect();
    wait_until("both held connections to be busy", || {
        (server.running.stats().waiting_readers == 2).then_some(())
    });
    let reply = common::exchange_expecting_close(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    check_everywhere(&reply, 503, "too_many_connections");
    drop(held);
    server.shutdown();
    statuses
}
