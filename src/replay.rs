//! `qosgw replay`: a capture in, the gateway's output capture out, and a summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use dataplane::counters::{sum, WorkerCounters};
use dataplane::distribute::worker_for;
use dataplane::dpdk::{virtual_device_args, Eal, MAX_FRAME_LEN, VLAN_TAGS_LEN};
use dataplane::gateway::{Gateway, GatewayConfig, RunReport};
use dataplane::pcap::{self, Capture, Record, LINKTYPE_ETHERNET};
use dataplane::pipeline::PipelineConfig;
use dataplane::policy_set::{PolicyStats, PolicyTotals, Publisher, ShaperSettings};
use dataplane::shaper::ShaperConfig;
use dataplane::worker::StopWhen;
use serde_json::json;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The policy file (JSON, SPEC §2).
    #[arg(long, value_name = "FILE")]
    policies: PathBuf,
    /// Input capture (pcap or pcapng, Ethernet link type), read as outbound traffic.
    #[arg(long = "in", value_name = "IN.pcap")]
    input: PathBuf,
    /// Output capture, written with the real transmit time of every frame.
    #[arg(long = "out", value_name = "OUT.pcap")]
    output: PathBuf,
    /// Worker cores.
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: usize,
    /// Drop a throttled packet whose departure would be more than MS (1 to 60000) in the
    /// future (default: never; the whole input is at hand).
    #[arg(long, value_name = "MS", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u64).range(1..=control::config::MAX_MAX_DELAY_MS))]
    max_delay_ms: Option<u64>,
    /// Flows each worker's flow cache holds before it evicts (default 1048576).
    #[arg(long, value_name = "N", value_parser = crate::at_least_one)]
    flow_capacity: Option<usize>,
    /// Packet buffers (default: enough to hold the whole input at once, within a memory
    /// budget). A worker whose shapers hold its share stops reading.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(16_384..))]
    mbufs: Option<u32>,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ReplayArgs) -> Result<(), String> {
    // Ctrl-C stops the workers and removes the scratch files (and leaves the output alone).
    crate::signals::install();
    // Everything that can be refused is, before the output is touched.
    if !(1..=MAX_WORKERS).contains(&args.workers) {
        return Err(format!(
            "--workers must be from 1 to {MAX_WORKERS} (net_pcap's queues per port)"
        ));
    }
    let table = crate::load_policies(&args.policies)?;
    let input = check_input(&args.input)?;
    check_output(&args.input, &args.output)?;
    let files = WorkerFiles::new(args, &input)?;
    let mut pool = ReplayPool::for_capture(&input, &files.frames);
    if let Some(n) = args.mbufs {
        pool.set_mbufs(n);
    }
    warn_unparsed(&args.input, &input, pool.frame_room());
    drop(input);

    let eal = Eal::init(&eal_args(args.workers, &files, &pool)?).map_err(|e| e.to_string())?;
    let mut pipeline = PipelineConfig::defaults(eal.tsc_hz());
    if let Some(n) = args.flow_capacity {
        pipeline.flow_capacity = n;
    }
    let cfg = GatewayConfig {
        ports: ["net_pcap0".into(), "net_pcap1".into()],
        workers: args.workers,
        mbufs: pool.mbufs,
        data_room: pool.data_room,
        lossless: true,
        passthrough: false,
        steer: false,
        pipeline,
    };
    // The whole input is at hand: nothing is dropped for delay unless asked (SPEC §4).
    let max_delay_cycles = args.max_delay_ms.map_or(u64::MAX, |ms| {
        ShaperConfig::max_delay_cycles_from_ms(ms, eal.tsc_hz())
    });
    let settings = ShaperSettings {
        tsc_hz: eal.tsc_hz(),
        max_delay_cycles,
    };
    let publisher = Publisher::new(table, args.workers, settings)?;
    let gateway = Gateway::new(&eal, &cfg, &publisher).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let flag = Arc::new(AtomicBool::new(false));
    let stops = files
        .frames
        .iter()
        .map(|&frames| StopWhen::Received {
            frames,
            flag: flag.clone(),
        })
        .collect();
    // SIGINT/SIGTERM stop the workers as in `run`; the output is then not written.
    crate::signals::stop_on_signal(flag.clone(), None)
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    let watchdog = StallWatch::start(
        gateway.counters().to_vec(),
        files.frames.iter().sum(),
        flag,
        STALL_LIMIT,
    );
    let report = gateway.run(stops).map_err(|e| e.to_string())?;
    watchdog.finish(&report)?;
    if crate::signals::stop_requested() {
        return Err("interrupted by a signal; the output was not written".into());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = Summary::new(&report, &publisher, eal.tsc_hz(), elapsed);
    files.write_output(&args.output, summary.tx_packets)?;

    if args.json {
        crate::out::print(&format!("{}\n", summary.json()))
    } else {
        crate::out::print(&summary.table(&args.input, &args.output))
    }
}

/// net_pcap's queues per port: replay's and bench's workers at most.
pub const MAX_WORKERS: usize = 16;

/// The most of a frame net_pcap writes to a capture (its snap length).
const NET_PCAP_SNAPLEN: usize = 16_128;

/// How long a replay may see no frame arrive, with nothing held by the shapers, before it
/// concludes that the capture reader has stopped short of the input.
const STALL_LIMIT: Duration = Duration::from_secs(5);

/// Watches a replay for a capture reader that stops before the end of the input: the
/// workers stop once they have received every frame qosgw's own reader counted, and
/// libpcap may refuse a frame that reader accepted. Rather than wait forever, the replay
/// stops and says so.
struct StallWatch {
    /// Gives how many frames had come when it stopped the replay, if it did.
    thread: Option<std::thread::JoinHandle<Option<u64>>>,
    done: Arc<AtomicBool>,
    frames: u64,
}

impl StallWatch {
    /// Watches the workers counting into `counters` for `frames` in all; raises `stop` if
    /// none arrives for `limit` while the shapers hold nothing.
    fn start(
        counters: Vec<Arc<WorkerCounters>>,
        frames: u64,
        stop: Arc<AtomicBool>,
        limit: Duration,
    ) -> StallWatch {
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let thread = std::thread::spawn(move || {
            let (mut seen, mut since) = (0, Instant::now());
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let w = counters.iter().map(|c| &**c);
                let received = sum(w.clone(), WorkerCounters::received);
                let held = sum(w, |c| c.shaper_backlog_packets.get());
                if received != seen || held > 0 || received >= frames {
                    (seen, since) = (received, Instant::now());
                } else if since.elapsed() > limit {
                    stop.store(true, Ordering::Relaxed);
                    return Some(received);
                }
            }
            None
        });
        StallWatch {
            thread: Some(thread),
            done,
            frames,
        }
    }

    /// After the run (`report`): an error if the watch had to stop it.
    fn finish(mut self, report: &RunReport) -> Result<(), String> {
        let Some(received) = self.stop() else {
            return Ok(());
        };
        let no_mbuf: u64 = report.ports.iter().map(|p| p.rx_no_mbuf).sum();
        Err(format!(
            "DPDK's capture reader delivered {received} of the input's {} frames and then no \
             more ({no_mbuf} lost for want of an mbuf); `tcpdump -r` on the input shows \
             whether libpcap stops early",
            self.frames
        ))
    }

    /// Ends the watch; how many frames had come if it stopped the replay.
    fn stop(&mut self) -> Option<u64> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok().flatten())
    }
}

