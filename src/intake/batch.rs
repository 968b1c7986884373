//! A batch request's events (`POST /events` with NDJSON), all or none: how
//! each stands before it is numbered, and whether the batch can be taken
//! whole. The intake (memory and SQLite `async` modes) and the committers
//! (SQLite `commit`/`fsync`, PostgreSQL) each know the ids taken before
//! their own way, and ask this file the same two questions:
//!
//! 1. [`stand`]: which events are new (numbered from a first seq, in
//!    order, so that a batch's new events get consecutive seqs), which
//!    repeat an id taken before or earlier in the batch (a duplicate with
//!    the same content, a conflict with other content);
//! 2. [`refuse_unless_whole`]: a conflict, or too little room in the
//!    queue for every new event, refuses every event of the batch.
//!
//! Nothing here takes an event: the caller does, under its own lock, once
//! the batch is known to be whole.

use std::collections::HashMap;

use super::outcome::{Outcome, Refusal};
use crate::store::Seq;

/// How one event of a batch stands before it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its `event_id` was taken before the batch: the duplicate's (or the
    /// conflict's) answer.
    Known(Outcome),
    /// New: it gets this seq.
    Fresh(Seq),
    /// The same `event_id` and content as the batch's event of this seq:
    /// a duplicate of it.
    SameAs(Seq),
    /// The same `event_id` as the batch's event of this seq, other content.
    Conflict(Seq),
}

/// How each event stands, given its `event_id` and content fingerprint (0
/// without an id), the new ones numbered from `first` on; `seen` answers
/// for an id taken before the batch. Returns the standings and how many
/// events are new.
pub fn stand<'a>(
    events: impl ExactSizeIterator<Item = (Option<&'a str>, u64)>,
    first: Seq,
    mut seen: impl FnMut(&str, u64) -> Option<Outcome>,
) -> (Vec<Standing>, usize) {
    let mut in_batch: HashMap<&str, (Seq, u64)> = HashMap::new();
    let mut standings = Vec::with_capacity(events.len());
    let mut fresh = 0;
    for (event_id, fingerprint) in events {
        if let Some(event_id) = event_id {
            if let Some(outcome) = seen(event_id, fingerprint) {
                standings.push(Standing::Known(outcome));
                continue;
            }
            if let Some(&(seq, earlier)) = in_batch.get(event_id) {
                standings.push(if earlier == fingerprint {
                    Standing::SameAs(seq)
                } else {
                    Standing::Conflict(seq)
                });
                continue;
            }
        }
        let seq = first + fresh as Seq;
        fresh += 1;
        if let Some(event_id) = event_id {
            in_batch.insert(event_id, (seq, fingerprint));
        }
        standings.push(Standing::Fresh(seq));
    }
    (standings, fresh)
}

/// `None` if the batch can be taken whole: no event conflicts, and the
/// `fresh` new ones fit in `room`. Otherwise every event's refusal: all
/// [`Refusal::QueueFull`] if there is no room, else each conflicting event
/// its conflict and every other [`Refusal::WithItsBatch`].
pub fn refuse_unless_whole(
    standings: &[Standing],
    fresh: usize,
    room: usize,
    capacity: usize,
) -> Option<Vec<Outcome>> {
    let conflict = |standing: &Standing| match *standing {
        Standing::Known(Err(refusal)) => Some(refusal),
        // The earlier event's seq was never given out: the batch is refused.
        Standing::Conflict(_) => Some(Refusal::ConflictInCommit),
        _ => None,
    };
    if standings.iter().any(|s| conflict(s).is_some()) {
        return Some(
            standings
                .iter()
                .map(|s| Err(conflict(s).unwrap_or(Refusal::WithItsBatch)))
                .collect(),
        );
    }
    (fresh > room).then(|| vec![Err(Refusal::QueueFull { capacity }); standings.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProductUpdate;
    use crate::intake::Accepted;

    fn event(event_id: Option<&str>, stock: u64) -> ProductUpdate {
        ProductUpdate {
            product_id: "p".into(),
            price: None,
            stock: Some(stock),
            event_id: event_id.map(Into::into),
            version: None,
        }
    }

    /// Each event's id and fingerprint, as `stand` takes them.
    fn ids(updates: &[ProductUpdate]) -> impl ExactSizeIterator<Item = (Option<&str>, u64)> {
        updates.iter().map(|u| {
            let fingerprint = u.event_id.as_ref().map_or(0, |_| u.fingerprint());
            (u.event_id.as_deref(), fingerprint)
        })
    }

    #[test]
    fn new_events_are_numbered_in_order_and_repeats_take_no_seq() {
        let updates = [
            event(Some("a"), 1),
            event(None, 2),
            event(Some("a"), 1),
            event(Some("old"), 3),
            event(None, 4),
        ];
        let old = Ok(Accepted {
            seq: 7,
            duplicate: true,
        });
        let (standings, fresh) = stand(ids(&updates), 10, |id, _| (id == "old").then_some(old));
        assert_eq!(
            standings,
            [
                Standing::Fresh(10),
                Standing::Fresh(11),
                Standing::SameAs(10),
                Standing::Known(old),
                Standing::Fresh(12),
            ]
        );
        assert_eq!(fresh, 3);
        assert_eq!(refuse_unless_whole(&standings, fresh, 3, 100), None);
        assert_eq!(
            refuse_unless_whole(&standings, fresh, 2, 100),
            Some(vec![Err(Refusal::QueueFull { capacity: 100 }); 5])
        );
    }

    #[test]
    fn a_conflict_refuses_every_event_of_the_batch() {
        let updates = [event(Some("a"), 1), event(None, 2), event(Some("a"), 9)];
        let (standings, fresh) = stand(ids(&updates), 1, |_, _| None);
        assert_eq!(standings[2], Standing::Conflict(1));
        assert_eq!(
            refuse_unless_whole(&standings, fresh, 100, 100),
            Some(vec![
                Err(Refusal::WithItsBatch),
                Err(Refusal::WithItsBatch),
                Err(Refusal::ConflictInCommit),
            ])
        );
    }
}
