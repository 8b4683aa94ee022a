//! Policies back to the policy file's JSON form (for `GET /policies`, tools
//! and tests). `serde_json::to_string(&policy)` gives an object that
//! [`crate::parse_policies`] reads back to the same policy; defaults are
//! written out explicitly, rates as integer bits per second.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::policy::{protocol_name, Policy};

impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("direction", self.direction.as_str())?;
        if let Some(p) = &self.src_prefix {
            m.serialize_entry("src_prefix", &p.to_string())?;
        }
        if let Some(p) = &self.dst_prefix {
            m.serialize_entry("dst_prefix", &p.to_string())?;
        }
        if let Some(p) = self.protocol {
            m.serialize_entry("protocol", &protocol_name(p))?;
        }
        if let Some(r) = &self.src_port {
            m.serialize_entry("src_port", &r.to_string())?;
        }
        if let Some(r) = &self.dst_port {
            m.serialize_entry("dst_port", &r.to_string())?;
        }
        if let Some(v) = self.vlan {
            m.serialize_entry("vlan", &v)?;
        }
        if let Some(d) = self.dscp {
            m.serialize_entry("dscp", &d)?;
        }
        if let Some(p) = self.priority_8021p {
            m.serialize_entry("priority_8021p", &p)?;
        }
        if let Some(t) = &self.throttle {
            m.serialize_entry("throttle", &t.rate_bps)?;
            m.serialize_entry("throttle_per", t.scope.as_str())?;
            m.serialize_entry("burst", &t.burst_bytes)?;
        }
        m.serialize_entry("precedence", &self.precedence)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use crate::parse_policies;

    #[test]
    fn round_trip() {
        let text = r#"{"policies": [
            {"name": "voice", "protocol": "udp", "dst_port": "16384-32767", "dscp": 46},
            {"name": "backup", "dst_prefix": "10.20.0.0/16", "protocol": "tcp", "dst_port": 873,
             "dscp": 8, "throttle": "20Mbps", "throttle_per": "host"},
            {"name": "v6", "direction": "both", "src_prefix": "2001:db8::/32", "protocol": 47,
             "vlan": 4095, "priority_8021p": 5, "precedence": 0, "throttle": 8000, "burst": 1514}
        ]}"#;
        let (a, _) = parse_policies("a.json", text).unwrap();
        let out = serde_json::to_string(a.policies()).unwrap();
        let (b, _) = parse_policies("b.json", &format!("{{\"policies\": {out}}}")).unwrap();
        let strip = |t: &crate::PolicyTable| {
            t.policies()
                .iter()
                .map(|p| crate::Policy {
                    location: Default::default(),
                    ..p.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&a), strip(&b));
        assert!(out.contains(r#""throttle":20000000,"throttle_per":"host","burst":5000"#));
    }
}
