//! `qosgw policy check` and `qosgw policy explain` as a script runs them: exit codes, the
//! first line of `explain`, one line per error, and output that cannot be written.

mod common;

use std::process::{Command, Stdio};

use common::*;

const EXAMPLE: &str = "config/policies.json";

#[test]
fn explain_says_who_wins_on_its_first_line() {
    let out = qosgw(&[
        "policy",
        "explain",
        EXAMPLE,
        "--proto",
        "tcp",
        "--src",
        "10.1.1.20:40873",
        "--dst",
        "10.20.0.5:873",
    ]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().next(), Some("winner: backup"), "{text}");

    let out = qosgw(&[
        "policy",
        "explain",
        EXAMPLE,
        "--proto",
        "47",
        "--src",
        "192.0.2.1",
        "--dst",
        "192.0.2.2",
    ]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "winner: none\n  no policy matches this flow\n");
}

#[test]
fn a_file_with_several_errors_is_one_line_for_explain_and_one_per_error_for_check() {
    let dir = Scratch::new("policy-errors");
    let file = dir.path("bad.json");
    std::fs::write(
        &file,
        "{\"policies\": [\n{\"name\": \"a\", \"dscp\": 64},\n{\"name\": \"b\", \"vlan\": 5000, \"dscp\": 1}\n]}",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = qosgw(&["policy", "check", f]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{f}:2:23: policy \"a\": dscp:")),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{f}:3:23: policy \"b\": vlan:")),
        "{stderr}"
    );

    let out = qosgw(&[
        "policy",
        "explain",
        f,
        "--proto",
        "udp",
        "--src",
        "10.0.0.1:1",
        "--dst",
        "10.0.0.2:2",
    ]);
    let line = assert_one_line_error(&out, "policy \"a\": dscp:");
    assert!(line.contains("(and 1 more: qosgw policy check"), "{line}");
}

/// `println!` panics (exit 101, a backtrace with RUST_BACKTRACE) when stdout cannot be
/// written; qosgw says so in one line and exits 1.
#[test]
fn output_that_cannot_be_written_is_an_error_not_a_panic() {
    for args in [
        vec!["policy", "check", EXAMPLE],
        vec![
            "policy", "explain", EXAMPLE, "--proto", "udp", "--src", "10.0.0.1", "--dst",
            "10.0.0.2",
        ],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let out = Command::new(env!("CARGO_BIN_EXE_qosgw"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::from(full))
            .output()
            .expect("spawning qosgw");
        let line = assert_one_line_error(&out, "cannot write to standard output");
        assert!(line.contains("No space left on device"), "{line}");
    }
}
