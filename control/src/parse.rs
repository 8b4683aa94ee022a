//! From policy file text to validated [`Policy`] values, reporting every error
//! at once as `FILE:LINE:COLUMN: policy "NAME": field: what is wrong`.
//!
//! Each field is parsed by a small function returning the error text (what is
//! wrong and what is allowed); `parse_policy` adds the policy label, the field
//! and the position of the value, then applies the cross-field rules. The
//! choices SPEC §2 leaves open are documented on the functions that make them.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::diag::Diagnostic;
use crate::json::{self, Member, Pos, Spanned, Value};
use crate::policy::{
    default_burst, has_ports, protocol_name, Policy, PolicyDirection, PortRange, Prefix, Throttle,
    ThrottleScope, PROTOCOL_NAMES,
};

/// Every field a policy may have, in the order the SPEC lists them.
pub const FIELDS: [&str; 14] = [
    "name",
    "direction",
    "src_prefix",
    "dst_prefix",
    "protocol",
    "src_port",
    "dst_port",
    "vlan",
    "dscp",
    "priority_8021p",
    "throttle",
    "throttle_per",
    "burst",
    "precedence",
];

/// The fields that make a policy do something: it needs one of them.
const ACTIONS: [&str; 3] = ["dscp", "priority_8021p", "throttle"];

pub const MIN_RATE_BPS: u64 = 8_000;
/// SPEC §2: rates are held in 64-bit arithmetic up to 400 Gbps.
pub const MAX_RATE_BPS: u64 = 400_000_000_000;
/// A burst must hold at least one full-size Ethernet frame.
pub const MIN_BURST: u64 = 1514;
pub const MAX_BURST: u64 = 1_000_000_000;

/// Parses and validates a whole policy file. On error, returns every error
/// found, sorted by position.
pub fn parse_policy_list(file: &str, text: &str) -> Result<Vec<Policy>, Vec<Diagnostic>> {
    let root = json::parse(text).map_err(|e| vec![Diagnostic::error(file, e.pos, e.message)])?;
    let mut errors = Vec::new();
    let items = match &root.value {
        Value::Object(members) => {
            let mut items = None;
            for m in members {
                if m.key == "policies" {
                    match &m.value.value {
                        Value::Array(a) if items.is_none() => items = Some(a),
                        Value::Array(_) => errors.push(Diagnostic::error(
                            file,
                            m.key_pos,
                            "policies: given twice; the file has one \"policies\" array",
                        )),
                        v => errors.push(Diagnostic::error(
                            file,
                            m.value.pos,
                            format!(
                                "policies: must be an array of policy objects, not {}",
                                v.kind()
                            ),
                        )),
                    }
                } else {
                    errors.push(Diagnostic::error(
                        file,
                        m.key_pos,
                        format!(
                            "{}: unknown top-level field; the file is {{\"policies\": [...]}}",
                            m.key
                        ),
                    ));
                }
            }
            if items.is_none() && errors.is_empty() {
                errors.push(Diagnostic::error(
                    file,
                    root.pos,
                    "policies: missing; the file must be {\"policies\": [...]}",
                ));
            }
            items
        }
        v => {
            errors.push(Diagnostic::error(
                file,
                root.pos,
                format!(
                    "the policy file must be a JSON object {{\"policies\": [...]}}, not {}",
                    v.kind()
                ),
            ));
            None
        }
    };
    let mut policies = Vec::new();
    let mut first_use: HashMap<String, Pos> = HashMap::new();
    for (i, item) in items.into_iter().flatten().enumerate() {
        let (policy, name) = parse_policy(file, i + 1, item, &mut errors);
        // Names must be unique even among policies with other errors.
        if let Some((name, pos)) = name {
            if let Some(first) = first_use.get(&name) {
                errors.push(Diagnostic::error(
                    file,
                    pos,
                    format!(
                        "policy \"{name}\": name: duplicate; already used by the policy at line {}, and names must be unique",
                        first.line
                    ),
                ));
            } else {
                first_use.insert(name, pos);
            }
        }
        policies.extend(policy);
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        errors.sort_by_key(|d| d.pos);
        Err(errors)
    }
}

