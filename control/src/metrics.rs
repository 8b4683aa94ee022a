//! Prometheus text rendering of the gateway's metrics (SPEC §6).
//!
//! The control thread sums the workers' counters and reads the ports' stats
//! into a plain [`MetricsSnapshot`]; [`render`] turns it into the text format
//! with the names, types and labels of SPEC §6. Each render builds a fresh
//! `prometheus::Registry`, so nothing is shared with the workers and a
//! policy that disappears in a reload disappears from the output; the
//! per-policy families, a series per policy (tens of thousands), are written
//! directly in the format the registry's encoder writes.
//!
//! Every family appears with value 0 when there is something to label it by:
//! each port gets every `reason` of drops and its link, each worker both `result`s of
//! lookups and its three eviction `reason`s, and reloads both `result`s. A
//! family whose labels come only from the snapshot's lists (policies,
//! malformed reasons) has one series per entry; pass every malformed reason
//! the dataplane knows, even at 0, so that it appears.

use prometheus::core::Collector;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::process::ProcessMetrics;

/// What [`render`] shows: counters since start and current gauges.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Label `port` = [`PortMetrics::port`] (`"inside"`, `"outside"`).
    pub ports: Vec<PortMetrics>,
    /// Label `policy` = [`PolicyMetrics::name`].
    pub policies: Vec<PolicyMetrics>,
    pub unmatched_packets: u64,
    pub non_ip_packets: u64,
    /// (label `reason`, count).
    pub malformed: Vec<(String, u64)>,
    /// Label `worker` = the index in this list, as a decimal string.
    pub workers: Vec<WorkerMetrics>,
    pub policy_generation: u64,
    pub reloads_ok: u64,
    pub reloads_error: u64,
    /// The conventional `process_*` families, when the process could be read.
    pub process: Option<ProcessMetrics>,
}

/// One port's counters (from `rte_eth_stats_get` and the TX path).
#[derive(Debug, Clone, Default)]
pub struct PortMetrics {
    pub port: String,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped with `reason="rx_missed"`.
    pub rx_missed: u64,
    /// Dropped with `reason="tx_full"`.
    pub tx_full: u64,
    /// Dropped with `reason="no_mbuf"`.
    pub no_mbuf: u64,
    /// Dropped with `reason="handoff_full"`: received here for another worker whose
    /// inbox was full (`run` with several workers).
    pub handoff_full: u64,
    /// Frames the driver received in error (a bad CRC, too long) and discarded.
    pub rx_errors: u64,
    /// Frames the driver failed to send, as it counts them.
    pub tx_errors: u64,
    /// `qosgw_port_link_up`: 1 while the link is up; no series while unknown.
    pub link_up: Option<bool>,
}

/// One policy's counters, summed over the workers.
#[derive(Debug, Clone, Default)]
pub struct PolicyMetrics {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    /// Flows classified to the policy.
    pub flows: u64,
    /// Packets a shaper delayed.
    pub delayed: u64,
    /// Packets a shaper dropped (tail drop past `max_delay_ms`).
    pub dropped: u64,
}

/// One worker's flow cache, shaper and load.
#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics {
    pub cache_entries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub evictions_idle: u64,
    pub evictions_full: u64,
    pub evictions_tcp_close: u64,
    pub backlog_packets: u64,
    pub backlog_bytes: u64,
    /// Share of polls that found packets, 0 to 1.
    pub busy_ratio: f64,
}

/// Every metric name of SPEC §6 with its type, in the SPEC's order, then those qosgw adds.
pub const METRIC_NAMES: [(&str, &str); 24] = [
    ("qosgw_port_rx_packets_total", "counter"),
    ("qosgw_port_tx_packets_total", "counter"),
    ("qosgw_port_rx_bytes_total", "counter"),
    ("qosgw_port_tx_bytes_total", "counter"),
    ("qosgw_port_dropped_packets_total", "counter"),
    ("qosgw_policy_packets_total", "counter"),
    ("qosgw_policy_bytes_total", "counter"),
    ("qosgw_policy_flows_total", "counter"),
    ("qosgw_policy_delayed_packets_total", "counter"),
    ("qosgw_policy_dropped_packets_total", "counter"),
    ("qosgw_unmatched_packets_total", "counter"),
    ("qosgw_non_ip_packets_total", "counter"),
    ("qosgw_malformed_packets_total", "counter"),
    ("qosgw_flow_cache_entries", "gauge"),
    ("qosgw_flow_cache_lookups_total", "counter"),
    ("qosgw_flow_cache_evictions_total", "counter"),
    ("qosgw_shaper_backlog_packets", "gauge"),
    ("qosgw_shaper_backlog_bytes", "gauge"),
    ("qosgw_policy_generation", "gauge"),
    ("qosgw_policy_reloads_total", "counter"),
    ("qosgw_worker_busy_ratio", "gauge"),
    ("qosgw_port_link_up", "gauge"),
    ("qosgw_port_rx_errors_total", "counter"),
    ("qosgw_port_tx_errors_total", "counter"),
];

