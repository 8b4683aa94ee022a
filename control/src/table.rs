//! The compiled, immutable policy table and its classifier.
//!
//! # Choice: tuple-space search with tuple merging and priority pruning
//!
//! Every match condition is a prefix or can be hashed as one: an address
//! prefix is a prefix; a port range `[lo, hi]` is contained in the prefix
//! formed by the bits `lo` and `hi` have in common (a single port is a
//! 16-bit prefix, `16384-32767` a 2-bit one); protocol and VLAN are
//! exact-or-absent. So a policy is a point in a small "tuple space" of
//! `(src len, dst len, src-port len, dst-port len, has protocol, has vlan)`.
//!
//! * Policies are grouped into **sub-tables**, each with one tuple; a
//!   sub-table is a hash map from the key fields masked to its tuple to the
//!   list of policies with those masked values, listed best first. Following
//!   TupleMerge (Daly & Torng, 2017), a policy may join any sub-table whose
//!   tuple is no more specific than its own (the hash then only narrows the
//!   candidates and each candidate is verified in full), as long as its
//!   bucket stays short ([`MAX_BUCKET`]). New sub-tables get a tuple rounded
//!   down to a coarse grid (prefix lengths to multiples of 8 for IPv4 and 16
//!   for IPv6, port lengths to 0, 8 or 16), so a few dozen sub-tables cover
//!   tens of thousands of policies of every shape.
//! * **Priority pruning**: the SPEC's precedence key (plus file order) is
//!   packed into one `u128` rank per policy ([`PrecedenceKey::rank`]).
//!   Sub-tables are visited in order of the best rank they hold; the search
//!   stops as soon as the best match found outranks every remaining
//!   sub-table, and a bucket scan stops at its first full match.
//! * There is one such index per (packet direction, IP family), so a policy's
//!   direction filter and family cost nothing at lookup time. Cheap per
//!   sub-table filters (protocols present, needs ports, needs a VLAN tag) skip
//!   a sub-table before hashing.
//!
//! Why not the alternatives: a linear scan over rules sorted by rank costs
//! O(n) for a key that matches nothing or only a general policy; the bit
//! vector schemes read n bits per field per lookup; decision trees
//! (HiCuts/EffiCuts) replicate rules and build slowly at 100 000 rules.
//! Tuple-space search builds in near-linear time, its memory is linear, and
//! its lookup costs one hash probe per visited sub-table, the number of which
//! depends on how varied the policy shapes are, not on how many policies
//! there are. Measured figures are in `docs/BENCHMARKS.md`.
//!
//! [`PolicyTable::classify_linear`] is the plain definition (the oracle the
//! property tests compare against).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::policy::{addr_bits, has_ports, Direction, MatchKey, Policy, PolicyId, PortRange};

/// The longest bucket a policy may join in a shared sub-table; beyond it a
/// more specific sub-table is made.
pub const MAX_BUCKET: usize = 8;

const ANY_PROTO: u16 = 0x100;
const ANY_VLAN: u16 = 0xFFFF;
/// The VLAN of an untagged key: equal to no policy's VLAN.
const UNTAGGED: u16 = 0xFFFE;

/// The immutable, compiled set of policies. `Send + Sync`; share it with an
/// `Arc`.
#[derive(Clone, Debug)]
pub struct PolicyTable {
    policies: Vec<Policy>,
    rules: Vec<Rule>,
    /// Indexed by [`index_of`]: (outbound, inbound) × (IPv4, IPv6).
    indexes: [Index; 4],
}

/// A policy's conditions in the form that is fastest to verify. Addresses are
/// numbers (IPv4 in the low 32 bits); an absent condition matches anything.
#[derive(Clone, Debug)]
struct Rule {
    src: u128,
    src_mask: u128,
    dst: u128,
    dst_mask: u128,
    rank: u128,
    sport: PortRange,
    dport: PortRange,
    proto: u16,
    vlan: u16,
    needs_ports: bool,
}

/// A key in the layout rules are verified against.
struct Key {
    src: u128,
    dst: u128,
    sport: u16,
    dport: u16,
    proto: u16,
    vlan: u16,
    /// The key has ports and its protocol is one that has them.
    ports: bool,
}

