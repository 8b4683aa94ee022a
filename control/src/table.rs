//! The compiled, immutable policy table and its classifier.
//!
//! # Choice: tuple-space search with tuple merging and priority pruning
//!
//! Every match condition is a prefix or can be hashed as one: an address
//! prefix is a prefix; a port range `[lo, hi]` lies inside the prefix formed
//! by the bits `lo` and `hi` have in common (a single port is a 16-bit
//! prefix, `16384-32767` a 2-bit one); protocol and VLAN are exact or
//! absent. So a policy is a point in a small "tuple space" of (conditions
//! present, protocol, src length, dst length, src-port length, dst-port
//! length).
//!
//! * Policies are grouped into **sub-tables**. A sub-table hashes the key
//!   fields masked to its tuple and maps them to a bucket of candidate
//!   policies, best first; each candidate is then verified in full. All
//!   policies of a sub-table have the same conditions present and the same
//!   protocol (a TCP key skips UDP sub-tables without hashing), but may have
//!   longer prefixes or narrower ranges than the sub-table hashes (tuple
//!   merging, as in TupleMerge, Daly & Torng 2017), as long as buckets stay
//!   short ([`MAX_BUCKET`]). Sub-tables are chosen greedily per class of
//!   (conditions, protocol): the tuple under which most remaining policies
//!   fit goes first. Realistic sets need a few dozen sub-tables per index
//!   whatever their size.
//! * **Priority pruning**: the SPEC's precedence key plus file order gives a
//!   total order of policies (`PrecedenceKey::rank`); each policy stores its
//!   position in that order. Sub-tables are visited best first and the search
//!   stops as soon as the best match found beats everything a remaining
//!   sub-table holds; a bucket scan stops at its first full match.
//! * One such index per (packet direction, IP family): a policy's direction
//!   filter and family cost nothing at lookup time, IPv4 keys hash two
//!   64-bit words and verify 32-bit addresses. Buckets hold compact copies of
//!   their policies' conditions, so a scan reads consecutive memory.
//!
//! Why not the alternatives: a linear scan over policies sorted by rank costs
//! O(n) for a key that matches nothing or only a broad policy; bit-vector
//! schemes read n bits per field per lookup; decision trees (HiCuts,
//! EffiCuts) replicate rules and build slowly at 100 000 rules. Tuple-space
//! search builds in near-linear time, its memory is linear, and a lookup
//! costs one hash probe per visited sub-table, a number that depends on how
//! varied the policy shapes are rather than on how many policies there are.
//! Figures are in `docs/BENCHMARKS.md` ("Classifier").
//!
//! [`PolicyTable::classify_linear`] is the plain definition that the property
//! tests compare the index against.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::policy::{
    addr_bits, has_ports, Condition, Direction, MatchKey, Policy, PolicyId, PortRange,
};

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
    /// One index per packet direction (outbound, inbound) and family.
    v4: [Index<V4>; 2],
    v6: [Index<V6>; 2],
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

/// A key in the layout rules are verified against (addresses as `A`:
/// `u32` for IPv4, `u128` for IPv6).
struct Key<A> {
    src: A,
    dst: A,
    sport: u16,
    dport: u16,
    proto: u16,
    vlan: u16,
    /// The key has ports and its protocol is one that has them.
    ports: bool,
}