impl Drop for StallWatch {
    /// A run that failed ends the watch too.
    fn drop(&mut self) {
        self.stop();
    }
}

/// EAL arguments for replay: no hugepages, no PCI, one lcore per worker (spread over the
/// machine's CPUs), and net_pcap devices with one rx_pcap (inside) and one tx_pcap
/// (outside) per worker.
fn eal_args(workers: usize, files: &WorkerFiles, pool: &ReplayPool) -> Result<Vec<String>, String> {
    let mut inside = "--vdev=net_pcap0".to_owned();
    for f in &files.inputs {
        inside += &format!(",rx_pcap={}", vdev_path(f)?);
    }
    let mut outside = "--vdev=net_pcap1".to_owned();
    for f in &files.outputs {
        outside += &format!(",tx_pcap={}", vdev_path(f)?);
    }
    let mut args = virtual_device_args(pool.memory_mb, workers);
    args.extend([inside, outside]);
    Ok(args)
}

/// The packet pool for a replay: mbufs just big enough for the capture's largest frame
/// (one segment each), and enough of them for every frame to be held at once, as far as
/// the memory budget goes ([`memory_budget`]). A worker stops receiving while its shapers
/// hold its share of the pool, which loses nothing but makes the frames behind in the
/// input wait, unthrottled ones too (SPEC §5 says they never wait behind throttled ones):
/// with room for the whole input, that only happens to captures beyond the budget.
struct ReplayPool {
    mbufs: u32,
    data_room: u16,
    memory_mb: usize,
}

