//! Remembers the classification of fragmented datagrams, so that non-first fragments
//! (which carry no ports) follow their first fragment (SPEC §5).
//!
//! A small direct-mapped table per worker: (source, destination, protocol, IP ID) hashes
//! to one slot, and a newer datagram simply overwrites an older one. Fragments of one
//! datagram arrive within milliseconds of each other, so a few thousand slots cover any
//! realistic number of datagrams in flight; a fragment that misses is classified with its
//! ports unknown, as the SPEC allows.

use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;

use crate::wire::FlowKey;

const SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DatagramKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    protocol: u8,
    flags: u8,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: DatagramKey,
    policy: u32,
    hash: u64,
    generation: u64,
}

pub struct FragmentTable {
    slots: Box<[Option<Slot>]>,
    hasher: DefaultHashBuilder,
}

impl Default for FragmentTable {
    fn default() -> Self {
        FragmentTable {
            slots: vec![None; SLOTS].into_boxed_slice(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

fn datagram(key: &FlowKey, id: u32) -> DatagramKey {
    // Ports are not part of it: non-first fragments do not have them. Direction and IP
    // version are (flags), PORTS_UNKNOWN is not. The protocol is for IPv4 only: an IPv6
    // datagram is (source, destination, identification) (RFC 8200 §4.5), and the key's
    // protocol differs between its fragments when extension headers follow the fragment
    // header (the first fragment's key has the upper layer, the others the next header).
    let protocol = if key.is_ipv6() { 0 } else { key.protocol };
    DatagramKey {
        src: key.src,
        dst: key.dst,
        id,
        protocol,
        flags: key.flags & !FlowKey::PORTS_UNKNOWN,
    }
}

impl FragmentTable {
    fn index(&self, k: &DatagramKey) -> usize {
        self.hasher.hash_one(k) as usize % SLOTS
    }

    /// Records the result (policy and flow hash) for a first fragment.
    pub fn remember(&mut self, key: &FlowKey, id: u32, policy: u32, hash: u64, generation: u64) {
        let key = datagram(key, id);
        let i = self.index(&key);
        self.slots[i] = Some(Slot {
            key,
            policy,
            hash,
            generation,
        });
    }

    /// The policy and flow hash recorded for a non-first fragment's datagram under
    /// `generation`.
    pub fn recall(&self, key: &FlowKey, id: u32, generation: u64) -> Option<(u32, u64)> {
        let key = datagram(key, id);
        match self.slots[self.index(&key)] {
            Some(s) if s.key == key && s.generation == generation => Some((s.policy, s.hash)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_first_fragments_find_their_datagram_only() {
        let mut t = FragmentTable::default();
        let first = FlowKey {
            src: [1; 16],
            dst: [2; 16],
            src_port: 5,
            dst_port: 6,
            vlan: FlowKey::NO_VLAN,
            protocol: 17,
            flags: 0,
        };
        t.remember(&first, 77, 3, 99, 1);
        let later = FlowKey {
            src_port: 0,
            dst_port: 0,
            flags: FlowKey::PORTS_UNKNOWN,
            ..first
        };
        assert_eq!(t.recall(&later, 77, 1), Some((3, 99)));
        assert_eq!(t.recall(&later, 78, 1), None, "another datagram");
        assert_eq!(
            t.recall(&later, 77, 2),
            None,
            "classified under an older generation"
        );
        let inbound = FlowKey {
            flags: FlowKey::INBOUND | FlowKey::PORTS_UNKNOWN,
            ..later
        };
        assert_eq!(t.recall(&inbound, 77, 1), None, "the other direction");
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
        assert_eq!(t.recall(&v6_later, 9, 1), Some((4, 98)));
    }
}