/// The metric families of one render, registered in a fresh registry.
struct Families {
    registry: prometheus::Registry,
}

impl Families {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        // Names and labels are constants checked by the tests; a failure
        // here could only be a duplicate name, which the tests rule out.
        let _ = self.registry.register(Box::new(c.clone()));
        c
    }

    // The constructors fail only for an invalid name or label name; all are
    // constants here, and the tests render every one.
    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric options"))
    }

    fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric options"))
    }

    fn counter(&self, name: &str, help: &str, value: u64) {
        if let Ok(c) = IntCounter::with_opts(Opts::new(name, help)) {
            c.inc_by(value);
            self.add(c);
        }
    }

    fn gauge(&self, name: &str, help: &str, value: u64) {
        if let Ok(g) = IntGauge::with_opts(Opts::new(name, help)) {
            g.set(clamp(value));
            self.add(g);
        }
    }

    fn float_counter(&self, name: &str, help: &str, value: f64) {
        if let Ok(c) = Counter::with_opts(Opts::new(name, help)) {
            c.inc_by(value);
            self.add(c);
        }
    }

    fn float_gauge(&self, name: &str, help: &str, value: f64) {
        if let Ok(g) = Gauge::with_opts(Opts::new(name, help)) {
            g.set(value);
            self.add(g);
        }
    }
}

