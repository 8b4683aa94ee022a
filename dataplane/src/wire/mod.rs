//! Packet formats: zero-copy views per header, the parser and in-place marking.
//!
//! The layout follows smoltcp's `wire` module. Each header has its own file with a
//! private `field` module naming its byte ranges, and a view `Packet<T: AsRef<[u8]>>`
//! (or `Frame`, `Tag`, `Header`) over a borrowed buffer. The view's `new_checked`
//! refuses a buffer too short for the header once; after that its accessors are plain
//! and cannot index out of bounds. Setters live in a separate `impl<T: AsMut<[u8]>>`
//! so that read-only code cannot write.
//!
//! On top of the views:
//! - [`parse`] turns a frame into the [`FlowKey`] of SPEC §5 plus the offsets that
//!   marking needs ([`PacketInfo`]), or says why it is not IP ([`Parsed::NonIp`]) or
//!   is malformed ([`Parsed::Malformed`]). It never allocates, never panics and never
//!   reads past the frame.
//! - [`set_dscp`] and [`set_pcp`] rewrite a parsed frame in place. The DSCP/ECN split
//!   is written once (in `ip`), and so is the RFC 1624 checksum update (in `checksum`).

pub mod checksum;
pub mod ethernet;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod ipv6ext;
mod mark;
mod parse;
pub mod sctp;
pub mod tcp;
pub mod udp;
pub mod vlan;

#[cfg(test)]
mod testutil;

pub use mark::{dscp, pcp, set_dscp, set_pcp};
pub use parse::{
    parse, parse_into, FlowKey, Fragment, Kind, MalformedReason, PacketInfo, Parsed,
    MAX_EXTENSION_HEADERS,
};

/// Byte ranges of header fields, as in smoltcp: `Field` is a fixed-size field,
/// `Rest` runs to the end of the header's buffer.
mod field {
    pub type Field = core::ops::Range<usize>;
    pub type Rest = core::ops::RangeFrom<usize>;
}

/// The buffer given to a view's `new_checked` is too short for the header (or for
/// the length the header itself declares).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

/// Reads a big-endian `u16` at `field`, which the caller's `check_len` has
/// already proven in bounds.
#[inline]
fn read_u16(data: &[u8], field: field::Field) -> u16 {
    let b = &data[field];
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
fn read_u32(data: &[u8], field: field::Field) -> u32 {
    let b = &data[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
fn write_u16(data: &mut [u8], field: field::Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}
