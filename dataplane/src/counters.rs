//! Per-worker counters: one writer (the worker), many readers (the control thread).
//!
//! Workers never lock or allocate to count. Each counter is a relaxed atomic that only its
//! worker writes, with a plain load and store (no locked read-modify-write); readers sum
//! the workers' values. Each worker's block is cache-line aligned so workers do not share
//! lines.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A monotonically increasing count with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker calls this, so load + store cannot lose updates.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down (queue depths, table sizes), single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Slots of `malformed_packets`: the parser's reasons (`wire::MalformedReason as usize`),
/// then the frames too big for one mbuf segment.
pub const MALFORMED_REASONS: usize = 6;
pub const MALFORMED_OVERSIZED: usize = 5;

/// The `reason` label of each `malformed_packets` slot.
pub fn malformed_label(slot: usize) -> &'static str {
    match crate::wire::MalformedReason::ALL.get(slot) {
        Some(r) => r.label(),
        None => "oversized",
    }
}

/// Why a flow left the cache (SPEC §6 `qosgw_flow_cache_evictions_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Idle = 0,
    Full = 1,
    TcpClose = 2,
}

impl Eviction {
    pub const ALL: [Eviction; 3] = [Eviction::Idle, Eviction::Full, Eviction::TcpClose];

    pub fn label(self) -> &'static str {
        match self {
            Eviction::Idle => "idle",
            Eviction::Full => "full",
            Eviction::TcpClose => "tcp_close",
        }
    }
}

/// Everything one worker counts.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerCounters {
    /// Frames received, per side (0 = inside, 1 = outside).
    pub rx_packets: [Counter; 2],
    pub rx_bytes: [Counter; 2],
    /// Frames handed to a TX queue, per side they left on.
    pub tx_packets: [Counter; 2],
    pub tx_bytes: [Counter; 2],
    /// Frames a TX queue refused (freed and counted), per side.
    pub tx_full: [Counter; 2],
    pub non_ip_packets: Counter,
    pub unmatched_packets: Counter,
    pub malformed_packets: [Counter; MALFORMED_REASONS],
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    /// Indexed by [`Eviction`].
    pub evictions: [Counter; 3],
    /// Packets in the timing wheel, and their bytes.
    pub shaper_backlog_packets: Gauge,
    pub shaper_backlog_bytes: Gauge,
    /// Packets a shaper dropped because they would have left too late (`max_delay_ms`),
    /// whatever their policy: the per-policy counts end with their policies.
    pub shaper_dropped: Counter,
    /// Shaped packets still held when `run` stopped: freed, counted here.
    pub shaper_stop_dropped: Counter,
    /// Frames received on a side for another worker (steering, `run` with several
    /// workers) and dropped because its inbox was full, or still in it at the stop.
    pub handed_dropped: [Counter; 2],
    /// Frames this worker's queues received for other workers (steering), handed on or
    /// dropped for a full inbox: a poll that got only such frames was busy all the same.
    pub handed: Counter,
    pub polls: Counter,
    pub busy_polls: Counter,
}

impl WorkerCounters {
    /// Frames the worker received (processed), on both sides.
    pub fn received(&self) -> u64 {
        self.rx_packets[0].get() + self.rx_packets[1].get()
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed_packets.iter().map(Counter::get).sum()
    }
}

/// Sums one counter over every worker.
pub fn sum<'a>(
    workers: impl IntoIterator<Item = &'a WorkerCounters>,
    f: impl Fn(&WorkerCounters) -> u64,
) -> u64 {
    workers.into_iter().map(f).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sums_over_workers() {
        let w = [WorkerCounters::default(), WorkerCounters::default()];
        w[0].rx_packets[0].add(3);
        w[1].rx_packets[0].inc();
        w[1].malformed_packets[2].add(5);
        assert_eq!(sum(&w, |c| c.rx_packets[0].get()), 4);
        assert_eq!(sum(&w, WorkerCounters::malformed_total), 5);
        assert_eq!(std::mem::align_of::<WorkerCounters>(), 64);
    }
}
