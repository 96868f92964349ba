//! Per-message acknowledgement over a log's offsets.
//!
//! A log broker (Kafka) keeps one committed offset per partition and group: everything below
//! it counts as consumed. Messages are acknowledged one by one and out of order, so
//! [`AckedOffsets`] keeps the acknowledged set of one partition: the **contiguous prefix**
//! (every offset below [`commit_offset`](AckedOffsets::commit_offset) is settled: the offset
//! to commit) and the offsets acknowledged **beyond** it. The set beyond the prefix is
//! [`encode`](AckedOffsets::encode)d into the commit's metadata string, so that after a
//! restart or a rebalance the next owner of the partition restores it
//! ([`decode`](AckedOffsets::decode)) and does not deliver an acknowledged message again.
//!
//! Offsets the log skipped (compaction, transaction markers) are settled when a later offset
//! is [`fetched`](AckedOffsets::fetched): nothing there is waiting for an ack, and an unsettled
//! gap would hold the prefix back forever.

use std::collections::BTreeSet;

/// Most ranges kept in a commit's metadata: bounds the metadata string (brokers limit it,
/// Kafka to 4 KiB by default; 150 ranges of 10-digit offsets stay below it). Offsets acknowledged beyond these ranges are not remembered
/// across a restart and are delivered again (at-least-once still holds).
pub(crate) const MAX_ENCODED_RANGES: usize = 150;

/// The acknowledged offsets of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckedOffsets {
    /// Every offset below this is settled: the offset to commit.
    prefix: i64,
    /// Settled offsets above `prefix` (never containing `prefix` itself).
    beyond: BTreeSet<i64>,
    /// The highest offset seen by [`Self::fetched`], to settle gaps.
    last_fetched: Option<i64>,
}

impl AckedOffsets {
    /// Nothing settled from `start` on (the committed offset, or the first offset read).
    pub(crate) fn new(start: i64) -> Self {
        Self {
            prefix: start,
            beyond: BTreeSet::new(),
            last_fetched: None,
        }
    }

    /// The offset to commit: every offset below it is settled.
    pub(crate) fn commit_offset(&self) -> i64 {
        self.prefix
    }

    /// Whether `offset` is settled (below the prefix or acknowledged beyond it).
    pub(crate) fn is_acked(&self, offset: i64) -> bool {
        offset < self.prefix || self.beyond.contains(&offset)
    }

    /// Settles `offset`; returns whether anything changed.
    pub(crate) fn ack(&mut self, offset: i64) -> bool {
        if self.is_acked(offset) {
            return false;
        }
        if offset == self.prefix {
            self.prefix += 1;
            while self.beyond.remove(&self.prefix) {
                self.prefix += 1;
            }
        } else {
            self.beyond.insert(offset);
        }
        true
    }

    /// Records that the log returned `offset` (offsets arrive in order): offsets skipped
    /// since the last one fetched hold no message and are settled.
    pub(crate) fn fetched(&mut self, offset: i64) {
        let from = self.last_fetched.map_or(self.prefix, |last| last + 1);
        for skipped in from..offset {
            self.ack(skipped);
        }
        self.last_fetched = Some(self.last_fetched.map_or(offset, |last| last.max(offset)));
    }

    /// The offsets acknowledged beyond the prefix as ranges `a-b` (inclusive) or single
    /// offsets, comma-separated, at most [`MAX_ENCODED_RANGES`] of them (the lowest ones).
    pub(crate) fn encode(&self) -> String {
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        for &o in &self.beyond {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == o => *end = o,
                _ => {
                    if ranges.len() == MAX_ENCODED_RANGES {
                        break;
                    }
                    ranges.push((o, o));
                }
            }
        }
        ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The set committed at offset `prefix` with `encoded` (from [`Self::encode`]) as its
    /// beyond-the-prefix part; `None` when `encoded` is malformed (the caller then starts
    /// from the prefix alone: some acknowledged messages may be delivered again).
    pub(crate) fn decode(prefix: i64, encoded: &str) -> Option<Self> {
        let mut set = Self::new(prefix);
        for part in encoded.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<i64>().ok()?, b.parse::<i64>().ok()?),
                None => {
                    let o = part.parse::<i64>().ok()?;
                    (o, o)
                }
            };
            // Bounded: a range can only be as long as the log between two commits, but a
            // corrupt string must not make us insert billions of offsets.
            if b < a || b - a > 1_000_000 {
                return None;
            }
            for o in a..=b {
                set.ack(o);
            }
        }
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_advances_over_contiguous_acks() {
        let mut t = AckedOffsets::new(10);
        assert!(t.ack(12));
        assert!(t.ack(11));
        assert_eq!(t.commit_offset(), 10, "10 is still open");
        assert!(t.is_acked(11) && t.is_acked(12) && !t.is_acked(10));
        assert_eq!(t.encode(), "11-12");
        assert!(t.ack(10));
        assert_eq!(t.commit_offset(), 13);
        assert_eq!(t.encode(), "");
        assert!(!t.ack(12), "a repeated ack changes nothing");
        assert!(t.is_acked(5), "below the start counts as settled");
    }

    #[test]
    fn beyond_the_prefix_survives_encode_decode() {
        let mut t = AckedOffsets::new(0);
        for o in [2, 3, 4, 7, 9, 10] {
            t.ack(o);
        }
        let encoded = t.encode();
        assert_eq!(encoded, "2-4,7,9-10");
        let back = AckedOffsets::decode(t.commit_offset(), &encoded).unwrap();
        for o in 0..12 {
            assert_eq!(back.is_acked(o), t.is_acked(o), "offset {o}");
        }
        for bad in ["x", "3-", "5-2", "1-99999999999"] {
            assert!(AckedOffsets::decode(0, bad).is_none(), "{bad:?}");
        }
        assert_eq!(AckedOffsets::decode(4, "").unwrap().commit_offset(), 4);
    }

    #[test]
    fn skipped_offsets_are_settled() {
        let mut t = AckedOffsets::new(0);
        t.fetched(0);
        t.fetched(3); // 1 and 2 hold no message (e.g. transaction markers)
        t.ack(0);
        assert_eq!(t.commit_offset(), 3);
        t.ack(3);
        assert_eq!(t.commit_offset(), 4);
    }

    #[test]
    fn encoding_is_bounded() {
        let mut t = AckedOffsets::new(0);
        for o in (1..10_000).step_by(2) {
            t.ack(o);
        }
        let encoded = t.encode();
        assert_eq!(encoded.split(',').count(), MAX_ENCODED_RANGES);
        assert!(encoded.len() < 4096, "fits Kafka's default metadata limit");
    }
}
