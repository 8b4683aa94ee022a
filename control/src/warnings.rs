//! Warnings about a valid policy set: conflicts and policies that can never
//! win. Both checks are sound (a warning is always true) and cheap (about
//! one classification per policy); the shadowing check is not complete.

use std::collections::HashMap;

use crate::diag::Diagnostic;
use crate::explain::lost_at;
use crate::policy::{
    Direction, MatchKey, Policy, PolicyDirection, PolicyId, PrecedenceKey, Prefix,
};
use crate::table::PolicyTable;

/// All warnings, sorted by position.
pub fn warnings(file: &str, table: &PolicyTable) -> Vec<Diagnostic> {
    let mut out = conflicts(file, table);
    out.extend(shadowed(file, table));
    out.extend(table.policies().iter().filter_map(|p| misleading(file, p)));
    out.sort_by_key(|d| d.pos);
    out
}

/// Two policies conflict when they tie on the whole precedence key (so only
/// file order decides) and some packet matches both. Reported once per
/// later policy, naming every earlier policy it conflicts with.
fn conflicts(file: &str, table: &PolicyTable) -> Vec<Diagnostic> {
    // Equal keys have the same conditions present and the same prefix
    // lengths, so overlapping prefixes are equal prefixes: group on them and
    // compare only ports and directions within a group.
    type Group = (
        PrecedenceKey,
        Option<Prefix>,
        Option<Prefix>,
        Option<u8>,
        Option<u16>,
    );
    let mut groups: HashMap<Group, Vec<usize>> = HashMap::new();
    for (i, p) in table.policies().iter().enumerate() {
        let g = (
            p.precedence_key(),
            p.src_prefix,
            p.dst_prefix,
            p.protocol,
            p.vlan,
        );
        groups.entry(g).or_default().push(i);
    }
    let mut out = Vec::new();
    let policies = table.policies();
    for members in groups.values().filter(|m| m.len() > 1) {
        for (n, &later) in members.iter().enumerate().skip(1) {
            let b = &policies[later];
            // The first CONFLICTS_NAMED by name, then how many more.
            let (mut named, mut more) = (Vec::new(), 0);
            for a in (members[..n].iter().map(|&a| &policies[a])).filter(|a| overlap(a, b)) {
                if named.len() < CONFLICTS_NAMED {
                    named.push(a);
                } else {
                    more += 1;
                }
            }
            if !named.is_empty() {
                out.push(Diagnostic::warning(
                    file,
                    b.location,
                    conflict(b, &named, more),
                ));
            }
        }
    }
    out
}

/// How many of the policies a policy conflicts with its warning names.
const CONFLICTS_NAMED: usize = 5;

/// The warning for policy `b`, which conflicts with the `earlier` policies (at least one)
/// and `more` after them.
fn conflict(b: &Policy, earlier: &[&Policy], more: usize) -> String {
    let named = |a: &&Policy| format!("\"{}\" (line {})", a.name, a.location.line);
    if let ([a], 0) = (earlier, more) {
        return format!(
            "policy \"{}\": conflicts with policy {}: equal precedence and specificity, and some traffic matches both; \"{}\" wins because it comes first in the file",
            b.name,
            named(a),
            a.name
        );
    }
    let mut list: Vec<String> = earlier.iter().map(named).collect();
    if more > 0 {
        list.push(format!("and {more} more"));
    }
    format!(
        "policy \"{}\": conflicts with policies {}: equal precedence and specificity, and some traffic matches it and each of them; where they share traffic, the one earlier in the file wins",
        b.name,
        list.join(", ")
    )
}

