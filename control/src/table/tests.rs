//! The precedence rules of SPEC §2, one test each, and a property test of the
//! fast classifier against the linear scan.

use std::net::IpAddr;

use super::*;
use crate::policy::Direction;
use crate::testgen::{random_key, random_policy, Rng};

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
