//! The deliveries of one group session, and PUBACKs in receive order.
//!
//! MQTT requires a client to acknowledge QoS 1 messages in the order it received them
//! (MQTT 5, 4.6), while an application acknowledges in any order. So every PUBLISH of the
//! current connection gets a slot in arrival order; an ack marks its slot, and PUBACKs go out
//! for the acknowledged slots at the front only. A later message acknowledged before an
//! earlier one waits for it; if the connection drops meanwhile the broker sends both again,
//! and the acknowledged one is recognised by its message id and acknowledged without being
//! delivered again. Ids whose PUBACK was sent shortly before a drop are remembered too, since
//! a PUBACK can be lost with its connection.

use std::collections::{HashSet, VecDeque};

/// How many ids of acknowledged messages are remembered across a reconnect.
const RECENT: usize = 100_000;

/// A message as the broker delivered it.
#[derive(Debug, Clone)]
pub(super) struct Arrival {
    pub(super) pkid: u16,
    pub(super) dup: bool,
    /// Our message id (user property), if the publisher set one.
    pub(super) id: Option<String>,
    pub(super) message: super::Decoded,
}

#[derive(Debug)]
enum SlotState {
    Buffered,
    Delivered,
    Acked,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    arrival: Arrival,
    state: SlotState,
}

/// What an ack did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AckOutcome {
    /// Recorded; these packet ids may be acknowledged now, in this order.
    Acked(Vec<u16>),
    /// The receipt is of an earlier connection; the message was delivered again since.
    Stale,
    /// The receipt names no delivery of this session.
    Unknown,
}

/// The deliveries of one connection (epoch) of a group session.
#[derive(Debug, Default)]
pub(super) struct Deliveries {
    epoch: u64,
    slots: VecDeque<Slot>,
    /// Slots at the front that were handed out (delivered or acknowledged).
    handed_out: usize,
    next_seq: u64,
    /// Acknowledged by the application, PUBACK not yet sent (any epoch).
    held: HashSet<String>,
    /// Ids whose PUBACK was sent recently, in order (bounded), for lost PUBACKs.
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
    /// Ids handed out on this epoch (to tell a stale receipt from a pending redelivery).
    handed_out_ids: HashSet<String>,
    /// The connection of `epoch` is gone; the next one starts a new epoch.
    dead: bool,
}

impl Deliveries {
    /// A new connection: the broker will send everything unacknowledged again.
    /// `session_present == false` means the broker lost the session: nothing comes back.
    pub(super) fn new_epoch(&mut self, epoch: u64, session_present: bool) {
        self.epoch = epoch;
        self.dead = false;
        self.slots.clear();
        self.handed_out = 0;
        self.handed_out_ids.clear();
        if !session_present {
            self.held.clear();
            self.recent.clear();
            self.recent_set.clear();
        }
    }

    /// The connection is gone: what it delivered comes again on the next one (acks of it
    /// made meanwhile settle those arrivals).
    pub(super) fn disconnected(&mut self) {
        self.dead = true;
        self.slots.clear();
        self.handed_out = 0;
        self.handed_out_ids.clear();
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A PUBLISH arrived; returns packet ids that may be acknowledged now.
    pub(super) fn arrive(&mut self, arrival: Arrival) -> Vec<u16> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let settled = arrival.id.as_ref().is_some_and(|id| {
            self.held.contains(id) || (arrival.dup && self.recent_set.contains(id))
        });
        let state = if settled {
            SlotState::Acked
        } else {
            SlotState::Buffered
        };
        self.slots.push_back(Slot {
            seq,
            arrival,
            state,
        });
        if settled { self.flush() } else { Vec::new() }
    }

    /// Hands out up to `max` buffered messages: `(seq, arrival)`, in arrival order.
    pub(super) fn take(&mut self, max: usize) -> Vec<(u64, Arrival)> {
        let mut out = Vec::new();
        let mut i = self.handed_out;
        while i < self.slots.len() && out.len() < max {
            let slot = &mut self.slots[i];
            if matches!(slot.state, SlotState::Buffered) {
                slot.state = SlotState::Delivered;
                if let Some(id) = &slot.arrival.id {
                    self.handed_out_ids.insert(id.clone());
                }
                out.push((slot.seq, slot.arrival.clone()));
            }
            i += 1;
        }
        self.handed_out = i;
        out
    }

    /// The application acknowledges the delivery `(epoch, seq)` of message `id`.
    pub(super) fn ack(&mut self, epoch: u64, seq: u64, id: &str) -> AckOutcome {
        if epoch > self.epoch {
            return AckOutcome::Unknown;
        }
        if epoch != self.epoch || self.dead {
            // An earlier connection's delivery: it comes again (or came again already).
            if id.is_empty() || self.handed_out_ids.contains(id) {
                return AckOutcome::Stale;
            }
            if self.recent_set.contains(id) {
                return AckOutcome::Acked(Vec::new());
            }
            // Not handed out again yet: settle the redelivery when it arrives (or now, if it
            // is already buffered).
            self.held.insert(id.to_string());
            for slot in self.slots.iter_mut().skip(self.handed_out) {
                if slot.arrival.id.as_deref() == Some(id) {
                    slot.state = SlotState::Acked;
                }
            }
            return AckOutcome::Acked(self.flush());
        }
        if seq >= self.next_seq {
            return AckOutcome::Unknown;
        }
        let Ok(index) = self.slots.binary_search_by_key(&seq, |s| s.seq) else {
            // Before the front: acknowledged and PUBACKed already (acks are idempotent).
            return if self.slots.front().is_none_or(|s| seq < s.seq) {
                AckOutcome::Acked(Vec::new())
            } else {
                AckOutcome::Unknown
            };
        };
        let slot = &mut self.slots[index];
        match slot.state {
            SlotState::Buffered => return AckOutcome::Unknown,
            SlotState::Acked => return AckOutcome::Acked(Vec::new()),
            SlotState::Delivered => {}
        }
        if slot.arrival.id.as_deref().unwrap_or("") != id {
            return AckOutcome::Unknown;
        }
        slot.state = SlotState::Acked;
        if let Some(id) = &slot.arrival.id {
            self.held.insert(id.clone());
        }
        AckOutcome::Acked(self.flush())
    }

