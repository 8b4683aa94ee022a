//! Writes the sample capture the demo replays: a few seconds of a small office's outbound
//! traffic that exercises `config/policies.json` (voice, video, backup, web, SSH, IPv6,
//! DNS that no policy matches, ARP, ICMP).
//!
//! `cargo run -p dataplane --no-default-features --example make_sample -- config/sample.pcap`

use std::net::IpAddr;
use std::path::PathBuf;

use dataplane::pcap::{write_file, Record};
use dataplane::synth::{arp_request, Packet, L4, TCP_ACK, TCP_FIN, TCP_SYN};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// A DNS query for the A record of `name`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // recursion desired, 1 question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    q
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "config/sample.pcap".into()),
    );
    let mut frames: Vec<Vec<u8>> = Vec::new();

    frames.push(arp_request([10, 1, 1, 10], [10, 1, 1, 1]));
    // DNS lookups: no policy matches them.
    for (i, name) in ["www.example.com", "backup.example.net", "sip.example.org"]
        .iter()
        .enumerate()
    {
        let q = dns_query(i as u16 + 1, name);
        frames.push(
            Packet::new(
                ip("10.1.1.10"),
                ip("10.1.1.1"),
                L4::Udp {
                    src: 40000 + i as u16,
                    dst: 53,
                },
            )
            .data(&q)
            .build(),
        );
    }
    // A TCP connection to a web server (HTTPS), handshake, data, close.
    let web = |flags, payload| {
        Packet::new(
            ip("10.1.1.10"),
            ip("198.51.100.7"),
            L4::Tcp {
                src: 51000,
                dst: 443,
                flags,
            },
        )
        .payload(payload)
        .build()
    };
    frames.push(web(TCP_SYN, 0));
    for _ in 0..20 {
        frames.push(web(TCP_ACK, 1200));
    }
    frames.push(web(TCP_FIN | TCP_ACK, 0));
    // Rsync backups from two hosts to the backup network: throttled per host.
    for round in 0..120 {
        for host in ["10.1.1.20", "10.1.1.21"] {
            frames.push(
                Packet::new(
                    ip(host),
                    ip("10.20.0.5"),
                    L4::Tcp {
                        src: 40873,
                        dst: 873,
                        flags: TCP_ACK,
                    },
                )
                .payload(1460)
                .ip_id(round)
                .build(),
            );
        }
        // Voice (RTP, 20 ms frames) and a video call interleaved with the bulk transfer.
        if round % 2 == 0 {
            frames.push(
                Packet::new(
                    ip("10.1.1.30"),
                    ip("203.0.113.50"),
                    L4::Udp {
                        src: 20000,
                        dst: 20002,
                    },
                )
                .payload(172)
                .tos(1)
                .build(),
            );
            frames.push(
                Packet::new(
                    ip("10.1.1.31"),
                    ip("203.0.113.60"),
                    L4::Udp {
                        src: 50020,
                        dst: 3478,
                    },
                )
                .payload(900)
                .build(),
            );
        }
    }
    // SSH and an IPv6 service.
    for _ in 0..10 {
        frames.push(
            Packet::new(
                ip("10.1.1.10"),
                ip("192.0.2.22"),
                L4::Tcp {
                    src: 52000,
                    dst: 22,
                    flags: TCP_ACK,
                },
            )
            .payload(64)
            .build(),
        );
        frames.push(
            Packet::new(
                ip("2001:db8:1::10"),
                ip("2001:db8:100::80"),
                L4::Tcp {
                    src: 53000,
                    dst: 8080,
                    flags: TCP_ACK,
                },
            )
            .payload(500)
            .build(),
        );
    }
    // Pings pass through unmarked.
    for _ in 0..3 {
        frames.push(
            Packet::new(ip("10.1.1.10"), ip("192.0.2.1"), L4::Echo)
                .payload(56)
                .build(),
        );
    }

    let start_ns = 1_767_225_600_000_000_000u64; // 2026-01-01T00:00:00Z
    let records: Vec<Record> = frames
        .into_iter()
        .enumerate()
        .map(|(i, data)| Record {
            ts_ns: start_ns + i as u64 * 100_000,
            orig_len: data.len() as u32,
            data,
        })
        .collect();
    write_file(&out, false, &records).unwrap_or_else(|e| {
        eprintln!("make_sample: cannot write {}: {e}", out.display());
        std::process::exit(1);
    });
    println!("wrote {} frames to {}", records.len(), out.display());
}
