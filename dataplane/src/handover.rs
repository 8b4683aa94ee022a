//! Keeping a flow in order when a reload moves it off a shaper that still holds its packets.
//!
//! SPEC §5: no packet is reordered within a flow during a reload. A flow that stays on its
//! shaper keeps its order by itself (one clock, departures only grow). A flow the reload
//! gives another shaper, or none (a rename, a new `throttle_per`, another policy winning,
//! the throttle removed), would have its next packets leave on the new path while its
//! earlier ones still wait in the timing wheel. So the flow is *held*: until the old
//! shaper's clock (the latest departure it handed out, which covers the flow's last parked
//! packet), its packets leave no earlier than that. Every such packet takes the flow
//! cache's stale-entry path ([`FlowEntry::HOLDING`]), so flows that are not held pay
//! nothing.
//!
//! The wait is bounded by the old shaper's backlog, at most `max_delay_ms` in `run`; a
//! packet parked at a flow's hold leaves after the packets parked before it (the wheel keeps
//! a slot's packets in order). The new shaper is charged for a held packet when it comes,
//! so at the hold's end the flow may send what it sent meanwhile on top of its new burst.
//!
//! A hold is kept by flow hash, apart from the flow's cache entry, so a held flow the cache
//! evicts (full) is held again when it comes back; and a throttled flow evicted before the
//! reload gets its shaper hint back from the cache when it returns, so the reload still
//! finds the shaper that holds its packets. A datagram whose first fragment came
//! before the reload and the rest after is held with its flow: the rest go as the flow
//! (`crate::fragments` keeps the first fragment's flow key).
//!
//! Not covered: a `host` instance retired as idle whose slot another policy's instance for
//! the same host took, on top of a reload (the flow is then held behind that one: later,
//! never out of order).

use hashbrown::HashMap;

use crate::flow_cache::FlowEntry;

/// A held flow: no packet of it leaves before `until` (TSC), and its entry's policy index
/// belongs to the generation tagged `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub until: u64,
    pub tag: u32,
}

/// A worker's held flows, by flow hash.
#[derive(Debug)]
pub struct Holds {
    by_flow: HashMap<u64, Hold>,
    /// The latest `until` of all: past it, every hold is over.
    latest: u64,
    /// Past this many holds, those over are swept out (reloads closer together than the
    /// backlog would otherwise never let `latest` pass).
    sweep_at: usize,
}

impl Holds {
    /// Room for this many held flows before the worker allocates.
    const ROOM: usize = 1024;

    pub fn new() -> Holds {
        Holds {
            by_flow: HashMap::with_capacity(Holds::ROOM),
            latest: 0,
            sweep_at: Holds::ROOM,
        }
    }

    /// Holds the flow hashing to `hash` until `until`.
    pub fn hold(&mut self, hash: u64, hold: Hold) {
        self.latest = self.latest.max(hold.until);
        self.by_flow.insert(hash, hold);
    }

    /// The hold of the flow hashing to `hash`, if it has one.
    pub fn get(&self, hash: u64) -> Option<Hold> {
        self.by_flow.get(&hash).copied()
    }

    /// Ends the hold of the flow hashing to `hash`.
    pub fn release(&mut self, hash: u64) {
        self.by_flow.remove(&hash);
    }

    /// Forgets the holds over at `now` (flows that never sent again): all in one go once
    /// the latest is over (the holds of a reload all end within its shapers' backlog), and
    /// the others when they grow past a bound that doubles with what stays (amortised).
    #[inline]
    pub fn expire(&mut self, now: u64) {
        if self.by_flow.is_empty() {
            return;
        }
        if now > self.latest {
            self.by_flow.clear();
        } else if self.by_flow.len() > self.sweep_at {
            self.by_flow.retain(|_, h| h.until > now);
            self.sweep_at = (2 * self.by_flow.len()).max(Holds::ROOM);
        }
    }

    pub fn len(&self) -> usize {
        self.by_flow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_flow.is_empty()
    }
}

impl Default for Holds {
    fn default() -> Holds {
        Holds::new()
    }
}

/// What becomes of a frame's verdict while its flow is held until `until` (0: not held).
#[inline]
pub fn held(verdict: crate::pipeline::Verdict, until: u64) -> crate::pipeline::Verdict {
    use crate::pipeline::Verdict;
    match verdict {
        Verdict::Forward if until > 0 => Verdict::At(until),
        Verdict::At(t) => Verdict::At(t.max(until)),
        v => v,
    }
}

/// Never a generation tag (those are 31 bits) nor [`FlowEntry::UNCLASSIFIED`].
const _: () =
    assert!(FlowEntry::HOLDING > 0x7fff_ffff && FlowEntry::HOLDING != FlowEntry::UNCLASSIFIED);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Verdict;

    #[test]
    fn a_held_verdict_leaves_no_earlier_than_the_hold() {
        assert_eq!(held(Verdict::Forward, 0), Verdict::Forward);
        assert_eq!(held(Verdict::Forward, 500), Verdict::At(500));
        assert_eq!(held(Verdict::At(300), 500), Verdict::At(500));
        assert_eq!(held(Verdict::At(900), 500), Verdict::At(900));
        assert_eq!(held(Verdict::Drop, 500), Verdict::Drop);
    }

    #[test]
    fn holds_end_one_by_one_or_all_at_once() {
        let mut h = Holds::new();
        h.hold(1, Hold { until: 100, tag: 2 });
        h.hold(2, Hold { until: 300, tag: 2 });
        assert_eq!(h.get(1), Some(Hold { until: 100, tag: 2 }));
        h.release(1);
        assert_eq!((h.get(1), h.len()), (None, 1));
        h.expire(300);
        assert_eq!(h.len(), 1, "not over yet");
        h.expire(301);
        assert!(h.is_empty());
    }

    #[test]
    fn many_holds_are_swept_while_later_ones_last() {
        let mut h = Holds::new();
        // Reloads closer together than the backlog: the latest hold is never over.
        for flow in 0..Holds::ROOM as u64 + 1 {
            h.hold(
                flow,
                Hold {
                    until: flow,
                    tag: 1,
                },
            );
        }
        h.hold(
            u64::MAX,
            Hold {
                until: 1 << 40,
                tag: 2,
            },
        );
        h.expire(Holds::ROOM as u64 / 2);
        assert_eq!(
            h.len(),
            Holds::ROOM / 2 + 1,
            "those still on, and the latest"
        );
        assert_eq!(h.get(u64::MAX).map(|h| h.tag), Some(2));
    }
}