impl ReplayPool {
    /// For `cap` split over workers as `frames` says.
    fn for_capture(cap: &Capture, frames: &[u64]) -> ReplayPool {
        let largest = cap.records.iter().map(|r| r.data.len()).max().unwrap_or(0);
        // A jumbo frame with two VLAN tags on top is whole in one mbuf.
        let most = (MAX_FRAME_LEN + VLAN_TAGS_LEN) as usize;
        let room = largest.clamp(64, most).div_ceil(64) * 64;
        let mut pool = ReplayPool {
            mbufs: 0,
            data_room: (room + 128) as u16,
            memory_mb: 0,
        };
        // Every worker's share (the hold limit) must take its frames, beyond what its RX
        // and TX rings, bursts and the mempool caches hold (the gateway keeps 2048 of each
        // share for those).
        let workers = frames.len();
        let most = frames.iter().max().copied().unwrap_or(0) as usize;
        let wanted = (most + 8192) * workers + 4096;
        let budget = (memory_budget() / pool.element()).max(65_536);
        pool.set_mbufs(wanted.min(budget).min(u32::MAX as usize) as u32);
        pool
    }

    /// `mbufs` buffers, and the memory the EAL needs for them.
    fn set_mbufs(&mut self, mbufs: u32) {
        self.mbufs = mbufs;
        self.memory_mb = 256 + ((mbufs as usize * self.element()) >> 20);
    }

    /// The longest frame one buffer holds (past its 128 bytes of headroom).
    fn frame_room(&self) -> usize {
        usize::from(self.data_room) - 128
    }

    /// Bytes a buffer takes: its data room, its 128-byte header and the mempool's own.
    fn element(&self) -> usize {
        usize::from(self.data_room) + 256
    }
}

/// Warns of frames longer than one buffer's `room` (and no longer than net_pcap's snap
/// length, which [`check_input`] warns of): they arrive in two buffers, which the
/// dataplane does not parse.
fn warn_unparsed(path: &Path, input: &Capture, room: usize) {
    let long = (input.records.iter())
        .filter(|r| (room + 1..=NET_PCAP_SNAPLEN).contains(&r.data.len()))
        .count();
    if long > 0 {
        crate::out::warn(&format!(
            "{}: {long} frames are longer than {room} bytes (a {MAX_FRAME_LEN}-byte jumbo frame \
             with two VLAN tags, the most qosgw parses); they pass unchanged, counted as \
             malformed (oversized)",
            path.display()
        ));
    }
}

