//! The watchdog thread: a commit that the database leaves unanswered for
//! `COMMIT_PATIENCE` (3 s; the housekeeping: longer) fails its
//! committer's part of the health, and its clients are answered 503
//! `storage_unavailable` (they may retry with their event ids: the commit
//! may still succeed). Once every part fails, what is posted is refused
//! too, and the backend refuses events at once, until a commit returns
//! (the database answers again: the committer marks its part working) or
//! fails (and the connection is made again, as after any failure).
//!
//! Without it, a frozen server or a network that drops packets without a
//! reset would hold every POST until the kernel gave up on the
//! connection, minutes later: nothing fails by itself.

use std::time::Duration;

use super::committer::CommitPool;
use crate::backend::stop::StopSignal;
use crate::intake::Refusal;

/// How often the watchdog looks at the commits in flight.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// The watchdog thread's body, until `stop` is rung.
pub fn watch(pool: &CommitPool, stop: &StopSignal) {
    while !stop.pause(WATCH_EVERY) {
        let mut stalled = false;
        for (part, in_flight) in pool.in_flight.iter().enumerate() {
            let stuck = in_flight.overdue(|waited| {
                pool.failed(
                    part,
                    format!(
                        "the database has not answered for {} s (a frozen server, or a network that drops packets)",
                        waited.as_secs()
                    ),
                );
            });
            // Dropping the guard answers its clients 503.
            drop(stuck);
            stalled |= in_flight.given_up();
        }
        // Nobody collects while every committer is stuck: what was posted
        // before the health failed is answered here.
        if stalled && pool.health.is_failing() {
            for posted in pool.mailbox.take_pending() {
                posted.refuse(Refusal::StorageUnavailable);
            }
        }
    }
}
