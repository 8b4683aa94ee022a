//! The policy model (SPEC §2): what a policy matches, what it does, and the
//! precedence key that decides which of several matching policies wins.
//!
//! Parsing a file into these types is in `parse`; building the fast lookup is
//! in `table`.

use std::fmt;
use std::net::IpAddr;

use crate::json::Pos;

/// A packet's direction: `Outbound` is inside→outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// A policy's `direction` field: a filter, never a condition (it adds no
/// specificity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyDirection {
    #[default]
    Outbound,
    Inbound,
    Both,
}

impl PolicyDirection {
    pub fn admits(self, d: Direction) -> bool {
        matches!(
            (self, d),
            (PolicyDirection::Both, _)
                | (PolicyDirection::Outbound, Direction::Outbound)
                | (PolicyDirection::Inbound, Direction::Inbound)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyDirection::Outbound => "outbound",
            PolicyDirection::Inbound => "inbound",
            PolicyDirection::Both => "both",
        }
    }
}

/// The flow key a policy is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatchKey {
    pub direction: Direction,
    /// Outer VLAN ID, `None` if untagged.
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// (source, destination); `None` when the protocol has no ports or they are
    /// unknown (a non-first fragment): then no port condition can match.
    pub ports: Option<(u16, u16)>,
}

/// Index of a policy in its table, in file order.
pub type PolicyId = u32;

/// IP protocol numbers that have 16-bit source and destination ports.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Whether a port condition can apply to this protocol.
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}

/// Protocol names accepted in a policy file, with their numbers.
pub const PROTOCOL_NAMES: [(&str, u8); 8] = [
    ("tcp", 6),
    ("udp", 17),
    ("icmp", 1),
    ("icmpv6", 58),
    ("esp", 50),
    ("ah", 51),
    ("gre", 47),
    ("sctp", 132),
];

/// The name of a protocol number, or the number itself.
pub fn protocol_name(p: u8) -> String {
    match PROTOCOL_NAMES.iter().find(|(_, n)| *n == p) {
        Some((name, _)) => (*name).to_string(),
        None => p.to_string(),
    }
}