/// What replay's pool may take: a quarter of the machine's memory (`MemTotal`), no more
/// than half of what is free now (`MemAvailable`) nor a quarter of the cgroup's limit (a
/// container's `memory.max`); 512 MiB if none of them can be read.
fn memory_budget() -> usize {
    use crate::sysmem::{cgroup_max, meminfo};
    [
        meminfo("MemTotal:").map(|b| b / 4),
        meminfo("MemAvailable:").map(|b| b / 2),
        cgroup_max().map(|b| b / 4),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(512 << 20)
}

/// The capture files each worker reads and writes, in a scratch directory: the input,
/// written again as classic pcap and, with several workers, split by inside host (every
/// flow on one worker, as `run`'s steering does). The user's output is written from the
/// workers' outputs at the end, checked and merged by transmit time, so that it is only
/// touched once the replay succeeded (net_pcap does not report its write errors).
struct WorkerFiles {
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    frames: Vec<u64>,
    scratch: PathBuf,
}

impl WorkerFiles {
    fn new(args: &ReplayArgs, input: &Capture) -> Result<WorkerFiles, String> {
        let dir = scratch_dir(&args.output)?;
        let mut files = WorkerFiles {
            inputs: vec![],
            outputs: (0..args.workers)
                .map(|w| dir.join(format!("out{w}.pcap")))
                .collect(),
            frames: vec![],
            scratch: dir.clone(),
        };
        // Even for one worker the input is written again, as DPDK's reader (libpcap) takes
        // it as qosgw read it: libpcap cuts a record to the snap length its file declares
        // (tshark does not), and reads no pcapng whose sections differ in byte order.
        let mut split: Vec<Vec<&Record>> = vec![Vec::new(); args.workers];
        for r in &input.records {
            split[worker_for(&r.data, false, args.workers)].push(r);
        }
        for (w, records) in split.iter().enumerate() {
            let i = dir.join(format!("in{w}.pcap"));
            pcap::write_file(&i, input.nanosecond, records.iter().copied())
                .map_err(|e| format!("cannot write {}: {e}", i.display()))?;
            files.inputs.push(i);
            files.frames.push(records.len() as u64);
        }
        Ok(files)
    }

    /// Writes the workers' outputs to `output`, in transmit-time order, once they are
    /// checked to hold the `sent` frames the workers counted (net_pcap does not report its
    /// write errors: a full disk would otherwise cut the output silently).
    fn write_output(&self, output: &Path, sent: u64) -> Result<(), String> {
        let cannot =
            |e: std::io::Error| format!("cannot write output capture {}: {e}", output.display());
        let short = |written: u64| {
            format!(
                "the output is short: net_pcap wrote {written} of the {sent} frames sent into \
                 {} (is its file system full?); {} was not written",
                self.scratch.display(),
                output.display()
            )
        };
        // `before`: frames in the workers' files read before `o`.
        let unreadable = |o: &Path, before: usize, e: pcap::PcapError| match e {
            pcap::PcapError::Truncated { record } => short((before + record) as u64),
            e => format!("reading {}: {e}", o.display()),
        };
        if let [only] = &self.outputs[..] {
            let written = pcap::count_records(only).map_err(|e| unreadable(only, 0, e))?;
            if written != sent {
                return Err(short(written));
            }
            // In order already. Beside the output (where the scratch directory is when it
            // can be), a rename replaces it whole; anywhere else (a device), a copy.
            if std::fs::rename(only, output).is_ok() {
                return Ok(());
            }
            let mut from = std::fs::File::open(only).map_err(cannot)?;
            let mut to = std::fs::File::create(output).map_err(cannot)?;
            return std::io::copy(&mut from, &mut to).map(drop).map_err(cannot);
        }
        let mut all = Vec::new();
        for o in &self.outputs {
            let read = pcap::read_file(o).map_err(|e| unreadable(o, all.len(), e))?;
            all.extend(read.records);
        }
        if all.len() as u64 != sent {
            return Err(short(all.len() as u64));
        }
        // Stable: one worker's frames that left at the same time keep their order.
        all.sort_by_key(|r| r.ts_ns);
        pcap::write_file(output, true, &all).map_err(cannot)
    }
}

/// A new scratch directory (mode 0700, under a name no one can have made ready for it),
/// beside `output` when that is or will be a file (so that the output is renamed into
/// place, and a full disk there shows in the scratch files), else in the temporary
/// directory.
fn scratch_dir(output: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let beside = std::fs::metadata(output).map_or(true, |m| m.is_file());
    let parent = match output.parent() {
        _ if !beside => std::env::temp_dir(),
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!(".qosgw-replay-{}-{nanos:09}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create the scratch directory {}: {e}", dir.display()))?;
    Ok(dir)
}

impl Drop for WorkerFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Reads the input capture once before DPDK sees it, so that a missing, foreign or
/// non-Ethernet file, or one DPDK's reader would stop in, is one clear error.
fn check_input(path: &Path) -> Result<Capture, String> {
    let refuse = |why: String| format!("cannot replay {}: {why}", path.display());
    let (cap, cut) = pcap::read_file_to_cut(path).map_err(|e| refuse(e.to_string()))?;
    if let Some(record) = cut {
        // As tcpdump reads a capture whose writer was interrupted; so does DPDK's libpcap.
        crate::out::warn(&format!(
            "{}: the capture is cut short in record {}; replaying the {record} whole frames \
             before it",
            path.display(),
            record + 1
        ));
    }
    if cap.link_type != LINKTYPE_ETHERNET {
        return Err(refuse(format!(
            "its link type is {} but qosgw forwards Ethernet frames (link type 1); \
             capture on an Ethernet interface (not `any`) or convert it",
            cap.link_type
        )));
    }
    if let Some((i, r)) =
        (cap.records.iter().enumerate()).find(|(_, r)| r.data.len() > pcap::MAX_RECORD)
    {
        return Err(refuse(format!(
            "record {} holds {} bytes, more than libpcap (DPDK's capture reader) takes \
             ({})",
            i + 1,
            r.data.len(),
            pcap::MAX_RECORD
        )));
    }
    let cut = cap
        .records
        .iter()
        .filter(|r| r.data.len() > NET_PCAP_SNAPLEN)
        .count();
    if cut > 0 {
        crate::out::warn(&format!(
            "{}: {cut} frames are longer than {NET_PCAP_SNAPLEN} bytes (captured with \
             GRO/TSO?); they pass as malformed (oversized), and the output keeps the first \
             {NET_PCAP_SNAPLEN} bytes of each (net_pcap's snap length)",
            path.display()
        ));
    }
    Ok(cap)
}

/// Fails if the output cannot be written, or is the input, without changing it: it is
/// written only when the replay has succeeded.
fn check_output(input: &Path, output: &Path) -> Result<(), String> {
    if same_file(input, output) {
        return Err(format!(
            "--out {} is the input capture; give the output another path",
            output.display()
        ));
    }
    let existed = output.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(output)
        .map_err(|e| format!("cannot write output capture {}: {e}", output.display()))?;
    if !existed {
        let _ = std::fs::remove_file(output);
    }
    Ok(())
}

/// Whether two paths name one file (through links).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// A path as a net_pcap device argument: DPDK's key=value,... syntax cannot carry `,`.
fn vdev_path(path: &Path) -> Result<String, String> {
    let s = path
        .to_str()
        .ok_or_else(|| format!("{}: path is not valid UTF-8", path.display()))?;
    if s.contains(',') {
        return Err(format!(
            "{s}: DPDK device arguments cannot hold a path with a comma; rename it"
        ));
    }
    Ok(s.to_owned())
}

/// One policy's line of the summary.
struct PolicyLine {
    name: String,
    t: PolicyTotals,
    rate_bps: u64,
}

impl PolicyLine {
    fn new(s: &PolicyStats, tsc_hz: u64) -> PolicyLine {
        PolicyLine {
            name: s.name.clone(),
            t: s.totals(),
            rate_bps: s.rate_bps(tsc_hz),
        }
    }
}

/// What replay prints at the end.
struct Summary {
    rx_packets: u64,
    tx_packets: u64,
    unmatched: u64,
    non_ip: u64,
    malformed: u64,
    cache_hits: u64,
    cache_misses: u64,
    cache_entries: u64,
    cache_evictions: u64,
    elapsed_s: f64,
    policies: Vec<PolicyLine>,
}

impl Summary {
    fn new(report: &RunReport, publisher: &Publisher, tsc_hz: u64, elapsed_s: f64) -> Summary {
        let w = report.workers.iter().map(|c| &**c);
        let total = |f: fn(&WorkerCounters) -> u64| sum(w.clone(), f);
        // In file order, as the operator wrote them.
        let set = publisher.current();
        let policies = set
            .actions
            .iter()
            .map(|a| PolicyLine::new(&a.stats, tsc_hz))
            .collect();
        Summary {
            rx_packets: total(WorkerCounters::received),
            tx_packets: total(|c| c.tx_packets[0].get() + c.tx_packets[1].get()),
            unmatched: total(|c| c.unmatched_packets.get()),
            non_ip: total(|c| c.non_ip_packets.get()),
            malformed: total(WorkerCounters::malformed_total),
            cache_hits: total(|c| c.cache_hits.get()),
            cache_misses: total(|c| c.cache_misses.get()),
            cache_entries: total(|c| c.cache_entries.get()),
            cache_evictions: total(|c| c.evictions.iter().map(|e| e.get()).sum()),
            elapsed_s,
            policies,
        }
    }

    fn json(&self) -> serde_json::Value {
        let policies: Vec<_> = self
            .policies
            .iter()
            .map(|p| {
                let t = &p.t;
                json!({
                    "name": p.name, "flows": t.flows, "packets": t.packets, "bytes": t.bytes,
                    "marked": t.marked, "delayed": t.delayed, "dropped": t.dropped, "rate_bps": p.rate_bps,
                })
            })
            .collect();
        json!({
            "rx_packets": self.rx_packets,
            "tx_packets": self.tx_packets,
            "unmatched_packets": self.unmatched,
            "non_ip_packets": self.non_ip,
            "malformed_packets": self.malformed,
            "flow_cache": {
                "hits": self.cache_hits,
                "misses": self.cache_misses,
                "entries": self.cache_entries,
                "evictions": self.cache_evictions,
            },
            "elapsed_s": self.elapsed_s,
            "policies": policies,
        })
    }

    fn table(&self, input: &Path, output: &Path) -> String {
        let mut t = format!(
            "replayed {} -> {} in {:.3} s\n\
             frames: {} received, {} sent; {} unmatched, {} non-IP, {} malformed\n\n",
            input.display(),
            output.display(),
            self.elapsed_s,
            self.rx_packets,
            self.tx_packets,
            self.unmatched,
            self.non_ip,
            self.malformed
        );
        let width = self
            .policies
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0)
            .max(6);
        t += &format!(
            "{:<width$} {:>7} {:>9} {:>12} {:>9} {:>9} {:>9} {:>12}\n",
            "policy", "flows", "packets", "bytes", "marked", "delayed", "dropped", "rate"
        );
        for p in &self.policies {
            t += &format!(
                "{:<width$} {:>7} {:>9} {:>12} {:>9} {:>9} {:>9} {:>12}\n",
                p.name,
                p.t.flows,
                p.t.packets,
                p.t.bytes,
                p.t.marked,
                p.t.delayed,
                p.t.dropped,
                human_rate(p.rate_bps)
            );
        }
        t
    }
}