impl<A> Key<A> {
    fn new<F: Family<Addr = A>>(k: &MatchKey) -> Key<A> {
        let (sport, dport) = k.ports.unwrap_or((0, 0));
        Key {
            src: F::addr(addr_bits(k.src)),
            dst: F::addr(addr_bits(k.dst)),
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

    /// The most specific tuple this rule can be hashed under.
    fn tuple(&self) -> Tuple {
        let port_len = |r: PortRange| (r.lo ^ r.hi).leading_zeros() as u8;
        Tuple {
            // See PrecedenceKey::rank for the layout.
            present: (self.rank >> 80) as u8,
            proto: self.proto,
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
        }
    }
}

/// A rule as stored in a bucket: addresses in the family's width, and
/// instead of the 128-bit rank its position in the global order of ranks
/// (smaller is better). Buckets store these by value, best first, so a
/// bucket scan reads consecutive memory.
#[derive(Clone, Copy, Debug)]
struct Compact<A> {
    src: A,
    src_mask: A,
    dst: A,
    dst_mask: A,
    sport: PortRange,
    dport: PortRange,
    proto: u16,
    vlan: u16,
    needs_ports: bool,
    pos: u32,
    id: PolicyId,
}

impl<A: Addr> Compact<A> {
    fn new<F: Family<Addr = A>>(r: &Rule, pos: u32, id: PolicyId) -> Self {
        Compact {
            src: F::addr(r.src),
            src_mask: F::addr(r.src_mask),
            dst: F::addr(r.dst),
            dst_mask: F::addr(r.dst_mask),
            sport: r.sport,
            dport: r.dport,
            proto: r.proto,
            vlan: r.vlan,
            needs_ports: r.needs_ports,
            pos,
            id,
        }
    }

    #[inline]
    fn matches(&self, k: &Key<A>) -> bool {
        k.src & self.src_mask == self.src
            && k.dst & self.dst_mask == self.dst
            && (self.proto == ANY_PROTO || self.proto == k.proto)
            && (self.vlan == ANY_VLAN || self.vlan == k.vlan)
            && (!self.needs_ports
                || (k.ports && self.sport.contains(k.sport) && self.dport.contains(k.dport)))
    }
}

/// What a sub-table holds and hashes. All its rules have the same
/// precedence and the same conditions present (steps 1 to 3 of the key), so
/// the sub-table's best rank is a tight bound for pruning, and the same
/// protocol, so a key of another protocol skips the sub-table without
/// hashing. The lengths are at most the rules' own (a rule may have a longer
/// prefix than the sub-table hashes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    present: u8,
    /// The rules' protocol, or ANY_PROTO if they have no protocol condition.
    proto: u16,
    src_len: u8,
    dst_len: u8,
    sport_len: u8,
    dport_len: u8,
}

impl Tuple {
    /// Whether a rule with tuple `own` can be hashed under `self`.
    fn fits(&self, own: &Tuple) -> bool {
        self.present == own.present
            && self.proto == own.proto
            && self.src_len <= own.src_len
            && self.dst_len <= own.dst_len
            && self.sport_len <= own.sport_len
            && self.dport_len <= own.dport_len
    }

    /// How much the tuple narrows a lookup; prefer joining narrow sub-tables.
    fn narrowness(&self) -> u32 {
        u32::from(self.src_len)
            + u32::from(self.dst_len)
            + u32::from(self.sport_len)
            + u32::from(self.dport_len)
    }

    /// Rounded down to the grid new sub-tables are made on.
    fn coarse(&self, width: u32) -> Tuple {
        let step = if width == 128 { 16 } else { 8 };
        Tuple {
            src_len: self.src_len - self.src_len % step,
            dst_len: self.dst_len - self.dst_len % step,
            sport_len: self.sport_len - self.sport_len % 8,
            dport_len: self.dport_len - self.dport_len % 8,
            ..*self
        }
    }

