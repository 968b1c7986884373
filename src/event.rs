//! The data the service speaks: a [`ProductUpdate`] coming in, a [`Product`]
//! going out, and the rules an update must pass before it is queued.
//!
//! Decoding and validation run on the HTTP thread that received the request,
//! so a bad event is answered 400 at once and never reaches the queue.
//! Every rule has its own [`EventError`] variant with a stable `code` and a
//! sentence naming the field, because a silently dropped field (a typo such as
//! `"stok"`) is exactly how "products aren't updating" starts.

use std::fmt;

use std::borrow::Cow;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::product_id::ProductId;

/// Longest accepted `product_id` (and `event_id`), in characters (Unicode
/// code points), as JSON Schema's `maxLength` counts them: the OpenAPI
/// document can then state the rule exactly.
pub const MAX_PRODUCT_ID_CHARS: usize = 128;
/// Largest accepted `price`.
pub const MAX_PRICE: f64 = 1_000_000_000.0;
/// Largest accepted `stock`.
pub const MAX_STOCK: u64 = 1_000_000_000;

/// A validated update: the id and at least one field to set.
///
/// The price is kept as the JSON number the client wrote (`5`, `5.0` or
/// `49.99`), so it reads back exactly as sent, not just as an equal `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductUpdate {
    pub product_id: ProductId,
    pub price: Option<Number>,
    pub stock: Option<u64>,
    /// The client's id for this event, for idempotent retries (see
    /// `queue.rs`). Same rules as a product id.
    pub event_id: Option<Box<str>>,
    /// The client's version of the product's data: orders writes ahead of
    /// `seq` (see `WriteKey` in `store.rs`).
    pub version: Option<u64>,
}

impl ProductUpdate {
    /// A fingerprint of what the event changes, to tell a retry (same
    /// `event_id`, same content) from a conflicting reuse of an id.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a over a fixed encoding of the content, not std's
        // `DefaultHasher`: the durable store keeps fingerprints across
        // restarts (and releases), and std does not promise that its hasher
        // stays the same. Not a defence against a client that crafts
        // collisions, which could only confuse its own retries.
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.bytes(self.product_id.as_bytes());
        h.bytes(&[0xff]);
        // The number's kind and value: 5 and 5.0 are different events
        // here, as they read back differently.
        match &self.price {
            None => h.bytes(&[0]),
            Some(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => h.tagged(1, u),
                (None, Some(i), _) => h.tagged(2, i as u64),
                (None, None, Some(f)) => h.tagged(3, f.to_bits()),
                (None, None, None) => h.bytes(&[4]),
            },
        }
        match self.stock {
            None => h.bytes(&[0]),
            Some(stock) => h.tagged(1, stock),
        }
        match self.version {
            None => h.bytes(&[0]),
            Some(version) => h.tagged(1, version),
        }
        h.0
    }
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn tagged(&mut self, tag: u8, value: u64) {
        self.bytes(&[tag]);
        self.bytes(&value.to_le_bytes());
    }
}

/// A product as `GET /products/{id}` answers it, serialized straight from
/// the id in the request and a copy of the store's values. A field no
/// event has set yet is `None` (JSON `null`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Product<'a> {
    pub product_id: &'a str,
    pub price: Option<Number>,
    pub stock: Option<u64>,
}

