//! The precedence rules of SPEC §2, one test each, and a property test of the
//! fast classifier against the linear scan.

use std::net::IpAddr;

use super::*;
use crate::policy::{Direction, PolicyDirection, Prefix};

fn table(policies: &str) -> PolicyTable {
    let text = format!("{{\"policies\": [{policies}]}}");
    match crate::parse_policies("t.json", &text) {
        Ok((t, _)) => t,
        Err(e) => panic!("{}", e[0]),
    }
}

/// A key: `proto` number, `src`/`dst` as `IP` or `IP:PORT` (IPv6 in brackets).
fn key(proto: u8, src: &str, dst: &str) -> MatchKey {
    fn ep(s: &str) -> (IpAddr, Option<u16>) {
        if let Ok(a) = s.parse() {
            return (a, None);
        }
        let (a, p) = s.rsplit_once(':').unwrap();
        let a = a.trim_start_matches('[').trim_end_matches(']');
        (a.parse().unwrap(), Some(p.parse().unwrap()))
    }
    let (src, sp) = ep(src);
    let (dst, dp) = ep(dst);
    MatchKey {
        direction: Direction::Outbound,
        vlan: None,
        src,
        dst,
        protocol: proto,
        ports: (sp.is_some() || dp.is_some()).then(|| (sp.unwrap_or(0), dp.unwrap_or(0))),
    }
}

fn winner(t: &PolicyTable, k: &MatchKey) -> Option<String> {
    let fast = t.classify(k);
    assert_eq!(
        fast,
        t.classify_linear(k),
        "fast and linear disagree for {k:?}"
    );
    fast.map(|id| t.policy(id).name.clone())
}

fn wins(t: &PolicyTable, k: &MatchKey) -> String {
    winner(t, k).unwrap_or_else(|| "none".into())
}

const TCP: u8 = 6;
const UDP: u8 = 17;

#[test]
fn host_address_beats_a_slash_24() {
    let t = table(
        r#"{"name": "net", "dst_prefix": "10.1.2.0/24", "dscp": 1},
           {"name": "host", "dst_prefix": "10.1.2.3", "dscp": 2}"#,
    );
    assert_eq!(wins(&t, &key(TCP, "192.0.2.1", "10.1.2.3")), "host");
    assert_eq!(wins(&t, &key(TCP, "192.0.2.1", "10.1.2.4")), "net");
    assert_eq!(wins(&t, &key(TCP, "192.0.2.1", "10.1.3.4")), "none");
}

#[test]
fn more_conditions_beat_fewer() {
    // A /32 host with one condition loses to two broad conditions.
    let t = table(
        r#"{"name": "host", "src_prefix": "10.0.0.1", "dscp": 1},
           {"name": "two", "dst_prefix": "0.0.0.0/0", "protocol": "tcp", "dscp": 2}"#,
    );
    assert_eq!(wins(&t, &key(TCP, "10.0.0.1", "10.9.9.9")), "two");
    assert_eq!(wins(&t, &key(UDP, "10.0.0.1", "10.9.9.9")), "host");
}

