//! 802.1Q / 802.1ad VLAN tags.
//!
//! On the wire a tag is a TPID (0x8100 or 0x88a8) in the place of the EtherType,
//! then the 2-byte TCI and the next EtherType. The TPID belongs to the enclosing
//! header (the Ethernet frame or the outer tag), so a [`Tag`] view starts at the TCI,
//! exactly as smoltcp's views start after the field that announced them.

use super::field::{Field, Rest};
use super::{read_u16, write_u16, Truncated};

mod field {
    use super::{Field, Rest};
    /// PCP (3 bits), DEI (1 bit), VID (12 bits).
    pub const TCI: Field = 0..2;
    pub const ETHERTYPE: Field = 2..4;
    pub const PAYLOAD: Rest = 4..;
}

/// Length of a tag after its TPID.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

const PCP_SHIFT: u16 = 13;
const DEI_BIT: u16 = 1 << 12;
const VID_MASK: u16 = 0x0fff;

/// A view of one VLAN tag, starting at its TCI.
#[derive(Debug, Clone)]
pub struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    /// Wraps `buffer`, refusing one shorter than a tag.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Truncated);
        }
        Ok(Tag { buffer })
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn tci(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TCI)
    }

    /// 802.1p priority code point, 0–7.
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> PCP_SHIFT) as u8
    }

    /// Drop eligible indicator (formerly CFI).
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & DEI_BIT != 0
    }

    /// VLAN identifier, 0–4095 (0 means priority-tagged, no VLAN).
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & VID_MASK
    }

    /// The EtherType of what follows the tag (another TPID for QinQ).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tag<T> {
    #[inline]
    fn set_tci(&mut self, tci: u16) {
        write_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    /// Replaces the priority code point; DEI and VID are kept. Only the low 3 bits
    /// of `pcp` are used. The Ethernet FCS would cover this byte, but DPDK has
    /// stripped the FCS on receive and the NIC appends a fresh one on transmit.
    #[inline]
    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = (self.tci() & !(0x7 << PCP_SHIFT)) | (u16::from(pcp & 0x7) << PCP_SHIFT);
        self.set_tci(tci);
    }

    #[inline]
    pub fn set_dei(&mut self, dei: bool) {
        let tci = (self.tci() & !DEI_BIT) | if dei { DEI_BIT } else { 0 };
        self.set_tci(tci);
    }

    /// Only the low 12 bits of `vid` are used.
    #[inline]
    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & !VID_MASK) | (vid & VID_MASK);
        self.set_tci(tci);
    }

    #[inline]
    pub fn set_ethertype(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::ethertype;

    // TCI 0xa064: PCP 5, DEI 0, VID 100; then IPv4.
    const TAG: [u8; 6] = [0xa0, 0x64, 0x08, 0x00, 0x45, 0x00];

    #[test]
    fn reads_fields() {
        let tag = Tag::new_checked(&TAG[..]).unwrap();
        assert_eq!(tag.pcp(), 5);
        assert!(!tag.dei());
        assert_eq!(tag.vid(), 100);
        assert_eq!(tag.ethertype(), ethertype::IPV4);
        assert_eq!(tag.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn refuses_short_buffers() {
        for len in 0..HEADER_LEN {
            assert_eq!(Tag::new_checked(&TAG[..len]).unwrap_err(), Truncated);
        }
    }

    #[test]
    fn setters_touch_only_their_bits() {
        let mut bytes = [0xff, 0xff, 0x08, 0x00];
        let mut tag = Tag::new_checked(&mut bytes[..]).unwrap();
        tag.set_pcp(2);
        assert_eq!((tag.pcp(), tag.dei(), tag.vid()), (2, true, 0xfff));
        tag.set_dei(false);
        assert_eq!((tag.pcp(), tag.dei(), tag.vid()), (2, false, 0xfff));
        tag.set_vid(42);
        assert_eq!((tag.pcp(), tag.dei(), tag.vid()), (2, false, 42));
        tag.set_pcp(0xff); // only 3 bits are used
        assert_eq!((tag.pcp(), tag.dei(), tag.vid()), (7, false, 42));
        tag.set_ethertype(ethertype::IPV6);
        assert_eq!(bytes, [0xe0, 0x2a, 0x86, 0xdd]);
    }
}
