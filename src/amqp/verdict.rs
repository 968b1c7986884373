//! What becomes of a message: the one decision of the RabbitMQ front door,
//! kept apart from the broker so it reads (and is tested) as a table.
//!
//! | the message | verdict |
//! |---|---|
//! | breaks a rule (not JSON, a field out of range, ...) | [`Verdict::Dead`] at once: it can never succeed |
//! | refused for good (`idempotency_conflict`, `product_limit_reached`) | [`Verdict::Dead`] |
//! | refused for now (`queue_full`, `storage_unavailable`, `shutting_down`) | [`Verdict::Retry`], later, through a delay queue |
//! | accepted, in a mode where a 202 means journaled | [`Verdict::Ack`] |
//! | accepted, in memory mode | [`Verdict::AckOnceApplied`]: a 202 there means queued, and a queued event dies with the process, so the broker keeps its copy until the event is in the store |
//! | a duplicate (its id was accepted before) | as its first copy: acknowledged once that one is as safe as a 202 |
//!
//! A message is never nacked with requeue: the broker would put it back
//! where the next delivery of the same shard overtakes it.

use crate::event::EventError;
use crate::intake::{Outcome, Refusal};
use crate::store::Seq;

/// What to do with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledge: the event is as safe as a 202 would make it.
    Ack,
    /// Acknowledge once the watermark reaches `seq`.
    AckOnceApplied(Seq),
    /// Publish it to a delay queue, to come back to its shard later, then
    /// acknowledge it; past the last attempt it is dead instead.
    Retry { code: &'static str, detail: String },
    /// Publish it to the dead-letter queue with its reason, then
    /// acknowledge it.
    Dead { code: &'static str, detail: String },
}

/// A message whose body is not a valid event.
pub fn invalid(error: &EventError) -> Verdict {
    Verdict::Dead {
        code: error.code(),
        detail: error.to_string(),
    }
}

/// A message larger than `MAX_BODY_BYTES`.
pub fn too_large(len: usize, max: usize) -> Verdict {
    Verdict::Dead {
        code: "payload_too_large",
        detail: format!("the message body is {len} bytes, more than the {max} of MAX_BODY_BYTES"),
    }
}

/// A message whose `message_id` cannot serve as its `event_id`.
pub fn invalid_message_id(reason: &str) -> Verdict {
    Verdict::Dead {
        code: "invalid_message_id",
        detail: format!(
            "message_id {reason}; it is used as the event's event_id when the body has none"
        ),
    }
}

/// An event the core answered; `journals` says whether a 202 means the
/// event is journaled (SQLite and PostgreSQL) or only queued (memory).
pub fn of_outcome(outcome: Outcome, journals: bool) -> Verdict {
    match outcome {
        Ok(_) if journals => Verdict::Ack,
        // A duplicate's seq is its first copy's, which may not be applied
        // yet: acknowledged once it is, like the first.
        Ok(accepted) => Verdict::AckOnceApplied(accepted.seq),
        Err(refusal) => {
            let (code, detail) = (refusal.code(), refusal.to_string());
            match refusal {
                Refusal::QueueFull { .. }
                | Refusal::StorageUnavailable
                | Refusal::ShuttingDown
                | Refusal::WithItsBatch => Verdict::Retry { code, detail },
                Refusal::IdempotencyConflict { .. }
                | Refusal::ConflictInCommit
                | Refusal::ProductLimit { .. } => Verdict::Dead { code, detail },
            }
        }
    }
}

/// Past its last attempt, a retry is dead, with the reason of the last
/// refusal.
pub fn after_attempts(verdict: Verdict, attempts: u32, max_attempts: u32) -> Verdict {
    match verdict {
        Verdict::Retry { code, detail } if attempts >= max_attempts => Verdict::Dead {
            code,
            detail: format!("{detail} (gave up after {attempts} attempts: AMQP_MAX_ATTEMPTS)"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::Accepted;

    fn accepted(seq: Seq, duplicate: bool) -> Outcome {
        Ok(Accepted { seq, duplicate })
    }

    #[test]
    fn accepted_events_are_acknowledged_once_as_safe_as_a_202() {
        assert_eq!(of_outcome(accepted(7, false), true), Verdict::Ack);
        assert_eq!(
            of_outcome(accepted(7, false), false),
            Verdict::AckOnceApplied(7)
        );
        assert_eq!(of_outcome(accepted(7, true), true), Verdict::Ack);
        // In memory mode the first copy may still be queued.
        assert_eq!(
            of_outcome(accepted(7, true), false),
            Verdict::AckOnceApplied(7)
        );
    }

    #[test]
    fn refusals_for_now_are_retried_and_for_good_are_dead() {
        let retry = of_outcome(Err(Refusal::QueueFull { capacity: 3 }), true);
        assert!(matches!(
            retry,
            Verdict::Retry {
                code: "queue_full",
                ..
            }
        ));
        for refusal in [Refusal::StorageUnavailable, Refusal::ShuttingDown] {
            assert!(matches!(
                of_outcome(Err(refusal), false),
                Verdict::Retry { .. }
            ));
        }
        let dead = of_outcome(Err(Refusal::IdempotencyConflict { seq: 4 }), true);
        assert!(matches!(
            dead,
            Verdict::Dead {
                code: "idempotency_conflict",
                ..
            }
        ));
        let dead = of_outcome(Err(Refusal::ProductLimit { limit: 9 }), true);
        assert!(matches!(
            dead,
            Verdict::Dead {
                code: "product_limit_reached",
                ..
            }
        ));
    }

    #[test]
    fn the_last_attempt_turns_a_retry_into_a_dead_letter() {
        let retry = || Verdict::Retry {
            code: "queue_full",
            detail: "full".to_owned(),
        };
        assert_eq!(after_attempts(retry(), 4, 5), retry());
        match after_attempts(retry(), 5, 5) {
            Verdict::Dead { code, detail } => {
                assert_eq!(code, "queue_full");
                assert!(detail.contains("AMQP_MAX_ATTEMPTS"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(after_attempts(Verdict::Ack, 9, 5), Verdict::Ack);
    }
}
