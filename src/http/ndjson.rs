//! The body of a batch request: `POST /events` with `Content-Type:
//! application/x-ndjson`, one event per line, each checked by the same
//! rules as a JSON body ([`event::decode_event`]). All or nothing: if one
//! line breaks a rule, the request is refused, naming the lines (the
//! first [`MAX_LINE_ERRORS`]), and nothing is queued.
//!
//! Lines end with `\n` (or `\r\n`); blank lines are skipped but counted,
//! so a line number is the one an editor shows.

use serde::Serialize;

use super::problem::ApiError;
use crate::event::{self, ProductUpdate};

/// The most failing lines a 400 lists (the count says how many in all).
pub const MAX_LINE_ERRORS: usize = 100;

/// A batch request's events, with the line each came from (1-based).
pub struct Batch {
    pub updates: Vec<ProductUpdate>,
    pub lines: Vec<usize>,
}

/// One failing line, as the problem's `errors` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub line: usize,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub detail: String,
    /// For a conflict: the seq the `event_id` was taken with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// Decodes every line, or says which lines break which rule. `max_events`
/// is `MAX_BATCH_EVENTS`; a batch of more than `queue_size` events could
/// never be queued whole.
pub fn decode(body: &[u8], max_events: usize, queue_size: usize) -> Result<Batch, ApiError> {
    // The lines that hold something (an event starts with `{`, so the
    // whole-line scan for blanks is only for the rare line that does not).
    let lines = body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| {
            line.first() == Some(&b'{') || !line.iter().all(|b| matches!(b, b' ' | b'\t'))
        });
    let limit = max_events.min(queue_size);
    let mut batch = Batch {
        // An event line is at least 20 bytes (`{"product_id":"","stock":0}`
        // is the shortest valid one): no reallocation for valid bodies.
        updates: Vec::with_capacity((body.len() / 20 + 1).min(limit)),
        lines: Vec::with_capacity((body.len() / 20 + 1).min(limit)),
    };
    let mut errors = Vec::new();
    let mut failing = 0;
    let mut count = 0;
    for (line, text) in lines {
        count += 1;
        if count > limit {
            // Past the limit: only the count matters now.
            continue;
        }
        match event::decode_event(text) {
            Ok(update) => {
                batch.updates.push(update);
                batch.lines.push(line);
            }
            Err(error) => {
                failing += 1;
                if errors.len() < MAX_LINE_ERRORS {
                    errors.push(LineError {
                        line,
                        code: error.code(),
                        field: error.field().map(str::to_owned),
                        detail: error.to_string(),
                        seq: None,
                    });
                }
            }
        }
    }
    if count == 0 {
        return Err(ApiError::EmptyBatch);
    }
    if count > max_events {
        return Err(ApiError::TooManyEvents {
            count,
            limit: max_events,
            setting: "MAX_BATCH_EVENTS",
        });
    }
    if count > queue_size {
        return Err(ApiError::TooManyEvents {
            count,
            limit: queue_size,
            setting: "QUEUE_SIZE",
        });
    }
    if failing > 0 {
        return Err(ApiError::InvalidBatch {
            errors,
            failing,
            count,
        });
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_as_an_editor_shows_them_and_blank_ones_skipped() {
        let body =
            b"{\"product_id\":\"a\",\"stock\":1}\r\n\n  \n{\"product_id\":\"b\",\"price\":2}\n";
        let batch = decode(body, 10, 10).expect("a valid batch");
        assert_eq!(batch.lines, [1, 4]);
        assert_eq!(&*batch.updates[1].product_id, "b");
    }

    #[test]
    fn every_failing_line_is_named_and_nothing_is_returned() {
        let body =
            b"{\"product_id\":\"a\",\"stock\":1}\n{\"product_id\":\"b\",\"stok\":1}\nnot json\n";
        let Err(ApiError::InvalidBatch {
            errors,
            failing,
            count,
        }) = decode(body, 10, 10)
        else {
            panic!("refused");
        };
        assert_eq!((failing, count), (2, 3));
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[0].code, "unknown_field");
        assert_eq!(errors[0].field.as_deref(), Some("stok"));
        assert_eq!((errors[1].line, errors[1].code), (3, "malformed_json"));
    }

    #[test]
    fn the_limits_are_named() {
        let body = b"{\"product_id\":\"a\",\"stock\":1}\n".repeat(3);
        assert!(matches!(
            decode(&body, 2, 10),
            Err(ApiError::TooManyEvents {
                count: 3,
                limit: 2,
                setting: "MAX_BATCH_EVENTS"
            })
        ));
        assert!(matches!(
            decode(&body, 10, 2),
            Err(ApiError::TooManyEvents {
                setting: "QUEUE_SIZE",
                ..
            })
        ));
        assert_eq!(decode(b"\n \n", 10, 10).err(), Some(ApiError::EmptyBatch));
    }
}