/// 20000000 → "20.00 Mb/s".
fn human_rate(bps: u64) -> String {
    match bps {
        0 => "-".to_owned(),
        b if b >= 1_000_000_000 => format!("{:.2} Gb/s", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.2} Mb/s", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.2} kb/s", b as f64 / 1e3),
        b => format!("{b} b/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// net_pcap ignores its write errors: what it wrote is checked against what the
    /// workers sent before the output is written.
    #[test]
    fn a_short_worker_output_is_an_error_and_the_output_stays_unwritten() {
        let base = std::env::temp_dir().join(format!("qosgw-wo-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let output = base.join("out.pcap");
        let scratch = scratch_dir(&output).unwrap();
        assert_eq!(scratch.parent(), Some(base.as_path()), "beside the output");
        let files = WorkerFiles {
            inputs: vec![],
            outputs: vec![scratch.join("out0.pcap")],
            frames: vec![2],
            scratch,
        };
        let frame = |b: u8| Record {
            ts_ns: u64::from(b),
            data: vec![b; 60],
            orig_len: 60,
        };
        pcap::write_file(&files.outputs[0], true, &[frame(1), frame(2)]).unwrap();
        let err = files.write_output(&output, 3).unwrap_err();
        assert!(err.contains("net_pcap wrote 2 of the 3 frames"), "{err}");
        let mut cut = std::fs::read(&files.outputs[0]).unwrap();
        cut.truncate(cut.len() - 1);
        std::fs::write(&files.outputs[0], cut).unwrap();
        let err = files.write_output(&output, 2).unwrap_err();
        assert!(err.contains("net_pcap wrote 1 of the 2 frames"), "{err}");
        assert!(!output.exists());

        pcap::write_file(&files.outputs[0], true, &[frame(1), frame(2)]).unwrap();
        files.write_output(&output, 2).unwrap();
        assert_eq!(
            pcap::read_file(&output).unwrap().records,
            [frame(1), frame(2)]
        );
        drop(files);

        // Several workers: the count is over all their files.
        let scratch = scratch_dir(&output).unwrap();
        let outputs = vec![scratch.join("out0.pcap"), scratch.join("out1.pcap")];
        pcap::write_file(&outputs[0], true, &[frame(1), frame(2)]).unwrap();
        let mut cut = Vec::new();
        pcap::write_to(&mut cut, true, &[frame(3), frame(4)]).unwrap();
        cut.truncate(cut.len() - 1);
        std::fs::write(&outputs[1], cut).unwrap();
        let files = WorkerFiles {
            inputs: vec![],
            outputs,
            frames: vec![2, 2],
            scratch,
        };
        let err = files.write_output(&output, 4).unwrap_err();
        assert!(err.contains("net_pcap wrote 3 of the 4 frames"), "{err}");
        drop(files);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_stalled_capture_reader_stops_the_replay_with_an_error() {
        let counters = Arc::new(WorkerCounters::default());
        counters.rx_packets[0].add(3);
        let stop = Arc::new(AtomicBool::new(false));
        let limit = Duration::from_millis(300);
        let mut watch = StallWatch::start(vec![counters.clone()], 10, stop.clone(), limit);
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            stop.load(Ordering::Relaxed),
            "no stop after {:?}",
            t0.elapsed()
        );
        assert_eq!(watch.stop(), Some(3));

        // Frames still held by the shapers, or all of them received: no stall.
        let stop = Arc::new(AtomicBool::new(false));
        counters.shaper_backlog_packets.set(1);
        let mut watch = StallWatch::start(vec![counters.clone()], 10, stop.clone(), limit);
        std::thread::sleep(4 * limit);
        counters.shaper_backlog_packets.set(0);
        counters.rx_packets[0].add(7);
        std::thread::sleep(4 * limit);
        assert!(!stop.load(Ordering::Relaxed));
        assert!(watch.stop().is_none(), "no stall");
    }
}
