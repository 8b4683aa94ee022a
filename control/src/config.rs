//! The gateway configuration file of SPEC §3 (`qosgw run --config FILE`),
//! validated like policy files: every error at once, sorted by position, each
//! as `FILE:LINE:COLUMN: field: what is wrong and what is allowed`.
//!
//! ```json
//! {
//!   "eal": ["--no-huge", "-m", "512"],
//!   "ports": { "inside": "net_tap0", "outside": "net_tap1" },
//!   "workers": 1,
//!   "policies": "config/policies.json",
//!   "metrics_listen": "127.0.0.1:9477",
//!   "flow_cache": { "capacity_per_worker": 1048576, "idle_timeout_s": 30 },
//!   "shaper": { "max_delay_ms": 100 },
//!   "trust_dscp": true,
//!   "malformed": "forward"
//! }
//! ```
//!
//! Choices the SPEC leaves open:
//!
//! * Nested fields are named with a dot in messages (`ports.inside`,
//!   `flow_cache.idle_timeout_s`).
//! * A missing required top-level field (`ports`, `policies`) is reported at
//!   the top-level `{`; a missing `ports.inside` or `ports.outside` at the
//!   `{` of the `ports` object.
//! * Unknown fields are errors at every level, with a "did you mean"
//!   suggestion for a near miss; a field given twice is an error.
//! * `ports.inside` and `ports.outside` must be different device names.
//! * `policies` is a path; a relative path is relative to the current
//!   directory of the `qosgw run` process (not to the configuration file).
//! * `metrics_listen` is `IPv4:PORT` or `[IPv6]:PORT`; a host name is not
//!   accepted (the gateway does not resolve names). Port 0 picks a free port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::diag::Diagnostic;
use crate::json::{self, Member, Pos, Spanned, Value};
use crate::parse::unknown_field;

/// A validated gateway configuration (SPEC §3).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Extra DPDK EAL arguments (`eal`); default: none.
    pub eal: Vec<String>,
    /// DPDK device name of the inside port (`ports.inside`); required.
    pub inside: String,
    /// DPDK device name of the outside port (`ports.outside`); required.
    pub outside: String,
    /// Number of worker threads (`workers`), 1 to 128; default 1.
    pub workers: usize,
    /// The policy file (`policies`); required. A relative path is relative
    /// to the current directory of the process, not to the configuration
    /// file; it is kept as written.
    pub policies: PathBuf,
    /// Where the HTTP endpoint listens (`metrics_listen`); default
    /// `127.0.0.1:9477`.
    pub metrics_listen: SocketAddr,
    /// Flow cache entries per worker (`flow_cache.capacity_per_worker`),
    /// 1 to 2^27; default 1048576.
    pub flow_cache_capacity: usize,
    /// Idle flow expiry in seconds (`flow_cache.idle_timeout_s`), 1 to
    /// 86400; default 30.
    pub idle_timeout_s: u64,
    /// Longest a shaper may hold a packet (`shaper.max_delay_ms`), 1 to
    /// 60000; default 100.
    pub max_delay_ms: u64,
    /// `trust_dscp`; default true. False clears the DSCP of IP traffic that
    /// matches no policy.
    pub trust_dscp: bool,
    /// `malformed`: `"forward"` (default, false) or `"drop"` (true).
    pub malformed_drop: bool,
}

pub const DEFAULT_WORKERS: usize = 1;
pub const MAX_WORKERS: u64 = 128;
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_FLOW_CACHE_CAPACITY: usize = 1 << 20;
pub const MAX_FLOW_CACHE_CAPACITY: u64 = 1 << 27;
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 30;
pub const MAX_IDLE_TIMEOUT_S: u64 = 86_400;
pub const DEFAULT_MAX_DELAY_MS: u64 = 100;
pub const MAX_MAX_DELAY_MS: u64 = 60_000;

/// The top-level fields, in the order of SPEC §3.
pub const FIELDS: [&str; 9] = [
    "eal",
    "ports",
    "workers",
    "policies",
    "metrics_listen",
    "flow_cache",
    "shaper",
    "trust_dscp",
    "malformed",
];
const PORTS_FIELDS: [&str; 2] = ["inside", "outside"];
const FLOW_CACHE_FIELDS: [&str; 2] = ["capacity_per_worker", "idle_timeout_s"];
const SHAPER_FIELDS: [&str; 1] = ["max_delay_ms"];

