//! Resource limits (issue 6): each bound holds, and past it the service
//! answers with the same problem details as the rest of the API.

mod common;

use common::{TestServer, test_config};
use product_update_service::Config;

#[test]
fn past_max_products_new_products_are_refused_and_existing_ones_still_update() {
    let server = TestServer::start(Config {
        max_products: 3,
        ..test_config()
    });
    for id in ["a", "b", "c"] {
        let r = server.post_event(&format!(r#"{{"product_id":"{id}","stock":1}}"#));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    server.wait_applied();
    let refused = server.post_event(r#"{"product_id":"d","stock":1}"#);
    let body = refused.assert_problem(507, "product_limit_reached");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("MAX_PRODUCTS"))
    );
    // Updates to existing products still work.
    assert_eq!(
        server.post_event(r#"{"product_id":"b","stock":9}"#).status,
        202
    );
    server.wait_applied();
    assert_eq!(server.get("/products/b").json()["stock"], 9);
    assert_eq!(server.get("/products/d").status, 404);
    assert_eq!(server.stats().products, 3);
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("events_rejected_total{reason=\"product_limit\"} 1\n"),
        "{metrics}"
    );
    server.shutdown();
}
