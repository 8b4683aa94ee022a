//! First-packet classification speed, build time and memory of the
//! `PolicyTable` for generated policy sets of 10 to 100 000 policies.
//!
//! ```text
//! cargo run --release -p control --example classify_bench [-- SIZES...]
//! ```
//!
//! The policy mix imitates an enterprise file: mostly IPv4 with some IPv6;
//! service policies (destination prefix of /16 to /32, TCP or UDP, a port or
//! a port range), host and subnet markings (source prefix), site-to-site
//! policies (both prefixes, protocol, port), application-wide policies
//! (protocol and port), a few VLAN and source-port policies, and about one
//! policy in ten with a non-default precedence.
//!
//! Keys: "hit" keys are drawn inside a random policy's conditions (so they
//! match it, and maybe better ones); "miss" keys are random addresses and
//! ports, which mostly match nothing or only a broad policy, and are the
//! slow case for a tuple-space search (no early stop).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use control::{Direction, MatchKey, Policy, PolicyDirection, PolicyTable, PortRange, Prefix};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn addr(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(bits.into())
    } else {
        IpAddr::V4((bits as u32).into())
    }
}

/// A random address in 10.0.0.0/8 or 2001:db8::/32.
fn random_addr(rng: &mut Rng, v6: bool) -> u128 {
    if v6 {
        (0x2001_0db8u128 << 96) | (u128::from(rng.next()) << 32 | u128::from(rng.next() as u32))
    } else {
        0x0A00_0000 | u128::from(rng.next() as u32 & 0x00FF_FFFF)
    }
}

fn prefix(rng: &mut Rng, v6: bool, lens4: &[u8], lens6: &[u8]) -> Prefix {
    let len = if v6 { rng.pick(lens6) } else { rng.pick(lens4) };
    let width = if v6 { 128 } else { 32 };
    let mask = (u128::MAX >> (128 - width)) & !((1u128 << (width - u32::from(len))) - 1);
    Prefix::new(addr(random_addr(rng, v6) & mask, v6), len).expect("masked")
}

fn port(rng: &mut Rng) -> PortRange {
    if rng.chance(75) {
        let common = [
            22, 25, 53, 80, 123, 389, 443, 445, 636, 873, 993, 1433, 3306, 3389, 5060, 8080, 8443,
        ];
        if rng.chance(50) {
            PortRange::single(rng.pick(&common))
        } else {
            PortRange::single(1024 + rng.below(60000) as u16)
        }
    } else {
        let lo = 1024 + rng.below(50000) as u16;
        let width = rng.pick(&[10u16, 100, 1000, 5000]);
        PortRange { lo, hi: lo + width }
    }
}

fn generate(n: usize, seed: u64) -> Vec<Policy> {
    let mut rng = Rng(seed);
    let l4 = [16u8, 20, 22, 24, 26, 28, 32];
    let l6 = [48u8, 56, 64, 128];
    (0..n)
        .map(|i| {
            let mut p = Policy::new(&format!("policy-{i}"));
            p.dscp = Some(rng.below(64) as u8);
            let v6 = rng.chance(20);
            let proto = |rng: &mut Rng| Some(rng.pick(&[6u8, 6, 6, 17, 17]));
            match rng.below(100) {
                0..=34 => {
                    p.dst_prefix = Some(prefix(&mut rng, v6, &l4, &l6));
                    p.protocol = proto(&mut rng);
                    p.dst_port = Some(port(&mut rng));
                }
                35..=49 => p.src_prefix = Some(prefix(&mut rng, v6, &[24, 28, 32], &[64, 128])),
                50..=69 => {
                    p.src_prefix = Some(prefix(&mut rng, v6, &l4, &l6));
                    p.dst_prefix = Some(prefix(&mut rng, v6, &l4, &l6));
                    p.protocol = proto(&mut rng);
                    p.dst_port = Some(port(&mut rng));
                }
                70..=79 => {
                    p.protocol = proto(&mut rng);
                    p.dst_port = Some(port(&mut rng));
                }
                80..=89 => p.dst_prefix = Some(prefix(&mut rng, v6, &l4, &l6)),
                90..=94 => {
                    p.src_prefix = Some(prefix(&mut rng, v6, &l4, &l6));
                    p.protocol = proto(&mut rng);
                    p.src_port = Some(port(&mut rng));
                }
                _ => {
                    p.vlan = Some(rng.below(4096) as u16);
                    if rng.chance(50) {
                        p.dst_prefix = Some(prefix(&mut rng, v6, &l4, &l6));
                    }
                }
            }
            if rng.chance(10) {
                p.precedence = rng.pick(&[100, 150, 200]);
            }
            if rng.chance(5) {
                p.direction = PolicyDirection::Both;
            }
            p
        })
        .collect()
}