impl Default for GatewayConfig {
    /// The defaults of SPEC §3, with empty `ports` and `policies` (which a
    /// configuration file must give).
    fn default() -> Self {
        GatewayConfig {
            eal: Vec::new(),
            inside: String::new(),
            outside: String::new(),
            workers: DEFAULT_WORKERS,
            policies: PathBuf::new(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            flow_cache_capacity: DEFAULT_FLOW_CACHE_CAPACITY,
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            max_delay_ms: DEFAULT_MAX_DELAY_MS,
            trust_dscp: true,
            malformed_drop: false,
        }
    }
}

/// Reads and validates a gateway configuration file. A file that cannot be
/// read is one diagnostic (`FILE: cannot read ...`).
pub fn load_gateway_config(path: &Path) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = crate::read_text(&name, path, "gateway configuration file").map_err(|e| vec![e])?;
    parse_gateway_config(&name, &text)
}

/// Parses and validates a gateway configuration's text. `file_name` is used
/// in diagnostics only. On error, returns every error found, sorted by
/// position.
pub fn parse_gateway_config(file_name: &str, text: &str) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let root =
        json::parse(text).map_err(|e| vec![Diagnostic::error(file_name, e.pos, e.message)])?;
    let mut cx = Cx {
        file: file_name,
        errors: Vec::new(),
    };
    let mut config = GatewayConfig::default();
    let Some(top) = cx.object(&root, "", &FIELDS, "the gateway configuration") else {
        return Err(cx.errors);
    };

    if let Some(v) = top.get("eal") {
        if let Some(eal) = cx.eal(v) {
            config.eal = eal;
        }
    }
    match top.get("ports") {
        Some(v) => {
            if let Some(ports) = cx.object(v, "ports.", &PORTS_FIELDS, "ports") {
                let inside = cx.device(&ports, v.pos, "inside");
                let outside = cx.device(&ports, v.pos, "outside");
                if let (Some(i), Some(o)) = (&inside, &outside) {
                    if i == o {
                        cx.error(
                            ports["outside"].pos,
                            format!(
                                "ports.outside: {o:?} is also ports.inside; the two ports must be different devices"
                            ),
                        );
                    }
                }
                config.inside = inside.unwrap_or_default();
                config.outside = outside.unwrap_or_default();
            }
        }
        None => cx.error(
            root.pos,
            "ports: missing; required: \"ports\": {\"inside\": DEVICE, \"outside\": DEVICE} with DPDK device names",
        ),
    }
    if let Some(v) = top.get("workers") {
        if let Some(n) = cx.uint(v, "workers", 1, MAX_WORKERS, "the number of workers") {
            config.workers = n as usize;
        }
    }
    match top.get("policies") {
        Some(v) => match &v.value {
            Value::String(s) if !s.is_empty() => config.policies = PathBuf::from(s),
            Value::String(_) => cx.error(
                v.pos,
                "policies: empty; must be the path of the policy file",
            ),
            other => cx.error(
                v.pos,
                format!(
                    "policies: must be a string, not {}; the path of the policy file",
                    other.kind()
                ),
            ),
        },
        None => cx.error(
            root.pos,
            "policies: missing; required: \"policies\": \"PATH\", the path of the policy file",
        ),
    }
    if let Some(v) = top.get("metrics_listen") {
        if let Some(addr) = cx.listen(v) {
            config.metrics_listen = addr;
        }
    }
    if let Some(v) = top.get("flow_cache") {
        if let Some(fc) = cx.object(v, "flow_cache.", &FLOW_CACHE_FIELDS, "flow_cache") {
            if let Some(v) = fc.get("capacity_per_worker") {
                if let Some(n) = cx.uint(
                    v,
                    "flow_cache.capacity_per_worker",
                    1,
                    MAX_FLOW_CACHE_CAPACITY,
                    "the flow cache capacity per worker",
                ) {
                    config.flow_cache_capacity = n as usize;
                }
            }
            if let Some(v) = fc.get("idle_timeout_s") {
                if let Some(n) = cx.uint(
                    v,
                    "flow_cache.idle_timeout_s",
                    1,
                    MAX_IDLE_TIMEOUT_S,
                    "the idle timeout in seconds",
                ) {
                    config.idle_timeout_s = n;
                }
            }
        }
    }
    if let Some(v) = top.get("shaper") {
        if let Some(sh) = cx.object(v, "shaper.", &SHAPER_FIELDS, "shaper") {
            if let Some(v) = sh.get("max_delay_ms") {
                if let Some(n) = cx.uint(
                    v,
                    "shaper.max_delay_ms",
                    1,
                    MAX_MAX_DELAY_MS,
                    "the longest shaper delay in milliseconds",
                ) {
                    config.max_delay_ms = n;
                }
            }
        }
    }
    if let Some(v) = top.get("trust_dscp") {
        match v.value {
            Value::Bool(b) => config.trust_dscp = b,
            ref other => cx.error(
                v.pos,
                format!("trust_dscp: must be true or false, not {}", other.kind()),
            ),
        }
    }
    if let Some(v) = top.get("malformed") {
        const ALLOWED: &str =
            "allowed: \"forward\" (the default: pass unchanged and count) or \"drop\"";
        match &v.value {
            Value::String(s) if s == "forward" => config.malformed_drop = false,
            Value::String(s) if s == "drop" => config.malformed_drop = true,
            Value::String(s) => cx.error(
                v.pos,
                format!("malformed: {s:?} is not an action; {ALLOWED}"),
            ),
            other => cx.error(
                v.pos,
                format!(
                    "malformed: must be a string, not {}; {ALLOWED}",
                    other.kind()
                ),
            ),
        }
    }

    if cx.errors.is_empty() {
        Ok(config)
    } else {
        cx.errors.sort_by_key(|d| d.pos);
        Err(cx.errors)
    }
}