/// Parses one policy object (number `index`, 1-based), pushing its errors.
/// Returns the policy if it has none, and its name and the name's position
/// if the name is valid.
fn parse_policy(
    file: &str,
    index: usize,
    item: &Spanned,
    errors: &mut Vec<Diagnostic>,
) -> (Option<Policy>, Option<(String, Pos)>) {
    let Value::Object(members) = &item.value else {
        errors.push(Diagnostic::error(
            file,
            item.pos,
            format!(
                "policy #{index}: must be a JSON object, not {}",
                item.value.kind()
            ),
        ));
        return (None, None);
    };
    let errors_before = errors.len();
    let mut fields: HashMap<&str, &Member> = HashMap::new();
    let name = members
        .iter()
        .find(|m| m.key == "name")
        .and_then(|m| match &m.value.value {
            Value::String(s) if parse_name(s).is_ok() => Some(s.clone()),
            _ => None,
        });
    let label = match &name {
        Some(n) => format!("policy \"{n}\""),
        None => format!("policy #{index}"),
    };
    let mut err = |pos: Pos, field: &str, msg: String| {
        errors.push(Diagnostic::error(
            file,
            pos,
            format!("{label}: {field}: {msg}"),
        ));
    };
    // An action's name misspelt (one edit away): its unknown-field error says all there is
    // to say.
    let mut misspelt_action = false;
    for m in members {
        if let Some(first) = fields.get(m.key.as_str()) {
            err(
                m.key_pos,
                &m.key,
                format!(
                    "given twice (first at line {}); a field may appear once",
                    first.key_pos.line
                ),
            );
        } else if FIELDS.contains(&m.key.as_str()) {
            fields.insert(m.key.as_str(), m);
        } else {
            err(m.key_pos, &m.key, unknown_field(&m.key, &FIELDS));
            misspelt_action |= ACTIONS.iter().any(|a| edit_distance(&m.key, a) <= 1);
        }
    }

    let mut policy = Policy::new(name.as_deref().unwrap_or(""));
    policy.location = item.pos;
    // Parses a present field with `f`, reporting its error at the value.
    macro_rules! field {
        ($key:literal, $f:expr) => {
            fields.get($key).and_then(|m| match $f(&m.value.value) {
                Ok(v) => Some(v),
                Err(msg) => {
                    err(m.value.pos, $key, msg);
                    None
                }
            })
        };
    }
    let name_pos = match fields.get("name") {
        Some(m) => {
            let r = match &m.value.value {
                Value::String(s) => parse_name(s),
                v => Err(format!("must be a string, not {}; {NAME_RULE}", v.kind())),
            };
            if let Err(msg) = r {
                err(m.value.pos, "name", msg);
            }
            m.value.pos
        }
        None => {
            err(item.pos, "name", format!("missing; {NAME_RULE}"));
            item.pos
        }
    };
    if let Some(d) = field!("direction", parse_direction) {
        policy.direction = d;
    }
    policy.src_prefix = field!("src_prefix", parse_prefix);
    policy.dst_prefix = field!("dst_prefix", parse_prefix);
    policy.protocol = field!("protocol", parse_protocol).flatten();
    policy.src_port = field!("src_port", parse_port);
    policy.dst_port = field!("dst_port", parse_port);
    policy.vlan = field!("vlan", |v| int_in(v, 0, 4095, "a VLAN ID")).map(|v| v as u16);
    policy.dscp = field!("dscp", |v| int_in(v, 0, 63, "a DSCP value")).map(|v| v as u8);
    policy.priority_8021p =
        field!("priority_8021p", |v| int_in(v, 0, 7, "an 802.1p priority")).map(|v| v as u8);
    if let Some(p) = field!("precedence", |v| int_in(v, 0, 255, "a precedence")) {
        policy.precedence = p as u8;
    }
    let rate = field!("throttle", parse_rate);
    let scope = field!("throttle_per", parse_scope);
    let burst = field!("burst", |v| int_in(
        v,
        MIN_BURST,
        MAX_BURST,
        "a burst in bytes"
    ));
    // Cross-field rules. Each looks at which fields are present (not whether
    // they parsed), so one mistake is reported once.
    if !misspelt_action && !ACTIONS.iter().any(|f| fields.contains_key(f)) {
        err(
            item.pos,
            "dscp/priority_8021p/throttle",
            "none given; a policy needs at least one action: dscp, priority_8021p or throttle"
                .into(),
        );
    }
    if let (Some(s), Some(d)) = (policy.src_prefix, policy.dst_prefix) {
        if s.is_ipv4() != d.is_ipv4() {
            err(
                fields["dst_prefix"].value.pos,
                "dst_prefix",
                format!(
                    "{d} is {} but src_prefix {s} is {}; both prefixes must be of the same family",
                    family(&d),
                    family(&s)
                ),
            );
        }
    }
    if let Some(p) = policy.protocol {
        if !has_ports(p) {
            for key in ["src_port", "dst_port"] {
                if let Some(m) = fields.get(key) {
                    err(
                        m.value.pos,
                        key,
                        format!(
                            "protocol {} has no ports; a port condition needs protocol tcp, udp, sctp or none",
                            protocol_name(p)
                        ),
                    );
                }
            }
        }
    }
    if !fields.contains_key("throttle") {
        for key in ["throttle_per", "burst"] {
            if let Some(m) = fields.get(key) {
                err(
                    m.value.pos,
                    key,
                    "only allowed with throttle; add a throttle or remove this field".into(),
                );
            }
        }
    }

    let named = name.map(|n| (n, name_pos));
    if errors.len() > errors_before {
        return (None, named);
    }
    policy.throttle = rate.map(|rate_bps| Throttle {
        rate_bps,
        scope: scope.unwrap_or_default(),
        burst_bytes: burst.unwrap_or_else(|| default_burst(rate_bps)),
    });
    (Some(policy), named)
}

