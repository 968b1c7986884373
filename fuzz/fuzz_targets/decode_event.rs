//! Any bytes as a `POST /events` body: the decoder must return a valid event
//! or an error, never panic, and an accepted event must pass every rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use product_update_service::event::{
    MAX_PRICE, MAX_STOCK, check_product_id, decode_event,
};

fuzz_target!(|body: &[u8]| {
    if let Ok(update) = decode_event(body) {
        assert!(check_product_id(&update.product_id).is_ok());
        assert!(update.price.is_some() || update.stock.is_some());
        if let Some(price) = update.price.as_ref().and_then(|p| p.as_f64()) {
            assert!((0.0..=MAX_PRICE).contains(&price));
        }
        assert!(update.stock.is_none_or(|s| s <= MAX_STOCK));
    }
});
