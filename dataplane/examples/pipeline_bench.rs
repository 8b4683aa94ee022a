//! The per-packet cost of the pipeline alone (parse, flow cache, classify on a miss, mark),
//! without DPDK: frames of N flows from memory, handled in bursts of 32 in the worker's
//! stages (`stage`, `prefetch_staged`, `process_staged`), one core. A quarter each
//! IPv4/UDP, IPv4/TCP, IPv6/UDP, IPv6/TCP; half of the flows match a policy that marks them.
//! Under `valgrind --tool=callgrind` it gives exact instruction counts per packet.
//!
//! `cargo run --release -p dataplane --no-default-features --example pipeline_bench -- [FLOWS [PACKETS]]`

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use dataplane::counters::WorkerCounters;
use dataplane::pipeline::{Pipeline, PipelineConfig, Side, Verdict};
use dataplane::policy_set::{Publisher, ShaperSettings};
use dataplane::synth::{Packet, L4};

const BURST: usize = 32;

fn frame(i: usize) -> Vec<u8> {
    let v6 = i % 4 >= 2;
    // Even servers are in the marked networks, odd ones are not.
    let server = (i / 4) % 64;
    let net = if server.is_multiple_of(2) { 100 } else { 200 };
    let (src, dst) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                1,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            )),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, server as u16)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i as u32)),
            IpAddr::V4(Ipv4Addr::new(10, net as u8, 0, server as u8)),
        )
    };
    let l4 = if i.is_multiple_of(2) {
        L4::Udp {
            src: 1000,
            dst: 443,
        }
    } else {
        L4::Tcp {
            src: 1000,
            dst: 443,
            flags: dataplane::synth::TCP_ACK,
        }
    };
    Packet::new(src, dst, l4).build()
}

fn main() {
    let flows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let packets: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let hz = 1_000_000_000;
    let policies = r#"{"policies":[
        {"name":"v4","dst_prefix":"10.100.0.0/16","dscp":10},
        {"name":"v6","dst_prefix":"2001:db8:64::/48","dscp":18}]}"#;
    let table = control::parse_policies("bench", policies).unwrap().0;
    let publisher = Publisher::new(
        table,
        1,
        ShaperSettings {
            tsc_hz: hz,
            max_delay_cycles: u64::MAX,
        },
    )
    .unwrap();
    let mut config = PipelineConfig::defaults(hz);
    config.flow_capacity = flows;
    let counters = Arc::new(WorkerCounters::default());
    let mut p = Pipeline::new(0, config, publisher.subscribe(), counters.clone(), hz);
    let mut frames: Vec<Vec<u8>> = (0..flows).map(frame).collect();
    // PIPELINE_BENCH_STAGES=1 or 2 runs only the first stages (to count what each costs).
    let stages: u32 = std::env::var("PIPELINE_BENCH_STAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let passes = (packets / flows).max(2) as u64;
    for (label, passes) in [("warm-up", 2), ("measured", passes)] {
        let t = Instant::now();
        let mut n = 0u64;
        let mut verdicts = [Verdict::Forward; BURST];
        for pass in 0..passes {
            for burst in frames.chunks_mut(BURST) {
                p.housekeeping(pass);
                p.stage(burst.iter().map(|f| Some(&f[..])), Side::Inside);
                if stages > 1 {
                    p.prefetch_staged();
                }
                if stages > 2 {
                    let frames = burst.iter_mut().map(|f| &mut f[..]);
                    std::hint::black_box(p.process_staged(frames, &mut verdicts, pass));
                }
                p.clear_staged();
                n += burst.len() as u64;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("{label}: {flows} flows, {n} packets, {ns:.1} ns/packet");
    }
    println!("unmatched packets: {}", counters.unmatched_packets.get());
}