/// Why an event body was refused. Each variant is one rule.
#[derive(Debug, Clone, PartialEq)]
pub enum EventError {
    /// The body is not JSON at all (or is cut short). `detail` is the parser's
    /// message with line and column.
    MalformedJson { detail: String },
    /// Valid JSON, but not an object (an array, a string, ...).
    NotAnObject { detail: String },
    /// A complete JSON object followed by more non-whitespace bytes.
    TrailingData { detail: String },
    /// A member the event does not have, e.g. `"stok"`.
    UnknownField { field: String },
    /// The same member twice; which one wins would be a guess.
    DuplicateField { field: &'static str },
    /// `product_id` is absent.
    MissingProductId,
    /// `product_id` is present but breaks a rule; the string says which.
    InvalidProductId { reason: String },
    /// `price` is present but breaks a rule.
    InvalidPrice { reason: String },
    /// `stock` is present but breaks a rule.
    InvalidStock { reason: String },
    /// `event_id` is present but breaks a rule (the product id rules).
    InvalidEventId { reason: String },
    /// `version` is present but not a whole number in range.
    InvalidVersion { reason: String },
    /// Neither `price` nor `stock`: the event would change nothing.
    NoUpdateFields,
}

impl EventError {
    /// Stable machine-readable code, sent as the problem's `code` member.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::MalformedJson { .. } => "malformed_json",
            EventError::NotAnObject { .. } => "not_an_object",
            EventError::TrailingData { .. } => "trailing_data",
            EventError::UnknownField { .. } => "unknown_field",
            EventError::DuplicateField { .. } => "duplicate_field",
            EventError::MissingProductId => "missing_product_id",
            EventError::InvalidProductId { .. } => "invalid_product_id",
            EventError::InvalidPrice { .. } => "invalid_price",
            EventError::InvalidStock { .. } => "invalid_stock",
            EventError::InvalidEventId { .. } => "invalid_event_id",
            EventError::InvalidVersion { .. } => "invalid_version",
            EventError::NoUpdateFields => "no_update_fields",
        }
    }

    /// The member the problem is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::UnknownField { field } => Some(field),
            EventError::DuplicateField { field } => Some(field),
            EventError::MissingProductId | EventError::InvalidProductId { .. } => {
                Some("product_id")
            }
            EventError::InvalidPrice { .. } => Some("price"),
            EventError::InvalidStock { .. } => Some("stock"),
            EventError::InvalidEventId { .. } => Some("event_id"),
            EventError::InvalidVersion { .. } => Some("version"),
            _ => None,
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::MalformedJson { detail } => {
                write!(f, "request body is not valid JSON: {detail}")
            }
            EventError::NotAnObject { detail } => write!(
                f,
                "request body must be one JSON object like {{\"product_id\":\"abc123\",\"price\":49.99,\"stock\":100}}: {detail}"
            ),
            EventError::TrailingData { detail } => write!(
                f,
                "request body must hold exactly one JSON object, but more data follows it: {detail}"
            ),
            EventError::UnknownField { field } => write!(
                f,
                "unknown field {field:?}; an event has only \"product_id\", \"price\", \"stock\", \"event_id\" and \"version\""
            ),
            EventError::DuplicateField { field } => {
                write!(f, "field {field:?} appears more than once; send it once")
            }
            EventError::MissingProductId => {
                write!(f, "field \"product_id\" is required (a non-empty string)")
            }
            EventError::InvalidProductId { reason } => write!(f, "field \"product_id\" {reason}"),
            EventError::InvalidPrice { reason } => write!(f, "field \"price\" {reason}"),
            EventError::InvalidStock { reason } => write!(f, "field \"stock\" {reason}"),
            EventError::InvalidEventId { reason } => write!(f, "field \"event_id\" {reason}"),
            EventError::InvalidVersion { reason } => write!(f, "field \"version\" {reason}"),
            EventError::NoUpdateFields => write!(
                f,
                "an event must set \"price\", \"stock\" or both; this one sets neither"
            ),
        }
    }
}

impl std::error::Error for EventError {}

/// A price-only update of `product_id` (price 1), for tests.
#[cfg(test)]
pub(crate) fn price_update(product_id: &str) -> ProductUpdate {
    ProductUpdate {
        product_id: product_id.into(),
        price: Number::from_f64(1.0),
        stock: None,
        event_id: None,
        version: None,
    }
}

