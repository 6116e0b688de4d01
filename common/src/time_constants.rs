//! Every timing decision of the coordination protocol, derived from one base interval.
//!
//! The worker lease TTL is the unit. Keepalives go out every TTL/3 so two can fail before the
//! lease expires; each renewal is bounded by TTL/6 so a hung call cannot eat the margin; a
//! worker stops its own work (self-fences) a safety margin before the deadline measured from
//! the moment the last successful keepalive was *sent*, so it is never still writing when etcd
//! hands its tasks to someone else.

use std::time::Duration;

/// Default lease TTL of a worker or coordinator process.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// Smallest TTL accepted: below this, scheduling hiccups alone would expire leases.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// Interval between keepalives for a TTL.
pub fn keepalive_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// Timeout of one keepalive round trip for a TTL.
pub fn rpc_timeout(ttl: Duration) -> Duration {
    ttl / 6
}

/// How long before the lease deadline a process stops its own work.
pub fn self_fence_margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// How often a process publishes its live progress (`{m}/progress/{id}`).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How often a change-stream task checkpoints while events keep flowing. Bounded by the spool
/// batch anyway; this caps the time-based part.
pub const CDC_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// How often the leader re-evaluates the migration even without store events.
pub const LEADER_TICK: Duration = Duration::from_millis(500);

/// Validates a TTL against the derived intervals.
pub fn validate_lease_ttl(ttl: Duration) -> Result<(), String> {
    if ttl < MIN_LEASE_TTL {
        return Err(format!("lease ttl {ttl:?} is below the minimum of {MIN_LEASE_TTL:?}"));
    }
    if keepalive_interval(ttl) + rpc_timeout(ttl) + self_fence_margin(ttl) >= ttl {
        return Err(format!("lease ttl {ttl:?} leaves no room between keepalives and the deadline"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_intervals_fit_inside_the_ttl() {
        for secs in [2, 3, 10, 60] {
            validate_lease_ttl(Duration::from_secs(secs)).unwrap();
        }
        assert!(validate_lease_ttl(Duration::from_millis(500)).is_err());
    }
}
