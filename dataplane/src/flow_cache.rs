//! The per-worker flow cache: flow key → classification result.
//!
//! Owned by one worker, so no locks. Entries live in a slab (`slots`) of one cache line
//! each, and the hash table holds only slot indices, so a hit costs one hash, one probe and
//! the slot's line, which the caller needs anyway. Bounded: when full, a CLOCK sweep (an
//! LRU approximation that costs a bit-set per hit instead of list surgery) picks the victim,
//! so an insert never fails and no packet is ever dropped for want of room. Idle entries
//! expire incrementally: each call to [`FlowCache::expire`] looks at a few slots, never the
//! whole table. TCP flows that have seen FIN or RST expire after a shorter timeout: a RST
//! ends both directions' entries (the side that is reset sends nothing more), and a SYN
//! on a closing entry is a new connection on the 5-tuple, which lives as long as any.
//!
//! In front of the hash table sits a *front cache* (like Open vSwitch's exact-match
//! cache): the flow hash picks one bucket, a cache line of eight (hash tag, slot) ways.
//! Its point is that its address is known from the hash alone, so a worker handling a
//! burst can prefetch every packet's bucket, then every packet's slot, before looking any
//! of them up ([`FlowCache::prefetch_front`], [`FlowCache::prefetch_slot`]): the cache
//! misses of a burst then overlap. Eight ways and twice as many ways as flows keep
//! collisions rare even with a million flows (a direct-mapped front of that size sent
//! most packets to the hash table, three dependent misses each). A front entry is only a
//! hint, checked against the slot's key; a miss falls back to the hash table, which stays
//! the authority.
//!
//! The front is sized for the capacity but used only as far as the flows need: the hash
//! picks a bucket among the first [`FRONT_MIN`] at first, and that span doubles whenever
//! the flows outgrow it (four flows a bucket). So ten thousand flows in a cache for a
//! million share 4 096 buckets (256 KiB) instead of each having a line of 16 MiB to
//! itself. Doubling moves nothing: a flow whose bucket changed misses the front once, is
//! found in the hash table and entered in its new bucket; what it left behind in the old
//! one is a stale hint, which the key check rejects and newer flows overwrite.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::HashTable;

use crate::counters::{Eviction, WorkerCounters};
use crate::huge_pages;
use crate::prefetch::prefetch;
use crate::shaper::ShaperHint;
use crate::wire::tcp::flags::{FIN, RST, SYN};
use crate::wire::FlowKey;

/// A flow's classification, as the pipeline stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// The winning policy's index in the policy set, or [`FlowEntry::NO_POLICY`].
    pub policy: u32,
    /// The [`generation_tag`] of the policy generation the flow was classified under; a
    /// different current tag means: classify again.
    pub generation: u32,
    /// Where its shaper instance was last found (saves the shaper table a lookup).
    pub shaper_hint: ShaperHint,
    /// The [`PolicyStats::id`](crate::policy_set::PolicyStats::id) of the policy whose
    /// `flows` counter counted this flow, or [`FlowEntry::NO_POLICY`]: a reload that
    /// classifies the flow to the same policy again does not count it twice.
    pub counted: u32,
}

impl FlowEntry {
    pub const NO_POLICY: u32 = u32::MAX;
    /// Never a [`generation_tag`]: a new entry is always classified.
    pub const UNCLASSIFIED: u32 = u32::MAX;
    /// Never a [`generation_tag`] either: the flow is held after a reload moved it off a
    /// shaper that still holds its packets ([`crate::handover`]), so each of its packets
    /// takes the stale-entry path until the hold ends.
    pub const HOLDING: u32 = u32::MAX - 1;
}

/// What a flow entry stores of a policy generation: its low 31 bits, which keeps the slot
/// in one cache line. Two generations share a tag only 2³¹ reloads apart, and a flow idle
/// for that long has expired many times over.
#[inline]
pub fn generation_tag(generation: u64) -> u32 {
    generation as u32 & 0x7fff_ffff
}