/// Decodes and validates one `POST /events` body.
pub fn decode_event(body: &[u8]) -> Result<ProductUpdate, EventError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EventError::MalformedJson {
            detail: "the body is empty; send a JSON object".to_owned(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = RawEvent::deserialize(&mut de).map_err(|e| classify(&e))?;
    de.end().map_err(|e| EventError::TrailingData {
        detail: e.to_string(),
    })?;
    raw.validate()
}

/// Checks an id from an event or a URL path. Returns the reason it is invalid.
pub fn check_product_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("must not be empty or only whitespace".to_owned());
    }
    // Bytes first: a string of at most 128 bytes has at most 128
    // characters, so the count is only needed for longer ones.
    if id.len() > MAX_PRODUCT_ID_CHARS {
        let chars = id.chars().count();
        if chars > MAX_PRODUCT_ID_CHARS {
            return Err(format!(
                "is {chars} characters long; the limit is {MAX_PRODUCT_ID_CHARS} characters"
            ));
        }
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!("must not contain control characters (found {c:?})"));
    }
    if id.contains('/') {
        return Err("must not contain '/'".to_owned());
    }
    Ok(())
}

/// Maps a serde_json failure to the rule it broke. Unknown and duplicate
/// members never get here (the visitor records them on the [`RawEvent`]), and
/// every member value is read as any JSON value ([`Raw`]), so a `Data` error
/// can only mean the top level was not an object.
fn classify(e: &serde_json::Error) -> EventError {
    match e.classify() {
        serde_json::error::Category::Data => EventError::NotAnObject {
            detail: e.to_string(),
        },
        _ => EventError::MalformedJson {
            detail: e.to_string(),
        },
    }
}

/// The members of an event object, each kept as the raw JSON value so the
/// rules can name the member and say what was wrong with it.
#[derive(Default)]
struct RawEvent<'de> {
    product_id: Option<Raw<'de>>,
    price: Option<Raw<'de>>,
    stock: Option<Raw<'de>>,
    event_id: Option<Raw<'de>>,
    version: Option<Raw<'de>>,
    /// The first rule broken while reading the members (unknown or
    /// duplicate); reported before any value is checked.
    problem: Option<EventError>,
}

enum Member {
    ProductId,
    Price,
    Stock,
    EventId,
    Version,
    Unknown(String),
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MemberVisitor;
        impl Visitor<'_> for MemberVisitor {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "product_id" => Member::ProductId,
                    "price" => Member::Price,
                    "stock" => Member::Stock,
                    "event_id" => Member::EventId,
                    "version" => Member::Version,
                    other => Member::Unknown(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_identifier(MemberVisitor)
    }
}

