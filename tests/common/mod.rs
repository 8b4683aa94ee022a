//! Shared by the integration tests: a scratch directory that cleans itself up, running the
//! `qosgw` binary as its own process (the EAL starts once per process), and capture helpers.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use dataplane::pcap::{self, Record};

/// A directory under the system temp dir, removed (with everything in it) on drop, so a
/// failing test leaves nothing behind.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("qosgw-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        Scratch { path }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs the qosgw binary with `args` and returns what it did.
pub fn qosgw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qosgw"))
        .args(args)
        .output()
        .expect("spawning qosgw")
}

/// Runs `qosgw replay` with the example policies unless `extra` names others.
pub fn replay(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "replay",
        "--in",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
    ];
    if !extra.contains(&"--policies") {
        args.extend(["--policies", "config/policies.json"]);
    }
    args.extend(extra);
    qosgw(&args)
}

/// Asserts the command succeeded, showing its output if not.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "qosgw failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts the command failed with exactly one line on stderr containing `needle`, and no
/// panic or backtrace. Returns that line.
pub fn assert_one_line_error(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "exit code, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    assert!(
        lines[0].contains(needle),
        "{:?} does not mention {needle:?}",
        lines[0]
    );
    lines[0].to_owned()
}

/// Writes `frames` as a microsecond pcap, 10 µs apart.
pub fn write_capture(path: &Path, frames: &[Vec<u8>]) {
    let records: Vec<Record> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Record {
            ts_ns: 1_000_000_000 + i as u64 * 10_000,
            data: f.clone(),
            orig_len: f.len() as u32,
        })
        .collect();
    pcap::write_file(path, false, &records).expect("writing a test capture");
}

/// Reads a capture's records.
pub fn read_capture(path: &Path) -> Vec<Record> {
    let cap = pcap::read_file(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(cap.link_type, pcap::LINKTYPE_ETHERNET);
    cap.records
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Runs the qosgw binary with `args` like [`qosgw`], but kills it if it has not exited
/// after `limit`; returns `None` then.
pub fn qosgw_with_timeout(args: &[&str], limit: std::time::Duration) -> Option<Output> {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_qosgw"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning qosgw");
    let deadline = std::time::Instant::now() + limit;
    loop {
        if child.try_wait().expect("waiting for qosgw").is_some() {
            return Some(child.wait_with_output().expect("collecting qosgw's output"));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
