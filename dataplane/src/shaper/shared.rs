//! A `policy`-scoped shaper shared by every worker: one virtual clock in an atomic.
//!
//! Workers advance the clock with compare-and-swap. A plain `fetch_add` of the packet's
//! time would not be sound: the step also clamps a lagging clock to `now − burst` and must
//! leave the clock alone when it drops a packet, and both depend on the value it replaces.
//! A successful exchange makes each packet's `[start, end)` interval the successor of the
//! previous one in the clock's modification order, so the intervals tile the timeline and
//! the aggregate rate is exact however the packets are spread over workers.
//!
//! The fraction of a cycle that the rate arithmetic carries from packet to packet cannot
//! share the atomic, so each worker keeps its own carry ([`SharedShaperHandle`]): the clock
//! then lags the exact total by less than one cycle per worker, at any time, without drift.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::edt::{Decision, ShaperConfig};

/// The clock of a shared shaper, alone on its cache line so that workers contending for it
/// do not also invalidate their neighbours'.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct SharedClock {
    t_next: AtomicU64,
}

impl SharedClock {
    pub fn new() -> SharedClock {
        SharedClock::default()
    }

    /// The virtual clock: when everything let through so far has left at the rate.
    pub fn t_next(&self) -> u64 {
        self.t_next.load(Ordering::Relaxed)
    }
}

/// A policy's shared shaper: its config and the clock, which outlives the config when a
/// reload changes the policy's rate but keeps its name (see [`ShaperRegistry`]).
///
/// [`ShaperRegistry`]: super::ShaperRegistry
#[derive(Debug)]
pub struct SharedShaper {
    cfg: ShaperConfig,
    clock: Arc<SharedClock>,
}

impl SharedShaper {
    /// A shaper with a fresh clock (full bucket).
    pub fn new(cfg: ShaperConfig) -> SharedShaper {
        SharedShaper::with_clock(cfg, Arc::new(SharedClock::new()))
    }

    /// A shaper continuing an existing clock under a (possibly) new config.
    pub fn with_clock(cfg: ShaperConfig, clock: Arc<SharedClock>) -> SharedShaper {
        SharedShaper { cfg, clock }
    }

    pub fn config(&self) -> &ShaperConfig {
        &self.cfg
    }

    pub fn clock(&self) -> &Arc<SharedClock> {
        &self.clock
    }

    /// Schedule a frame of `len` bytes seen at `now`; `carry` is the calling worker's own
    /// fraction of a cycle for this shaper (start it at 0). Same decisions as
    /// [`ShaperState::schedule`](super::ShaperState::schedule); lock-free: a failed exchange
    /// means another worker scheduled a packet meanwhile, and the step is redone.
    #[inline]
    pub fn schedule(&self, carry: &mut u32, now: u64, len: u32) -> Decision {
        self.schedule_within(carry, now, len, u64::MAX)
    }

    /// [`schedule`](Self::schedule) with `room` packets left to park ([`ShaperConfig::step`]).
    pub fn schedule_within(&self, carry: &mut u32, now: u64, len: u32, room: u64) -> Decision {
        // Relaxed is enough: the clock publishes no other data, and read-modify-write
        // operations on one atomic always see the latest value in its modification order.
        let mut current = self.clock.t_next.load(Ordering::Relaxed);
        loop {
            let Some((decision, t_next, new_carry)) =
                self.cfg.step(current, *carry, now, len, room)
            else {
                return Decision::Drop;
            };
            match self.clock.t_next.compare_exchange_weak(
                current,
                t_next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    *carry = new_carry;
                    return decision;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// True when the bucket is full at `now`.
    pub fn is_idle(&self, now: u64) -> bool {
        self.clock.t_next().saturating_add(self.cfg.burst_cycles()) <= now
    }
}

/// One worker's use of a [`SharedShaper`]: the shaper plus that worker's carry.
#[derive(Clone, Debug)]
pub struct SharedShaperHandle {
    shaper: Arc<SharedShaper>,
    carry: u32,
}

impl SharedShaperHandle {
    pub fn new(shaper: Arc<SharedShaper>) -> SharedShaperHandle {
        SharedShaperHandle { shaper, carry: 0 }
    }

    #[inline]
    pub fn schedule(&mut self, now: u64, len: u32) -> Decision {
        self.shaper.schedule(&mut self.carry, now, len)
    }

    pub fn shaper(&self) -> &Arc<SharedShaper> {
        &self.shaper
    }
}

#[cfg(test)]
mod tests {
    use super::super::rate::Rate;
    use super::*;
    use std::thread;

    /// Several threads hammer one shaper with packets of their own sizes. Every packet's
    /// virtual transmission must follow another's end exactly (the intervals tile the
    /// timeline with no gap and no overlap), and the whole span must equal the total bytes
    /// at the rate, within one cycle per thread.
    #[test]
    fn threads_share_the_rate_exactly() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 200_000;
        let hz = 2_893_000_017;
        let rate = Rate::new(10_000_000_000, hz).unwrap();
        // No burst, no delay limit, everyone at now = 0: each decision is `At(end)`.
        let shaper = Arc::new(SharedShaper::new(ShaperConfig::new(rate, 0, u64::MAX)));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let mut h = SharedShaperHandle::new(Arc::clone(&shaper));
                thread::spawn(move || {
                    let len = [64u32, 1514, 9216, 333][t];
                    let mut ends = Vec::with_capacity(PER_THREAD);
                    for _ in 0..PER_THREAD {
                        match h.schedule(0, len) {
                            Decision::At(end) => ends.push((end, len)),
                            d => panic!("unexpected {d:?}"),
                        }
                    }
                    ends
                })
            })
            .collect();
        let mut all: Vec<(u64, u32)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        let total_bytes: u64 = all.iter().map(|&(_, len)| len as u64).sum();
        let mut prev_end = 0;
        for &(end, len) in &all {
            // A packet's own share is its exact time, give or take its worker's carry.
            let exact = rate.cycles_for_bytes(len as u64);
            let took = end - prev_end;
            assert!(
                took == exact || took == exact + 1,
                "a {len}-byte packet took {took} cycles, exact {exact}"
            );
            prev_end = end;
        }
        let span = shaper.clock().t_next();
        assert_eq!(span, prev_end);
        // Each worker's carry holds back less than a cycle.
        let exact = rate.cycles_for_bytes(total_bytes);
        assert!(
            span <= exact + 1 && span + THREADS as u64 >= exact,
            "span {span}, exact {exact}"
        );
    }

    #[test]
    fn shared_drop_leaves_the_clock() {
        let rate = Rate::new(8_000_000, 1_000_000_000).unwrap();
        let s = SharedShaper::new(ShaperConfig::new(rate, 0, 1_000_000));
        let mut carry = 0;
        assert_eq!(s.schedule(&mut carry, 0, 1000), Decision::At(1_000_000));
        assert_eq!(s.schedule(&mut carry, 0, 1), Decision::Drop);
        assert_eq!(s.clock().t_next(), 1_000_000);
    }

    #[test]
    fn shared_burst_after_idle() {
        let rate = Rate::new(8_000_000, 1_000_000_000).unwrap();
        let s = SharedShaper::new(ShaperConfig::new(rate, 2000, u64::MAX));
        let (mut a, mut b) = (0, 0);
        let now = 1 << 40;
        assert!(s.is_idle(now));
        assert_eq!(s.schedule(&mut a, now, 1000), Decision::Now);
        assert_eq!(s.schedule(&mut b, now, 1000), Decision::Now);
        assert_eq!(s.schedule(&mut a, now, 1000), Decision::At(now + 1_000_000));
    }
}
