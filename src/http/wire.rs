//! Wire helpers: the small parsing and checking jobs between a raw request
//! and a handler. The body with its limit, the `Content-Type` check,
//! `If-None-Match`, percent-decoding of a path segment, query parameters,
//! the list cursor.
//! No state, no I/O of their own.

use std::borrow::Cow;

use tiny_http::inline::{BodyError, Request};

use super::problem::ApiError;
use crate::config::Config;
use crate::store::Tag;

/// `application/json`, with any parameters and in any case, or no
/// Content-Type at all. Anything else is a 415.
pub fn check_content_type(request: &Request<'_>) -> Result<BodyFormat, ApiError> {
    let Some(value) = request.header("Content-Type") else {
        return Ok(BodyFormat::Json);
    };
    let media_type = value
        .split_once(';')
        .map_or(value, |(media_type, _)| media_type)
        .trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(BodyFormat::Json)
    } else if media_type.eq_ignore_ascii_case("application/x-ndjson") {
        Ok(BodyFormat::Ndjson)
    } else {
        Err(ApiError::UnsupportedMediaType {
            found: value.to_owned(),
        })
    }
}

/// What a `POST /events` body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One event (`application/json`, or no `Content-Type`).
    Json,
    /// One event per line (`application/x-ndjson`): a batch request.
    Ndjson,
}

/// The whole body, at most `MAX_BODY_BYTES`: a declared `Content-Length`
/// over the limit is refused before anything is read, a chunked body is
/// cut off one byte past it. Under `BODY_TIMEOUT` (the connection's body
/// deadline) and `SOCKET_TIMEOUT` (any one read).
pub fn read_body<'r>(request: &'r mut Request<'_>, config: &Config) -> Result<&'r [u8], ApiError> {
    read_body_within(request, config, config.max_body_bytes, "MAX_BODY_BYTES")
}

/// As [`read_body`], with the limit of `setting`.
pub fn read_body_within<'r>(
    request: &'r mut Request<'_>,
    config: &Config,
    limit: usize,
    setting: &'static str,
) -> Result<&'r [u8], ApiError> {
    request.read_body(limit).map_err(|e| match e {
        BodyError::TooLarge { declared } => ApiError::PayloadTooLarge {
            limit,
            declared: declared.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            setting,
        },
        BodyError::TimedOut => body_timeout(config),
        e @ BodyError::Incomplete { .. } => ApiError::UnreadableBody {
            detail: e.to_string(),
        },
        BodyError::Invalid(e) => ApiError::UnreadableBody {
            detail: e.to_string(),
        },
    })
}

/// The 408 for a body that did not arrive in time.
pub fn body_timeout(config: &Config) -> ApiError {
    ApiError::BodyTimeout {
        limit: config.body_timeout,
        stall: config.socket_timeout,
    }
}

/// Decodes `%XX` escapes in a path segment. Borrows when there are none.
pub fn percent_decode(segment: &str) -> Result<Cow<'_, str>, ApiError> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::InvalidPath {
                    detail: format!(
                        "'%' at byte {i} of the product id is not followed by two hex digits"
                    ),
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| ApiError::InvalidPath {
            detail: "the product id decodes to bytes that are not UTF-8".to_owned(),
        })
}

/// Whether `If-None-Match` names `tag`, or is `*`: the weak comparison of
/// RFC 9110 (a `W/` prefix is ignored), over a comma-separated list.
pub fn if_none_match_names(request: &Request<'_>, tag: &Tag) -> bool {
    request.header("If-None-Match").is_some_and(|tags| {
        tags.split(',').any(|t| {
            let t = t.trim();
            let t = t.strip_prefix("W/").unwrap_or(t);
            t == "*"
                || t.strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .is_some_and(|t| tag_is(t, tag))
        })
    })
}

/// Whether the text of an entity tag (without its quotes) is `tag`,
/// compared without formatting `tag` into a string.
fn tag_is(text: &str, tag: &Tag) -> bool {
    use std::fmt::Write;
    struct Compare<'a> {
        rest: &'a str,
        same: bool,
    }
    impl Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match self.rest.strip_prefix(s) {
                Some(rest) if self.same => self.rest = rest,
                _ => self.same = false,
            }
            Ok(())
        }
    }
    let mut compare = Compare {
        rest: text,
        same: true,
    };
    let _ = write!(compare, "{tag}");
    compare.same && compare.rest.is_empty()
}

/// The `name=value` pairs of a query string, in order; empty pairs are
/// skipped and a pair without `=` has an empty value. Values are used as
/// they are: every parameter this API has is digits or hex.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The 400 for a query parameter that breaks its rule.
pub fn invalid_query(parameter: &str, detail: impl Into<String>) -> ApiError {
    ApiError::InvalidQuery {
        parameter: parameter.to_owned(),
        detail: detail.into(),
    }
}

/// Cursors are the last id of a page, hex-encoded: opaque, and safe in a
/// URL without any escaping.
pub fn cursor_encode(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Any even number of hex digits (either case) is a cursor: the bytes mark
/// a place in the id order, whether or not they are an id (see
/// `Store::list_after`). So the OpenAPI pattern `^([0-9A-Fa-f]{2})*$` is
/// the whole rule.
pub fn cursor_decode(cursor: &str) -> Option<Vec<u8>> {
    if !cursor.len().is_multiple_of(2) {
        return None;
    }
    (0..cursor.len())
        .step_by(2)
        .map(|i| {
            let pair = cursor.get(i..i + 2)?;
            // `from_str_radix` alone would take a sign: "+f" is not hex.
            pair.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| u8::from_str_radix(pair, 16).ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc").unwrap(), "abc");
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
        assert_eq!(percent_decode("%E2%82%AC").unwrap(), "€");
        assert_eq!(percent_decode("a%2fb").unwrap(), "a/b");
        assert_eq!(percent_decode("a+b").unwrap(), "a+b");
        for bad in ["%", "%4", "%zz", "a%g1", "%ff", "%C3", "%+1"] {
            assert_eq!(
                percent_decode(bad).unwrap_err().code(),
                "invalid_path",
                "{bad}"
            );
        }
    }

    #[test]
    fn query_pairs_in_order() {
        let pairs: Vec<_> = query_pairs("a=1&&b&c=x=y").collect();
        assert_eq!(pairs, [("a", "1"), ("b", ""), ("c", "x=y")]);
    }

    #[test]
    fn cursors_round_trip_and_any_hex_is_one() {
        assert_eq!(cursor_decode(&cursor_encode("item-7")).unwrap(), b"item-7");
        assert_eq!(cursor_decode("").unwrap(), b"");
        assert_eq!(cursor_decode("FF00").unwrap(), [0xff, 0]);
        for bad in ["f", "zz", "+f", "0g"] {
            assert!(cursor_decode(bad).is_none(), "{bad}");
        }
    }
}
