//! Parser tests. Frames are built byte by byte in `testutil`, not with the views,
//! so the expectations are independent of the code under test.

use super::*;
use crate::wire::ethernet::ethertype::{ARP, IPV4, IPV6, QINQ, VLAN};
use crate::wire::ip::protocol::*;
use crate::wire::tcp::flags;
use crate::wire::testutil::{self, XorShift, V4, V6_DST, V6_SRC};

fn info(frame: &[u8]) -> PacketInfo {
    match parse(frame, false) {
        Parsed::Ip(info) => info,
        other => panic!("expected Ip, got {other:?} for {frame:02x?}"),
    }
}

fn malformed(frame: &[u8]) -> MalformedReason {
    match parse(frame, false) {
        Parsed::Malformed(reason) => reason,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

fn eth4(payload: &[u8]) -> Vec<u8> {
    testutil::ethernet(&[], IPV4, payload)
}

fn eth6(payload: &[u8]) -> Vec<u8> {
    testutil::ethernet(&[], IPV6, payload)
}

/// Every valid frame the tests build, for the truncation and mutation tests.
fn corpus() -> Vec<Vec<u8>> {
    let mut v4_opts = V4::new(UDP);
    v4_opts.options = vec![0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00];
    let mut v4_first = V4::new(TCP);
    v4_first.frag = (true, 0);
    let mut v4_next = V4::new(UDP);
    v4_next.frag = (false, 3);
    vec![
        eth4(&V4::new(TCP).build(&testutil::tcp(40000, 443, flags::SYN))),
        eth4(&v4_opts.build(&testutil::udp(5000, 5060, b"hello"))),
        eth4(&v4_first.build(&testutil::tcp(1, 2, flags::ACK))),
        eth4(&v4_next.build(&[0; 16])),
        eth4(&V4::new(SCTP).build(&testutil::sctp(2905, 2905))),
        eth4(&V4::new(ICMP).build(&testutil::icmp_echo())),
        eth4(&V4::new(ESP).build(&[0, 0, 1, 0, 0, 0, 0, 1, 0xaa, 0xbb])),
        eth6(&testutil::ipv6(0, UDP, &testutil::udp(53, 5353, b"x"))),
        eth6(&testutil::ipv6(
            0,
            HOPOPT,
            &testutil::ext(
                IPV6_ROUTE,
                0,
                &testutil::ext(
                    IPV6_FRAG,
                    1,
                    &testutil::frag(
                        IPV6_OPTS,
                        0,
                        true,
                        77,
                        &testutil::ext(TCP, 0, &testutil::tcp(5, 6, flags::FIN)),
                    ),
                ),
            ),
        )),
        eth6(&testutil::ipv6(
            0,
            IPV6_FRAG,
            &testutil::frag(UDP, 100, false, 9, &[1; 24]),
        )),
        eth6(&testutil::ipv6(
            0,
            AH,
            &testutil::ah(TCP, &testutil::tcp(7, 8, 0)),
        )),
        testutil::ethernet(
            &[(QINQ, 0x0064), (VLAN, 0x2005)],
            IPV4,
            &V4::new(UDP).build(&testutil::udp(1, 2, &[])),
        ),
        testutil::ethernet(
            &[(VLAN, 0x0fff)],
            IPV6,
            &testutil::ipv6(0, ICMPV6, &[128, 0, 0, 0]),
        ),
    ]
}

#[test]
fn flow_key_is_compact() {
    assert_eq!(core::mem::size_of::<FlowKey>(), 40);
}

#[test]
fn flow_key_words_round_trip() {
    let mut rng = XorShift::new(7);
    for _ in 0..1000 {
        let w = [rng.next(), rng.next(), rng.next(), rng.next(), rng.next()];
        let key = FlowKey::from_words(w);
        assert_eq!(key.words(), w);
        assert_eq!(key, FlowKey::from_words(key.words()));
    }
    let key = info(&eth4(&V4::new(6).build(&testutil::tcp(1234, 80, 0)))).key;
    // The words are the key's bytes in order, little-endian.
    assert_eq!(
        key.words()[0] as u32,
        u32::from_le_bytes(key.src[..4].try_into().unwrap())
    );
    assert_eq!(key.words()[4] as u16, 1234);
    assert_eq!((key.words()[4] >> 16) as u16, 80);
}

#[test]
fn ipv4_tcp() {
    let frame = eth4(&V4::new(TCP).build(&testutil::tcp(40000, 443, flags::SYN | flags::ACK)));
    let info = info(&frame);
    assert_eq!(
        info.key,
        FlowKey {
            src: v4_addr([10, 0, 0, 1]),
            dst: v4_addr([10, 20, 0, 2]),
            src_port: 40000,
            dst_port: 443,
            vlan: FlowKey::NO_VLAN,
            protocol: TCP,
            flags: 0,
        }
    );
    assert_eq!(info.l3_offset, 14);
    assert_eq!(info.l4_offset, Some(34));
    assert_eq!(info.outer_tag_offset, None);
    assert_eq!(info.fragment, Fragment::None);
    assert_eq!(info.tcp_flags, flags::SYN | flags::ACK);
    assert_eq!(info.key.src_addr().to_string(), "10.0.0.1");
    assert_eq!(info.key.dst_addr().to_string(), "10.20.0.2");
}

#[test]
fn direction_is_a_flag() {
    let frame = eth4(&V4::new(UDP).build(&testutil::udp(1, 2, &[])));
    let (out, inb) = match (parse(&frame, false), parse(&frame, true)) {
        (Parsed::Ip(a), Parsed::Ip(b)) => (a.key, b.key),
        other => panic!("{other:?}"),
    };
    assert!(!out.is_inbound());
    assert!(inb.is_inbound());
    assert_eq!(inb.flags, FlowKey::INBOUND);
    assert_ne!(out, inb);
}

#[test]
fn ipv4_options_are_skipped() {
    for words in 1..=10 {
        let mut v4 = V4::new(UDP);
        v4.options = vec![0x01; words * 4]; // NOPs
        let frame = eth4(&v4.build(&testutil::udp(5000, 5060, b"payload")));
        let info = info(&frame);
        assert_eq!((info.key.src_port, info.key.dst_port), (5000, 5060));
        assert_eq!(info.l4_offset, Some((34 + words * 4) as u16));
    }
}

#[test]
fn ethernet_padding_is_fine() {
    let mut frame = eth4(&V4::new(UDP).build(&testutil::udp(1, 2, &[])));
    assert_eq!(frame.len(), 42);
    frame.resize(60, 0);
    assert_eq!(info(&frame).key.dst_port, 2);
    let mut frame = eth6(&testutil::ipv6(0, NONXT_FOR_TEST, &[]));
    frame.resize(60, 0xee);
    assert_eq!(info(&frame).key.protocol, NONXT_FOR_TEST);
}

const NONXT_FOR_TEST: u8 = IPV6_NONXT;

#[test]
fn protocols_without_ports() {
    for (proto, l4) in [
        (ICMP, testutil::icmp_echo()),
        (ESP, vec![0, 0, 1, 0, 0, 0, 0, 1]),
        (GRE, vec![0, 0, 0x08, 0x00]),
        (AH, testutil::ah(TCP, &testutil::tcp(1, 2, 0))),
        (ICMPV6, vec![]), // ICMPv6 in IPv4 is odd but not ours to judge
        (253, vec![]),
    ] {
        let info = info(&eth4(&V4::new(proto).build(&l4)));
        assert_eq!(info.key.protocol, proto);
        assert_eq!((info.key.src_port, info.key.dst_port), (0, 0));
        assert!(!info.key.ports_unknown(), "ports are known to be absent");
        assert_eq!(info.tcp_flags, 0);
    }
    let info = info(&eth6(&testutil::ipv6(
        0,
        ICMPV6,
        &[128, 0, 0, 0, 0, 1, 0, 1],
    )));
    assert_eq!(info.key.protocol, ICMPV6);
    assert_eq!(
        (info.key.src_port, info.key.dst_port, info.key.flags),
        (0, 0, FlowKey::IPV6)
    );
}

#[test]
fn ipv4_and_ipv6_sctp() {
    let info4 = info(&eth4(&V4::new(SCTP).build(&testutil::sctp(2905, 3868))));
    assert_eq!(
        (info4.key.protocol, info4.key.src_port, info4.key.dst_port),
        (SCTP, 2905, 3868)
    );
    let info6 = info(&eth6(&testutil::ipv6(
        0,
        SCTP,
        &testutil::sctp(36412, 36412),
    )));
    assert_eq!((info6.key.protocol, info6.key.src_port), (SCTP, 36412));
}

#[test]
fn ipv6_udp() {
    let frame = eth6(&testutil::ipv6(0xb8, UDP, &testutil::udp(5353, 53, b"q")));
    let info = info(&frame);
    assert_eq!(info.key.src, V6_SRC);
    assert_eq!(info.key.dst, V6_DST);
    assert_eq!(
        (info.key.src_port, info.key.dst_port, info.key.protocol),
        (5353, 53, UDP)
    );
    assert_eq!(info.key.flags, FlowKey::IPV6);
    assert_eq!(info.l4_offset, Some(54));
    assert_eq!(info.key.src_addr().to_string(), "2001:db8::1");
}

#[test]
fn ipv6_each_extension_header() {
    for ext_type in [HOPOPT, IPV6_ROUTE, IPV6_OPTS] {
        for units in [0u8, 1, 3] {
            let frame = eth6(&testutil::ipv6(
                0,
                ext_type,
                &testutil::ext(TCP, units, &testutil::tcp(1000, 22, flags::PSH)),
            ));
            let info = info(&frame);
            assert_eq!(info.key.protocol, TCP);
            assert_eq!((info.key.src_port, info.key.dst_port), (1000, 22));
            assert_eq!(info.tcp_flags, flags::PSH);
            assert_eq!(info.l4_offset, Some(54 + (u16::from(units) + 1) * 8));
            assert_eq!(info.fragment, Fragment::None);
        }
    }
    // A chain of all of them: HBH, DO, RH, FH (first fragment), DO, UDP.
    let udp = testutil::ext(UDP, 0, &testutil::udp(9, 10, &[]));
    let fh = testutil::frag(IPV6_OPTS, 0, true, 0xabcdef, &udp);
    let rh = testutil::ext(IPV6_FRAG, 2, &fh);
    let dst = testutil::ext(IPV6_ROUTE, 0, &rh);
    let hbh = testutil::ext(IPV6_OPTS, 0, &dst);
    let frame = eth6(&testutil::ipv6(0, HOPOPT, &hbh));
    let info = info(&frame);
    assert_eq!(
        (info.key.protocol, info.key.src_port, info.key.dst_port),
        (UDP, 9, 10)
    );
    assert_eq!(info.fragment, Fragment::First { id: 0xabcdef });
    assert_eq!(info.l4_offset, Some(54 + 8 + 8 + 24 + 8 + 8));
}

#[test]
fn ipv6_ah_is_walked() {
    // SPEC §5: AH is one of IPv6's extension headers. It authenticates, it does not
    // hide: the flow is the TCP it carries, ports and flags.
    let frame = eth6(&testutil::ipv6(
        0,
        HOPOPT,
        &testutil::ext(AH, 0, &testutil::ah(TCP, &testutil::tcp(1, 2, flags::SYN))),
    ));
    let info = info(&frame);
    assert_eq!(
        (info.key.protocol, info.key.src_port, info.key.dst_port),
        (TCP, 1, 2)
    );
    assert_eq!(info.tcp_flags, flags::SYN);
    assert!(!info.key.ports_unknown());
    // 14 Ethernet + 40 IPv6 + 8 hop-by-hop + 24 AH (12-byte ICV).
    assert_eq!(info.l4_offset, Some(86));

    // In a first fragment AH follows the fragment header; in a non-first one the
    // fragment header names AH and nothing follows it but data.
    let ah_udp = testutil::ah(UDP, &testutil::udp(5004, 5006, &[0; 8]));
    let first = eth6(&testutil::ipv6(
        0,
        IPV6_FRAG,
        &testutil::frag(AH, 0, true, 5, &ah_udp),
    ));
    let info = self::info(&first);
    assert_eq!((info.key.protocol, info.key.dst_port), (UDP, 5006));
    assert_eq!(info.fragment, Fragment::First { id: 5 });
    let rest = eth6(&testutil::ipv6(
        0,
        IPV6_FRAG,
        &testutil::frag(AH, 4, false, 5, &[7; 16]),
    ));
    let info = self::info(&rest);
    assert_eq!(info.key.protocol, AH);
    assert!(!info.key.ports_unknown(), "AH itself has no ports");
    assert_eq!(info.fragment, Fragment::NonFirst { id: 5 });

    // AH with nothing after it, or whose length runs past the payload.
    let nothing = eth6(&testutil::ipv6(0, AH, &testutil::ah(NONXT_FOR_TEST, &[])));
    assert_eq!(self::info(&nothing).key.protocol, NONXT_FOR_TEST);
    let mut long = testutil::ah(TCP, &testutil::tcp(1, 2, 0));
    long[1] = 40; // (40 + 2) × 4 = 168 bytes, beyond the 44 there are
    assert_eq!(
        malformed(&eth6(&testutil::ipv6(0, AH, &long))),
        MalformedReason::Truncated
    );
    // Payload Len 0 declares 8 bytes, less than AH's own 12: malformed. Payload Len 1 is
    // AH without an ICV, 12 bytes: the walk goes on there (into what was the ICV).
    let mut short = testutil::ah(TCP, &testutil::tcp(1, 2, 0));
    short[1] = 0;
    let frame = eth6(&testutil::ipv6(0, AH, &short));
    assert_eq!(malformed(&frame), MalformedReason::BadIpHeaderLength);
    short[1] = 1;
    let key = self::info(&eth6(&testutil::ipv6(0, AH, &short))).key;
    assert_eq!((key.protocol, key.src_port), (TCP, 0xaaaa));
    // It counts towards the bound like any other extension header.
    let ah = testutil::ah(UDP, &testutil::udp(1, 2, &[]));
    assert_eq!(
        malformed(&options_before(MAX_EXTENSION_HEADERS, AH, ah)),
        MalformedReason::TooManyExtensionHeaders
    );

    // IPv4 AH stays the protocol: `protocols_without_ports`.
}

/// `n` destination-options headers, then UDP.
fn ext_chain(n: usize) -> Vec<u8> {
    options_before(n, UDP, testutil::udp(1, 2, &[]))
}

/// An IPv6 frame of `n` destination-options headers, then `inner`, a header of type `kind`.
fn options_before(n: usize, kind: u8, inner: Vec<u8>) -> Vec<u8> {
    let (mut inner, mut next) = (inner, kind);
    for _ in 0..n {
        inner = testutil::ext(next, 0, &inner);
        next = IPV6_OPTS;
    }
    eth6(&testutil::ipv6(0, next, &inner))
}

#[test]
fn ipv6_extension_header_bound() {
    for n in 0..=MAX_EXTENSION_HEADERS {
        assert_eq!(info(&ext_chain(n)).key.dst_port, 2, "{n} headers");
    }
    assert_eq!(
        malformed(&ext_chain(MAX_EXTENSION_HEADERS + 1)),
        MalformedReason::TooManyExtensionHeaders
    );
    assert_eq!(
        malformed(&ext_chain(100)),
        MalformedReason::TooManyExtensionHeaders
    );
    // The fragment header counts too: a fragment header and 8 more is 9.
    let fragment = testutil::frag(UDP, 0, true, 1, &testutil::udp(1, 2, &[]));
    assert_eq!(
        malformed(&options_before(MAX_EXTENSION_HEADERS, IPV6_FRAG, fragment)),
        MalformedReason::TooManyExtensionHeaders
    );
}

#[test]
fn vlan_and_qinq() {
    let v4 = V4::new(UDP).build(&testutil::udp(1, 2, &[]));
    // 802.1Q, PCP 3, VID 42.
    let info1 = info(&testutil::ethernet(&[(VLAN, 0x602a)], IPV4, &v4));
    assert_eq!(info1.key.vlan, 42);
    assert_eq!(info1.outer_tag_offset, Some(14));
    assert_eq!(info1.l3_offset, 18);
    assert_eq!(info1.key.dst_port, 2);
    // QinQ: the key holds the outer (service) VID.
    let info2 = info(&testutil::ethernet(&[(QINQ, 100), (VLAN, 200)], IPV4, &v4));
    assert_eq!(info2.key.vlan, 100);
    assert_eq!(info2.outer_tag_offset, Some(14));
    assert_eq!(info2.l3_offset, 22);
    // Two 0x8100 tags (common in practice) and VID 0 (priority tag).
    let info3 = info(&testutil::ethernet(&[(VLAN, 0), (VLAN, 7)], IPV4, &v4));
    assert_eq!(info3.key.vlan, 0);
    // A third tag is beyond what we parse: passed through as non-IP.
    let three = testutil::ethernet(&[(QINQ, 1), (VLAN, 2), (VLAN, 3)], IPV4, &v4);
    assert_eq!(parse(&three, false), Parsed::NonIp);
    // A tagged IPv6 frame.
    let info4 = info(&testutil::ethernet(
        &[(VLAN, 4094)],
        IPV6,
        &testutil::ipv6(0, UDP, &testutil::udp(3, 4, &[])),
    ));
    assert_eq!(
        (info4.key.vlan, info4.l3_offset, info4.key.src_port),
        (4094, 18, 3)
    );
    // Tagged ARP is non-IP.
    assert_eq!(
        parse(&testutil::ethernet(&[(VLAN, 5)], ARP, &[0; 28]), false),
        Parsed::NonIp
    );
}

#[test]
fn non_ip() {
    assert_eq!(
        parse(&testutil::ethernet(&[], ARP, &[0; 28]), false),
        Parsed::NonIp
    );
    assert_eq!(
        parse(&testutil::ethernet(&[], 0x88cc, &[0; 32]), false),
        Parsed::NonIp
    ); // LLDP
    assert_eq!(
        parse(&testutil::ethernet(&[], 0x0026, &[0x42; 46]), false),
        Parsed::NonIp
    ); // 802.3 + LLC
    assert_eq!(
        parse(&testutil::ethernet(&[], 0x8847, &[0; 46]), false),
        Parsed::NonIp
    ); // MPLS
       // Exactly an Ethernet header with a non-IP type.
    assert_eq!(
        parse(&testutil::ethernet(&[], ARP, &[]), false),
        Parsed::NonIp
    );
}

#[test]
fn ipv4_fragments() {
    let mut first = V4::new(UDP);
    first.ident = 0xbeef;
    first.frag = (true, 0);
    let info1 = info(&eth4(&first.build(&testutil::udp(1, 2, &[0; 8]))));
    assert_eq!(info1.fragment, Fragment::First { id: 0xbeef });
    assert_eq!((info1.key.src_port, info1.key.dst_port), (1, 2));
    assert!(!info1.key.ports_unknown());

    for (more, offset) in [(true, 2), (false, 2), (false, 0x1fff)] {
        let mut next = V4::new(TCP);
        next.ident = 0xbeef;
        next.frag = (more, offset);
        // A non-first fragment's bytes are payload, however short: not malformed.
        for len in [0, 1, 8, 100] {
            let info = info(&eth4(&next.build(&vec![0xff; len])));
            assert_eq!(info.fragment, Fragment::NonFirst { id: 0xbeef });
            assert_eq!(
                (info.key.src_port, info.key.dst_port, info.tcp_flags),
                (0, 0, 0)
            );
            assert_eq!(info.key.flags, FlowKey::PORTS_UNKNOWN);
            assert_eq!(info.key.protocol, TCP);
            assert_eq!(info.l4_offset, None);
        }
    }
    // A protocol without ports: a non-first fragment has the key of the whole packets
    // (one flow; found by an audit: ESP and GRE fragments counted as flows of their own).
    let whole = info(&eth4(
        &V4::new(ESP).build(&[0, 0, 1, 0, 0, 0, 0, 1, 0xaa, 0xbb]),
    ));
    let mut next = V4::new(ESP);
    next.frag = (false, 2);
    let fragment = info(&eth4(&next.build(&[0xff; 16])));
    assert!(matches!(fragment.fragment, Fragment::NonFirst { .. }));
    assert_eq!(fragment.key, whole.key);
    assert!(!fragment.key.ports_unknown());
    // DF alone is not a fragment.
    let mut df = V4::new(UDP);
    df.frag = (false, 0);
    let mut frame = eth4(&df.build(&testutil::udp(1, 2, &[])));
    frame[14 + 6] |= 0x40;
    assert_eq!(info(&frame).fragment, Fragment::None);
}

#[test]
fn ipv6_fragments() {
    let first = eth6(&testutil::ipv6(
        0,
        IPV6_FRAG,
        &testutil::frag(
            TCP,
            0,
            true,
            0x1234_5678,
            &testutil::tcp(80, 81, flags::SYN),
        ),
    ));
    let info1 = info(&first);
    assert_eq!(info1.fragment, Fragment::First { id: 0x1234_5678 });
    assert_eq!(
        (info1.key.protocol, info1.key.src_port, info1.key.dst_port),
        (TCP, 80, 81)
    );
    assert_eq!(info1.tcp_flags, flags::SYN);
    assert_eq!(info1.l4_offset, Some(62));

    for more in [true, false] {
        let next = eth6(&testutil::ipv6(
            0,
            HOPOPT,
            &testutil::ext(
                IPV6_FRAG,
                0,
                &testutil::frag(TCP, 181, more, 0x1234_5678, &[0; 3]),
            ),
        ));
        let info = info(&next);
        assert_eq!(info.fragment, Fragment::NonFirst { id: 0x1234_5678 });
        assert_eq!(info.key.protocol, TCP);
        assert_eq!(info.key.flags, FlowKey::IPV6 | FlowKey::PORTS_UNKNOWN);
        assert_eq!(
            (info.key.src_port, info.key.dst_port, info.tcp_flags),
            (0, 0, 0)
        );
        assert_eq!(info.l4_offset, None);
    }
    // An atomic fragment (offset 0, no M) is a whole datagram (RFC 6946).
    let atomic = eth6(&testutil::ipv6(
        0,
        IPV6_FRAG,
        &testutil::frag(UDP, 0, false, 5, &testutil::udp(7, 8, &[])),
    ));
    let info3 = info(&atomic);
    assert_eq!(info3.fragment, Fragment::None);
    assert_eq!(info3.key.dst_port, 8);
}

#[test]
fn malformed_ip_headers() {
    let good = eth4(&V4::new(UDP).build(&testutil::udp(1, 2, &[])));
    // Version 6 behind EtherType IPv4, and 4 behind IPv6.
    let mut f = good.clone();
    f[14] = 0x65;
    assert_eq!(malformed(&f), MalformedReason::BadIpVersion);
    let mut f = eth6(&testutil::ipv6(0, UDP, &testutil::udp(1, 2, &[])));
    f[14] = 0x40 | (f[14] & 0x0f);
    assert_eq!(malformed(&f), MalformedReason::BadIpVersion);
    // IHL 0..4.
    for ihl in 0..5 {
        let mut f = good.clone();
        f[14] = 0x40 | ihl;
        assert_eq!(malformed(&f), MalformedReason::BadIpHeaderLength);
    }
    // IHL 6 within Total Length 28 leaves 4 bytes for the 8-byte UDP header.
    let mut f = good.clone();
    f[14] = 0x46;
    assert_eq!(malformed(&f), MalformedReason::Truncated);
    // IHL 8 > Total Length 28.
    let mut f = good.clone();
    f[14] = 0x48;
    assert_eq!(malformed(&f), MalformedReason::BadTotalLength);
    // Total Length beyond the frame, and below the header.
    for total in [29u16, 1500, 0xffff, 19, 0] {
        let mut f = good.clone();
        f[16..18].copy_from_slice(&total.to_be_bytes());
        assert_eq!(
            malformed(&f),
            MalformedReason::BadTotalLength,
            "total {total}"
        );
    }
    // IPv6 Payload Length beyond the frame.
    let mut f = eth6(&testutil::ipv6(0, UDP, &testutil::udp(1, 2, &[])));
    f[18..20].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(malformed(&f), MalformedReason::BadTotalLength);
    // An extension header longer than the payload.
    let f = eth6(&testutil::ipv6(
        0,
        IPV6_OPTS,
        &[UDP, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ));
    assert_eq!(malformed(&f), MalformedReason::Truncated);
}

#[test]
fn truncated_transport_headers() {
    // Total Length says the TCP header is cut: unfragmented and first fragment.
    for more in [false, true] {
        let mut v4 = V4::new(TCP);
        v4.frag = (more, 0);
        let tcp = testutil::tcp(1, 2, 0);
        for cut in 0..tcp.len() {
            assert_eq!(
                malformed(&eth4(&v4.build(&tcp[..cut]))),
                MalformedReason::Truncated
            );
        }
    }
    let udp = testutil::udp(1, 2, &[]);
    for cut in 0..udp.len() {
        assert_eq!(
            malformed(&eth6(&testutil::ipv6(0, UDP, &udp[..cut]))),
            MalformedReason::Truncated
        );
    }
    let sctp = testutil::sctp(1, 2);
    for cut in 0..12 {
        assert_eq!(
            malformed(&eth4(&V4::new(SCTP).build(&sctp[..cut]))),
            MalformedReason::Truncated
        );
    }
    // Padding after a short Total Length does not count as L4 bytes.
    let mut f = eth4(&V4::new(UDP).build(&udp[..4]));
    f.resize(60, 0);
    assert_eq!(malformed(&f), MalformedReason::Truncated);
}

#[test]
fn truncated_at_every_length() {
    for frame in corpus() {
        assert!(matches!(parse(&frame, false), Parsed::Ip(_)));
        for len in 0..frame.len() {
            match parse(&frame[..len], true) {
                Parsed::Malformed(_) | Parsed::NonIp => {}
                Parsed::Ip(info) => panic!("{len}-byte prefix of {frame:02x?} parsed as {info:?}"),
            }
        }
    }
    // The reasons, for one frame: Ethernet and tag cut, IP header cut, then
    // Total Length beyond the frame.
    let frame = testutil::ethernet(
        &[(VLAN, 1)],
        IPV4,
        &V4::new(UDP).build(&testutil::udp(1, 2, &[])),
    );
    for len in 0..frame.len() {
        let expected = if len < 18 + 20 {
            MalformedReason::Truncated
        } else {
            MalformedReason::BadTotalLength
        };
        assert_eq!(malformed(&frame[..len]), expected, "len {len}");
    }
}

#[test]
fn reason_labels() {
    for (i, reason) in MalformedReason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, i);
        let label = reason.label();
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label}"
        );
    }
    let mut labels: Vec<_> = MalformedReason::ALL.iter().map(|r| r.label()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), MalformedReason::ALL.len());
}

