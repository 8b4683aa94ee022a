//! `qosgw replay` as a user runs it: a capture in, a capture and a summary out.

mod common;

use common::*;
use dataplane::synth::{arp_request, proto, Packet, L4, TCP_ACK};
use serde_json::Value;
use std::time::Duration;

/// Frames of every kind the parser has to get past: each must leave byte for byte.
fn mixed_frames() -> Vec<Vec<u8>> {
    let udp = L4::Udp {
        src: 5004,
        dst: 5004,
    };
    let tcp = L4::Tcp {
        src: 40000,
        dst: 80,
        flags: TCP_ACK,
    };
    let v4 = Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), tcp.clone())
        .payload(100)
        .build();
    let mut truncated_v4 = v4.clone();
    truncated_v4.truncate(40); // IPv4 total length says more than the frame holds
    vec![
        v4,
        // IPv4 with options (record route, NOP padding).
        Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), udp.clone())
            .ipv4_options(&[7, 7, 4, 0, 0, 0, 0, 1])
            .payload(33)
            .build(),
        // IPv6 with hop-by-hop, routing and destination options headers.
        Packet::new(ip("2001:db8::1"), ip("2001:db8::2"), tcp.clone())
            .ipv6_ext(&[0, 43, 60])
            .payload(200)
            .build(),
        Packet::new(ip("2001:db8::1"), ip("2001:db8::2"), L4::Echo)
            .payload(56)
            .build(),
        // 802.1Q and QinQ.
        Packet::new(ip("10.0.0.1"), ip("10.0.0.2"), udp.clone())
            .vlans(&[42])
            .payload(64)
            .build(),
        Packet::new(ip("10.0.0.1"), ip("10.0.0.2"), tcp.clone())
            .vlans(&[100, 200])
            .payload(64)
            .build(),
        arp_request([10, 0, 0, 1], [10, 0, 0, 2]),
        Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), L4::Other(proto::ESP))
            .payload(120)
            .build(),
        Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), L4::Echo)
            .payload(56)
            .build(),
        Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), L4::Other(proto::GRE))
            .payload(80)
            .build(),
        // Truncated and runt frames.
        truncated_v4,
        vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08], // shorter than an Ethernet header
        {
            let mut f = Packet::new(ip("2001:db8::1"), ip("2001:db8::2"), udp.clone()).build();
            f.truncate(30); // cut inside the IPv6 header
            f
        },
        // Jumbo frames: 9000 bytes of IP, and the largest frame qosgw forwards (9216).
        Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), udp.clone())
            .payload(9000 - 28)
            .build(),
        Packet::new(ip("2001:db8::1"), ip("2001:db8::2"), udp)
            .payload(9216 - 14 - 40 - 8)
            .build(),
    ]
}

#[test]
fn passes_every_kind_of_frame_through_byte_for_byte_in_order() {
    let dir = Scratch::new("mixed");
    let (input, output) = (dir.path("in.pcap"), dir.path("out.pcap"));
    // Several rounds so bursts are full and frames of each kind sit at every burst position.
    let frames: Vec<Vec<u8>> = (0..7).flat_map(|_| mixed_frames()).collect();
    write_capture(&input, &frames);

    let out = replay(&input, &output, &["--json"]);
    assert_success(&out);

    let got = read_capture(&output);
    assert_eq!(got.len(), frames.len(), "frame count");
    for (i, (g, want)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(g.data.len(), want.len(), "frame {i} length");
        assert!(g.data == *want, "frame {i} differs");
        assert_eq!(g.orig_len as usize, want.len(), "frame {i} wire length");
    }

    let summary: Value =
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");
    assert_eq!(summary["rx_packets"], frames.len());
    assert_eq!(summary["tx_packets"], frames.len());
    assert!(summary["policies"].is_array());
}

