//! Leases kept by the client, for brokers that have no per-message ack deadline (AMQP keeps
//! a delivery with its consumer until the channel closes).
//!
//! A [`Leases`] table holds the deliveries a handle has given out, each with its deadline, and
//! remembers how recent deliveries were settled, so that a backend can answer the portable
//! receipt rules without asking the broker:
//! - a live lease is settled once ([`Leases::settle`] hands its value back exactly once, so
//!   the broker never sees a second ack of one delivery tag, which would close the channel);
//! - a second ack of an acknowledged delivery succeeds ([`Settle::AlreadyAcked`]), acks are
//!   idempotent;
//! - the receipt of a delivery that was given back (nacked, expired, or lost with its
//!   channel) is stale: `PreconditionFailed`, it must not settle the next delivery;
//! - [`Leases::expired`] takes the leases whose deadline passed, for the backend to give back.
//!
//! The memory of settled deliveries is bounded ([`MAX_SETTLED`], oldest forgotten first); a
//! forgotten or never issued key is `NotFound`.

use cloud_abstraction::{Error, ErrorKind, Result};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use tokio::time::Instant;

/// How many settled deliveries a table remembers (for idempotent acks and stale receipts).
pub(crate) const MAX_SETTLED: usize = 100_000;

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Acknowledged: further acks succeed.
    Acked,
    /// Given back (nack, lease expiry, lost channel): it is or will be delivered again.
    Released,
}

/// What settling a key found.
#[derive(Debug)]
pub(crate) enum Settle<V> {
    /// The lease was live; it is settled now and its value is the caller's to act on.
    Live(V),
    /// An ack of a delivery that was already acknowledged.
    AlreadyAcked,
}

struct Lease<V> {
    deadline: Instant,
    value: V,
}

/// The leases of one handle (or one channel), keyed by the broker's delivery handle.
pub(crate) struct Leases<K, V> {
    backend: &'static str,
    live: HashMap<K, Lease<V>>,
    settled: HashMap<K, Outcome>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V> Leases<K, V> {
    /// An empty table; errors name `backend`.
    pub(crate) fn new(backend: &'static str) -> Self {
        Self {
            backend,
            live: HashMap::new(),
            settled: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records a delivery leased until `deadline`.
    pub(crate) fn insert(&mut self, key: K, deadline: Instant, value: V) {
        self.live.insert(key, Lease { deadline, value });
    }

    /// How many leases are live.
    pub(crate) fn live(&self) -> usize {
        self.live.len()
    }

    /// How many live leases satisfy `f`.
    pub(crate) fn count(&self, f: impl Fn(&V) -> bool) -> usize {
        self.live.values().filter(|l| f(&l.value)).count()
    }

    fn remember(&mut self, key: K, outcome: Outcome) {
        if self.settled.insert(key.clone(), outcome).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_SETTLED {
            if let Some(old) = self.order.pop_front() {
                self.settled.remove(&old);
            }
        }
    }

    /// Settles `key` as `outcome`: the live lease's value, [`Settle::AlreadyAcked`] for a
    /// repeated ack, `PreconditionFailed` for a delivery given back (also a nack of an
    /// acknowledged one), `NotFound` for a key this table does not know.
    pub(crate) fn settle(&mut self, key: &K, outcome: Outcome) -> Result<Settle<V>> {
        if let Some(lease) = self.live.remove(key) {
            self.remember(key.clone(), outcome);
            return Ok(Settle::Live(lease.value));
        }
        match self.settled.get(key) {
            Some(Outcome::Acked) if outcome == Outcome::Acked => Ok(Settle::AlreadyAcked),
            Some(Outcome::Acked) => Err(Error::new(
                ErrorKind::PreconditionFailed,
                self.backend,
                "the delivery of this receipt was already acknowledged",
            )),
            Some(Outcome::Released) => Err(self.stale()),
            None => Err(Error::not_found(
                self.backend,
                "no delivery with this receipt (never issued, or long forgotten)",
            )),
        }
    }

    /// Corrects the outcome of a settled key (an ack that the broker never got is a release).
    pub(crate) fn mark(&mut self, key: K, outcome: Outcome) {
        self.remember(key, outcome);
    }

    /// Moves the deadline of a live lease; errors as [`settle`](Self::settle) for others.
    pub(crate) fn extend(&mut self, key: &K, deadline: Instant) -> Result<()> {
        if let Some(lease) = self.live.get_mut(key) {
            lease.deadline = deadline;
            return Ok(());
        }
        match self.settled.get(key) {
            Some(Outcome::Acked) => Err(Error::new(
                ErrorKind::PreconditionFailed,
                self.backend,
                "the delivery of this receipt was already acknowledged",
            )),
            Some(Outcome::Released) => Err(self.stale()),
            None => Err(Error::not_found(
                self.backend,
                "no delivery with this receipt",
            )),
        }
    }

    /// Takes the live leases whose deadline is at or before `now`, settled as released.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(K, V)> {
        let keys: Vec<K> = self
            .live
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        self.take(keys)
    }

    /// Takes every live lease matching `f`, settled as released (e.g. those of a lost channel).
    pub(crate) fn release_where(&mut self, f: impl Fn(&K) -> bool) -> Vec<(K, V)> {
        let keys: Vec<K> = self.live.keys().filter(|k| f(k)).cloned().collect();
        self.take(keys)
    }

    fn take(&mut self, keys: Vec<K>) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(lease) = self.live.remove(&key) {
                self.remember(key.clone(), Outcome::Released);
                out.push((key, lease.value));
            }
        }
        out
    }

    fn stale(&self) -> Error {
        Error::new(
            ErrorKind::PreconditionFailed,
            self.backend,
            "receipt is stale: the delivery was given back (nack, lease expiry or a lost \
             connection) and the message is delivered again",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn settle_once_ack_twice_stale_after_release() {
        let mut leases = Leases::new("t");
        let now = Instant::now();
        leases.insert(1, now + Duration::from_secs(60), "a");
        leases.insert(2, now, "b");
        assert_eq!(leases.live(), 2);
        assert!(matches!(
            leases.settle(&1, Outcome::Acked).unwrap(),
            Settle::Live("a")
        ));
        assert!(matches!(
            leases.settle(&1, Outcome::Acked).unwrap(),
            Settle::AlreadyAcked
        ));
        let kind = |r: Result<Settle<&str>>| r.unwrap_err().kind();
        assert_eq!(
            kind(leases.settle(&1, Outcome::Released)),
            ErrorKind::PreconditionFailed
        );
        assert_eq!(leases.expired(now).len(), 1);
        assert_eq!(
            kind(leases.settle(&2, Outcome::Acked)),
            ErrorKind::PreconditionFailed
        );
        assert_eq!(kind(leases.settle(&3, Outcome::Acked)), ErrorKind::NotFound);
        assert_eq!(leases.live(), 0);
    }
}
