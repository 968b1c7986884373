//! The README's "Using it from your tests" example, as a user's crate runs
//! it: start the service in-process on a free port, post an event, read it
//! back with `min_seq`, shut down and check the report.

use product_update_service::{Config, start};

#[test]
fn start_post_read_back_and_shut_down() -> Result<(), Box<dyn std::error::Error>> {
    let running = start(Config {
        bind: "127.0.0.1:0".parse()?,
        ..Config::default()
    })?;
    let base = format!("http://{}", running.local_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();

    let mut posted = agent
        .post(format!("{base}/events"))
        .header("Content-Type", "application/json")
        .send(r#"{"product_id":"abc123","price":49.99,"stock":100}"#)?;
    assert_eq!(posted.status(), 202);
    let ack: serde_json::Value = serde_json::from_str(&posted.body_mut().read_to_string()?)?;
    let seq = ack["seq"].as_u64().expect("a seq in the 202");

    let mut got = agent
        .get(format!("{base}/products/abc123?min_seq={seq}"))
        .call()?;
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["X-Caught-Up"], "true");
    let product: serde_json::Value = serde_json::from_str(&got.body_mut().read_to_string()?)?;
    assert_eq!(product["price"], 49.99);
    assert_eq!(product["stock"], 100);

    let report = running.shutdown()?;
    assert_eq!(
        (report.accepted, report.applied, report.not_applied),
        (1, 1, 0)
    );
    Ok(())
}
