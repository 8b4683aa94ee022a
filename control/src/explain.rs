//! `qosgw policy explain`: which policy wins for one flow, and why each other
//! matching policy lost.
//!
//! Output (the first line is exactly `winner: NAME` or `winner: none`):
//!
//! ```text
//! winner: backup
//!   line 4: dscp 8, throttle 20000000 bit/s per host, burst 5000 bytes, precedence 127
//! lost: web-default (line 6): step 2, number of conditions: 1 (dst_port) < 3 (dst_prefix, dst_port, protocol)
//! ```

use std::net::IpAddr;
use std::path::Path;

use crate::parse::parse_protocol_str;
use crate::policy::{has_ports, Condition, Direction, MatchKey, Policy};
use crate::table::PolicyTable;

/// The step of the precedence key at which `loser` lost to `winner` (which
/// must be greater), as `step N, what: detail`.
pub fn lost_at(winner: &Policy, loser: &Policy) -> String {
    let (w, l) = (winner.precedence_key(), loser.precedence_key());
    if w.precedence != l.precedence {
        return format!(
            "step 1, precedence: {} < {}",
            loser.precedence, winner.precedence
        );
    }
    if w.count != l.count {
        return format!(
            "step 2, number of conditions: {} ({}) < {} ({})",
            l.count,
            conditions(loser),
            w.count,
            conditions(winner)
        );
    }
    if w.present != l.present {
        let c = Condition::ALL
            .into_iter()
            .find(|c| winner.has(*c) != loser.has(*c))
            .unwrap_or(Condition::Vlan);
        return format!(
            "step 3, which conditions: the winner has {} and this policy does not ({} vs {})",
            c.field(),
            conditions(loser),
            conditions(winner)
        );
    }
    let prefix = |field: &str, lw: u8, ll: u8| {
        format!("step 4, specificity: {field} /{ll} is shorter than the winner's /{lw}")
    };
    if w.src_len != l.src_len {
        return prefix("src_prefix", w.src_len, l.src_len);
    }
    if w.dst_len != l.dst_len {
        return prefix("dst_prefix", w.dst_len, l.dst_len);
    }
    let ports = |field: &str, rw: Option<crate::PortRange>, rl: Option<crate::PortRange>| {
        let size = |r: Option<crate::PortRange>| r.map_or(0, |r| r.size());
        format!(
            "step 4, specificity: {field} covers {} ports, the winner's {}",
            size(rl),
            size(rw)
        )
    };
    if w.src_port_narrowness != l.src_port_narrowness {
        return ports("src_port", winner.src_port, loser.src_port);
    }
    if w.dst_port_narrowness != l.dst_port_narrowness {
        return ports("dst_port", winner.dst_port, loser.dst_port);
    }
    format!(
        "step 5, file order: equal to the winner on steps 1 to 4 and later in the file (line {} vs {}); the two policies conflict",
        loser.location.line, winner.location.line
    )
}