#[test]
fn output_timestamps_are_real_transmit_times() {
    let dir = Scratch::new("timestamps");
    let (input, output) = (dir.path("in.pcap"), dir.path("out.pcap"));
    let frames = vec![Packet::new(ip("10.0.0.1"), ip("10.0.0.2"), L4::Echo).build(); 50];
    write_capture(&input, &frames);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let out = replay(&input, &output, &[]);
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert_success(&out);
    let got = read_capture(&output);
    assert_eq!(got.len(), 50);
    // The input was stamped in 1970; the output carries the time qosgw sent each frame.
    let (lo, hi) = (
        before.as_nanos() as u64 - 1_000_000_000,
        after.as_nanos() as u64 + 1_000_000_000,
    );
    for r in &got {
        assert!(
            (lo..hi).contains(&r.ts_ns),
            "timestamp {} not within the run [{lo}, {hi})",
            r.ts_ns
        );
    }
    assert!(
        got.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "timestamps never go back"
    );
}

#[test]
fn table_summary_is_readable() {
    let dir = Scratch::new("table");
    let output = dir.path("out.pcap");
    let out = replay(std::path::Path::new("config/sample.pcap"), &output, &[]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = read_capture(std::path::Path::new("config/sample.pcap")).len();
    assert!(
        text.contains(&format!("{frames} received, {frames} sent")),
        "{text}"
    );
    assert_eq!(read_capture(&output).len(), frames);
}

#[test]
fn a_missing_input_is_one_clear_error() {
    let dir = Scratch::new("missing");
    let out = replay(&dir.path("nope.pcap"), &dir.path("o.pcap"), &[]);
    let line = assert_one_line_error(&out, "nope.pcap");
    assert!(line.contains("No such file"), "{line}");
}

#[test]
fn a_file_that_is_not_a_capture_is_one_clear_error() {
    let dir = Scratch::new("notpcap");
    let input = dir.path("in.pcap");
    std::fs::write(&input, "this is a text file, not a capture\n").unwrap();
    let out = replay(&input, &dir.path("o.pcap"), &[]);
    assert_one_line_error(&out, "not a pcap or pcapng capture file");
}

/// A record longer than the snap length its file declares is read whole, as tshark reads
/// it (libpcap, DPDK's reader, cut it to the snap length without a word; found by an
/// audit), and marked.
#[test]
fn a_record_beyond_the_declared_snap_length_is_replayed_whole() {
    let dir = Scratch::new("snaplen");
    let (input, output) = (dir.path("in.pcap"), dir.path("out.pcap"));
    let voice = L4::Udp {
        src: 5004,
        dst: 16400,
    };
    let frame = Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), voice)
        .payload(3000 - 42)
        .build();
    assert_eq!(frame.len(), 3000);
    write_capture(&input, std::slice::from_ref(&frame));
    let mut bytes = std::fs::read(&input).unwrap();
    bytes[16..20].copy_from_slice(&1500u32.to_le_bytes());
    std::fs::write(&input, bytes).unwrap();
    assert_success(&replay(&input, &output, &[]));
    let out = read_capture(&output);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data.len(), 3000, "whole");
    assert_eq!(out[0].data[15] >> 2, 46, "marked as voice");
    // Past the DSCP and the IPv4 header checksum, every byte as it came.
    assert!(out[0].data[26..] == frame[26..], "payload changed");
}

