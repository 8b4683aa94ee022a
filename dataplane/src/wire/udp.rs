//! UDP headers (RFC 768).

use super::field::Field;
use super::{read_u16, write_u16, Truncated};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP header. `new_checked` guarantees the 8-byte header; the
/// Length field is reported, not trusted (the IP length bounds the datagram).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Truncated);
        }
        Ok(Packet { buffer })
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    #[inline]
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A DNS query header: 53124 -> 53, length 40.
    const DNS: [u8; 10] = [0xcf, 0x84, 0x00, 0x35, 0x00, 0x28, 0xab, 0xcd, 0x12, 0x34];

    #[test]
    fn reads_fields() {
        let p = Packet::new_checked(&DNS[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (53124, 53));
        assert_eq!((p.length(), p.checksum()), (40, 0xabcd));
    }

    #[test]
    fn refuses_short_buffers() {
        for len in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&DNS[..len]).unwrap_err(), Truncated);
        }
    }

    #[test]
    fn setters() {
        let mut bytes = DNS;
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.set_src_port(5060);
        p.set_dst_port(5061);
        assert_eq!((p.src_port(), p.dst_port()), (5060, 5061));
    }
}
