//! The parser: one frame in, the flow key of SPEC §5 and the offsets marking
//! needs out.
//!
//! What is accepted, and why:
//! - Ethernet II with up to two VLAN tags, outer first, each 0x8100 or 0x88a8
//!   (in either order: real networks mix them). A third tag, and any EtherType
//!   other than IPv4/IPv6 (ARP, LLDP, 802.3 lengths, ...), is not ours to
//!   classify: [`Parsed::NonIp`], forwarded byte for byte.
//! - IPv4 whose version is 4, IHL ≥ 5, and Total Length ≥ IHL × 4 and within the
//!   frame. Bytes after Total Length are Ethernet padding, not an error. The
//!   header checksum is not verified: a bump in the wire forwards what it gets and
//!   the receiver judges; marking keeps a valid checksum valid.
//! - IPv6 whose version is 6 and whose Payload Length is within the frame. The
//!   hop-by-hop, routing, fragment, destination-options and authentication (AH)
//!   headers are walked, at most [`MAX_EXTENSION_HEADERS`] of them, in any order
//!   (lenient: finding the upper layer is our job, enforcing RFC 8200's order is not).
//! - AH is an extension header in IPv6 (SPEC §5), so an AH-protected IPv6 flow has the
//!   protocol and ports AH protects (AH authenticates, it does not hide them). In IPv4,
//!   AH (51) is the header's protocol and the key's, with no ports: a policy
//!   `"protocol": "ah"` matches IPv4 AH, and `policy check` says so of one with an IPv6
//!   prefix.
//! - TCP, UDP and SCTP give ports (and TCP its flags); every other protocol (ICMP,
//!   ICMPv6, ESP, GRE, IPv4's AH, ...) gives its number only, ports 0.
//! - A non-first fragment (IPv4 offset ≠ 0, IPv6 fragment header offset ≠ 0) has no
//!   upper-layer header: ports 0, and [`FlowKey::PORTS_UNKNOWN`] if its protocol has
//!   ports (TCP, UDP, SCTP). Its protocol is the IPv4 Protocol, or the IPv6 fragment
//!   header's Next Header; one without ports (ESP, GRE, ICMP) has the key its whole
//!   packets have (not so in IPv6 when an extension header such as AH follows the
//!   fragment header: whole packets are keyed on what it protects).
//! - An unfragmented packet or a first fragment whose TCP (20 bytes), UDP (8) or
//!   SCTP (12) header does not fit in the IP payload is malformed
//!   ([`MalformedReason::Truncated`]): RFC 8200 §4.5 requires the first fragment to
//!   hold the whole upper-layer header, and RFC 1858 treats tiny first fragments
//!   as an attack on exactly this kind of port filter. Nothing beyond the fixed
//!   L4 header is checked (TCP data offset, UDP length): classification does not
//!   read it, and marking does not touch L4.

use super::ethernet::{self, ethertype};
use super::ip::protocol;
use super::{ipv4, ipv6, ipv6ext, sctp, tcp, udp, vlan, Truncated};

/// The flow key of SPEC §5. Compact, fixed size, hashed by the per-worker flow cache:
/// 40 bytes without padding, aligned to 8, so that it reads, hashes and compares as five
/// machine words ([`FlowKey::words`]).
#[derive(Clone, Copy, Debug, Eq)]
#[repr(C, align(8))]
pub struct FlowKey {
    /// IPv4 addresses in the first 4 bytes, the rest zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// 0 for protocols without ports, and when ports are unknown.
    pub src_port: u16,
    pub dst_port: u16,
    /// Outer VLAN ID, or [`FlowKey::NO_VLAN`].
    pub vlan: u16,
    pub protocol: u8,
    /// [`FlowKey::IPV6`], [`FlowKey::INBOUND`], [`FlowKey::PORTS_UNKNOWN`] bits.
    pub flags: u8,
}

impl FlowKey {
    /// No VLAN tag: a VID has 12 bits, so this cannot collide with one.
    pub const NO_VLAN: u16 = 0xffff;
    /// The addresses are IPv6.
    pub const IPV6: u8 = 0x01;
    /// The frame arrived on the outside port (SPEC §2 `direction`).
    pub const INBOUND: u8 = 0x02;
    /// A non-first fragment: the ports are not in this packet.
    pub const PORTS_UNKNOWN: u8 = 0x04;

