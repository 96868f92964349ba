//! What a queue handle remembers of the deliveries it handed out and settled, so that it can
//! refuse a stale receipt where the broker cannot.
//!
//! Some brokers settle a message by its position alone: a JetStream ack names the stream
//! sequence, and the server applies an ack, nak or in-progress of *any* earlier delivery of that
//! message to the delivery that is pending now. A receipt kept past its lease would then settle
//! (or, worse, give back) the delivery another consumer holds. The log records, per message, the
//! latest delivery count this handle received and what this handle did with it; [`check`]
//! refuses a receipt whose delivery is older than one the handle has seen
//! ([`PreconditionFailed`](cloud_abstraction::ErrorKind::PreconditionFailed)), and a nack or
//! extension of a delivery this handle already settled. A later delivery that went to *another*
//! handle is not known here: the backend's docs say what that means for it.
//!
//! Memory is bounded in time: an entry is kept until [`RETAIN`] after its lease ends (an
//! acknowledged one for [`RETAIN_ACKED`]), and expired entries are dropped whenever the log has
//! doubled since the last sweep.
//!
//! [`check`]: DeliveryLog::check

use cloud_abstraction::{Error, ErrorKind, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long past the end of its lease a delivery is remembered.
pub(crate) const RETAIN: Duration = Duration::from_secs(600);
/// How long an acknowledged delivery is remembered (a repeated ack is answered without the
/// broker; a nack after the ack is refused).
pub(crate) const RETAIN_ACKED: Duration = Duration::from_secs(10);

fn precondition(backend: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::PreconditionFailed, backend, message)
}

/// What a receipt is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Acknowledge.
    Ack,
    /// Give back (nack).
    Nack,
    /// Extend the lease.
    Extend,
}

/// What [`DeliveryLog::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it to the broker.
    Proceed,
    /// This handle acknowledged exactly this delivery already, and the broker confirmed it.
    AlreadyAcked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Leased,
    GivenBack,
    Acked,
}

#[derive(Debug)]
struct Entry {
    delivery: u64,
    state: State,
    until: Instant,
}

/// The log of one handle. `scope` names a group (e.g. stream and consumer), `message` a message
/// in it (e.g. its stream sequence), `delivery` the broker's delivery count (1 for the first).
#[derive(Debug, Default)]
pub(crate) struct DeliveryLog {
    entries: HashMap<(Box<str>, u64), Entry>,
    sweep_at: usize,
}

impl DeliveryLog {
    /// Records that this handle received `delivery` of `message`, leased for `lease`.
    pub(crate) fn received(&mut self, scope: &str, message: u64, delivery: u64, lease: Duration) {
        let until = Instant::now() + lease + RETAIN;
        let entry = self
            .entries
            .entry((scope.into(), message))
            .or_insert(Entry {
                delivery,
                state: State::Leased,
                until,
            });
        if delivery >= entry.delivery {
            *entry = Entry {
                delivery,
                state: State::Leased,
                until,
            };
        }
        self.sweep();
    }

    /// Whether `delivery` of `message` may be settled with `op`.
    pub(crate) fn check(
        &self,
        backend: &'static str,
        scope: &str,
        message: u64,
        delivery: u64,
        op: Settle,
    ) -> Result<Verdict> {
        let Some(entry) = self.entries.get(&(scope.into(), message)) else {
            return Ok(Verdict::Proceed);
        };
        if entry.delivery > delivery {
            return Err(precondition(
                backend,
                "the receipt is of an earlier delivery: the message has been delivered again",
            ));
        }
        if entry.delivery < delivery {
            return Ok(Verdict::Proceed);
        }
        match (entry.state, op) {
            (State::Acked, Settle::Ack) => Ok(Verdict::AlreadyAcked),
            (State::Acked, _) => Err(precondition(
                backend,
                "the delivery was acknowledged already",
            )),
            (State::GivenBack, _) => Err(precondition(
                backend,
                "the delivery was given back (nacked) already",
            )),
            (State::Leased, _) => Ok(Verdict::Proceed),
        }
    }

    /// Records that the broker confirmed `op` on `delivery` of `message`; `lease` is the time
    /// the message now stays away (the nack delay or the extension; ignored for acks).
    pub(crate) fn settled(
        &mut self,
        scope: &str,
        message: u64,
        delivery: u64,
        op: Settle,
        lease: Duration,
    ) {
        let now = Instant::now();
        let (state, until) = match op {
            Settle::Ack => (State::Acked, now + RETAIN_ACKED),
            Settle::Nack => (State::GivenBack, now + lease + RETAIN),
            Settle::Extend => (State::Leased, now + lease + RETAIN),
        };
        let entry = self
            .entries
            .entry((scope.into(), message))
            .or_insert(Entry {
                delivery,
                state,
                until,
            });
        if delivery >= entry.delivery {
            *entry = Entry {
                delivery,
                state,
                until,
            };
        }
        self.sweep();
    }

    /// Forgets everything of `scope` (its group was deleted).
    pub(crate) fn forget_scope(&mut self, scope: &str) {
        self.entries.retain(|(s, _), _| &**s != scope);
    }

    fn sweep(&mut self) {
        if self.entries.len() < self.sweep_at {
            return;
        }
        let now = Instant::now();
        self.entries.retain(|_, e| e.until > now);
        self.sweep_at = (self.entries.len() * 2).max(4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn a_later_delivery_makes_earlier_receipts_stale() {
        let mut log = DeliveryLog::default();
        log.received("s", 7, 1, LEASE);
        assert_eq!(
            log.check("t", "s", 7, 1, Settle::Ack).unwrap(),
            Verdict::Proceed
        );
        log.settled("s", 7, 1, Settle::Nack, Duration::ZERO);
        for op in [Settle::Ack, Settle::Nack, Settle::Extend] {
            let e = log.check("t", "s", 7, 1, op).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{op:?} after nack");
        }
        log.received("s", 7, 2, LEASE);
        let e = log.check("t", "s", 7, 1, Settle::Ack).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
        assert_eq!(
            log.check("t", "s", 7, 2, Settle::Extend).unwrap(),
            Verdict::Proceed
        );
        log.settled("s", 7, 2, Settle::Ack, Duration::ZERO);
        assert_eq!(
            log.check("t", "s", 7, 2, Settle::Ack).unwrap(),
            Verdict::AlreadyAcked
        );
        let e = log.check("t", "s", 7, 2, Settle::Nack).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
        // Unknown messages and other scopes are the broker's to judge.
        assert_eq!(
            log.check("t", "s", 8, 1, Settle::Ack).unwrap(),
            Verdict::Proceed
        );
        assert_eq!(
            log.check("t", "other", 7, 1, Settle::Ack).unwrap(),
            Verdict::Proceed
        );
        log.forget_scope("s");
        assert_eq!(
            log.check("t", "s", 7, 1, Settle::Ack).unwrap(),
            Verdict::Proceed
        );
    }
}