/// The file name and the errors found so far.
struct Cx<'f> {
    file: &'f str,
    errors: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(Diagnostic::error(self.file, pos, message));
    }

    /// The members of an object whose fields must be among `allowed`,
    /// reporting unknown and repeated fields. `prefix` is the field path
    /// (`"ports."`) for messages; `what` names the object. Returns None (after
    /// an error) if `v` is not an object.
    fn object<'v>(
        &mut self,
        v: &'v Spanned,
        prefix: &str,
        allowed: &[&str],
        what: &str,
    ) -> Option<HashMap<&'v str, &'v Spanned>> {
        let Value::Object(members) = &v.value else {
            let field = prefix.trim_end_matches('.');
            let lead = if field.is_empty() {
                format!("{what} must be")
            } else {
                format!("{field}: must be")
            };
            self.error(
                v.pos,
                format!(
                    "{lead} a JSON object, not {}; allowed fields are {}",
                    v.value.kind(),
                    allowed.join(", ")
                ),
            );
            return None;
        };
        let mut fields: HashMap<&str, &Member> = HashMap::new();
        for m in members {
            if let Some(first) = fields.get(m.key.as_str()) {
                self.error(
                    m.key_pos,
                    format!(
                        "{prefix}{}: given twice (first at line {}); a field may appear once",
                        m.key, first.key_pos.line
                    ),
                );
            } else if allowed.contains(&m.key.as_str()) {
                fields.insert(m.key.as_str(), m);
            } else {
                self.error(
                    m.key_pos,
                    format!("{prefix}{}: {}", m.key, unknown_field(&m.key, allowed)),
                );
            }
        }
        Some(fields.into_iter().map(|(k, m)| (k, &m.value)).collect())
    }

    /// `ports.inside` / `ports.outside`: a non-empty device name.
    fn device(
        &mut self,
        ports: &HashMap<&str, &Spanned>,
        ports_pos: Pos,
        key: &str,
    ) -> Option<String> {
        const RULE: &str = "a DPDK device name such as \"0000:3b:00.0\" or \"net_tap0\"";
        let Some(v) = ports.get(key) else {
            self.error(ports_pos, format!("ports.{key}: missing; required: {RULE}"));
            return None;
        };
        match &v.value {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.error(v.pos, format!("ports.{key}: empty; must be {RULE}"));
                None
            }
            other => {
                self.error(
                    v.pos,
                    format!(
                        "ports.{key}: must be a string, not {}; {RULE}",
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    /// `eal`: an array of strings, each error at its element.
    fn eal(&mut self, v: &Spanned) -> Option<Vec<String>> {
        const RULE: &str =
            "an array of DPDK EAL arguments as strings, e.g. [\"--no-huge\", \"-m\", \"512\"]";
        let Value::Array(items) = &v.value else {
            self.error(
                v.pos,
                format!("eal: must be {RULE}, not {}", v.value.kind()),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match &item.value {
                Value::String(s) => out.push(s.clone()),
                other => {
                    ok = false;
                    self.error(
                        item.pos,
                        format!(
                            "eal: element #{} must be a string, not {}; eal is {RULE}",
                            i + 1,
                            other.kind()
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// An integer from `lo` to `hi`.
    fn uint(&mut self, v: &Spanned, field: &str, lo: u64, hi: u64, what: &str) -> Option<u64> {
        let allowed = format!("{what} is an integer from {lo} to {hi}");
        let msg = match &v.value {
            Value::Number(t) => {
                let digits = t.strip_prefix('-').unwrap_or(t);
                if digits.bytes().all(|b| b.is_ascii_digit()) {
                    match t.parse::<u64>() {
                        Ok(n) if (lo..=hi).contains(&n) => return Some(n),
                        _ => format!("{t} is out of range; {allowed}"),
                    }
                } else {
                    format!("{t} is not an integer; {allowed}")
                }
            }
            other => format!("must be a number, not {}; {allowed}", other.kind()),
        };
        self.error(v.pos, format!("{field}: {msg}"));
        None
    }

    /// `metrics_listen`: `IPv4:PORT` or `[IPv6]:PORT`.
    fn listen(&mut self, v: &Spanned) -> Option<SocketAddr> {
        const RULE: &str =
            "an address and port such as \"127.0.0.1:9477\", \"0.0.0.0:9477\" or \"[::1]:9477\"";
        match &v.value {
            Value::String(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.error(
                        v.pos,
                        format!("metrics_listen: {s:?} is not an address and port; must be {RULE} (no host names)"),
                    );
                    None
                }
            },
            other => {
                self.error(
                    v.pos,
                    format!(
                        "metrics_listen: must be a string, not {}; {RULE}",
                        other.kind()
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
  "ports": { "inside": "net_tap0", "outside": "net_tap1" },
  "policies": "config/policies.json"
}"#;

    /// Every error as `LINE:COLUMN: message`.
    fn errors(text: &str) -> Vec<String> {
        match parse_gateway_config("gw.json", text) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e
                .iter()
                .map(|d| {
                    let s = d.to_string();
                    s.strip_prefix("gw.json:").unwrap_or(&s).to_string()
                })
                .collect(),
        }
    }

    fn one_error(text: &str) -> String {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn defaults() {
        let c = parse_gateway_config("gw.json", MINIMAL).unwrap();
        assert_eq!(
            c,
            GatewayConfig {
                eal: vec![],
                inside: "net_tap0".into(),
                outside: "net_tap1".into(),
                workers: 1,
                policies: PathBuf::from("config/policies.json"),
                metrics_listen: "127.0.0.1:9477".parse().unwrap(),
                flow_cache_capacity: 1_048_576,
                idle_timeout_s: 30,
                max_delay_ms: 100,
                trust_dscp: true,
                malformed_drop: false,
            }
        );
        assert_eq!(
            GatewayConfig::default().metrics_listen.to_string(),
            DEFAULT_METRICS_LISTEN
        );
    }

    #[test]
    fn every_field() {
        let text = r#"{
  "eal": ["--no-huge", "-m", "512", "--no-shconf", "--no-pci",
          "--vdev=net_tap0,iface=qosgw-in", "--vdev=net_tap1,iface=qosgw-out"],
  "ports": { "inside": "net_tap0", "outside": "net_tap1" },
  "workers": 4,
  "policies": "/etc/qosgw/policies.json",
  "metrics_listen": "[::1]:9100",
  "flow_cache": { "capacity_per_worker": 4096, "idle_timeout_s": 120 },
  "shaper": { "max_delay_ms": 250 },
  "trust_dscp": false,
  "malformed": "drop"
}"#;
        let c = parse_gateway_config("gw.json", text).unwrap();
        assert_eq!(
            c.eal,
            [
                "--no-huge",
                "-m",
                "512",
                "--no-shconf",
                "--no-pci",
                "--vdev=net_tap0,iface=qosgw-in",
                "--vdev=net_tap1,iface=qosgw-out"
            ]
        );
        assert_eq!(c.inside, "net_tap0");
        assert_eq!(c.outside, "net_tap1");
        assert_eq!(c.workers, 4);
        assert_eq!(c.policies, Path::new("/etc/qosgw/policies.json"));
        assert_eq!(c.metrics_listen, "[::1]:9100".parse().unwrap());
        assert_eq!(c.flow_cache_capacity, 4096);
        assert_eq!(c.idle_timeout_s, 120);
        assert_eq!(c.max_delay_ms, 250);
        assert!(!c.trust_dscp);
        assert!(c.malformed_drop);
    }

    #[test]
    fn the_spec_example_is_valid() {
        let text = r#"{
  "eal": ["--no-huge", "-m", "512", "--no-shconf", "--no-pci",
          "--vdev=net_tap0,iface=qosgw-in", "--vdev=net_tap1,iface=qosgw-out"],
  "ports": { "inside": "net_tap0", "outside": "net_tap1" },
  "workers": 1,
  "policies": "config/policies.json",
  "metrics_listen": "127.0.0.1:9477",
  "flow_cache": { "capacity_per_worker": 1048576, "idle_timeout_s": 30 },
  "shaper": { "max_delay_ms": 100 },
  "trust_dscp": true,
  "malformed": "forward"
}"#;
        let c = parse_gateway_config("gw.json", text).unwrap();
        let d = parse_gateway_config("gw.json", MINIMAL).unwrap();
        assert_eq!(c.eal.len(), 7);
        assert_eq!(GatewayConfig { eal: vec![], ..c }, d);
    }

    #[test]
    fn range_limits() {
        let with = |field: &str| {
            format!(
                "{{\"ports\": {{\"inside\": \"a\", \"outside\": \"b\"}}, \"policies\": \"p\", {field}}}"
            )
        };
        for ok in [
            "\"workers\": 1",
            "\"workers\": 128",
            "\"flow_cache\": {\"capacity_per_worker\": 1}",
            "\"flow_cache\": {\"capacity_per_worker\": 134217728}",
            "\"flow_cache\": {\"idle_timeout_s\": 86400}",
            "\"shaper\": {\"max_delay_ms\": 60000}",
            "\"shaper\": {}",
            "\"eal\": []",
        ] {
            parse_gateway_config("gw.json", &with(ok)).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for (bad, msg) in [
            ("\"workers\": 0", "workers: 0 is out of range; the number of workers is an integer from 1 to 128"),
            ("\"workers\": 129", "workers: 129 is out of range"),
            ("\"workers\": -1", "workers: -1 is out of range"),
            ("\"workers\": 1.5", "workers: 1.5 is not an integer"),
            ("\"workers\": 1e2", "workers: 1e2 is not an integer"),
            ("\"workers\": \"2\"", "workers: must be a number, not a string"),
            ("\"workers\": 99999999999999999999999", "out of range"),
            ("\"flow_cache\": {\"capacity_per_worker\": 134217729}", "flow_cache.capacity_per_worker: 134217729 is out of range; the flow cache capacity per worker is an integer from 1 to 134217728"),
            ("\"flow_cache\": {\"capacity_per_worker\": 0}", "flow_cache.capacity_per_worker: 0 is out of range"),
            ("\"flow_cache\": {\"idle_timeout_s\": 0}", "flow_cache.idle_timeout_s: 0 is out of range; the idle timeout in seconds is an integer from 1 to 86400"),
            ("\"flow_cache\": {\"idle_timeout_s\": 86401}", "flow_cache.idle_timeout_s: 86401 is out of range"),
            ("\"shaper\": {\"max_delay_ms\": 0}", "shaper.max_delay_ms: 0 is out of range; the longest shaper delay in milliseconds is an integer from 1 to 60000"),
            ("\"shaper\": {\"max_delay_ms\": 60001}", "shaper.max_delay_ms: 60001 is out of range"),
            ("\"trust_dscp\": \"yes\"", "trust_dscp: must be true or false, not a string"),
            ("\"trust_dscp\": 1", "trust_dscp: must be true or false, not a number"),
            ("\"flow_cache\": 5", "flow_cache: must be a JSON object, not a number; allowed fields are capacity_per_worker, idle_timeout_s"),
            ("\"shaper\": []", "shaper: must be a JSON object, not an array"),
            ("\"eal\": \"--no-huge\"", "eal: must be an array of DPDK EAL arguments as strings"),
        ] {
            let e = one_error(&with(bad));
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_have_exact_positions_and_all_are_reported() {
        let text = r#"{
  "eal": ["--no-huge", 512, null],
  "ports": { "inside": "net_tap0", "outside": 1 },
  "workers": 0,
  "policies": "",
  "metrics_listen": "localhost:9477",
  "flow_cache": { "capacity_per_worker": -5, "idle_timeout_s": 1.5 },
  "shaper": { "max_delay_ms": "100" },
  "trust_dscp": "true",
  "malformed": "reject"
}"#;
        let e = errors(text);
        let expected = [
            "2:24: eal: element #2 must be a string, not a number",
            "2:29: eal: element #3 must be a string, not null",
            "3:47: ports.outside: must be a string, not a number",
            "4:14: workers: 0 is out of range",
            "5:15: policies: empty",
            "6:21: metrics_listen: \"localhost:9477\" is not an address and port",
            "7:42: flow_cache.capacity_per_worker: -5 is out of range",
            "7:64: flow_cache.idle_timeout_s: 1.5 is not an integer",
            "8:31: shaper.max_delay_ms: must be a number, not a string",
            "9:17: trust_dscp: must be true or false, not a string",
            "10:16: malformed: \"reject\" is not an action; allowed: \"forward\" (the default: pass unchanged and count) or \"drop\"",
        ];
        assert_eq!(e.len(), expected.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expected) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn unknown_fields_at_every_level() {
        let text = r#"{
  "ports": { "inside": "a", "outside": "b", "mgmt": "c" },
  "policies": "p",
  "worker": 2,
  "flow_cache": { "capacity": 10 },
  "shaper": { "max_delay_ms": 5, "max_delay": 5 }
}"#;
        let e = errors(text);
        assert_eq!(
            e,
            [
                "2:45: ports.mgmt: unknown field; allowed fields are inside, outside",
                "4:3: worker: unknown field; did you mean \"workers\"? allowed fields are eal, ports, workers, policies, metrics_listen, flow_cache, shaper, trust_dscp, malformed",
                "5:19: flow_cache.capacity: unknown field; allowed fields are capacity_per_worker, idle_timeout_s",
                "6:34: shaper.max_delay: unknown field; allowed fields are max_delay_ms",
            ]
        );
    }

    #[test]
    fn repeated_fields() {
        let text = "{\"ports\": {\"inside\": \"a\", \"outside\": \"b\"},\n \"policies\": \"p\",\n \"workers\": 2, \"workers\": 3}";
        assert_eq!(
            one_error(text),
            "3:16: workers: given twice (first at line 3); a field may appear once"
        );
    }

    #[test]
    fn missing_required_fields_point_at_the_enclosing_brace() {
        let e = errors("\n  {\"workers\": 2}");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("2:3: ports: missing; required: \"ports\": {\"inside\": DEVICE, \"outside\": DEVICE}"), "{e:#?}");
        assert!(
            e[1].starts_with("2:3: policies: missing; required"),
            "{e:#?}"
        );

        let e = errors("{\"policies\": \"p\",\n \"ports\": {\"outside\": \"b\"}}");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("2:11: ports.inside: missing; required: a DPDK device name"),
            "{e:#?}"
        );

        let e = errors("{\"policies\": \"p\", \"ports\": {}}");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("1:28: ports.inside: missing"), "{e:#?}");
        assert!(e[1].starts_with("1:28: ports.outside: missing"), "{e:#?}");
    }

    #[test]
    fn ports_must_differ_and_be_named() {
        let e =
            one_error("{\"policies\": \"p\", \"ports\": {\"inside\": \"x\", \"outside\": \"x\"}}");
        assert_eq!(
            e,
            "1:55: ports.outside: \"x\" is also ports.inside; the two ports must be different devices"
        );
        let e =
            one_error("{\"policies\": \"p\", \"ports\": {\"inside\": \" \", \"outside\": \"x\"}}");
        assert!(e.starts_with("1:39: ports.inside: empty"), "{e}");
        let e = one_error("{\"policies\": \"p\", \"ports\": [\"a\", \"b\"]}");
        assert!(
            e.starts_with("1:28: ports: must be a JSON object, not an array; allowed fields are inside, outside"),
            "{e}"
        );
    }

    #[test]
    fn listen_addresses() {
        let with = |addr: &str| {
            format!(
                "{{\"ports\": {{\"inside\": \"a\", \"outside\": \"b\"}}, \"policies\": \"p\",\n\"metrics_listen\": {addr}}}"
            )
        };
        for (ok, want) in [
            ("\"0.0.0.0:80\"", "0.0.0.0:80"),
            ("\"[::]:9477\"", "[::]:9477"),
            ("\"127.0.0.1:0\"", "127.0.0.1:0"),
        ] {
            let c = parse_gateway_config("gw.json", &with(ok)).unwrap();
            assert_eq!(c.metrics_listen.to_string(), want);
        }
        for bad in [
            "\"127.0.0.1\"",
            "\"127.0.0.1:65536\"",
            "\"::1:9477\"",
            "\"localhost:9477\"",
            "\":9477\"",
            "\"\"",
        ] {
            let e = one_error(&with(bad));
            assert!(
                e.starts_with("2:19: metrics_listen: ") && e.contains("is not an address and port; must be an address and port such as \"127.0.0.1:9477\""),
                "{bad}: {e}"
            );
        }
        let e = one_error(&with("9477"));
        assert!(
            e.starts_with("2:19: metrics_listen: must be a string, not a number"),
            "{e}"
        );
    }

    #[test]
    fn malformed_values() {
        let with = |v: &str| {
            format!(
                "{{\"ports\": {{\"inside\": \"a\", \"outside\": \"b\"}}, \"policies\": \"p\", \"malformed\": {v}}}"
            )
        };
        assert!(
            !parse_gateway_config("g", &with("\"forward\""))
                .unwrap()
                .malformed_drop
        );
        assert!(
            parse_gateway_config("g", &with("\"drop\""))
                .unwrap()
                .malformed_drop
        );
        for bad in ["\"Drop\"", "\"pass\"", "\"\"", "true", "null"] {
            let e = one_error(&with(bad));
            assert!(e.starts_with("1:74: malformed: "), "{bad}: {e}");
            assert!(
                e.ends_with(
                    "allowed: \"forward\" (the default: pass unchanged and count) or \"drop\""
                ),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn syntax_and_shape_errors() {
        assert_eq!(
            one_error("{\"policies\": \"p\",}"),
            "1:18: invalid JSON: trailing comma before '}'"
        );
        assert_eq!(
            one_error("\n [1]"),
            "2:2: the gateway configuration must be a JSON object, not an array; allowed fields are eal, ports, workers, policies, metrics_listen, flow_cache, shaper, trust_dscp, malformed"
        );
        let e = one_error("{\"ports\": {\"inside\": \"a\", \"outside\": \"b\"}, \"policies\": 7}");
        assert!(
            e.starts_with("1:56: policies: must be a string, not a number"),
            "{e}"
        );
    }

    #[test]
    fn load_from_a_file() {
        let dir = crate::testdir::TestDir::new("config");
        let path = dir.join("gw.json");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = load_gateway_config(&path).unwrap();
        assert_eq!(c.inside, "net_tap0");

        std::fs::write(&path, "{\"ports\": 1, \"policies\": \"p\"}").unwrap();
        let e = load_gateway_config(&path).unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with(&format!("{}:1:11: ports:", path.display())),
            "{e:?}"
        );

        let missing = dir.join("missing.json");
        let e = load_gateway_config(&missing).unwrap_err();
        assert_eq!(e.len(), 1);
        let s = e[0].to_string();
        assert!(
            s.starts_with(&format!(
                "{}: cannot read the gateway configuration file: ",
                missing.display()
            )),
            "{s}"
        );
    }
}
