//! DSCP / 802.1p marking through the real dataplane (`qosgw replay`), checked against an
//! independent oracle.
//!
//! Every generated frame is paired with the name of the policy the test expects to win
//! (or none), written by hand from SPEC §2 "Which policy wins" and the policy list below;
//! the expected output frame is then computed here from the input bytes (a few lines of
//! header arithmetic), never with qosgw's parser or classifier. Each output frame is
//! matched back to its input frame and checked: DSCP, ECN, 802.1p PCP, the IPv4 header
//! checksum (RFC 1071, recomputed here), every other byte, the frame count, and the order
//! of frames within each flow.

mod common;

use std::collections::HashMap;

use common::*;
use dataplane::pcap::Record;
use dataplane::synth::{arp_request, proto, Packet, L4, TCP_ACK};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// The policy file and the oracle's view of it
// ---------------------------------------------------------------------------------------

/// A policy of the test's file: its match conditions as JSON members, and its actions,
/// which the oracle applies to the frames it expects the policy to win.
struct Policy {
    name: &'static str,
    conditions: &'static str,
    dscp: Option<u8>,
    pcp: Option<u8>,
}

const fn pol(name: &'static str, conditions: &'static str, dscp: u8) -> Policy {
    Policy {
        name,
        conditions,
        dscp: Some(dscp),
        pcp: None,
    }
}

