//! Each class of bad policy file, with the exact line and column reported.

use crate::parse_policies;

/// The rendered errors for `text`, which must be invalid.
fn errors(text: &str) -> Vec<String> {
    match parse_policies("p.json", text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    }
}

/// The single error for `text`, checked to start with `FILE:LINE:COLUMN: `
/// and to contain `what`.
fn one_error(text: &str, line: u32, column: u32, what: &str) {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    let prefix = format!("p.json:{line}:{column}: ");
    assert!(e[0].starts_with(&prefix), "expected {prefix}...: {}", e[0]);
    assert!(e[0].contains(what), "expected {what:?} in {}", e[0]);
}

/// Wraps one policy object (on line 2, starting at column 3).
fn policy(body: &str) -> String {
    format!("{{\"policies\": [\n  {{{body}}}\n]}}\n")
}

#[test]
fn json_syntax_errors() {
    one_error(
        "{\"policies\": [\n  {\"name\": \"a\", \"dscp\": 1,}\n]}",
        2,
        27,
        "trailing comma",
    );
    one_error(
        "{\"policies\": [\n  {\"name\": \"a\" \"dscp\": 1}\n]}",
        2,
        16,
        "expected ',' or '}'",
    );
    one_error(
        "{\"policies\": [\n  {\"name\": 'a'}\n]}",
        2,
        12,
        "expected a value",
    );
    one_error("{\"policies\": [", 1, 15, "end of file");
    one_error("", 1, 1, "end of file");
}

#[test]
fn file_shape_errors() {
    one_error("[]", 1, 1, "must be a JSON object");
    one_error("{}", 1, 1, "policies: missing");
    one_error("{\"policies\": {}}", 1, 14, "must be an array");
    one_error(
        "{\"policies\": [], \"polices\": []}",
        1,
        18,
        "polices: unknown top-level field",
    );
    one_error(
        "{\"policies\": [\n  42\n]}",
        2,
        3,
        "policy #1: must be a JSON object",
    );
    // An empty policy list is valid: everything passes through unmarked.
    assert!(parse_policies("p.json", "{\"policies\": []}").is_ok());
}

#[test]
fn name_errors() {
    one_error(&policy("\"dscp\": 1"), 2, 3, "policy #1: name: missing");
    one_error(
        &policy("\"name\": \"a b\", \"dscp\": 1"),
        2,
        12,
        "policy #1: name: \"a b\" contains ' '",
    );
    one_error(&policy("\"name\": \"\", \"dscp\": 1"), 2, 12, "name: empty");
    one_error(
        &policy("\"name\": 7, \"dscp\": 1"),
        2,
        12,
        "name: must be a string",
    );
    let long = "x".repeat(129);
    one_error(
        &policy(&format!("\"name\": \"{long}\", \"dscp\": 1")),
        2,
        12,
        "129 characters is too long",
    );
    one_error(
        "{\"policies\": [\n  {\"name\": \"a\", \"dscp\": 1},\n  {\"name\": \"a\", \"dscp\": 2}\n]}",
        3,
        12,
        "policy \"a\": name: duplicate; already used by the policy at line 2",
    );
}

#[test]
fn unknown_and_repeated_fields() {
    one_error(
        &policy("\"name\": \"a\", \"dscp\": 1, \"dst_prot\": 80"),
        2,
        28,
        "policy \"a\": dst_prot: unknown field; did you mean \"dst_port\"?",
    );
    one_error(
        &policy("\"name\": \"a\", \"dscp\": 1, \"dscp\": 2"),
        2,
        28,
        "policy \"a\": dscp: given twice (first at line 2)",
    );
}

