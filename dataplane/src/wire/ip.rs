//! What IPv4 and IPv6 share: protocol numbers and the DSCP/ECN split of the
//! IPv4 TOS byte and the IPv6 Traffic Class (RFC 2474, RFC 3168).

/// IANA protocol numbers (IPv4 Protocol, IPv6 Next Header) that the parser acts on.
pub mod protocol {
    /// IPv6 hop-by-hop options (extension header).
    pub const HOPOPT: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// IPv6 routing header (extension header).
    pub const IPV6_ROUTE: u8 = 43;
    /// IPv6 fragment header (extension header).
    pub const IPV6_FRAG: u8 = 44;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    /// Authentication header: an extension header in IPv6, a protocol in IPv4.
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const IPV6_NONXT: u8 = 59;
    /// IPv6 destination options (extension header).
    pub const IPV6_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// The DSCP, the upper six bits of a TOS / Traffic Class octet.
#[inline]
pub fn dscp(tos: u8) -> u8 {
    tos >> 2
}

/// The ECN codepoint, the lower two bits of a TOS / Traffic Class octet.
#[inline]
pub fn ecn(tos: u8) -> u8 {
    tos & 0x03
}

/// `tos` with its DSCP replaced by the low six bits of `dscp` and its ECN bits
/// kept: ECN belongs to the endpoints and routers signalling congestion (RFC 3168),
/// never to a marker.
#[inline]
pub fn with_dscp(tos: u8, dscp: u8) -> u8 {
    (dscp << 2) | ecn(tos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join() {
        // EF (46) with ECT(0): 0b101110_10.
        assert_eq!(dscp(0xba), 46);
        assert_eq!(ecn(0xba), 0b10);
        assert_eq!(with_dscp(0xba, 8), 0x22);
        for tos in 0..=255u8 {
            for d in 0..64u8 {
                let t = with_dscp(tos, d);
                assert_eq!((dscp(t), ecn(t)), (d, ecn(tos)));
            }
        }
        // Only six bits of the DSCP argument are used.
        assert_eq!(with_dscp(0x03, 0xff), 0xff);
        assert_eq!(with_dscp(0x00, 0x40), 0x00);
    }
}
