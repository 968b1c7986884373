//! [`Health`]: whether a durable backend's writes (or a PostgreSQL
//! tailer's reads) work, for `/readyz` and for refusing events while they
//! do not. Shared by the SQLite and PostgreSQL backends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How often a failing store is tried again when nothing else is written,
/// and how often old idempotency rows are deleted.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Locks a mutex of a backend's, ignoring poisoning: every value behind
/// these locks is plain data changed in single assignments or pushes, so a
/// panic elsewhere cannot leave it half-changed.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether writes (or, for a PostgreSQL tailer, reads of the journal)
/// work, for `/readyz` and for refusing events. It is reported by one or
/// more *parts*, numbered from 0: the committer of a durable store is one
/// part; each committer of a PostgreSQL pool (`DB_POOL_SIZE`) is one, and
/// writes fail only while every part fails, since one working connection
/// commits for all. Changes are logged once each way.
pub struct Health {
    /// A bit per part that fails now.
    failing_parts: AtomicU64,
    /// The bits of every part: writes fail when `failing_parts` is this.
    all_parts: u64,
    reason: Mutex<String>,
    reads: bool,
}

/// A pool has at most this many parts (one bit each).
pub const MAX_PARTS: usize = 64;

impl Default for Health {
    /// The health of one part.
    fn default() -> Health {
        Health::of_parts(1)
    }
}

impl Health {
    /// The health of writes made by `parts` committers (1..=[`MAX_PARTS`];
    /// clamped to it).
    pub fn of_parts(parts: usize) -> Health {
        let parts = parts.clamp(1, MAX_PARTS);
        Health {
            failing_parts: AtomicU64::new(0),
            all_parts: u64::MAX >> (64 - parts),
            reason: Mutex::new(String::new()),
            reads: false,
        }
    }

    /// The health of reads (one part): failing makes `/readyz` 503, not
    /// POSTs.
    pub fn of_reads() -> Health {
        Health {
            reads: true,
            ..Health::default()
        }
    }

    /// The reason writes fail, or `None` while they work.
    pub fn unavailable(&self) -> Option<String> {
        if !self.is_failing() {
            return None;
        }
        Some(lock(&self.reason).clone())
    }

    /// Whether every part fails.
    pub fn is_failing(&self) -> bool {
        self.failing_parts.load(Ordering::Acquire) == self.all_parts
    }

    /// Part `part`'s bit (none for a part this health does not have).
    fn bit(&self, part: usize) -> u64 {
        debug_assert!(part < MAX_PARTS && (1u64 << part) & self.all_parts != 0);
        1u64.checked_shl(part as u32).unwrap_or(0) & self.all_parts
    }

    /// Part `part` failed, for `reason`.
    pub fn fail(&self, part: usize, reason: String) {
        let mut current = lock(&self.reason);
        let before = self
            .failing_parts
            .fetch_or(self.bit(part), Ordering::AcqRel);
        let now = before | self.bit(part);
        if now == self.all_parts && before != self.all_parts {
            if self.reads {
                log::error!(
                    "storage: {reason}; reads may be stale, and /readyz answers 503 until it works again (retried every {RETRY_INTERVAL:?})"
                );
            } else {
                log::error!(
                    "storage: writes fail ({reason}); POST /events answers 503 storage_unavailable and /readyz 503 until they succeed again (retried every {RETRY_INTERVAL:?})"
                );
            }
        } else if now != self.all_parts && before & self.bit(part) == 0 {
            log::warn!(
                "storage: committer-{part} fails ({reason}); the other committers of the pool go on"
            );
        }
        *current = reason;
    }

    /// Part `part` works.
    pub fn ok(&self, part: usize) {
        let _current = lock(&self.reason);
        let before = self
            .failing_parts
            .fetch_and(!self.bit(part), Ordering::AcqRel);
        if before & self.bit(part) == 0 {
            return;
        }
        if before == self.all_parts {
            if self.reads {
                log::info!("storage: reading the journal works again");
            } else {
                log::info!("storage: writes succeed again; accepting events");
            }
        } else {
            log::info!("storage: committer-{part} works again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn writes_fail_only_while_every_part_fails() {
        let health = Health::of_parts(2);
        health.fail(1, "connection 1 lost".to_owned());
        assert!(!health.is_failing());
        assert_eq!(health.unavailable(), None);
        health.fail(0, "connection 0 lost".to_owned());
        assert!(health.is_failing());
        assert_eq!(health.unavailable().as_deref(), Some("connection 0 lost"));
        health.ok(1);
        assert!(!health.is_failing());
        // A part reported twice counts once.
        health.fail(1, "again".to_owned());
        health.fail(1, "again".to_owned());
        health.ok(1);
        assert!(!health.is_failing());
    }

    #[test]
    fn one_part_fails_and_recovers() {
        let health = Health::default();
        assert!(!health.is_failing());
        health.fail(0, "disk full".to_owned());
        assert_eq!(health.unavailable().as_deref(), Some("disk full"));
        health.ok(0);
        assert_eq!(health.unavailable(), None);
    }
}
