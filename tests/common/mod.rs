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

// ---- Running `qosgw run` (and other long-lived programs) as children, HTTP, metrics ----

/// A free TCP port on `ip` (bound once with port 0, then released).
pub fn free_port_on(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// A free loopback address for a listener.
pub fn free_loopback() -> std::net::SocketAddr {
    let ip = ip("127.0.0.1");
    std::net::SocketAddr::new(ip, free_port_on(ip))
}

/// Sends `sig` (a name such as `TERM`, `HUP`, `INT`, `KILL`) to process `pid`.
pub fn send_signal(pid: u32, sig: &str) {
    // A process that has just exited is not an error here: kill's complaint is not shown.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status();
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 3 s, unless
/// [`ChildGuard::stopped_by`] says otherwise) when dropped, so a failing test leaves
/// nothing running. Its stdout and stderr go to a log file.
pub struct ChildGuard {
    child: Option<std::process::Child>,
    pub log: PathBuf,
    stop_signal: &'static str,
    grace: std::time::Duration,
}

impl ChildGuard {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> ChildGuard {
        let file = std::fs::File::create(&log).expect("creating a log file");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        ChildGuard {
            child: Some(child),
            log,
            stop_signal: "TERM",
            grace: std::time::Duration::from_secs(3),
        }
    }

    /// Stopped with `signal` (e.g. `INT` for tshark, which then writes its capture out),
    /// and given `grace` to exit before SIGKILL.
    pub fn stopped_by(mut self, signal: &'static str, grace: std::time::Duration) -> ChildGuard {
        self.stop_signal = signal;
        self.grace = grace;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// What the child wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited (and how).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("waiting for a child"))
    }

    /// Waits at most `limit` for the child to exit.
    pub fn wait_for(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// Waits at most `limit` until the child's output contains `needle`; panics with the
    /// output if it does not, or if the child exits first.
    pub fn wait_for_output(&mut self, needle: &str, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Some(status) = self.try_wait() {
                panic!(
                    "process exited ({status}) before {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} after {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the child (its stop signal, then SIGKILL after the grace period) unless it
    /// has exited already; returns how it ended (`None` if that cannot be known).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        send_signal(child.id(), self.stop_signal);
        let deadline = std::time::Instant::now() + self.grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 request (`Connection: close`, empty body) to `addr`; returns the status
/// code and the body.
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no header end: {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("status line: {head:?}"),
            )
        })?;
    Ok((status, body.to_owned()))
}

/// `http` that must answer: panics with the error otherwise.
pub fn http_ok(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    http(addr, method, path).unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (samples only; `# TYPE` lines are
/// returned by [`metric_types`]).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metrics line without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("metrics value not a number: {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Default::default()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                let mut labels = std::collections::BTreeMap::new();
                for pair in inner.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// `# TYPE name kind` lines: name to kind.
pub fn metric_types(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_owned(), k.trim().to_owned()))
        .collect()
}

/// The value of the sample named `name` whose labels are exactly `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Calls `f` every 20 ms until it returns `Some`, for at most `limit`.
pub fn poll_until<T>(limit: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `run`'s stop line: frames in, out, and how many were dropped each way.
pub struct StopBooks {
    pub frames_in: u64,
    pub out: u64,
    pub dropped: Vec<(u64, String)>,
}

impl StopBooks {
    /// The count dropped as `why` says (0 if the line does not name it).
    pub fn dropped(&self, why: &str) -> u64 {
        (self.dropped.iter())
            .find(|(_, w)| w == why)
            .map_or(0, |(n, _)| *n)
    }
}

/// Reads the stop line (`qosgw: stopped; N frames in, M out; dropped: K why, ...`) from a
/// gateway's log, and asserts that it adds up by itself: in = out + every way of dropping.
pub fn stop_books(log: &str) -> StopBooks {
    let line = (log.lines())
        .find_map(|l| l.strip_prefix("qosgw: stopped; "))
        .unwrap_or_else(|| panic!("no stop line:\n{log}"));
    let parsed = (|| {
        let (counts, dropped) = line.split_once("; dropped: ")?;
        let (frames_in, out) = counts.split_once(" frames in, ")?;
        let dropped = (dropped.split(", "))
            .map(|d| {
                let (n, why) = d.split_once(' ')?;
                Some((n.parse().ok()?, why.to_owned()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(StopBooks {
            frames_in: frames_in.parse().ok()?,
            out: out.strip_suffix(" out")?.parse().ok()?,
            dropped,
        })
    })();
    let books = parsed.unwrap_or_else(|| panic!("a stop line that does not parse: {line}"));
    let dropped: u64 = books.dropped.iter().map(|(n, _)| n).sum();
    assert_eq!(books.frames_in, books.out + dropped, "{line}");
    books
}
