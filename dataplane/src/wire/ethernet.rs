//! Ethernet II frames (no FCS: DPDK strips it before we see the frame).

use super::field::{Field, Rest};
use super::{read_u16, write_u16, Truncated};

/// EtherType values the parser acts on.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1ad service VLAN tag (the outer tag of QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// Values below this are 802.3 lengths, not EtherTypes (802.3 clause 3.2.6).
    pub const MIN_ETHERTYPE: u16 = 0x0600;
}

mod field {
    use super::{Field, Rest};
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
}

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer`, refusing one shorter than the Ethernet header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Truncated);
        }
        Ok(Frame { buffer })
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn destination(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        mac
    }

    #[inline]
    pub fn source(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        mac
    }

    /// The EtherType, or the TPID of a VLAN tag if the frame is tagged.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    #[inline]
    pub fn set_destination(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac);
    }

    #[inline]
    pub fn set_source(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac);
    }

    #[inline]
    pub fn set_ethertype(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, value);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ARP request as captured on a LAN (broadcast, who-has 192.168.1.1).
    const ARP_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xc0, 0xa8,
        0x01, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x01, 0x01,
    ];

    #[test]
    fn reads_fields() {
        let frame = Frame::new_checked(&ARP_FRAME[..]).unwrap();
        assert_eq!(frame.destination(), [0xff; 6]);
        assert_eq!(frame.source(), [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(frame.ethertype(), ethertype::ARP);
        assert_eq!(frame.payload().len(), 28);
        assert_eq!(frame.payload()[..2], [0x00, 0x01]);
    }

    #[test]
    fn refuses_short_buffers() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&ARP_FRAME[..len]).unwrap_err(),
                Truncated
            );
        }
        assert!(Frame::new_checked(&ARP_FRAME[..HEADER_LEN]).is_ok());
    }

    #[test]
    fn writes_fields() {
        let mut bytes = ARP_FRAME;
        let mut frame = Frame::new_checked(&mut bytes[..]).unwrap();
        frame.set_destination([1, 2, 3, 4, 5, 6]);
        frame.set_source([7, 8, 9, 10, 11, 12]);
        frame.set_ethertype(ethertype::IPV4);
        frame.payload_mut()[0] = 0xaa;
        assert_eq!(
            bytes[..15],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00, 0xaa]
        );
    }
}
