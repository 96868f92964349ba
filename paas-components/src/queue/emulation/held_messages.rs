//! In-process leases with deadlines, for brokers that hand a consumer a stream of messages
//! but keep no per-message lease themselves (a Kafka consumer owns whole partitions).
//!
//! [`Leases`] holds the messages a consumer has read and not yet settled, in log order
//! (keyed by `K`, e.g. `(partition, offset)`). [`claim`](Leases::claim) leases the deliverable
//! ones with a fresh token and a deadline: a message whose lease ran out, or that was
//! [`release`](Leases::release)d (nack, optionally with a delay), becomes deliverable again,
//! with its attempt count raised. Per ordering key only the oldest pending message is
//! deliverable, so a key's messages go out one at a time and in order. A message out of
//! attempts is handed to the caller to dead-letter rather than delivered. Tokens make receipts
//! per delivery: settling with the token of an earlier delivery is [`Stale`].
//!
//! Everything here lives in one process: leases, delays and attempt counts are lost when the
//! consumer stops, and the broker delivers the unsettled messages again from its committed
//! position. A backend that keeps a delay and a count in the broker (a Kafka retry topic)
//! brings them back with [`insert_retried`](Leases::insert_retried): the message is held
//! until its due time and its attempts continue from the stored count.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// A settle or extend with the token of an earlier delivery, or of a message no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// The message is held, but under another (later) lease, or none.
    OtherLease,
    /// The message is not held (settled, or its partition is gone).
    NotHeld,
}

/// One held message.
#[derive(Debug)]
struct Entry<M> {
    message: M,
    ordering_key: Option<String>,
    /// Not deliverable before this (lease deadline or nack delay).
    visible_at: Instant,
    /// Deliveries so far (including those before it was read, for a retried message).
    attempts: u32,
    /// Not delivered by this holder yet (what counts as read ahead).
    fresh: bool,
    /// The token of the current lease; `None` when not leased.
    lease: Option<u64>,
}

/// A leased delivery.
#[derive(Debug, Clone)]
pub(crate) struct Leased<K, M> {
    /// The message's key.
    pub(crate) key: K,
    /// The lease's token (goes into the receipt).
    pub(crate) token: u64,
    /// Which delivery this is, 1 for the first.
    pub(crate) attempt: u32,
    /// The message.
    pub(crate) message: M,
}

/// What one [`Leases::claim`] found.
#[derive(Debug)]
pub(crate) struct Claimed<K, M> {
    /// Leased for delivery.
    pub(crate) delivered: Vec<Leased<K, M>>,
    /// Out of attempts: leased to the caller, who dead-letters and then settles them.
    pub(crate) exhausted: Vec<Leased<K, M>>,
    /// When the next message not deliverable now becomes deliverable, if any.
    pub(crate) next_visible: Option<Instant>,
}

/// The held messages of one consumer, in log order.
#[derive(Debug)]
pub(crate) struct Leases<K, M> {
    entries: BTreeMap<K, Entry<M>>,
    next_token: u64,
}