#[test]
fn value_errors_point_at_the_value() {
    // `  {"name": "a", "FIELD": VALUE`: the value starts at column 21 + len(FIELD).
    let cases = [
        ("dscp", "64", "dscp: 64 is out of range; a DSCP value is an integer from 0 to 63"),
        ("dscp", "-1", "dscp: -1 is out of range"),
        ("dscp", "4.5", "dscp: 4.5 is not an integer"),
        ("dscp", "\"46\"", "dscp: must be a number, not a string"),
        ("priority_8021p", "8", "priority_8021p: 8 is out of range; an 802.1p priority is an integer from 0 to 7"),
        ("vlan", "4096", "vlan: 4096 is out of range; a VLAN ID is an integer from 0 to 4095"),
        ("precedence", "256", "precedence: 256 is out of range"),
        ("direction", "\"out\"", "direction: \"out\" is not a direction; allowed: \"outbound\""),
        ("src_prefix", "\"10.1.2.0/16\"", "src_prefix: \"10.1.2.0/16\" has host bits set beyond /16; did you mean \"10.1.0.0/16\"?"),
        ("dst_prefix", "\"10.1.0.0/33\"", "dst_prefix: prefix length /33 is longer than 32"),
        ("dst_prefix", "\"10.1.0\"", "dst_prefix: \"10.1.0\" is not an IP address or prefix"),
        ("dst_prefix", "\"2001:db8::/xx\"", "dst_prefix: \"2001:db8::/xx\" has an invalid prefix length"),
        ("protocol", "\"tcpp\"", "protocol: \"tcpp\" is not a protocol; allowed: tcp, udp, any"),
        ("protocol", "300", "protocol: 300 is not a protocol"),
        ("dst_port", "0", "dst_port: 0 is out of range; allowed: a port from 1 to 65535"),
        ("dst_port", "\"100-50\"", "dst_port: \"100-50\" is an empty range"),
        ("src_port", "\"http\"", "src_port: \"http\" is not a port"),
        ("throttle", "\"7kbps\"", "throttle: \"7kbps\" is below 8000 bits per second"),
        ("throttle", "\"20 mbit\"", "throttle: \"20 mbit\" is not a rate"),
        ("throttle", "1.5", "throttle: 1.5 is not an integer"),
        ("throttle", "\"500Gbps\"", "throttle: \"500Gbps\" is above 400Gbps"),
    ];
    for (field, value, what) in cases {
        let extra = if field == "dscp" { "" } else { ", \"dscp\": 1" };
        let text = policy(&format!("\"name\": \"a\", \"{field}\": {value}{extra}"));
        let column = 21 + field.len() as u32;
        one_error(&text, 2, column, &format!("policy \"a\": {what}"));
    }
}

