//! The idempotency window: which `event_id`s were accepted lately, with
//! the seq each got and a fingerprint of its content, so that a retried
//! event is answered "duplicate" (or "conflict", if its content changed)
//! instead of being queued twice.
//!
//! It is plain data with no lock of its own: the [`Intake`](super::Intake)
//! keeps it under the intake lock, so "is it a duplicate?" and "queue it"
//! are one atomic step. Bounded in count and age, so a flood of unique ids
//! cannot grow it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::outcome::{Accepted, Outcome, Refusal};
use crate::store::Seq;

/// An `event_id` remembered across a restart: a durable backend saves
/// these and gives them back at startup (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub event_id: Box<str>,
    pub seq: Seq,
    pub fingerprint: u64,
    /// How long ago the event was accepted.
    pub age: Duration,
}

/// `event_id` → (seq, content fingerprint) for the last `capacity` ids
/// accepted within `ttl`.
pub struct Dedupe {
    by_id: HashMap<Box<str>, (Seq, u64)>,
    /// Ids in the order they were accepted, with when; the oldest leave first.
    order: VecDeque<(Box<str>, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl Dedupe {
    /// A window of at most `capacity` ids (0: off) for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Dedupe {
        Dedupe {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// The answer to an event with `event_id` and `fingerprint` if the id
    /// is in the window: a duplicate of the same content, or a conflict.
    pub fn look_up(&mut self, event_id: &str, fingerprint: u64, now: Instant) -> Option<Outcome> {
        self.forget_old(now);
        let &(seq, seen) = self.by_id.get(event_id)?;
        Some(if seen == fingerprint {
            Ok(Accepted {
                seq,
                duplicate: true,
            })
        } else {
            Err(Refusal::IdempotencyConflict { seq })
        })
    }

    /// Remembers an accepted event's id.
    pub fn remember(&mut self, event_id: Box<str>, seq: Seq, fingerprint: u64, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.by_id.insert(event_id.clone(), (seq, fingerprint));
        self.order.push_back((event_id, now));
        self.forget_old(now);
    }

    /// Puts back ids saved before a restart (oldest first).
    pub fn restore(&mut self, window: Vec<Remembered>, now: Instant) {
        for entry in window {
            let at = now.checked_sub(entry.age).unwrap_or(now);
            self.by_id
                .insert(entry.event_id.clone(), (entry.seq, entry.fingerprint));
            self.order.push_back((entry.event_id, at));
        }
        self.forget_old(now);
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if self.order.len() <= self.capacity && now.duration_since(*at) < self.ttl {
                break;
            }
            self.by_id.remove(id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_is_a_duplicate_and_changed_content_a_conflict() {
        let now = Instant::now();
        let mut window = Dedupe::new(2, Duration::from_secs(60));
        assert_eq!(window.look_up("a", 1, now), None);
        window.remember("a".into(), 7, 1, now);
        let duplicate = Accepted {
            seq: 7,
            duplicate: true,
        };
        assert_eq!(window.look_up("a", 1, now), Some(Ok(duplicate)));
        assert_eq!(
            window.look_up("a", 2, now),
            Some(Err(Refusal::IdempotencyConflict { seq: 7 }))
        );
    }

    #[test]
    fn the_oldest_ids_leave_first_by_count_and_by_age() {
        let start = Instant::now();
        let mut window = Dedupe::new(2, Duration::from_secs(60));
        window.remember("a".into(), 1, 0, start);
        window.remember("b".into(), 2, 0, start);
        window.remember("c".into(), 3, 0, start);
        assert_eq!(window.len(), 2);
        assert_eq!(window.look_up("a", 0, start), None);
        let later = start + Duration::from_secs(61);
        assert_eq!(window.look_up("c", 0, later), None);
        assert!(window.is_empty());
    }

    #[test]
    fn a_window_of_zero_remembers_nothing() {
        let now = Instant::now();
        let mut window = Dedupe::new(0, Duration::from_secs(60));
        window.remember("a".into(), 1, 0, now);
        assert_eq!(window.look_up("a", 0, now), None);
    }
}