/// A u64 gauge value as the i64 an IntGauge holds.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders a snapshot in the Prometheus text exposition format (version
/// 0.0.4; serve it with [`crate::http::Response::prometheus`]). Families are
/// sorted by name, each with `# HELP` and `# TYPE` lines.
pub fn render(s: &MetricsSnapshot) -> String {
    let f = Families {
        registry: prometheus::Registry::new(),
    };

    // Ports.
    let port_counters = [
        (
            "qosgw_port_rx_packets_total",
            "Frames received on the port.",
        ),
        (
            "qosgw_port_tx_packets_total",
            "Frames transmitted on the port.",
        ),
        (
            "qosgw_port_rx_bytes_total",
            "Bytes received on the port (Ethernet header through payload, no FCS).",
        ),
        (
            "qosgw_port_tx_bytes_total",
            "Bytes transmitted on the port (Ethernet header through payload, no FCS).",
        ),
        (
            "qosgw_port_rx_errors_total",
            "Frames the port's driver received in error (a bad CRC, too long) and discarded.",
        ),
        (
            "qosgw_port_tx_errors_total",
            "Frames the port's driver failed to send, as it counts them (a frame it refused is also in qosgw_port_dropped_packets_total with reason tx_full).",
        ),
    ]
    .map(|(name, help)| f.counter_vec(name, help, &["port"]));
    let port_dropped = f.counter_vec(
        "qosgw_port_dropped_packets_total",
        "Frames dropped at the port: rx_missed (the NIC's RX queue was full), tx_full (the TX queue was full), no_mbuf (no packet buffer for RX), handoff_full (the worker that owns the frame's inside host was too busy to take it).",
        &["port", "reason"],
    );
    let link_up = f.gauge_vec(
        "qosgw_port_link_up",
        "1 while the port's link is up, 0 while it is down (as the driver reports it).",
        &["port"],
    );
    for p in &s.ports {
        let values = [
            p.rx_packets,
            p.tx_packets,
            p.rx_bytes,
            p.tx_bytes,
            p.rx_errors,
            p.tx_errors,
        ];
        for (c, v) in port_counters.iter().zip(values) {
            c.with_label_values(&[p.port.as_str()]).inc_by(v);
        }
        for (reason, v) in [
            ("rx_missed", p.rx_missed),
            ("tx_full", p.tx_full),
            ("no_mbuf", p.no_mbuf),
            ("handoff_full", p.handoff_full),
        ] {
            port_dropped
                .with_label_values(&[p.port.as_str(), reason])
                .inc_by(v);
        }
        if let Some(up) = p.link_up {
            link_up
                .with_label_values(&[p.port.as_str()])
                .set(i64::from(up));
        }
    }

    f.counter(
        "qosgw_unmatched_packets_total",
        "IP packets that matched no policy (forwarded unchanged, or with DSCP cleared when trust_dscp is false).",
        s.unmatched_packets,
    );
    f.counter(
        "qosgw_non_ip_packets_total",
        "Frames that are not IP (forwarded unchanged).",
        s.non_ip_packets,
    );
    let malformed = f.counter_vec(
        "qosgw_malformed_packets_total",
        "Frames that are truncated or inconsistent, by reason (forwarded or dropped as the malformed setting says).",
        &["reason"],
    );
    for (reason, v) in &s.malformed {
        malformed.with_label_values(&[reason.as_str()]).inc_by(*v);
    }

    // Workers.
    let entries = f.gauge_vec(
        "qosgw_flow_cache_entries",
        "Flows in the worker's flow cache.",
        &["worker"],
    );
    let lookups = f.counter_vec(
        "qosgw_flow_cache_lookups_total",
        "Flow cache lookups by result: hit (the flow was known) or miss (classified).",
        &["worker", "result"],
    );
    let evictions = f.counter_vec(
        "qosgw_flow_cache_evictions_total",
        "Flows removed from the flow cache: idle (idle timeout), full (least recently used, to make room), tcp_close (after FIN or RST).",
        &["worker", "reason"],
    );
    let backlog_packets = f.gauge_vec(
        "qosgw_shaper_backlog_packets",
        "Packets held by the worker's shapers.",
        &["worker"],
    );
    let backlog_bytes = f.gauge_vec(
        "qosgw_shaper_backlog_bytes",
        "Bytes held by the worker's shapers.",
        &["worker"],
    );
    let busy = f.float_gauge_vec(
        "qosgw_worker_busy_ratio",
        "Share of the worker's polls that found packets (0 to 1).",
        &["worker"],
    );
    for (i, w) in s.workers.iter().enumerate() {
        let worker = i.to_string();
        let worker = worker.as_str();
        entries
            .with_label_values(&[worker])
            .set(clamp(w.cache_entries));
        lookups
            .with_label_values(&[worker, "hit"])
            .inc_by(w.cache_hits);
        lookups
            .with_label_values(&[worker, "miss"])
            .inc_by(w.cache_misses);
        for (reason, v) in [
            ("idle", w.evictions_idle),
            ("full", w.evictions_full),
            ("tcp_close", w.evictions_tcp_close),
        ] {
            evictions.with_label_values(&[worker, reason]).inc_by(v);
        }
        backlog_packets
            .with_label_values(&[worker])
            .set(clamp(w.backlog_packets));
        backlog_bytes
            .with_label_values(&[worker])
            .set(clamp(w.backlog_bytes));
        busy.with_label_values(&[worker]).set(w.busy_ratio);
    }

    // Reloads.
    f.gauge(
        "qosgw_policy_generation",
        "Generation of the policy set in force (raised by each successful reload).",
        s.policy_generation,
    );
    let reloads = f.counter_vec(
        "qosgw_policy_reloads_total",
        "Policy reloads by result: ok (published) or error (invalid; the running set stays).",
        &["result"],
    );
    reloads.with_label_values(&["ok"]).inc_by(s.reloads_ok);
    reloads
        .with_label_values(&["error"])
        .inc_by(s.reloads_error);

    // The process, under the names every Prometheus client library gives it.
    if let Some(p) = &s.process {
        f.float_counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        );
        f.float_gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        );
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                p.threads,
            ),
        ] {
            f.gauge(name, help, v);
        }
    }

    // Each family's text by name: the registry's, and the policies' written directly.
    let mut families: Vec<(String, String)> = f
        .registry
        .gather()
        .iter()
        .map(|mf| {
            let mut text = Vec::new();
            // Encoding into a Vec cannot fail for families built here.
            let _ = prometheus::TextEncoder::new().encode(std::slice::from_ref(mf), &mut text);
            (
                mf.get_name().to_owned(),
                String::from_utf8(text).unwrap_or_default(),
            )
        })
        .collect();
    if !s.policies.is_empty() {
        // Series by policy name, as the encoder orders them: sorted once for all five.
        let mut policies: Vec<&PolicyMetrics> = s.policies.iter().collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        families.extend(POLICY_FAMILIES.iter().map(|family| {
            let text = policy_family(family, &policies);
            (family.0.to_owned(), text)
        }));
    }
    families.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    families.into_iter().map(|(_, text)| text).collect()
}