#[test]
fn on_equal_count_the_heavier_condition_wins() {
    // Each pair: the first policy has the heavier single condition.
    let conds = [
        ("src", r#""src_prefix": "10.0.0.0/8""#),
        ("dst", r#""dst_prefix": "10.2.0.0/16""#),
        ("sport", r#""src_port": "1000-2000""#),
        ("dport", r#""dst_port": 80"#),
        ("proto", r#""protocol": "tcp""#),
        ("vlan", r#""vlan": 7"#),
    ];
    let mut k = key(TCP, "10.1.1.1:1500", "10.2.2.2:80");
    k.vlan = Some(7);
    for i in 0..conds.len() {
        for j in i + 1..conds.len() {
            let (hn, hc) = conds[i];
            let (ln, lc) = conds[j];
            // File order must not matter: try both orders.
            let a = table(&format!(
                r#"{{"name": "{ln}", {lc}, "dscp": 1}}, {{"name": "{hn}", {hc}, "dscp": 2}}"#
            ));
            let b = table(&format!(
                r#"{{"name": "{hn}", {hc}, "dscp": 2}}, {{"name": "{ln}", {lc}, "dscp": 1}}"#
            ));
            assert_eq!(wins(&a, &k), hn, "{hn} vs {ln}");
            assert_eq!(wins(&b, &k), hn, "{hn} vs {ln}");
        }
    }
}

#[test]
fn src_prefix_beats_dst_prefix_even_if_shorter() {
    let t = table(
        r#"{"name": "dst32", "dst_prefix": "10.2.2.2/32", "dscp": 1},
           {"name": "src8", "src_prefix": "10.0.0.0/8", "dscp": 2}"#,
    );
    assert_eq!(wins(&t, &key(TCP, "10.1.1.1", "10.2.2.2")), "src8");
}

#[test]
fn narrower_port_range_wins() {
    let t = table(
        r#"{"name": "wide", "protocol": "udp", "dst_port": "16384-32767", "dscp": 46},
           {"name": "narrow", "protocol": "udp", "dst_port": "20000-20100", "dscp": 34},
           {"name": "one", "protocol": "udp", "dst_port": 20050, "dscp": 10}"#,
    );
    assert_eq!(wins(&t, &key(UDP, "10.0.0.1:5", "10.0.0.2:20050")), "one");
    assert_eq!(
        wins(&t, &key(UDP, "10.0.0.1:5", "10.0.0.2:20051")),
        "narrow"
    );
    assert_eq!(wins(&t, &key(UDP, "10.0.0.1:5", "10.0.0.2:30000")), "wide");
    assert_eq!(wins(&t, &key(UDP, "10.0.0.1:5", "10.0.0.2:40000")), "none");
}

#[test]
fn longer_prefix_wins_in_field_order() {
    // Same conditions; src length decides before dst length.
    let t = table(
        r#"{"name": "dst-long", "src_prefix": "10.0.0.0/8", "dst_prefix": "10.2.2.0/24", "dscp": 1},
           {"name": "src-long", "src_prefix": "10.1.0.0/16", "dst_prefix": "10.0.0.0/8", "dscp": 2}"#,
    );
    assert_eq!(wins(&t, &key(TCP, "10.1.1.1", "10.2.2.2")), "src-long");
}

#[test]
fn higher_precedence_beats_a_more_specific_policy() {
    let t = table(
        r#"{"name": "specific", "src_prefix": "10.1.1.1", "dst_prefix": "10.2.2.2",
            "protocol": "tcp", "src_port": 1234, "dst_port": 80, "vlan": 3, "dscp": 1},
           {"name": "boss", "precedence": 128, "dscp": 2}"#,
    );
    let mut k = key(TCP, "10.1.1.1:1234", "10.2.2.2:80");
    k.vlan = Some(3);
    assert_eq!(wins(&t, &k), "boss");
    let low = table(
        r#"{"name": "low", "precedence": 126, "dst_prefix": "10.2.2.2", "dscp": 1},
                       {"name": "any", "dscp": 2}"#,
    );
    assert_eq!(wins(&low, &k), "any");
}

#[test]
fn ties_go_to_the_earlier_policy() {
    let t = table(
        r#"{"name": "first", "dst_prefix": "10.2.0.0/16", "dscp": 1},
           {"name": "second", "dst_prefix": "10.2.0.0/16", "dscp": 2},
           {"name": "other", "dst_prefix": "10.3.0.0/16", "dscp": 3}"#,
    );
    assert_eq!(wins(&t, &key(TCP, "10.1.1.1", "10.2.2.2")), "first");
    // Equal-size port ranges that overlap also tie on the key.
    let t = table(
        r#"{"name": "a", "dst_port": "100-199", "dscp": 1},
           {"name": "b", "dst_port": "150-249", "dscp": 2}"#,
    );
    assert_eq!(wins(&t, &key(TCP, "10.1.1.1:1", "10.2.2.2:160")), "a");
    assert_eq!(wins(&t, &key(TCP, "10.1.1.1:1", "10.2.2.2:200")), "b");
}

#[test]
fn direction_is_a_filter_only() {
    let t = table(
        r#"{"name": "in", "direction": "inbound", "dst_prefix": "10.2.2.2", "dscp": 1},
           {"name": "both", "direction": "both", "dst_prefix": "10.2.0.0/16", "dscp": 2},
           {"name": "out", "dst_prefix": "10.2.0.0/16", "dscp": 3}"#,
    );
    let mut k = key(TCP, "10.1.1.1", "10.2.2.2");
    // Outbound: "in" is filtered out; "both" and "out" tie, "both" is first.
    assert_eq!(wins(&t, &k), "both");
    k.direction = Direction::Inbound;
    assert_eq!(wins(&t, &k), "in");
    k.dst = "10.2.9.9".parse().unwrap();
    assert_eq!(wins(&t, &k), "both");
}

#[test]
fn port_condition_without_protocol_matches_only_tcp_udp_sctp() {
    let t = table(r#"{"name": "p", "dst_port": 443, "dscp": 1}"#);
    for proto in [6, 17, 132] {
        assert_eq!(wins(&t, &key(proto, "10.0.0.1:9", "10.0.0.2:443")), "p");
    }
    for proto in [1, 47, 50, 58] {
        assert_eq!(wins(&t, &key(proto, "10.0.0.1:9", "10.0.0.2:443")), "none");
    }
    // Ports unknown (a non-first fragment): no port condition matches.
    let mut k = key(TCP, "10.0.0.1:9", "10.0.0.2:443");
    k.ports = None;
    assert_eq!(wins(&t, &k), "none");
}

#[test]
fn protocol_and_vlan_must_equal() {
    let t = table(
        r#"{"name": "gre", "protocol": 47, "dscp": 1},
           {"name": "v", "vlan": 0, "dscp": 2}"#,
    );
    assert_eq!(wins(&t, &key(47, "10.0.0.1", "10.0.0.2")), "gre");
    let mut k = key(TCP, "10.0.0.1", "10.0.0.2");
    assert_eq!(wins(&t, &k), "none");
    k.vlan = Some(0);
    assert_eq!(wins(&t, &k), "v");
}

#[test]
fn families_never_mix() {
    let t = table(
        r#"{"name": "v4all", "dst_prefix": "0.0.0.0/0", "dscp": 1},
           {"name": "v6", "dst_prefix": "2001:db8::/32", "dscp": 2},
           {"name": "any", "protocol": "udp", "dscp": 3}"#,
    );
    assert_eq!(wins(&t, &key(TCP, "10.0.0.1", "10.0.0.2")), "v4all");
    assert_eq!(wins(&t, &key(TCP, "2001:db8::1", "2001:db8::2")), "v6");
    assert_eq!(wins(&t, &key(TCP, "2001:db9::1", "2001:db9::2")), "none");
    assert_eq!(
        wins(&t, &key(UDP, "[2001:db9::1]:1", "[2001:db9::2]:2")),
        "any"
    );
    // A key mixing families is no real packet, but still answered exactly.
    assert_eq!(wins(&t, &key(UDP, "10.0.0.1", "2001:db8::2")), "v6");
}

#[test]
fn empty_table_matches_nothing() {
    let t = PolicyTable::empty();
    assert_eq!(t.classify(&key(TCP, "10.0.0.1", "10.0.0.2")), None);
    assert!(t.is_empty());
}

#[test]
fn table_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PolicyTable>();
}

#[test]
fn crowded_buckets_overflow_into_exact_sub_tables() {
    // Many policies with the same masked fields exceed MAX_BUCKET.
    let mut ps = Vec::new();
    for i in 0..40u16 {
        ps.push(format!(
            r#"{{"name": "p{i}", "dst_prefix": "10.2.0.0/16", "protocol": "tcp", "dst_port": "{}-{}", "dscp": 1}}"#,
            1000 + i,
            1100 - i
        ));
    }
    let t = table(&ps.join(","));
    for port in 990..1110 {
        let k = key(TCP, "10.1.1.1:7", &format!("10.2.3.4:{port}"));
        let w = winner(&t, &k);
        if (1000..=1100).contains(&port) {
            let i = (port - 1000).min(1100 - port).min(39);
            assert_eq!(w, Some(format!("p{i}")));
        } else {
            assert_eq!(w, None);
        }
    }
}

/// xorshift64*: a small seeded generator, so failures are reproducible
/// without a property-testing crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// A few base addresses per family, so prefixes overlap a lot.
fn base_addr(rng: &mut Rng, v6: bool) -> u128 {
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

fn to_addr(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(bits.into())
    } else {
        IpAddr::V4((bits as u32).into())
    }
}

fn random_prefix(rng: &mut Rng, v6: bool) -> Prefix {
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

fn random_ports(rng: &mut Rng) -> PortRange {
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

fn random_policy(rng: &mut Rng, i: usize) -> Policy {
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

fn random_key(rng: &mut Rng, policies: &[Policy]) -> MatchKey {
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
    // Often aim inside a policy's prefixes, with random host bits.
    if !policies.is_empty() && rng.chance(50) {
        let p = &policies[rng.below(policies.len() as u64) as usize];
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
    k
}

#[test]
fn property_fast_classifier_equals_linear_scan() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut matched = 0;
    let mut total = 0;
    for round in 0..300 {
        let n = rng.pick(&[1usize, 5, 20, 100, 300]);
        let mut policies: Vec<Policy> = (0..n).map(|i| random_policy(&mut rng, i)).collect();
        // Duplicates make ties and crowded buckets.
        if round % 3 == 0 && n > 1 {
            for i in 0..n / 4 {
                let mut dup = policies[rng.below(n as u64) as usize].clone();
                dup.name = format!("dup{i}");
                policies.push(dup);
            }
        }
        let t = PolicyTable::new(policies);
        for _ in 0..400 {
            let k = random_key(&mut rng, t.policies());
            let fast = t.classify(&k);
            let slow = t.classify_linear(&k);
            assert_eq!(fast, slow, "round {round}, key {k:?}");
            matched += usize::from(slow.is_some());
            total += 1;
        }
    }
    // The generator must actually exercise matches, not just misses.
    assert!(
        matched * 4 > total,
        "only {matched} of {total} keys matched"
    );
}
