//! `qosgw bench` as SPEC §4 has it: the flows it reports seeing, and its arguments.

mod common;

use common::*;
use serde_json::Value;

/// Runs a one-second bench and returns its JSON.
fn bench(args: &[&str]) -> Value {
    let all = [
        &["bench", "--seconds", "1", "--policies", "10", "--json"],
        args,
    ]
    .concat();
    let out = qosgw(&all);
    assert_success(&out);
    serde_json::from_slice(&out.stdout).expect("bench --json prints JSON")
}

/// `flows_seen` is the flows fed, also when the flow cache holds fewer (the churn mode;
/// found by an audit: it reported the cache's capacity), and with several workers, each
/// of which gets flows on both ports.
#[test]
fn every_flow_is_seen_whatever_the_cache_holds() {
    for (args, flows, entries) in [
        (&["--flows", "10", "--flow-capacity", "5"][..], 10, 5),
        (&["--flows", "2"][..], 2, 2),
        (&["--flows", "4", "--workers", "2"][..], 4, 4),
        (
            &["--flows", "1000", "--workers", "2", "--pkt-size", "1514"][..],
            1000,
            1000,
        ),
    ] {
        let v = bench(args);
        assert_eq!(v["flows"], flows, "{args:?}: {v}");
        assert_eq!(v["flows_seen"], flows, "{args:?}: {v}");
        assert_eq!(v["flow_cache_entries"], entries, "{args:?}: {v}");
        assert!(v["mpps"].as_f64().is_some_and(|m| m > 0.0), "{v}");
    }
}

#[test]
fn bad_arguments_are_one_clear_line() {
    for (args, needle) in [
        (
            &["--flows", "1"][..],
            "--flows must be at least 2 with 1 worker",
        ),
        (
            &["--flows", "3", "--workers", "2"][..],
            "--flows must be at least 4",
        ),
        (&["--seconds", "nan"][..], "--seconds must be"),
        (&["--seconds", "1e20"][..], "--seconds must be"),
        (&["--workers", "17"][..], "--workers must be from 1 to 16"),
        (
            &["--throttled-share", "-0.1"][..],
            "--throttled-share must be",
        ),
    ] {
        assert_one_line_error(&qosgw(&[&["bench"], args].concat()), needle);
    }
    // Refused by the argument parser (exit 2), one line each.
    for (args, needle) in [
        (&["--pkt-size", "59"][..], "59 is not in 60..=9216"),
        (&["--flow-capacity", "0"][..], "must be at least 1"),
        (
            &["--policies", "-1"][..],
            "invalid value '-1' for '--policies",
        ),
    ] {
        let out = qosgw(&[&["bench"], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}
