//! SCTP common headers (RFC 9260 §3.1): ports only.

use super::field::Field;
use super::{read_u16, read_u32, Truncated};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const VERIFICATION_TAG: Field = 4..8;
    /// CRC32c over the whole packet; marking does not touch it (no IP fields).
    pub const CHECKSUM: Field = 8..12;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of an SCTP common header. `new_checked` guarantees its 12 bytes;
/// chunks are not parsed.
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
    pub fn verification_tag(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERIFICATION_TAG)
    }

    #[inline]
    pub fn checksum(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::CHECKSUM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil;

    #[test]
    fn reads_fields() {
        let bytes = testutil::sctp(2905, 3868);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (2905, 3868));
        assert_eq!(p.verification_tag(), 0);
        assert_eq!(p.checksum(), 0x1234_5678);
        for len in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&bytes[..len]).unwrap_err(), Truncated);
        }
    }
}
