//! `qosgw bench`: the full worker pipeline at full speed on two net_pcap ports that replay
//! N distinct flows from memory (`infinite_rx=1`, TX dropped), matched against M generated
//! policies. The same rig runs `dpdk-testpmd --forward-mode=io` in `scripts/bench`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use control::PolicyTable;
use dataplane::counters::{sum, WorkerCounters};
use dataplane::distribute::worker_for;
use dataplane::dpdk::{virtual_device_args, Eal, MAX_FRAME_LEN};
use dataplane::gateway::{Gateway, GatewayConfig};
use dataplane::pcap::{self, Record};
use dataplane::pipeline::PipelineConfig;
use dataplane::policy_set::{Publisher, ShaperSettings};
use dataplane::shaper::ShaperConfig;
use dataplane::synth::{Packet, L4, TCP_ACK};
use dataplane::worker::StopWhen;
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Distinct flows (IPv4/IPv6, TCP/UDP), half arriving on each port, as many for each
    /// worker: at least two per worker.
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true)]
    flows: usize,
    /// Generated policies (prefixes, ports and protocols that the flows match).
    #[arg(long, default_value_t = 1_000, allow_negative_numbers = true)]
    policies: usize,
    /// Make the policies match none of the flows (the cost of being there).
    #[arg(long)]
    unmatched: bool,
    /// Share (0 to 1) of the generated policies that throttle each of their flows at 200 kb/s
    /// (`throttle_per: flow`), with the default 100 ms delay limit.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "F",
        allow_negative_numbers = true
    )]
    throttled_share: f64,
    /// Forward without parsing or classifying: the pass-through loop, the baseline for
    /// the cost of being there.
    #[arg(long)]
    passthrough: bool,
    /// Steer every frame to the worker that owns its inside host, as `run` does with
    /// several workers (the input is split by owner already, so this measures the cost
    /// of choosing the owner).
    #[arg(long)]
    steer: bool,
    /// Frame size in bytes (no FCS), from Ethernet's 60 to a jumbo frame's 9216; frames
    /// whose headers are longer (IPv6 TCP: 74) are as short as they can be.
    #[arg(long, default_value_t = 60, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u16).range(60..=MAX_FRAME_LEN as i64))]
    pkt_size: u16,
    /// Worker cores (1 to 16, net_pcap's queues per port).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    workers: usize,
    /// Seconds to run (at most an hour).
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    seconds: f64,
    /// Flow cache capacity per worker (default: room for every flow). Smaller than the
    /// number of flows makes every packet a new flow: the classification rate under churn.
    #[arg(long, value_name = "N", value_parser = crate::at_least_one)]
    flow_capacity: Option<usize>,
    /// Keep the generated capture files in DIR (for running testpmd on the same rig).
    #[arg(long, value_name = "DIR")]
    keep_files: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Servers the generated flows go to; policies name them.
const SERVERS: usize = 1024;
const PORTS: [u16; 5] = [443, 80, 5060, 873, 16384];

/// What distinguishes generated flow `i`.
struct FlowSpec {
    v6: bool,
    tcp: bool,
    server: usize,
    dst_port: u16,
}

/// A quarter each IPv4 UDP, IPv4 TCP, IPv6 UDP, IPv6 TCP, spread over the servers and ports.
fn flow_spec(i: usize) -> FlowSpec {
    FlowSpec {
        v6: i % 4 >= 2,
        tcp: i % 2 == 1,
        server: (i / 4) % SERVERS,
        dst_port: PORTS[(i / 4 / SERVERS) % PORTS.len()],
    }
}

fn server_addr(k: usize, v6: bool, unmatched: bool) -> IpAddr {
    // Unmatched policies name other networks than the flows use.
    let net = if unmatched { 0x99 } else { 0x64 };
    match v6 {
        false => IpAddr::V4(Ipv4Addr::new(10, net, (k >> 8) as u8, k as u8)),
        true => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(net),
            0,
            0,
            0,
            0,
            k as u16,
        )),
    }
}