/// A frame longer than a jumbo frame with two tags (here 10 000 bytes) is not parsed:
/// replay says so before it starts, and the frame passes unchanged as malformed. (Found
/// by an audit: frames of 9 296 to 16 128 bytes went unmarked without a word.)
#[test]
fn frames_beyond_a_jumbo_frame_are_announced_and_pass_unchanged() {
    let dir = Scratch::new("beyond-jumbo");
    let (input, output) = (dir.path("in.pcap"), dir.path("out.pcap"));
    let voice = |len: usize| {
        let l4 = L4::Udp {
            src: 5004,
            dst: 16400,
        };
        Packet::new(ip("192.0.2.1"), ip("198.51.100.1"), l4)
            .payload(len - 42)
            .build()
    };
    let frames = [voice(10_000), voice(200)];
    write_capture(&input, &frames);
    let out = replay(&input, &output, &["--json"]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 frames are longer than 9280 bytes") && stderr.contains("oversized"),
        "{stderr}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["malformed_packets"], 1, "{summary}");
    let sent = read_capture(&output);
    assert_eq!(sent.len(), 2);
    assert!(sent[0].data == frames[0], "the long frame unchanged");
    assert_eq!(sent[1].data[15] >> 2, 46, "the other marked");
}

/// Only a regular file is read as the input: a FIFO blocked replay for good and a device
/// (`/dev/zero`) filled memory, both deaf to SIGTERM (found by an audit).
#[test]
fn an_input_that_is_not_a_regular_file_is_one_clear_error() {
    let dir = Scratch::new("notfile");
    let fifo = dir.path("fifo.pcap");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let out = dir.path("o.pcap");
    for (input, needle) in [
        (fifo.to_str().unwrap(), "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (dir.path("").to_str().unwrap(), "a directory"),
    ] {
        let args = [
            "replay",
            "--policies",
            "config/policies.json",
            "--in",
            input,
        ];
        let args = [&args[..], &["--out", out.to_str().unwrap()]].concat();
        let ran = qosgw_with_timeout(&args, Duration::from_secs(20));
        let ran = ran.unwrap_or_else(|| panic!("replay --in {input} still running after 20 s"));
        let line = assert_one_line_error(&ran, needle);
        assert!(line.contains(input.trim_end_matches('/')), "{line}");
    }
}

#[test]
fn a_capture_of_another_link_type_is_one_clear_error() {
    let dir = Scratch::new("linktype");
    let input = dir.path("cooked.pcap");
    write_capture(&input, &[vec![0u8; 60]]);
    // Patch the link type to 113 (Linux cooked capture, what `tcpdump -i any` writes).
    let mut bytes = std::fs::read(&input).unwrap();
    bytes[20..24].copy_from_slice(&113u32.to_le_bytes());
    std::fs::write(&input, bytes).unwrap();
    let out = replay(&input, &dir.path("o.pcap"), &[]);
    assert_one_line_error(&out, "link type is 113");
}

#[test]
fn an_unwritable_output_is_one_clear_error() {
    let dir = Scratch::new("unwritable");
    let input = dir.path("in.pcap");
    write_capture(&input, &[vec![0u8; 60]]);
    let output = dir.path("no/such/dir/out.pcap");
    let out = replay(&input, &output, &[]);
    assert_one_line_error(&out, "cannot write output capture");
}

/// A capture whose writer was interrupted is replayed up to the cut, as tcpdump reads it.
#[test]
fn a_capture_cut_short_is_replayed_to_the_cut() {
    let dir = Scratch::new("cut");
    let input = dir.path("in.pcap");
    let frames = mixed_frames();
    write_capture(&input, &frames);
    let mut bytes = std::fs::read(&input).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&input, bytes).unwrap();
    let output = dir.path("out.pcap");
    let out = replay(&input, &output, &["--json"]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let whole = frames.len() - 1;
    assert!(
        stderr.contains(&format!(
            "cut short in record {}; replaying the {whole} whole frames",
            whole + 1
        )),
        "{stderr}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rx_packets"], whole);
    assert_eq!(read_capture(&output).len(), whole);
}

/// Ctrl-C stops a replay: one line, exit 1, the output not written, no scratch files left.
#[test]
fn an_interrupted_replay_writes_nothing_and_cleans_up() {
    let dir = Scratch::new("interrupted");
    let input = dir.path("in.pcap");
    // 200 frames of 1 000 bytes through a 100 kb/s throttle: 16 s of pacing.
    let frame = Packet::new(
        ip("10.1.1.20"),
        ip("10.20.0.5"),
        L4::Tcp {
            src: 40000,
            dst: 873,
            flags: TCP_ACK,
        },
    )
    .payload(1000 - 54)
    .build();
    write_capture(&input, &vec![frame; 200]);
    let policies = dir.path("p.json");
    std::fs::write(
        &policies,
        r#"{"policies":[{"name":"slow","dst_port":873,"throttle":"100kbps"}]}"#,
    )
    .unwrap();
    let output = dir.path("out.pcap");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qosgw"));
    cmd.args(["replay", "--policies", policies.to_str().unwrap(), "--in"])
        .args([input.to_str().unwrap(), "--out", output.to_str().unwrap()]);
    let mut child = ChildGuard::spawn(cmd, dir.path("log"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    send_signal(child.pid(), "INT");
    let status = child.wait_for(std::time::Duration::from_secs(5));
    let log = child.output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("interrupted by a signal"), "{log}");
    assert!(!output.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".qosgw-replay"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The output is written only once the replay succeeded: a replay refused for any reason
/// leaves an existing output as it was, and one onto its own input is refused.
#[test]
fn a_refused_replay_leaves_the_output_and_the_input_alone() {
    let dir = Scratch::new("keep-output");
    let input = dir.path("in.pcap");
    write_capture(&input, &[vec![0u8; 60]]);
    let output = dir.path("out.pcap");
    std::fs::write(&output, "the operator's earlier result\n").unwrap();
    let bad_policies = dir.path("bad.json");
    std::fs::write(&bad_policies, r#"{"policies":[{"name":"a","dscp":99}]}"#).unwrap();
    let input_arg = input.to_str().unwrap();
    let output_arg = output.to_str().unwrap();
    for (args, needle) in [
        (vec!["--policies", bad_policies.to_str().unwrap()], "dscp"),
        (
            vec!["--policies", "config/policies.json", "--workers", "0"],
            "--workers",
        ),
        (
            vec!["--policies", "config/policies.json", "--workers", "17"],
            "--workers",
        ),
    ] {
        let mut all = vec!["replay", "--in", input_arg, "--out", output_arg];
        all.extend(args);
        assert_one_line_error(&qosgw(&all), needle);
        assert_eq!(
            std::fs::read_to_string(&output).unwrap(),
            "the operator's earlier result\n"
        );
    }
    let before = std::fs::read(&input).unwrap();
    let out = replay(&input, &input, &[]);
    assert_one_line_error(&out, "is the input capture");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

/// net_pcap does not report its write errors; qosgw writes the output itself, and checks.
#[test]
fn a_full_output_device_is_an_error() {
    let dir = Scratch::new("full");
    let input = dir.path("in.pcap");
    write_capture(&input, &mixed_frames());
    let out = replay(&input, std::path::Path::new("/dev/full"), &[]);
    assert_one_line_error(&out, "No space left on device");
}

/// DPDK's reader (libpcap) stops at a packet of a second link type; qosgw refuses the
/// capture instead of waiting for frames that never come.
#[test]
fn a_pcapng_with_two_link_types_is_one_clear_error() {
    let dir = Scratch::new("pcapng-mixed");
    let input = dir.path("mixed.pcapng");
    let mut b = Vec::new();
    let mut le = |words: &[u32]| words.iter().for_each(|w| b.extend(w.to_le_bytes()));
    le(&[0x0a0d_0d0a, 28, 0x1a2b_3c4d, 1, u32::MAX, u32::MAX, 28]); // section header
    le(&[1, 20, 1, 0, 20]); // interface 0: Ethernet
    le(&[1, 20, 113, 0, 20]); // interface 1: Linux cooked
    std::fs::write(&input, b).unwrap();
    let out = replay(&input, &dir.path("o.pcap"), &[]);
    assert_one_line_error(&out, "different link types (1 and 113)");
}

#[test]
fn several_workers_give_the_same_output_as_one() {
    let dir = Scratch::new("workers");
    let one = dir.path("one.pcap");
    assert_success(&replay(
        std::path::Path::new("config/sample.pcap"),
        &one,
        &[],
    ));
    for workers in ["2", "3"] {
        let many = dir.path(&format!("w{workers}.pcap"));
        let out = replay(
            std::path::Path::new("config/sample.pcap"),
            &many,
            &["--workers", workers, "--json"],
        );
        assert_success(&out);
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["tx_packets"], 409);
        // The same frames with the same marking; only the interleaving of flows may differ.
        let mut a: Vec<Vec<u8>> = read_capture(&one).into_iter().map(|r| r.data).collect();
        let mut b: Vec<Vec<u8>> = read_capture(&many).into_iter().map(|r| r.data).collect();
        a.sort();
        b.sort();
        assert!(a == b, "{workers} workers changed some frame");
    }
}

#[test]
fn bad_arguments_are_one_clear_line() {
    let out = qosgw(&["replay", "--in", "x.pcap"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--policies <FILE>") && stderr.contains("--out <OUT.pcap>"),
        "{stderr}"
    );
    let out = qosgw(&[
        "replay",
        "--in",
        "x",
        "--out",
        "y",
        "--policies",
        "z",
        "--workers",
        "many",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid value 'many' for '--workers <N>'"),
        "{stderr}"
    );
}