fn family(p: &Prefix) -> &'static str {
    if p.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

const NAME_RULE: &str = "a name is 1 to 128 characters of A-Z a-z 0-9 . _ - and unique in the file";

fn parse_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty; {NAME_RULE}"));
    }
    if s.chars().count() > 128 {
        return Err(format!(
            "{} characters is too long; {NAME_RULE}",
            s.chars().count()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("{s:?} contains {c:?}; {NAME_RULE}"));
    }
    Ok(())
}

/// "unknown field", with the closest allowed name when one is near (a likely typo).
/// Shared with the gateway configuration's validation.
pub(crate) fn unknown_field(key: &str, allowed: &[&str]) -> String {
    let suggestion = closest(key, allowed)
        .map(|f| format!("did you mean \"{f}\"? "))
        .unwrap_or_default();
    format!(
        "unknown field; {suggestion}allowed fields are {}",
        allowed.join(", ")
    )
}

/// The allowed name `key` is likely a typo of: within two edits, the nearest.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|f| (edit_distance(key, f), *f))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, f)| f)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn as_str<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    match v {
        Value::String(s) => Ok(s),
        v => Err(format!("must be {what}, not {}", v.kind())),
    }
}

/// A JSON number that is a non-negative integer (`46`, not `46.0` or `4.6e1`).
fn as_uint(text: &str) -> Option<Result<u64, ()>> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().map_err(|_| ()))
}

fn int_in(v: &Value, lo: u64, hi: u64, what: &str) -> Result<u64, String> {
    let allowed = format!("{what} is an integer from {lo} to {hi}");
    match v {
        Value::Number(t) => match as_uint(t) {
            Some(Ok(n)) if (lo..=hi).contains(&n) => Ok(n),
            Some(_) => Err(format!("{t} is out of range; {allowed}")),
            None if t.starts_with('-') && !t.contains(['.', 'e', 'E']) => {
                Err(format!("{t} is out of range; {allowed}"))
            }
            None => Err(format!("{t} is not an integer; {allowed}")),
        },
        v => Err(format!("must be a number, not {}; {allowed}", v.kind())),
    }
}

fn parse_direction(v: &Value) -> Result<PolicyDirection, String> {
    const ALLOWED: &str = "allowed: \"outbound\" (the default), \"inbound\" or \"both\"";
    match as_str(v, "a string").map_err(|e| format!("{e}; {ALLOWED}"))? {
        "outbound" => Ok(PolicyDirection::Outbound),
        "inbound" => Ok(PolicyDirection::Inbound),
        "both" => Ok(PolicyDirection::Both),
        s => Err(format!("{s:?} is not a direction; {ALLOWED}")),
    }
}

fn parse_scope(v: &Value) -> Result<ThrottleScope, String> {
    const ALLOWED: &str = "allowed: \"policy\" (the default), \"host\" or \"flow\"";
    match as_str(v, "a string").map_err(|e| format!("{e}; {ALLOWED}"))? {
        "policy" => Ok(ThrottleScope::Policy),
        "host" => Ok(ThrottleScope::Host),
        "flow" => Ok(ThrottleScope::Flow),
        s => Err(format!("{s:?} is not a throttle scope; {ALLOWED}")),
    }
}

/// `10.1.2.3` (a host), `10.1.0.0/16`, `2001:db8::/32`; host bits must be zero.
pub fn parse_prefix_str(s: &str) -> Result<Prefix, String> {
    const ALLOWED: &str =
        "allowed: an IPv4 or IPv6 address or prefix such as \"10.1.2.3\", \"10.1.0.0/16\" or \"2001:db8::/32\"";
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or prefix; {ALLOWED}"))?;
    match len {
        None => Ok(Prefix::host(addr)),
        Some(l) => {
            let len: u8 = l
                .parse()
                .ok()
                .filter(|_| l.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("{s:?} has an invalid prefix length; {ALLOWED}"))?;
            Prefix::new(addr, len)
        }
    }
}

