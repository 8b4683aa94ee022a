//! What memory this machine has: `/proc/meminfo` and the cgroup's limit.

/// A `/proc/meminfo` figure (`MemTotal:`, `MemAvailable:` …) in bytes.
pub fn meminfo(key: &str) -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = control::process::kb_field(&meminfo, key)?;
    usize::try_from(kib).ok()?.checked_mul(1024)
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
