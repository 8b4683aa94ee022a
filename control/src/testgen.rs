//! Seeded random policies and keys for the property tests.

use std::net::IpAddr;

use crate::policy::{has_ports, Direction, MatchKey, Policy, PolicyDirection, PortRange, Prefix};

/// xorshift64*: a small seeded generator, so failures are reproducible
/// without a property-testing crate.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// A few base addresses per family, so prefixes overlap a lot.
pub(crate) fn base_addr(rng: &mut Rng, v6: bool) -> u128 {
    let v4 = [
        0x0A01_0203u128,
        0x0A01_FF00,
        0x0A02_0000,
        0xC0A8_0101,
        0x0A01_0200,
    ];
    let v6s = [
        0x2001_0db8_0000_0000_0000_0000_0000_0001u128,
        0x2001_0db8_0001_0000_0000_0000_0000_0000,
        0x2001_0db8_0000_0000_ffff_0000_0000_0000,
        0xfd00_0000_0000_0000_0000_0000_0000_0001,
    ];
    let width = if v6 { 128 } else { 32 };
    let base = if v6 { rng.pick(&v6s) } else { rng.pick(&v4) };
    // Perturb a few low bits sometimes.
    let noise = if rng.chance(30) {
        rng.below(16) as u128
    } else {
        0
    };
    (base ^ noise) & (u128::MAX >> (128 - width))
}

pub(crate) fn to_addr(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(bits.into())
    } else {
        IpAddr::V4((bits as u32).into())
    }
}

pub(crate) fn random_prefix(rng: &mut Rng, v6: bool) -> Prefix {
    let width = if v6 { 128u32 } else { 32 };
    let lens: &[u32] = if v6 {
        &[0, 16, 32, 33, 48, 64, 100, 127, 128]
    } else {
        &[0, 1, 8, 12, 16, 23, 24, 25, 30, 31, 32]
    };
    let len = rng.pick(lens);
    let mask = if len == 0 {
        0
    } else {
        (u128::MAX >> (128 - width)) & !((1u128 << (width - len)) - 1)
    };
    Prefix::new(to_addr(base_addr(rng, v6) & mask, v6), len as u8).unwrap()
}

pub(crate) fn random_ports(rng: &mut Rng) -> PortRange {
    let ranges = [
        (80, 80),
        (443, 443),
        (1, 65535),
        (1024, 65535),
        (16384, 32767),
        (20000, 20100),
        (79, 81),
        (400, 500),
        (443, 8443),
    ];
    let (lo, hi) = rng.pick(&ranges);
    PortRange { lo, hi }
}

pub(crate) fn random_policy(rng: &mut Rng, i: usize) -> Policy {
    let mut p = Policy::new(&format!("p{i}"));
    p.dscp = Some(1);
    p.direction = rng.pick(&[
        PolicyDirection::Outbound,
        PolicyDirection::Outbound,
        PolicyDirection::Inbound,
        PolicyDirection::Both,
    ]);
    let v6 = rng.chance(40);
    if rng.chance(50) {
        p.src_prefix = Some(random_prefix(rng, v6));
    }
    if rng.chance(60) {
        p.dst_prefix = Some(random_prefix(rng, v6));
    }
    if rng.chance(60) {
        p.protocol = Some(rng.pick(&[6, 6, 17, 17, 132, 1, 58, 47]));
    }
    if p.protocol.is_none_or(has_ports) {
        if rng.chance(30) {
            p.src_port = Some(random_ports(rng));
        }
        if rng.chance(50) {
            p.dst_port = Some(random_ports(rng));
        }
    }
    if rng.chance(15) {
        p.vlan = Some(rng.pick(&[0, 1, 2]));
    }
    p.precedence = rng.pick(&[127, 127, 127, 127, 100, 200, 0, 255]);
    p
}

pub(crate) fn random_key(rng: &mut Rng, policies: &[Policy]) -> MatchKey {
    let v6 = rng.chance(40);
    let mut k = MatchKey {
        direction: if rng.chance(70) {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        vlan: rng.chance(30).then(|| rng.pick(&[0, 1, 2, 3])),
        src: to_addr(base_addr(rng, v6), v6),
        dst: to_addr(base_addr(rng, v6), v6),
        protocol: rng.pick(&[6, 6, 17, 132, 1, 58, 47, 50]),
        ports: None,
    };
    if has_ports(k.protocol) && rng.chance(90) {
        let port =
            |rng: &mut Rng| rng.pick(&[80, 443, 1, 1024, 20050, 32767, 8443, 500, 65535, 81]);
        k.ports = Some((port(rng), port(rng)));
    }
    // Often aim inside a policy's conditions, with random host bits.
    if !policies.is_empty() && rng.chance(50) {
        let p = &policies[rng.below(policies.len() as u64) as usize];
        aim_at(rng, p, &mut k);
    }
    k
}

/// Moves `k` inside `p`'s prefixes, protocol and port ranges (random host
/// bits and ports); direction and VLAN are left alone.
pub(crate) fn aim_at(rng: &mut Rng, p: &Policy, k: &mut MatchKey) {
    let inside = |rng: &mut Rng, pf: &Prefix| {
        let host = u128::from(rng.next()) << 64 | u128::from(rng.next());
        let width = if pf.is_ipv4() { 32 } else { 128 };
        let hostmask = !pf.mask() & (u128::MAX >> (128 - width));
        to_addr(pf.bits() | (host & hostmask), !pf.is_ipv4())
    };
    if let Some(s) = &p.src_prefix {
        k.src = inside(rng, s);
        if p.dst_prefix.is_none() {
            k.dst = to_addr(base_addr(rng, !s.is_ipv4()), !s.is_ipv4());
        }
    }
    if let Some(d) = &p.dst_prefix {
        k.dst = inside(rng, d);
        if p.src_prefix.is_none() {
            k.src = to_addr(base_addr(rng, !d.is_ipv4()), !d.is_ipv4());
        }
    }
    if let Some(proto) = p.protocol {
        k.protocol = proto;
    }
    if p.has_port_condition() {
        if !has_ports(k.protocol) {
            k.protocol = 6;
        }
        let pick = |rng: &mut Rng, r: Option<PortRange>| {
            r.map_or(rng.below(65536) as u16, |r| {
                r.lo + rng.below(u64::from(r.size())) as u16
            })
        };
        k.ports = Some((pick(rng, p.src_port), pick(rng, p.dst_port)));
    }
}
