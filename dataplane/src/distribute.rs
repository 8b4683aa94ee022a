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
//! Frames that are not IP go to worker 0.

use crate::wire::ethernet::ethertype;

/// The worker (0..workers) that handles `frame`, received on the inside (`inbound` false)
/// or the outside port.
///
/// Cheap, since `run` with several workers calls it for every frame in the RX burst: the
/// addresses are read where the (up to two) VLAN tags put them, without the full parse
/// (a malformed frame lands on some worker, which finds it malformed), and hashed with
/// one multiply. (With the full parse and SipHash, steering took 40 % of two workers'
/// rate in `qosgw bench --steer`.)
#[inline]
pub fn worker_for(frame: &[u8], inbound: bool, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let Some(host) = inside_host(frame, inbound) else {
        return 0;
    };
    // Fixed keys: the same host goes to the same worker in every run (replay's split and
    // run's steering agree).
    let x = (host as u64) ^ ((host >> 64) as u64).rotate_left(32);
    let h = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (((h >> 32) * workers as u64) >> 32) as usize
}

/// The inside host's address bits (its source when received on the inside, its
/// destination when on the outside), if the frame is IPv4 or IPv6.
#[inline]
fn inside_host(frame: &[u8], inbound: bool) -> Option<u128> {
    let be16 = |at: usize| Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?));
    let mut ethertype = be16(12)?;
    let mut ip = 14;
    for _ in 0..2 {
        if ethertype != ethertype::VLAN && ethertype != ethertype::QINQ {
            break;
        }
        ethertype = be16(ip + 2)?;
        ip += 4;
    }
    let bits = |at: usize, len: usize| {
        let b = frame.get(ip + at..ip + at + len)?;
        Some(b.iter().fold(0u128, |acc, &x| acc << 8 | u128::from(x)))
    };
    match ethertype {
        ethertype::IPV4 => bits(if inbound { 16 } else { 12 }, 4),
        ethertype::IPV6 => bits(if inbound { 24 } else { 8 }, 16),
        _ => None,
    }
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
        // Tags in front of the IP header do not move a host; IPv6 hosts spread too; a
        // fragment without its ports goes where its datagram's first fragment went.
        let udp = || L4::Udp {
            src: 1000,
            dst: 2000,
        };
        let dst: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        for host in 0..50u8 {
            let src = format!("10.1.{host}.1").parse().unwrap();
            let plain = worker_for(&Packet::new(src, dst, udp()).build(), false, 4);
            let tagged = Packet::new(src, dst, udp()).vlans(&[100, 7]).build();
            assert_eq!(worker_for(&tagged, false, 4), plain);
            let mut fragment = Packet::new(src, dst, udp()).build();
            fragment[20] = 0x00; // offset 8 × 185, no ports to read
            fragment[21] = 0xb9;
            assert_eq!(worker_for(&fragment, false, 4), plain);
        }
        let mut v6 = [0usize; 4];
        for host in 0..200u16 {
            let src = format!("2001:db8::{host:x}").parse().unwrap();
            let dst = "2001:db8:1::1".parse().unwrap();
            let w = worker_for(&Packet::new(src, dst, udp()).build(), false, 4);
            let back = Packet::new(dst, src, udp()).build();
            assert_eq!(worker_for(&back, true, 4), w);
            v6[w] += 1;
        }
        assert!(v6.iter().all(|&n| n > 20), "IPv6 hosts: {v6:?}");
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
