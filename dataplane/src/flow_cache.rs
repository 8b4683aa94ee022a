//! The per-worker flow cache: flow key → classification result.
//!
//! Owned by one worker, so no locks. Entries live in a slab (`slots`) and the hash table
//! holds only slot indices, so a hit costs one hash, one probe and the slot's cache line,
//! which the caller needs anyway. Bounded: when full, a CLOCK sweep (an LRU approximation
//! that costs a bit-set per hit instead of list surgery) picks the victim, so an insert
//! never fails and no packet is ever dropped for want of room. Idle entries expire
//! incrementally: each call to [`FlowCache::expire`] looks at a few slots, never the whole
//! table. TCP flows that have seen FIN or RST expire after a shorter timeout.
//!
//! In front of the hash table sits a direct-mapped *front cache* (like Open vSwitch's
//! exact-match cache): the flow hash picks one 16-byte entry naming a slot. Its point is
//! that its address is known from the hash alone, so a worker handling a burst can
//! prefetch every packet's front entry, then every packet's slot, before looking any of
//! them up ([`FlowCache::prefetch_front`], [`FlowCache::prefetch_slot`]): the cache misses
//! of a burst then overlap. A front entry is only a hint, checked against the slot's key;
//! a miss falls back to the hash table, which stays the authority.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::HashTable;
use hashbrown::DefaultHashBuilder;

use crate::counters::{Eviction, WorkerCounters};
use crate::prefetch::prefetch;
use crate::shaper::ShaperHint;
use crate::wire::FlowKey;

/// A flow's classification, as the pipeline stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// The winning policy's index in the policy set, or [`FlowEntry::NO_POLICY`].
    pub policy: u32,
    /// The policy generation the flow was classified under; a different current
    /// generation means: classify again.
    pub generation: u64,
    /// The flow's hash: names its `flow`-scope shaper.
    pub hash: u64,
    /// Where its shaper instance was last found (saves the shaper table a lookup).
    pub shaper_hint: ShaperHint,
}

impl FlowEntry {
    pub const NO_POLICY: u32 = u32::MAX;
    /// Never a published generation: a new entry is always classified.
    pub const UNCLASSIFIED: u64 = u64::MAX;
}

#[derive(Debug, Clone)]
struct Slot {
    key: FlowKey,
    /// Its `hash` is the key's hash (also what names the flow's shaper).
    entry: FlowEntry,
    last_seen: u64,
    /// Set on every hit, cleared by the CLOCK hand as it passes.
    referenced: bool,
    /// The flow saw a TCP FIN or RST: it expires after the short timeout.
    closing: bool,
    occupied: bool,
}

/// Timeouts in TSC cycles.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: u64,
    pub tcp_closed: u64,
}

/// A front-cache entry: the hash of the flow last seen at this position and its slot.
#[derive(Debug, Clone, Copy, Default)]
struct Front {
    hash: u64,
    slot: u32,
}

pub struct FlowCache {
    front: Box<[Front]>,
    front_mask: usize,
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    capacity: usize,
    hasher: DefaultHashBuilder,
    timeouts: Timeouts,
    evict_hand: usize,
    expire_hand: usize,
    counters: Arc<WorkerCounters>,
}

/// How far the CLOCK hand may travel for one eviction before it takes whatever it is on.
const MAX_CLOCK_STEPS: usize = 64;