    /// The key as five words: equal keys have equal words and different keys different
    /// ones (every byte of the key is in them).
    #[inline]
    pub fn words(&self) -> [u64; 5] {
        let half = |b: &[u8; 16], i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        [
            half(&self.src, 0),
            half(&self.src, 8),
            half(&self.dst, 0),
            half(&self.dst, 8),
            u64::from(self.src_port)
                | u64::from(self.dst_port) << 16
                | u64::from(self.vlan) << 32
                | u64::from(self.protocol) << 48
                | u64::from(self.flags) << 56,
        ]
    }

    /// The key whose [`words`](FlowKey::words) are `w`.
    #[inline]
    pub fn from_words(w: [u64; 5]) -> FlowKey {
        let half = |a: u64, b: u64| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&a.to_le_bytes());
            bytes[8..].copy_from_slice(&b.to_le_bytes());
            bytes
        };
        FlowKey {
            src: half(w[0], w[1]),
            dst: half(w[2], w[3]),
            src_port: w[4] as u16,
            dst_port: (w[4] >> 16) as u16,
            vlan: (w[4] >> 32) as u16,
            protocol: (w[4] >> 48) as u8,
            flags: (w[4] >> 56) as u8,
        }
    }

    #[inline]
    pub fn is_ipv6(&self) -> bool {
        self.flags & Self::IPV6 != 0
    }

    #[inline]
    pub fn is_inbound(&self) -> bool {
        self.flags & Self::INBOUND != 0
    }

    #[inline]
    pub fn ports_unknown(&self) -> bool {
        self.flags & Self::PORTS_UNKNOWN != 0
    }

    /// The source address as `std::net::IpAddr`, for classification and display.
    pub fn src_addr(&self) -> std::net::IpAddr {
        addr(&self.src, self.is_ipv6())
    }

    pub fn dst_addr(&self) -> std::net::IpAddr {
        addr(&self.dst, self.is_ipv6())
    }
}

impl PartialEq for FlowKey {
    /// Word by word, without branches: the flow cache compares keys on every hit.
    #[inline]
    fn eq(&self, other: &FlowKey) -> bool {
        let (a, b) = (self.words(), other.words());
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
    }
}

impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.words().hash(state);
    }
}

fn addr(bytes: &[u8; 16], v6: bool) -> std::net::IpAddr {
    if v6 {
        std::net::IpAddr::from(*bytes)
    } else {
        std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// Where a packet sits in its datagram. The identification is what a fragment
/// table keys on, with source, destination and protocol.
///
/// For IPv6 a first fragment's key carries the upper-layer protocol found after
/// all extension headers, a non-first one the fragment header's Next Header:
/// they differ when extension headers follow the fragment header, which is why
/// the fragment table keys IPv6 datagrams without the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// A whole datagram (an IPv6 atomic fragment, offset 0 without M, counts as
    /// whole: RFC 6946).
    None,
    /// Offset 0, more fragments follow: carries the ports.
    First { id: u32 },
    /// Offset ≠ 0: no ports.
    NonFirst { id: u32 },
}

/// What the data path needs from one parsed IP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    pub key: FlowKey,
    /// Offset of the IP header in the frame.
    pub l3_offset: u16,
    /// Offset of the outer VLAN tag's TCI (for the 802.1p PCP rewrite).
    pub outer_tag_offset: Option<u16>,
    /// Offset of the upper-layer header (after IPv4 options or IPv6 extension
    /// headers); `None` for a non-first fragment.
    pub l4_offset: Option<u16>,
    pub fragment: Fragment,
    /// The TCP flags octet ([`tcp::flags`]); 0 if not TCP or unknown.
    pub tcp_flags: u8,
}

impl PacketInfo {
    /// A placeholder to parse into ([`parse_into`]).
    pub const EMPTY: PacketInfo = PacketInfo {
        key: FlowKey {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            vlan: FlowKey::NO_VLAN,
            protocol: 0,
            flags: 0,
        },
        l3_offset: 0,
        outer_tag_offset: None,
        l4_offset: None,
        fragment: Fragment::None,
        tcp_flags: 0,
    };
}

/// The parser's verdict on a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, three VLAN tags, ...): pass it through.
    NonIp,
    Ip(PacketInfo),
    Malformed(MalformedReason),
}

/// Why a frame is malformed; [`label`](Self::label) is the Prometheus `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MalformedReason {
    /// The frame ends inside a header: Ethernet, a VLAN tag, the fixed IPv4 or
    /// IPv6 header, an IPv6 extension header, or the TCP/UDP/SCTP header.
    Truncated,
    /// EtherType IPv4 with version ≠ 4, or EtherType IPv6 with version ≠ 6.
    BadIpVersion,
    /// IPv4 IHL below 5, or an IPv6 AH whose length is below its 12 fixed bytes.
    BadIpHeaderLength,
    /// IPv4 Total Length below the header length or beyond the frame; IPv6
    /// Payload Length beyond the frame.
    BadTotalLength,
    /// More than [`MAX_EXTENSION_HEADERS`] IPv6 extension headers.
    TooManyExtensionHeaders,
}

