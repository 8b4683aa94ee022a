//! Remembers the classification of fragmented datagrams, so that non-first fragments
//! (which carry no ports) follow their first fragment (SPEC §5).
//!
//! A small set-associative table per worker: (source, destination, protocol, IP ID, outer
//! VLAN) hashes to a set of [`WAYS`] slots, and a new datagram takes a free slot of its set
//! or the one remembered longest ago. Fragments of one datagram arrive within milliseconds of
//! each other, so 8 192 slots hold every datagram of any realistic number in flight: a
//! datagram is forgotten only once its set has seen eight newer ones. (The first version
//! was direct-mapped, one slot per hash: two of 64 datagrams in flight collided in 9 of
//! 20 runs, and a fragment of the older one lost its result.) A fragment that misses
//! is classified with its ports unknown, as the SPEC allows.
//!
//! The first fragment's whole flow key is kept, so that when a reload comes between a
//! datagram's fragments the rest can go as the flow goes under the new policies.

use crate::flow_cache::FlowHasher;
use crate::wire::FlowKey;

/// Slots per set; a set's slots are adjacent (88 bytes each: 704 KiB a worker).
const WAYS: usize = 8;
const SETS: usize = 1024;

/// A datagram: (source, destination, IP ID, outer VLAN, protocol for IPv4, direction and
/// IP version), laid out as a flow key with the ID in place of the ports, so that it is
/// hashed as flows are ([`FlowHasher`]).
type DatagramKey = FlowKey;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: DatagramKey,
    policy: u32,
    /// The rest of the first fragment's flow key: its ports (source in the high half) and
    /// its protocol (for IPv6 the upper layer's).
    ports: u32,
    protocol: u8,
    hash: u64,
    generation: u64,
    /// When it was remembered, in remembered datagrams: the smallest in a set goes first.
    stamp: u64,
}

/// What the table remembers of a datagram from its first fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// The first fragment's flow, its hash, and the policy it was classified to under
    /// policy generation `generation`.
    pub flow: FlowKey,
    pub hash: u64,
    pub policy: u32,
    pub generation: u64,
}

pub struct FragmentTable {
    slots: Box<[Option<Slot>]>,
    hasher: FlowHasher,
    /// Datagrams remembered so far.
    stamp: u64,
}

impl Default for FragmentTable {
    fn default() -> Self {
        FragmentTable {
            slots: vec![None; SETS * WAYS].into_boxed_slice(),
            hasher: FlowHasher::new(),
            stamp: 0,
        }
    }
}

fn datagram(key: &FlowKey, id: u32) -> DatagramKey {
    // Ports are not part of it: non-first fragments do not have them. The outer VLAN,
    // direction and IP version (flags) are, PORTS_UNKNOWN is not. The protocol is for IPv4
    // only: an IPv6 datagram is (source, destination, identification) (RFC 8200 §4.5), and
    // the key's protocol differs between its fragments when extension headers follow the
    // fragment header (the first fragment's key has the upper layer, the others the next
    // header).
    let protocol = if key.is_ipv6() { 0 } else { key.protocol };
    FlowKey {
        src: key.src,
        dst: key.dst,
        src_port: (id >> 16) as u16,
        dst_port: id as u16,
        vlan: key.vlan,
        protocol,
        flags: key.flags & !FlowKey::PORTS_UNKNOWN,
    }
}

impl FragmentTable {
    /// The set of slots datagram `k` may be in.
    fn set(&self, k: &DatagramKey) -> std::ops::Range<usize> {
        let set = self.hasher.hash(k) as usize % SETS;
        set * WAYS..(set + 1) * WAYS
    }

    /// Records the result for a first fragment whose flow key is `key`: the policy it was
    /// classified to under `generation`, and the flow's hash.
    pub fn remember(&mut self, key: &FlowKey, id: u32, policy: u32, hash: u64, generation: u64) {
        let datagram = datagram(key, id);
        let set = self.set(&datagram);
        self.stamp += 1;
        let slot = Slot {
            key: datagram,
            policy,
            ports: u32::from(key.src_port) << 16 | u32::from(key.dst_port),
            protocol: key.protocol,
            hash,
            generation,
            stamp: self.stamp,
        };
        // The datagram's own slot (a first fragment seen again), else a free one, else the
        // one remembered longest ago.
        let ways = &mut self.slots[set];
        let i = (ways
            .iter()
            .position(|w| w.is_some_and(|w| w.key == datagram)))
        .or_else(|| ways.iter().position(Option::is_none))
        .unwrap_or_else(|| {
            (0..WAYS)
                .min_by_key(|&i| ways[i].map_or(0, |w| w.stamp))
                .unwrap_or(0)
        });
        ways[i] = Some(slot);
    }