/// The conditions a policy has, in weight order, or `none`.
fn conditions(p: &Policy) -> String {
    let names: Vec<&str> = Condition::ALL
        .into_iter()
        .filter(|c| p.has(*c))
        .map(|c| c.field())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What a policy does, on one line.
fn actions(p: &Policy) -> String {
    let mut parts = Vec::new();
    if let Some(d) = p.dscp {
        parts.push(format!("dscp {d}"));
    }
    if let Some(pcp) = p.priority_8021p {
        parts.push(format!("priority_8021p {pcp}"));
    }
    if let Some(t) = &p.throttle {
        parts.push(format!(
            "throttle {} bit/s per {}, burst {} bytes",
            t.rate_bps,
            t.scope.as_str(),
            t.burst_bytes
        ));
    }
    parts.push(format!("precedence {}", p.precedence));
    parts.join(", ")
}

/// The explanation for one key against a compiled table.
pub fn explain_key(table: &PolicyTable, key: &MatchKey) -> String {
    let matching = table.matching(key);
    let Some(&winner) = matching.first() else {
        // The second line tells this from a winning policy named `none` (whose second
        // line is its actions).
        return "winner: none\n  no policy matches this flow\n".into();
    };
    debug_assert_eq!(table.classify(key), Some(winner));
    let w = table.policy(winner);
    let mut out = format!(
        "winner: {}\n  line {}: {}\n",
        w.name,
        w.location.line,
        actions(w)
    );
    for &id in &matching[1..] {
        let p = table.policy(id);
        out.push_str(&format!(
            "lost: {} (line {}): {}\n",
            p.name,
            p.location.line,
            lost_at(w, p)
        ));
    }
    out
}

/// A last line for a key the gateway almost never sees, where the operator may have meant
/// another: IPv6 AH, which the parser walks through as an extension header.
fn note(key: &MatchKey) -> Option<&'static str> {
    (key.protocol == 51 && key.src.is_ipv6()).then_some(
        "note: in IPv6, AH is an extension header: qosgw classifies AH-protected traffic by \
         the protocol AH carries (give that with --proto); only a non-first fragment whose \
         first fragment was not seen has protocol ah\n",
    )
}

/// Parses `IP` or `IP:PORT` (IPv6 with a port as `[2001:db8::1]:443`).
pub fn parse_endpoint(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let bad = || format!("{s:?} is not IP or IP:PORT (IPv6 with a port: [2001:db8::1]:443)");
    let port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0 && !s.is_empty())
            .ok_or_else(|| format!("{s:?}: port {p:?} is not from 1 to 65535"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| bad())?;
        return match after {
            "" => Ok((IpAddr::V6(addr), None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((IpAddr::V6(addr), Some(port(p)?))),
                None => Err(bad()),
            },
        };
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok((a, None));
    }
    let (addr, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    Ok((IpAddr::V4(addr), Some(port(p)?)))
}

/// Builds the flow key `explain` asks about.
///
/// `proto` is a name or number as in the policy file (not `any`). If the
/// protocol has ports and only one side gives one, the other side's port is
/// 0 (which no port condition matches); if neither gives one, the ports are
/// unknown, as for a non-first fragment. `direction` is `outbound` (the
/// default) or `inbound`.
pub fn parse_key(
    proto: &str,
    src: &str,
    dst: &str,
    vlan: Option<u16>,
    direction: Option<&str>,
) -> Result<MatchKey, String> {
    // A packet has one protocol: `any` is a policy's wildcard, not an answer here.
    let protocol = parse_protocol_str(proto).ok().flatten().ok_or_else(|| {
        format!(
            "--proto: {proto:?} is not a packet's protocol; give tcp, udp, icmp, icmpv6, esp, \
             ah, gre, sctp or a number from 0 to 255"
        )
    })?;
    let (src, sp) = parse_endpoint(src).map_err(|e| format!("--src: {e}"))?;
    let (dst, dp) = parse_endpoint(dst).map_err(|e| format!("--dst: {e}"))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err("--src and --dst must be of the same IP family".into());
    }
    let ports = match (sp, dp) {
        (None, None) => None,
        _ if !has_ports(protocol) => {
            return Err(format!(
                "protocol {proto} has no ports; give --src and --dst without :PORT"
            ))
        }
        (s, d) => Some((s.unwrap_or(0), d.unwrap_or(0))),
    };
    if let Some(v) = vlan {
        if v > 4095 {
            return Err(format!("--vlan: {v} is not a VLAN ID from 0 to 4095"));
        }
    }
    let direction = match direction.unwrap_or("outbound") {
        "outbound" => Direction::Outbound,
        "inbound" => Direction::Inbound,
        d => {
            return Err(format!(
                "--direction: {d:?} is not a packet direction; use outbound or inbound"
            ))
        }
    };
    Ok(MatchKey {
        direction,
        vlan,
        src,
        dst,
        protocol,
        ports,
    })
}