fn parse_prefix(v: &Value) -> Result<Prefix, String> {
    parse_prefix_str(as_str(v, "a string such as \"10.1.0.0/16\"")?)
}

const PROTOCOL_ALLOWED: &str =
    "allowed: tcp, udp, any (or both), icmp, icmpv6, esp, ah, gre, sctp, or a number from 0 to 255";

/// A protocol name (case-insensitive) or number; `Ok(None)` for `any`/`both`.
///
/// SPEC §2 makes `both` a synonym of `any` (in Windows it means TCP or UDP;
/// the SPEC wins here).
pub fn parse_protocol_str(s: &str) -> Result<Option<u8>, String> {
    let lower = s.to_ascii_lowercase();
    if lower == "any" || lower == "both" {
        return Ok(None);
    }
    if let Some((_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == lower) {
        return Ok(Some(*n));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u8>()
            .map(Some)
            .map_err(|_| format!("{s} is out of range; {PROTOCOL_ALLOWED}"));
    }
    Err(format!("{s:?} is not a protocol; {PROTOCOL_ALLOWED}"))
}

fn parse_protocol(v: &Value) -> Result<Option<u8>, String> {
    match v {
        Value::String(s) => parse_protocol_str(s),
        Value::Number(_) => int_in(v, 0, 255, "a protocol number")
            .map(|n| Some(n as u8))
            .map_err(|_| format!("{} is not a protocol; {PROTOCOL_ALLOWED}", json_text(v))),
        v => Err(format!(
            "must be a string or a number, not {}; {PROTOCOL_ALLOWED}",
            v.kind()
        )),
    }
}

fn json_text(v: &Value) -> String {
    match v {
        Value::Number(t) => t.clone(),
        Value::String(s) => format!("{s:?}"),
        v => v.kind().to_string(),
    }
}

const PORT_ALLOWED: &str =
    "allowed: a port from 1 to 65535 (443 or \"443\") or an inclusive range \"LOW-HIGH\" with LOW <= HIGH";

/// `443`, `"443"` or `"5000-5100"` (inclusive).
fn parse_port(v: &Value) -> Result<PortRange, String> {
    let one = |t: &str| -> Result<u16, String> {
        let t = t.trim();
        match t.parse::<u32>() {
            Ok(n @ 1..=65535) if t.bytes().all(|b| b.is_ascii_digit()) => Ok(n as u16),
            Ok(_) => Err(format!("{t} is out of range; {PORT_ALLOWED}")),
            Err(_) => Err(format!("{t:?} is not a port; {PORT_ALLOWED}")),
        }
    };
    match v {
        Value::Number(t) => one(t).map(PortRange::single),
        Value::String(s) => match s.split_once('-') {
            None => one(s).map(PortRange::single),
            Some((lo, hi)) => {
                let (lo, hi) = (one(lo)?, one(hi)?);
                if lo > hi {
                    Err(format!("\"{s}\" is an empty range; {PORT_ALLOWED}"))
                } else {
                    Ok(PortRange { lo, hi })
                }
            }
        },
        v => Err(format!(
            "must be a number or a string, not {}; {PORT_ALLOWED}",
            v.kind()
        )),
    }
}

const RATE_ALLOWED: &str = "allowed: an integer number of bits per second, or a number and a unit: bps, kbps, Mbps, Gbps (bits) or Bps, KBps, MBps, GBps (bytes; decimal multipliers), e.g. \"20Mbps\" or \"1.5MBps\"; from 8000 bps to 400Gbps";

/// A throttle rate in bits per second.
///
/// A string is `<number><unit>`: the number may have a fraction (`1.5Gbps`)
/// and a space may separate it from the unit. The unit ends in `bps` (bits)
/// or `Bps` (bytes, ×8); the multiplier letter `k`, `M`, `G` (either case) is
/// decimal (1000). The result must be a whole number of bits per second from
/// 8000 to 400 Gbps.
pub fn parse_rate_str(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a rate; {RATE_ALLOWED}");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim_start());
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty()
        || (num.contains('.') && frac.is_empty())
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let (mult_letter, base) = if let Some(p) = unit.strip_suffix("bps") {
        (p, 1u128)
    } else if let Some(p) = unit.strip_suffix("Bps") {
        (p, 8u128)
    } else {
        return Err(bad());
    };
    let mult: u128 = match mult_letter {
        "" => 1,
        "k" | "K" => 1_000,
        "m" | "M" => 1_000_000,
        "g" | "G" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let int: u128 = int.parse().map_err(|_| bad())?;
    let scale = 10u128.pow(frac.len() as u32);
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let scaled = int
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_v))
        .and_then(|v| v.checked_mul(mult * base))
        .ok_or_else(|| format!("{s:?} is too large; {RATE_ALLOWED}"))?;
    if scaled % scale != 0 {
        return Err(format!(
            "{s:?} is not a whole number of bits per second; {RATE_ALLOWED}"
        ));
    }
    check_rate(scaled / scale, &format!("{s:?}"))
}

