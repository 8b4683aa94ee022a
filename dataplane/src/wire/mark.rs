//! In-place marking of a parsed frame: DSCP (IPv4 TOS / IPv6 Traffic Class) and
//! the outer VLAN tag's 802.1p PCP.
//!
//! Each function takes the [`PacketInfo`] that [`parse`](super::parse) returned
//! for the same frame. Should the two not match, a call may write the wrong bytes of
//! the fixed header at `l3_offset`, but never panics or writes out of bounds.

use super::parse::PacketInfo;
use super::{ipv4, ipv6, vlan};

/// Replaces the 6 DSCP bits (the low six bits of `dscp`), keeping the 2 ECN bits.
/// For IPv4 the header checksum is updated incrementally (RFC 1624), so a valid
/// checksum stays valid; IPv6 has no header checksum. L4 checksums do not cover
/// these bits (the pseudo-headers leave TOS / Traffic Class out).
#[inline]
pub fn set_dscp(frame: &mut [u8], info: &PacketInfo, dscp: u8) {
    // The parser checked the header: only the fixed part is touched, so only its
    // bounds are checked again (the views' full checks re-read every length field).
    let l3 = usize::from(info.l3_offset);
    if info.key.is_ipv6() {
        if let Some(header) = frame.get_mut(l3..l3 + ipv6::HEADER_LEN) {
            ipv6::Packet::new_unchecked(header).set_dscp(dscp);
        }
    } else if let Some(header) = frame.get_mut(l3..l3 + ipv4::HEADER_LEN) {
        ipv4::Packet::new_unchecked(header).set_dscp(dscp);
    }
}

/// The frame's current DSCP, or `None` if `info` does not fit `frame`.
pub fn dscp(frame: &[u8], info: &PacketInfo) -> Option<u8> {
    let l3 = frame.get(usize::from(info.l3_offset)..)?;
    if info.key.is_ipv6() {
        ipv6::Packet::new_checked(l3).ok().map(|ip| ip.dscp())
    } else {
        ipv4::Packet::new_checked(l3).ok().map(|ip| ip.dscp())
    }
}

/// Replaces the outer VLAN tag's PCP (the low three bits of `pcp`). A frame
/// without a tag is left alone: SPEC §2 `priority_8021p` never adds a tag.
#[inline]
pub fn set_pcp(frame: &mut [u8], info: &PacketInfo, pcp: u8) {
    let Some(offset) = info.outer_tag_offset else {
        return;
    };
    if let Some(Ok(mut tag)) = frame
        .get_mut(usize::from(offset)..)
        .map(vlan::Tag::new_checked)
    {
        tag.set_pcp(pcp);
    }
}