impl<K: Ord + Clone, M: Clone> Default for Leases<K, M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Clone, M: Clone> Leases<K, M> {
    /// Nothing held; tokens start at a random value so that receipts of an earlier consumer
    /// in the same handle do not match by accident.
    pub(crate) fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            next_token: u64::from(rand::random::<u32>()),
        }
    }

    /// Holds a newly read message, deliverable from `visible_at`; a key already held is kept
    /// as it is (a re-read after a seek must not reset a lease).
    pub(crate) fn insert(
        &mut self,
        key: K,
        message: M,
        ordering_key: Option<String>,
        visible_at: Instant,
    ) {
        self.insert_retried(key, message, ordering_key, visible_at, 0);
    }

    /// Like [`insert`](Self::insert), for a message delivered `attempts` times before it was
    /// read (a copy from a retry topic): its next delivery is attempt `attempts + 1`, and
    /// `max_attempts` counts the earlier deliveries too.
    pub(crate) fn insert_retried(
        &mut self,
        key: K,
        message: M,
        ordering_key: Option<String>,
        visible_at: Instant,
        attempts: u32,
    ) {
        self.entries.entry(key).or_insert(Entry {
            message,
            ordering_key,
            visible_at,
            attempts,
            fresh: true,
            lease: None,
        });
    }

    /// How many messages are held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Leases up to `max` deliverable messages for `lease` (skipping keys for which `skip`
    /// says so, e.g. partitions being revoked). With `max_attempts`, a message already
    /// delivered that often is returned in [`Claimed::exhausted`] instead.
    pub(crate) fn claim(
        &mut self,
        max: usize,
        now: Instant,
        lease: Duration,
        max_attempts: Option<u32>,
        skip: impl Fn(&K) -> bool,
    ) -> Claimed<K, M> {
        let mut out = Claimed {
            delivered: Vec::new(),
            exhausted: Vec::new(),
            next_visible: None,
        };
        let mut heads = HashSet::new();
        for (key, e) in &mut self.entries {
            if out.delivered.len() >= max {
                break;
            }
            if skip(key) {
                continue;
            }
            // Only the oldest held message of an ordering key may be delivered.
            if let Some(k) = &e.ordering_key {
                if !heads.insert(k.clone()) {
                    continue;
                }
            }
            if e.visible_at > now {
                out.next_visible = Some(
                    out.next_visible
                        .map_or(e.visible_at, |n| n.min(e.visible_at)),
                );
                continue;
            }
            self.next_token += 1;
            e.fresh = false;
            e.lease = Some(self.next_token);
            e.visible_at = now + lease;
            let exhausted = max_attempts.is_some_and(|m| e.attempts >= m);
            if !exhausted {
                e.attempts = e.attempts.saturating_add(1);
            }
            let leased = Leased {
                key: key.clone(),
                token: self.next_token,
                attempt: e.attempts,
                message: e.message.clone(),
            };
            if exhausted {
                out.exhausted.push(leased);
            } else {
                out.delivered.push(leased);
            }
        }
        out
    }

    fn leased_mut(&mut self, key: &K, token: u64) -> Result<&mut Entry<M>, Stale> {
        match self.entries.get_mut(key) {
            None => Err(Stale::NotHeld),
            Some(e) if e.lease == Some(token) => Ok(e),
            Some(_) => Err(Stale::OtherLease),
        }
    }

    /// Settles (acknowledges) the delivery `token` of `key`: the message is no longer held.
    pub(crate) fn settle(&mut self, key: &K, token: u64) -> Result<M, Stale> {
        self.leased_mut(key, token)?;
        self.entries
            .remove(key)
            .map(|e| e.message)
            .ok_or(Stale::NotHeld)
    }

    /// Gives the delivery `token` of `key` back, deliverable again at `visible_at`; returns
    /// the deliveries so far.
    pub(crate) fn release(
        &mut self,
        key: &K,
        token: u64,
        visible_at: Instant,
    ) -> Result<u32, Stale> {
        let e = self.leased_mut(key, token)?;
        e.lease = None;
        e.visible_at = visible_at;
        Ok(e.attempts)
    }

    /// The deliveries so far and the lease deadline of the delivery `token` of `key`, and
    /// its message.
    pub(crate) fn leased(&self, key: &K, token: u64) -> Result<(&M, u32, Instant), Stale> {
        match self.entries.get(key) {
            None => Err(Stale::NotHeld),
            Some(e) if e.lease == Some(token) => Ok((&e.message, e.attempts, e.visible_at)),
            Some(_) => Err(Stale::OtherLease),
        }
    }

    /// Moves the deadline of the delivery `token` of `key` to `until`.
    pub(crate) fn extend(&mut self, key: &K, token: u64, until: Instant) -> Result<(), Stale> {
        self.leased_mut(key, token)?.visible_at = until;
        Ok(())
    }

    /// The latest deadline of the leases still running at `now` among keys `of` selects, if
    /// any runs (a rebalance waits until then before giving their partitions away).
    pub(crate) fn running_until(&self, now: Instant, of: impl Fn(&K) -> bool) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|(k, e)| e.lease.is_some() && e.visible_at > now && of(k))
            .map(|(_, e)| e.visible_at)
            .max()
    }

    /// Drops every held message whose key `which` selects (their partition was taken away:
    /// the broker delivers them again to the partition's next owner).
    pub(crate) fn drop_where(&mut self, which: impl Fn(&K) -> bool) {
        self.entries.retain(|k, _| !which(k));
    }

    /// How many held messages this holder has not delivered yet (what a consumer has read
    /// ahead), among the keys `of` selects and among the others, in one pass.
    pub(crate) fn undelivered(&self, of: impl Fn(&K) -> bool) -> (usize, usize) {
        let (mut selected, mut others) = (0, 0);
        for (k, e) in &self.entries {
            if e.fresh {
                if of(k) {
                    selected += 1;
                } else {
                    others += 1;
                }
            }
        }
        (selected, others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    fn held(keys: &[(u32, Option<&str>)]) -> Leases<u32, String> {
        let mut l = Leases::new();
        let now = Instant::now();
        for &(k, key) in keys {
            l.insert(k, format!("m{k}"), key.map(str::to_string), now);
        }
        l
    }

    #[test]
    fn a_lease_hides_a_message_until_it_runs_out() {
        let mut l = held(&[(1, None), (2, None)]);
        let now = Instant::now();
        let c = l.claim(1, now, LEASE, None, |_| false);
        assert_eq!(c.delivered.len(), 1);
        let first = c.delivered[0].clone();
        assert_eq!((first.key, first.attempt), (1, 1));
        let c = l.claim(10, now, LEASE, None, |_| false);
        assert_eq!(c.delivered.iter().map(|d| d.key).collect::<Vec<_>>(), [2]);
        assert_eq!(c.next_visible, Some(now + LEASE));
        // Past the deadline both come back, with a second attempt and new tokens.
        let later = now + LEASE + Duration::from_millis(1);
        let c = l.claim(10, later, LEASE, None, |_| false);
        assert_eq!(c.delivered.len(), 2);
        assert!(c.delivered.iter().all(|d| d.attempt == 2));
        assert_eq!(l.settle(&1, first.token), Err(Stale::OtherLease));
        assert!(l.settle(&1, c.delivered[0].token).is_ok());
        assert_eq!(l.settle(&1, c.delivered[0].token), Err(Stale::NotHeld));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn release_redelivers_and_exhausted_messages_go_to_the_caller() {
        let mut l = held(&[(1, None)]);
        let now = Instant::now();
        let d = l
            .claim(1, now, LEASE, Some(2), |_| false)
            .delivered
            .remove(0);
        assert_eq!(l.release(&1, d.token, now), Ok(1));
        assert_eq!(
            l.release(&1, d.token, now),
            Err(Stale::OtherLease),
            "lease gone"
        );
        let d = l
            .claim(1, now, LEASE, Some(2), |_| false)
            .delivered
            .remove(0);
        assert_eq!(d.attempt, 2);
        l.release(&1, d.token, now + Duration::from_secs(1))
            .unwrap();
        let c = l.claim(1, now, LEASE, Some(2), |_| false);
        assert!(c.delivered.is_empty() && c.exhausted.is_empty(), "delayed");
        let c = l.claim(1, now + Duration::from_secs(1), LEASE, Some(2), |_| false);
        assert!(c.delivered.is_empty());
        assert_eq!(c.exhausted.len(), 1, "out of attempts");
        assert!(l.settle(&1, c.exhausted[0].token).is_ok());
    }

    #[test]
    fn one_message_per_ordering_key_in_flight() {
        let mut l = held(&[(1, Some("a")), (2, Some("a")), (3, None), (4, Some("b"))]);
        let now = Instant::now();
        let c = l.claim(10, now, LEASE, None, |_| false);
        let keys: Vec<u32> = c.delivered.iter().map(|d| d.key).collect();
        assert_eq!(keys, [1, 3, 4]);
        assert!(
            l.claim(10, now, LEASE, None, |_| false)
                .delivered
                .is_empty()
        );
        l.settle(&1, c.delivered[0].token).unwrap();
        let c = l.claim(10, now, LEASE, None, |_| false);
        assert_eq!(c.delivered.iter().map(|d| d.key).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn extend_skip_and_drop() {
        let mut l = held(&[(1, None), (2, None)]);
        let now = Instant::now();
        let c = l.claim(10, now, LEASE, None, |k| *k == 2);
        assert_eq!(c.delivered.len(), 1, "key 2 skipped");
        let d = &c.delivered[0];
        l.extend(&1, d.token, now + 3 * LEASE).unwrap();
        assert_eq!(l.running_until(now, |_| true), Some(now + 3 * LEASE));
        assert_eq!(l.running_until(now, |k| *k == 2), None);
        assert_eq!(l.undelivered(|k| *k == 2), (1, 0));
        l.drop_where(|k| *k == 1);
        assert_eq!(l.len(), 1);
        assert_eq!(l.extend(&1, d.token, now), Err(Stale::NotHeld));
    }

    #[test]
    fn a_retried_message_waits_and_continues_its_count() {
        let mut l: Leases<u32, String> = Leases::new();
        let now = Instant::now();
        let due = now + Duration::from_secs(5);
        l.insert_retried(1, "m1".into(), None, due, 2);
        assert_eq!(
            l.undelivered(|_| true),
            (1, 0),
            "read ahead until delivered here"
        );
        let c = l.claim(1, now, LEASE, Some(3), |_| false);
        assert!(c.delivered.is_empty());
        assert_eq!(c.next_visible, Some(due));
        let d = l
            .claim(1, due, LEASE, Some(3), |_| false)
            .delivered
            .remove(0);
        assert_eq!(d.attempt, 3, "continues from the stored count");
        assert_eq!(l.undelivered(|_| true), (0, 0));
        let (m, attempts, until) = l.leased(&1, d.token).unwrap();
        assert_eq!((m.as_str(), attempts, until), ("m1", 3, due + LEASE));
        assert_eq!(l.leased(&1, d.token + 1).unwrap_err(), Stale::OtherLease);
        l.release(&1, d.token, due).unwrap();
        let c = l.claim(1, due, LEASE, Some(3), |_| false);
        assert_eq!(
            c.exhausted.len(),
            1,
            "max_attempts counts the earlier deliveries"
        );
        assert_eq!(l.leased(&2, 0).unwrap_err(), Stale::NotHeld);
    }
}