fn check_rate(bps: u128, shown: &str) -> Result<u64, String> {
    if bps < u128::from(MIN_RATE_BPS) {
        Err(format!(
            "{shown} is below 8000 bits per second; {RATE_ALLOWED}"
        ))
    } else if bps > u128::from(MAX_RATE_BPS) {
        Err(format!("{shown} is above 400Gbps; {RATE_ALLOWED}"))
    } else {
        Ok(bps as u64)
    }
}

fn parse_rate(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_rate_str(s),
        Value::Number(t) => match as_uint(t) {
            Some(Ok(n)) => check_rate(u128::from(n), t),
            Some(Err(())) => Err(format!("{t} is too large; {RATE_ALLOWED}")),
            None => Err(format!("{t} is not an integer; {RATE_ALLOWED}")),
        },
        v => Err(format!(
            "must be a number or a string, not {}; {RATE_ALLOWED}",
            v.kind()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate_str("20Mbps"), Ok(20_000_000));
        assert_eq!(parse_rate_str("1.5Gbps"), Ok(1_500_000_000));
        assert_eq!(parse_rate_str("8000bps"), Ok(8000));
        assert_eq!(parse_rate_str("1KBps"), Ok(8000));
        assert_eq!(parse_rate_str("2.5 MBps"), Ok(20_000_000));
        assert_eq!(parse_rate_str("100kbps"), Ok(100_000));
        assert_eq!(parse_rate_str("400Gbps"), Ok(400_000_000_000));
        assert_eq!(parse_rate_str("50GBps"), Ok(400_000_000_000));
        assert!(parse_rate_str("401Gbps").unwrap_err().contains("above"));
        assert!(parse_rate_str("7999bps")
            .unwrap_err()
            .contains("below 8000"));
        assert!(parse_rate_str("8.0001kbps")
            .unwrap_err()
            .contains("whole number"));
        for bad in [
            "", "Mbps", "20", "20Mb", "20 Tbps", "1.Mbps", ".5Mbps", "-5Mbps", "2x3Mbps",
        ] {
            assert!(
                parse_rate_str(bad).unwrap_err().contains("is not a rate"),
                "{bad}"
            );
        }
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_protocol_str("tcp"), Ok(Some(6)));
        assert_eq!(parse_protocol_str("UDP"), Ok(Some(17)));
        assert_eq!(parse_protocol_str("any"), Ok(None));
        assert_eq!(parse_protocol_str("both"), Ok(None));
        assert_eq!(parse_protocol_str("icmpv6"), Ok(Some(58)));
        assert_eq!(parse_protocol_str("47"), Ok(Some(47)));
        assert!(parse_protocol_str("256").is_err());
        assert!(parse_protocol_str("tcpp").is_err());
    }

    #[test]
    fn ports() {
        let s = |t: &str| parse_port(&Value::String(t.into()));
        assert_eq!(s("5000-5100"), Ok(PortRange { lo: 5000, hi: 5100 }));
        assert_eq!(s("443"), Ok(PortRange::single(443)));
        assert_eq!(
            parse_port(&Value::Number("1".into())),
            Ok(PortRange::single(1))
        );
        assert!(s("0").is_err());
        assert!(s("65536").is_err());
        assert!(s("10-5").unwrap_err().contains("empty range"));
        assert!(s("a-5").is_err());
        assert!(s("+5").is_err());
        assert!(parse_port(&Value::Number("44.3".into())).is_err());
    }

    #[test]
    fn suggestions() {
        assert!(unknown_field("dst_prot", &FIELDS).contains("did you mean \"dst_port\""));
        assert!(!unknown_field("zzzzzzz", &FIELDS).contains("did you mean"));
    }
}

#[cfg(test)]
mod file_tests;
