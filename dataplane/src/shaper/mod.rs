//! Earliest-departure-time shapers and the per-worker timing wheel (DESIGN.md step 4).
//!
//! Time is the TSC, in cycles; callers pass `now`, nothing here reads a clock.
//!
//! * [`Rate`]: a throttle as cycles per byte, exact to a cycle over billions of packets.
//! * [`ShaperConfig`] and [`ShaperState`] (alone: [`Shaper`]): one shaper instance, a token
//!   bucket of depth `burst` written as a virtual clock `t_next`. `schedule(now, len)`
//!   answers [`Decision::Now`], [`Decision::At`] a TSC time, or [`Decision::Drop`] when the
//!   wait would exceed `max_delay` (the state then stays as it was).
//! * [`SharedShaper`]: the same with `t_next` in an atomic, for a `policy` scope shared by
//!   all workers; [`SharedShaperHandle`] is one worker's use of it.
//! * [`TimingWheel`]: where a worker parks packets until their departure; O(1) insert,
//!   FIFO within a slot, releases every due slot when polled.
//! * [`ShaperTable`], [`WorkerShapers`], [`ShaperRegistry`]: which instance a packet uses
//!   (`policy`, `host` or `flow` scope), what is per worker and what is shared, and how the
//!   state survives a policy reload (see `registry.rs`).
//!
//! In the worker: `match shapers.schedule(..) { Now => tx, At(t) => wheel.insert(mbuf, t),
//! Drop => free and count }`, and every loop iteration `wheel.pop_due(now, tx)` and
//! `shapers.retire_idle(now - tsc_hz, budget)`.

mod edt;
mod rate;
mod registry;
mod shared;
mod table;
mod wheel;

pub use edt::{Decision, Shaper, ShaperConfig, ShaperState};
pub use rate::{Rate, RateError};
pub use registry::{PolicyShaper, ScopeKey, ShaperId, ShaperRegistry, WorkerShapers};
pub use shared::{SharedClock, SharedShaper, SharedShaperHandle};
pub use table::{ShaperHint, ShaperTable};
pub use wheel::TimingWheel;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const HZ: u64 = 2_899_871_000; // an awkward TSC frequency

    /// Simulate `workers` poll loops (1 µs per iteration) offering `len`-byte packets back
    /// to back at twice `bps` for one second to one `policy` shaper, parking delayed
    /// packets in each worker's wheel. Returns achieved/configured: the bytes released
    /// over time, fitted between the 10th and the 90th percentile delayed packet.
    fn achieved_ratio(bps: u64, len: u32, workers: usize) -> f64 {
        let rate = Rate::new(bps, HZ).unwrap();
        let cfg = ShaperConfig::new(rate, ShaperConfig::default_burst_bytes(bps), u64::MAX);
        let shared = Arc::new(SharedShaper::new(cfg));
        let mut handles: Vec<_> = (0..workers)
            .map(|_| SharedShaperHandle::new(Arc::clone(&shared)))
            .collect();
        let shift = TimingWheel::<u32>::slot_shift_for(HZ, 2_000);
        let mut wheels: Vec<TimingWheel<u32>> = (0..workers)
            .map(|_| TimingWheel::new(shift, 1024))
            .collect();
        let t0 = 1000 * HZ;
        let poll = HZ / 1_000_000;
        let interval = HZ as u128 * len as u128 * 8 / (2 * bps as u128); // cycles per packet
        let mut next_arrival = t0 as u128;
        let mut released: Vec<u64> = Vec::new(); // release times of delayed packets
        let mut now = t0;
        let mut offered = 0u64;
        while now < t0 + HZ || wheels.iter().any(|w| !w.is_empty()) {
            while next_arrival <= now as u128 && now < t0 + HZ {
                let w = (offered % workers as u64) as usize;
                match handles[w].schedule(now, len) {
                    Decision::Now => {}
                    Decision::At(t) => wheels[w].insert(0, t),
                    Decision::Drop => unreachable!("no delay limit"),
                }
                offered += 1;
                next_arrival += interval;
            }
            for w in &mut wheels {
                w.pop_due(now, |_| released.push(now));
            }
            now += poll;
        }
        released.sort_unstable();
        let (a, b) = (released.len() / 10, released.len() * 9 / 10);
        let bits = (b - a) as f64 * len as f64 * 8.0;
        let secs = (released[b] - released[a]) as f64 / HZ as f64;
        bits / secs / bps as f64
    }

    #[test]
    fn accuracy_through_the_wheel() {
        for &(bps, len) in &[
            (100_000, 64),
            (100_000, 1514),
            (1_000_000, 64),
            (1_000_000, 1514),
            (100_000_000, 1514),
            (1_000_000_000, 1514),
            (10_000_000_000, 1514),
        ] {
            let ratio = achieved_ratio(bps, len, 1);
            assert!(
                (ratio - 1.0).abs() < 0.001,
                "{bps} b/s, {len} B: achieved/configured = {ratio:.6}"
            );
        }
    }

    #[test]
    fn aggregate_accuracy_over_two_workers() {
        for &bps in &[1_000_000, 100_000_000, 1_000_000_000] {
            let ratio = achieved_ratio(bps, 1514, 2);
            assert!(
                (ratio - 1.0).abs() < 0.001,
                "{bps} b/s over 2 workers: achieved/configured = {ratio:.6}"
            );
        }
    }
}