/// The flow hash: a folded multiply (as in foldhash and wyhash) over the key's five words,
/// seeded per cache so that nobody outside can aim flows at one bucket. Four multiplies
/// where hashing the key field by field through `Hasher` took a dozen calls' worth.
///
/// The last fold mixes the result once more. Without it, keys that differ only in the
/// fifth word's upper ports half (the replies to one client's connections; a datagram's IP
/// ID in the fragment table) got low bits in an arithmetic progression whose step, set by
/// the seed, could be a multiple of a large power of two: for about one seed in a hundred
/// more than 12 of 500 consecutive destination ports shared one of 1 024 buckets, and up
/// to 150 of 500 IP IDs one set (the front cache's buckets and the fragment table's sets
/// are picked by the low bits).
#[derive(Debug, Clone, Copy)]
pub struct FlowHasher {
    seed: [u64; 3],
}

impl FlowHasher {
    /// A hasher with fresh random seeds (from the standard library's per-process keys).
    pub fn new() -> FlowHasher {
        let s = std::collections::hash_map::RandomState::new();
        FlowHasher {
            seed: [s.hash_one(1u8), s.hash_one(2u8), s.hash_one(3u8)],
        }
    }

    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        #[inline(always)]
        fn fold(a: u64, b: u64) -> u64 {
            let p = u128::from(a) * u128::from(b);
            p as u64 ^ (p >> 64) as u64
        }
        let [w0, w1, w2, w3, w4] = key.words();
        let [s0, s1, s2] = self.seed;
        let a = fold(w0 ^ s0, w1 ^ s1);
        let b = fold(w2 ^ s2, w3 ^ s0);
        fold(fold(a ^ w4, b ^ s1), s2 | 1)
    }
}

impl Default for FlowHasher {
    fn default() -> Self {
        FlowHasher::new()
    }
}

/// Bits of [`Slot::state`].
const OCCUPIED: u8 = 1;
/// Set on every hit, cleared by the CLOCK hand as it passes.
const REFERENCED: u8 = 2;
/// The flow saw a TCP FIN or RST: it expires after the short timeout.
const CLOSING: u8 = 4;
/// The TCP flags that change a flow's life (see [`FlowCache::tcp_life`]).
const LIFE: u8 = FIN | SYN | RST;

/// One flow, in one cache line: the key (40 bytes), its entry (16), when it was last seen
/// (in [`FlowCache::tick_shift`] units) and its state bits.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Slot {
    key: FlowKey,
    entry: FlowEntry,
    last_seen: u32,
    state: u8,
}

impl Slot {
    /// Notes a packet of the flow at `tick`, setting `state` bits; returns its entry.
    #[inline]
    fn seen(&mut self, tick: u32, state: u8) -> &mut FlowEntry {
        self.last_seen = tick;
        self.state |= state;
        &mut self.entry
    }
}

/// Timeouts in TSC cycles.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: u64,
    pub tcp_closed: u64,
}

/// Ways of a front-cache bucket.
const WAYS: usize = 8;
/// Flows per front bucket before the front's span doubles: two ways per flow.
const FLOWS_PER_BUCKET: usize = WAYS / 2;
/// The front's first span, in buckets (4 KiB).
const FRONT_MIN: usize = 1 << 6;

/// A front-cache bucket: for each way, the top 16 bits of a flow's hash (its low bits
/// picked the bucket) and its slot, or [`Candidate::NONE`]. Sixteen bits are enough for a
/// hint. Two flows of one bucket with the same tag take each other's way, and while both
/// are active they miss the front on every packet and go to the hash table (no more: the
/// key check keeps them apart). With up to three other flows in its bucket, that is about
/// one flow in 20 000.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct FrontBucket {
    tags: [u16; WAYS],
    slots: [u32; WAYS],
}

/// A flow's tag in its front bucket.
#[inline]
fn front_tag(hash: u64) -> u16 {
    (hash >> 48) as u16
}

impl FrontBucket {
    const EMPTY: FrontBucket = FrontBucket {
        tags: [0; WAYS],
        slots: [Candidate::NONE.0; WAYS],
    };

