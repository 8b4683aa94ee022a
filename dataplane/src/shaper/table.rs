//! A worker's table of `host` or `flow` shaper instances: millions of them, created on
//! demand, forgotten when idle.
//!
//! Instances live in a dense slab of slots, indexed by a hash map from key to slot. The
//! caller keeps a [`ShaperHint`] (the slot number) in its flow-cache entry, so a packet of a
//! known flow reaches its shaper with one slab access and one key comparison, without
//! hashing; the map is consulted only when the hint is stale (first packet, or the shaper was
//! retired and its slot reused).
//!
//! An instance whose bucket is full holds nothing a fresh one would not ([`ShaperState`]
//! behaves the same), so [`ShaperTable::retire_idle`] removes those (optionally after a
//! grace period), a bounded number of slots per call so that the worker loop never stops
//! for a sweep. Freed slots are reused
//! before the slab grows; map and slab allocate only when the table outgrows every size it
//! had before (reserve with [`ShaperTable::with_capacity`]).

use std::hash::Hash;

use hashbrown::HashMap;

use super::edt::{Decision, ShaperConfig, ShaperState};
use crate::prefetch::prefetch;

const NIL: u32 = u32::MAX;
/// Set in a hint that names a `policy`-scope shaper (by its id) rather than a table slot.
const POLICY_HINT: u32 = 1 << 31;

/// Where a flow's shaper was last found: keep one in the flow-cache entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaperHint(u32);

impl ShaperHint {
    /// A hint that points nowhere (a new flow).
    pub const NONE: ShaperHint = ShaperHint(NIL);

    /// The hint of a flow on the `policy`-scope shaper `id`: no table slot, but it says
    /// which shaper the flow's packets were parked by ([`crate::handover`]).
    pub fn policy(id: super::ShaperId) -> ShaperHint {
        ShaperHint(POLICY_HINT | id.get())
    }

    /// The `policy`-scope shaper a [`ShaperHint::policy`] hint names.
    pub fn policy_id(self) -> Option<u32> {
        (self.0 != NIL && self.0 & POLICY_HINT != 0).then_some(self.0 & !POLICY_HINT)
    }
}

impl Default for ShaperHint {
    fn default() -> ShaperHint {
        ShaperHint::NONE
    }
}

/// One cache line per instance, so that a prefetch brings in all of it (56 bytes for a
/// host key would straddle two lines three times in four).
#[repr(align(64))]
struct Slot<K> {
    key: K,
    state: ShaperState,
    /// When the bucket will be full again if nothing more is sent (`t_next + burst`).
    idle_at: u64,
    live: bool,
    /// The next free slot while `!live`.
    next_free: u32,
}

/// Shaper instances keyed by `K` (an inside address, a flow hash, usually paired with the
/// policy's [`ShaperId`](super::ShaperId)). Single-owner: one per worker, no locks.
pub struct ShaperTable<K> {
    index: HashMap<K, u32>,
    slots: Vec<Slot<K>>,
    free: u32,
    live: usize,
    sweep: usize,
}

impl<K: Copy + Eq + Hash> ShaperTable<K> {
    /// A table with room for `capacity` live instances before anything allocates.
    pub fn with_capacity(capacity: usize) -> ShaperTable<K> {
        ShaperTable {
            index: HashMap::with_capacity(capacity),
            // Millions of instances are touched at random: on huge pages (see huge_pages).
            slots: crate::huge_pages::vec_with_capacity(capacity),
            free: NIL,
            live: 0,
            sweep: 0,
        }
    }

    /// Live instances.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Schedule a frame of `len` bytes for `key`'s shaper under `cfg`, creating the shaper
    /// (full bucket) if there is none. `hint` is read and updated.
    #[inline]
    pub fn schedule(
        &mut self,
        cfg: &ShaperConfig,
        key: K,
        hint: &mut ShaperHint,
        now: u64,
        len: u32,
    ) -> Decision {
        self.schedule_within(cfg, key, hint, now, len, u64::MAX)
    }

    /// [`schedule`](Self::schedule) with `room` packets left to park ([`ShaperConfig::step`]).
    #[inline]
    pub fn schedule_within(
        &mut self,
        cfg: &ShaperConfig,
        key: K,
        hint: &mut ShaperHint,
        now: u64,
        len: u32,
        room: u64,
    ) -> Decision {
        let i = match self.slots.get(hint.0 as usize) {
            Some(slot) if slot.live && slot.key == key => hint.0 as usize,
            _ => {
                let i = self.find_or_insert(key);
                *hint = ShaperHint(i);
                i as usize
            }
        };
        let slot = &mut self.slots[i];
        let decision = slot.state.schedule_within(cfg, now, len, room);
        slot.idle_at = slot.state.t_next().saturating_add(cfg.burst_cycles());
        decision
    }

    /// Start loading the instance `hint` points to, so that a [`schedule`](Self::schedule)
    /// a few packets later finds it in cache. A worker calls it for every packet of an RX
    /// burst before scheduling any: the misses then overlap instead of following each other.
    #[inline]
    pub fn prefetch(&self, hint: ShaperHint) {
        if let Some(slot) = self.slots.get(hint.0 as usize) {
            prefetch(slot);
        }
    }

    /// The live instance `hint` points to, with its key (whoever it belongs to now: check
    /// the key).
    pub fn at(&self, hint: ShaperHint) -> Option<(&K, &ShaperState)> {
        let slot = self.slots.get(hint.0 as usize).filter(|s| s.live)?;
        Some((&slot.key, &slot.state))
    }