/// Checks what must hold for any frame: no panic, offsets inside the frame, and
/// marking a parsed frame keeps it parseable with the same key.
fn check_any(frame: &[u8], rng: &mut XorShift) -> Parsed {
    let inbound = rng.next() & 1 == 0;
    let parsed = parse(frame, inbound);
    // The fast path, where it answers, answers exactly what the general parser does.
    assert_eq!(parsed, super::parse_general(frame, inbound), "{frame:02x?}");
    if let Parsed::Ip(info) = parsed {
        assert!(usize::from(info.l3_offset) < frame.len());
        if let Some(l4) = info.l4_offset {
            assert!(usize::from(l4) <= frame.len());
        }
        if let Some(tag) = info.outer_tag_offset {
            assert!(usize::from(tag) + 2 <= frame.len());
        }
        assert_eq!(
            info.key.ports_unknown(),
            matches!(info.fragment, Fragment::NonFirst { .. })
                && control::policy::has_ports(info.key.protocol)
        );
        let mut marked = frame.to_vec();
        let dscp = rng.next() as u8 & 0x3f;
        crate::wire::set_dscp(&mut marked, &info, dscp);
        crate::wire::set_pcp(&mut marked, &info, rng.next() as u8 & 7);
        assert_eq!(crate::wire::dscp(&marked, &info), Some(dscp));
        match parse(&marked, info.key.is_inbound()) {
            Parsed::Ip(again) => assert_eq!(again.key, info.key),
            other => panic!("marking changed the parse: {other:?}"),
        }
    }
    parsed
}