/// The outer VLAN tag's PCP, or `None` without a tag.
pub fn pcp(frame: &[u8], info: &PacketInfo) -> Option<u8> {
    let tag = vlan::Tag::new_checked(frame.get(usize::from(info.outer_tag_offset?)..)?).ok()?;
    Some(tag.pcp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::ethertype::{IPV4, IPV6, QINQ, VLAN};
    use crate::wire::ip::protocol::*;
    use crate::wire::testutil::{self, XorShift, V4};
    use crate::wire::{checksum, parse, Parsed};

    fn parsed(frame: &[u8]) -> PacketInfo {
        match parse(frame, false) {
            Parsed::Ip(info) => info,
            other => panic!("{other:?}"),
        }
    }

    /// The bytes of `a` and `b` that differ.
    fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
        assert_eq!(a.len(), b.len());
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    #[test]
    fn ipv4_dscp_with_options_and_tags() {
        let mut v4 = V4::new(TCP);
        v4.tos = 0x03; // DSCP 0, ECN CE
        v4.options = vec![0x01; 12];
        let before = testutil::ethernet(
            &[(QINQ, 10), (VLAN, 20)],
            IPV4,
            &v4.build(&testutil::tcp(1, 2, 0)),
        );
        let info = parsed(&before);
        let mut frame = before.clone();
        set_dscp(&mut frame, &info, 46);
        assert_eq!(dscp(&frame, &info), Some(46));
        // Only the TOS byte and the checksum changed; ECN is still CE.
        assert_eq!(diff(&before, &frame), vec![23, 32, 33]);
        assert_eq!(frame[23], (46 << 2) | 0x03);
        assert!(checksum::verify(&frame[22..22 + 32]));
        // Clearing (trust_dscp: false) goes back to the original bytes.
        set_dscp(&mut frame, &info, 0);
        assert_eq!(frame, before);
    }

    #[test]
    fn ipv6_dscp_straddles_two_bytes() {
        // Traffic class 0x01: DSCP 0, ECN ECT(1).
        let before = testutil::ethernet(
            &[],
            IPV6,
            &testutil::ipv6(0x01, UDP, &testutil::udp(1, 2, &[])),
        );
        let info = parsed(&before);
        let mut frame = before.clone();
        set_dscp(&mut frame, &info, 0b101110);
        assert_eq!(dscp(&frame, &info), Some(46));
        // 0x6 | TC 0xb9 | flow label 0x12345.
        assert_eq!(frame[14..18], [0x6b, 0x91, 0x23, 0x45]);
        assert_eq!(diff(&before, &frame), vec![14, 15]);
        set_dscp(&mut frame, &info, 0);
        assert_eq!(frame, before);
    }

    #[test]
    fn pcp_rewrites_only_the_outer_tag() {
        let v4 = V4::new(UDP).build(&testutil::udp(1, 2, &[]));
        let before = testutil::ethernet(&[(QINQ, 0x1064), (VLAN, 0xe0c8)], IPV4, &v4);
        let info = parsed(&before);
        assert_eq!(pcp(&before, &info), Some(0));
        let mut frame = before.clone();
        set_pcp(&mut frame, &info, 5);
        assert_eq!(pcp(&frame, &info), Some(5));
        assert_eq!(diff(&before, &frame), vec![14]);
        assert_eq!(frame[14..16], [0xb0, 0x64]); // DEI and VID 100 kept
        assert_eq!(frame[18..20], [0xe0, 0xc8]); // inner tag untouched
                                                 // Untagged: no-op.
        let before = testutil::ethernet(&[], IPV4, &v4);
        let info = parsed(&before);
        let mut frame = before.clone();
        set_pcp(&mut frame, &info, 7);
        assert_eq!(frame, before);
        assert_eq!(pcp(&frame, &info), None);
    }

    #[test]
    fn mismatched_info_writes_nothing_out_of_place() {
        let frame = testutil::ethernet(
            &[(VLAN, 1)],
            IPV4,
            &V4::new(UDP).build(&testutil::udp(1, 2, &[])),
        );
        let info = parsed(&frame);
        for len in 0..frame.len() {
            let mut short = frame[..len].to_vec();
            set_dscp(&mut short, &info, 63);
            set_pcp(&mut short, &info, 7);
            // The tag is whole from 18 bytes on, the fixed IPv4 header from 38: only then
            // are its TOS (19) and checksum (28, 29) written.
            let changed = diff(&short, &frame[..len]);
            if len < 18 {
                assert!(changed.is_empty(), "len {len}");
            } else if len < 18 + 20 {
                assert_eq!(changed, vec![14], "len {len}");
            } else {
                assert_eq!(changed, vec![14, 19, 28, 29], "len {len}");
            }
        }
    }

    /// A parsed random IPv4 or IPv6 frame: random header fields (TOS/TC,
    /// options, addresses, flow label), valid IPv4 checksum.
    fn random_frame(rng: &mut XorShift) -> Vec<u8> {
        let data_len = rng.below(20);
        let data = rng.bytes(data_len);
        let l4 = testutil::udp(rng.next() as u16, rng.next() as u16, &data);
        let tags: Vec<(u16, u16)> = (0..rng.below(3))
            .map(|_| (VLAN, rng.next() as u16))
            .collect();
        if rng.next() & 1 == 0 {
            let mut v4 = V4::new(UDP);
            v4.tos = rng.next() as u8;
            v4.ident = rng.next() as u16;
            v4.src = rng.next().to_be_bytes()[..4].try_into().unwrap();
            v4.dst = rng.next().to_be_bytes()[..4].try_into().unwrap();
            let options_len = 4 * rng.below(11);
            v4.options = rng.bytes(options_len);
            testutil::ethernet(&tags, IPV4, &v4.build(&l4))
        } else {
            let mut f =
                testutil::ethernet(&tags, IPV6, &testutil::ipv6(rng.next() as u8, UDP, &l4));
            let l3 = 14 + 4 * tags.len();
            let flow = rng.next() as u8;
            f[l3 + 1] = (f[l3 + 1] & 0xf0) | (flow & 0x0f);
            f
        }
    }

    #[test]
    fn property_marking_touches_only_dscp_and_checksum() {
        let mut rng = XorShift::new(2474);
        for _ in 0..20_000 {
            let before = random_frame(&mut rng);
            let info = parsed(&before);
            let l3 = usize::from(info.l3_offset);
            let mut frame = before.clone();
            let new = rng.next() as u8; // high bits must be ignored
            set_dscp(&mut frame, &info, new);
            assert_eq!(dscp(&frame, &info), Some(new & 0x3f));
            if info.key.is_ipv6() {
                // ECN: bits 4-5 of byte 1.
                assert_eq!(frame[l3 + 1] & 0x30, before[l3 + 1] & 0x30);
                assert!(diff(&before, &frame)
                    .iter()
                    .all(|&i| i == l3 || i == l3 + 1));
            } else {
                assert_eq!(frame[l3 + 1] & 0x03, before[l3 + 1] & 0x03);
                assert!(diff(&before, &frame)
                    .iter()
                    .all(|&i| [l3 + 1, l3 + 10, l3 + 11].contains(&i)));
                // Independent oracle: recompute the whole header's checksum.
                let header_len = usize::from(frame[l3] & 0x0f) * 4;
                let mut header = frame[l3..l3 + header_len].to_vec();
                let stored = u16::from_be_bytes([header[10], header[11]]);
                header[10..12].copy_from_slice(&[0, 0]);
                assert_eq!(stored, checksum::compute(&header));
            }
            let pcp_new = rng.next() as u8;
            set_pcp(&mut frame, &info, pcp_new);
            if let Some(tag) = info.outer_tag_offset {
                assert_eq!(pcp(&frame, &info), Some(pcp_new & 7));
                assert_eq!(
                    frame[usize::from(tag)] & 0x1f,
                    before[usize::from(tag)] & 0x1f
                );
            }
            assert_eq!(parsed(&frame).key, info.key);
        }
    }
}
