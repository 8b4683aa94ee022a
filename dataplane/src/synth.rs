//! Builds well-formed Ethernet frames from a description: the sample capture, the replay
//! tests and `qosgw bench` all make their traffic with this. Checksums (IPv4 header, TCP,
//! UDP, ICMP) are computed, so the frames are what a real host would send.

use std::net::IpAddr;

/// IP protocol numbers (the parser's), for `L4::Other`.
pub use crate::wire::ip::protocol as proto;

/// The transport part of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    Sctp {
        src: u16,
        dst: u16,
    },
    /// ICMP echo request (ICMPv6 on IPv6).
    Echo,
    /// Any other protocol, carried as opaque payload (ESP, GRE, ...).
    Other(u8),
}

impl L4 {
    pub fn protocol(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Sctp { .. } => proto::SCTP,
            L4::Echo if v6 => proto::ICMPV6,
            L4::Echo => proto::ICMP,
            L4::Other(p) => *p,
        }
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An IP packet in an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// Application payload bytes after the transport header (a repeating pattern), unless
    /// `data` gives them.
    pub payload: usize,
    pub data: Option<Vec<u8>>,
    /// IPv4 TOS / IPv6 Traffic Class (DSCP << 2 | ECN).
    pub tos: u8,
    /// VLAN IDs, outer first (one tag: 802.1Q; two: 802.1ad outer, 802.1Q inner).
    pub vlans: Vec<u16>,
    /// IPv4 options bytes (a multiple of 4, at most 40).
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers to insert, by next-header number: 0, 43 and 60 are 8 bytes
    /// each, 51 (AH) is 24 (a 12-byte ICV).
    pub ipv6_ext: Vec<u8>,
    /// IPv4 identification.
    pub ip_id: u16,
}

impl Packet {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Packet {
        Packet {
            src,
            dst,
            l4,
            payload: 0,
            data: None,
            tos: 0,
            vlans: Vec::new(),
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            ip_id: 1,
        }
    }

    pub fn payload(mut self, n: usize) -> Packet {
        self.payload = n;
        self
    }

    /// Exact payload bytes (e.g. a real DNS query).
    pub fn data(mut self, bytes: &[u8]) -> Packet {
        self.data = Some(bytes.to_vec());
        self
    }

    pub fn tos(mut self, tos: u8) -> Packet {
        self.tos = tos;
        self
    }

    pub fn vlans(mut self, ids: &[u16]) -> Packet {
        self.vlans = ids.to_vec();
        self
    }

    pub fn ipv4_options(mut self, opts: &[u8]) -> Packet {
        self.ipv4_options = opts.to_vec();
        self
    }

    pub fn ipv6_ext(mut self, headers: &[u8]) -> Packet {
        self.ipv6_ext = headers.to_vec();
        self
    }

    pub fn ip_id(mut self, id: u16) -> Packet {
        self.ip_id = id;
        self
    }

    /// The frame's bytes: Ethernet header (and tags), IP header, transport header, payload
    /// (a repeating byte pattern), with every checksum computed.
    pub fn build(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        let mut f = ethernet_header(&self.vlans, if v6 { 0x86dd } else { 0x0800 });
        let l4 = self.transport();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 20 + self.ipv4_options.len();
                let total = (ihl + l4.len()) as u16;
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | (ihl / 4) as u8;
                h[1] = self.tos;
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
                h[6] = 0x40; // don't fragment
                h[8] = 64;
                h[9] = self.l4.protocol(false);
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                h.extend_from_slice(&self.ipv4_options);
                let c = checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext_len: usize = self.ipv6_ext.iter().map(|&h| ext_header_len(h)).sum();
                let mut h = vec![0u8; 40];
                h[0] = 0x60 | (self.tos >> 4);
                h[1] = self.tos << 4;
                h[4..6].copy_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                h[6] = self
                    .ipv6_ext
                    .first()
                    .copied()
                    .unwrap_or(self.l4.protocol(true));
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                for (i, &this) in self.ipv6_ext.iter().enumerate() {
                    let next = self
                        .ipv6_ext
                        .get(i + 1)
                        .copied()
                        .unwrap_or(self.l4.protocol(true));
                    if this == proto::AH {
                        // Next header, length 4 ((4 + 2) × 4 bytes), reserved, SPI,
                        // sequence number, ICV.
                        h.extend_from_slice(&[next, 4, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 1]);
                        h.extend_from_slice(&[0xa5; 12]);
                    } else {
                        // Next header, length 0 (8 bytes), then a PadN option filling the
                        // rest.
                        h.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
                f.extend_from_slice(&h);
            }
            _ => panic!("source and destination must be the same IP version"),
        }
        f.extend_from_slice(&l4);
        pad_to_minimum(&mut f);
        f
    }