#[test]
fn the_fast_path_takes_the_common_frames_and_only_those() {
    let mut taken = 0;
    for frame in corpus() {
        let mut fast = PacketInfo::EMPTY;
        if super::fast_path(&frame, false, &mut fast) {
            assert_eq!(super::parse_general(&frame, false), Parsed::Ip(fast));
            taken += 1;
        }
    }
    assert!(
        taken >= 2,
        "untagged IPv4/IPv6 TCP/UDP frames of the corpus take the fast path"
    );
}

#[test]
fn property_never_panics_on_random_bytes() {
    let mut rng = XorShift::new(0xdead_beef);
    for _ in 0..50_000 {
        let len = rng.below(160);
        let mut frame = rng.bytes(len);
        // Steer a share of them past the Ethernet header so that the IP parsers
        // see random input too.
        if len >= 14 {
            let types = [IPV4, IPV6, VLAN, QINQ, ARP];
            frame[12..14].copy_from_slice(&types[rng.below(types.len())].to_be_bytes());
        }
        check_any(&frame, &mut rng);
    }
}

#[test]
fn property_never_panics_on_mutated_frames() {
    let corpus = corpus();
    let mut rng = XorShift::new(42);
    let mut outcomes = [0usize; 3];
    for _ in 0..100_000 {
        let mut frame = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                // Flip a byte, set one to an edge value, cut, extend, or rewrite
                // a length-bearing byte near the front.
                0 => {
                    let i = rng.below(frame.len());
                    frame[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(frame.len());
                    frame[i] = [0x00, 0xff, 0x80, 0x7f][rng.below(4)];
                }
                2 => frame.truncate(rng.below(frame.len() + 1)),
                3 => {
                    let n = rng.below(40);
                    frame.extend(rng.bytes(n));
                }
                _ => {
                    if frame.len() > 20 {
                        let i = 14 + rng.below(frame.len().min(80) - 14);
                        frame[i] = rng.next() as u8;
                    }
                }
            }
            if frame.is_empty() {
                break;
            }
        }
        match check_any(&frame, &mut rng) {
            Parsed::NonIp => outcomes[0] += 1,
            Parsed::Ip(_) => outcomes[1] += 1,
            Parsed::Malformed(_) => outcomes[2] += 1,
        }
    }
    // The mutations must exercise every verdict, or the test proves little.
    assert!(outcomes.iter().all(|&n| n > 1000), "{outcomes:?}");
}