/// The per-policy counters: name, help, and the value of a policy.
type PolicyFamily = (&'static str, &'static str, fn(&PolicyMetrics) -> u64);

const POLICY_FAMILIES: [PolicyFamily; 5] = [
    (
        "qosgw_policy_packets_total",
        "Packets of the policy's flows that it let through, at once or into its shaper's queue (its shaper's drops are counted in qosgw_policy_dropped_packets_total instead).",
        |p| p.packets,
    ),
    (
        "qosgw_policy_bytes_total",
        "Bytes (as seen on the port) of the policy's packets that it let through.",
        |p| p.bytes,
    ),
    (
        "qosgw_policy_flows_total",
        "Flows classified to the policy.",
        |p| p.flows,
    ),
    (
        "qosgw_policy_delayed_packets_total",
        "Packets of the policy that its shaper delayed.",
        |p| p.delayed,
    ),
    (
        "qosgw_policy_dropped_packets_total",
        "Packets of the policy that its shaper dropped (tail drop): they would have left later than shaper.max_delay_ms from now, or the worker had no packet buffer left to hold them.",
        |p| p.dropped,
    ),
];

/// One per-policy counter family in the text format, as `prometheus::TextEncoder` writes
/// it, `policies` sorted by name; written directly: with tens of thousands of policies, a
/// registry of their series took about 150 MB and a second per render.
fn policy_family((name, help, value): &PolicyFamily, policies: &[&PolicyMetrics]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(64 + policies.len() * (name.len() + 40));
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} counter");
    for p in policies {
        let _ = writeln!(
            out,
            "{name}{{policy=\"{}\"}} {}",
            escape(&p.name, true),
            // As the encoder writes a counter: a float64 (exact up to 2^53).
            value(p) as f64
        );
    }
    out
}

