//! Test helpers: a seeded generator and builders of real frames.
//!
//! The builders write the bytes by hand (not through the views under test), so
//! the parser tests have an independent oracle.

/// xorshift64* (Vigna 2016): small, seeded, good enough to generate test input.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// An Ethernet header with `tags` as (TPID, TCI) pairs, outer first.
pub fn ethernet(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One's-complement checksum written independently of `wire::checksum`.
fn ref_checksum(header: &[u8]) -> u16 {
    let mut sum: u64 = header
        .chunks(2)
        .map(|c| u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub struct V4 {
    pub tos: u8,
    pub ident: u16,
    /// (more fragments, offset in 8-byte units)
    pub frag: (bool, u16),
    pub protocol: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(protocol: u8) -> Self {
        V4 {
            tos: 0,
            ident: 0x4242,
            frag: (false, 0),
            protocol,
            src: [10, 0, 0, 1],
            dst: [10, 20, 0, 2],
            options: Vec::new(),
        }
    }

    /// The header and `payload`, with a valid header checksum.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let header_len = 20 + self.options.len();
        let total = (header_len + payload.len()) as u16;
        let flags_off = (u16::from(self.frag.0) << 13) | self.frag.1;
        let mut p = vec![0x40 | (header_len / 4) as u8, self.tos];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&self.ident.to_be_bytes());
        p.extend_from_slice(&flags_off.to_be_bytes());
        p.extend_from_slice(&[64, self.protocol, 0, 0]);
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        p.extend_from_slice(&self.options);
        let c = ref_checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }
}

pub const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const V6_DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An IPv6 header (traffic class `tc`, flow label 0x12345) and `payload`.
pub fn ipv6(tc: u8, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60 | (tc >> 4), (tc << 4) | 0x1, 0x23, 0x45];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next_header, 64]);
    p.extend_from_slice(&V6_SRC);
    p.extend_from_slice(&V6_DST);
    p.extend_from_slice(payload);
    p
}

/// A generic extension header (hop-by-hop, routing, destination options) of
/// `(units + 1) * 8` bytes, padded with PadN, followed by `rest`.
pub fn ext(next_header: u8, units: u8, rest: &[u8]) -> Vec<u8> {
    let len = (usize::from(units) + 1) * 8;
    let mut h = vec![next_header, units, 0x01, (len - 4) as u8];
    h.resize(len, 0);
    h.extend_from_slice(rest);
    h
}

/// A fragment header (offset in 8-byte units), followed by `rest`.
pub fn frag(next_header: u8, offset: u16, more: bool, ident: u32, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next_header, 0];
    h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&ident.to_be_bytes());
    h.extend_from_slice(rest);
    h
}

/// An authentication header with a 12-byte ICV (payload length 4), followed by `rest`.
pub fn ah(next_header: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next_header, 4, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 7];
    h.extend_from_slice(&[0xaa; 12]);
    h.extend_from_slice(rest);
    h
}

pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An SCTP common header and an INIT chunk's first bytes.
pub fn sctp(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 1, 0, 0, 20]);
    h
}

/// An ICMP echo request header.
pub fn icmp_echo() -> Vec<u8> {
    vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 0]
}
