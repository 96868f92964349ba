//! Replication versions: a hybrid logical clock timestamp plus the origin's id.
//!
//! Every replicated item carries a [`Version`] of its own, independent of the members'
//! revisions and ETags (which differ per backend). Versions are totally ordered by
//! `(timestamp, origin)`; the larger one wins a conflict (last writer wins).
//!
//! # The clock
//!
//! A [`HybridClock`] timestamp is the wall clock in milliseconds shifted left by 16 bits,
//! plus a 16-bit counter: `max(wall, last + 1, observed + 1)`. So timestamps of one origin
//! strictly increase even if the wall clock steps back, and a write that has *seen* a version
//! (read it before writing) always gets a larger timestamp than that version, whatever the
//! clocks of the two origins say: causality is never inverted by clock skew.
//!
//! What skew can still do: of two *concurrent* writes (neither saw the other) from origins
//! whose clocks disagree by `d`, the one from the faster clock wins even if it happened up to
//! `d` earlier in real time. Last writer wins is "last by the clocks"; the loser is reported as
//! a conflict, never dropped silently. A clock far in the future would make its origin win
//! every concurrent race until real time catches up; [`HybridClock::observe`] refuses
//! versions more than [`MAX_FORWARD_SKEW`] ahead of the local clock rather than jumping to
//! them.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far ahead of the local clock an observed timestamp may be before it is not followed.
pub const MAX_FORWARD_SKEW: Duration = Duration::from_secs(60);

const COUNTER_BITS: u32 = 16;

/// The version of one replicated item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid logical clock timestamp (milliseconds << 16 | counter).
    #[serde(rename = "t")]
    pub timestamp: u64,
    /// The id of the process (origin) that wrote it.
    #[serde(rename = "o")]
    pub origin: String,
}

impl Version {
    /// The wall-clock time of the timestamp (milliseconds precision).
    pub fn wall_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.timestamp >> COUNTER_BITS)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.timestamp
            .cmp(&other.timestamp)
            .then_with(|| self.origin.cmp(&other.origin))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.timestamp, self.origin)
    }
}

/// A hybrid logical clock (see the [module docs](self)).
#[derive(Debug)]
pub struct HybridClock {
    last: AtomicU64,
    origin: String,
}

fn wall_now() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms << COUNTER_BITS
}

impl HybridClock {
    /// A clock for `origin`.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            last: AtomicU64::new(0),
            origin: origin.into(),
        }
    }

    /// The origin id of this clock's versions.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Merges a timestamp seen elsewhere, so that later versions of this clock are larger.
    /// A timestamp more than [`MAX_FORWARD_SKEW`] ahead of the local clock is not followed
    /// (returns `false`): one bad clock must not drag every origin into the future.
    pub fn observe(&self, timestamp: u64) -> bool {
        let limit =
            wall_now().saturating_add((MAX_FORWARD_SKEW.as_millis() as u64) << COUNTER_BITS);
        if timestamp > limit {
            return false;
        }
        self.last.fetch_max(timestamp, Ordering::AcqRel);
        true
    }

    /// A new version, larger than every version this clock made or observed, and larger
    /// than `after` (the version the write replaces) in any case.
    pub fn next(&self, after: Option<&Version>) -> Version {
        let floor = after.map_or(0, |v| v.timestamp);
        let wall = wall_now();
        let mut current = self.last.load(Ordering::Acquire);
        loop {
            let next = wall.max(current + 1).max(floor + 1);
            match self.last.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Version {
                        timestamp: next,
                        origin: self.origin.clone(),
                    };
                }
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_order_by_timestamp_then_origin() {
        let clock = HybridClock::new("a");
        let v1 = clock.next(None);
        let v2 = clock.next(None);
        assert!(v2 > v1);
        let far = Version {
            timestamp: v2.timestamp + (10 << COUNTER_BITS),
            origin: "b".into(),
        };
        // A write that saw `far` is larger than it, although the local clock is behind.
        let v3 = clock.next(Some(&far));
        assert!(v3 > far, "{v3} > {far}");
        let tie_a = Version {
            timestamp: 5,
            origin: "a".into(),
        };
        let tie_b = Version {
            timestamp: 5,
            origin: "b".into(),
        };
        assert!(tie_b > tie_a);
    }

    #[test]
    fn far_future_timestamps_are_not_followed() {
        let clock = HybridClock::new("a");
        let future = wall_now() + ((3600 * 1000) << COUNTER_BITS);
        assert!(!clock.observe(future));
        assert!(clock.next(None).timestamp < future);
        assert!(clock.observe(wall_now() + (1000 << COUNTER_BITS)));
    }
}
