//! `qosgw replay`: a capture in, the gateway's output capture out, and a summary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use dataplane::counters::{sum, WorkerCounters};
use dataplane::distribute::worker_for;
use dataplane::dpdk::{virtual_device_args, Eal, MAX_FRAME_LEN};
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
    /// Drop a throttled packet whose departure would be more than MS in the future
    /// (default: never; the whole input is at hand).
    #[arg(long, value_name = "MS")]
    max_delay_ms: Option<u64>,
    /// Flows each worker's flow cache holds before it evicts (default 1048576).
    #[arg(long, value_name = "N")]
    flow_capacity: Option<usize>,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ReplayArgs) -> Result<(), String> {
    let input = check_input(&args.input)?;
    check_output(&args.output)?;
    let table = crate::load_policies(&args.policies)?;
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let pool = ReplayPool::for_capture(&input);
    let files = WorkerFiles::new(args, input)?;

    let eal = Eal::init(&eal_args(args.workers, &files, &pool)?).map_err(|e| e.to_string())?;
    let mut pipeline = PipelineConfig::defaults(eal.tsc_hz());
    if let Some(n) = args.flow_capacity {
        pipeline.flow_capacity = n.max(1);
    }
    let cfg = GatewayConfig {
        ports: ["net_pcap0".into(), "net_pcap1".into()],
        workers: args.workers,
        mbufs: pool.mbufs,
        data_room: pool.data_room,
        lossless: true,
        passthrough: false,
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
    let report = gateway.run(stops).map_err(|e| e.to_string())?;
    let elapsed = started.elapsed().as_secs_f64();
    files.merge_outputs(&args.output)?;

    let summary = Summary::new(&report, &publisher, eal.tsc_hz(), elapsed);
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.table(&args.input, &args.output));
    }
    Ok(())
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
/// (one segment each), as many as about 512 MB of memory holds, so that the shapers can
/// hold a long backlog.
struct ReplayPool {
    mbufs: u32,
    data_room: u16,
    memory_mb: usize,
}

impl ReplayPool {
    fn for_capture(cap: &Capture) -> ReplayPool {
        let largest = cap.records.iter().map(|r| r.data.len()).max().unwrap_or(0);
        let room = largest.clamp(2048, MAX_FRAME_LEN as usize).div_ceil(64) * 64;
        let data_room = (room + 128) as u16;
        // Each mbuf also carries its 128-byte header and the mempool's own.
        let element = usize::from(data_room) + 256;
        let mbufs = ((512usize << 20) / element).min(65535) as u32;
        let memory_mb = 256 + ((mbufs as usize * element) >> 20);
        ReplayPool {
            mbufs,
            data_room,
            memory_mb,
        }
    }
}

/// The capture files each worker reads and writes. With one worker these are the user's
/// files; with several, the input is split by flow hash (every flow on one worker, as RSS
/// would do) into a scratch directory, and the workers' outputs are merged by transmit time.
struct WorkerFiles {
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    frames: Vec<u64>,
    scratch: Option<PathBuf>,
}

impl WorkerFiles {
    fn new(args: &ReplayArgs, input: Capture) -> Result<WorkerFiles, String> {
        if args.workers == 1 {
            return Ok(WorkerFiles {
                inputs: vec![args.input.clone()],
                outputs: vec![args.output.clone()],
                frames: vec![input.records.len() as u64],
                scratch: None,
            });
        }
        let dir = std::env::temp_dir().join(format!("qosgw-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut files = WorkerFiles {
            inputs: vec![],
            outputs: vec![],
            frames: vec![],
            scratch: Some(dir.clone()),
        };
        let mut split: Vec<Vec<Record>> = vec![Vec::new(); args.workers];
        for r in input.records {
            split[worker_for(&r.data, false, args.workers)].push(r);
        }
        for (w, records) in split.iter().enumerate() {
            let (i, o) = (
                dir.join(format!("in{w}.pcap")),
                dir.join(format!("out{w}.pcap")),
            );
            pcap::write_file(&i, input.nanosecond, records)
                .map_err(|e| format!("cannot write {}: {e}", i.display()))?;
            files.inputs.push(i);
            files.outputs.push(o);
            files.frames.push(records.len() as u64);
        }
        Ok(files)
    }

    /// Merges the workers' outputs into `output`, in transmit-time order.
    fn merge_outputs(&self, output: &Path) -> Result<(), String> {
        if self.scratch.is_none() {
            return Ok(());
        }
        let mut all = Vec::new();
        for o in &self.outputs {
            all.extend(
                pcap::read_file(o)
                    .map_err(|e| format!("reading {}: {e}", o.display()))?
                    .records,
            );
        }
        all.sort_by_key(|r| r.ts_ns);
        pcap::write_file(output, true, &all)
            .map_err(|e| format!("cannot write output capture {}: {e}", output.display()))
    }
}

impl Drop for WorkerFiles {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads the input capture once before DPDK sees it, so that a missing, foreign or
/// non-Ethernet file is one clear error.
fn check_input(path: &Path) -> Result<Capture, String> {
    let cap =
        pcap::read_file(path).map_err(|e| format!("cannot replay {}: {e}", path.display()))?;
    if cap.link_type != LINKTYPE_ETHERNET {
        return Err(format!(
            "cannot replay {}: its link type is {} but qosgw forwards Ethernet frames (link type 1); \
             capture on an Ethernet interface (not `any`) or convert it",
            path.display(),
            cap.link_type
        ));
    }
    Ok(cap)
}

/// Creates (truncates) the output file now, so an unwritable path fails before DPDK starts.
fn check_output(path: &Path) -> Result<(), String> {
    File::create(path)
        .map(drop)
        .map_err(|e| format!("cannot write output capture {}: {e}", path.display()))
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
            rx_packets: total(|c| c.rx_packets[0].get() + c.rx_packets[1].get()),
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