impl Key {
    fn new(k: &MatchKey) -> Key {
        let (sport, dport) = k.ports.unwrap_or((0, 0));
        Key {
            src: addr_bits(k.src),
            dst: addr_bits(k.dst),
            sport,
            dport,
            proto: u16::from(k.protocol),
            vlan: k.vlan.unwrap_or(UNTAGGED),
            ports: k.ports.is_some() && has_ports(k.protocol),
        }
    }
}

impl Rule {
    fn new(p: &Policy, id: PolicyId) -> Rule {
        let all = PortRange { lo: 0, hi: 65535 };
        Rule {
            src: p.src_prefix.map_or(0, |p| p.bits()),
            src_mask: p.src_prefix.map_or(0, |p| p.mask()),
            dst: p.dst_prefix.map_or(0, |p| p.bits()),
            dst_mask: p.dst_prefix.map_or(0, |p| p.mask()),
            rank: p.precedence_key().rank(id),
            sport: p.src_port.unwrap_or(all),
            dport: p.dst_port.unwrap_or(all),
            proto: p.protocol.map_or(ANY_PROTO, u16::from),
            vlan: p.vlan.unwrap_or(ANY_VLAN),
            needs_ports: p.has_port_condition(),
        }
    }

    #[inline]
    fn matches(&self, k: &Key) -> bool {
        k.src & self.src_mask == self.src
            && k.dst & self.dst_mask == self.dst
            && (self.proto == ANY_PROTO || self.proto == k.proto)
            && (self.vlan == ANY_VLAN || self.vlan == k.vlan)
            && (!self.needs_ports
                || (k.ports && self.sport.contains(k.sport) && self.dport.contains(k.dport)))
    }

    /// The tuple this rule could be hashed under at most.
    fn tuple(&self) -> Tuple {
        let port_len = |r: PortRange| (r.lo ^ r.hi).leading_zeros() as u8;
        Tuple {
            src_len: self.src_mask.count_ones() as u8,
            dst_len: self.dst_mask.count_ones() as u8,
            sport_len: if self.needs_ports {
                port_len(self.sport)
            } else {
                0
            },
            dport_len: if self.needs_ports {
                port_len(self.dport)
            } else {
                0
            },
            proto: self.proto != ANY_PROTO,
            vlan: self.vlan != ANY_VLAN,
        }
    }
}

/// Which bits of each field a sub-table hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    src_len: u8,
    dst_len: u8,
    sport_len: u8,
    dport_len: u8,
    proto: bool,
    vlan: bool,
}

impl Tuple {
    /// Whether a rule with tuple `own` can be hashed under `self`.
    fn fits(&self, own: &Tuple) -> bool {
        self.src_len <= own.src_len
            && self.dst_len <= own.dst_len
            && self.sport_len <= own.sport_len
            && self.dport_len <= own.dport_len
            && (!self.proto || own.proto)
            && (!self.vlan || own.vlan)
    }

    /// How much the tuple narrows a lookup; prefer joining narrow sub-tables.
    fn narrowness(&self) -> u32 {
        u32::from(self.src_len)
            + u32::from(self.dst_len)
            + u32::from(self.sport_len)
            + u32::from(self.dport_len)
            + 8 * u32::from(self.proto)
            + 12 * u32::from(self.vlan)
    }

    /// Rounded down to the grid new sub-tables are made on.
    fn coarse(&self, v6: bool) -> Tuple {
        let step = if v6 { 16 } else { 8 };
        Tuple {
            src_len: self.src_len - self.src_len % step,
            dst_len: self.dst_len - self.dst_len % step,
            sport_len: self.sport_len - self.sport_len % 8,
            dport_len: self.dport_len - self.dport_len % 8,
            ..*self
        }
    }
}

type Packed = [u64; 5];

/// The masks of a tuple, applied to rules (at build) and keys (at lookup).
#[derive(Clone, Copy, Debug)]
struct Masks {
    src: u128,
    dst: u128,
    sport: u16,
    dport: u16,
    proto: u16,
    vlan: u16,
}

