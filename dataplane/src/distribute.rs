//! Spreading flows over workers in software, for devices without RSS (net_pcap, net_tap).
//!
//! The worker is chosen from the flow's *inside host* address alone (the source of
//! outbound traffic, the destination of inbound traffic):
//! * every flow stays on one worker, so no flow is reordered;
//! * every fragment of a datagram (only the first carries ports) lands on the same worker
//!   as its first fragment, as the fragment table needs;
//! * every flow of one inside host lands on one worker, so `throttle_per: host` shapers,
//!   which are per worker, hold each host to its rate exactly.
//!
//! Frames that are not IP, or malformed, go to worker 0.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::wire::{self, Parsed};

/// The worker (0..workers) that handles `frame`, received on the inside (`inbound` false)
/// or the outside port.
pub fn worker_for(frame: &[u8], inbound: bool, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let Parsed::Ip(info) = wire::parse(frame, inbound) else {
        return 0;
    };
    let k = info.key;
    let inside_host = if k.is_inbound() { k.dst } else { k.src };
    // DefaultHasher::new() has fixed keys: the same frame goes to the same worker in
    // every run.
    let mut h = DefaultHasher::new();
    inside_host.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Packet, L4};

    #[test]
    fn a_flow_and_its_fragments_stay_on_one_worker_and_flows_spread() {
        let mut seen = [0usize; 4];
        for host in 0..200u8 {
            let src = format!("10.0.{host}.1").parse().unwrap();
            let dst = "192.0.2.1".parse().unwrap();
            let a = Packet::new(
                src,
                dst,
                L4::Udp {
                    src: 1000,
                    dst: 2000,
                },
            )
            .build();
            let b = Packet::new(
                src,
                dst,
                L4::Udp {
                    src: 3000,
                    dst: 4000,
                },
            )
            .build();
            let w = worker_for(&a, false, 4);
            assert_eq!(w, worker_for(&a, false, 4), "deterministic");
            assert_eq!(w, worker_for(&b, false, 4), "ports do not move a host");
            let c = Packet::new(src, "198.51.100.9".parse().unwrap(), L4::Echo).build();
            assert_eq!(w, worker_for(&c, false, 4), "nor another destination");
            let back = Packet::new(
                dst,
                src,
                L4::Udp {
                    src: 2000,
                    dst: 1000,
                },
            )
            .build();
            assert_eq!(
                w,
                worker_for(&back, true, 4),
                "inbound follows its inside host"
            );
            seen[w] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 20),
            "200 hosts spread over 4 workers: {seen:?}"
        );
        assert_eq!(
            worker_for(
                &crate::synth::arp_request([1, 2, 3, 4], [5, 6, 7, 8]),
                false,
                4
            ),
            0
        );
    }
}