/// An IPv4 or IPv6 prefix whose host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix; an error if `len` is too long for the family or host bits
    /// are set (the message names the prefix the user probably meant).
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, String> {
        let max = max_len(addr);
        if len > max {
            return Err(format!(
                "prefix length /{len} is longer than {max}, the length of an {} address",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
        let bits = addr_bits(addr);
        let masked = bits & mask(len, max);
        if masked != bits {
            let fixed = Prefix {
                addr: bits_addr(masked, addr.is_ipv4()),
                len,
            };
            return Err(format!(
                "\"{addr}/{len}\" has host bits set beyond /{len}; did you mean \"{fixed}\"?"
            ));
        }
        Ok(Prefix { addr, len })
    }

    /// The address covering only itself (/32 or /128).
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix {
            addr,
            len: max_len(addr),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The address bits as a number (IPv4 in the low 32 bits).
    pub fn bits(&self) -> u128 {
        addr_bits(self.addr)
    }

    /// The netmask as a number, in the same layout as [`Prefix::bits`].
    pub fn mask(&self) -> u128 {
        mask(self.len, max_len(self.addr))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && addr_bits(ip) & self.mask() == self.bits()
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.covers(other) || other.covers(self)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub(crate) fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn bits_addr(bits: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((bits as u32).into())
    } else {
        IpAddr::V6(bits.into())
    }
}

/// The mask of a `len`-bit prefix of a `width`-bit address.
fn mask(len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    all & !((1u128 << (width - len)) - 1)
}

/// An inclusive port range, `1 ≤ lo ≤ hi ≤ 65535`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange { lo: port, hi: port }
    }

    /// The number of ports covered.
    pub fn size(&self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    pub fn covers(&self, other: &PortRange) -> bool {
        self.lo <= other.lo && other.hi <= self.hi
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Who shares one shaper (`throttle_per`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ThrottleScope {
    /// One shaper for every flow matching the policy, across all workers.
    #[default]
    Policy,
    /// One shaper per inside host address.
    Host,
    /// One shaper per flow.
    Flow,
}

impl ThrottleScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleScope::Policy => "policy",
            ThrottleScope::Host => "host",
            ThrottleScope::Flow => "flow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Throttle {
    pub rate_bps: u64,
    pub scope: ThrottleScope,
    /// Token-bucket depth in bytes.
    pub burst_bytes: u64,
}

/// The default burst: the larger of two full-size frames and 2 ms at `rate_bps`.
pub fn default_burst(rate_bps: u64) -> u64 {
    (2 * 1514).max(rate_bps / 4000)
}

/// One policy, validated. Construct it from a file with
/// [`crate::parse_policies`]; the fields are public so tests and tools can
/// build policies directly (`Policy::new` gives the defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub direction: PolicyDirection,
    pub src_prefix: Option<Prefix>,
    pub dst_prefix: Option<Prefix>,
    /// `None` is `any`.
    pub protocol: Option<u8>,
    pub src_port: Option<PortRange>,
    pub dst_port: Option<PortRange>,
    pub vlan: Option<u16>,
    pub dscp: Option<u8>,
    pub priority_8021p: Option<u8>,
    pub throttle: Option<Throttle>,
    pub precedence: u8,
    /// Where the policy's `{` is in its file (line 0 if not from a file).
    pub location: Pos,
}

/// The match conditions that count for precedence, heaviest first (SPEC §2,
/// "Which policy wins", steps 3 and 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    SrcPrefix,
    DstPrefix,
    SrcPort,
    DstPort,
    Protocol,
    Vlan,
}

impl Condition {
    /// All conditions, heaviest first.
    pub const ALL: [Condition; 6] = [
        Condition::SrcPrefix,
        Condition::DstPrefix,
        Condition::SrcPort,
        Condition::DstPort,
        Condition::Protocol,
        Condition::Vlan,
    ];

    /// The policy file field name.
    pub fn field(self) -> &'static str {
        match self {
            Condition::SrcPrefix => "src_prefix",
            Condition::DstPrefix => "dst_prefix",
            Condition::SrcPort => "src_port",
            Condition::DstPort => "dst_port",
            Condition::Protocol => "protocol",
            Condition::Vlan => "vlan",
        }
    }

    /// Bit in [`PrecedenceKey::present`]; heavier conditions have higher bits.
    pub fn bit(self) -> u8 {
        1 << (5 - self as u8)
    }
}

/// The SPEC's precedence key without the final file-order step. The derived
/// order compares fields top to bottom, so the greater key wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrecedenceKey {
    /// Step 1: `precedence`.
    pub precedence: u8,
    /// Step 2: how many conditions are present.
    pub count: u8,
    /// Step 3: which conditions are present, one bit each, heaviest highest.
    pub present: u8,
    /// Step 4, in field order: prefix lengths (0 when absent) …
    pub src_len: u8,
    pub dst_len: u8,
    /// … and `65535 - ports covered` (0 when absent), so narrower is greater.
    /// Protocol and VLAN values are all equally specific.
    pub src_port_narrowness: u16,
    pub dst_port_narrowness: u16,
}

impl PrecedenceKey {
    /// The key and the policy's file position packed so that a plain integer
    /// comparison decides the winner, step 5 (earlier in the file wins)
    /// included. Never 0, so 0 can mean "no match yet".
    pub fn rank(&self, id: PolicyId) -> u128 {
        let k = (u128::from(self.precedence) << 64)
            | (u128::from(self.count) << 56)
            | (u128::from(self.present) << 48)
            | (u128::from(self.src_len) << 40)
            | (u128::from(self.dst_len) << 32)
            | (u128::from(self.src_port_narrowness) << 16)
            | u128::from(self.dst_port_narrowness);
        (k << 32) | u128::from(u32::MAX - id)
    }
}

impl Policy {
    /// A policy with every optional field at its default (matches everything
    /// outbound, no action: set one before using it).
    pub fn new(name: &str) -> Policy {
        Policy {
            name: name.to_string(),
            direction: PolicyDirection::Outbound,
            src_prefix: None,
            dst_prefix: None,
            protocol: None,
            src_port: None,
            dst_port: None,
            vlan: None,
            dscp: None,
            priority_8021p: None,
            throttle: None,
            precedence: 127,
            location: Pos::default(),
        }
    }

    pub fn has(&self, c: Condition) -> bool {
        match c {
            Condition::SrcPrefix => self.src_prefix.is_some(),
            Condition::DstPrefix => self.dst_prefix.is_some(),
            Condition::SrcPort => self.src_port.is_some(),
            Condition::DstPort => self.dst_port.is_some(),
            Condition::Protocol => self.protocol.is_some(),
            Condition::Vlan => self.vlan.is_some(),
        }
    }

    pub fn has_port_condition(&self) -> bool {
        self.src_port.is_some() || self.dst_port.is_some()
    }

    pub fn precedence_key(&self) -> PrecedenceKey {
        let mut present = 0;
        for c in Condition::ALL {
            if self.has(c) {
                present |= c.bit();
            }
        }
        let narrow = |r: Option<PortRange>| r.map_or(0, |r| (65536 - r.size()) as u16);
        PrecedenceKey {
            precedence: self.precedence,
            count: present.count_ones() as u8,
            present,
            src_len: self.src_prefix.map_or(0, |p| p.prefix_len()),
            dst_len: self.dst_prefix.map_or(0, |p| p.prefix_len()),
            src_port_narrowness: narrow(self.src_port),
            dst_port_narrowness: narrow(self.dst_port),
        }
    }

    /// Whether every condition of the policy (and its direction) admits the
    /// key. This is the reference definition the table is tested against.
    pub fn matches(&self, key: &MatchKey) -> bool {
        if !self.direction.admits(key.direction) {
            return false;
        }
        if let Some(p) = &self.src_prefix {
            if !p.contains(key.src) {
                return false;
            }
        }
        if let Some(p) = &self.dst_prefix {
            if !p.contains(key.dst) {
                return false;
            }
        }
        if let Some(proto) = self.protocol {
            if proto != key.protocol {
                return false;
            }
        }
        if self.has_port_condition() {
            // A port condition with no protocol matches only TCP, UDP and SCTP,
            // and never a packet whose ports are unknown.
            let Some((sp, dp)) = key.ports else {
                return false;
            };
            if !has_ports(key.protocol)
                || !self.src_port.is_none_or(|r| r.contains(sp))
                || !self.dst_port.is_none_or(|r| r.contains(dp))
            {
                return false;
            }
        }
        if let Some(v) = self.vlan {
            if key.vlan != Some(v) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pfx(s: &str) -> Result<Prefix, String> {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap())
    }

    #[test]
    fn prefixes() {
        let p = pfx("10.1.0.0/16").unwrap();
        assert!(p.contains("10.1.200.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.0".parse().unwrap()));
        assert!(!p.contains("::a01:0".parse().unwrap()));
        assert!(pfx("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(pfx("10.1.2.3/32").is_ok());
        let e = pfx("10.1.2.0/16").unwrap_err();
        assert!(e.contains("did you mean \"10.1.0.0/16\""), "{e}");
        assert!(pfx("10.0.0.0/33").unwrap_err().contains("longer than 32"));
        let v6 = pfx("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::".parse().unwrap()));
        assert!(pfx("2001:db8::1/128").is_ok());
        assert!(pfx("2001:db8::1/127")
            .unwrap_err()
            .contains("did you mean \"2001:db8::/127\""));
        assert!(pfx("10.0.0.0/8").unwrap().covers(&p));
        assert!(!p.covers(&pfx("10.0.0.0/8").unwrap()));
    }

    #[test]
    fn rank_orders_like_the_key() {
        let a = PrecedenceKey {
            precedence: 1,
            count: 0,
            present: 0,
            src_len: 0,
            dst_len: 0,
            src_port_narrowness: 0,
            dst_port_narrowness: 0,
        };
        let b = PrecedenceKey {
            precedence: 0,
            count: 6,
            present: 63,
            src_len: 128,
            dst_len: 128,
            src_port_narrowness: 65534,
            dst_port_narrowness: 65534,
        };
        assert!(a > b && a.rank(5) > b.rank(0));
        assert!(a.rank(0) > a.rank(1));
        assert!(b.rank(u32::MAX - 1) > 0);
    }
}