impl Masks {
    fn new(t: &Tuple, v6: bool) -> Masks {
        let width = if v6 { 128 } else { 32 };
        let addr = |len: u8| -> u128 {
            if len == 0 {
                0
            } else {
                (u128::MAX >> (128 - width)) & !((1u128 << (width - u32::from(len))) - 1)
            }
        };
        let port = |len: u8| -> u16 {
            if len == 0 {
                0
            } else {
                u16::MAX << (16 - u32::from(len))
            }
        };
        Masks {
            src: addr(t.src_len),
            dst: addr(t.dst_len),
            sport: port(t.sport_len),
            dport: port(t.dport_len),
            proto: if t.proto { 0x1FF } else { 0 },
            vlan: if t.vlan { 0xFFFF } else { 0 },
        }
    }

    #[inline]
    fn pack(&self, src: u128, dst: u128, sport: u16, dport: u16, proto: u16, vlan: u16) -> Packed {
        let s = src & self.src;
        let d = dst & self.dst;
        let misc = (u64::from(sport & self.sport) << 48)
            | (u64::from(dport & self.dport) << 32)
            | (u64::from(proto & self.proto) << 16)
            | u64::from(vlan & self.vlan);
        [(s >> 64) as u64, s as u64, (d >> 64) as u64, d as u64, misc]
    }

    fn pack_rule(&self, r: &Rule) -> Packed {
        self.pack(r.src, r.dst, r.sport.lo, r.dport.lo, r.proto, r.vlan)
    }

    #[inline]
    fn pack_key(&self, k: &Key) -> Packed {
        self.pack(k.src, k.dst, k.sport, k.dport, k.proto, k.vlan)
    }
}

