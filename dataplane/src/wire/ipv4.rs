//! IPv4 headers (RFC 791), options included.

use super::field::{Field, Rest};
use super::{checksum, ip, read_u16, write_u16};
use crate::wire::MalformedReason;

mod field {
    use super::{Field, Rest};
    /// Version (4 bits), IHL (4 bits, in 32-bit words).
    pub const VER_IHL: usize = 0;
    /// DSCP (6 bits), ECN (2 bits): the old TOS octet.
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Field = 2..4;
    pub const IDENT: Field = 4..6;
    /// Flags (3 bits: reserved, DF, MF), fragment offset (13 bits, 8-octet units).
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
    pub const OPTIONS: Rest = 20..;
}

/// Length of an IPv4 header without options (IHL 5).
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
///
/// `new_checked` guarantees that the buffer holds the whole header (options
/// included) and the whole datagram as the Total Length says, and that the two
/// lengths are consistent; so `options()` and `payload()` cannot go out of bounds.
/// The buffer may be longer than Total Length (Ethernet pads short frames to 60
/// bytes): `payload()` stops at Total Length.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` after checking it as described on [`Packet`]. The version is
    /// not checked here: the parser checks it first, from the first byte alone, so
    /// that a non-IPv4 packet is reported as such rather than by a length error.
    pub fn new_checked(buffer: T) -> Result<Self, MalformedReason> {
        let packet = Packet { buffer };
        let len = packet.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(MalformedReason::Truncated);
        }
        let header_len = packet.header_len();
        if header_len < HEADER_LEN {
            // IHL below 5 cannot even hold the addresses.
            return Err(MalformedReason::BadIpHeaderLength);
        }
        let total_len = usize::from(packet.total_len());
        if total_len < header_len {
            return Err(MalformedReason::BadTotalLength);
        }
        if total_len > len {
            // The datagram claims more bytes than the frame holds: cut in transit,
            // or a lying length. Either way its end cannot be found.
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
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        ip::dscp(self.buffer.as_ref()[field::DSCP_ECN])
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        ip::ecn(self.buffer.as_ref()[field::DSCP_ECN])
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 4] {
        let mut addr = [0; 4];
        addr.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        addr
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 4] {
        let mut addr = [0; 4];
        addr.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        addr
    }

    /// The options, between the fixed header and IHL × 4.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS.start..self.header_len()]
    }

    /// The payload, from the end of the header to Total Length (padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    /// Whether the header checksum is valid. Not checked by the parser: a
    /// bump in the wire forwards what it is given, and the receiver checks.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.buffer.as_ref()[..self.header_len()])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Replaces the DSCP (low six bits of `dscp`), keeps ECN, and updates the
    /// header checksum incrementally (RFC 1624) so that a valid checksum stays
    /// valid. Cheaper than [`fill_checksum`](Self::fill_checksum): one word
    /// changes, so the other 9–29 words need not be read again.
    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let data = self.buffer.as_mut();
        let old_tos = data[field::DSCP_ECN];
        let new_tos = ip::with_dscp(old_tos, dscp);
        if new_tos == old_tos {
            return;
        }
        data[field::DSCP_ECN] = new_tos;
        // The TOS octet is the low half of the header's first 16-bit word.
        let ver_ihl = u16::from(data[field::VER_IHL]) << 8;
        let old_word = ver_ihl | u16::from(old_tos);
        let new_word = ver_ihl | u16::from(new_tos);
        let hc = read_u16(data, field::CHECKSUM);
        write_u16(
            data,
            field::CHECKSUM,
            checksum::update(hc, old_word, new_word),
        );
    }

    #[inline]
    pub fn set_ecn(&mut self, ecn: u8) {
        let data = self.buffer.as_mut();
        data[field::DSCP_ECN] = (data[field::DSCP_ECN] & !0x03) | (ecn & 0x03);
    }

    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, value);
    }

    #[inline]
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    #[inline]
    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let value = checksum::compute(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::protocol;
    use crate::wire::testutil::XorShift;

    // 192.168.0.1 -> 192.168.0.199, UDP, DSCP 46 ECT(0), total length 28
    // (header + 8 bytes of UDP header), valid checksum.
    fn udp_packet() -> Vec<u8> {
        let mut p = vec![
            0x45, 0xba, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7, 0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00,
        ];
        Packet::new_checked(&mut p[..]).unwrap().fill_checksum();
        p
    }

    #[test]
    fn reads_fields() {
        let bytes = udp_packet();
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (46, 0b10));
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), protocol::UDP);
        assert_eq!(p.src_addr(), [192, 168, 0, 1]);
        assert_eq!(p.dst_addr(), [192, 168, 0, 199]);
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &bytes[20..28]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn options_and_fragment_fields() {
        // IHL 6 with a router-alert option, MF set, offset 185 × 8.
        let mut bytes = vec![
            0x46, 0x00, 0x00, 0x20, 0xab, 0xcd, 0x20, 0xb9, 0x01, 0x02, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2, 0x94, 0x04, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        Packet::new_checked(&mut bytes[..]).unwrap().fill_checksum();
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert!(p.more_frags());
        assert!(!p.dont_frag());
        assert_eq!(p.frag_offset(), 185 * 8);
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn padding_after_total_length_is_not_payload() {
        let mut bytes = udp_packet();
        bytes.resize(46, 0); // Ethernet minimum payload
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn refuses_inconsistent_lengths() {
        let bytes = udp_packet();
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
        for ihl in 0..5u8 {
            let mut b = bytes.clone();
            b[0] = 0x40 | ihl;
            assert_eq!(
                Packet::new_checked(&b[..]).unwrap_err(),
                MalformedReason::BadIpHeaderLength
            );
        }
        // IHL 15 (60 bytes) but Total Length 28.
        let mut b = bytes.clone();
        b[0] = 0x4f;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            MalformedReason::BadTotalLength
        );
        // Total Length 19, shorter than the header.
        let mut b = bytes.clone();
        b[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            MalformedReason::BadTotalLength
        );
    }

    #[test]
    fn set_dscp_keeps_ecn_and_checksum_valid() {
        let mut bytes = udp_packet();
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.set_dscp(8);
        assert_eq!((p.dscp(), p.ecn()), (8, 0b10));
        assert!(p.verify_checksum());
        let incremental = p.checksum();
        p.fill_checksum();
        assert_eq!(p.checksum(), incremental);
        // Unchanged DSCP writes nothing.
        let before = bytes.clone();
        Packet::new_checked(&mut bytes[..]).unwrap().set_dscp(8);
        assert_eq!(bytes, before);
    }

    #[test]
    fn setters() {
        let mut bytes = udp_packet();
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.set_ecn(0b11);
        p.set_ident(7);
        p.set_ttl(1);
        p.set_protocol(protocol::TCP);
        p.fill_checksum();
        assert_eq!((p.dscp(), p.ecn(), p.ident(), p.ttl()), (46, 3, 7, 1));
        assert_eq!(p.protocol(), protocol::TCP);
        assert!(p.verify_checksum());
    }

    /// A random IPv4 header (random IHL, options, fields) with a valid checksum.
    fn random_header(rng: &mut XorShift) -> Vec<u8> {
        let ihl = 5 + (rng.next() % 11) as usize;
        let mut h: Vec<u8> = (0..ihl * 4).map(|_| rng.next() as u8).collect();
        h[0] = 0x40 | ihl as u8;
        h[2..4].copy_from_slice(&((ihl * 4) as u16).to_be_bytes());
        Packet::new_checked(&mut h[..]).unwrap().fill_checksum();
        h
    }

    /// Adjusts the Identification so that the full checksum is exactly `target`,
    /// to reach the corner cases: ident = (sum of the other words) solved for.
    fn force_checksum(h: &mut [u8], target: u16) {
        let mut p = Packet::new_checked(&mut h[..]).unwrap();
        p.set_ident(0);
        p.set_checksum(target);
        // Now the header sums to S; we need it to sum to 0xffff: ident = ~S
        // (one's-complement subtraction), which is 0 when S is already 0xffff.
        let s = checksum::sum(&h[..]);
        let mut p = Packet::new_checked(&mut h[..]).unwrap();
        p.set_ident(!s);
        assert!(p.verify_checksum(), "target {target:#06x}");
        assert_eq!(p.checksum(), target);
    }

    fn check_mark(h: &mut [u8], dscp: u8) {
        let before = h.to_vec();
        let mut p = Packet::new_checked(&mut h[..]).unwrap();
        let unchanged = p.dscp() == dscp & 0x3f;
        let ecn = p.ecn();
        p.set_dscp(dscp);
        assert_eq!(p.dscp(), dscp & 0x3f);
        assert_eq!(p.ecn(), ecn, "ECN must never change");
        assert!(p.verify_checksum());
        if unchanged {
            // Nothing to do, nothing written: not even a 0xffff checksum is
            // normalised to 0x0000, so pass-through stays byte-identical.
            assert_eq!(h, &before[..]);
            return;
        }
        let incremental = p.checksum();
        p.fill_checksum();
        assert_eq!(
            p.checksum(),
            incremental,
            "incremental == full recomputation"
        );
        let changed: Vec<usize> = (0..h.len()).filter(|&i| h[i] != before[i]).collect();
        assert!(
            changed.iter().all(|i| [1, 10, 11].contains(i)),
            "only TOS and checksum may change: {changed:?}"
        );
    }

    #[test]
    fn property_incremental_checksum_equals_recomputation() {
        let mut rng = XorShift::new(0x5eed_1624);
        for _ in 0..20_000 {
            let mut h = random_header(&mut rng);
            let dscp = rng.next() as u8; // high bits included: they must be ignored
            check_mark(&mut h, dscp);
        }
    }

    #[test]
    fn property_checksum_corner_cases() {
        let mut rng = XorShift::new(0xc0ffee);
        let mut after_zero = 0;
        for i in 0..20_000 {
            let mut h = random_header(&mut rng);
            let dscp = rng.next() as u8 & 0x3f;
            // A header whose checksum is 0x0000 before marking (its other words
            // sum to 0xffff), and one stored as 0xffff, the other representation
            // of zero, which a receiver also accepts.
            force_checksum(&mut h, if i % 2 == 0 { 0x0000 } else { 0xffff });
            check_mark(&mut h, dscp);
            // A header whose checksum becomes 0x0000 after marking: make the
            // marked header sum that way, then restore the old DSCP first.
            let mut h = random_header(&mut rng);
            let old_tos = h[1];
            h[1] = ip::with_dscp(old_tos, dscp);
            force_checksum(&mut h, 0x0000);
            h[1] = old_tos;
            Packet::new_checked(&mut h[..]).unwrap().fill_checksum();
            check_mark(&mut h, dscp);
            if Packet::new_checked(&h[..]).unwrap().checksum() == 0 {
                after_zero += 1;
            }
        }
        assert!(after_zero > 10_000, "corner reached {after_zero} times");
    }
}