/// `qosgw policy explain FILE --proto P --src IP[:PORT] --dst IP[:PORT]
/// [--vlan N] [--direction D]`: the text to print on stdout, or the error
/// text (one line per problem) to print on stderr before exiting non-zero.
pub fn explain(
    path: &Path,
    proto: &str,
    src: &str,
    dst: &str,
    vlan: Option<u16>,
    direction: Option<&str>,
) -> Result<String, String> {
    let key = parse_key(proto, src, dst, vlan, direction)?;
    // One line (SPEC §4): the first error, and how many more `policy check` lists.
    let (table, _warnings) =
        crate::load_policy_file(path).map_err(|errors| match errors.len() {
            0 | 1 => errors.iter().map(|e| e.to_string()).collect(),
            n => format!(
                "{} (and {} more: qosgw policy check {} lists them)",
                errors[0],
                n - 1,
                path.display()
            ),
        })?;
    let mut out = explain_key(&table, &key);
    out.extend(note(&key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policies: &str, proto: &str, src: &str, dst: &str) -> String {
        let text = format!("{{\"policies\": [\n{policies}\n]}}");
        let (t, _) = crate::parse_policies("e.json", &text).unwrap();
        explain_key(&t, &parse_key(proto, src, dst, None, None).unwrap())
    }

    #[test]
    fn names_the_winner_and_why_each_other_policy_lost() {
        let out = run(
            r#"{"name": "voice", "protocol": "udp", "dst_port": "16384-32767", "dscp": 46},
{"name": "backup", "dst_prefix": "10.20.0.0/16", "protocol": "tcp", "dst_port": 873, "dscp": 8, "throttle": "20Mbps", "throttle_per": "host"},
{"name": "web-default", "dst_port": 873, "dscp": 18},
{"name": "boss", "precedence": 100, "dscp": 1},
{"name": "net24", "dst_prefix": "10.20.1.0/24", "dst_port": 873, "dscp": 1},
{"name": "net16", "dst_prefix": "10.20.0.0/16", "dst_port": 873, "dscp": 1},
{"name": "net16-again", "dst_prefix": "10.20.0.0/16", "dst_port": 873, "dscp": 1},
{"name": "src-wide", "src_prefix": "0.0.0.0/0", "dst_port": 873, "dscp": 1}"#,
            "tcp",
            "10.1.1.1:40000",
            "10.20.1.5:873",
        );
        assert_eq!(
            out,
            "winner: backup
  line 3: dscp 8, throttle 20000000 bit/s per host, burst 5000 bytes, precedence 127
lost: src-wide (line 9): step 2, number of conditions: 2 (src_prefix, dst_port) < 3 (dst_prefix, dst_port, protocol)
lost: net24 (line 6): step 2, number of conditions: 2 (dst_prefix, dst_port) < 3 (dst_prefix, dst_port, protocol)
lost: net16 (line 7): step 2, number of conditions: 2 (dst_prefix, dst_port) < 3 (dst_prefix, dst_port, protocol)
lost: net16-again (line 8): step 2, number of conditions: 2 (dst_prefix, dst_port) < 3 (dst_prefix, dst_port, protocol)
lost: web-default (line 4): step 2, number of conditions: 1 (dst_port) < 3 (dst_prefix, dst_port, protocol)
lost: boss (line 5): step 1, precedence: 100 < 127
"
        );
    }

    #[test]
    fn lost_at_each_step() {
        let p = |name: &str, body: &str| {
            let text = format!("{{\"policies\": [{{\"name\": \"{name}\", {body}, \"dscp\": 1}}]}}");
            crate::parse_policies("x.json", &text).unwrap().0.policies()[0].clone()
        };
        let src = p("a", r#""src_prefix": "10.0.0.0/8""#);
        let dst = p("b", r#""dst_prefix": "10.0.0.0/8""#);
        assert!(
            lost_at(&src, &dst).starts_with("step 3, which conditions: the winner has src_prefix")
        );
        let d24 = p("c", r#""dst_prefix": "10.0.0.0/24""#);
        assert_eq!(
            lost_at(&d24, &dst),
            "step 4, specificity: dst_prefix /8 is shorter than the winner's /24"
        );
        let narrow = p("d", r#""dst_port": "80-81""#);
        let wide = p("e", r#""dst_port": "80-90""#);
        assert_eq!(
            lost_at(&narrow, &wide),
            "step 4, specificity: dst_port covers 11 ports, the winner's 2"
        );
        assert!(lost_at(&dst, &dst).starts_with("step 5, file order"));
    }

    #[test]
    fn no_match_is_winner_none() {
        let out = run(
            r#"{"name": "a", "protocol": "udp", "dscp": 1}"#,
            "tcp",
            "10.0.0.1",
            "10.0.0.2",
        );
        assert_eq!(out, "winner: none\n  no policy matches this flow\n");
    }

    #[test]
    fn endpoints_and_keys() {
        assert_eq!(
            parse_endpoint("[2001:db8::1]:443").unwrap(),
            ("2001:db8::1".parse().unwrap(), Some(443))
        );
        assert_eq!(parse_endpoint("2001:db8::1").unwrap().1, None);
        assert_eq!(
            parse_endpoint("10.0.0.1:80").unwrap(),
            ("10.0.0.1".parse().unwrap(), Some(80))
        );
        assert!(parse_endpoint("10.0.0.1:0").is_err());
        assert!(parse_endpoint("10.0.0.1:x").is_err());
        assert!(parse_endpoint("host:80").is_err());
        assert!(parse_endpoint("[2001:db8::1]443").is_err());
        let k = parse_key("tcp", "10.0.0.1", "10.0.0.2:443", Some(7), Some("inbound")).unwrap();
        assert_eq!(k.ports, Some((0, 443)));
        assert_eq!(k.direction, Direction::Inbound);
        assert_eq!(k.vlan, Some(7));
        assert_eq!(
            parse_key("6", "10.0.0.1", "10.0.0.2", None, None)
                .unwrap()
                .ports,
            None
        );
        assert!(parse_key("any", "10.0.0.1", "10.0.0.2", None, None).is_err());
        assert!(parse_key("icmp", "10.0.0.1:1", "10.0.0.2", None, None).is_err());
        assert!(parse_key("tcp", "10.0.0.1", "::1", None, None).is_err());
        assert!(parse_key("tcp", "10.0.0.1", "10.0.0.2", Some(4096), None).is_err());
        assert!(parse_key("tcp", "10.0.0.1", "10.0.0.2", None, Some("both")).is_err());
    }

    #[test]
    fn explain_reads_the_file_and_reports_its_errors() {
        let dir = crate::testdir::TestDir::new("explain");
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"policies": [{"name": "web", "dst_port": 443, "dscp": 18}]}"#,
        )
        .unwrap();
        let out = explain(&good, "tcp", "10.0.0.1:5000", "10.0.0.2:443", None, None).unwrap();
        assert!(out.starts_with("winner: web\n"), "{out}");
        assert!(!out.contains("note:"), "{out}");
        // IPv6 AH gets a note after the answer; IPv4 AH does not.
        let ah6 = explain(&good, "ah", "2001:db8::1", "2001:db8::2", None, None).unwrap();
        let lines: Vec<&str> = ah6.lines().collect();
        assert_eq!(lines[0], "winner: none");
        assert!(
            lines[2].starts_with("note: in IPv6, AH is an extension header"),
            "{ah6}"
        );
        let ah4 = explain(&good, "ah", "10.0.0.1", "10.0.0.2", None, None).unwrap();
        assert_eq!(ah4, "winner: none\n  no policy matches this flow\n");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"policies": [{"name": "web", "dscp": 99}]}"#).unwrap();
        let err = explain(&bad, "tcp", "10.0.0.1", "10.0.0.2", None, None).unwrap_err();
        assert!(
            err.contains("bad.json:1:39: policy \"web\": dscp: 99 is out of range"),
            "{err}"
        );
        let err = explain(&good, "tcp", "nope", "10.0.0.2", None, None).unwrap_err();
        assert!(err.starts_with("--src: "), "{err}");
    }
}