impl MalformedReason {
    /// Every reason, in `as usize` order: per-worker counters are an array
    /// indexed by `reason as usize`.
    pub const ALL: [MalformedReason; 5] = [
        MalformedReason::Truncated,
        MalformedReason::BadIpVersion,
        MalformedReason::BadIpHeaderLength,
        MalformedReason::BadTotalLength,
        MalformedReason::TooManyExtensionHeaders,
    ];

    /// The `reason` label of `qosgw_malformed_packets_total`.
    pub fn label(&self) -> &'static str {
        match self {
            MalformedReason::Truncated => "truncated",
            MalformedReason::BadIpVersion => "bad_ip_version",
            MalformedReason::BadIpHeaderLength => "bad_ip_header_length",
            MalformedReason::BadTotalLength => "bad_total_length",
            MalformedReason::TooManyExtensionHeaders => "too_many_extension_headers",
        }
    }
}

impl From<Truncated> for MalformedReason {
    #[inline]
    fn from(_: Truncated) -> Self {
        MalformedReason::Truncated
    }
}

/// How many IPv6 extension headers the parser walks before giving up. RFC 8200
/// allows each at most once (destination options twice), so a legitimate packet
/// has at most 6 that the parser walks (hop-by-hop, routing, fragment, AH, two
/// destination options); a longer chain is an attack on parsers like this one.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Parses `frame` (Ethernet header first, no FCS). `inbound` sets
/// [`FlowKey::INBOUND`]. Never panics, never reads past `frame`, never allocates.
#[inline]
pub fn parse(frame: &[u8], inbound: bool) -> Parsed {
    let mut info = PacketInfo::EMPTY;
    match parse_into(frame, inbound, &mut info) {
        Kind::Ip => Parsed::Ip(info),
        Kind::NonIp => Parsed::NonIp,
        Kind::Malformed(reason) => Parsed::Malformed(reason),
    }
}

/// What [`parse_into`] found: [`Parsed`] without the packet information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ip,
    NonIp,
    Malformed(MalformedReason),
}

/// [`parse`], writing an IP frame's information into `info` in place (a worker parses a
/// burst into an array this way, instead of moving each result through the stack);
/// `info` means nothing unless the answer is [`Kind::Ip`].
#[inline]
pub fn parse_into(frame: &[u8], inbound: bool, info: &mut PacketInfo) -> Kind {
    if fast_path(frame, inbound, info) {
        return Kind::Ip;
    }
    match parse_general(frame, inbound) {
        Parsed::Ip(general) => {
            *info = general;
            Kind::Ip
        }
        Parsed::NonIp => Kind::NonIp,
        Parsed::Malformed(reason) => Kind::Malformed(reason),
    }
}

/// The general parser alone (every frame the fast path declines goes here; tests compare
/// the two). Kept out of line so that `parse` inlines as just the fast path and a call.
#[inline(never)]
fn parse_general(frame: &[u8], inbound: bool) -> Parsed {
    match parse_frame(frame, inbound) {
        Ok(Some(info)) => Parsed::Ip(info),
        Ok(None) => Parsed::NonIp,
        Err(reason) => Parsed::Malformed(reason),
    }
}

/// Most traffic is untagged IPv4 without options or fragmentation, or IPv6 without
/// extension headers, carrying TCP or UDP. This reads such a frame in one pass with a
/// handful of checks, and gives exactly what the general parser would (a property test
/// holds it to that); anything else, including every frame the general parser would find
/// malformed, returns `None` and goes the general way. The header views' per-field checks
/// cost more than half the parse time of these frames.
#[inline]
fn fast_path(frame: &[u8], inbound: bool, out: &mut PacketInfo) -> bool {
    fast_path_checked(frame, inbound, out).is_some()
}

