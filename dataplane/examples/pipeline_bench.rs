//! The per-packet cost of `Pipeline::process` alone (parse, flow cache, classify on a miss,
//! mark), without DPDK: frames of N flows from memory, in a loop, one core.
//!
//! `cargo run --release -p dataplane --no-default-features --example pipeline_bench -- [FLOWS [PACKETS]]`

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use dataplane::counters::WorkerCounters;
use dataplane::pipeline::{Pipeline, PipelineConfig, Side};
use dataplane::policy_set::{Publisher, ShaperSettings};
use dataplane::synth::{Packet, L4};

fn main() {
    let flows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let hz = 1_000_000_000;
    let policies = r#"{"policies":[{"name":"web","protocol":"udp","dst_port":443,"dscp":18},
        {"name":"net","dst_prefix":"10.100.0.0/16","dscp":10}]}"#;
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
    let mut p = Pipeline::new(
        0,
        config,
        publisher.subscribe(),
        Arc::new(WorkerCounters::default()),
        hz,
    );
    let mut frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let src = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i as u32));
            let dst = IpAddr::V4(Ipv4Addr::new(10, 100 + (i % 3) as u8, 0, 1));
            Packet::new(
                src,
                dst,
                L4::Udp {
                    src: 1000,
                    dst: 443,
                },
            )
            .build()
        })
        .collect();
    let packets: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let passes = (packets / flows).max(2) as u64;
    for (label, passes) in [("warm-up", 2), ("measured", passes)] {
        let t = Instant::now();
        let mut n = 0u64;
        for pass in 0..passes {
            for f in frames.iter_mut() {
                std::hint::black_box(p.process(f, Side::Inside, pass));
                n += 1;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("{label}: {flows} flows, {n} packets, {ns:.1} ns/packet");
    }
}