/// Flow `i`'s frame: a unique client address (it encodes `i`) talking to its server.
fn flow_frame(i: usize, pkt_size: usize) -> Vec<u8> {
    let f = flow_spec(i);
    let src = if f.v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            1,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0b00_0000 | (i as u32 & 0x00ff_ffff)))
    };
    let src_port = 1024 + (i % 50_000) as u16;
    let l4 = if f.tcp {
        L4::Tcp {
            src: src_port,
            dst: f.dst_port,
            flags: TCP_ACK,
        }
    } else {
        L4::Udp {
            src: src_port,
            dst: f.dst_port,
        }
    };
    let headers = 14 + if f.v6 { 40 } else { 20 } + if f.tcp { 20 } else { 8 };
    Packet::new(src, server_addr(f.server, f.v6, false), l4)
        .payload(pkt_size.saturating_sub(headers))
        .build()
}

/// `m` policies shaped like an operator's: each names a server (as a host, or its /24 or
/// /120 every third policy), most a protocol, half a port, a few precedences. Policy j is
/// modelled on flow j·7919 (a prime stride), so most flows have some policy to match.
fn policies_json(m: usize, unmatched: bool, throttled_share: f64) -> String {
    // Every k-th policy throttles each of its flows (`throttle_per: flow`), so that about
    // `throttled_share` of the matched flows each have a shaper of their own.
    // None at share 0: no policy throttles (`j % usize::MAX` would still pick policy 0).
    let throttle_every =
        (throttled_share > 0.0).then(|| (1.0 / throttled_share).round().max(1.0) as usize);
    let mut out = Vec::with_capacity(m);
    for j in 0..m {
        let f = flow_spec(j * 7919);
        let addr = server_addr(f.server, f.v6, unmatched);
        let prefix = match (j % 3 == 0, addr) {
            (true, IpAddr::V4(a)) => format!("{}/24", Ipv4Addr::from(u32::from(a) & 0xffff_ff00)),
            (true, IpAddr::V6(a)) => format!("{}/120", Ipv6Addr::from(u128::from(a) & !0xff)),
            (false, a) => a.to_string(),
        };
        let mut p = format!(
            r#"{{"name":"p{j}","dst_prefix":"{prefix}","dscp":{},"precedence":{}"#,
            j % 64,
            100 + j % 3
        );
        if j % 4 != 3 {
            p += &format!(r#","protocol":"{}""#, if f.tcp { "tcp" } else { "udp" });
        }
        if j % 2 == 0 {
            p += &format!(r#","dst_port":{}"#, f.dst_port);
        }
        if throttle_every.is_some_and(|k| j % k == 0) {
            p += &format!(r#","throttle":{THROTTLE_BPS},"throttle_per":"flow""#);
        }
        out.push(p + "}");
    }
    format!("{{\"policies\":[{}]}}", out.join(",\n"))
}

/// The rate of each throttled flow: low enough that a flow of the rig (tens of thousands of
/// packets a second) is held back, so the shapers and the timing wheel really work.
const THROTTLE_BPS: u64 = 200_000;

fn policy_table(m: usize, unmatched: bool, throttled_share: f64) -> Result<PolicyTable, String> {
    control::parse_policies("generated", &policies_json(m, unmatched, throttled_share))
        .map(|(t, _warnings)| t)
        .map_err(|e| format!("generated policies are invalid: {}", e[0]))
}

/// The longest run `--seconds` asks for.
const MAX_SECONDS: f64 = 3600.0;

pub fn run(args: &BenchArgs) -> Result<(), String> {
    use crate::replay::MAX_WORKERS;
    if !(1..=MAX_WORKERS).contains(&args.workers) {
        return Err(format!(
            "--workers must be from 1 to {MAX_WORKERS} (net_pcap's queues per port)"
        ));
    }
    if args.flows < 2 * args.workers {
        return Err(format!(
            "--flows must be at least {} with {} worker(s): each worker needs a flow on \
             each port",
            2 * args.workers,
            args.workers
        ));
    }
    if !(args.seconds > 0.0 && args.seconds <= MAX_SECONDS) {
        return Err(format!(
            "--seconds must be more than 0 and at most {MAX_SECONDS}"
        ));
    }
    if !(0.0..=1.0).contains(&args.throttled_share) {
        return Err("--throttled-share must be between 0 and 1".into());
    }
    let table = policy_table(args.policies, args.unmatched, args.throttled_share)?;
    let dir = match &args.keep_files {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("qosgw-bench-{}", std::process::id())),
    };
    let files = write_flow_files(&dir, args)?;
    let result = measure(args, table, &files);
    if args.keep_files.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The generated flows of each (port, worker): flow i arrives on port i % 2 at the worker
/// its inside host belongs to; flows are taken in order while their (port, worker) has
/// room, so that each gets its share of `n` (one worker: flows 0 to n − 1).
fn split_flows(n: usize, workers: usize, pkt_size: usize) -> Result<[Vec<Vec<Record>>; 2], String> {
    let buckets = 2 * workers;
    let room = |side: usize, w: usize| n / buckets + usize::from(w * 2 + side < n % buckets);
    let mut split: [Vec<Vec<Record>>; 2] = [vec![Vec::new(); workers], vec![Vec::new(); workers]];
    let (mut placed, mut i) = (0, 0);
    while placed < n {
        // Client addresses encode i in 24 bits (IPv4): flows repeat past that.
        if i >= 1 << 24 {
            return Err(format!(
                "cannot spread {n} flows evenly over {workers} workers"
            ));
        }
        let data = flow_frame(i, pkt_size);
        let side = i % 2;
        let w = worker_for(&data, side == 1, workers);
        if split[side][w].len() < room(side, w) {
            split[side][w].push(Record {
                ts_ns: i as u64 * 1000,
                orig_len: data.len() as u32,
                data,
            });
            placed += 1;
        }
        i += 1;
    }
    Ok(split)
}

/// One capture per (port, worker), and how many flows each holds.
struct FlowFiles {
    paths: [Vec<PathBuf>; 2],
    flows: [Vec<u64>; 2],
}

fn write_flow_files(dir: &Path, args: &BenchArgs) -> Result<FlowFiles, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let split = split_flows(args.flows, args.workers, usize::from(args.pkt_size))?;
    let mut files = FlowFiles {
        paths: [Vec::new(), Vec::new()],
        flows: [Vec::new(), Vec::new()],
    };
    for (side, per_worker) in split.iter().enumerate() {
        for (w, records) in per_worker.iter().enumerate() {
            let p = dir.join(format!("flows-port{side}-q{w}.pcap"));
            pcap::write_file(&p, false, records)
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            files.paths[side].push(p);
            files.flows[side].push(records.len() as u64);
        }
    }
    Ok(files)
}

fn measure(args: &BenchArgs, table: PolicyTable, files: &FlowFiles) -> Result<(), String> {
    // Every frame of the files stays in an mbuf (infinite_rx), plus the working set.
    let frame_room = usize::from(args.pkt_size).max(74).div_ceil(64) * 64;
    let data_room = (128 + frame_room) as u16;
    // Throttled flows park their packets in the timing wheel for up to the 100 ms delay
    // limit: at 200 kb/s that is ~2.5 KB, about 41 small frames, per flow.
    let parked = if args.throttled_share > 0.0 {
        (args.flows * 48).min(1 << 20)
    } else {
        0
    };
    let mbufs = (args.flows + parked + 8192 * args.workers + 4096) as u32;
    let mem_mb = 256 + (mbufs as usize * (data_room as usize + 256)) / (1 << 20);
    let vdev = |port: usize| {
        let queues: Vec<String> = files.paths[port]
            .iter()
            .map(|p| format!("rx_pcap={}", p.display()))
            .collect();
        format!("--vdev=net_pcap{port},{},infinite_rx=1", queues.join(","))
    };
    let mut eal_args = virtual_device_args(mem_mb, args.workers);
    eal_args.extend([vdev(0), vdev(1)]);
    let eal = Eal::init(&eal_args).map_err(|e| e.to_string())?;
    let mut pipeline = PipelineConfig::defaults(eal.tsc_hz());
    pipeline.flow_capacity = args.flow_capacity.unwrap_or(args.flows);
    let cfg = GatewayConfig {
        ports: ["net_pcap0".into(), "net_pcap1".into()],
        workers: args.workers,
        mbufs,
        data_room,
        pipeline,
        lossless: false,
        passthrough: args.passthrough,
        steer: args.steer,
    };
    // Throttled flows are replayed far above their rate: SPEC §3's default delay limit keeps
    // the shapers' backlog bounded.
    let settings = ShaperSettings {
        tsc_hz: eal.tsc_hz(),
        max_delay_cycles: ShaperConfig::max_delay_cycles_from_ms(100, eal.tsc_hz()),
    };
    let publisher = Publisher::new(table, args.workers, settings)?;
    let gateway = Gateway::new(&eal, &cfg, &publisher).map_err(|e| e.to_string())?;
    let flag = Arc::new(AtomicBool::new(false));
    // Samples the packet count once per period while the workers run, and stops them.
    let sampler = {
        let flag = flag.clone();
        let secs = args.seconds;
        let counters: Vec<Arc<WorkerCounters>> = gateway.counters().to_vec();
        std::thread::spawn(move || {
            let packets = || sum(counters.iter().map(|c| &**c), WorkerCounters::received);
            let started = Instant::now();
            let mut samples = vec![(0.0, packets())];
            while started.elapsed().as_secs_f64() < secs {
                let next = (samples.len() as f64 * PERIOD_S).min(secs);
                let wait = next - started.elapsed().as_secs_f64();
                std::thread::sleep(Duration::from_secs_f64(wait.max(0.0)));
                samples.push((started.elapsed().as_secs_f64(), packets()));
            }
            flag.store(true, Ordering::Relaxed);
            samples
        })
    };
    let started = Instant::now();
    let stops = (0..args.workers)
        .map(|_| StopWhen::Flag(flag.clone()))
        .collect();
    let report = gateway.run(stops).map_err(|e| e.to_string())?;
    let elapsed = started.elapsed().as_secs_f64();
    let samples = sampler.join().map_err(|_| "the sampling thread failed")?;
    let steady = steady_mpps(&samples);

    let w: Vec<&WorkerCounters> = report.workers.iter().map(|c| &**c).collect();
    let per_worker: Vec<f64> = w
        .iter()
        .map(|c| c.received() as f64 / elapsed / 1e6)
        .collect();
    let total = sum(w.iter().copied(), WorkerCounters::received);
    let hits = sum(w.iter().copied(), |c| c.cache_hits.get());
    let misses = sum(w.iter().copied(), |c| c.cache_misses.get());
    // Each queue replays its file's frames in order, every frame a flow of its own: the
    // flows a queue delivered are its frames, up to its file's. (The flow cache cannot
    // count them when it holds fewer.)
    let flows_seen: u64 = (0..2)
        .flat_map(|side| {
            let delivered = report.ports[side].rx_queue_packets;
            (files.flows[side].iter().enumerate()).map(move |(q, &n)| delivered[q].min(n))
        })
        .sum();
    let cache_entries = sum(w.iter().copied(), |c| c.cache_entries.get());
    let mean_mpps = total as f64 / elapsed / 1e6;
    // Like testpmd's figure in scripts/bench: the median period after the first.
    let mpps = steady.unwrap_or(mean_mpps);
    let ns_per_packet = 1e3 * args.workers as f64 / mpps;
    let hit_ratio = hits as f64 / (hits + misses).max(1) as f64;
    let unmatched = sum(w.iter().copied(), |c| c.unmatched_packets.get());
    let (delayed, dropped) = publisher
        .all_stats()
        .iter()
        .map(|p| p.totals())
        .fold((0, 0), |(d, x), t| (d + t.delayed, x + t.dropped));
    let text = if args.json {
        format!(
            "{}\n",
            json!({
                "mpps": mpps, "mean_mpps": mean_mpps, "mpps_per_worker": per_worker,
                "ns_per_packet": ns_per_packet,
                "hit_ratio": hit_ratio, "flows_seen": flows_seen, "flows": args.flows,
                "flow_cache_entries": cache_entries, "pkt_size": args.pkt_size,
                "policies": args.policies, "workers": args.workers, "packets": total,
                "unmatched_packets": unmatched, "misses": misses, "seconds": elapsed,
                "throttled_share": args.throttled_share, "delayed_packets": delayed,
                "shaper_dropped_packets": dropped,
            })
        )
    } else {
        format!(
            "{} flows, {} policies, {} worker(s), {:.1} s: {:.2} Mpps steady ({:.2} mean: {}), \
             {:.1} ns/packet, flow-cache hit ratio {:.4}, {} flows seen, {} packets unmatched\n",
            args.flows,
            args.policies,
            args.workers,
            elapsed,
            mpps,
            mean_mpps,
            per_worker
                .iter()
                .map(|m| format!("{m:.2}"))
                .collect::<Vec<_>>()
                .join(" + "),
            ns_per_packet,
            hit_ratio,
            flows_seen,
            unmatched
        )
    };
    crate::out::print(&text)
}

/// The sampling period: testpmd's `--stats-period=1` in scripts/bench.
const PERIOD_S: f64 = 1.0;

/// The steady rate in Mpps from (seconds, packets) samples: the median rate of the whole
/// periods after the first (which holds the start-up and, with many flows, most of the
/// first-packet classifications); `None` with fewer than two such periods.
fn steady_mpps(samples: &[(f64, u64)]) -> Option<f64> {
    let mut rates: Vec<f64> = samples
        .windows(2)
        .skip(1)
        .filter(|w| w[1].0 - w[0].0 > 0.9 * PERIOD_S)
        .map(|w| (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0) / 1e6)
        .collect();
    if rates.len() < 2 {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    Some(rates[rates.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_is_the_median_period_after_the_first() {
        let samples = [
            (0.0, 0),
            (1.0, 1_000_000),
            (2.0, 6_000_000),
            (3.0, 11_500_000),
            (4.0, 16_000_000),
            (4.3, 17_000_000),
        ];
        // Periods after the first: 5.0, 5.5, 4.5 Mpps; the 0.3 s tail is not a whole period.
        assert_eq!(steady_mpps(&samples), Some(5.0));
        assert_eq!(steady_mpps(&samples[..3]), None);
    }

    #[test]
    fn flows_are_shared_evenly_between_ports_and_workers() {
        let one = split_flows(5, 1, 60).unwrap();
        let ids =
            |records: &[Record]| -> Vec<u64> { records.iter().map(|r| r.ts_ns / 1000).collect() };
        assert_eq!(
            (ids(&one[0][0]), ids(&one[1][0])),
            (vec![0, 2, 4], vec![1, 3])
        );
        for (n, workers) in [(4, 2), (1001, 3), (64, 16)] {
            let split = split_flows(n, workers, 60).unwrap();
            let sizes: Vec<usize> = split.iter().flatten().map(Vec::len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            let (least, most) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(
                *least >= 1 && most - least <= 1,
                "{n} over {workers}: {sizes:?}"
            );
        }
    }

    #[test]
    fn generated_flows_are_distinct_and_policies_valid_and_matching() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000 {
            assert!(
                seen.insert(flow_frame(i, 60)),
                "flow {i} repeats an earlier one"
            );
        }
        assert_eq!(flow_frame(0, 60).len(), 60);
        assert_eq!(flow_frame(0, 1514).len(), 1514);
        let t = policy_table(1000, false, 0.0).unwrap();
        assert_eq!(t.len(), 1000);
        assert!(
            t.policies().iter().all(|p| p.throttle.is_none()),
            "share 0: no policy throttles"
        );
        assert!(policy_table(1000, true, 0.0).is_ok());
        let throttled = policy_table(1000, false, 0.1).unwrap();
        assert_eq!(
            throttled
                .policies()
                .iter()
                .filter(|p| p.throttle.is_some())
                .count(),
            100
        );
    }
}
