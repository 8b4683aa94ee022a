//! Shaper core micro-benchmark (issue 5): per-packet cost of schedule + timing-wheel insert +
//! release with 1 … 1 000 000 active `host` or `flow` shapers, against the unshaped path in
//! the same run, and pacing accuracy through the wheel.
//!
//! `cargo run --release -p dataplane --no-default-features --example shaper_bench`
//!
//! Time is simulated: `now` advances 100 TSC cycles per packet (30 Mpps at a nominal 3 GHz),
//! so the shapers see the same traffic on any machine and only the CPU time is measured.
//! Each packet goes to a flow picked uniformly at random among N; every flow has its own
//! shaper (`flow` scope) or its own inside host (`host` scope), offered 80 % of its rate
//! with a zero burst, so that every packet is delayed, parked in the wheel and released
//! (polled every 32 packets, as a worker does per RX burst).
//!
//! A last table takes the million-shaper cost apart: the shapers' work alone (delayed
//! packets not parked), and the wheel holding as many packets as at a million shapers but
//! with one shaper (departures spread over 118 ms instead of the shaper's).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use control::ThrottleScope;
use dataplane::shaper::{
    Decision, PolicyShaper, Rate, ScopeKey, ShaperConfig, ShaperHint, ShaperRegistry, SharedShaper,
    SharedShaperHandle, TimingWheel, WorkerShapers,
};

const TSC_HZ: u64 = 3_000_000_000;
const STEP: u64 = 100; // simulated cycles between packets
const BURST: usize = 32;
const PACKETS: u64 = 5_000_000;
/// How far `Park::Spread` spreads departures: 118 ms, which at this packet rate parks
/// about as many packets (1.77 M) as a million shapers at 80 % of their rate do.
const SPREAD: u64 = TSC_HZ / 1000 * 118;

