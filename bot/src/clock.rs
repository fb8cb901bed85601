//! The one clock every replica agrees on.
//!
//! Replicas sharing a PostgreSQL store compare times they wrote: execution heartbeats, session liveness,
//! request expiry, outbox leases. Each machine's own clock may be off by minutes, and a replica ahead of
//! the others would declare their live executions interrupted and their requests expired. So the store
//! measures how far this machine's clock is from the database server's, and every time the workflow
//! takes is the local clock corrected by that offset. A SQLite store belongs to one process: no offset.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

/// The database clock minus the local one, in milliseconds.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// A skew worth a warning: well past network delay, and within what the sweeps tolerate.
pub const WARN_SKEW: Duration = Duration::from_secs(1);

/// Now, by the store's clock.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::milliseconds(OFFSET_MS.load(Ordering::Relaxed))
}

/// Now, by the store's clock, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    local_ms() + OFFSET_MS.load(Ordering::Relaxed)
}

/// Records a measurement: the database said `db_ms` between local times `sent_ms` and `received_ms`
/// (the midpoint is taken as the moment it read its clock).
pub fn observe(db_ms: i64, sent_ms: i64, received_ms: i64) -> i64 {
    let offset = offset_of(db_ms, sent_ms, received_ms);
    OFFSET_MS.store(offset, Ordering::Relaxed);
    offset
}

fn offset_of(db_ms: i64, sent_ms: i64, received_ms: i64) -> i64 {
    db_ms - (sent_ms + (received_ms - sent_ms) / 2)
}

/// Local time in milliseconds, uncorrected (for measuring the offset).
pub fn local_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_round_trips_midpoint() {
        // A database 3 minutes ahead, answering within a 10 ms round trip.
        assert_eq!(
            offset_of(1_000_180_005, 1_000_000_000, 1_000_000_010),
            180_000
        );
        assert_eq!(offset_of(999_999_000, 1_000_000_000, 1_000_000_000), -1_000);
    }
}