/// Overlapping policies, grouped by the rule of SPEC §2 each group exercises. Every group
/// uses its own address block, so groups do not interfere unless a case says so.
const POLICIES: &[Policy] = &[
    // Longer prefix wins; more conditions win over a longer prefix.
    pol("net24", r#""dst_prefix": "10.1.1.0/24""#, 10),
    pol("host32", r#""dst_prefix": "10.1.1.7/32""#, 12),
    pol(
        "net24-udp",
        r#""dst_prefix": "10.1.1.0/24", "protocol": "udp""#,
        14,
    ),
    // `precedence` beats everything else, in both directions.
    pol(
        "broad-high",
        r#""src_prefix": "10.2.3.0/24", "precedence": 200"#,
        20,
    ),
    pol(
        "narrow-default",
        r#""src_prefix": "10.2.0.0/16", "dst_prefix": "10.3.0.0/16", "protocol": "tcp", "dst_port": 80"#,
        22,
    ),
    pol(
        "narrow-low",
        r#""src_prefix": "10.4.0.0/16", "dst_prefix": "10.3.0.0/16", "protocol": "tcp", "dst_port": 80, "precedence": 50"#,
        24,
    ),
    pol("broad-default", r#""src_prefix": "10.4.0.0/24""#, 26),
    // The narrower port range wins.
    pol(
        "range-wide",
        r#""dst_prefix": "10.5.0.0/16", "protocol": "udp", "dst_port": "5000-5999""#,
        28,
    ),
    pol(
        "range-narrow",
        r#""dst_prefix": "10.5.0.0/16", "protocol": "udp", "dst_port": "5500-5509""#,
        30,
    ),
    // Same number of conditions: src_port is heavier than dst_port.
    pol(
        "by-src-port",
        r#""dst_prefix": "10.6.0.0/16", "protocol": "udp", "src_port": 7000"#,
        32,
    ),
    pol(
        "by-dst-port",
        r#""dst_prefix": "10.6.0.0/16", "protocol": "udp", "dst_port": 7001"#,
        34,
    ),
    // Identical keys: the earlier policy wins.
    pol("tie-first", r#""dst_prefix": "10.7.0.1""#, 36),
    pol("tie-second", r#""dst_prefix": "10.7.0.1/32""#, 38),
    // Direction filters: replay treats all input as outbound.
    pol(
        "inbound-only",
        r#""dst_prefix": "10.8.0.0/16", "direction": "inbound", "precedence": 250"#,
        40,
    ),
    pol(
        "outbound-udp",
        r#""dst_prefix": "10.8.0.0/16", "protocol": "udp", "direction": "outbound""#,
        42,
    ),
    pol(
        "both-ways",
        r#""dst_prefix": "10.9.0.0/16", "direction": "both""#,
        44,
    ),
    // VLAN (the outer tag) and 802.1p.
    Policy {
        name: "vlan42",
        conditions: r#""vlan": 42"#,
        dscp: Some(46),
        pcp: Some(5),
    },
    Policy {
        name: "pcp-only",
        conditions: r#""dst_prefix": "10.21.0.0/16""#,
        dscp: None,
        pcp: Some(6),
    },
    Policy {
        name: "mark-and-pcp",
        conditions: r#""dst_prefix": "10.22.0.0/16""#,
        dscp: Some(48),
        pcp: Some(3),
    },
    // Protocol conditions.
    pol(
        "esp",
        r#""dst_prefix": "10.30.0.0/16", "protocol": "esp""#,
        50,
    ),
    pol(
        "icmp",
        r#""dst_prefix": "10.30.0.0/16", "protocol": "icmp""#,
        52,
    ),
    pol(
        "gre",
        r#""dst_prefix": "10.30.0.0/16", "protocol": "gre""#,
        54,
    ),
    pol(
        "ah",
        r#""dst_prefix": "10.30.0.0/16", "protocol": "ah""#,
        17,
    ),
    pol("net30", r#""dst_prefix": "10.30.0.0/16""#, 56),
    pol(
        "icmpv6",
        r#""dst_prefix": "2001:db8:30::/48", "protocol": "icmpv6""#,
        58,
    ),
    pol(
        "sctp-port",
        r#""dst_prefix": "10.31.0.0/16", "protocol": "sctp", "dst_port": 2905"#,
        3,
    ),
    // IPv6.
    pol("v6-net", r#""dst_prefix": "2001:db8:1::/48""#, 60),
    pol(
        "v6-dns",
        r#""dst_prefix": "2001:db8:1::5/128", "protocol": "udp", "dst_port": 53"#,
        62,
    ),
    // Fragments.
    pol(
        "frag-port",
        r#""dst_prefix": "10.40.0.0/16", "protocol": "udp", "dst_port": 9000"#,
        9,
    ),
    pol("frag-addr", r#""dst_prefix": "10.40.0.0/16""#, 11),
    pol(
        "frag-port-only",
        r#""dst_prefix": "10.42.0.0/16", "protocol": "udp", "dst_port": 9000"#,
        13,
    ),
    pol(
        "frag-noproto-port",
        r#""dst_prefix": "10.43.0.0/16", "dst_port": 9100"#,
        15,
    ),
];

fn policy_file(policies: &[Policy]) -> String {
    let lines: Vec<String> = policies
        .iter()
        .map(|p| {
            let mut s = format!(r#"    {{ "name": "{}", {}"#, p.name, p.conditions);
            if let Some(d) = p.dscp {
                s += &format!(r#", "dscp": {d}"#);
            }
            if let Some(c) = p.pcp {
                s += &format!(r#", "priority_8021p": {c}"#);
            }
            s + " }"
        })
        .collect();
    format!("{{\n  \"policies\": [\n{}\n  ]\n}}\n", lines.join(",\n"))
}

fn find<'a>(policies: &'a [Policy], name: &str) -> &'a Policy {
    policies
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("the test names an unknown policy {name}"))
}

// ---------------------------------------------------------------------------------------
// The test's own header arithmetic (deliberately not qosgw's parser)
// ---------------------------------------------------------------------------------------

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Where things are in a frame the test built: the outer VLAN tag's TCI, the IP header,
/// and the EtherType in front of it.
struct Layout {
    outer_tci: Option<usize>,
    l3: usize,
    ethertype: u16,
}

fn layout(f: &[u8]) -> Option<Layout> {
    if f.len() < 14 {
        return None;
    }
    let (mut at, mut outer_tci) = (12, None);
    let mut ethertype = be16(f, at);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if f.len() < at + 6 {
            return None;
        }
        outer_tci.get_or_insert(at + 2);
        at += 4;
        ethertype = be16(f, at);
    }
    Some(Layout {
        outer_tci,
        l3: at + 2,
        ethertype,
    })
}

/// The traffic-class byte (DSCP << 2 | ECN), if the frame has that much IP header.
fn tos(f: &[u8]) -> Option<u8> {
    let l = layout(f)?;
    match l.ethertype {
        0x0800 if f.len() >= l.l3 + 2 => Some(f[l.l3 + 1]),
        0x86dd if f.len() >= l.l3 + 2 => Some(((f[l.l3] & 0x0f) << 4) | (f[l.l3 + 1] >> 4)),
        _ => None,
    }
}

fn set_tos(f: &mut [u8], value: u8) {
    let l = layout(f).expect("an IP frame");
    match l.ethertype {
        0x0800 => f[l.l3 + 1] = value,
        0x86dd => {
            f[l.l3] = (f[l.l3] & 0xf0) | (value >> 4);
            f[l.l3 + 1] = (f[l.l3 + 1] & 0x0f) | (value << 4);
        }
        other => panic!("not IP: {other:#06x}"),
    }
}

/// Gives an IPv6 frame a flow label, whose top four bits share a byte with the traffic
/// class: marking must keep them.
fn set_flow_label(f: &mut [u8], label: u32) {
    if let Some(l) = layout(f).filter(|l| l.ethertype == 0x86dd && f.len() >= l.l3 + 4) {
        let b = (label & 0xf_ffff).to_be_bytes();
        f[l.l3 + 1] = (f[l.l3 + 1] & 0xf0) | b[1];
        f[l.l3 + 2..l.l3 + 4].copy_from_slice(&b[2..4]);
    }
}

fn pcp(f: &[u8]) -> Option<u8> {
    layout(f)?.outer_tci.map(|at| f[at] >> 5)
}

/// RFC 1071 over `bytes`, written out here rather than borrowed from qosgw.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| (u32::from(c[0]) << 8) | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 header's byte range, when the frame is IPv4 and holds the whole header.
fn ipv4_header(f: &[u8]) -> Option<std::ops::Range<usize>> {
    let l = layout(f)?;
    if l.ethertype != 0x0800 || f.len() < l.l3 + 20 {
        return None;
    }
    let ihl = usize::from(f[l.l3] & 0x0f) * 4;
    (ihl >= 20 && f.len() >= l.l3 + ihl).then_some(l.l3..l.l3 + ihl)
}

fn ipv4_checksum_ok(f: &[u8]) -> bool {
    ipv4_header(f).is_some_and(|h| internet_checksum(&f[h]) == 0)
}

fn fix_ipv4_checksum(f: &mut [u8]) {
    let h = ipv4_header(f).expect("an IPv4 header");
    f[h.start + 10..h.start + 12].fill(0);
    let c = internet_checksum(&f[h.clone()]);
    f[h.start + 10..h.start + 12].copy_from_slice(&c.to_be_bytes());
}

/// The frame with every byte marking may change blanked (traffic class, IPv4 header
/// checksum, outer PCP): what identifies an output frame's input frame.
fn masked(f: &[u8]) -> Vec<u8> {
    let mut m = f.to_vec();
    if let Some(l) = layout(f) {
        if let Some(at) = l.outer_tci {
            m[at] &= 0x1f;
        }
        if tos(f).is_some() {
            set_tos(&mut m, 0);
        }
        if l.ethertype == 0x0800 && f.len() >= l.l3 + 12 {
            m[l.l3 + 10..l.l3 + 12].fill(0);
        }
    }
    m
}

/// The oracle: the output frame qosgw must send for `input` when `winner` wins.
fn expected_output(input: &[u8], winner: Option<&Policy>) -> Vec<u8> {
    let mut out = input.to_vec();
    let Some(p) = winner else { return out };
    if let Some(dscp) = p.dscp {
        let ecn = tos(input).expect("a marked frame is IP") & 0x03;
        set_tos(&mut out, (dscp << 2) | ecn);
        if ipv4_header(input).is_some() {
            fix_ipv4_checksum(&mut out);
        }
    }
    if let (Some(c), Some(at)) = (p.pcp, layout(input).and_then(|l| l.outer_tci)) {
        out[at] = (out[at] & 0x1f) | (c << 5);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Test frames
// ---------------------------------------------------------------------------------------

/// One input frame and what the test expects of it.
#[derive(Clone)]
struct Case {
    /// What the frame is, for failure messages.
    what: String,
    /// Frames with the same label must leave in their input order (one flow of SPEC §5).
    flow: String,
    bytes: Vec<u8>,
    /// The policy expected to win, or none (the frame leaves byte for byte).
    winner: Option<&'static str>,
}

/// Makes frames distinct and varied: each gets a serial number carried in its payload
/// (and IPv4 ID), an original DSCP, and the next of the four ECN values in turn.
#[derive(Default)]
struct Gen {
    serial: u32,
    /// Which pass over the cases this is: fragment IDs and the otherwise fixed frames
    /// differ per round.
    round: u8,
}

impl Gen {
    fn next(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    fn tos(serial: u32) -> u8 {
        ((((serial * 13) % 64) << 2) | (serial % 4)) as u8
    }

    fn payload(serial: u32, extra: usize) -> Vec<u8> {
        let mut d = serial.to_be_bytes().to_vec();
        d.extend((0..extra).map(|i| (i * 7) as u8));
        d
    }

    /// `n` frames of one flow built from `base`, all expected to go to `winner`.
    fn flow_of(
        &mut self,
        n: usize,
        what: &str,
        winner: Option<&'static str>,
        base: Packet,
    ) -> Vec<Case> {
        (0..n)
            .map(|k| {
                let s = self.next();
                let mut bytes = base
                    .clone()
                    .tos(Gen::tos(s))
                    .ip_id(s as u16)
                    .data(&Gen::payload(s, 20 + k))
                    .build();
                set_flow_label(&mut bytes, 0xabcde ^ s);
                Case {
                    what: format!("{what} #{k}"),
                    flow: what.to_owned(),
                    bytes,
                    winner,
                }
            })
            .collect()
    }

    /// Four frames of one flow, covering all four ECN values.
    fn flow(&mut self, what: &str, winner: Option<&'static str>, base: Packet) -> Vec<Case> {
        self.flow_of(4, what, winner, base)
    }

    /// An IPv4 fragment of datagram `id`: the first (carrying the transport header of
    /// `l4`) when `offset8` is 0, else a non-first fragment whose data begins with bytes
    /// that would read as ports 4000 → 9000 if a parser wrongly took them for a header.
    #[allow(clippy::too_many_arguments)]
    fn v4_fragment(
        &mut self,
        src: &str,
        dst: &str,
        l4: L4,
        id: u16,
        offset8: u16,
        more: bool,
        flow: &str,
        winner: Option<&'static str>,
    ) -> Case {
        let s = self.next();
        let id = id + u16::from(self.round) * 0x100;
        let (base, data) = if offset8 == 0 {
            // A first fragment of 8 + 40 or 20 + 44 bytes: a multiple of 8.
            let extra = if matches!(l4, L4::Tcp { .. }) { 40 } else { 36 };
            (Packet::new(ip(src), ip(dst), l4), Gen::payload(s, extra))
        } else {
            // 24 bytes: 3 units of 8.
            let protocol = l4.protocol(false);
            let mut d = vec![0x0f, 0xa0, 0x23, 0x28];
            d.extend(Gen::payload(s, 16));
            (Packet::new(ip(src), ip(dst), L4::Other(protocol)), d)
        };
        let mut f = base.tos(Gen::tos(s)).ip_id(id).data(&data).build();
        let h = ipv4_header(&f).unwrap();
        let field = if more { 0x2000 } else { 0 } | offset8;
        f[h.start + 6..h.start + 8].copy_from_slice(&field.to_be_bytes());
        fix_ipv4_checksum(&mut f);
        Case {
            what: format!("IPv4 fragment id {id:#x} offset {offset8} more {more} of {flow}"),
            flow: flow.to_owned(),
            bytes: f,
            winner,
        }
    }

    /// An IPv6 fragment (a hop-by-hop header, then the fragment header) of datagram `id`;
    /// non-first ones begin with bytes that would read as ports 4000 → 53.
    #[allow(clippy::too_many_arguments)]
    fn v6_fragment(
        &mut self,
        src: &str,
        dst: &str,
        l4: L4,
        id: u32,
        offset8: u16,
        more: bool,
        flow: &str,
        winner: Option<&'static str>,
    ) -> Case {
        self.v6_fragment_with(&[], src, dst, l4, id, offset8, more, flow, winner)
    }

    /// As `v6_fragment`, with the extension headers `upper` (by number) after the
    /// fragment header, in the fragmentable part: in the first fragment they come before
    /// the transport header, and the fragment header of every fragment names the first.
    #[allow(clippy::too_many_arguments)]
    fn v6_fragment_with(
        &mut self,
        upper: &[u8],
        src: &str,
        dst: &str,
        l4: L4,
        id: u32,
        offset8: u16,
        more: bool,
        flow: &str,
        winner: Option<&'static str>,
    ) -> Case {
        let s = self.next();
        let id = id + u32::from(self.round) * 0x100;
        let mut ext = vec![0, 44];
        let (base, data) = if offset8 == 0 {
            ext.extend_from_slice(upper);
            (Packet::new(ip(src), ip(dst), l4), Gen::payload(s, 36))
        } else {
            let protocol = upper.first().copied().unwrap_or(l4.protocol(true));
            let mut d = vec![0x0f, 0xa0, 0x00, 0x35];
            d.extend(Gen::payload(s, 16));
            (Packet::new(ip(src), ip(dst), L4::Other(protocol)), d)
        };
        let mut f = base.tos(Gen::tos(s)).ipv6_ext(&ext).data(&data).build();
        set_flow_label(&mut f, id);
        let l = layout(&f).unwrap();
        let frag = l.l3 + 40 + 8;
        assert_eq!(
            f[l.l3 + 40],
            44,
            "hop-by-hop is followed by a fragment header"
        );
        let field = (offset8 << 3) | u16::from(more);
        f[frag + 2..frag + 4].copy_from_slice(&field.to_be_bytes());
        f[frag + 4..frag + 8].copy_from_slice(&id.to_be_bytes());
        Case {
            what: format!("IPv6 fragment id {id:#x} offset {offset8} more {more} of {flow}"),
            flow: flow.to_owned(),
            bytes: f,
            winner,
        }
    }
}

fn udp(src: u16, dst: u16) -> L4 {
    L4::Udp { src, dst }
}

fn tcp(src: u16, dst: u16) -> L4 {
    L4::Tcp {
        src,
        dst,
        flags: TCP_ACK,
    }
}

fn pkt(src: &str, dst: &str, l4: L4) -> Packet {
    Packet::new(ip(src), ip(dst), l4)
}

/// Sets the outer tag's PCP and DEI of a tagged frame (synth leaves them 0), so the test
/// sees that only the PCP is rewritten.
fn with_outer_pcp_dei(mut cases: Vec<Case>, pcp: u8) -> Vec<Case> {
    for c in &mut cases {
        let at = layout(&c.bytes).unwrap().outer_tci.unwrap();
        c.bytes[at] |= (pcp << 5) | 0x10;
    }
    cases
}

/// Sets the inner tag's PCP of a QinQ frame, which marking must leave alone.
fn with_inner_pcp(mut cases: Vec<Case>, pcp: u8) -> Vec<Case> {
    for c in &mut cases {
        c.bytes[18] |= pcp << 5;
    }
    cases
}

fn single(what: &str, bytes: Vec<u8>) -> Vec<Case> {
    vec![Case {
        what: what.to_owned(),
        flow: what.to_owned(),
        bytes,
        winner: None,
    }]
}

/// The precedence cases: sequences of frames (each sequence's order is kept in the
/// capture; sequences are interleaved).
fn precedence_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    vec![
        g.flow(
            "tcp to 10.1.1.7: /32 beats /24",
            Some("host32"),
            pkt("192.168.0.1", "10.1.1.7", tcp(40000, 80)),
        ),
        g.flow(
            "tcp to 10.1.1.8: only the /24",
            Some("net24"),
            pkt("192.168.0.1", "10.1.1.8", tcp(40000, 80)),
        ),
        g.flow(
            "udp to 10.1.1.7: two conditions beat a longer prefix",
            Some("net24-udp"),
            pkt("192.168.0.1", "10.1.1.7", udp(40000, 53)),
        ),
        g.flow(
            "udp to 10.1.1.9",
            Some("net24-udp"),
            pkt("192.168.0.1", "10.1.1.9", udp(40001, 53)),
        ),
        g.flow(
            "tcp 10.2.3.4 -> 10.3.0.1:80: precedence 200 beats four conditions",
            Some("broad-high"),
            pkt("10.2.3.4", "10.3.0.1", tcp(40000, 80)),
        ),
        g.flow(
            "tcp 10.2.4.4 -> 10.3.0.1:80: outside the precedence-200 /24",
            Some("narrow-default"),
            pkt("10.2.4.4", "10.3.0.1", tcp(40000, 80)),
        ),
        g.flow(
            "tcp 10.4.1.9 -> 10.3.0.1:80: a precedence-50 policy alone still wins",
            Some("narrow-low"),
            pkt("10.4.1.9", "10.3.0.1", tcp(40000, 80)),
        ),
        g.flow(
            "tcp 10.4.0.9 -> 10.3.0.1:80: precedence 50 loses to one condition",
            Some("broad-default"),
            pkt("10.4.0.9", "10.3.0.1", tcp(40000, 80)),
        ),
        g.flow(
            "udp to 10.5.0.1:5505: narrower range",
            Some("range-narrow"),
            pkt("192.168.0.1", "10.5.0.1", udp(40000, 5505)),
        ),
        g.flow(
            "udp to 10.5.0.1:5100: wide range only",
            Some("range-wide"),
            pkt("192.168.0.1", "10.5.0.1", udp(40000, 5100)),
        ),
        g.flow(
            "udp to 10.5.0.1:6000: no range",
            None,
            pkt("192.168.0.1", "10.5.0.1", udp(40000, 6000)),
        ),
        g.flow(
            "udp 7000 -> 10.6.0.1:7001: src_port heavier than dst_port",
            Some("by-src-port"),
            pkt("192.168.0.1", "10.6.0.1", udp(7000, 7001)),
        ),
        g.flow(
            "udp 7002 -> 10.6.0.1:7001",
            Some("by-dst-port"),
            pkt("192.168.0.1", "10.6.0.1", udp(7002, 7001)),
        ),
        g.flow(
            "tcp to 10.7.0.1: a tie goes to the earlier policy",
            Some("tie-first"),
            pkt("192.168.0.1", "10.7.0.1", tcp(40000, 22)),
        ),
        g.flow(
            "udp to 10.8.0.1: inbound-only never matches replay",
            Some("outbound-udp"),
            pkt("192.168.0.1", "10.8.0.1", udp(40000, 1234)),
        ),
        g.flow(
            "tcp to 10.8.0.1: only the inbound policy would match",
            None,
            pkt("192.168.0.1", "10.8.0.1", tcp(40000, 1234)),
        ),
        g.flow(
            "tcp to 10.9.0.1: direction both",
            Some("both-ways"),
            pkt("192.168.0.1", "10.9.0.1", tcp(40000, 1234)),
        ),
        g.flow(
            "unmatched IPv4 udp",
            None,
            pkt("192.0.2.1", "198.51.100.1", udp(5004, 5004)),
        ),
        g.flow(
            "unmatched IPv4 tcp",
            None,
            pkt("192.0.2.1", "198.51.100.1", tcp(40000, 443)),
        ),
        g.flow(
            "unmatched IPv6 udp",
            None,
            pkt("2001:db8:2::1", "2001:db8:2::2", udp(5004, 5004)),
        ),
    ]
}

/// IPv4 options, IPv6 extension headers, VLAN, QinQ, 802.1p, protocols.
fn encapsulation_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    // Record route (8 bytes) then NOPs; and 40 bytes of options, the most IPv4 allows.
    let rr = [7, 7, 4, 0, 0, 0, 0, 1];
    let mut max_opts = vec![7, 39, 4];
    max_opts.resize(39, 0);
    max_opts.push(0); // end of options list
    vec![
        g.flow(
            "udp with record-route option to 10.5.0.1:5505",
            Some("range-narrow"),
            pkt("192.168.0.1", "10.5.0.1", udp(40002, 5505)).ipv4_options(&rr),
        ),
        g.flow(
            "udp with 40 bytes of options 7000 -> 10.6.0.1:7001",
            Some("by-src-port"),
            pkt("192.168.0.2", "10.6.0.1", udp(7000, 7001)).ipv4_options(&max_opts),
        ),
        g.flow(
            "IPv6 hop-by-hop, routing, dst-opts, udp to [2001:db8:1::5]:53",
            Some("v6-dns"),
            pkt("2001:db8:9::1", "2001:db8:1::5", udp(40000, 53)).ipv6_ext(&[0, 43, 60]),
        ),
        g.flow(
            "IPv6 hop-by-hop, tcp to [2001:db8:1::5]:53",
            Some("v6-net"),
            pkt("2001:db8:9::1", "2001:db8:1::5", tcp(40000, 53)).ipv6_ext(&[0]),
        ),
        g.flow(
            "IPv6 hop-by-hop, AH, udp to [2001:db8:1::5]:53: AH is walked",
            Some("v6-dns"),
            pkt("2001:db8:9::1", "2001:db8:1::5", udp(40001, 53)).ipv6_ext(&[0, 51]),
        ),
        g.flow(
            "IPv6 AH, tcp to [2001:db8:1::5]:53",
            Some("v6-net"),
            pkt("2001:db8:9::1", "2001:db8:1::5", tcp(40001, 53)).ipv6_ext(&[51]),
        ),
        g.flow(
            "IPv6 udp to [2001:db8:1::6]:53",
            Some("v6-net"),
            pkt("2001:db8:9::1", "2001:db8:1::6", udp(40000, 53)),
        ),
        with_outer_pcp_dei(
            g.flow(
                "VLAN 42 udp to 10.20.0.1",
                Some("vlan42"),
                pkt("192.168.0.1", "10.20.0.1", udp(40000, 1000)).vlans(&[42]),
            ),
            1,
        ),
        with_inner_pcp(
            g.flow(
                "QinQ 42/7 IPv6 tcp",
                Some("vlan42"),
                pkt("2001:db8:9::1", "2001:db8:2::1", tcp(40000, 1000)).vlans(&[42, 7]),
            ),
            4,
        ),
        g.flow(
            "QinQ 7/42 udp to 10.20.0.1: the inner tag is not the VLAN",
            None,
            pkt("192.168.0.1", "10.20.0.1", udp(40000, 1000)).vlans(&[7, 42]),
        ),
        g.flow(
            "VLAN 42 tcp to 10.1.1.7: dst_prefix heavier than vlan",
            Some("host32"),
            pkt("192.168.0.1", "10.1.1.7", tcp(40001, 80)).vlans(&[42]),
        ),
        with_outer_pcp_dei(
            g.flow(
                "VLAN 42 udp to 10.21.0.1: PCP only",
                Some("pcp-only"),
                pkt("192.168.0.1", "10.21.0.1", udp(40000, 1000)).vlans(&[42]),
            ),
            7,
        ),
        g.flow(
            "untagged udp to 10.21.0.1: PCP-only policy, stays untagged and unchanged",
            Some("pcp-only"),
            pkt("192.168.0.1", "10.21.0.1", udp(40001, 1000)),
        ),
        g.flow(
            "untagged udp to 10.22.0.1: DSCP, and no tag added",
            Some("mark-and-pcp"),
            pkt("192.168.0.1", "10.22.0.1", udp(40000, 1000)),
        ),
        g.flow(
            "VLAN 9 udp to 10.22.0.1",
            Some("mark-and-pcp"),
            pkt("192.168.0.1", "10.22.0.1", udp(40001, 1000)).vlans(&[9]),
        ),
        with_inner_pcp(
            g.flow(
                "QinQ 9/42 IPv4 options tcp to 10.22.0.1",
                Some("mark-and-pcp"),
                pkt("192.168.0.1", "10.22.0.1", tcp(40000, 1000))
                    .vlans(&[9, 42])
                    .ipv4_options(&rr),
            ),
            2,
        ),
        g.flow(
            "ESP to 10.30.0.1",
            Some("esp"),
            pkt("192.168.0.1", "10.30.0.1", L4::Other(proto::ESP)),
        ),
        g.flow(
            "ICMP echo to 10.30.0.1",
            Some("icmp"),
            pkt("192.168.0.1", "10.30.0.1", L4::Echo),
        ),
        g.flow(
            "GRE to 10.30.0.1",
            Some("gre"),
            pkt("192.168.0.1", "10.30.0.1", L4::Other(proto::GRE)),
        ),
        g.flow(
            "AH to 10.30.0.1",
            Some("ah"),
            pkt("192.168.0.1", "10.30.0.1", L4::Other(proto::AH)),
        ),
        g.flow(
            "tcp to 10.30.0.1",
            Some("net30"),
            pkt("192.168.0.1", "10.30.0.1", tcp(40000, 443)),
        ),
        g.flow(
            "ESP to 10.99.0.1",
            None,
            pkt("192.168.0.1", "10.99.0.1", L4::Other(proto::ESP)),
        ),
        g.flow(
            "VLAN 42 ESP with options",
            Some("vlan42"),
            pkt("192.168.0.1", "10.99.0.1", L4::Other(proto::ESP))
                .vlans(&[42])
                .ipv4_options(&rr),
        ),
        g.flow(
            "ICMPv6 echo to 2001:db8:30::1",
            Some("icmpv6"),
            pkt("2001:db8:9::1", "2001:db8:30::1", L4::Echo),
        ),
        g.flow(
            "udp to [2001:db8:30::1]",
            None,
            pkt("2001:db8:9::1", "2001:db8:30::1", udp(40000, 1000)),
        ),
        g.flow(
            "SCTP to 10.31.0.1:2905",
            Some("sctp-port"),
            pkt("192.168.0.1", "10.31.0.1", L4::Sctp { src: 1, dst: 2905 }),
        ),
        g.flow(
            "SCTP to 10.31.0.1:2906",
            None,
            pkt("192.168.0.1", "10.31.0.1", L4::Sctp { src: 1, dst: 2906 }),
        ),
    ]
}

/// Frames whose IPv4 header checksum is 0x0000 before or after marking, where an
/// incremental update (RFC 1624) goes wrong if done by RFC 1141's equation.
fn checksum_edge_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    let policy = find(POLICIES, "range-narrow");
    let what = "udp 40009 -> 10.5.0.1:5505, checksum edge";
    let mut frames = Vec::new();
    for (k, after) in [(0, true), (1, false)] {
        let s = g.next();
        let tos = Gen::tos(s);
        let hit = (0..=u16::MAX).find_map(|id| {
            let f = pkt("192.168.0.1", "10.5.0.1", udp(40009, 5505))
                .tos(tos)
                .ip_id(id)
                .data(&Gen::payload(s, 20))
                .build();
            let checked = if after {
                expected_output(&f, Some(policy))
            } else {
                f.clone()
            };
            (be16(&checked, 24) == 0).then_some(f)
        });
        let when = if after { "after" } else { "before" };
        frames.push(Case {
            what: format!("{what}: 0x0000 {when} marking #{k}"),
            flow: what.to_owned(),
            bytes: hit.expect("some IP ID gives a zero checksum"),
            winner: Some("range-narrow"),
        });
    }
    vec![frames]
}

/// The other tag layouts: a single 802.1ad tag, and two 802.1Q tags (old-style QinQ).
fn tpid_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    let mut ad = g.flow(
        "802.1ad single tag 42 udp to 10.20.0.2",
        Some("vlan42"),
        pkt("192.168.0.1", "10.20.0.2", udp(40000, 1000)).vlans(&[42]),
    );
    for c in &mut ad {
        c.bytes[12..14].copy_from_slice(&[0x88, 0xa8]);
    }
    let mut qq = g.flow(
        "802.1Q/802.1Q tags 42/5 udp to 10.22.0.2",
        Some("mark-and-pcp"),
        pkt("192.168.0.1", "10.22.0.2", udp(40000, 1000)).vlans(&[42, 5]),
    );
    for c in &mut qq {
        c.bytes[12..14].copy_from_slice(&[0x81, 0x00]);
    }
    vec![with_outer_pcp_dei(ad, 2), with_inner_pcp(qq, 1)]
}

/// IPv4 fragments whose first fragment comes first: the non-first ones follow it, also
/// into port-conditioned policies.
fn fragment_in_order_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    let a = "udp 10.39.0.1:4000 -> 10.40.0.1:9000";
    let a_rest = "non-first fragments udp 10.39.0.1 -> 10.40.0.1";
    let d = "tcp 10.39.0.1:4001 -> 10.43.0.1:9100";
    let d_rest = "non-first fragments tcp 10.39.0.1 -> 10.43.0.1";
    let e = "udp 10.39.0.2:4000 -> 10.40.0.1:9001";
    let e_rest = "non-first fragments udp 10.39.0.2 -> 10.40.0.1";
    let (s, dst40, dst43) = ("10.39.0.1", "10.40.0.1", "10.43.0.1");
    vec![
        vec![
            g.v4_fragment(
                s,
                dst40,
                udp(4000, 9000),
                0xa001,
                0,
                true,
                a,
                Some("frag-port"),
            ),
            g.v4_fragment(
                s,
                dst40,
                udp(4000, 9000),
                0xa001,
                6,
                true,
                a_rest,
                Some("frag-port"),
            ),
            g.v4_fragment(
                s,
                dst40,
                udp(4000, 9000),
                0xa001,
                9,
                false,
                a_rest,
                Some("frag-port"),
            ),
        ],
        vec![
            g.v4_fragment(
                s,
                dst43,
                tcp(4001, 9100),
                0xa004,
                0,
                true,
                d,
                Some("frag-noproto-port"),
            ),
            g.v4_fragment(
                s,
                dst43,
                tcp(4001, 9100),
                0xa004,
                8,
                true,
                d_rest,
                Some("frag-noproto-port"),
            ),
            g.v4_fragment(
                s,
                dst43,
                tcp(4001, 9100),
                0xa004,
                11,
                false,
                d_rest,
                Some("frag-noproto-port"),
            ),
        ],
        vec![
            g.v4_fragment(
                "10.39.0.2",
                dst40,
                udp(4000, 9001),
                0xa005,
                0,
                true,
                e,
                Some("frag-addr"),
            ),
            g.v4_fragment(
                "10.39.0.2",
                dst40,
                udp(4000, 9001),
                0xa005,
                6,
                false,
                e_rest,
                Some("frag-addr"),
            ),
        ],
    ]
}

/// Jumbo frames of 9216 bytes with one and two VLAN tags on top (9220 and 9224 bytes): each
/// is whole in one mbuf, so it is parsed and marked (it arrived as a chain, counted as
/// oversized and left unmarked, until replay's mbufs made room for the tags).
fn tagged_jumbo_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    [&[42][..], &[42, 7]]
        .iter()
        .map(|tags| {
            let s = g.next();
            let what = format!("jumbo udp to 10.20.0.1 under VLAN tags {tags:?}");
            let bytes = pkt("192.168.0.9", "10.20.0.1", udp(40009, 1000))
                .vlans(tags)
                .tos(Gen::tos(s))
                .ip_id(s as u16)
                .payload(9216 - 14 - 20 - 8)
                .build();
            assert_eq!(bytes.len(), 9216 + 4 * tags.len());
            vec![Case {
                what: what.clone(),
                flow: what,
                bytes,
                winner: Some("vlan42"),
            }]
        })
        .collect()
}

/// Many datagrams in flight at once: the interleave puts every first fragment before any
/// second one, so 300 datagrams wait for their second fragments, each of which must still
/// find its datagram's result. (A direct-mapped table of 4 096 slots lost one or two of 64
/// datagrams in flight to hash collisions, in 9 of 20 runs.)
fn fragments_in_flight_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    (0..300u16)
        .map(|i| {
            let src = format!("10.39.{}.{}", 2 + i / 250, 1 + i % 250);
            let first = format!("udp {src}:4000 -> 10.40.0.1:9000");
            let rest = format!("non-first fragments udp {src} -> 10.40.0.1");
            let id = 0xb000 + i;
            let port = Some("frag-port");
            vec![
                g.v4_fragment(
                    &src,
                    "10.40.0.1",
                    udp(4000, 9000),
                    id,
                    0,
                    true,
                    &first,
                    port,
                ),
                g.v4_fragment(
                    &src,
                    "10.40.0.1",
                    udp(4000, 9000),
                    id,
                    6,
                    false,
                    &rest,
                    port,
                ),
            ]
        })
        .collect()
}

/// Non-first fragments arriving before their first fragment: classified with ports
/// unknown (a port policy cannot match, an address-only one can); those after the first
/// fragment follow it.
fn fragment_out_of_order_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    let b = "udp 10.39.0.3:4000 -> 10.40.0.1:9000";
    let b_rest = "non-first fragments udp 10.39.0.3 -> 10.40.0.1";
    let c = "udp 10.39.0.1:4000 -> 10.42.0.1:9000";
    let c_rest = "non-first fragments udp 10.39.0.1 -> 10.42.0.1";
    let (s, dst40, dst42) = ("10.39.0.3", "10.40.0.1", "10.42.0.1");
    vec![
        vec![
            g.v4_fragment(
                s,
                dst40,
                udp(4000, 9000),
                0xa002,
                6,
                true,
                b_rest,
                Some("frag-addr"),
            ),
            g.v4_fragment(
                s,
                dst40,
                udp(4000, 9000),
                0xa002,
                0,
                true,
                b,
                Some("frag-port"),
            ),
            g.v4_fragment(
                s,
                dst40,
                udp(4000, 9000),
                0xa002,
                9,
                false,
                b_rest,
                Some("frag-port"),
            ),
        ],
        vec![
            g.v4_fragment(
                "10.39.0.1",
                dst42,
                udp(4000, 9000),
                0xa003,
                6,
                true,
                c_rest,
                None,
            ),
            g.v4_fragment(
                "10.39.0.1",
                dst42,
                udp(4000, 9000),
                0xa003,
                0,
                true,
                c,
                Some("frag-port-only"),
            ),
            g.v4_fragment(
                "10.39.0.1",
                dst42,
                udp(4000, 9000),
                0xa003,
                9,
                false,
                c_rest,
                Some("frag-port-only"),
            ),
        ],
    ]
}

/// IPv6 fragments (a fragment header after hop-by-hop), in order and out of order.
fn v6_fragment_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    let (s, s2, d) = ("2001:db8:9::1", "2001:db8:9::2", "2001:db8:1::5");
    let f = "udp [2001:db8:9::1]:4000 -> [2001:db8:1::5]:53";
    let f_rest = "non-first fragments udp 2001:db8:9::1 -> 2001:db8:1::5";
    let h = "udp [2001:db8:9::2]:4000 -> [2001:db8:1::5]:53";
    let h_rest = "non-first fragments udp 2001:db8:9::2 -> 2001:db8:1::5";
    vec![
        vec![
            g.v6_fragment(s, d, udp(4000, 53), 0xb001, 0, true, f, Some("v6-dns")),
            g.v6_fragment(
                s,
                d,
                udp(4000, 53),
                0xb001,
                6,
                false,
                f_rest,
                Some("v6-dns"),
            ),
        ],
        vec![
            g.v6_fragment(
                s2,
                d,
                udp(4000, 53),
                0xb002,
                6,
                false,
                h_rest,
                Some("v6-net"),
            ),
            g.v6_fragment(s2, d, udp(4000, 53), 0xb002, 0, true, h, Some("v6-dns")),
        ],
    ]
}

/// Non-IP and malformed frames: all leave byte for byte, even where a policy would match
/// the addresses.
fn pass_through_sequences(g: &mut Gen) -> Vec<Vec<Case>> {
    let r = g.round;
    let mut v = vec![
        single("ARP", arp_request([10, 0, r, 1], [10, 0, 0, 2])),
        single("ARP on VLAN 42", {
            let mut f = arp_request([10, 0, r, 3], [10, 0, 0, 4]);
            f.splice(12..12, [0x81, 0x00, 0x00, 42]);
            f
        }),
        single("LLDP", {
            let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc];
            f.resize(60, 0x5a ^ r);
            f
        }),
        single("runt", vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, r, 8]),
        single("VLAN 42 tag and nothing after it", {
            vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, r, 0x81, 0, 0, 42, 8, 0]
        }),
    ];
    let mut cut = |what: &str, base: Packet, edit: &dyn Fn(&mut Vec<u8>)| {
        let s = g.next();
        let mut f = base
            .tos(Gen::tos(s))
            .ip_id(s as u16)
            .data(&Gen::payload(s, 60))
            .build();
        if be16(&f, 12) == 0x86dd {
            f[17] = s as u8; // the flow label: distinct even when cut short
        }
        edit(&mut f);
        single(what, f)
    };
    v.push(cut(
        "IPv4 to 10.1.1.7 cut short of its total length",
        pkt("192.168.0.1", "10.1.1.7", udp(1, 2)),
        &|f| f.truncate(40),
    ));
    v.push(cut(
        "IPv4 to 10.1.1.7 with total length beyond the frame",
        pkt("192.168.0.1", "10.1.1.7", udp(1, 3)),
        &|f| {
            let tl = be16(f, 16) + 100;
            f[16..18].copy_from_slice(&tl.to_be_bytes());
            fix_ipv4_checksum(f);
        },
    ));
    v.push(cut(
        "IPv4 to 10.1.1.7 with IHL 4",
        pkt("192.168.0.1", "10.1.1.7", udp(1, 4)),
        &|f| f[14] = 0x44,
    ));
    v.push(cut(
        "IPv4 tcp to 10.3.0.1:80 whose header the total length cuts",
        pkt("10.2.3.4", "10.3.0.1", tcp(1, 80)),
        &|f| {
            f[16..18].copy_from_slice(&30u16.to_be_bytes());
            fix_ipv4_checksum(f);
        },
    ));
    v.push(cut(
        "VLAN 42 IPv4 cut inside its header",
        pkt("192.168.0.1", "10.20.0.1", udp(1, 5)).vlans(&[42]),
        &|f| f.truncate(18 + 15),
    ));
    v.push(cut(
        "IPv6 to 2001:db8:1::5 cut inside its header",
        pkt("2001:db8:9::1", "2001:db8:1::5", udp(1, 53)),
        &|f| f.truncate(30),
    ));
    v.push(cut(
        "IPv6 to 2001:db8:1::5 with payload length beyond the frame",
        pkt("2001:db8:9::1", "2001:db8:1::5", udp(2, 53)),
        &|f| {
            let pl = be16(f, 18) + 64;
            f[18..20].copy_from_slice(&pl.to_be_bytes());
        },
    ));
    v.push(cut(
        "IPv6 hop-by-hop to 2001:db8:1::5 cut inside the extension header",
        pkt("2001:db8:9::1", "2001:db8:1::5", udp(3, 53)).ipv6_ext(&[0, 60]),
        &|f| f.truncate(14 + 40 + 12),
    ));
    v
}