fn inside(rng: &mut Rng, p: &Prefix) -> IpAddr {
    let v6 = !p.is_ipv4();
    let width = if v6 { 128 } else { 32 };
    let host = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    let hostmask = !p.mask() & (u128::MAX >> (128 - width));
    addr(p.bits() | (host & hostmask), v6)
}

fn hit_key(rng: &mut Rng, policies: &[Policy]) -> MatchKey {
    let p = &policies[rng.below(policies.len() as u64) as usize];
    let v6 = p.src_prefix.or(p.dst_prefix).is_some_and(|x| !x.is_ipv4());
    let in_range = |rng: &mut Rng, r: Option<PortRange>| {
        r.map_or(1024 + rng.below(60000) as u16, |r| {
            r.lo + rng.below(u64::from(r.size())) as u16
        })
    };
    let endpoint = |rng: &mut Rng, pf: Option<Prefix>| match pf {
        Some(x) => inside(rng, &x),
        None => addr(random_addr(rng, v6), v6),
    };
    MatchKey {
        direction: Direction::Outbound,
        vlan: p.vlan,
        src: endpoint(rng, p.src_prefix),
        dst: endpoint(rng, p.dst_prefix),
        protocol: p.protocol.unwrap_or(6),
        ports: Some((in_range(rng, p.src_port), in_range(rng, p.dst_port))),
    }
}

fn miss_key(rng: &mut Rng) -> MatchKey {
    let v6 = rng.chance(20);
    MatchKey {
        direction: Direction::Outbound,
        vlan: None,
        src: addr(random_addr(rng, v6), v6),
        dst: addr(random_addr(rng, v6), v6),
        protocol: rng.pick(&[6, 6, 17, 1]),
        ports: Some((
            1024 + rng.below(60000) as u16,
            rng.pick(&[80, 443, 8080, 3000]),
        )),
    }
    .with_portless_icmp()
}

trait PortlessIcmp {
    fn with_portless_icmp(self) -> Self;
}

impl PortlessIcmp for MatchKey {
    fn with_portless_icmp(mut self) -> Self {
        if self.protocol == 1 {
            self.ports = None;
        }
        self
    }
}

/// Classifications per second over `keys`: the best of three runs of at
/// least 0.3 s each (the machine is shared; the best run is the least
/// disturbed one).
fn rate(table: &PolicyTable, keys: &[MatchKey]) -> (f64, usize) {
    let mut matched = 0;
    for k in keys {
        matched += usize::from(table.classify(k).is_some());
    }
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed().as_secs_f64() < 0.3 {
            for k in keys {
                black_box(table.classify(black_box(k)));
            }
            done += keys.len() as u64;
        }
        best = best.max(done as f64 / start.elapsed().as_secs_f64());
    }
    (best, matched)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 1_000, 10_000, 100_000]
    } else {
        sizes
    };
    println!(
        "| policies | build ms | load ms (JSON) | heap MiB | sub-tables (max/index) | hit keys M/s | miss keys M/s | mixed M/s | matched (hit/miss) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let policies = generate(n, 0x5EED ^ n as u64);
        let json = format!(
            "{{\"policies\": {}}}",
            serde_json::to_string(&policies).expect("serialize")
        );
        let start = Instant::now();
        let (loaded, _) = control::parse_policies("bench.json", &json).expect("valid");
        let load_ms = start.elapsed().as_secs_f64() * 1e3;
        drop(loaded);

        let start = Instant::now();
        let table = PolicyTable::new(policies);
        let build_ms = start.elapsed().as_secs_f64() * 1e3;
        let stats = table.stats();

        let mut rng = Rng(0xC0FFEE ^ n as u64);
        let hits: Vec<MatchKey> = (0..100_000)
            .map(|_| hit_key(&mut rng, table.policies()))
            .collect();
        let misses: Vec<MatchKey> = (0..100_000).map(|_| miss_key(&mut rng)).collect();
        let mixed: Vec<MatchKey> = hits
            .iter()
            .zip(&misses)
            .flat_map(|(a, b)| [*a, *b])
            .collect();
        // Spot-check the fast path against the linear scan.
        for k in hits.iter().chain(&misses).step_by(997) {
            assert_eq!(table.classify(k), table.classify_linear(k));
        }
        let (hit_rate, hit_matched) = rate(&table, &hits);
        let (miss_rate, miss_matched) = rate(&table, &misses);
        let (mixed_rate, _) = rate(&table, &mixed);
        println!(
            "| {n} | {build_ms:.1} | {load_ms:.1} | {:.1} | {} ({}) | {:.2} | {:.2} | {:.2} | {}% / {}% |",
            stats.heap_bytes as f64 / 1048576.0,
            stats.sub_tables,
            stats.max_sub_tables,
            hit_rate / 1e6,
            miss_rate / 1e6,
            mixed_rate / 1e6,
            hit_matched * 100 / hits.len(),
            miss_matched * 100 / misses.len(),
        );
    }
}