    /// The way holding `tag`, if any: eight compares in one SSE2 instruction (the
    /// compiler leaves the plain loop scalar).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn way(&self, tag: u16) -> Option<usize> {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline; the unaligned 16-byte load is
        // exactly `self.tags`.
        let mask = unsafe {
            let tags = _mm_loadu_si128(self.tags.as_ptr().cast());
            _mm_movemask_epi8(_mm_cmpeq_epi16(tags, _mm_set1_epi16(tag as i16))) as u32
        };
        // Two mask bits per way.
        (mask != 0).then(|| mask.trailing_zeros() as usize / 2)
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn way(&self, tag: u16) -> Option<usize> {
        self.tags.iter().position(|&t| t == tag)
    }
}

/// The slot the front cache names for a hash: a hint from the second stage of a burst to
/// the lookup, checked against the slot's key there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate(u32);

impl Candidate {
    pub const NONE: Candidate = Candidate(u32::MAX);
}

/// What the first stages of a burst found out about a flow for its lookup: its hash and
/// the front cache's candidate slot.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub hash: u64,
    pub candidate: Candidate,
}

/// A time as the cache counts it for a flow's last packet: TSC cycles shifted right.
#[derive(Debug, Clone, Copy)]
pub struct Tick(u32);

pub struct FlowCache {
    front: Box<[FrontBucket]>,
    /// The span of `front` in use, less one: a power of two up to `front.len()`.
    front_mask: usize,
    /// Turns to pick the way a new flow takes in a full bucket.
    front_victim: usize,
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    capacity: usize,
    hasher: FlowHasher,
    /// `last_seen` counts TSC cycles shifted right by this: fine enough that the shorter
    /// timeout is at least 1 024 ticks, coarse enough for 32 bits (days).
    tick_shift: u32,
    /// The timeouts in ticks.
    idle_ticks: i32,
    closed_ticks: i32,
    evict_hand: usize,
    expire_hand: usize,
    /// Where the shaper instances of removed throttled flows were, by flow hash
    /// (direct-mapped, [`PARTED`] of them): a flow that comes back gets its hint again, so
    /// that a reload in between still finds the shaper that may hold its packets
    /// ([`crate::handover`]). A newer flow of the same slot takes its place.
    parted: Box<[(u64, ShaperHint)]>,
    counters: Arc<WorkerCounters>,
}

/// How many removed flows' shaper hints [`FlowCache`] keeps: their packets leave within
/// `max_delay_ms`, so only those removed recently matter.
const PARTED: usize = 1024;

/// The slot a round-robin `hand` over `n` slots points at, moving the hand on. It wraps by
/// a compare: a division per step cost more than the look at the slot. (`slots` never
/// shrinks, so the hand is never beyond `n`.)
#[inline]
fn advance(hand: &mut usize, n: usize) -> usize {
    let i = if *hand < n { *hand } else { 0 };
    *hand = i + 1;
    i
}

/// The front's buckets for `capacity` flows: two ways per flow, in buckets of eight,
/// 4 KiB..32 MiB.
fn front_buckets(capacity: usize) -> usize {
    (capacity / FLOWS_PER_BUCKET)
        .next_power_of_two()
        .clamp(FRONT_MIN, 1 << 19)
}

/// How far the CLOCK hand may travel for one eviction before it takes whatever it is on.
const MAX_CLOCK_STEPS: usize = 64;

