//! The Grafana dashboard only queries metrics qosgw exports, and shows every one of them.

use std::collections::BTreeSet;

use control::metrics::METRIC_NAMES;

#[test]
fn the_dashboard_queries_exactly_the_exported_metrics() {
    let text = std::fs::read_to_string("config/grafana-dashboard.json").expect("the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut queried = BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("qosgw_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    let exported: BTreeSet<String> = METRIC_NAMES.iter().map(|(n, _)| n.to_string()).collect();
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics qosgw does not export: {unknown:?}"
    );
    let unshown: Vec<_> = exported.difference(&queried).collect();
    assert!(unshown.is_empty(), "metrics no panel shows: {unshown:?}");
}