/// A policy that is valid but cannot mean what it seems to: one whose ICMP version is not
/// its addresses' IP version (it never matches), one with an IPv4-mapped IPv6 prefix (IPv4
/// packets carry IPv4 addresses, so it matches none of them), `protocol: ah` with IPv6
/// addresses (IPv6 flows are keyed by the protocol after AH), or a policy named `none`,
/// which `policy explain`'s first line cannot tell from no winner.
fn misleading(file: &str, p: &Policy) -> Option<Diagnostic> {
    let prefixes = || p.src_prefix.iter().chain(&p.dst_prefix);
    let why = if p.name == "none" {
        "`qosgw policy explain` prints `winner: none` both when this policy wins and when none matches; give it another name".to_owned()
    } else if let Some((m, v4)) = prefixes().find_map(|x| Some((x, ipv4_mapped(x)?))) {
        format!(
            "matches no IPv4 traffic: {m} is an IPv4-mapped IPv6 prefix (IPv4 packets match IPv4 prefixes: {v4})"
        )
    } else if let (Some(51), Some(v6)) = (p.protocol, prefixes().find(|x| !x.is_ipv4())) {
        format!(
            "in IPv6 traffic such as {v6}, AH is an extension header and a flow's protocol is the one AH protects, so protocol ah matches only non-first fragments whose first fragment was not seen"
        )
    } else {
        let (icmp, v4) = match p.protocol {
            Some(1) => ("icmp", true),
            Some(58) => ("icmpv6", false),
            _ => return None,
        };
        let other = prefixes().find(|x| x.is_ipv4() != v4)?;
        format!(
            "never matches: protocol {icmp} does not occur in {} traffic such as {other}",
            if v4 { "IPv6" } else { "IPv4" }
        )
    };
    Some(Diagnostic::warning(
        file,
        p.location,
        format!("policy \"{}\": {why}", p.name),
    ))
}

/// The IPv4 prefix an IPv4-mapped IPv6 prefix (length ≥ 96) stands for, if `p` is one.
fn ipv4_mapped(p: &Prefix) -> Option<String> {
    match p.addr() {
        std::net::IpAddr::V6(a) if p.prefix_len() >= 96 => {
            let v4 = a.to_ipv4_mapped()?;
            Some(format!("{v4}/{}", p.prefix_len() - 96))
        }
        _ => None,
    }
}

/// Whether policies with equal prefixes, protocol and VLAN share a packet.
fn overlap(a: &Policy, b: &Policy) -> bool {
    let dir = a.direction == PolicyDirection::Both
        || b.direction == PolicyDirection::Both
        || a.direction == b.direction;
    let ports = |x: Option<crate::PortRange>, y: Option<crate::PortRange>| match (x, y) {
        (Some(x), Some(y)) => x.overlaps(&y),
        _ => true,
    };
    dir && ports(a.src_port, b.src_port) && ports(a.dst_port, b.dst_port)
}

/// Whether every packet `p` matches is also matched by `w`.
fn covers(w: &Policy, p: &Policy) -> bool {
    let dir = w.direction == PolicyDirection::Both || w.direction == p.direction;
    let prefix = |wp: Option<Prefix>, pp: Option<Prefix>| match (wp, pp) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(wp), Some(pp)) => wp.covers(&pp),
    };
    // A port condition never matches a packet without ports, so `w` can only
    // cover `p` on a side where `p` has a narrower port condition itself
    // (which also restricts `p` to TCP, UDP and SCTP, like `w`).
    let port = |wr: Option<crate::PortRange>, pr: Option<crate::PortRange>| match (wr, pr) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(wr), Some(pr)) => wr.covers(&pr),
    };
    dir && prefix(w.src_prefix, p.src_prefix)
        && prefix(w.dst_prefix, p.dst_prefix)
        && (w.protocol.is_none() || w.protocol == p.protocol)
        && port(w.src_port, p.src_port)
        && port(w.dst_port, p.dst_port)
        && (w.vlan.is_none() || w.vlan == p.vlan)
}

/// A packet `p` matches that as few other policies as possible match: the
/// first address of each prefix, port 0 (no port condition matches it) on a
/// side without a port condition, protocol 255 (reserved) when any
/// protocol is allowed, no VLAN tag unless required.
fn corner(p: &Policy) -> MatchKey {
    let v6 = p.src_prefix.or(p.dst_prefix).is_some_and(|x| !x.is_ipv4());
    let unspecified = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let protocol = match (p.protocol, p.has_port_condition()) {
        (Some(n), _) => n,
        (None, true) => crate::policy::PROTO_TCP,
        (None, false) => 255,
    };
    MatchKey {
        direction: if p.direction == PolicyDirection::Inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        vlan: p.vlan,
        src: p.src_prefix.map_or(unspecified, |x| x.addr()),
        dst: p.dst_prefix.map_or(unspecified, |x| x.addr()),
        protocol,
        ports: p.has_port_condition().then(|| {
            (
                p.src_port.map_or(0, |r| r.lo),
                p.dst_port.map_or(0, |r| r.lo),
            )
        }),
    }
}