impl FlowCache {
    /// A cache of at most `capacity` flows. Memory for all of them is reserved now so the
    /// data path never allocates.
    pub fn new(capacity: usize, timeouts: Timeouts, counters: Arc<WorkerCounters>) -> FlowCache {
        let capacity = capacity.max(1);
        let buckets = front_buckets(capacity);
        let shorter = timeouts.idle.min(timeouts.tcp_closed).max(1);
        let tick_shift = (63 - shorter.leading_zeros()).saturating_sub(10);
        let ticks = |t: u64| i32::try_from(t >> tick_shift).unwrap_or(i32::MAX);
        // The two big tables on huge pages (asked for before their memory is touched).
        let mut front = huge_pages::vec_with_capacity(buckets);
        front.resize(buckets, FrontBucket::EMPTY);
        FlowCache {
            front: front.into_boxed_slice(),
            front_mask: FRONT_MIN - 1,
            front_victim: 0,
            table: HashTable::with_capacity(capacity),
            slots: huge_pages::vec_with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
            hasher: FlowHasher::new(),
            tick_shift,
            idle_ticks: ticks(timeouts.idle),
            closed_ticks: ticks(timeouts.tcp_closed),
            evict_hand: 0,
            expire_hand: 0,
            parted: vec![(0, ShaperHint::NONE); PARTED].into_boxed_slice(),
            counters,
        }
    }

    /// About how many bytes a cache of `capacity` flows takes once full (reserved at
    /// start, touched as flows arrive): a slot, the index's entry and control byte at
    /// hashbrown's 7/8 load rounded up to a power of two, a free-list entry, and the front.
    pub fn bytes_for(capacity: usize) -> usize {
        let capacity = capacity.max(1);
        let index = (capacity * 8 / 7).next_power_of_two() * (size_of::<u32>() + 1);
        capacity * (size_of::<Slot>() + size_of::<u32>())
            + index
            + front_buckets(capacity) * size_of::<FrontBucket>()
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
        self.hasher.hash(key)
    }

    /// The cache's clock at TSC time `now`, for [`FlowCache::lookup_probed`] (found once
    /// for a whole burst).
    #[inline]
    pub fn tick(&self, now: u64) -> Tick {
        Tick((now >> self.tick_shift) as u32)
    }

    #[inline]
    fn bucket(&self, hash: u64) -> usize {
        hash as usize & self.front_mask
    }

    /// Starts loading the front-cache bucket of `hash` (first stage of a burst).
    #[inline]
    pub fn prefetch_front(&self, hash: u64) {
        prefetch(self.front.as_ptr().wrapping_add(self.bucket(hash)));
    }

    /// The slot the front cache names for `hash`, whose loading this starts (second
    /// stage); pass it to [`FlowCache::lookup_probed`].
    #[inline]
    pub fn prefetch_slot(&self, hash: u64) -> Candidate {
        let bucket = &self.front[self.bucket(hash)];
        match bucket.way(front_tag(hash)) {
            Some(w) => {
                let slot = bucket.slots[w];
                // Unchecked: a way may name no slot (an empty way whose tag 0 matched, or a
                // way whose flow was removed), and the lookup checks before it reads.
                prefetch(self.slots.as_ptr().wrapping_add(slot as usize));
                Candidate(slot)
            }
            None => Candidate::NONE,
        }
    }