    /// Pops the acknowledged slots at the front; their packet ids, in receive order.
    fn flush(&mut self) -> Vec<u16> {
        let mut pkids = Vec::new();
        while self
            .slots
            .front()
            .is_some_and(|s| matches!(s.state, SlotState::Acked))
        {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.handed_out = self.handed_out.saturating_sub(1);
            pkids.push(slot.arrival.pkid);
            if let Some(id) = slot.arrival.id {
                self.held.remove(&id);
                if self.recent_set.insert(id.clone()) {
                    self.recent.push_back(id);
                    if self.recent.len() > RECENT {
                        if let Some(old) = self.recent.pop_front() {
                            self.recent_set.remove(&old);
                        }
                    }
                }
            }
        }
        pkids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(pkid: u16, id: &str, dup: bool) -> Arrival {
        Arrival {
            pkid,
            dup,
            id: Some(id.into()),
            message: super::super::Decoded::default(),
        }
    }

    #[test]
    fn later_acks_wait_for_earlier_ones() {
        let mut d = Deliveries::default();
        d.new_epoch(1, false);
        for (pkid, id) in [(1, "a"), (2, "b"), (3, "c")] {
            assert!(d.arrive(arrival(pkid, id, false)).is_empty());
        }
        let got = d.take(10);
        assert_eq!(got.len(), 3);
        assert_eq!(d.ack(1, got[2].0, "c"), AckOutcome::Acked(vec![]));
        assert_eq!(d.ack(1, got[1].0, "b"), AckOutcome::Acked(vec![]));
        assert_eq!(d.ack(1, got[0].0, "a"), AckOutcome::Acked(vec![1, 2, 3]));
        // Idempotent.
        assert_eq!(d.ack(1, got[1].0, "b"), AckOutcome::Acked(vec![]));
        assert_eq!(d.ack(1, 99, "x"), AckOutcome::Unknown);
    }

    #[test]
    fn held_acks_survive_a_reconnect() {
        let mut d = Deliveries::default();
        d.new_epoch(1, false);
        d.arrive(arrival(1, "a", false));
        d.arrive(arrival(2, "b", false));
        let got = d.take(10);
        assert_eq!(d.ack(1, got[1].0, "b"), AckOutcome::Acked(vec![]));
        d.new_epoch(2, true);
        // The broker sends both again: `b` is settled without being handed out.
        assert!(d.arrive(arrival(1, "a", true)).is_empty());
        assert!(d.arrive(arrival(2, "b", true)).is_empty());
        let again = d.take(10);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.id.as_deref(), Some("a"));
        // The first delivery's receipt is stale now that `a` was delivered again.
        assert_eq!(d.ack(1, got[0].0, "a"), AckOutcome::Stale);
        assert_eq!(d.ack(2, again[0].0, "a"), AckOutcome::Acked(vec![1, 2]));
    }

    #[test]
    fn an_ack_during_an_outage_settles_the_redelivery() {
        let mut d = Deliveries::default();
        d.new_epoch(1, false);
        d.arrive(arrival(5, "a", false));
        let got = d.take(1);
        d.new_epoch(2, true);
        assert_eq!(d.ack(1, got[0].0, "a"), AckOutcome::Acked(vec![]));
        assert_eq!(d.arrive(arrival(5, "a", true)), vec![5]);
        assert!(d.take(10).is_empty());
    }

    #[test]
    fn an_ack_after_the_drop_settles_the_redelivery() {
        let mut d = Deliveries::default();
        d.new_epoch(1, false);
        d.arrive(arrival(3, "a", false));
        let got = d.take(1);
        d.disconnected();
        assert_eq!(d.ack(1, got[0].0, "a"), AckOutcome::Acked(vec![]));
        d.new_epoch(2, true);
        assert_eq!(d.arrive(arrival(3, "a", true)), vec![3]);
        assert!(d.take(10).is_empty());
    }

    #[test]
    fn a_lost_puback_does_not_deliver_again() {
        let mut d = Deliveries::default();
        d.new_epoch(1, false);
        d.arrive(arrival(7, "a", false));
        let got = d.take(1);
        assert_eq!(d.ack(1, got[0].0, "a"), AckOutcome::Acked(vec![7]));
        d.new_epoch(2, true);
        assert_eq!(d.arrive(arrival(7, "a", true)), vec![7]);
        assert!(d.take(10).is_empty());
    }
}
