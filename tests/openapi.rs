//! Keeps `GET /openapi.json` true: a set of requests must produce every
//! documented (path, method, status), every answer's status must be
//! documented for its operation, and every answer's body must match the
//! documented schema for its status and content type.

mod common;

use std::collections::BTreeSet;

use common::{Reply, TestServer, test_config, wait_until};
use product_update_service::Config;
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

/// Checks `value` against the JSON Schema subset the document uses: type
/// (one or several), enum, properties, required, additionalProperties:
/// false, items, minimum, maximum, minLength, maxLength.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
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
        assert!(ok, "{at}: {value} is not {types:?}");
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        assert!(allowed.contains(value), "{at}: {value} not in {allowed:?}");
    }
    if let (Some(n), Some(min)) = (
        value.as_f64(),
        schema.get("minimum").and_then(Value::as_f64),
    ) {
        assert!(n >= min, "{at}: {n} < {min}");
    }
    if let (Some(n), Some(max)) = (
        value.as_f64(),
        schema.get("maximum").and_then(Value::as_f64),
    ) {
        assert!(n <= max, "{at}: {n} > {max}");
    }
    if let Some(s) = value.as_str() {
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            assert!(s.chars().count() as u64 >= min, "{at}: too short");
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            assert!(s.chars().count() as u64 <= max, "{at}: too long");
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
            assert!(object.contains_key(name), "{at}: missing {name} in {value}");
        }
        for (name, member) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(member_schema) => check(doc, member_schema, member, &format!("{at}.{name}")),
                None => assert!(
                    schema.get("additionalProperties") != Some(&Value::Bool(false)),
                    "{at}: undocumented member {name} in {value}"
                ),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"));
        }
    }
}

/// One request of the set, and the documented operation it exercises.
struct Case {
    doc_path: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
    if_none_match: Option<&'static str>,
}

fn case(doc_path: &'static str, method: &'static str, path: &str) -> Case {
    Case {
        doc_path,
        method,
        path: path.to_owned(),
        content_type: None,
        body: None,
        if_none_match: None,
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
    let request = match c.method {
        "get" => match c.if_none_match {
            Some(tags) => server.agent.get(&url).header("If-None-Match", tags).call(),
            None => server.agent.get(&url).call(),
        },
        "head" => server.agent.head(&url).call(),
        "post" => {
            let mut builder = server.agent.post(&url);
            if let Some(ct) = c.content_type {
                builder = builder.header("Content-Type", ct);
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
    assert!(
        reply.header("x-request-id").is_some(),
        "no X-Request-Id on {}",
        c.path
    );
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

#[test]
fn every_documented_operation_and_status_matches_the_live_service() {
    let server = TestServer::start(Config {
        workers: 1,
        queue_size: 4,
        ..test_config()
    });
    let doc = server.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");

    let event = r#"{"product_id":"doc-1","price":49.99,"stock":100}"#;
    let big = format!(r#"{{"product_id":"x","price":1{}}}"#, " ".repeat(70_000));
    let cases = vec![
        post("/events", "application/json", event),
        post(
            "/events",
            "application/json",
            r#"{"product_id":"doc-1","stok":1}"#,
        ),
        post("/events", "application/json", &big),
        post("/events", "text/plain", event),
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
        case("/products/{id}", "get", "/products/doc-1"),
        case("/products/{id}", "get", "/products/none"),
        Case {
            // `*` matches any current tag.
            if_none_match: Some("*"),
            ..case("/products/{id}", "get", "/products/doc-1")
        },
        case("/products/{id}", "get", "/products/%zz"),
        case("/products/{id}", "head", "/products/doc-1"),
        case("/products/{id}", "head", "/products/none"),
        case("/products", "get", "/products?limit=1"),
        case("/products", "get", "/products?limit=0"),
        case("/healthz", "get", "/healthz"),
        case("/readyz", "get", "/readyz"),
        case("/metrics", "get", "/metrics"),
        case("/openapi.json", "get", "/openapi.json"),
    ];
    let mut seen = BTreeSet::new();
    for (i, c) in cases.iter().enumerate() {
        let reply = send(&server, c);
        let status = conform(&doc, c, &reply);
        seen.insert((
            c.doc_path.to_owned(),
            c.method.to_owned(),
            status.to_string(),
        ));
        if i == 0 {
            server.wait_applied();
        }
    }

    // The 503s: a full queue, readiness above high water.
    let paused = server.running.pause_workers();
    let full = wait_until("the queue to refuse an event", || {
        let c = post(
            "/events",
            "application/json",
            r#"{"product_id":"f","stock":1}"#,
        );
        let reply = send(&server, &c);
        (reply.status == 503).then_some((c, reply))
    });
    seen.insert((
        "/events".into(),
        "post".into(),
        conform(&doc, &full.0, &full.1).to_string(),
    ));
    let readyz = case("/readyz", "get", "/readyz");
    let reply = send(&server, &readyz);
    seen.insert((
        "/readyz".into(),
        "get".into(),
        conform(&doc, &readyz, &reply).to_string(),
    ));
    drop(paused);
    server.wait_applied();

    // 507: a second service whose store is full.
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
    let reply = send(&full, &second);
    seen.insert((
        "/events".into(),
        "post".into(),
        conform(&doc, &second, &reply).to_string(),
    ));
    full.shutdown();

    // Every documented (path, method, status) was produced.
    let mut documented = BTreeSet::new();
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