/// Escapes text as the exposition format wants: backslash and newline, and in a label
/// value the double quote too.
fn escape(text: &str, label: bool) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\\', '\n', '"']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    /// One sample line: name, labels, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// Parses the text format strictly enough to catch a malformed line:
    /// `# HELP name text`, `# TYPE name type`, `name[{k="v",...}] value`.
    fn parse(
        text: &str,
    ) -> (
        Vec<Sample>,
        HashMap<String, String>,
        HashMap<String, String>,
    ) {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        let mut helps = HashMap::new();
        let is_name = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(line);
                assert!(is_name(name), "{line}");
                assert!(!help.is_empty(), "{line}");
                assert!(helps.insert(name.to_string(), help.to_string()).is_none());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect(line);
                assert!(is_name(name), "{line}");
                assert!(["counter", "gauge"].contains(&ty), "{line}");
                assert!(types.insert(name.to_string(), ty.to_string()).is_none());
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = value.parse().expect(line);
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect(line);
                    let mut labels = BTreeMap::new();
                    for pair in body.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').expect(line);
                        assert!(is_name(k), "{line}");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect(line);
                        labels.insert(k.to_string(), v.to_string());
                    }
                    (name, labels)
                }
            };
            assert!(is_name(name), "{line}");
            assert!(types.contains_key(name), "sample before its TYPE: {line}");
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        (samples, types, helps)
    }

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            ports: vec![
                PortMetrics {
                    port: "inside".into(),
                    rx_packets: 1000,
                    tx_packets: 990,
                    rx_bytes: 1_500_000,
                    tx_bytes: 1_480_000,
                    rx_missed: 3,
                    tx_full: 0,
                    no_mbuf: 1,
                    handoff_full: 7,
                    rx_errors: 2,
                    tx_errors: 5,
                    link_up: Some(true),
                },
                PortMetrics {
                    port: "outside".into(),
                    rx_packets: 5,
                    link_up: Some(false),
                    ..Default::default()
                },
            ],
            policies: vec![
                PolicyMetrics {
                    name: "voice".into(),
                    packets: 400,
                    bytes: 80_000,
                    flows: 4,
                    delayed: 0,
                    dropped: 0,
                },
                PolicyMetrics {
                    name: "backup".into(),
                    packets: 500,
                    bytes: u64::MAX,
                    flows: 1,
                    delayed: 120,
                    dropped: 7,
                },
            ],
            unmatched_packets: 90,
            non_ip_packets: 10,
            malformed: vec![("truncated".into(), 2), ("bad_ihl".into(), 0)],
            workers: vec![
                WorkerMetrics {
                    cache_entries: 5,
                    cache_hits: 995,
                    cache_misses: 5,
                    evictions_idle: 1,
                    evictions_full: 0,
                    evictions_tcp_close: 2,
                    backlog_packets: 3,
                    backlog_bytes: 4500,
                    busy_ratio: 0.25,
                },
                WorkerMetrics::default(),
            ],
            policy_generation: 3,
            reloads_ok: 2,
            reloads_error: 0,
            process: None,
        }
    }

    #[test]
    fn the_process_families_under_their_conventional_names() {
        let s = MetricsSnapshot {
            process: Some(ProcessMetrics {
                cpu_seconds: 12.5,
                resident_bytes: 734_003_200,
                virtual_bytes: 2_147_483_648,
                start_time_seconds: 1_795_794_552.25,
                open_fds: 23,
                max_fds: 20_000,
                threads: 6,
            }),
            ..snapshot()
        };
        let text = render(&s);
        let (samples, types, _) = parse(&text);
        let v = |name| value(&samples, name, &[]);
        for (name, ty, want) in [
            ("process_cpu_seconds_total", "counter", 12.5),
            ("process_resident_memory_bytes", "gauge", 734_003_200.0),
            ("process_virtual_memory_bytes", "gauge", 2_147_483_648.0),
            ("process_start_time_seconds", "gauge", 1_795_794_552.25),
            ("process_open_fds", "gauge", 23.0),
            ("process_max_fds", "gauge", 20_000.0),
            ("process_threads", "gauge", 6.0),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(ty), "{name}");
            assert_eq!(v(name), want, "{name}");
        }
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    #[test]
    fn every_spec_name_with_its_type_labels_and_help() {
        let text = render(&snapshot());
        let (samples, types, helps) = parse(&text);
        let labels_of: HashMap<&str, &[&str]> = HashMap::from([
            ("qosgw_port_rx_packets_total", &["port"][..]),
            ("qosgw_port_tx_packets_total", &["port"][..]),
            ("qosgw_port_rx_bytes_total", &["port"][..]),
            ("qosgw_port_tx_bytes_total", &["port"][..]),
            ("qosgw_port_dropped_packets_total", &["port", "reason"][..]),
            ("qosgw_policy_packets_total", &["policy"][..]),
            ("qosgw_policy_bytes_total", &["policy"][..]),
            ("qosgw_policy_flows_total", &["policy"][..]),
            ("qosgw_policy_delayed_packets_total", &["policy"][..]),
            ("qosgw_policy_dropped_packets_total", &["policy"][..]),
            ("qosgw_unmatched_packets_total", &[][..]),
            ("qosgw_non_ip_packets_total", &[][..]),
            ("qosgw_malformed_packets_total", &["reason"][..]),
            ("qosgw_flow_cache_entries", &["worker"][..]),
            ("qosgw_flow_cache_lookups_total", &["result", "worker"][..]),
            (
                "qosgw_flow_cache_evictions_total",
                &["reason", "worker"][..],
            ),
            ("qosgw_shaper_backlog_packets", &["worker"][..]),
            ("qosgw_shaper_backlog_bytes", &["worker"][..]),
            ("qosgw_policy_generation", &[][..]),
            ("qosgw_policy_reloads_total", &["result"][..]),
            ("qosgw_worker_busy_ratio", &["worker"][..]),
            ("qosgw_port_link_up", &["port"][..]),
            ("qosgw_port_rx_errors_total", &["port"][..]),
            ("qosgw_port_tx_errors_total", &["port"][..]),
        ]);
        assert_eq!(labels_of.len(), METRIC_NAMES.len());
        assert_eq!(types.len(), METRIC_NAMES.len(), "{text}");
        for (name, ty) in METRIC_NAMES {
            assert_eq!(types.get(name).map(String::as_str), Some(ty), "{name}");
            assert!(helps.contains_key(name), "{name}");
            assert!(text.contains(&format!("\n# TYPE {name} {ty}\n")), "{name}");
            let mut want: Vec<&str> = labels_of[name].to_vec();
            want.sort_unstable();
            let series: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
            assert!(!series.is_empty(), "{name}");
            for s in series {
                let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
                assert_eq!(keys, want, "{name}");
            }
        }
        assert!(samples.iter().all(|s| s.name.starts_with("qosgw_")));
        let process: Vec<&str> = types
            .keys()
            .filter(|n| n.starts_with("process_"))
            .map(String::as_str)
            .collect();
        assert!(
            process.is_empty(),
            "no process reading, no family: {process:?}"
        );
    }

    #[test]
    fn values_are_rendered() {
        let text = render(&snapshot());
        let (samples, _, _) = parse(&text);
        let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
        assert_eq!(
            v("qosgw_port_rx_packets_total", &[("port", "inside")]),
            1000.0
        );
        assert_eq!(
            v("qosgw_port_tx_packets_total", &[("port", "inside")]),
            990.0
        );
        assert_eq!(v("qosgw_port_rx_bytes_total", &[("port", "inside")]), 1.5e6);
        assert_eq!(
            v("qosgw_port_tx_bytes_total", &[("port", "inside")]),
            1.48e6
        );
        assert_eq!(
            v("qosgw_port_rx_packets_total", &[("port", "outside")]),
            5.0
        );
        assert_eq!(v("qosgw_port_tx_bytes_total", &[("port", "outside")]), 0.0);
        for (port, reason, want) in [
            ("inside", "rx_missed", 3.0),
            ("inside", "tx_full", 0.0),
            ("inside", "no_mbuf", 1.0),
            ("inside", "handoff_full", 7.0),
            ("outside", "rx_missed", 0.0),
            ("outside", "tx_full", 0.0),
            ("outside", "no_mbuf", 0.0),
        ] {
            assert_eq!(
                v(
                    "qosgw_port_dropped_packets_total",
                    &[("port", port), ("reason", reason)]
                ),
                want
            );
        }
        assert_eq!(v("qosgw_port_rx_errors_total", &[("port", "inside")]), 2.0);
        assert_eq!(v("qosgw_port_tx_errors_total", &[("port", "inside")]), 5.0);
        assert_eq!(v("qosgw_port_tx_errors_total", &[("port", "outside")]), 0.0);
        assert_eq!(v("qosgw_port_link_up", &[("port", "inside")]), 1.0);
        assert_eq!(v("qosgw_port_link_up", &[("port", "outside")]), 0.0);
        // A driver that cannot tell: no series, rather than a link reported down.
        let unknown = MetricsSnapshot {
            ports: vec![PortMetrics {
                port: "inside".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!render(&unknown).contains("qosgw_port_link_up{"));
        assert_eq!(
            v("qosgw_policy_packets_total", &[("policy", "voice")]),
            400.0
        );
        assert_eq!(
            v("qosgw_policy_bytes_total", &[("policy", "voice")]),
            80000.0
        );
        assert_eq!(v("qosgw_policy_flows_total", &[("policy", "voice")]), 4.0);
        assert_eq!(
            v(
                "qosgw_policy_delayed_packets_total",
                &[("policy", "backup")]
            ),
            120.0
        );
        assert_eq!(
            v(
                "qosgw_policy_dropped_packets_total",
                &[("policy", "backup")]
            ),
            7.0
        );
        assert_eq!(
            v("qosgw_policy_dropped_packets_total", &[("policy", "voice")]),
            0.0
        );
        // Values are written as Prometheus float64s: integers exactly up to
        // 2^53, and u64::MAX as its nearest float (no exponent form).
        assert!(
            text.contains("qosgw_policy_bytes_total{policy=\"backup\"} 18446744073709552000\n"),
            "{text}"
        );
        assert!(text.contains("qosgw_policy_packets_total{policy=\"backup\"} 500\n"));
        assert_eq!(v("qosgw_unmatched_packets_total", &[]), 90.0);
        assert_eq!(v("qosgw_non_ip_packets_total", &[]), 10.0);
        assert_eq!(
            v("qosgw_malformed_packets_total", &[("reason", "truncated")]),
            2.0
        );
        assert_eq!(
            v("qosgw_malformed_packets_total", &[("reason", "bad_ihl")]),
            0.0
        );
        assert_eq!(v("qosgw_flow_cache_entries", &[("worker", "0")]), 5.0);
        assert_eq!(v("qosgw_flow_cache_entries", &[("worker", "1")]), 0.0);
        for (worker, result, want) in [
            ("0", "hit", 995.0),
            ("0", "miss", 5.0),
            ("1", "hit", 0.0),
            ("1", "miss", 0.0),
        ] {
            assert_eq!(
                v(
                    "qosgw_flow_cache_lookups_total",
                    &[("worker", worker), ("result", result)]
                ),
                want
            );
        }
        for (worker, reason, want) in [
            ("0", "idle", 1.0),
            ("0", "full", 0.0),
            ("0", "tcp_close", 2.0),
            ("1", "idle", 0.0),
            ("1", "full", 0.0),
            ("1", "tcp_close", 0.0),
        ] {
            assert_eq!(
                v(
                    "qosgw_flow_cache_evictions_total",
                    &[("worker", worker), ("reason", reason)]
                ),
                want
            );
        }
        assert_eq!(v("qosgw_shaper_backlog_packets", &[("worker", "0")]), 3.0);
        assert_eq!(v("qosgw_shaper_backlog_bytes", &[("worker", "0")]), 4500.0);
        assert_eq!(v("qosgw_worker_busy_ratio", &[("worker", "0")]), 0.25);
        assert_eq!(v("qosgw_worker_busy_ratio", &[("worker", "1")]), 0.0);
        assert_eq!(v("qosgw_policy_generation", &[]), 3.0);
        assert_eq!(v("qosgw_policy_reloads_total", &[("result", "ok")]), 2.0);
        assert_eq!(v("qosgw_policy_reloads_total", &[("result", "error")]), 0.0);
    }

    #[test]
    fn zero_snapshot_still_shows_the_unlabelled_families() {
        let text = render(&MetricsSnapshot::default());
        let (samples, types, _) = parse(&text);
        for name in [
            "qosgw_unmatched_packets_total",
            "qosgw_non_ip_packets_total",
            "qosgw_policy_generation",
        ] {
            assert_eq!(value(&samples, name, &[]), 0.0);
        }
        assert_eq!(
            value(&samples, "qosgw_policy_reloads_total", &[("result", "ok")]),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "qosgw_policy_reloads_total",
                &[("result", "error")]
            ),
            0.0
        );
        assert!(!types.contains_key("qosgw_policy_packets_total"));
    }

    /// The per-policy families, written without the registry, are what the registry's
    /// encoder writes, byte for byte, and the families stay sorted by name.
    #[test]
    fn policy_families_are_written_as_the_encoder_writes_them() {
        let mut s = snapshot();
        s.policies.extend((0..300).map(|i| PolicyMetrics {
            name: format!("gen-{}.p{i}", 299 - i),
            packets: i * 1_000_000_007,
            bytes: u64::MAX - i,
            flows: i,
            delayed: i / 3,
            dropped: i % 7,
        }));
        s.policies.push(PolicyMetrics {
            name: "odd\"name\\\n".into(),
            ..Default::default()
        });
        let text = render(&s);
        for family in &POLICY_FAMILIES {
            let (name, help, value) = family;
            let reference = IntCounterVec::new(Opts::new(*name, *help), &["policy"]).unwrap();
            for p in &s.policies {
                reference
                    .with_label_values(&[p.name.as_str()])
                    .inc_by(value(p));
            }
            let registry = prometheus::Registry::new();
            registry.register(Box::new(reference)).unwrap();
            let mut expected = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut expected)
                .unwrap();
            let expected = String::from_utf8(expected).unwrap();
            assert!(
                text.contains(&expected),
                "{name}:\n{expected}\nnot in\n{text}"
            );
        }
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        let s = MetricsSnapshot {
            malformed: vec![("odd\"reason\\\n".into(), 1)],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains("qosgw_malformed_packets_total{reason=\"odd\\\"reason\\\\\\n\"} 1\n"),
            "{text}"
        );
    }
}