/// One member's value, as much of it as the rules need: strings borrowed
/// from the body when they have no escapes, numbers as serde_json reads
/// them (`float_roundtrip`), and only the kind of anything else (which is
/// skipped, never built). serde_json's `Value` would allocate for every
/// string and every nested value of every event.
enum Raw<'de> {
    Null,
    Bool,
    Number(Number),
    String(Cow<'de, str>),
    Array,
    Object,
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Raw<'de>, E> {
                Ok(Raw::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Raw<'de>, E> {
                Ok(Raw::Bool)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Raw<'de>, E> {
                Ok(Raw::Number(n.into()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Raw<'de>, E> {
                Ok(Raw::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Raw<'de>, E> {
                // serde_json refuses non-finite numbers before they get here.
                Number::from_f64(n)
                    .map(Raw::Number)
                    .ok_or_else(|| E::custom("a number JSON cannot hold"))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Raw<'de>, E> {
                Ok(Raw::String(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Raw<'de>, E> {
                Ok(Raw::String(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Raw<'de>, E> {
                Ok(Raw::String(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Raw::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Raw::Object)
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEvent<'de>, A::Error> {
                let mut raw = RawEvent::default();
                while let Some(member) = map.next_key::<Member>()? {
                    let (slot, name) = match member {
                        Member::ProductId => (&mut raw.product_id, "product_id"),
                        Member::Price => (&mut raw.price, "price"),
                        Member::Stock => (&mut raw.stock, "stock"),
                        Member::EventId => (&mut raw.event_id, "event_id"),
                        Member::Version => (&mut raw.version, "version"),
                        Member::Unknown(field) => {
                            raw.problem
                                .get_or_insert(EventError::UnknownField { field });
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        raw.problem
                            .get_or_insert(EventError::DuplicateField { field: name });
                    }
                    *slot = Some(map.next_value::<Raw<'de>>()?);
                }
                Ok(raw)
            }
        }
        deserializer.deserialize_map(EventVisitor)
    }
}

impl RawEvent<'_> {
    fn validate(self) -> Result<ProductUpdate, EventError> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        let product_id = match self.product_id {
            None => return Err(EventError::MissingProductId),
            Some(Raw::String(id)) => id,
            Some(other) => {
                return Err(EventError::InvalidProductId {
                    reason: format!("must be a string, not {}", kind(&other)),
                });
            }
        };
        check_product_id(&product_id).map_err(|reason| EventError::InvalidProductId { reason })?;
        let event_id = match self.event_id {
            None => None,
            Some(Raw::String(id)) => {
                check_product_id(&id).map_err(|reason| EventError::InvalidEventId { reason })?;
                Some(Box::from(&*id))
            }
            Some(other) => {
                return Err(EventError::InvalidEventId {
                    reason: format!("must be a string, not {}", kind(&other)),
                });
            }
        };
        let version = self.version.map(check_version).transpose()?;
        let price = self.price.map(check_price).transpose()?;
        let stock = self.stock.map(check_stock).transpose()?;
        if price.is_none() && stock.is_none() {
            return Err(EventError::NoUpdateFields);
        }
        Ok(ProductUpdate {
            // A borrowed id is copied once, an unescaped (owned) one moved.
            product_id: match product_id {
                Cow::Borrowed(id) => ProductId::from(id),
                Cow::Owned(id) => ProductId::from(id),
            },
            price,
            stock,
            event_id,
            version,
        })
    }
}

fn check_price(value: Raw<'_>) -> Result<Number, EventError> {
    let invalid = |reason: String| EventError::InvalidPrice { reason };
    let (number, price) = match value {
        Raw::Number(n) => match n.as_f64() {
            Some(price) => (n, price),
            None => return Err(invalid(format!("must be a finite number, got {n}"))),
        },
        other => {
            return Err(invalid(format!(
                "must be a number, not {}; omit the field to leave the price unchanged",
                kind(&other)
            )));
        }
    };
    if !price.is_finite() {
        return Err(invalid(format!("must be a finite number, got {price}")));
    }
    if price < 0.0 {
        return Err(invalid(format!("must not be negative, got {price}")));
    }
    if price > MAX_PRICE {
        return Err(invalid(format!(
            "is {price}; the maximum is {MAX_PRICE:.0}"
        )));
    }
    // -0.0 passes the checks above; store it as 0 so it reads back as 0.
    if price == 0.0 && price.is_sign_negative() {
        return Ok(Number::from(0u8));
    }
    Ok(number)
}

/// Largest accepted `version` (one below `u64::MAX`, see `WriteKey`).
pub const MAX_VERSION: u64 = u64::MAX - 1;

fn check_version(value: Raw<'_>) -> Result<u64, EventError> {
    let invalid = |reason: String| EventError::InvalidVersion { reason };
    match &value {
        Raw::Number(n) => match whole_number(n) {
            Ok(v) if v <= MAX_VERSION => Ok(v),
            Err(Inexact) => Err(invalid(format!(
                "is {n}, too large to be exact as a JSON number with a fraction or exponent; write versions above 2^53 as plain digits"
            ))),
            _ => Err(invalid(format!(
                "must be a whole number from 0 to {MAX_VERSION}, got {n}"
            ))),
        },
        other => Err(invalid(format!(
            "must be a whole number, not {}",
            kind(other)
        ))),
    }
}

/// Why a JSON number is not a whole number we can use exactly.
struct Inexact;

/// The value of a JSON number that is a non-negative whole number: `7`,
/// and also `7.0` or `7e0`, which JSON Schema's `integer` accepts too (it
/// counts values, not spellings). A number written with a fraction or an
/// exponent is parsed as an `f64`, which is exact up to 2^53; beyond that
/// it is refused as `Inexact` rather than rounded. `Ok(u64::MAX)` stands
/// for "not a non-negative whole number" (negative, fractional, or above
/// `u64`), which every caller refuses as out of range.
fn whole_number(n: &Number) -> Result<u64, Inexact> {
    const EXACT: f64 = (1u64 << 53) as f64;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=EXACT).contains(&f) => Ok(f as u64),
        Some(f) if f.fract() == 0.0 && f > EXACT && f < u64::MAX as f64 => Err(Inexact),
        _ => Ok(u64::MAX),
    }
}

fn check_stock(value: Raw<'_>) -> Result<u64, EventError> {
    let invalid = |reason: String| EventError::InvalidStock { reason };
    let n = match &value {
        Raw::Number(n) => n,
        other => {
            return Err(invalid(format!(
                "must be a whole number, not {}; omit the field to leave the stock unchanged",
                kind(other)
            )));
        }
    };
    if n.as_f64().is_some_and(|f| f < 0.0) {
        return Err(invalid(format!("must not be negative, got {n}")));
    }
    match whole_number(n) {
        Ok(stock) if stock <= MAX_STOCK => Ok(stock),
        _ if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            Err(invalid(format!("is {n}; the maximum is {MAX_STOCK}")))
        }
        _ => Err(invalid(format!("must be a whole number, got {n}"))),
    }
}

fn kind(value: &Raw<'_>) -> &'static str {
    match value {
        Raw::Null => "null",
        Raw::Bool => "a boolean",
        Raw::Number(_) => "a number",
        Raw::String(_) => "a string",
        Raw::Array => "an array",
        Raw::Object => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> ProductUpdate {
        decode_event(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn code(body: &[u8]) -> &'static str {
        match decode_event(body) {
            Ok(update) => panic!(
                "{:?} was accepted as {update:?}",
                String::from_utf8_lossy(body)
            ),
            Err(e) => e.code(),
        }
    }

    #[test]
    fn full_and_partial_events() {
        assert_eq!(
            ok(r#"{"product_id":"abc123","price":49.99,"stock":100}"#),
            ProductUpdate {
                product_id: "abc123".into(),
                price: Number::from_f64(49.99),
                stock: Some(100),
                event_id: None,
                version: None,
            }
        );
        let p = ok(r#" {"stock":0, "product_id":"x"} "#);
        assert_eq!((p.price, p.stock), (None, Some(0)));
        let p = ok(r#"{"product_id":"x","price":0}"#);
        assert_eq!((p.price, p.stock), (Some(Number::from(0u8)), None));
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(code(b""), "malformed_json");
        assert_eq!(code(b"  \n"), "malformed_json");
        assert_eq!(code(b"{"), "malformed_json");
        assert_eq!(code(b"{\"product_id\":\"a\",}"), "malformed_json");
        assert_eq!(code(b"{'product_id':'a'}"), "malformed_json");
        assert_eq!(code(b"\xff\xfe"), "malformed_json");
        assert_eq!(code(br#"{"product_id":"a","price":NaN}"#), "malformed_json");
        assert_eq!(
            code(br#"{"product_id":"a","price":1e999}"#),
            "malformed_json"
        );
        assert_eq!(
            code(b"{\"product_id\":\"\xff\",\"price\":1}"),
            "malformed_json"
        );
    }

    #[test]
    fn shape_errors() {
        assert_eq!(code(b"[]"), "not_an_object");
        assert_eq!(code(b"\"abc\""), "not_an_object");
        assert_eq!(code(b"null"), "not_an_object");
        assert_eq!(code(b"42"), "not_an_object");
        assert_eq!(code(br#"{"product_id":"a","price":1}{}"#), "trailing_data");
        assert_eq!(code(br#"{"product_id":"a","price":1} x"#), "trailing_data");
        assert_eq!(code(br#"{"product_id":"a","stok":1}"#), "unknown_field");
        assert_eq!(
            code(br#"{"product_id":"a","price":1,"Price":2}"#),
            "unknown_field"
        );
        assert_eq!(
            code(br#"{"product_id":"a","price":1,"price":2}"#),
            "duplicate_field"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = decode_event(br#"{"product_id":"a","stok":1}"#).unwrap_err();
        assert_eq!(err.field(), Some("stok"));
        assert!(err.to_string().contains("\"stok\""), "{err}");
    }

    #[test]
    fn product_id_rules() {
        assert_eq!(code(br#"{"price":1}"#), "missing_product_id");
        for bad in [
            r#""""#,
            r#""   ""#,
            r#""\t""#,
            r#"null"#,
            r#"12"#,
            r#""a/b""#,
            r#""a\u0000b""#,
            r#""a\nb""#,
            r#""a\u007fb""#,
        ] {
            let body = format!(r#"{{"product_id":{bad},"price":1}}"#);
            assert_eq!(code(body.as_bytes()), "invalid_product_id", "{body}");
        }
        let long = "x".repeat(MAX_PRODUCT_ID_CHARS + 1);
        let body = format!(r#"{{"product_id":"{long}","price":1}}"#);
        assert_eq!(code(body.as_bytes()), "invalid_product_id");
        let longest = "x".repeat(MAX_PRODUCT_ID_CHARS);
        ok(&format!(r#"{{"product_id":"{longest}","price":1}}"#));
        // The limit counts characters, as JSON Schema's maxLength does:
        // 128 four-byte characters (512 bytes) pass, 129 do not.
        let wide = "😀".repeat(MAX_PRODUCT_ID_CHARS);
        ok(&format!(r#"{{"product_id":"{wide}","price":1}}"#));
        let wider = format!(r#"{{"product_id":"{wide}€","price":1}}"#);
        assert_eq!(code(wider.as_bytes()), "invalid_product_id");
        // Whitespace as Rust's `char::is_whitespace` knows it (the OpenAPI
        // pattern lists the same characters); U+FEFF is not whitespace.
        for only_space in ["\\u00a0", "\\u3000 ", "\\u2028"] {
            let body = format!(r#"{{"product_id":"{only_space}","price":1}}"#);
            assert_eq!(code(body.as_bytes()), "invalid_product_id", "{body}");
        }
        ok(r#"{"product_id":"\ufeff","price":1}"#);
        assert_eq!(
            &*ok(r#"{"product_id":"ünï cödé ☃","price":1}"#).product_id,
            "ünï cödé ☃"
        );
    }

    #[test]
    fn price_rules() {
        for bad in [
            "-0.01",
            "-1",
            "\"49.99\"",
            "null",
            "true",
            "[1]",
            "1000000000.01",
            "1e10",
        ] {
            let body = format!(r#"{{"product_id":"a","price":{bad}}}"#);
            assert_eq!(code(body.as_bytes()), "invalid_price", "{body}");
        }
        let max = ok(r#"{"product_id":"a","price":1000000000}"#)
            .price
            .unwrap();
        assert_eq!(max.as_f64(), Some(MAX_PRICE));
        let zero = ok(r#"{"product_id":"a","price":-0.0}"#).price.unwrap();
        assert_eq!(zero.to_string(), "0");
    }

    #[test]
    fn stock_rules() {
        for bad in [
            "-1",
            "-1.0",
            "1.5",
            "1e-3",
            "\"7\"",
            "null",
            "1000000001",
            "1e10",
            "18446744073709551616",
            "-99999999999999999999",
        ] {
            let body = format!(r#"{{"product_id":"a","stock":{bad}}}"#);
            assert_eq!(code(body.as_bytes()), "invalid_stock", "{body}");
        }
        assert_eq!(
            ok(r#"{"product_id":"a","stock":1000000000}"#).stock,
            Some(MAX_STOCK)
        );
        // A whole number is a whole number however it is written, as for
        // JSON Schema's `integer` (and for clients that hold counts as
        // floats): 100.0 and 1e3 are 100 and 1000; -0.0 is 0.
        for (text, stock) in [
            ("100.0", 100),
            ("1e3", 1000),
            ("1E9", MAX_STOCK),
            ("-0.0", 0),
        ] {
            let body = format!(r#"{{"product_id":"a","stock":{text}}}"#);
            assert_eq!(ok(&body).stock, Some(stock), "{text}");
        }
    }

    #[test]
    fn version_rules() {
        let version = |text: &str| {
            decode_event(format!(r#"{{"product_id":"a","stock":1,"version":{text}}}"#).as_bytes())
                .map(|u| u.version)
                .map_err(|e| e.code())
        };
        assert_eq!(version("0"), Ok(Some(0)));
        assert_eq!(version("18446744073709551614"), Ok(Some(MAX_VERSION)));
        assert_eq!(version("7.0"), Ok(Some(7)));
        assert_eq!(version("9007199254740992.0"), Ok(Some(1 << 53)));
        for bad in ["-1", "1.5", "\"7\"", "18446744073709551615", "1e17", "1e30"] {
            assert_eq!(version(bad), Err("invalid_version"), "{bad}");
        }
        let err = decode_event(br#"{"product_id":"a","stock":1,"version":1e17}"#).unwrap_err();
        assert!(err.to_string().contains("plain digits"), "{err}");
    }

    #[test]
    fn needs_a_field_to_update() {
        assert_eq!(code(br#"{"product_id":"a"}"#), "no_update_fields");
    }

    #[test]
    fn prices_round_trip_exactly() {
        for text in [
            "49.99",
            "0.1",
            "0.3",
            "19.999999999999996",
            "123456789.12345679",
            "5e-324",
        ] {
            let body = format!(r#"{{"product_id":"a","price":{text}}}"#);
            let price = ok(&body).price.unwrap();
            let expected: f64 = text.parse().unwrap();
            assert_eq!(price.as_f64(), Some(expected), "{text}");
            let out = serde_json::to_string(&price).unwrap();
            assert_eq!(out.parse::<f64>().unwrap(), expected, "{text} -> {out}");
        }
        // The client's spelling is kept: an integer stays an integer.
        for text in ["49.99", "5", "5.0", "100", "0.5"] {
            let body = format!(r#"{{"product_id":"a","price":{text}}}"#);
            assert_eq!(serde_json::to_string(&ok(&body).price).unwrap(), text);
        }
        assert_eq!(serde_json::to_string(&49.99f64).unwrap(), "49.99");
    }

    /// Property: any byte string decodes to an event that passes every rule,
    /// or to an error, never a panic. Random bytes, and (more usefully)
    /// valid events with random bytes flipped, inserted or cut, so most
    /// inputs get past the JSON syntax into the rules.
    #[test]
    fn any_bytes_decode_to_a_valid_event_or_an_error() {
        let mut seed: u64 = 0x5EED_1234_ABCD_0001;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let seeds: [&[u8]; 4] = [
            br#"{"product_id":"abc123","price":49.99,"stock":100}"#,
            br#"{"product_id":"a","stock":1,"event_id":"e-1","version":3}"#,
            br#"{"price":-0.0,"product_id":"\u00e9","stock":0}"#,
            br#"[{"product_id":1e999}]"#,
        ];
        let mut outcomes = [0usize; 2];
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 4 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                seeds[(next() % 4) as usize].to_vec()
            };
            for _ in 0..(next() % 4) {
                if input.is_empty() {
                    break;
                }
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => {
                        let alphabet = b"{}[]\":,-0e9.\\";
                        input.insert(at, alphabet[(next() as usize) % alphabet.len()]);
                    }
                    _ => {
                        input.truncate(at);
                    }
                }
            }
            match decode_event(&input) {
                Ok(update) => {
                    outcomes[0] += 1;
                    assert!(check_product_id(&update.product_id).is_ok(), "{input:?}");
                    assert!(
                        update.price.is_some() || update.stock.is_some(),
                        "{input:?}"
                    );
                    if let Some(price) = update.price.as_ref().and_then(Number::as_f64) {
                        assert!((0.0..=MAX_PRICE).contains(&price), "{input:?}");
                    }
                    assert!(update.stock.is_none_or(|s| s <= MAX_STOCK), "{input:?}");
                }
                Err(e) => {
                    outcomes[1] += 1;
                    assert!(!e.code().is_empty() && !e.to_string().is_empty());
                }
            }
        }
        // Both branches were exercised in earnest.
        assert!(outcomes[0] > 1_000 && outcomes[1] > 1_000, "{outcomes:?}");
    }
}