#[test]
fn cross_field_errors() {
    one_error(
        &policy("\"name\": \"a\", \"dst_port\": 80"),
        2,
        3,
        "policy \"a\": dscp/priority_8021p/throttle: none given; a policy needs at least one action",
    );
    // A misspelt action is that one error, not also "none given" before it (which an
    // operator would read first, in the log and in POST /-/reload's answer).
    one_error(
        &policy("\"name\": \"a\", \"dst_port\": 80, \"dscpp\": 46"),
        2,
        33,
        "policy \"a\": dscpp: unknown field; did you mean \"dscp\"?",
    );
    one_error(
        &policy("\"name\": \"a\", \"src_prefix\": \"10.0.0.0/8\", \"dst_prefix\": \"2001:db8::/32\", \"dscp\": 1"),
        2,
        59,
        "dst_prefix: 2001:db8::/32 is IPv6 but src_prefix 10.0.0.0/8 is IPv4; both prefixes must be of the same family",
    );
    one_error(
        &policy("\"name\": \"a\", \"protocol\": \"icmp\", \"dst_port\": 80, \"dscp\": 1"),
        2,
        49,
        "dst_port: protocol icmp has no ports; a port condition needs protocol tcp, udp, sctp or none",
    );
    one_error(
        &policy("\"name\": \"a\", \"dscp\": 1, \"throttle_per\": \"host\""),
        2,
        44,
        "throttle_per: only allowed with throttle",
    );
    one_error(
        &policy("\"name\": \"a\", \"dscp\": 1, \"burst\": 9000"),
        2,
        37,
        "burst: only allowed with throttle",
    );
    one_error(
        &policy("\"name\": \"a\", \"throttle\": 8000, \"burst\": 100"),
        2,
        44,
        "burst: 100 is out of range; a burst in bytes is an integer from 1514",
    );
    one_error(
        &policy("\"name\": \"a\", \"throttle\": 8000, \"throttle_per\": \"user\""),
        2,
        51,
        "throttle_per: \"user\" is not a throttle scope; allowed: \"policy\" (the default), \"host\" or \"flow\"",
    );
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let text = r#"{"policies": [
  {"name": "voice", "protocol": "udp", "dst_port": "16384-32767", "dscp": 64},
  {"name": "bad name", "dscp": 1},
  {"name": "backup", "dst_prefix": "10.20.0.1/16", "throttle": "20Mbs", "throtle_per": "host"},
  {"name": "voice", "dscp": 46},
  {"name": "quiet"}
]}"#;
    assert_eq!(
        errors(text),
        [
            "p.json:2:75: policy \"voice\": dscp: 64 is out of range; a DSCP value is an integer from 0 to 63",
            "p.json:3:12: policy #2: name: \"bad name\" contains ' '; a name is 1 to 128 characters of A-Z a-z 0-9 . _ - and unique in the file",
            "p.json:4:36: policy \"backup\": dst_prefix: \"10.20.0.1/16\" has host bits set beyond /16; did you mean \"10.20.0.0/16\"?",
            "p.json:4:64: policy \"backup\": throttle: \"20Mbs\" is not a rate; allowed: an integer number of bits per second, or a number and a unit: bps, kbps, Mbps, Gbps (bits) or Bps, KBps, MBps, GBps (bytes; decimal multipliers), e.g. \"20Mbps\" or \"1.5MBps\"; from 8000 bps to 400Gbps",
            "p.json:4:73: policy \"backup\": throtle_per: unknown field; did you mean \"throttle_per\"? allowed fields are name, direction, src_prefix, dst_prefix, protocol, src_port, dst_port, vlan, dscp, priority_8021p, throttle, throttle_per, burst, precedence",
            "p.json:5:12: policy \"voice\": name: duplicate; already used by the policy at line 2, and names must be unique",
            "p.json:6:3: policy \"quiet\": dscp/priority_8021p/throttle: none given; a policy needs at least one action: dscp, priority_8021p or throttle",
        ]
    );
}

#[test]
fn io_error_is_one_diagnostic() {
    let e = crate::load_policy_file(std::path::Path::new("/nonexistent/p.json")).unwrap_err();
    assert_eq!(e.len(), 1);
    let s = e[0].to_string();
    assert!(
        s.starts_with("/nonexistent/p.json: cannot read the policy file: "),
        "{s}"
    );
}

#[test]
fn the_spec_example_is_valid_and_defaults_apply() {
    let text = r#"{
  "policies": [
    { "name": "voice",  "protocol": "udp", "dst_port": "16384-32767", "dscp": 46 },
    { "name": "backup", "dst_prefix": "10.20.0.0/16", "protocol": "tcp", "dst_port": 873,
      "dscp": 8, "throttle": "20Mbps", "throttle_per": "host" },
    { "name": "web-default", "dst_port": 443, "dscp": 18 }
  ]
}"#;
    let (t, _) = parse_policies("spec.json", text).unwrap();
    let p = t.policies();
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].direction, crate::PolicyDirection::Outbound);
    assert_eq!(p[0].precedence, 127);
    assert_eq!(p[0].protocol, Some(17));
    assert_eq!(
        p[0].dst_port,
        Some(crate::PortRange {
            lo: 16384,
            hi: 32767
        })
    );
    assert_eq!(p[0].location, crate::Pos { line: 3, column: 5 });
    let th = p[1].throttle.unwrap();
    assert_eq!(th.rate_bps, 20_000_000);
    assert_eq!(th.scope, crate::ThrottleScope::Host);
    assert_eq!(th.burst_bytes, 5000); // 2 ms at 20 Mbps
    assert_eq!(crate::policy::default_burst(1_000_000), 3028); // 2 × 1514
    assert_eq!(p[2].protocol, None);
}