impl FlowCache {
    /// A cache of at most `capacity` flows. Memory for all of them is reserved now so the
    /// data path never allocates.
    pub fn new(capacity: usize, timeouts: Timeouts, counters: Arc<WorkerCounters>) -> FlowCache {
        let capacity = capacity.max(1);
        // Four front entries per flow (so that few flows share one), 64 KiB..16 MiB.
        let front_len = (4 * capacity).next_power_of_two().clamp(1 << 12, 1 << 20);
        FlowCache {
            front: vec![
                Front {
                    hash: 0,
                    slot: u32::MAX
                };
                front_len
            ]
            .into_boxed_slice(),
            front_mask: front_len - 1,
            table: HashTable::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
            hasher: DefaultHashBuilder::default(),
            timeouts,
            evict_hand: 0,
            expire_hand: 0,
            counters,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The hash the cache files `key` under.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Starts loading the front-cache entry of `hash` (first stage of a burst).
    #[inline]
    pub fn prefetch_front(&self, hash: u64) {
        prefetch(&self.front[hash as usize & self.front_mask]);
    }

    /// Starts loading the slot the front cache names for `hash`, if any (second stage).
    #[inline]
    pub fn prefetch_slot(&self, hash: u64) {
        let f = self.front[hash as usize & self.front_mask];
        if f.hash == hash {
            if let Some(slot) = self.slots.get(f.slot as usize) {
                prefetch(slot);
                prefetch(&slot.last_seen);
            }
        }
    }

    /// Finds `key`'s entry, inserting an [`FlowEntry::UNCLASSIFIED`] one on a miss
    /// (evicting another flow if the cache is full). `closing` marks a TCP FIN/RST.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: u64, closing: bool) -> &mut FlowEntry {
        let hash = self.hash(key);
        self.lookup_hashed(key, hash, now, closing)
    }

    /// [`FlowCache::lookup`] with the key's [`hash`](FlowCache::hash) already computed.
    #[inline]
    pub fn lookup_hashed(
        &mut self,
        key: &FlowKey,
        hash: u64,
        now: u64,
        closing: bool,
    ) -> &mut FlowEntry {
        let fi = hash as usize & self.front_mask;
        let f = self.front[fi];
        let in_front = f.hash == hash
            && self
                .slots
                .get(f.slot as usize)
                .is_some_and(|s| s.occupied && s.key == *key);
        let found = if in_front {
            Some(f.slot)
        } else {
            let slots = &self.slots;
            self.table
                .find(hash, |&i| slots[i as usize].key == *key)
                .copied()
        };
        // A new flow enters unreferenced: one-packet flows (scans, churn) are the first
        // the CLOCK hand takes, while flows that come back keep their place.
        let (index, hit) = match found {
            Some(i) => {
                self.counters.cache_hits.inc();
                (i as usize, true)
            }
            None => {
                self.counters.cache_misses.inc();
                (self.insert(*key, hash), false)
            }
        };
        self.front[fi] = Front {
            hash,
            slot: index as u32,
        };
        let slot = &mut self.slots[index];
        slot.last_seen = now;
        slot.referenced = hit;
        slot.closing |= closing;
        &mut slot.entry
    }

    fn insert(&mut self, key: FlowKey, hash: u64) -> usize {
        if self.table.len() >= self.capacity {
            let victim = self.clock_victim();
            self.remove(victim, Eviction::Full);
        }
        let slot = Slot {
            key,
            entry: FlowEntry {
                policy: FlowEntry::NO_POLICY,
                generation: FlowEntry::UNCLASSIFIED,
                hash,
                shaper_hint: ShaperHint::NONE,
            },
            last_seen: 0,
            referenced: false,
            closing: false,
            occupied: true,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i as usize
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, index as u32, |&i| slots[i as usize].entry.hash);
        self.counters.cache_entries.set(self.table.len() as u64);
        index
    }

    /// The CLOCK sweep: skip (and clear) recently used slots, take the first that was not.
    fn clock_victim(&mut self) -> usize {
        let n = self.slots.len();
        for _ in 0..MAX_CLOCK_STEPS {
            let i = self.evict_hand % n;
            self.evict_hand = i + 1;
            let slot = &mut self.slots[i];
            if !slot.occupied {
                continue;
            }
            if !slot.referenced {
                return i;
            }
            slot.referenced = false;
        }
        // Everything the hand passed was in use: take the next occupied slot.
        loop {
            let i = self.evict_hand % n;
            self.evict_hand = i + 1;
            if self.slots[i].occupied {
                return i;
            }
        }
    }

    fn remove(&mut self, index: usize, why: Eviction) {
        let slot = &mut self.slots[index];
        let (hash, key) = (slot.entry.hash, slot.key);
        slot.occupied = false;
        let slots = &self.slots;
        if let Ok(e) = self.table.find_entry(hash, |&i| {
            slots[i as usize].key == key && i as usize == index
        }) {
            e.remove();
        }
        self.free.push(index as u32);
        self.counters.evictions[why as usize].inc();
        self.counters.cache_entries.set(self.table.len() as u64);
    }

    /// Looks at up to `budget` slots and removes the ones idle for longer than their
    /// timeout. Called once per poll loop, so expiry is spread over time.
    pub fn expire(&mut self, now: u64, budget: usize) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        for _ in 0..budget.min(n) {
            let i = self.expire_hand % n;
            self.expire_hand = i + 1;
            let slot = &self.slots[i];
            if !slot.occupied {
                continue;
            }
            let idle = now.saturating_sub(slot.last_seen);
            if slot.closing && idle > self.timeouts.tcp_closed {
                self.remove(i, Eviction::TcpClose);
            } else if idle > self.timeouts.idle {
                self.remove(i, Eviction::Idle);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl FlowCache {
        fn find(&self, key: &FlowKey) -> Option<FlowEntry> {
            let hash = self.hasher.hash_one(key);
            let slots = &self.slots;
            self.table
                .find(hash, |&i| slots[i as usize].key == *key)
                .map(|&i| slots[i as usize].entry)
        }
    }

    fn key(n: u32) -> FlowKey {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&n.to_be_bytes());
        FlowKey {
            src,
            dst: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 1000,
            dst_port: 80,
            vlan: FlowKey::NO_VLAN,
            protocol: 6,
            flags: 0,
        }
    }

    fn cache(capacity: usize) -> (FlowCache, Arc<WorkerCounters>) {
        let c = Arc::new(WorkerCounters::default());
        (
            FlowCache::new(
                capacity,
                Timeouts {
                    idle: 1000,
                    tcp_closed: 100,
                },
                c.clone(),
            ),
            c,
        )
    }

    #[test]
    fn a_new_flow_misses_once_then_hits() {
        let (mut fc, c) = cache(16);
        let e = fc.lookup(&key(1), 0, false);
        assert_eq!(e.generation, FlowEntry::UNCLASSIFIED);
        e.policy = 7;
        e.generation = 1;
        for t in 1..5 {
            let e = *fc.lookup(&key(1), t, false);
            assert_eq!((e.policy, e.generation), (7, 1));
        }
        assert_eq!((c.cache_misses.get(), c.cache_hits.get()), (1, 4));
        assert_eq!(c.cache_entries.get(), 1);
    }

    #[test]
    fn churn_through_a_small_cache_keeps_it_bounded_and_counts_evictions() {
        let (mut fc, c) = cache(100);
        for n in 0..1000 {
            let e = fc.lookup(&key(n), u64::from(n), false);
            assert_eq!(e.generation, FlowEntry::UNCLASSIFIED, "flow {n} is new");
            e.generation = 1;
            e.policy = n;
            assert!(fc.len() <= 100);
        }
        assert_eq!(fc.len(), 100);
        assert_eq!(c.evictions[Eviction::Full as usize].get(), 900);
        assert_eq!(c.cache_misses.get(), 1000);
        // Every surviving entry still answers with its own policy.
        let survivors: Vec<u32> = (0..1000).filter(|&n| fc.find(&key(n)).is_some()).collect();
        assert_eq!(survivors.len(), 100);
        for n in survivors {
            assert_eq!(fc.find(&key(n)).unwrap().policy, n);
        }
    }

    #[test]
    fn recently_used_flows_survive_eviction() {
        let (mut fc, _) = cache(64);
        for n in 0..64 {
            fc.lookup(&key(n), 0, false).generation = 1;
        }
        // Flow 0 stays busy while 200 one-packet flows pass through.
        for n in 100..300 {
            fc.lookup(&key(0), u64::from(n), false);
            fc.lookup(&key(n), u64::from(n), false).generation = 1;
        }
        assert_eq!(
            fc.find(&key(0)).map(|e| e.generation),
            Some(1),
            "the busy flow was never evicted"
        );
    }

    #[test]
    fn idle_flows_expire_incrementally_and_closed_tcp_sooner() {
        let (mut fc, c) = cache(16);
        fc.lookup(&key(1), 0, false);
        fc.lookup(&key(2), 0, true);
        fc.lookup(&key(3), 900, false);
        fc.expire(150, 16);
        assert!(
            fc.find(&key(2)).is_none(),
            "closed TCP flow expired after 100 cycles"
        );
        assert!(fc.find(&key(1)).is_some());
        fc.expire(1500, 1);
        assert_eq!(fc.len(), 1, "one slot examined per call");
        fc.expire(1500, 16);
        assert!(fc.find(&key(1)).is_none());
        assert!(fc.find(&key(3)).is_some(), "seen at 900, idle only 600");
        assert_eq!(c.evictions[Eviction::TcpClose as usize].get(), 1);
        assert_eq!(c.evictions[Eviction::Idle as usize].get(), 1);
        assert_eq!(c.cache_entries.get(), 1);
        // A freed slot is reused.
        fc.lookup(&key(4), 1600, false);
        assert_eq!(fc.slots.len(), 3);
    }
}
