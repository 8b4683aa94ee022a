//! IPv6 extension headers (RFC 8200 §4, RFC 4302 for AH).
//!
//! Hop-by-hop options, routing and destination options share one layout
//! (next header, length in 8-octet units not counting the first 8), so one view,
//! [`Header`], serves all three. The fragment header has a fixed size and fields
//! of its own ([`FragmentHeader`]); AH counts its length in 4-octet units
//! ([`AuthHeader`]).

use super::field::Field;
use super::{read_u16, read_u32, Truncated};

mod field {
    use super::Field;
    pub const NEXT_HEADER: usize = 0;
    /// Generic: length in 8-octet units minus one. AH: in 4-octet units minus two.
    pub const LENGTH: usize = 1;
    /// Fragment header: offset (13 bits, 8-octet units), 2 reserved bits, M flag.
    pub const FRAG_OFF_M: Field = 2..4;
    pub const FRAG_IDENT: Field = 4..8;
    pub const AH_SPI: Field = 4..8;
    pub const AH_SEQ: Field = 8..12;
}

/// The smallest extension header, and the fixed size of the fragment header.
pub const MIN_HEADER_LEN: usize = 8;
/// AH's fixed part (next header .. sequence number).
pub const AH_MIN_LEN: usize = field::AH_SEQ.end;

/// A hop-by-hop, routing or destination options header.
#[derive(Debug, Clone)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buffer`, refusing one shorter than the length the header declares.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        let data = buffer.as_ref();
        // The length octet is the second: need two bytes to read it, and then
        // at least the length it declares.
        if data.len() < 2 || data.len() < (usize::from(data[field::LENGTH]) + 1) * 8 {
            return Err(Truncated);
        }
        Ok(Header { buffer })
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Length of the whole header in bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        (usize::from(self.buffer.as_ref()[field::LENGTH]) + 1) * 8
    }

    /// The options (or routing data) after the first two bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[2..self.header_len()]
    }
}

/// A fragment header.
#[derive(Debug, Clone)]
pub struct FragmentHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FragmentHeader<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Truncated);
        }
        Ok(FragmentHeader { buffer })
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Always 8: the length octet of a fragment header is reserved.
    #[inline]
    pub fn header_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FRAG_OFF_M) & !0x7
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FRAG_OFF_M) & 0x1 != 0
    }

    #[inline]
    pub fn ident(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::FRAG_IDENT)
    }
}

/// An authentication header.
#[derive(Debug, Clone)]
pub struct AuthHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AuthHeader<T> {
    /// Wraps `buffer`, refusing one shorter than AH's fixed part or than the
    /// length the header declares.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        let data = buffer.as_ref();
        if data.len() < AH_MIN_LEN || data.len() < (usize::from(data[field::LENGTH]) + 2) * 4 {
            return Err(Truncated);
        }
        Ok(AuthHeader { buffer })
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Length of the whole header in bytes, ICV included.
    #[inline]
    pub fn header_len(&self) -> usize {
        (usize::from(self.buffer.as_ref()[field::LENGTH]) + 2) * 4
    }

    #[inline]
    pub fn spi(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::AH_SPI)
    }

    #[inline]
    pub fn sequence(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::AH_SEQ)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::protocol;
    use crate::wire::testutil;

    #[test]
    fn generic_header() {
        // Hop-by-hop, 16 bytes (length 1), then TCP.
        let bytes = testutil::ext(protocol::TCP, 1, &[0xee]);
        let h = Header::new_checked(&bytes[..]).unwrap();
        assert_eq!(h.next_header(), protocol::TCP);
        assert_eq!(h.header_len(), 16);
        assert_eq!(h.data().len(), 14);
        assert_eq!(h.data()[..2], [0x01, 12]); // PadN of 12
        for len in 0..16 {
            assert_eq!(Header::new_checked(&bytes[..len]).unwrap_err(), Truncated);
        }
        // The largest: length 255 is 2048 bytes.
        let big = testutil::ext(protocol::UDP, 255, &[]);
        assert_eq!(Header::new_checked(&big[..]).unwrap().header_len(), 2048);
    }

    #[test]
    fn fragment_header() {
        let bytes = testutil::frag(protocol::UDP, 185, true, 0xdead_beef, &[]);
        let h = FragmentHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(h.next_header(), protocol::UDP);
        assert_eq!(h.header_len(), 8);
        assert_eq!(h.frag_offset(), 185 * 8);
        assert!(h.more_frags());
        assert_eq!(h.ident(), 0xdead_beef);
        let last = testutil::frag(protocol::UDP, 8191, false, 1, &[]);
        let h = FragmentHeader::new_checked(&last[..]).unwrap();
        assert_eq!((h.frag_offset(), h.more_frags()), (8191 * 8, false));
        for len in 0..8 {
            assert!(FragmentHeader::new_checked(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn auth_header() {
        let bytes = testutil::ah(protocol::TCP, &[]);
        let h = AuthHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(h.next_header(), protocol::TCP);
        assert_eq!(h.header_len(), 24);
        assert_eq!(h.spi(), 0x1001);
        assert_eq!(h.sequence(), 7);
        for len in 0..24 {
            assert!(AuthHeader::new_checked(&bytes[..len]).is_err());
        }
    }
}