#[inline(always)]
fn fast_path_checked(frame: &[u8], inbound: bool, out: &mut PacketInfo) -> Option<()> {
    const ETH: usize = ethernet::HEADER_LEN;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    // The key is put together as the five words it is hashed as, and stored whole: a
    // field-by-field store read back as words right after (to hash it) made every load
    // wait for the stores to retire (a failed store-to-load forward: ~15 % of the
    // worker's samples in a profile of `qosgw bench`).
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let (addresses, protocol, l4_at, l4_end, flags) = match ethertype {
        ethertype::IPV4 => {
            let ip: &[u8; 20] = frame.get(ETH..ETH + 20)?.try_into().ok()?;
            // Version 4, IHL 5; neither More Fragments nor an offset.
            if ip[0] != 0x45 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            let addr = |b: &[u8]| u64::from(u32::from_le_bytes(b.try_into().unwrap_or_default()));
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let addresses = [addr(&ip[12..16]), 0, addr(&ip[16..20]), 0];
            (addresses, ip[9], ETH + 20, ETH + total, 0)
        }
        ethertype::IPV6 => {
            let ip: &[u8; 40] = frame.get(ETH..ETH + 40)?.try_into().ok()?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let addresses = [
                word(&ip[8..16]),
                word(&ip[16..24]),
                word(&ip[24..32]),
                word(&ip[32..40]),
            ];
            (
                addresses,
                ip[6],
                ETH + 40,
                ETH + 40 + payload,
                FlowKey::IPV6,
            )
        }
        _ => return None,
    };
    // The IP payload lies within the frame, and the transport header within the payload.
    let payload = frame.get(l4_at..l4_end)?;
    // Both ports in one load: source in the high half, destination in the low.
    let ports = |h: &[u8]| u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let (ports, tcp_flags) = match protocol {
        protocol::TCP => {
            let h: &[u8; tcp::HEADER_LEN] = payload.get(..tcp::HEADER_LEN)?.try_into().ok()?;
            (ports(h), h[13])
        }
        protocol::UDP => {
            let h: &[u8; udp::HEADER_LEN] = payload.get(..udp::HEADER_LEN)?.try_into().ok()?;
            (ports(h), 0)
        }
        _ => return None,
    };
    let flags = flags | if inbound { FlowKey::INBOUND } else { 0 };
    let [a0, a1, a2, a3] = addresses;
    out.key = FlowKey::from_words([
        a0,
        a1,
        a2,
        a3,
        // The key's source port is its low 16 bits, the destination the next 16.
        u64::from(ports.rotate_left(16))
            | u64::from(FlowKey::NO_VLAN) << 32
            | u64::from(protocol) << 48
            | u64::from(flags) << 56,
    ]);
    out.l3_offset = ETH as u16;
    out.outer_tag_offset = None;
    out.l4_offset = Some(l4_at as u16);
    out.fragment = Fragment::None;
    out.tcp_flags = tcp_flags;
    Some(())
}

fn parse_frame(frame: &[u8], inbound: bool) -> Result<Option<PacketInfo>, MalformedReason> {
    let eth = ethernet::Frame::new_checked(frame)?;
    let mut ethertype = eth.ethertype();
    let mut offset = ethernet::HEADER_LEN;
    let mut vlan = FlowKey::NO_VLAN;
    let mut outer_tag_offset = None;
    for _ in 0..2 {
        if ethertype != ethertype::VLAN && ethertype != ethertype::QINQ {
            break;
        }
        let tag = vlan::Tag::new_checked(&frame[offset..])?;
        if outer_tag_offset.is_none() {
            // Offsets fit in u16: the parser never goes more than ~16 KiB deep.
            outer_tag_offset = Some(offset as u16);
            vlan = tag.vid();
        }
        ethertype = tag.ethertype();
        offset += vlan::HEADER_LEN;
    }

    let mut info = PacketInfo {
        key: FlowKey {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            vlan,
            protocol: 0,
            flags: if inbound { FlowKey::INBOUND } else { 0 },
        },
        l3_offset: offset as u16,
        outer_tag_offset,
        l4_offset: None,
        fragment: Fragment::None,
        tcp_flags: 0,
    };
    let l3 = &frame[offset..];
    let l4 = match ethertype {
        ethertype::IPV4 => parse_ipv4(l3, &mut info)?,
        ethertype::IPV6 => parse_ipv6(l3, &mut info)?,
        _ => return Ok(None),
    };
    match l4 {
        Some((l4_start, payload)) => {
            info.l4_offset = Some((offset + l4_start) as u16);
            parse_ports(payload, &mut info)?;
        }
        // Only a protocol with ports can miss them: a non-first fragment of ESP, GRE or
        // ICMP has the key of its datagram's whole packets (ports 0): one flow.
        None if control::policy::has_ports(info.key.protocol) => {
            info.key.flags |= FlowKey::PORTS_UNKNOWN
        }
        None => {}
    }
    Ok(Some(info))
}