    /// Finds `key`'s entry, inserting an [`FlowEntry::UNCLASSIFIED`] one on a miss
    /// (evicting another flow if the cache is full). `tcp_flags` is the packet's TCP flags
    /// octet (0 if it has none): FIN, RST and SYN change the flow's life.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: u64, tcp_flags: u8) -> &mut FlowEntry {
        let hash = self.hash(key);
        let candidate = self.prefetch_slot(hash);
        let tick = self.tick(now);
        self.lookup_probed(key, Probe { hash, candidate }, tick, tcp_flags)
    }

    /// [`FlowCache::lookup`] with the key's [`hash`](FlowCache::hash), the front cache's
    /// [`Candidate`] and the [`tick`](FlowCache::tick) already found.
    #[inline]
    pub fn lookup_probed(
        &mut self,
        key: &FlowKey,
        Probe { hash, candidate }: Probe,
        Tick(tick): Tick,
        tcp_flags: u8,
    ) -> &mut FlowEntry {
        let in_front = self
            .slots
            .get(candidate.0 as usize)
            .is_some_and(|s| s.state & OCCUPIED != 0 && s.key == *key);
        // The front hit and the table lookup each update their own slot: through one
        // merged index the hit path bounds-checked its slot twice.
        if in_front {
            self.counters.cache_hits.inc();
            return self.seen(candidate.0 as usize, tick, REFERENCED, tcp_flags);
        }
        let (index, referenced) = self.lookup_table(key, hash);
        self.seen(index, tick, referenced, tcp_flags)
    }

    /// Notes a packet of the flow in slot `index` ([`Slot::seen`]), and what its TCP flags
    /// say of the flow's life.
    #[inline(always)]
    fn seen(&mut self, index: usize, tick: u32, referenced: u8, tcp_flags: u8) -> &mut FlowEntry {
        if tcp_flags & LIFE != 0 {
            return self.tcp_life(index, tick, referenced, tcp_flags);
        }
        self.slots[index].seen(tick, referenced)
    }

    /// [`Slot::seen`] for a packet with FIN, RST or SYN in `tcp_flags`. FIN or RST: the
    /// flow is closing, and expires after the short timeout; a RST closes the other
    /// direction's entry too, which would otherwise wait out the idle timeout. A SYN
    /// alone: a new connection on the 5-tuple (a client reusing its port), no longer
    /// closing.
    #[cold]
    #[inline(never)]
    fn tcp_life(
        &mut self,
        index: usize,
        tick: u32,
        referenced: u8,
        tcp_flags: u8,
    ) -> &mut FlowEntry {
        if tcp_flags & RST != 0 {
            let reply = reversed(&self.slots[index].key);
            if let Some(i) = self.slot_of(&reply, self.hash(&reply)) {
                self.slots[i].state |= CLOSING;
            }
        }
        let slot = &mut self.slots[index];
        if tcp_flags & (FIN | RST) != 0 {
            slot.state |= CLOSING;
        } else {
            slot.state &= !CLOSING;
        }
        slot.seen(tick, referenced)
    }

    /// The slot holding `key` (whose hash is `hash`), if the hash table has it.
    #[inline]
    fn slot_of(&self, key: &FlowKey, hash: u64) -> Option<usize> {
        let slots = &self.slots;
        (self.table)
            .find(hash, |&i| slots[i as usize].key == *key)
            .map(|&i| i as usize)
    }

    /// The hash table's answer for a key the front cache did not know (inserting it if
    /// new), and whether it counts as referenced; enters it in the front cache.
    #[inline(never)]
    fn lookup_table(&mut self, key: &FlowKey, hash: u64) -> (usize, u8) {
        // A new flow enters unreferenced: one-packet flows (scans, churn) are the first
        // the CLOCK hand takes, while flows that come back keep their place.
        let (index, referenced) = match self.slot_of(key, hash) {
            Some(i) => {
                self.counters.cache_hits.inc();
                (i, REFERENCED)
            }
            None => {
                self.counters.cache_misses.inc();
                (self.insert(*key, hash), 0)
            }
        };
        let tag = front_tag(hash);
        let bi = self.bucket(hash);
        let bucket = &mut self.front[bi];
        let w = match bucket.way(tag) {
            Some(w) => w,
            None => match bucket.slots.iter().position(|&s| s == Candidate::NONE.0) {
                Some(w) => w,
                None => {
                    self.front_victim = self.front_victim.wrapping_add(1);
                    self.front_victim % WAYS
                }
            },
        };
        bucket.tags[w] = tag;
        bucket.slots[w] = index as u32;
        (index, referenced)
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
                shaper_hint: self.parted_hint(hash),
                counted: FlowEntry::NO_POLICY,
            },
            last_seen: 0,
            state: OCCUPIED,
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
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table
            .insert_unique(hash, index as u32, |&i| hasher.hash(&slots[i as usize].key));
        self.counters.cache_entries.set(self.table.len() as u64);
        // The flows outgrew the front's span: double it (module docs).
        let span = self.front_mask + 1;
        if self.table.len() > span * FLOWS_PER_BUCKET && span < self.front.len() {
            self.front_mask = 2 * span - 1;
        }
        index
    }

    /// The CLOCK sweep: skip (and clear) recently used slots, take the first that was not.
    fn clock_victim(&mut self) -> usize {
        let n = self.slots.len();
        for _ in 0..MAX_CLOCK_STEPS {
            let i = advance(&mut self.evict_hand, n);
            let slot = &mut self.slots[i];
            if slot.state & OCCUPIED == 0 {
                continue;
            }
            if slot.state & REFERENCED == 0 {
                return i;
            }
            slot.state &= !REFERENCED;
        }
        // Everything the hand passed was in use: take the next occupied slot.
        loop {
            let i = advance(&mut self.evict_hand, n);
            if self.slots[i].state & OCCUPIED != 0 {
                return i;
            }
        }
    }

    fn remove(&mut self, index: usize, why: Eviction) {
        let slot = &mut self.slots[index];
        slot.state = 0;
        let (key, hint) = (slot.key, slot.entry.shaper_hint);
        let hash = self.hasher.hash(&key);
        if hint != ShaperHint::NONE {
            self.parted[hash as usize % PARTED] = (hash, hint);
        }
        if let Ok(e) = self.table.find_entry(hash, |&i| i as usize == index) {
            e.remove();
        }
        let bi = self.bucket(hash);
        let bucket = &mut self.front[bi];
        for s in bucket.slots.iter_mut().filter(|s| **s == index as u32) {
            *s = Candidate::NONE.0;
        }
        self.free.push(index as u32);
        self.counters.evictions[why as usize].inc();
        self.counters.cache_entries.set(self.table.len() as u64);
    }

    /// The shaper hint a removed flow hashing to `hash` left (taken), or none.
    fn parted_hint(&mut self, hash: u64) -> ShaperHint {
        let parted = &mut self.parted[hash as usize % PARTED];
        if parted.0 != hash {
            return ShaperHint::NONE;
        }
        std::mem::replace(parted, (0, ShaperHint::NONE)).1
    }

    /// Looks at up to `budget` slots and removes the ones idle for longer than their
    /// timeout. Called once per poll loop, so expiry is spread over time.
    pub fn expire(&mut self, now: u64, budget: usize) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        let Tick(tick) = self.tick(now);
        for _ in 0..budget.min(n) {
            let i = advance(&mut self.expire_hand, n);
            let slot = &self.slots[i];
            if slot.state & OCCUPIED == 0 {
                continue;
            }
            // Wrapping, signed: `last_seen` is 32 bits of ticks, every slot is looked at
            // far more often than they wrap, and a flow seen after `now` is not idle.
            let idle = tick.wrapping_sub(slot.last_seen) as i32;
            if slot.state & CLOSING != 0 && idle > self.closed_ticks {
                self.remove(i, Eviction::TcpClose);
            } else if idle > self.idle_ticks {
                self.remove(i, Eviction::Idle);
            }
        }
    }
}
/// The key of the other direction of `key`'s connection: addresses and ports swapped, the
/// other side's direction.
fn reversed(key: &FlowKey) -> FlowKey {
    FlowKey {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        flags: key.flags ^ FlowKey::INBOUND,
        ..*key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::flags::ACK;

    impl FlowCache {
        fn find(&self, key: &FlowKey) -> Option<FlowEntry> {
            let i = self.slot_of(key, self.hash(key))?;
            Some(self.slots[i].entry)
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

    /// Flows that differ only in their destination port spread over the low bits of their
    /// hashes as random ones would, whatever the seed: 500 of them over 1 024 buckets put
    /// at most 6 or so in one (more than 12 has odds of about 10⁻¹²); the hash before its
    /// last fold put more than 12 in one for about one seed in a hundred (up to 150 for
    /// the fragment table's keys, whose IDs sit where these ports do).
    #[test]
    fn consecutive_ports_spread_over_the_low_bits_for_every_seed() {
        for _ in 0..1000 {
            let hasher = FlowHasher::new();
            let mut buckets = vec![0u32; 1024];
            for port in 0..500u16 {
                // The replies to one client's connections: its ports are the destination's.
                let flow = FlowKey {
                    dst_port: 40_000 + port,
                    ..key(1)
                };
                buckets[hasher.hash(&flow) as usize % 1024] += 1;
            }
            let fullest = buckets.iter().max().copied().unwrap_or(0);
            assert!(
                fullest <= 12,
                "{fullest} of 500 flows in one bucket: {hasher:?}"
            );
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
        let e = fc.lookup(&key(1), 0, 0);
        assert_eq!(e.generation, FlowEntry::UNCLASSIFIED);
        e.policy = 7;
        e.generation = 1;
        for t in 1..5 {
            let e = *fc.lookup(&key(1), t, 0);
            assert_eq!((e.policy, e.generation), (7, 1));
        }
        assert_eq!((c.cache_misses.get(), c.cache_hits.get()), (1, 4));
        assert_eq!(c.cache_entries.get(), 1);
    }

    #[test]
    fn churn_through_a_small_cache_keeps_it_bounded_and_counts_evictions() {
        let (mut fc, c) = cache(100);
        for n in 0..1000 {
            let e = fc.lookup(&key(n), u64::from(n), 0);
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
    fn a_full_cache_of_a_million_flows_takes_about_90_mb() {
        let mb = FlowCache::bytes_for(1 << 20) >> 20;
        assert!((85..=100).contains(&mb), "{mb} MB");
        // The front is bounded, the rest grows with the flows.
        let big = FlowCache::bytes_for(1 << 24) >> 20;
        assert!((1100..=1400).contains(&big), "{big} MB");
    }

    #[test]
    fn a_slot_and_a_front_bucket_are_one_cache_line_each() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(std::mem::size_of::<FrontBucket>(), 64);
    }

    #[test]
    fn the_front_grows_with_the_flows_not_with_the_capacity() {
        let (mut fc, c) = cache(1 << 20);
        assert_eq!(fc.front.len(), 1 << 18);
        assert_eq!(fc.front_mask + 1, FRONT_MIN);
        for n in 0..10_000 {
            fc.lookup(&key(n), 0, 0).policy = n;
        }
        // 10 000 flows at four a bucket: a span of 4 096 buckets.
        assert_eq!(fc.front_mask + 1, 4096);
        // Flows entered before a doubling miss the front once and come back from the
        // table, with their own entry.
        for n in 0..10_000 {
            assert_eq!(fc.lookup(&key(n), 1, 0).policy, n, "flow {n}");
        }
        assert_eq!(c.cache_misses.get(), 10_000);
        assert_eq!(c.cache_hits.get(), 10_000);
        // Now the front names nearly every flow's slot (a bucket holds eight).
        let named = (0..10_000)
            .filter(|&n| {
                let k = key(n);
                let Candidate(slot) = fc.prefetch_slot(fc.hash(&k));
                fc.slots.get(slot as usize).is_some_and(|s| s.key == k)
            })
            .count();
        assert!(named >= 9_900, "{named} of 10 000 flows in the front");
    }

    #[test]
    fn flows_beyond_a_full_front_bucket_are_still_found() {
        // 2 000 flows over 512 buckets of 8 ways: a few buckets get more than 8 flows,
        // whose extra flows take turns in the ways and otherwise come from the table.
        let (mut fc, c) = cache(2000);
        assert_eq!(fc.front.len(), 512);
        for n in 0..2000 {
            let e = fc.lookup(&key(n), 0, 0);
            e.policy = n;
            e.generation = 1;
        }
        let crowded = fc
            .front
            .iter()
            .filter(|b| b.slots.iter().all(|&s| s != Candidate::NONE.0))
            .count();
        assert!(crowded > 0, "some bucket is full");
        for round in 0..3 {
            for n in 0..2000 {
                let e = *fc.lookup(&key(n), round, 0);
                assert_eq!((e.policy, e.generation), (n, 1), "flow {n}");
            }
        }
        assert_eq!(c.cache_hits.get(), 6000);
        assert_eq!(c.cache_misses.get(), 2000);
    }

    #[test]
    fn timeouts_in_seconds_of_a_real_tsc_stay_exact_to_a_tenth_of_a_percent() {
        let hz = 2_450_000_000u64;
        let timeouts = Timeouts {
            idle: 30 * hz,
            tcp_closed: 2 * hz,
        };
        let mut fc = FlowCache::new(16, timeouts, Arc::new(WorkerCounters::default()));
        let start = 1u64 << 40;
        fc.lookup(&key(1), start, FIN);
        fc.lookup(&key(2), start, 0);
        fc.expire(start + 2 * hz - hz / 500, 16);
        assert_eq!(fc.len(), 2, "closed flow kept until its 2 s are up");
        fc.expire(start + 2 * hz + hz / 500, 16);
        assert_eq!(fc.len(), 1, "closed flow gone just after 2 s");
        fc.expire(start + 30 * hz - hz / 100, 16);
        assert_eq!(fc.len(), 1);
        fc.expire(start + 30 * hz + hz / 100, 16);
        assert!(fc.is_empty());
    }

    #[test]
    fn recently_used_flows_survive_eviction() {
        let (mut fc, _) = cache(64);
        for n in 0..64 {
            fc.lookup(&key(n), 0, 0).generation = 1;
        }
        // Flow 0 stays busy while 200 one-packet flows pass through.
        for n in 100..300 {
            fc.lookup(&key(0), u64::from(n), 0);
            fc.lookup(&key(n), u64::from(n), 0).generation = 1;
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
        fc.lookup(&key(1), 0, 0);
        fc.lookup(&key(2), 0, FIN);
        fc.lookup(&key(3), 900, 0);
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
        fc.lookup(&key(4), 1600, 0);
        assert_eq!(fc.slots.len(), 3);
    }

    /// A RST from either side ends both directions of the connection; a FIN only its own
    /// (the other side sends its own FIN, or goes on sending: a half-close).
    #[test]
    fn a_rst_closes_both_directions_and_a_fin_its_own() {
        let (mut fc, c) = cache(16);
        for n in [1, 2, 3] {
            fc.lookup(&key(n), 0, 0);
            fc.lookup(&reversed(&key(n)), 0, 0);
        }
        fc.lookup(&reversed(&key(1)), 10, RST);
        fc.lookup(&key(2), 10, RST | ACK);
        fc.lookup(&key(3), 10, FIN | ACK);
        fc.expire(150, 16);
        assert!(fc.find(&key(1)).is_none(), "reset by the server");
        assert!(fc.find(&reversed(&key(1))).is_none());
        assert!(fc.find(&key(2)).is_none(), "reset by the client");
        assert!(fc.find(&reversed(&key(2))).is_none());
        assert!(fc.find(&key(3)).is_none(), "its FIN");
        assert!(
            fc.find(&reversed(&key(3))).is_some(),
            "half-closed: still sending"
        );
        assert_eq!(c.evictions[Eviction::TcpClose as usize].get(), 5);
    }

    /// A SYN on a closing flow is a new connection on the same 5-tuple: it lives for the
    /// idle timeout again, not 2 s after its last packet. FIN with SYN still closes.
    #[test]
    fn a_syn_after_a_fin_opens_the_flow_again() {
        let (mut fc, c) = cache(16);
        fc.lookup(&key(1), 0, FIN | ACK);
        fc.lookup(&key(1), 20, SYN);
        fc.lookup(&reversed(&key(1)), 0, FIN | ACK);
        fc.lookup(&reversed(&key(1)), 20, SYN | ACK);
        fc.lookup(&key(2), 0, SYN | FIN);
        fc.expire(500, 16);
        assert!(fc.find(&key(1)).is_some(), "reopened by its SYN");
        assert!(fc.find(&reversed(&key(1))).is_some(), "and by the SYN-ACK");
        assert!(fc.find(&key(2)).is_none());
        assert_eq!(
            c.cache_misses.get(),
            3,
            "the new connection is the same flow"
        );
        fc.expire(1100, 16);
        assert!(fc.is_empty(), "idle after 1 000");
    }
}