#[inline]
fn hash(k: &Packed) -> u64 {
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    for w in k {
        h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One bucket of a sub-table's open-addressing hash map; `len == 0` is empty.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: Packed,
    /// The bucket's rule ids, best first, are `members[start..start + len]`.
    start: u32,
    len: u32,
}

#[derive(Clone, Debug)]
struct SubTable {
    masks: Masks,
    /// The best rank of any rule in the sub-table.
    max_rank: u128,
    /// Skip the sub-table for keys without ports / without a VLAN tag.
    needs_ports: bool,
    needs_vlan: bool,
    /// The protocols of the rules if the sub-table hashes the protocol.
    protocols: Option<[u64; 4]>,
    /// 64 - log2(slots.len()).
    shift: u32,
    slots: Box<[Slot]>,
}

impl SubTable {
    #[inline]
    fn find(&self, key: &Packed) -> Option<&Slot> {
        let mask = self.slots.len() - 1;
        let mut i = (hash(key) >> self.shift) as usize;
        loop {
            let s = &self.slots[i];
            if s.len == 0 {
                return None;
            }
            if s.key == *key {
                return Some(s);
            }
            i = (i + 1) & mask;
        }
    }
}

/// The index for one (direction, family).
#[derive(Clone, Debug, Default)]
struct Index {
    /// Sub-tables, best `max_rank` first.
    tables: Vec<SubTable>,
    members: Vec<PolicyId>,
}

fn index_of(d: Direction, v6: bool) -> usize {
    (d == Direction::Inbound) as usize * 2 + v6 as usize
}

impl PolicyTable {
    /// A table with no policies: every key is unmatched.
    pub fn empty() -> Self {
        Self::new(Vec::new())
    }

    /// Compiles validated policies (ids are their indexes). Policies from
    /// [`crate::parse_policies`] are valid; a hand-built policy must follow
    /// the same rules (for example, both prefixes of one family).
    pub fn new(policies: Vec<Policy>) -> Self {
        assert!(policies.len() < u32::MAX as usize, "too many policies");
        let rules: Vec<Rule> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| Rule::new(p, i as PolicyId))
            .collect();
        let mut order: Vec<PolicyId> = (0..rules.len() as PolicyId).collect();
        order.sort_unstable_by_key(|&i| std::cmp::Reverse(rules[i as usize].rank));
        let build = |d: Direction, v6: bool| {
            let ids: Vec<PolicyId> = order
                .iter()
                .copied()
                .filter(|&i| {
                    let p = &policies[i as usize];
                    p.direction.admits(d) && family_admits(p, v6)
                })
                .collect();
            build_index(&rules, &ids, v6)
        };
        let indexes = [
            build(Direction::Outbound, false),
            build(Direction::Outbound, true),
            build(Direction::Inbound, false),
            build(Direction::Inbound, true),
        ];
        PolicyTable {
            policies,
            rules,
            indexes,
        }
    }

    /// The policy that wins for `key` (SPEC §2 "Which policy wins"), if any.
    /// No allocation, no locking.
    pub fn classify(&self, key: &MatchKey) -> Option<PolicyId> {
        let v6 = key.src.is_ipv6();
        if key.dst.is_ipv6() != v6 {
            // Not a real packet; keep the answer exact anyway.
            return self.classify_linear(key);
        }
        let index = &self.indexes[index_of(key.direction, v6)];
        let k = Key::new(key);
        let mut best_rank = 0u128;
        let mut best = None;
        for t in &index.tables {
            if t.max_rank <= best_rank {
                break;
            }
            if (t.needs_ports && !k.ports) || (t.needs_vlan && k.vlan == UNTAGGED) {
                continue;
            }
            if let Some(p) = &t.protocols {
                if p[usize::from(k.proto >> 6)] & (1 << (k.proto & 63)) == 0 {
                    continue;
                }
            }
            let Some(slot) = t.find(&t.masks.pack_key(&k)) else {
                continue;
            };
            let start = slot.start as usize;
            for &id in &index.members[start..start + slot.len as usize] {
                let r = &self.rules[id as usize];
                if r.rank <= best_rank {
                    break;
                }
                if r.matches(&k) {
                    best_rank = r.rank;
                    best = Some(id);
                    break;
                }
            }
        }
        best
    }

    /// The same answer as [`PolicyTable::classify`] by checking every policy:
    /// the definition the fast path is tested against.
    pub fn classify_linear(&self, key: &MatchKey) -> Option<PolicyId> {
        self.policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.matches(key))
            .max_by_key(|(i, p)| p.precedence_key().rank(*i as PolicyId))
            .map(|(i, _)| i as PolicyId)
    }

    /// Every policy matching `key`, winner first, then in precedence order.
    pub fn matching(&self, key: &MatchKey) -> Vec<PolicyId> {
        let mut ids: Vec<PolicyId> = (0..self.policies.len() as PolicyId)
            .filter(|&i| self.policies[i as usize].matches(key))
            .collect();
        ids.sort_unstable_by_key(|&i| std::cmp::Reverse(self.rules[i as usize].rank));
        ids
    }

    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.policies[id as usize]
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The rank (packed precedence key and file order) of a policy; greater wins.
    pub fn rank(&self, id: PolicyId) -> u128 {
        self.rules[id as usize].rank
    }

    /// Facts about the index, for benchmarks and tuning.
    pub fn stats(&self) -> TableStats {
        let mut s = TableStats::default();
        for ix in &self.indexes {
            s.sub_tables += ix.tables.len();
            s.heap_bytes += ix.members.capacity() * 4
                + ix.tables.capacity() * std::mem::size_of::<SubTable>()
                + ix.tables
                    .iter()
                    .map(|t| t.slots.len() * std::mem::size_of::<Slot>())
                    .sum::<usize>();
            s.max_sub_tables = s.max_sub_tables.max(ix.tables.len());
        }
        s.heap_bytes += self.rules.capacity() * std::mem::size_of::<Rule>()
            + self.policies.capacity() * std::mem::size_of::<Policy>()
            + self
                .policies
                .iter()
                .map(|p| p.name.capacity())
                .sum::<usize>();
        s
    }
}

impl Default for PolicyTable {
    fn default() -> Self {
        Self::empty()
    }
}

/// Size facts of a [`PolicyTable`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Sub-tables over all four (direction, family) indexes.
    pub sub_tables: usize,
    /// The most sub-tables in one index (the worst-case probes per lookup).
    pub max_sub_tables: usize,
    /// Heap bytes held by the table, policies included.
    pub heap_bytes: usize,
}

/// A fast hasher for the build-time maps (keys are already well mixed).
#[derive(Default)]
struct PackedHasher(u64);

impl Hasher for PackedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 29;
    }
}

type BuildMap<V> = HashMap<Packed, V, BuildHasherDefault<PackedHasher>>;

struct Builder {
    tuple: Tuple,
    masks: Masks,
    max_rank: u128,
    protocols: [u64; 4],
    /// Bucket index by masked key; buckets in first-insertion order.
    index: BuildMap<usize>,
    buckets: Vec<(Packed, Vec<PolicyId>)>,
}