    /// The state of `key`'s shaper, if it has one.
    pub fn get(&self, key: &K) -> Option<&ShaperState> {
        self.index.get(key).map(|&i| &self.slots[i as usize].state)
    }

    /// Look at up to `budget` slots (round robin) and forget the instances whose bucket was
    /// already full at `idle_since`. Returns how many were retired. Never allocates.
    ///
    /// Passing `now` retires an instance the moment it holds nothing; passing a little
    /// earlier (say `now` − 1 s) keeps those of flows that merely pause, so that they are not
    /// removed and re-created over and over (each costs a hash-map update).
    pub fn retire_idle(&mut self, idle_since: u64, budget: usize) -> usize {
        let mut retired = 0;
        for _ in 0..budget.min(self.slots.len()) {
            if self.sweep >= self.slots.len() {
                self.sweep = 0;
            }
            let i = self.sweep;
            self.sweep += 1;
            let slot = &mut self.slots[i];
            if slot.live && slot.idle_at <= idle_since {
                slot.live = false;
                slot.next_free = self.free;
                self.free = i as u32;
                self.index.remove(&slot.key);
                self.live -= 1;
                retired += 1;
            }
        }
        retired
    }

    fn find_or_insert(&mut self, key: K) -> u32 {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let slot = Slot {
            key,
            state: ShaperState::new(),
            idle_at: 0,
            live: true,
            next_free: NIL,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.slots[i as usize].next_free;
            self.slots[i as usize] = slot;
            i
        } else {
            let i = u32::try_from(self.slots.len())
                .ok()
                .filter(|&i| i < POLICY_HINT)
                .expect("a shaper table holds at most 2^31 shapers");
            self.slots.push(slot);
            i
        };
        self.index.insert(key, i);
        self.live += 1;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::super::rate::Rate;
    use super::*;

    fn cfg() -> ShaperConfig {
        // 8 Mb/s at 1 GHz: 1000 cycles per byte; burst 1000 bytes = 1 ms.
        ShaperConfig::new(Rate::new(8_000_000, 1_000_000_000).unwrap(), 1000, u64::MAX)
    }

    #[test]
    fn instances_are_independent() {
        let c = cfg();
        let mut t = ShaperTable::with_capacity(4);
        let (mut ha, mut hb) = (ShaperHint::NONE, ShaperHint::NONE);
        let now = 1 << 30;
        assert_eq!(t.schedule(&c, 1u64, &mut ha, now, 1000), Decision::Now);
        assert_eq!(t.schedule(&c, 2u64, &mut hb, now, 1000), Decision::Now);
        assert_eq!(
            t.schedule(&c, 1u64, &mut ha, now, 1000),
            Decision::At(now + 1_000_000)
        );
        assert_eq!(
            t.schedule(&c, 2u64, &mut hb, now, 500),
            Decision::At(now + 500_000)
        );
        assert_eq!(t.len(), 2);
        // A wrong or missing hint still finds the right shaper.
        let mut stale = hb;
        assert_eq!(
            t.schedule(&c, 1u64, &mut stale, now, 1),
            Decision::At(now + 1_001_000)
        );
        assert_eq!(stale, ha);
        let mut none = ShaperHint::NONE;
        assert_eq!(
            t.schedule(&c, 2u64, &mut none, now, 1),
            Decision::At(now + 501_000)
        );
    }

    #[test]
    fn idle_instances_retire_and_slots_are_reused() {
        let c = cfg();
        let mut t = ShaperTable::with_capacity(1000);
        let mut hints = vec![ShaperHint::NONE; 1000];
        let now = 1 << 30;
        for (k, h) in hints.iter_mut().enumerate() {
            // 1000 bytes from the full bucket, 500 on credit: refilled 1.5 ms after `now`.
            t.schedule(&c, k as u64, h, now, 1500);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.retire_idle(now + 1_499_999, 10_000), 0);
        // The sweep is bounded per call.
        assert_eq!(t.retire_idle(now + 1_500_000, 300), 300);
        assert_eq!(t.retire_idle(now + 1_500_000, 10_000), 700);
        assert!(t.is_empty());
        assert!(t.get(&5).is_none());
        // Old hints are stale; the new keys reuse the slots without growing the slab.
        for (k, h) in hints.iter_mut().enumerate() {
            let later = now + 10_000_000;
            assert_eq!(
                t.schedule(&c, 5000 + k as u64, h, later, 1000),
                Decision::Now
            );
        }
        assert_eq!(t.slots.len(), 1000);
        assert_eq!(t.slots.capacity(), 1000);
        // A retired instance comes back with a full bucket, as if it had never left.
        let mut h = hints[0];
        assert_eq!(
            t.schedule(&c, 0, &mut h, now + 10_000_000, 1000),
            Decision::Now
        );
    }

    #[test]
    fn busy_instances_are_kept() {
        let c = cfg();
        let mut t = ShaperTable::with_capacity(2);
        let (mut a, mut b) = (ShaperHint::NONE, ShaperHint::NONE);
        let now = 1 << 30;
        t.schedule(&c, [1u8; 16], &mut a, now, 100);
        t.schedule(&c, [2u8; 16], &mut b, now, 100_000); // 100 ms of backlog
        assert_eq!(t.retire_idle(now + 50_000_000, 10), 1);
        assert_eq!(t.len(), 1);
        assert!(t.get(&[2u8; 16]).is_some());
    }
}
