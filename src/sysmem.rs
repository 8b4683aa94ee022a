//! What memory this machine has: `/proc/meminfo` and the cgroup's limit.

/// A `/proc/meminfo` figure (`MemTotal:`, `MemAvailable:` …) in bytes.
pub fn meminfo(key: &str) -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The cgroup's memory limit (a container's `memory.max`), if it has one.
pub fn cgroup_max() -> Option<usize> {
    std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The ordinary memory the process may use at most: the machine's less what is reserved
/// as hugepages, or its cgroup's limit if lower.
pub fn usable() -> Option<usize> {
    let hugepages = meminfo("Hugetlb:").unwrap_or(0);
    let total = meminfo("MemTotal:").map(|t| t.saturating_sub(hugepages));
    [total, cgroup_max()].into_iter().flatten().min()
}