    fn has(&self, c: Condition) -> bool {
        self.present & c.bit() != 0
    }
}

/// An address as a number of the family's width.
trait Addr: Copy + Eq + std::fmt::Debug + std::ops::BitAnd<Output = Self> {}
impl Addr for u32 {}
impl Addr for u128 {}

/// An IP family: its address width and how masked keys are packed for
/// hashing (IPv4 keys are two words, IPv6 keys five).
trait Family {
    type Addr: Addr;
    type Packed: Copy + Eq + Default + std::hash::Hash + std::fmt::Debug;
    const WIDTH: u32;
    /// Truncates an address number (IPv4 in the low 32 bits) to the width.
    fn addr(bits: u128) -> Self::Addr;
    fn pack(src: Self::Addr, dst: Self::Addr, misc: u64) -> Self::Packed;
    fn hash(k: &Self::Packed) -> u64;
}

#[derive(Clone, Copy, Debug)]
struct V4;
#[derive(Clone, Copy, Debug)]
struct V6;

impl Family for V4 {
    type Addr = u32;
    type Packed = [u64; 2];
    const WIDTH: u32 = 32;
    #[inline]
    fn addr(bits: u128) -> u32 {
        bits as u32
    }
    #[inline]
    fn pack(src: u32, dst: u32, misc: u64) -> [u64; 2] {
        [(u64::from(src) << 32) | u64::from(dst), misc]
    }
    #[inline]
    fn hash(k: &[u64; 2]) -> u64 {
        mix(k)
    }
}

impl Family for V6 {
    type Addr = u128;
    type Packed = [u64; 5];
    const WIDTH: u32 = 128;
    #[inline]
    fn addr(bits: u128) -> u128 {
        bits
    }
    #[inline]
    fn pack(src: u128, dst: u128, misc: u64) -> [u64; 5] {
        [
            (src >> 64) as u64,
            src as u64,
            (dst >> 64) as u64,
            dst as u64,
            misc,
        ]
    }
    #[inline]
    fn hash(k: &[u64; 5]) -> u64 {
        mix(k)
    }
}

#[inline]
fn mix(words: &[u64]) -> u64 {
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    for w in words {
        h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The masks of a tuple, applied to rules (at build) and keys (at lookup).
#[derive(Clone, Copy, Debug)]
struct Masks<A> {
    src: A,
    dst: A,
    sport: u16,
    dport: u16,
    proto: u16,
    vlan: u16,
}

impl<A: Addr> Masks<A> {
    fn new<F: Family<Addr = A>>(t: &Tuple) -> Self {
        let width = F::WIDTH;
        let addr = |len: u8| -> A {
            F::addr(if len == 0 {
                0
            } else {
                (u128::MAX >> (128 - width)) & !((1u128 << (width - u32::from(len))) - 1)
            })
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
            proto: if t.has(Condition::Protocol) { 0x1FF } else { 0 },
            vlan: if t.has(Condition::Vlan) { 0xFFFF } else { 0 },
        }
    }

    #[inline]
    fn pack<F: Family<Addr = A>>(
        &self,
        src: A,
        dst: A,
        sport: u16,
        dport: u16,
        proto: u16,
        vlan: u16,
    ) -> F::Packed {
        let misc = (u64::from(sport & self.sport) << 48)
            | (u64::from(dport & self.dport) << 32)
            | (u64::from(proto & self.proto) << 16)
            | u64::from(vlan & self.vlan);
        F::pack(src & self.src, dst & self.dst, misc)
    }

    fn pack_rule<F: Family<Addr = A>>(&self, r: &Rule) -> F::Packed {
        let (src, dst) = (F::addr(r.src), F::addr(r.dst));
        self.pack::<F>(src, dst, r.sport.lo, r.dport.lo, r.proto, r.vlan)
    }

    #[inline]
    fn pack_key<F: Family<Addr = A>>(&self, k: &Key<A>) -> F::Packed {
        self.pack::<F>(k.src, k.dst, k.sport, k.dport, k.proto, k.vlan)
    }
}

/// One bucket of a sub-table's open-addressing hash map; `len == 0` is empty.
#[derive(Clone, Copy, Debug, Default)]
struct Slot<K> {
    key: K,
    /// The bucket's rules, best first, are `rules[start..start + len]`.
    start: u32,
    len: u32,
}

#[derive(Clone, Debug)]
struct SubTable<F: Family> {
    masks: Masks<F::Addr>,
    /// The best (smallest) position of any rule in the sub-table.
    best_pos: u32,
    /// Skip the sub-table for keys without ports / without a VLAN tag.
    needs_ports: bool,
    needs_vlan: bool,
    /// The rules' protocol, or ANY_PROTO.
    proto: u16,
    /// 64 - log2(slots.len()).
    shift: u32,
    slots: Box<[Slot<F::Packed>]>,
}

impl<F: Family> SubTable<F> {
    #[inline]
    fn find(&self, key: &F::Packed) -> Option<&Slot<F::Packed>> {
        let mask = self.slots.len() - 1;
        let mut i = (F::hash(key) >> self.shift) as usize;
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

    /// Whether the sub-table can hold a match for `k` at all.
    #[inline]
    fn may_match(&self, k: &Key<F::Addr>) -> bool {
        (self.proto == ANY_PROTO || self.proto == k.proto)
            && (!self.needs_ports || k.ports)
            && (!self.needs_vlan || k.vlan != UNTAGGED)
    }
}

/// The index for one (direction, family).
#[derive(Clone, Debug)]
struct Index<F: Family> {
    /// Sub-tables, best `best_pos` first.
    tables: Vec<SubTable<F>>,
    /// The buckets' rules.
    rules: Vec<Compact<F::Addr>>,
}

impl<F: Family> Index<F> {
    fn classify(&self, key: &MatchKey) -> Option<PolicyId> {
        let k = Key::new::<F>(key);
        let mut best_pos = u32::MAX;
        let mut best = None;
        for t in &self.tables {
            if t.best_pos >= best_pos {
                break;
            }
            if !t.may_match(&k) {
                continue;
            }
            let Some(slot) = t.find(&t.masks.pack_key::<F>(&k)) else {
                continue;
            };
            let start = slot.start as usize;
            for r in &self.rules[start..start + slot.len as usize] {
                if r.pos >= best_pos {
                    break;
                }
                if r.matches(&k) {
                    best_pos = r.pos;
                    best = Some(r.id);
                    break;
                }
            }
        }
        best
    }

    fn heap_bytes(&self) -> usize {
        self.rules.capacity() * std::mem::size_of::<Compact<F::Addr>>()
            + self.tables.capacity() * std::mem::size_of::<SubTable<F>>()
            + self
                .tables
                .iter()
                .map(|t| t.slots.len() * std::mem::size_of::<Slot<F::Packed>>())
                .sum::<usize>()
    }
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
        let mut pos = vec![0u32; rules.len()];
        for (p, &id) in order.iter().enumerate() {
            pos[id as usize] = p as u32;
        }
        let ids = |d: Direction, v6: bool| -> Vec<PolicyId> {
            order
                .iter()
                .copied()
                .filter(|&i| {
                    let p = &policies[i as usize];
                    p.direction.admits(d) && family_admits(p, v6)
                })
                .collect()
        };
        let v4 = [
            build_index(&rules, &pos, &ids(Direction::Outbound, false)),
            build_index(&rules, &pos, &ids(Direction::Inbound, false)),
        ];
        let v6 = [
            build_index(&rules, &pos, &ids(Direction::Outbound, true)),
            build_index(&rules, &pos, &ids(Direction::Inbound, true)),
        ];
        PolicyTable {
            policies,
            rules,
            v4,
            v6,
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
        let d = usize::from(key.direction == Direction::Inbound);
        if v6 {
            self.v6[d].classify(key)
        } else {
            self.v4[d].classify(key)
        }
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
        let counts = [
            self.v4[0].tables.len(),
            self.v4[1].tables.len(),
            self.v6[0].tables.len(),
            self.v6[1].tables.len(),
        ];
        TableStats {
            sub_tables: counts.iter().sum(),
            max_sub_tables: counts.iter().copied().max().unwrap_or(0),
            heap_bytes: self.v4.iter().map(Index::heap_bytes).sum::<usize>()
                + self.v6.iter().map(Index::heap_bytes).sum::<usize>()
                + self.rules.capacity() * std::mem::size_of::<Rule>()
                + self.policies.capacity() * std::mem::size_of::<Policy>()
                + self
                    .policies
                    .iter()
                    .map(|p| p.name.capacity())
                    .sum::<usize>(),
        }
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

/// A fast hasher for the build-time maps.
#[derive(Default)]
struct BuildHasher64(u64);

impl Hasher for BuildHasher64 {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
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

type BuildMap<K, V> = HashMap<K, V, BuildHasherDefault<BuildHasher64>>;

struct Builder<F: Family> {
    tuple: Tuple,
    masks: Masks<F::Addr>,
    best_pos: u32,
    /// Bucket index by masked key; buckets in first-insertion order.
    index: BuildMap<F::Packed, usize>,
    buckets: Vec<(F::Packed, Vec<PolicyId>)>,
}

impl<F: Family> Builder<F> {
    fn new(tuple: Tuple) -> Builder<F> {
        Builder {
            tuple,
            masks: Masks::new::<F>(&tuple),
            best_pos: u32::MAX,
            index: BuildMap::default(),
            buckets: Vec::new(),
        }
    }

    fn bucket_len(&self, key: &F::Packed) -> usize {
        self.index.get(key).map_or(0, |&b| self.buckets[b].1.len())
    }

    fn insert(&mut self, key: F::Packed, id: PolicyId, pos: u32) {
        self.best_pos = self.best_pos.min(pos);
        let next = self.buckets.len();
        let b = *self.index.entry(key).or_insert(next);
        if b == next {
            self.buckets.push((key, Vec::new()));
        }
        self.buckets[b].1.push(id);
    }

    fn finish(self, rules: &[Rule], pos: &[u32], out: &mut Vec<Compact<F::Addr>>) -> SubTable<F> {
        let cap = (self.buckets.len() * 4 / 3 + 1).next_power_of_two().max(2);
        let mut slots = vec![Slot::default(); cap].into_boxed_slice();
        let shift = 64 - cap.trailing_zeros();
        for (key, ids) in self.buckets {
            let mut i = (F::hash(&key) >> shift) as usize;
            while slots[i].len != 0 {
                i = (i + 1) & (cap - 1);
            }
            slots[i] = Slot {
                key,
                start: out.len() as u32,
                len: ids.len() as u32,
            };
            out.extend(
                ids.iter()
                    .map(|&id| Compact::new::<F>(&rules[id as usize], pos[id as usize], id)),
            );
        }
        SubTable {
            masks: self.masks,
            best_pos: self.best_pos,
            needs_ports: self.tuple.sport_len > 0 || self.tuple.dport_len > 0,
            needs_vlan: self.tuple.has(Condition::Vlan),
            proto: self.tuple.proto,
            shift,
            slots,
        }
    }
}

/// Builds one index from rule ids sorted best first.
fn build_index<F: Family>(rules: &[Rule], pos: &[u32], ids: &[PolicyId]) -> Index<F> {
    // Rules of one class (precedence, conditions present, protocol) share
    // sub-tables; the order within a class stays best first.
    let mut classes: HashMap<(u8, u16), Vec<PolicyId>> = HashMap::new();
    for &id in ids {
        let t = rules[id as usize].tuple();
        classes.entry((t.present, t.proto)).or_default().push(id);
    }
    let mut builders: Vec<Builder<F>> = Vec::new();
    for class in classes.values() {
        build_class(rules, pos, class, &mut builders);
    }
    builders.sort_by_key(|b| b.best_pos);
    let mut compact = Vec::with_capacity(ids.len());
    let tables = builders
        .into_iter()
        .map(|b| b.finish(rules, pos, &mut compact))
        .collect();
    Index {
        tables,
        rules: compact,
    }
}

/// How many candidate tuples [`build_class`] tries per sub-table.
const CANDIDATES: usize = 8;

/// Builds the sub-tables of one class, greedily: each new sub-table gets the
/// candidate tuple (a tuple of the class's rules, rounded down to the grid
/// of [`Tuple::coarse`], or their field-wise minimum) under which the most
/// remaining rules fit with buckets of at most [`MAX_BUCKET`]. When that
/// makes little progress, the rest go to sub-tables of their own exact
/// tuples without a bucket limit (they are near-duplicates).
fn build_class<F: Family>(
    rules: &[Rule],
    pos: &[u32],
    class: &[PolicyId],
    out: &mut Vec<Builder<F>>,
) {
    let mut remaining: Vec<PolicyId> = class.to_vec();
    while !remaining.is_empty() {
        let own = |id: PolicyId| rules[id as usize].tuple();
        let mut counts: HashMap<Tuple, usize> = HashMap::new();
        let mut min = own(remaining[0]);
        for &id in &remaining {
            let t = own(id);
            *counts.entry(t.coarse(F::WIDTH)).or_default() += 1;
            min = Tuple {
                src_len: min.src_len.min(t.src_len),
                dst_len: min.dst_len.min(t.dst_len),
                sport_len: min.sport_len.min(t.sport_len),
                dport_len: min.dport_len.min(t.dport_len),
                ..min
            };
        }
        let mut candidates: Vec<(usize, Tuple)> = counts.into_iter().map(|(t, n)| (n, t)).collect();
        candidates.sort_unstable_by_key(|&(n, t)| std::cmp::Reverse((n, t.narrowness())));
        candidates.truncate(CANDIDATES);
        if !candidates.iter().any(|c| c.1 == min) {
            candidates.push((0, min));
        }
        let mut best: Option<(usize, Builder<F>, Vec<PolicyId>)> = None;
        for &(_, tuple) in &candidates {
            let mut b = Builder::new(tuple);
            let mut rest = Vec::new();
            let mut placed = 0;
            for &id in &remaining {
                let r = &rules[id as usize];
                if tuple.fits(&r.tuple()) {
                    let key = b.masks.pack_rule::<F>(r);
                    if b.bucket_len(&key) < MAX_BUCKET {
                        b.insert(key, id, pos[id as usize]);
                        placed += 1;
                        continue;
                    }
                }
                rest.push(id);
            }
            if best.as_ref().is_none_or(|(p, _, _)| placed > *p) {
                best = Some((placed, b, rest));
            }
        }
        let Some((placed, b, rest)) = best else {
            break;
        };
        out.push(b);
        if placed <= MAX_BUCKET && !rest.is_empty() {
            let mut exact: HashMap<Tuple, usize> = HashMap::new();
            for id in rest {
                let r = &rules[id as usize];
                let t = r.tuple();
                let i = *exact.entry(t).or_insert_with(|| {
                    out.push(Builder::new(t));
                    out.len() - 1
                });
                let key = out[i].masks.pack_rule::<F>(r);
                out[i].insert(key, id, pos[id as usize]);
            }
            break;
        }
        remaining = rest;
    }
}

/// Whether a policy could match some key of family `v6` at all.
pub(crate) fn family_admits(p: &Policy, v6: bool) -> bool {
    p.src_prefix.is_none_or(|x| x.is_ipv4() != v6) && p.dst_prefix.is_none_or(|x| x.is_ipv4() != v6)
}

#[cfg(test)]
mod tests;