    /// What was remembered of a non-first fragment's datagram (its key is `key`), if its
    /// first fragment was seen.
    pub fn recall(&self, key: &FlowKey, id: u32) -> Option<Datagram> {
        let datagram = datagram(key, id);
        let s = self.slots[self.set(&datagram)]
            .iter()
            .flatten()
            .find(|s| s.key == datagram)?;
        let flow = FlowKey {
            src: s.key.src,
            dst: s.key.dst,
            src_port: (s.ports >> 16) as u16,
            dst_port: s.ports as u16,
            vlan: s.key.vlan,
            protocol: s.protocol,
            flags: s.key.flags,
        };
        Some(Datagram {
            flow,
            hash: s.hash,
            policy: s.policy,
            generation: s.generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy and flow hash remembered for `key`'s datagram `id` under `generation`.
    fn recall(t: &FragmentTable, key: &FlowKey, id: u32, generation: u64) -> Option<(u32, u64)> {
        t.recall(key, id)
            .filter(|d| d.generation == generation)
            .map(|d| (d.policy, d.hash))
    }

    #[test]
    fn non_first_fragments_find_their_datagram_only() {
        let mut t = FragmentTable::default();
        let first = udp_key(1);
        t.remember(&first, 77, 3, 99, 1);
        let later = FlowKey {
            src_port: 0,
            dst_port: 0,
            flags: FlowKey::PORTS_UNKNOWN,
            ..first
        };
        assert_eq!(recall(&t, &later, 77, 1), Some((3, 99)));
        assert_eq!(
            t.recall(&later, 77).map(|d| d.flow),
            Some(first),
            "the whole flow key"
        );
        assert_eq!(recall(&t, &later, 78, 1), None, "another datagram");
        assert_eq!(
            recall(&t, &later, 77, 2),
            None,
            "classified under an older generation"
        );
        let inbound = FlowKey {
            flags: FlowKey::INBOUND | FlowKey::PORTS_UNKNOWN,
            ..later
        };
        assert_eq!(recall(&t, &inbound, 77, 1), None, "the other direction");
        let tagged = FlowKey { vlan: 20, ..later };
        assert_eq!(recall(&t, &tagged, 77, 1), None, "another VLAN");
        // IPv6: the first fragment's key has the upper layer (UDP), a later one the fragment
        // header's next header (destination options): the same datagram all the same.
        let v6_first = FlowKey {
            flags: FlowKey::IPV6,
            protocol: 17,
            ..first
        };
        t.remember(&v6_first, 9, 4, 98, 1);
        let v6_later = FlowKey {
            flags: FlowKey::IPV6 | FlowKey::PORTS_UNKNOWN,
            protocol: 60,
            src_port: 0,
            dst_port: 0,
            ..first
        };
        assert_eq!(recall(&t, &v6_later, 9, 1), Some((4, 98)));
        assert_eq!(t.recall(&v6_later, 9).map(|d| d.flow), Some(v6_first));
    }

    fn udp_key(src: u8) -> FlowKey {
        FlowKey {
            src: [src; 16],
            dst: [2; 16],
            src_port: 5,
            dst_port: 6,
            vlan: FlowKey::NO_VLAN,
            protocol: 17,
            flags: 0,
        }
    }

    #[test]
    fn five_hundred_datagrams_in_flight_are_all_remembered() {
        // Forgetting one would take nine of them in one set of 1 024: about 3 in a million.
        let mut t = FragmentTable::default();
        for id in 0..500u32 {
            t.remember(&udp_key(1), id, id, u64::from(id) * 3, 1);
        }
        for id in 0..500u32 {
            assert_eq!(
                recall(&t, &udp_key(1), id, 1),
                Some((id, u64::from(id) * 3))
            );
        }
    }

    #[test]
    fn a_flood_of_datagrams_leaves_the_latest_remembered() {
        let mut t = FragmentTable::default();
        for id in 0..100_000u32 {
            t.remember(&udp_key(7), id, id, 0, 1);
        }
        // Each set keeps its eight latest: the last 500 are all there, and the first are
        // gone.
        for id in 99_500..100_000u32 {
            assert_eq!(recall(&t, &udp_key(7), id, 1), Some((id, 0)));
        }
        let old = (0..1000u32)
            .filter(|&id| recall(&t, &udp_key(7), id, 1).is_some())
            .count();
        assert_eq!(old, 0);
        // A first fragment seen again takes its own slot, not a second one.
        t.remember(&udp_key(7), 99_999, 5, 0, 2);
        assert_eq!(recall(&t, &udp_key(7), 99_999, 2), Some((5, 0)));
        assert_eq!(recall(&t, &udp_key(7), 99_999, 1), None);
    }
}
