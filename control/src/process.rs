//! The process's own use of the machine, as every Prometheus client library exports it
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...): so that an operator
//! sees the gateway's memory and CPU beside its traffic without another exporter. Read
//! from `/proc/self` at each scrape.

use std::fs;

/// Clock ticks per second in `/proc` (Linux's USER_HZ, fixed at 100 for user space).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessMetrics {
    /// User and system CPU time since start.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    /// The soft limit on open files.
    pub max_fds: u64,
    pub threads: u64,
}

impl ProcessMetrics {
    /// Reads `/proc/self`; None where it is not there to read (not Linux, no /proc).
    pub fn read() -> Option<ProcessMetrics> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        let boot = fs::read_to_string("/proc/stat").ok()?;
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let limits = fs::read_to_string("/proc/self/limits").ok()?;
        let open_fds = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let mut m = parse_stat(&stat, boot_time(&boot)?)?;
        // VmRSS rather than stat's page count: no page size to assume.
        m.resident_bytes = kb_field(&status, "VmRSS:")? * 1024;
        m.max_fds = max_open_files(&limits)?;
        m.open_fds = open_fds;
        Some(m)
    }
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

/// CPU time, threads, start time and virtual size from `/proc/self/stat` (proc(5)), given
/// the boot time.
fn parse_stat(stat: &str, boot_time: u64) -> Option<ProcessMetrics> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses
    // itself: the fields that follow start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(ProcessMetrics {
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        threads: field(20)?,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / TICKS_PER_SECOND,
        virtual_bytes: field(23)?,
        ..ProcessMetrics::default()
    })
}

/// The figure of a `Name:   N kB` line, as `/proc/self/status` and `/proc/meminfo` write
/// them, in kB.
pub fn kb_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may name itself.
        let stat = "4242 (qosgw w) (1)) S 1 4242 4242 0 -1 4194560 9 0 0 0 \
                    250 130 0 0 20 0 7 0 5215628 3133440000 380 18446744073709551615 0";
        let m = parse_stat(stat, 1_795_794_552).unwrap();
        assert_eq!(m.cpu_seconds, 3.8);
        assert_eq!(m.threads, 7);
        assert_eq!(m.start_time_seconds, 1_795_794_552.0 + 52_156.28);
        assert_eq!(m.virtual_bytes, 3_133_440_000);
        assert_eq!(parse_stat("4242 (qosgw) S 1 2", 0), None, "cut short");
    }

    #[test]
    fn status_limits_and_boot_time_lines() {
        let status = "Name:\tqosgw\nVmPeak:\t  900 kB\nVmRSS:\t    1968 kB\nThreads:\t7\n";
        assert_eq!(kb_field(status, "VmRSS:"), Some(1968));
        assert_eq!(kb_field(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                524288               files\n";
        assert_eq!(max_open_files(limits), Some(20000));
        assert_eq!(
            boot_time("cpu  1 2 3\nintr 5\nbtime 1795794552\nprocesses 9\n"),
            Some(1_795_794_552)
        );
    }

    #[test]
    fn this_process_reads_as_itself() {
        let m = ProcessMetrics::read().expect("/proc/self on Linux");
        assert!(m.resident_bytes > 1 << 20, "{m:?}");
        assert!(m.virtual_bytes >= m.resident_bytes, "{m:?}");
        assert!(
            m.threads >= 1 && m.open_fds >= 3 && m.max_fds >= m.open_fds,
            "{m:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started before now, and within the last day (a test run).
        assert!(m.start_time_seconds <= now + 1.0, "{m:?}");
        assert!(m.start_time_seconds > now - 86_400.0, "{m:?}");
    }
}