/// What the worker's flow-cache entry would hold for the shaper.
#[derive(Clone, Copy)]
struct Flow {
    key: ScopeKey,
    hint: ShaperHint,
    bytes: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` flows' entries, on huge pages like the worker's flow cache; flow `i` belongs to
/// inside host `i % hosts`.
fn flows(n: usize, hosts: usize) -> Vec<Flow> {
    let mut v = dataplane::huge_pages::vec_with_capacity(n);
    v.extend((0..n).map(|i| {
        let mut host = [0u8; 16];
        host[10] = 0xff;
        host[11] = 0xff;
        host[12..].copy_from_slice(&(0x0a00_0000u32 + (i % hosts) as u32).to_be_bytes());
        Flow {
            key: ScopeKey {
                host,
                flow: (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            },
            hint: ShaperHint::NONE,
            bytes: 0,
        }
    }));
    v
}

fn len_of(r: u64) -> u32 {
    64 + (r >> 40) as u32 % 1451 // 64 … 1514 bytes, 789 on average
}

/// Ask the CPU to load `r`'s cache line without waiting (the worker does this for the
/// flow-cache entries of an RX burst).
#[inline]
fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults; the address is a live reference's.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// The flows of the next RX burst, picked uniformly at random without a division.
fn burst(rng: &mut Rng, n: usize) -> [(usize, u32); BURST] {
    let mut b = [(0, 0); BURST];
    for p in &mut b {
        let r = rng.next();
        *p = (((r as u128 * n as u128) >> 64) as usize, len_of(r));
    }
    b
}

/// Unshaped: per RX burst, load the flows' entries, then count each packet's bytes in its
/// entry and send it.
fn unshaped(n: usize) -> f64 {
    let mut flows = flows(n, n);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let run = |flows: &mut Vec<Flow>, rng: &mut Rng, packets: u64| {
        let mut sent = 0u64;
        for _ in 0..packets / BURST as u64 {
            let b = burst(rng, n);
            for &(i, _) in &b {
                prefetch(&flows[i]);
            }
            for &(i, len) in &b {
                flows[i].bytes += len as u64;
                sent += 1;
            }
        }
        black_box(sent);
    };
    run(&mut flows, &mut rng, PACKETS / 5);
    let t = Instant::now();
    run(&mut flows, &mut rng, PACKETS);
    t.elapsed().as_nanos() as f64 / PACKETS as f64
}

/// Where a delayed packet goes: the decomposition of the cost into the shapers' part and
/// the timing wheel's.
#[derive(Clone, Copy, PartialEq)]
enum Park {
    /// Into the wheel at its departure (the real thing).
    Wheel,
    /// Nowhere: the shapers' work alone.
    Nowhere,
    /// Into the wheel at a departure spread uniformly over this many cycles from now,
    /// whatever the shaper said: the wheel under a given backlog with any number of shapers.
    Spread(u64),
}

struct Sim {
    shaper: PolicyShaper,
    shapers: WorkerShapers,
    /// Holds the packets' flow numbers as 8-byte items, the size of the worker's mbuf
    /// pointers, so that the wheel moves as many bytes per packet as in the worker.
    wheel: TimingWheel<u64>,
    park: Park,
    now: u64,
    delayed: u64,
}

impl Sim {
    /// Per RX burst, as the worker will: load the flows' entries, then their shapers, then
    /// schedule each packet (send it or park it in the wheel); then release what is due
    /// and retire a few idle shapers.
    fn run(&mut self, flows: &mut [Flow], rng: &mut Rng, packets: u64) {
        let mut sent = 0u64;
        for _ in 0..packets / BURST as u64 {
            let b = burst(rng, flows.len());
            for &(i, _) in &b {
                prefetch(&flows[i]);
            }
            for &(i, _) in &b {
                self.shapers.prefetch(&self.shaper, flows[i].hint);
            }
            for &(i, len) in &b {
                let f = &mut flows[i];
                f.bytes += len as u64;
                match self
                    .shapers
                    .schedule(&self.shaper, &f.key, &mut f.hint, self.now, len)
                {
                    Decision::Now => sent += 1,
                    Decision::At(t) => {
                        match self.park {
                            Park::Wheel => self.wheel.insert(i as u64, t),
                            Park::Nowhere => sent += t & 1,
                            Park::Spread(span) => {
                                let r = (i as u64 ^ u64::from(len) << 32)
                                    .wrapping_mul(0x9e37_79b9_7f4a_7c15);
                                let at = self.now + ((r as u128 * span as u128) >> 64) as u64;
                                self.wheel.insert(i as u64, at + (t & 1));
                            }
                        }
                        self.delayed += 1;
                    }
                    Decision::Drop => {}
                }
                self.now += STEP;
            }
            self.wheel.pop_due(self.now, |x| sent += x & 1);
            // Keep shapers for a second after they went idle, as the worker will.
            self.shapers.retire_idle(self.now.saturating_sub(TSC_HZ), 8);
        }
        black_box(sent);
    }
}

/// What a run of [`shaped`] measured.
struct Shaped {
    ns: f64,
    /// Share of the packets delayed.
    delayed: f64,
    /// Packets in the wheel at the end.
    backlog: usize,
}

/// Shaped through `WorkerShapers` (`host` or `flow` scope) and a timing wheel: `n` flows
/// over `shapers` shapers (`flow` scope: one per flow, so `shapers` must be `n`; `host`
/// scope: flow `i` belongs to host `i % shapers`); delayed packets parked as `park` says.
fn shaped(n: usize, shapers: usize, scope: ThrottleScope, park: Park) -> Shaped {
    assert!(scope != ThrottleScope::Flow || shapers == n);
    // Each shaper is offered TSC_HZ / (STEP × shapers) packets per second of 789 bytes on
    // average; its rate is 1.25 × that.
    let offered_bps = TSC_HZ as u128 * 789 * 8 / (STEP as u128 * shapers as u128);
    let bps = (offered_bps * 5 / 4).clamp(Rate::MIN_BPS as u128, Rate::MAX_BPS as u128) as u64;
    let cfg = ShaperConfig::new(Rate::new(bps, TSC_HZ).unwrap(), 0, u64::MAX);
    let registry = ShaperRegistry::new();
    let mut sim = Sim {
        shaper: registry.shaper_for("bench", scope, cfg).expect("one name"),
        shapers: WorkerShapers::with_capacity(n, n),
        wheel: TimingWheel::new(TimingWheel::<u64>::slot_shift_for(TSC_HZ, 2_000), 1 << 16),
        park,
        now: 1 << 40,
        delayed: 0,
    };
    let mut flows = flows(n, shapers);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Warm up: create every shaper, then reach a steady backlog.
    for f in flows.iter_mut() {
        sim.shapers
            .schedule(&sim.shaper, &f.key, &mut f.hint, sim.now, 64);
    }
    sim.run(&mut flows, &mut rng, PACKETS / 5 + n as u64);
    let before = sim.delayed;
    let t = Instant::now();
    sim.run(&mut flows, &mut rng, PACKETS);
    let ns = t.elapsed().as_nanos() as f64 / PACKETS as f64;
    if std::env::var_os("SHAPER_BENCH_DEBUG").is_some() {
        eprintln!(
            "n {n}: {bps} b/s per shaper, backlog {} packets, {} live shapers",
            sim.wheel.len(),
            sim.shapers.hosts() + sim.shapers.flows()
        );
    }
    Shaped {
        ns,
        delayed: (sim.delayed - before) as f64 / PACKETS as f64,
        backlog: sim.wheel.len(),
    }
}

/// The fastest of three runs (the machine is shared, and interference only adds time).
fn best_of_three(run: impl Fn() -> Shaped) -> Shaped {
    (0..3)
        .map(|_| run())
        .reduce(|a, b| if b.ns < a.ns { b } else { a })
        .expect("three runs")
}

/// One shared `policy` shaper (the atomic clock), uncontended, through the wheel.
fn shaped_policy() -> f64 {
    let bps = (TSC_HZ as u128 * 789 * 8 / STEP as u128 * 5 / 4) as u64;
    let cfg = ShaperConfig::new(Rate::new(bps, TSC_HZ).unwrap(), 0, u64::MAX);
    let mut h = SharedShaperHandle::new(Arc::new(SharedShaper::new(cfg)));
    let mut wheel: TimingWheel<u32> = TimingWheel::new(12, 1 << 16);
    let mut rng = Rng(7);
    let mut now = 1u64 << 40;
    let mut sent = 0u64;
    let t = Instant::now();
    for p in 0..PACKETS {
        let len = len_of(rng.next());
        match h.schedule(now, len) {
            Decision::At(t) => wheel.insert(p as u32, t),
            _ => sent += 1,
        }
        if p % BURST as u64 == 0 {
            wheel.pop_due(now, |x| sent += x as u64 & 1);
        }
        now += STEP;
    }
    black_box(sent);
    t.elapsed().as_nanos() as f64 / PACKETS as f64
}

/// `threads` workers scheduling on one shared `policy` shaper at once (schedule only, no
/// wheel): ns per packet as each worker sees it, i.e. wall time / packets per worker.
fn policy_contended(threads: usize) -> f64 {
    let bps = (TSC_HZ as u128 * 789 * 8 / STEP as u128 * 5 / 4) as u64;
    let cfg = ShaperConfig::new(Rate::new(bps, TSC_HZ).unwrap(), 0, u64::MAX);
    let shared = Arc::new(SharedShaper::new(cfg));
    let per_thread = PACKETS / 2;
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let mut h = SharedShaperHandle::new(Arc::clone(&shared));
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut rng = Rng(0x5eed + t as u64);
                let mut now = 1u64 << 40;
                let mut delayed = 0u64;
                barrier.wait();
                for _ in 0..per_thread {
                    if let Decision::At(_) = h.schedule(now, len_of(rng.next())) {
                        delayed += 1;
                    }
                    now += STEP * threads as u64;
                }
                black_box(delayed);
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for w in workers {
        w.join().unwrap();
    }
    t.elapsed().as_nanos() as f64 / per_thread as f64
}

/// Achieved/configured for 1 s of packets offered back to back at twice the rate, released
/// by a wheel polled every µs, fitted between the 10th and 90th percentile delayed packet.
fn accuracy(bps: u64, len: u32) -> f64 {
    let hz = 2_899_871_000;
    let cfg = ShaperConfig::new(
        Rate::new(bps, hz).unwrap(),
        ShaperConfig::default_burst_bytes(bps),
        u64::MAX,
    );
    let registry = ShaperRegistry::new();
    let shaper: PolicyShaper = registry
        .shaper_for("acc", ThrottleScope::Policy, cfg)
        .expect("one name");
    let mut shapers = WorkerShapers::with_capacity(1, 1);
    let key = flows(1, 1)[0].key;
    let mut hint = ShaperHint::NONE;
    let mut wheel: TimingWheel<()> =
        TimingWheel::new(TimingWheel::<()>::slot_shift_for(hz, 2_000), 0);
    let t0 = 1000 * hz;
    let interval = hz as u128 * len as u128 * 8 / (2 * bps as u128);
    let mut next = t0 as u128;
    let mut released = Vec::new();
    let mut now = t0;
    while now < t0 + hz || !wheel.is_empty() {
        while next <= now as u128 && now < t0 + hz {
            if let Decision::At(t) = shapers.schedule(&shaper, &key, &mut hint, now, len) {
                wheel.insert((), t);
            }
            next += interval;
        }
        wheel.pop_due(now, |()| released.push(now));
        now += hz / 1_000_000;
    }
    let (a, b) = (released.len() / 10, released.len() * 9 / 10);
    let bits = (b - a) as f64 * len as f64 * 8.0;
    bits / ((released[b] - released[a]) as f64 / hz as f64) / bps as f64
}

fn main() {
    // `shaper_bench flow 100000`: one row only (for profiling); `shaper_bench host 1000
    // 1000000`: 1 000 host shapers over a million flows; a last word `nowhere` or `spread`
    // parks the delayed packets as in the decomposition table.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [scope, n, more @ ..] = args.as_slice() {
        let scope = if scope == "host" {
            ThrottleScope::Host
        } else {
            ThrottleScope::Flow
        };
        let shapers: usize = n.parse().expect("a number of shapers");
        let flows = more
            .first()
            .map_or(shapers, |f| f.parse().expect("a number of flows"));
        let park = match more.get(1).map(String::as_str) {
            None | Some("wheel") => Park::Wheel,
            Some("nowhere") => Park::Nowhere,
            Some("spread") => Park::Spread(SPREAD),
            Some(other) => panic!("{other}: park in wheel, nowhere or spread"),
        };
        let r = shaped(flows, shapers, scope, park);
        println!(
            "{:.1} ns per packet, {:.0} % delayed, {} packets parked",
            r.ns,
            r.delayed * 100.0,
            r.backlog
        );
        return;
    }
    println!("## per-packet cost (ns), {PACKETS} packets per row, random flow per packet");
    println!("| scope | shapers | unshaped | shaped | shaped / unshaped | share delayed |");
    println!("|---|---:|---:|---:|---:|---:|");
    for &scope in &[ThrottleScope::Flow, ThrottleScope::Host] {
        for &n in &[1usize, 1_000, 100_000, 1_000_000] {
            // Best of three: the machine is shared, and interference only adds time.
            let base = (0..3).map(|_| unshaped(n)).fold(f64::MAX, f64::min);
            let r = best_of_three(|| shaped(n, n, scope, Park::Wheel));
            println!(
                "| {} | {n} | {base:.1} | {:.1} | {:.1} | {:.0} % |",
                scope.as_str(),
                r.ns,
                r.ns / base,
                r.delayed * 100.0
            );
        }
    }
    let policy = (0..3).map(|_| shaped_policy()).fold(f64::MAX, f64::min);
    println!("| policy (atomic, 1 worker) | 1 | | {policy:.1} | | |");
    println!();
    // The same shapers over a fixed population of flows: only the number of shapers
    // changes from row to row, not how many flow entries the packets touch.
    const FLOWS: usize = 1_000_000;
    println!("## host scope over {FLOWS} flows throughout, ns per packet");
    println!("| host shapers | unshaped | shaped | shaped / unshaped | share delayed |");
    println!("|---:|---:|---:|---:|---:|");
    let base = (0..3).map(|_| unshaped(FLOWS)).fold(f64::MAX, f64::min);
    for &n in &[1usize, 1_000, 100_000, 1_000_000] {
        let r = best_of_three(|| shaped(FLOWS, n, ThrottleScope::Host, Park::Wheel));
        println!(
            "| {n} | {base:.1} | {:.1} | {:.1} | {:.0} % |",
            r.ns,
            r.ns / base,
            r.delayed * 100.0
        );
    }
    println!();
    // The same rows taken apart: the shapers' work alone, and the wheel under the backlog
    // of the million-shaper row with a single shaper.
    println!("## where the time goes: host scope over {FLOWS} flows, ns per packet");
    println!(
        "| host shapers | schedule only | schedule + wheel (packets parked) | \
         schedule + wheel, departures spread over {} ms (packets parked) |",
        SPREAD * 1000 / TSC_HZ
    );
    println!("|---:|---:|---:|---:|");
    for &n in &[1usize, 1_000_000] {
        let host = |park| best_of_three(|| shaped(FLOWS, n, ThrottleScope::Host, park));
        let (only, wheel, spread) = (
            host(Park::Nowhere),
            host(Park::Wheel),
            host(Park::Spread(SPREAD)),
        );
        println!(
            "| {n} | {:.1} | {:.1} ({}) | {:.1} ({}) |",
            only.ns, wheel.ns, wheel.backlog, spread.ns, spread.backlog
        );
    }
    println!();
    println!(
        "## policy scope: one atomic clock, schedule only (no wheel), ns per packet per worker"
    );
    println!("| workers | ns |");
    println!("|---:|---:|");
    for threads in [1, 2] {
        let ns = (0..3)
            .map(|_| policy_contended(threads))
            .fold(f64::MAX, f64::min);
        println!("| {threads} | {ns:.1} |");
    }
    println!();
    println!("## accuracy: achieved / configured");
    println!("| rate | 64 B | 1514 B |");
    println!("|---|---:|---:|");
    for &(bps, label) in &[
        (100_000, "100 kb/s"),
        (1_000_000, "1 Mb/s"),
        (100_000_000, "100 Mb/s"),
        (1_000_000_000, "1 Gb/s"),
        (10_000_000_000, "10 Gb/s"),
    ] {
        let small = if bps <= 1_000_000_000 {
            format!("{:.6}", accuracy(bps, 64))
        } else {
            "–".to_string()
        };
        println!("| {label} | {small} | {:.6} |", accuracy(bps, 1514));
    }
}