/// A policy can never win if a policy that beats it matches all its
/// traffic. Checked against the policy that wins at the policy's corner
/// packet: sound, but a shadowing policy that does not win there is missed.
fn shadowed(file: &str, table: &PolicyTable) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, p) in table.policies().iter().enumerate() {
        if let Some(w) = shadowing(table, i) {
            let wp = table.policy(w);
            out.push(Diagnostic::warning(
                file,
                p.location,
                format!(
                    "policy \"{}\": never wins: policy \"{}\" (line {}) matches all its traffic and beats it ({})",
                    p.name,
                    wp.name,
                    wp.location.line,
                    lost_at(wp, p)
                ),
            ));
        }
    }
    out
}

/// The policy that matches all of policy `i`'s traffic and beats it, if the
/// winner at `i`'s corner packet is one.
fn shadowing(table: &PolicyTable, i: usize) -> Option<PolicyId> {
    let p = &table.policies()[i];
    let key = corner(p);
    debug_assert!(p.matches(&key));
    let w = table.classify(&key)?;
    (w as usize != i && covers(table.policy(w), p)).then_some(w)
}

#[cfg(test)]
mod tests {
    use super::shadowing;
    use crate::parse_policies;
    use crate::policy::{Direction, Policy, PolicyDirection};
    use crate::table::PolicyTable;
    use crate::testgen::{aim_at, random_key, random_policy, Rng};