/// Interleaves the sequences round-robin, keeping each one's order.
fn interleave(seqs: Vec<Vec<Case>>) -> Vec<Case> {
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for k in 0..longest {
        for s in &seqs {
            if let Some(c) = s.get(k) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// Two rounds of every case (fresh serials and datagram IDs the second time), so frames
/// of every kind sit at several burst positions, flows carry eight frames, and round 2
/// meets flows already in the cache.
fn all_cases() -> Vec<Case> {
    let mut g = Gen::default();
    let mut cases = Vec::new();
    for round in 0..2 {
        g.round = round;
        let mut seqs = precedence_sequences(&mut g);
        seqs.extend(encapsulation_sequences(&mut g));
        seqs.extend(fragment_in_order_sequences(&mut g));
        seqs.extend(fragment_out_of_order_sequences(&mut g));
        seqs.extend(fragments_in_flight_sequences(&mut g));
        seqs.extend(tagged_jumbo_sequences(&mut g));
        seqs.extend(v6_fragment_sequences(&mut g));
        seqs.extend(checksum_edge_sequences(&mut g));
        seqs.extend(tpid_sequences(&mut g));
        seqs.extend(pass_through_sequences(&mut g));
        let mut round_cases = interleave(seqs);
        for c in &mut round_cases {
            c.what = format!("{} (round {})", c.what, round + 1);
        }
        cases.extend(round_cases);
    }
    cases
}

// ---------------------------------------------------------------------------------------
// Running replay and checking its output against the oracle
// ---------------------------------------------------------------------------------------

/// Replays `cases` through `policies` with `workers` workers, then checks every output
/// frame against the oracle, and the summary's counts.
/// Replays `cases` with `policies` and `extra` arguments, checks every frame and the
/// summary against the oracle, and returns the output and the summary.
fn replay_and_check(
    dir: &Scratch,
    policies: &[Policy],
    cases: &[Case],
    extra: &[&str],
) -> (Vec<Record>, Value) {
    let (input, output, file) = (
        dir.path("in.pcap"),
        dir.path(&format!("out-{}.pcap", extra.join("_").replace('-', ""))),
        dir.path("policies.json"),
    );
    std::fs::write(&file, policy_file(policies)).unwrap();
    let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.bytes.clone()).collect();
    write_capture(&input, &frames);
    let out = replay(
        &input,
        &output,
        &[&["--policies", file.to_str().unwrap(), "--json"], extra].concat(),
    );
    assert_success(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let got = read_capture(&output);
    check_output(policies, cases, &got);
    check_summary(&summary, policies, cases);
    (got, summary)
}

/// The summary's counts agree with the oracle: every frame in and out, and each policy's
/// packet count is the number of frames the oracle gives it.
fn check_summary(summary: &Value, policies: &[Policy], cases: &[Case]) {
    assert_eq!(summary["rx_packets"], cases.len(), "rx_packets: {summary}");
    assert_eq!(summary["tx_packets"], cases.len(), "tx_packets: {summary}");
    let mut want: HashMap<&str, usize> = policies.iter().map(|p| (p.name, 0)).collect();
    for c in cases {
        if let Some(w) = c.winner {
            *want.get_mut(w).unwrap() += 1;
        }
    }
    let mut wrong = Vec::new();
    for p in summary["policies"].as_array().expect("policies array") {
        let name = p["name"].as_str().unwrap();
        if p["packets"] != want[name] {
            wrong.push(format!(
                "{name}: {} packets, expected {}",
                p["packets"], want[name]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "per-policy packet counts:\n{}",
        wrong.join("\n")
    );
}

/// Checks every output frame against the oracle, and that every input frame came out once,
/// in order within its flow. Collects every problem before failing, so one run shows them
/// all.
fn check_output(policies: &[Policy], cases: &[Case], got: &[Record]) {
    let mut by_mask: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, c) in cases.iter().enumerate() {
        if let Some(j) = by_mask.insert(masked(&c.bytes), i) {
            panic!(
                "test bug: input frames {j} ({}) and {i} ({}) are not distinguishable",
                cases[j].what, c.what
            );
        }
    }
    let mut problems = Vec::new();
    let mut seen = vec![false; cases.len()];
    let mut order = Vec::with_capacity(got.len());
    for (j, r) in got.iter().enumerate() {
        let out = &r.data;
        let Some(&i) = by_mask.get(&masked(out)) else {
            problems.push(format!(
                "output frame {j} ({} bytes) matches no input frame: {:02x?}",
                out.len(),
                &out[..out.len().min(64)]
            ));
            continue;
        };
        let c = &cases[i];
        if std::mem::replace(&mut seen[i], true) {
            problems.push(format!("input frame {i} ({}) came out twice", c.what));
        }
        order.push(i);
        let winner = c.winner.map(|w| find(policies, w));
        let want = expected_output(&c.bytes, winner);
        let what = format!(
            "frame {i} ({}; expected policy {})",
            c.what,
            c.winner.unwrap_or("none")
        );
        if r.orig_len as usize != out.len() {
            problems.push(format!(
                "{what}: wire length {} ≠ {}",
                r.orig_len,
                out.len()
            ));
        }
        if let (Some(tin), Some(tout), Some(twant)) = (tos(&c.bytes), tos(out), tos(&want)) {
            if tout >> 2 != twant >> 2 {
                problems.push(format!(
                    "{what}: DSCP {} (input {}), expected {}",
                    tout >> 2,
                    tin >> 2,
                    twant >> 2
                ));
            }
            if tout & 3 != tin & 3 {
                problems.push(format!("{what}: ECN {} ≠ input {}", tout & 3, tin & 3));
            }
        }
        if ipv4_checksum_ok(&c.bytes) && !ipv4_checksum_ok(out) {
            problems.push(format!("{what}: IPv4 header checksum invalid"));
        }
        if pcp(out) != pcp(&want) {
            problems.push(format!(
                "{what}: PCP {:?} (input {:?}), expected {:?}",
                pcp(out),
                pcp(&c.bytes),
                pcp(&want)
            ));
        }
        // Any valid checksum will do (0x0000 and 0xffff are both zero in one's complement):
        // compare the other bytes.
        let mut want = want;
        if let (Some(h), true) = (ipv4_header(&want), ipv4_checksum_ok(out)) {
            want[h.start + 10..h.start + 12].copy_from_slice(&out[h.start + 10..h.start + 12]);
        }
        if *out != want {
            let at = out.iter().zip(&want).position(|(a, b)| a != b);
            problems.push(format!(
                "{what}: bytes differ from the expected frame (first at {at:?}, lengths {} / {})\n  got  {:02x?}\n  want {:02x?}",
                out.len(),
                want.len(),
                &out[..out.len().min(64)],
                &want[..want.len().min(64)]
            ));
        }
    }
    if got.len() != cases.len() {
        problems.push(format!("{} frames out, {} in", got.len(), cases.len()));
    }
    for (i, c) in cases.iter().enumerate() {
        if !seen[i] {
            problems.push(format!("input frame {i} ({}) did not come out", c.what));
        }
    }
    // Within each flow, output order is input order.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for &i in &order {
        let flow = cases[i].flow.as_str();
        if let Some(&prev) = last.get(flow) {
            if prev > i {
                problems.push(format!(
                    "flow {flow:?}: frame {i} left before frame {prev} although it came after it"
                ));
            }
        }
        last.insert(flow, i);
    }
    let total = problems.len();
    problems.truncate(40);
    assert!(
        problems.is_empty(),
        "{total} problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_frame_is_marked_as_the_winning_policy_says() {
    let dir = Scratch::new("marking");
    let cases = all_cases();
    replay_and_check(&dir, POLICIES, &cases, &["--workers", "1"]);
}

#[test]
fn two_workers_mark_every_frame_like_one_and_keep_flow_order() {
    let dir = Scratch::new("marking-workers");
    let cases = all_cases();
    let one = replay_and_check(&dir, POLICIES, &cases, &["--workers", "1"]).0;
    let two = replay_and_check(&dir, POLICIES, &cases, &["--workers", "2"]).0;
    // And frame for frame the same bytes as one worker sent.
    let by_input = |got: &[Record]| -> HashMap<Vec<u8>, Vec<u8>> {
        got.iter()
            .map(|r| (masked(&r.data), r.data.clone()))
            .collect()
    };
    let (a, b) = (by_input(&one), by_input(&two));
    assert_eq!(a.len(), cases.len());
    for c in &cases {
        let k = masked(&c.bytes);
        assert!(a.get(&k) == b.get(&k), "{}: 1 and 2 workers differ", c.what);
    }
}

/// IPv6 fragments whose fragmentable part begins with a destination-options header, or
/// with AH: the first fragment walks it to the UDP ports; every fragment's fragment header
/// names that header (60 or 51) as the next. SPEC §5: a non-first fragment takes its
/// datagram's first fragment's result when that was seen. (The first fragment's key has
/// protocol 17, the others 60 or 51: the fragment table keys IPv6 datagrams without it.)
#[test]
fn ipv6_non_first_fragments_follow_a_first_fragment_with_destination_options_or_ah() {
    let dir = Scratch::new("marking-v6-frag-dstopts");
    let mut g = Gen::default();
    let (s, d) = ("2001:db8:9::7", "2001:db8:1::5");
    let mut cases = Vec::new();
    for (upper, ids) in [
        (60, [0xc001, 0xc002, 0xc003]),
        (51, [0xc004, 0xc005, 0xc006]),
    ] {
        let first = format!(
            "udp [2001:db8:9::7]:4000 -> [2001:db8:1::5]:53, header {upper} after the fragment header"
        );
        let rest = format!("non-first fragments 2001:db8:9::7 -> 2001:db8:1::5, header {upper}");
        let (first, rest) = (first.as_str(), rest.as_str());
        for id in ids {
            let l4 = udp(4000, 53);
            let winner = Some("v6-dns");
            cases.push(g.v6_fragment_with(&[upper], s, d, l4.clone(), id, 0, true, first, winner));
            cases.push(g.v6_fragment_with(&[upper], s, d, l4.clone(), id, 7, true, rest, winner));
            cases.push(g.v6_fragment_with(&[upper], s, d, l4, id, 10, false, rest, winner));
        }
    }
    replay_and_check(&dir, POLICIES, &cases, &["--workers", "1"]);
}

/// The oracle itself, without qosgw: it accepts the output it computes, rejects each kind
/// of wrong output, and the cases cover what they claim to.
#[test]
fn the_oracle_rejects_wrong_outputs_and_the_cases_cover_every_rule() {
    let cases = all_cases();
    let expected: Vec<Record> = cases
        .iter()
        .map(|c| {
            let data = expected_output(&c.bytes, c.winner.map(|w| find(POLICIES, w)));
            Record {
                ts_ns: 0,
                orig_len: data.len() as u32,
                data,
            }
        })
        .collect();
    check_output(POLICIES, &cases, &expected);

    let index = |what: &str| {
        cases
            .iter()
            .position(|c| c.what.starts_with(what))
            .unwrap_or_else(|| panic!("no case {what:?}"))
    };
    let rejects = |why: &str, edit: &dyn Fn(&mut Vec<Record>)| {
        let mut got = expected.clone();
        edit(&mut got);
        let r = std::panic::catch_unwind(|| check_output(POLICIES, &cases, &got));
        assert!(r.is_err(), "the oracle accepted {why}");
    };
    let marked_v4 = index("udp to 10.5.0.1:5505: narrower range #1");
    let marked_v6 = index("IPv6 hop-by-hop, routing, dst-opts");
    let unmatched = index("unmatched IPv4 udp #0");
    let qinq = index("QinQ 9/42 IPv4 options");
    rejects("a changed ECN", &|got| {
        let f = &mut got[marked_v4].data;
        let t = tos(f).unwrap();
        set_tos(f, t ^ 1);
        fix_ipv4_checksum(f);
    });
    rejects("a changed IPv6 ECN", &|got| {
        let f = &mut got[marked_v6].data;
        let t = tos(f).unwrap();
        set_tos(f, t ^ 2);
    });
    rejects("a stale IPv4 checksum", &|got| {
        got[marked_v4].data = cases[marked_v4].bytes.clone();
        let t = tos(&expected[marked_v4].data).unwrap();
        set_tos(&mut got[marked_v4].data, t);
    });
    rejects("a marked unmatched frame", &|got| {
        let f = &mut got[unmatched].data;
        set_tos(f, 46 << 2);
        fix_ipv4_checksum(f);
    });
    rejects("a rewritten inner PCP", &|got| got[qinq].data[18] ^= 0x20);
    rejects("a missing frame", &|got| {
        got.remove(unmatched);
    });
    rejects("a duplicated frame", &|got| {
        got.push(got[unmatched].clone())
    });
    rejects("two frames of one flow swapped", &|got| {
        let next = index("udp to 10.5.0.1:5505: narrower range #2");
        got.swap(marked_v4, next);
    });

    // Every policy that can win does, in IPv4 and IPv6 frames with every ECN value.
    let never = ["inbound-only", "tie-second"];
    for p in POLICIES {
        let n = cases.iter().filter(|c| c.winner == Some(p.name)).count();
        assert_eq!(
            n == 0,
            never.contains(&p.name),
            "cases won by {}: {n}",
            p.name
        );
    }
    for ethertype in [0x0800, 0x86dd] {
        let mut ecn = [false; 4];
        for c in cases.iter().filter(|c| c.winner.is_some()) {
            if layout(&c.bytes).is_some_and(|l| l.ethertype == ethertype) {
                ecn[usize::from(tos(&c.bytes).unwrap() & 3)] = true;
            }
        }
        assert_eq!(
            ecn, [true; 4],
            "ECN values of marked frames, {ethertype:#06x}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Flow-cache churn
// ---------------------------------------------------------------------------------------

const CHURN_POLICIES: &[Policy] = &[
    pol(
        "churn-low-ports",
        r#""dst_prefix": "10.61.0.0/16", "protocol": "udp", "dst_port": "1000-1999""#,
        2,
    ),
    pol("churn-src", r#""src_prefix": "10.60.0.0/17""#, 4),
    pol("churn-dst", r#""dst_prefix": "10.61.0.0/16""#, 6),
];

const CHURN_FLOWS: u32 = 50_000;

/// Flow `i` of the churn test: its frame in `round`, and the policy the oracle gives it
/// (three conditions beat one; for one condition, src_prefix is heavier than dst_prefix).
fn churn_case(i: u32, round: u32) -> Case {
    let src = format!("10.60.{}.{}", i / 256, i % 256);
    let dst = format!("10.61.{}.1", i % 7);
    let (sport, dport) = (20000 + (i % 1000) as u16, 1000 + ((i * 7919) % 4000) as u16);
    let winner = if (1000..=1999).contains(&dport) {
        "churn-low-ports"
    } else if i < 128 * 256 {
        "churn-src"
    } else {
        "churn-dst"
    };
    let s = i * 2 + round;
    let bytes = pkt(&src, &dst, udp(sport, dport))
        .tos(Gen::tos(s))
        .ip_id(round as u16)
        .data(&Gen::payload(s, 4))
        .build();
    Case {
        what: format!("churn flow {i} round {round}"),
        flow: format!("churn {i}"),
        bytes,
        winner: Some(winner),
    }
}

/// 50 000 distinct flows, each seen twice (all first packets, then all second ones): every
/// frame comes out, marked as its flow's policy says, in order within the flow.
///
/// `qosgw replay` has no flag for the flow-cache capacity (the default is 2^20 per
/// worker), so this does not yet force evictions; with a small cache the same test would.
#[test]
fn fifty_thousand_flows_churn_through_a_small_cache_and_all_come_out_marked() {
    let dir = Scratch::new("marking-churn");
    let cases: Vec<Case> = (0..2)
        .flat_map(|round| (0..CHURN_FLOWS).map(move |i| churn_case(i, round)))
        .collect();
    // Two rounds of 50 000 flows through a 5 000-flow cache: every packet is a new flow
    // (the first round's flows are gone before the second round comes), every one is
    // classified and marked, none is lost, and every insert past the capacity evicted one.
    let (_, summary) = replay_and_check(&dir, CHURN_POLICIES, &cases, &["--flow-capacity", "5000"]);
    let cache = &summary["flow_cache"];
    assert_eq!(cache["misses"], cases.len(), "{summary}");
    assert_eq!(cache["entries"], 5000, "{summary}");
    assert_eq!(cache["evictions"], cases.len() - 5000, "{summary}");
}
