//! IPv6 fixed headers (RFC 8200). Extension headers are in `ipv6ext`.

use super::field::{Field, Rest};
use super::{ip, read_u16, read_u32, write_u16};
use crate::wire::MalformedReason;

mod field {
    use super::{Field, Rest};
    /// Version (4 bits), Traffic Class (8 bits), Flow Label (20 bits). The
    /// Traffic Class straddles the first two bytes: its high nibble is the low
    /// nibble of byte 0, its low nibble the high nibble of byte 1.
    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
    pub const PAYLOAD: Rest = 40..;
}

/// Length of the IPv6 fixed header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// Where the Traffic Class sits in the first 16-bit word.
const TC_SHIFT: u16 = 4;
const TC_MASK: u16 = 0x0ff0;

/// A view of an IPv6 packet.
///
/// `new_checked` guarantees the fixed header and the Payload Length's worth of
/// bytes after it; anything beyond (Ethernet padding) is ignored by `payload()`.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` after checking it as described on [`Packet`]. As with IPv4,
    /// the version is the parser's to check. A Payload Length of 0 with a
    /// hop-by-hop Jumbo Payload option (RFC 2675) is not supported: jumbograms
    /// cannot cross Ethernet, whose frames stay far below 64 KiB.
    pub fn new_checked(buffer: T) -> Result<Self, MalformedReason> {
        let packet = Packet { buffer };
        let len = packet.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(MalformedReason::Truncated);
        }
        if HEADER_LEN + usize::from(packet.payload_len()) > len {
            return Err(MalformedReason::BadTotalLength);
        }
        Ok(packet)
    }

    /// Wraps `buffer` without checking it: for a header the parser has already checked.
    /// Accessors panic if the buffer is shorter than what they read; the fixed header's
    /// fields need [`HEADER_LEN`] bytes.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn first_word(&self) -> u16 {
        read_u16(self.buffer.as_ref(), 0..2)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        ((self.first_word() & TC_MASK) >> TC_SHIFT) as u8
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        ip::dscp(self.traffic_class())
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        ip::ecn(self.traffic_class())
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 16] {
        let mut addr = [0; 16];
        addr.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        addr
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 16] {
        let mut addr = [0; 16];
        addr.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        addr
    }

    /// Extension headers and upper-layer data, up to Payload Length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Replaces the Traffic Class, keeping version and flow label. IPv6 has no
    /// header checksum, and the upper-layer pseudo-header does not cover it.
    #[inline]
    pub fn set_traffic_class(&mut self, tc: u8) {
        let word = (self.first_word() & !TC_MASK) | (u16::from(tc) << TC_SHIFT);
        write_u16(self.buffer.as_mut(), 0..2, word);
    }

    /// Replaces the DSCP (low six bits of `dscp`), keeping ECN.
    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let tc = ip::with_dscp(self.traffic_class(), dscp);
        self.set_traffic_class(tc);
    }

    #[inline]
    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value;
    }

    #[inline]
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::protocol;
    use crate::wire::testutil::{self, XorShift};

    #[test]
    fn reads_fields() {
        // Traffic class 0xb9 = DSCP 46, ECN 1; flow label 0x12345.
        let bytes = testutil::ipv6(0xb9, protocol::UDP, &testutil::udp(1, 2, &[]));
        assert_eq!(bytes[..4], [0x6b, 0x91, 0x23, 0x45]);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb9);
        assert_eq!((p.dscp(), p.ecn()), (46, 1));
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), protocol::UDP);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), testutil::V6_SRC);
        assert_eq!(p.dst_addr(), testutil::V6_DST);
        assert_eq!(p.payload(), &bytes[40..48]);
    }

    #[test]
    fn refuses_short_buffers_and_ignores_padding() {
        let mut bytes = testutil::ipv6(0, protocol::UDP, &testutil::udp(1, 2, &[]));
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                MalformedReason::Truncated
            );
        }
        for len in HEADER_LEN..bytes.len() {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                MalformedReason::BadTotalLength
            );
        }
        bytes.extend_from_slice(&[0; 6]);
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap().payload().len(), 8);
    }

    #[test]
    fn property_set_dscp_touches_only_dscp() {
        let mut rng = XorShift::new(6);
        for _ in 0..20_000 {
            let mut bytes = rng.bytes(HEADER_LEN);
            bytes[4..6].copy_from_slice(&[0, 0]);
            let before = bytes.clone();
            let dscp = rng.next() as u8;
            let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
            let (version, ecn, flow) = (p.version(), p.ecn(), p.flow_label());
            p.set_dscp(dscp);
            assert_eq!(p.dscp(), dscp & 0x3f);
            assert_eq!((p.version(), p.ecn(), p.flow_label()), (version, ecn, flow));
            // Bit-level oracle: DSCP is bits 4..10 of the first word.
            let old = u16::from_be_bytes([before[0], before[1]]);
            let new = u16::from_be_bytes([bytes[0], bytes[1]]);
            assert_eq!(new, (old & !0x0fc0) | (u16::from(dscp & 0x3f) << 6));
            assert_eq!(bytes[2..], before[2..]);
        }
    }

    #[test]
    fn setters() {
        let mut bytes = testutil::ipv6(0, protocol::UDP, &[]);
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.set_traffic_class(0xff);
        p.set_next_header(protocol::TCP);
        p.set_hop_limit(1);
        assert_eq!(
            (p.traffic_class(), p.version(), p.flow_label()),
            (0xff, 6, 0x12345)
        );
        assert_eq!((p.next_header(), p.hop_limit()), (protocol::TCP, 1));
    }
}