impl Builder {
    fn new(tuple: Tuple, v6: bool) -> Builder {
        Builder {
            tuple,
            masks: Masks::new(&tuple, v6),
            max_rank: 0,
            protocols: [0; 4],
            index: BuildMap::default(),
            buckets: Vec::new(),
        }
    }

    fn bucket_len(&self, key: &Packed) -> usize {
        self.index.get(key).map_or(0, |&b| self.buckets[b].1.len())
    }

    fn insert(&mut self, key: Packed, id: PolicyId, r: &Rule) {
        self.max_rank = self.max_rank.max(r.rank);
        if r.proto != ANY_PROTO {
            self.protocols[usize::from(r.proto >> 6)] |= 1 << (r.proto & 63);
        }
        let next = self.buckets.len();
        let b = *self.index.entry(key).or_insert(next);
        if b == next {
            self.buckets.push((key, Vec::new()));
        }
        self.buckets[b].1.push(id);
    }

    fn finish(self, members: &mut Vec<PolicyId>) -> SubTable {
        let cap = (self.buckets.len() * 4 / 3 + 1).next_power_of_two().max(2);
        let mut slots = vec![Slot::default(); cap].into_boxed_slice();
        let shift = 64 - cap.trailing_zeros();
        for (key, ids) in self.buckets {
            let mut i = (hash(&key) >> shift) as usize;
            while slots[i].len != 0 {
                i = (i + 1) & (cap - 1);
            }
            slots[i] = Slot {
                key,
                start: members.len() as u32,
                len: ids.len() as u32,
            };
            members.extend_from_slice(&ids);
        }
        SubTable {
            masks: self.masks,
            max_rank: self.max_rank,
            needs_ports: self.tuple.sport_len > 0 || self.tuple.dport_len > 0,
            needs_vlan: self.tuple.vlan,
            protocols: self.tuple.proto.then_some(self.protocols),
            shift,
            slots,
        }
    }
}

/// Builds one index from rule ids sorted best first.
fn build_index(rules: &[Rule], ids: &[PolicyId], v6: bool) -> Index {
    let mut builders: Vec<Builder> = Vec::new();
    let mut by_tuple: HashMap<Tuple, usize> = HashMap::new();
    for &id in ids {
        let r = &rules[id as usize];
        let own = r.tuple();
        // Join the narrowest sub-table that fits and whose bucket is not full.
        let mut choice: Option<(u32, usize, Packed)> = None;
        for (i, b) in builders.iter().enumerate() {
            if !b.tuple.fits(&own) || choice.is_some_and(|c| c.0 >= b.tuple.narrowness()) {
                continue;
            }
            let key = b.masks.pack_rule(r);
            if b.bucket_len(&key) < MAX_BUCKET {
                choice = Some((b.tuple.narrowness(), i, key));
            }
        }
        let (i, key) = match choice {
            Some((_, i, key)) => (i, key),
            None => {
                // Every fitting sub-table is full here (or none fits): make
                // a coarse one, or if that exists (and is full), the exact one,
                // which takes the rule whatever its bucket length.
                let coarse = own.coarse(v6);
                let tuple = if by_tuple.contains_key(&coarse) {
                    own
                } else {
                    coarse
                };
                let i = *by_tuple.entry(tuple).or_insert_with(|| {
                    builders.push(Builder::new(tuple, v6));
                    builders.len() - 1
                });
                (i, builders[i].masks.pack_rule(r))
            }
        };
        builders[i].insert(key, id, r);
    }
    builders.sort_by_key(|b| std::cmp::Reverse(b.max_rank));
    let mut members = Vec::with_capacity(ids.len());
    let tables = builders
        .into_iter()
        .map(|b| b.finish(&mut members))
        .collect();
    Index { tables, members }
}

/// Whether a policy could match some key of family `v6` at all.
pub(crate) fn family_admits(p: &Policy, v6: bool) -> bool {
    p.src_prefix.is_none_or(|x| x.is_ipv4() != v6) && p.dst_prefix.is_none_or(|x| x.is_ipv4() != v6)
}

#[cfg(test)]
mod tests;