    /// Transport header and payload, with its checksum.
    fn transport(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        let payload: Vec<u8> = match &self.data {
            Some(d) => d.clone(),
            None => (0..self.payload).map(|i| (i % 251) as u8).collect(),
        };
        let (mut seg, csum_at) = match self.l4 {
            L4::Tcp { src, dst, flags } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&src.to_be_bytes());
                t[2..4].copy_from_slice(&dst.to_be_bytes());
                t[4..8].copy_from_slice(&1000u32.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = flags;
                t[14..16].copy_from_slice(&65535u16.to_be_bytes());
                (t, Some(16))
            }
            L4::Udp { src, dst } => {
                let mut t = vec![0u8; 8];
                t[0..2].copy_from_slice(&src.to_be_bytes());
                t[2..4].copy_from_slice(&dst.to_be_bytes());
                t[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                (t, Some(6))
            }
            L4::Sctp { src, dst } => {
                let mut t = vec![0u8; 12];
                t[0..2].copy_from_slice(&src.to_be_bytes());
                t[2..4].copy_from_slice(&dst.to_be_bytes());
                (t, None)
            }
            L4::Echo => (vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1], Some(2)),
            L4::Other(_) => (Vec::new(), None),
        };
        seg.extend_from_slice(&payload);
        if let Some(at) = csum_at {
            let c = match (self.l4.clone(), self.src, self.dst) {
                (L4::Echo, IpAddr::V4(_), _) => checksum(&[&seg]),
                (_, src, dst) => {
                    let pseudo = pseudo_header(src, dst, self.l4.protocol(v6), seg.len());
                    checksum(&[&pseudo, &seg])
                }
            };
            // UDP sends an all-zero checksum as all ones (zero means "none").
            let c = if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                0xffff
            } else {
                c
            };
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        seg
    }
}

/// An ARP request (a non-IP frame) from `sender` for `target`.
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    pad_to_minimum(&mut f);
    f
}

const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

fn ethernet_header(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (i, vid) in vlans.iter().enumerate() {
        // With two tags the outer one is an 802.1ad service tag.
        let tpid: u16 = if i == 0 && vlans.len() > 1 {
            0x88a8
        } else {
            0x8100
        };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// The size of the IPv6 extension header `next_header` that [`Packet::build`] writes.
fn ext_header_len(next_header: u8) -> usize {
    if next_header == proto::AH {
        24
    } else {
        8
    }
}

/// Ethernet frames are at least 60 bytes without FCS; short ones carry zero padding.
fn pad_to_minimum(f: &mut Vec<u8>) {
    if f.len() < 60 {
        f.resize(60, 0);
    }
}

fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, protocol]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => unreachable!("checked by build"),
    }
    p
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each of even length
/// except possibly the last.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_udp_frame_has_valid_checksums() {
        let f = Packet::new(
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            L4::Udp {
                src: 5000,
                dst: 16384,
            },
        )
        .payload(100)
        .tos(0xb9)
        .build();
        assert_eq!(f.len(), 14 + 20 + 8 + 100);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[15], 0xb9);
        assert_eq!(
            checksum(&[&f[14..34]]),
            0,
            "IPv4 header checksum verifies to zero"
        );
        let pseudo = pseudo_header(ip("10.0.0.1"), ip("10.0.0.2"), 17, 108);
        assert_eq!(checksum(&[&pseudo, &f[34..]]), 0, "UDP checksum verifies");
    }

    #[test]
    fn ipv6_with_extension_headers_and_qinq() {
        let f = Packet::new(
            ip("2001:db8::1"),
            ip("2001:db8::2"),
            L4::Tcp {
                src: 1,
                dst: 443,
                flags: TCP_SYN,
            },
        )
        .vlans(&[100, 200])
        .ipv6_ext(&[0, 60])
        .tos(0x2e << 2)
        .build();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x86, 0xdd]);
        let ip6 = &f[22..];
        assert_eq!(ip6[6], 0, "first next header is hop-by-hop");
        assert_eq!(ip6[40], 60, "then destination options");
        assert_eq!(ip6[48], 6, "then TCP");
        assert_eq!(u16::from_be_bytes([ip6[4], ip6[5]]), 16 + 20);
        assert_eq!(((ip6[0] & 0x0f) << 4) | (ip6[1] >> 4), 0x2e << 2);
    }

    #[test]
    fn short_frames_are_padded_and_options_counted() {
        let f = Packet::new(ip("10.0.0.1"), ip("10.0.0.2"), L4::Other(proto::ESP))
            .ipv4_options(&[1, 1, 1, 0])
            .build();
        assert_eq!(f.len(), 60);
        assert_eq!(f[14], 0x46);
        assert_eq!(arp_request([10, 0, 0, 1], [10, 0, 0, 2]).len(), 60);
    }
}