    #[test]
    fn misleading_policies_are_warned_about() {
        let text = r#"{"policies":[
            {"name":"none","dst_port":53,"dscp":1},
            {"name":"ping6","protocol":"icmp","dst_prefix":"2001:db8::/32","dscp":2},
            {"name":"ping4","protocol":"icmpv6","src_prefix":"10.0.0.0/8","dscp":3},
            {"name":"mapped","dst_prefix":"::ffff:10.0.0.0/104","dscp":4},
            {"name":"ah6","protocol":"ah","src_prefix":"2001:db8:1::/48","dscp":6},
            {"name":"fine","protocol":"icmpv6","dst_prefix":"2001:db8::/32","dscp":5},
            {"name":"ah4","protocol":"ah","dst_prefix":"10.0.0.0/8","dscp":7},
            {"name":"ah","protocol":"ah","dscp":8}
        ]}"#;
        let (_, warnings) = parse_policies("p.json", text).expect("valid");
        let lines: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        let expect = [
            "p.json:2:13: warning: policy \"none\": `qosgw policy explain` prints `winner: none` both",
            "p.json:3:13: warning: policy \"ping6\": never matches: protocol icmp does not occur in IPv6 traffic such as 2001:db8::/32",
            "p.json:4:13: warning: policy \"ping4\": never matches: protocol icmpv6 does not occur in IPv4 traffic such as 10.0.0.0/8",
            "p.json:5:13: warning: policy \"mapped\": matches no IPv4 traffic: ::ffff:10.0.0.0/104 is an IPv4-mapped IPv6 prefix (IPv4 packets match IPv4 prefixes: 10.0.0.0/8)",
            "p.json:6:13: warning: policy \"ah6\": in IPv6 traffic such as 2001:db8:1::/48, AH is an extension header and a flow's protocol is the one AH protects, so protocol ah matches only non-first fragments whose first fragment was not seen",
        ];
        assert_eq!(lines.len(), expect.len(), "{lines:#?}");
        for (line, want) in lines.iter().zip(expect) {
            assert!(line.starts_with(want), "{line}\nwanted {want}");
        }
    }

    #[test]
    fn property_never_wins_warnings_are_true() {
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let mut found = 0;
        for _ in 0..150 {
            let n = rng.pick(&[5usize, 20, 60]);
            let policies: Vec<Policy> = (0..n).map(|i| random_policy(&mut rng, i)).collect();
            let table = PolicyTable::new(policies);
            for (i, p) in table.policies().iter().enumerate() {
                let Some(w) = shadowing(&table, i) else {
                    continue;
                };
                found += 1;
                for _ in 0..200 {
                    let mut k = random_key(&mut rng, &[]);
                    aim_at(&mut rng, p, &mut k);
                    k.direction = match p.direction {
                        PolicyDirection::Inbound => Direction::Inbound,
                        PolicyDirection::Outbound => Direction::Outbound,
                        PolicyDirection::Both => k.direction,
                    };
                    if p.vlan.is_some() {
                        k.vlan = p.vlan;
                    }
                    if p.matches(&k) {
                        assert!(table.policy(w).matches(&k), "{k:?}");
                        assert_ne!(table.classify(&k), Some(i as u32), "{k:?}");
                    }
                }
            }
        }
        assert!(found > 20, "only {found} shadowed policies generated");
    }

    fn warnings(policies: &str) -> Vec<String> {
        let text = format!("{{\"policies\": [\n{policies}\n]}}");
        let (_, w) = parse_policies("w.json", &text).unwrap();
        w.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn conflicts_are_ties_that_overlap() {
        let w = warnings(
            r#"{"name": "a", "dst_prefix": "10.2.0.0/16", "dst_port": "100-199", "dscp": 1},
{"name": "b", "dst_prefix": "10.2.0.0/16", "dst_port": "150-249", "dscp": 2},
{"name": "c", "dst_prefix": "10.2.0.0/16", "dst_port": "300-399", "dscp": 3},
{"name": "d", "dst_prefix": "10.3.0.0/16", "dst_port": "100-199", "dscp": 4},
{"name": "e", "direction": "inbound", "dst_prefix": "10.2.0.0/16", "dst_port": "100-199", "dscp": 5}"#,
        );
        assert_eq!(
            w,
            ["w.json:3:1: warning: policy \"b\": conflicts with policy \"a\" (line 2): equal precedence and specificity, and some traffic matches both; \"a\" wins because it comes first in the file"]
        );
    }

    #[test]
    fn a_conflict_names_every_earlier_policy_it_ties_with() {
        // c shares port 10 with a and ports 11-19 with b: both pairs are named.
        let w = warnings(
            r#"{"name": "a", "src_port": "1-10", "dscp": 1},
{"name": "b", "src_port": "11-20", "dscp": 2},
{"name": "c", "src_port": "10-19", "dscp": 3}"#,
        );
        assert_eq!(
            w,
            ["w.json:4:1: warning: policy \"c\": conflicts with policies \"a\" (line 2), \"b\" (line 3): equal precedence and specificity, and some traffic matches it and each of them; where they share traffic, the one earlier in the file wins"]
        );
        // Seven equal policies: the last names five of the six before it.
        let same: Vec<String> = (0..7)
            .map(|i| format!(r#"{{"name": "p{i}", "dst_port": 53, "dscp": 1}}"#))
            .collect();
        let w: Vec<String> = (warnings(&same.join(",\n")).into_iter())
            .filter(|w| w.contains("conflicts with"))
            .collect();
        assert_eq!(w.len(), 6, "{w:#?}");
        assert!(
            w[5].starts_with("w.json:8:1: warning: policy \"p6\": conflicts with policies \"p0\" (line 2), \"p1\" (line 3), \"p2\" (line 4), \"p3\" (line 5), \"p4\" (line 6), and 1 more: "),
            "{}",
            w[5]
        );
    }

    #[test]
    fn shadowed_policies_are_found() {
        let w = warnings(
            r#"{"name": "all-web", "precedence": 200, "protocol": "tcp", "dst_port": "1-65535", "dscp": 1},
{"name": "intranet-web", "dst_prefix": "10.0.0.0/8", "protocol": "tcp", "dst_port": 443, "dscp": 2},
{"name": "dns", "protocol": "udp", "dst_port": 53, "dscp": 3},
{"name": "dup", "protocol": "udp", "dst_port": 53, "dscp": 4},
{"name": "tcp-any-port", "protocol": "tcp", "dscp": 5}"#,
        );
        assert_eq!(
            w,
            [
                "w.json:3:1: warning: policy \"intranet-web\": never wins: policy \"all-web\" (line 2) matches all its traffic and beats it (step 1, precedence: 127 < 200)",
                "w.json:5:1: warning: policy \"dup\": conflicts with policy \"dns\" (line 4): equal precedence and specificity, and some traffic matches both; \"dns\" wins because it comes first in the file",
                "w.json:5:1: warning: policy \"dup\": never wins: policy \"dns\" (line 4) matches all its traffic and beats it (step 5, file order: equal to the winner on steps 1 to 4 and later in the file (line 5 vs 4); the two policies conflict)",
            ]
        );
        // "tcp-any-port" is not shadowed by "all-web": it also matches TCP
        // fragments whose ports are unknown.
    }

    #[test]
    fn a_clean_file_has_no_warnings() {
        let w = warnings(
            r#"{"name": "voice", "protocol": "udp", "dst_port": "16384-32767", "dscp": 46},
{"name": "backup", "dst_prefix": "10.20.0.0/16", "protocol": "tcp", "dst_port": 873, "dscp": 8},
{"name": "web-default", "dst_port": 443, "dscp": 18}"#,
        );
        assert!(w.is_empty(), "{w:?}");
    }
}