/// The version nibble, checked before anything else so that a packet of the
/// wrong version is reported as such and not by some length it happens to have.
#[inline]
fn check_version(l3: &[u8], version: u8) -> Result<(), MalformedReason> {
    match l3.first() {
        None => Err(MalformedReason::Truncated),
        Some(b) if b >> 4 != version => Err(MalformedReason::BadIpVersion),
        Some(_) => Ok(()),
    }
}

/// Fills addresses, protocol and fragment. Returns the upper-layer header's
/// offset from `l3` and the upper-layer bytes, or `None` for a non-first fragment.
fn parse_ipv4<'a>(
    l3: &'a [u8],
    info: &mut PacketInfo,
) -> Result<Option<(usize, &'a [u8])>, MalformedReason> {
    check_version(l3, 4)?;
    let ip = ipv4::Packet::new_checked(l3)?;
    info.key.src[..4].copy_from_slice(&ip.src_addr());
    info.key.dst[..4].copy_from_slice(&ip.dst_addr());
    info.key.protocol = ip.protocol();
    let id = u32::from(ip.ident());
    if ip.frag_offset() != 0 {
        info.fragment = Fragment::NonFirst { id };
        return Ok(None);
    }
    if ip.more_frags() {
        info.fragment = Fragment::First { id };
    }
    let header_len = ip.header_len();
    let payload = &l3[header_len..usize::from(ip.total_len())];
    Ok(Some((header_len, payload)))
}

/// As [`parse_ipv4`], walking the extension headers to the upper layer.
fn parse_ipv6<'a>(
    l3: &'a [u8],
    info: &mut PacketInfo,
) -> Result<Option<(usize, &'a [u8])>, MalformedReason> {
    check_version(l3, 6)?;
    let ip = ipv6::Packet::new_checked(l3)?;
    info.key.src = ip.src_addr();
    info.key.dst = ip.dst_addr();
    info.key.flags |= FlowKey::IPV6;
    // Each view below checks its own length against what is left, so `at` never
    // passes the end of `payload` and the slicing cannot panic.
    let payload = &l3[ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(ip.payload_len())];
    let mut next = ip.next_header();
    let mut at = 0;
    let mut walked = 0;
    loop {
        let is_generic = matches!(
            next,
            protocol::HOPOPT | protocol::IPV6_ROUTE | protocol::IPV6_OPTS
        );
        if !is_generic && next != protocol::IPV6_FRAG && next != protocol::AH {
            break;
        }
        walked += 1;
        if walked > MAX_EXTENSION_HEADERS {
            return Err(MalformedReason::TooManyExtensionHeaders);
        }
        if is_generic {
            let header = ipv6ext::Header::new_checked(&payload[at..])?;
            next = header.next_header();
            at += header.header_len();
        } else if next == protocol::AH {
            let header = ipv6ext::AuthHeader::new_checked(&payload[at..])?;
            if header.header_len() < ipv6ext::AH_MIN_LEN {
                // Shorter than its own fixed fields: what follows would be read from them.
                return Err(MalformedReason::BadIpHeaderLength);
            }
            next = header.next_header();
            at += header.header_len();
        } else {
            let header = ipv6ext::FragmentHeader::new_checked(&payload[at..])?;
            next = header.next_header();
            at += header.header_len();
            let id = header.ident();
            if header.frag_offset() != 0 {
                // What follows is the middle of a datagram, not headers.
                info.key.protocol = next;
                info.fragment = Fragment::NonFirst { id };
                return Ok(None);
            }
            if header.more_frags() {
                info.fragment = Fragment::First { id };
            }
        }
    }
    info.key.protocol = next;
    Ok(Some((ipv6::HEADER_LEN + at, &payload[at..])))
}

/// Ports (and TCP flags) from the upper-layer header, for the protocols that
/// have them.
#[inline]
fn parse_ports(l4: &[u8], info: &mut PacketInfo) -> Result<(), MalformedReason> {
    let key = &mut info.key;
    match key.protocol {
        protocol::TCP => {
            let tcp = tcp::Packet::new_checked(l4)?;
            key.src_port = tcp.src_port();
            key.dst_port = tcp.dst_port();
            info.tcp_flags = tcp.flags();
        }
        protocol::UDP => {
            let udp = udp::Packet::new_checked(l4)?;
            key.src_port = udp.src_port();
            key.dst_port = udp.dst_port();
        }
        protocol::SCTP => {
            let sctp = sctp::Packet::new_checked(l4)?;
            key.src_port = sctp.src_port();
            key.dst_port = sctp.dst_port();
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
