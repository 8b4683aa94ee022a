//! Earliest-departure-time scheduling for one shaper instance.
//!
//! The state is one virtual clock, `t_next`: the time at which everything the shaper has
//! let through would have finished at the configured rate. It obeys a token bucket of depth
//! `burst` bytes:
//!
//! * `t_next` may lag `now` by at most `burst / rate` (a shaper idle for that long has a
//!   full bucket), so the packet's virtual transmission starts at
//!   `start = max(t_next, now − burst/rate)`;
//! * it ends at `end = start + len/rate`, which becomes the new `t_next`;
//! * the packet departs at `max(now, end)`: the moment the bucket holds its `len` bytes.
//!
//! So a shaper that has been idle sends `burst` bytes at once, and over any interval `T` it
//! releases at most `burst + rate × T` bytes. (Departing at `start` instead would let one
//! packet more than `burst` through and delay nothing when `burst` is zero.)
//! A packet whose departure is more than `max_delay` after `now` is dropped and leaves the
//! state as it was, so the drop costs the shaper nothing.

use super::rate::{Rate, RateError};

/// What to do with a packet a shaper has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it now (the shaper has credit): it never enters the timing wheel.
    Now,
    /// Hold it until this TSC time (always later than the `now` it was scheduled at).
    At(u64),
    /// Its departure would be more than `max_delay` away: drop it and count it.
    Drop,
}

/// What every instance of one policy's shaper shares: rate, burst and the delay limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaperConfig {
    rate: Rate,
    burst_bytes: u64,
    burst_cycles: u64,
    max_delay_cycles: u64,
}

impl ShaperConfig {
    /// A config for `rate` with a bucket of `burst_bytes` and a delay limit of
    /// `max_delay_cycles` TSC cycles (`u64::MAX`: no limit, as in replay).
    pub fn new(rate: Rate, burst_bytes: u64, max_delay_cycles: u64) -> ShaperConfig {
        ShaperConfig {
            rate,
            burst_bytes,
            burst_cycles: rate.cycles_for_bytes(burst_bytes),
            max_delay_cycles,
        }
    }

    /// The config of a policy's `throttle` (rate, `burst`) for a TSC at `tsc_hz` with the
    /// gateway's delay limit (`u64::MAX`: none).
    pub fn from_throttle(
        throttle: &control::Throttle,
        tsc_hz: u64,
        max_delay_cycles: u64,
    ) -> Result<ShaperConfig, RateError> {
        let rate = Rate::new(throttle.rate_bps, tsc_hz)?;
        Ok(ShaperConfig::new(
            rate,
            throttle.burst_bytes,
            max_delay_cycles,
        ))
    }

    /// SPEC §2's default burst: the larger of 2 × 1514 bytes and 2 ms at the rate.
    pub fn default_burst_bytes(bps: u64) -> u64 {
        (2 * 1514).max(bps / 4_000)
    }

    /// `max_delay_ms` converted to TSC cycles (saturating).
    pub fn max_delay_cycles_from_ms(max_delay_ms: u64, tsc_hz: u64) -> u64 {
        u64::try_from(max_delay_ms as u128 * tsc_hz as u128 / 1_000).unwrap_or(u64::MAX)
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    /// The burst as time at the rate: how far `t_next` may lag `now`.
    pub fn burst_cycles(&self) -> u64 {
        self.burst_cycles
    }

    pub fn max_delay_cycles(&self) -> u64 {
        self.max_delay_cycles
    }

    /// The schedule step shared by [`ShaperState`] and the atomic
    /// [`SharedShaper`](super::SharedShaper): from the current `t_next` and carry, the
    /// decision and the new `(t_next, carry)`, or `None` for a drop.
    ///
    /// `room`: how many more packets the worker can park. A packet is delayed only while
    /// its shaper's backlog, counted in packets of its size, stays within that room, so a
    /// shaper offered far more than its rate takes at most about half of what is free and
    /// leaves the rest to the others (n such shapers about n/(n+1) between them), and a
    /// shaper within its rate keeps its room (`u64::MAX`: no limit; 0: nothing may wait).
    #[inline]
    pub(crate) fn step(
        &self,
        t_next: u64,
        carry: u32,
        now: u64,
        len: u32,
        room: u64,
    ) -> Option<(Decision, u64, u32)> {
        let earliest = now.saturating_sub(self.burst_cycles);
        // A clamped clock starts on a whole cycle: the old fraction belonged to a past
        // that the bucket has already forgiven.
        let (start, mut carry) = if t_next < earliest {
            (earliest, 0)
        } else {
            (t_next, carry)
        };
        let tx = self.rate.tx_cycles(len, &mut carry);
        let end = start.saturating_add(tx);
        if end <= now {
            return Some((Decision::Now, end, carry));
        }
        let wait = end - now;
        // Its backlog in packets of this size, ⌈wait / tx⌉, more than the room: wait > room × tx.
        if wait > self.max_delay_cycles || wait > room.saturating_mul(tx.max(1)) {
            return None;
        }
        Some((Decision::At(end), end, carry))
    }
}

/// The state of one shaper instance: 16 bytes, so millions of `host` or `flow` shapers fit.
/// The config lives with the policy, not here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShaperState {
    t_next: u64,
    carry: u32,
}

impl ShaperState {
    /// A shaper with a full bucket, whatever `now` is.
    pub const fn new() -> ShaperState {
        ShaperState {
            t_next: 0,
            carry: 0,
        }
    }

    /// Decide when a frame of `len` bytes (as on the wire, SPEC §2) seen at `now` leaves.
    #[inline]
    pub fn schedule(&mut self, cfg: &ShaperConfig, now: u64, len: u32) -> Decision {
        self.schedule_within(cfg, now, len, u64::MAX)
    }

    /// [`schedule`](Self::schedule) with `room` packets left to park ([`ShaperConfig::step`]).
    #[inline]
    pub fn schedule_within(
        &mut self,
        cfg: &ShaperConfig,
        now: u64,
        len: u32,
        room: u64,
    ) -> Decision {
        match cfg.step(self.t_next, self.carry, now, len, room) {
            Some((decision, t_next, carry)) => {
                self.t_next = t_next;
                self.carry = carry;
                decision
            }
            None => Decision::Drop,
        }
    }

    /// The virtual clock: when everything let through so far has left at the rate.
    pub fn t_next(&self) -> u64 {
        self.t_next
    }

    /// True when the bucket is full at `now`: the state then behaves exactly like a fresh
    /// one, so a table may forget it.
    pub fn is_idle(&self, cfg: &ShaperConfig, now: u64) -> bool {
        self.t_next.saturating_add(cfg.burst_cycles) <= now
    }
}

/// A shaper instance with its own config: the single-owner form of [`ShaperState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaper {
    cfg: ShaperConfig,
    state: ShaperState,
}

impl Shaper {
    pub fn new(cfg: ShaperConfig) -> Shaper {
        Shaper {
            cfg,
            state: ShaperState::new(),
        }
    }

    /// See [`ShaperState::schedule`].
    #[inline]
    pub fn schedule(&mut self, now: u64, len: u32) -> Decision {
        self.state.schedule(&self.cfg, now, len)
    }

    pub fn config(&self) -> &ShaperConfig {
        &self.cfg
    }

    /// Keep the clock, change rate, burst or delay limit (a policy reload).
    pub fn set_config(&mut self, cfg: ShaperConfig) {
        self.cfg = cfg;
    }

    pub fn state(&self) -> &ShaperState {
        &self.state
    }

    pub fn is_idle(&self, now: u64) -> bool {
        self.state.is_idle(&self.cfg, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000; // 1 cycle = 1 ns keeps the numbers readable

    fn cfg(bps: u64, burst: u64, max_delay: u64) -> ShaperConfig {
        ShaperConfig::new(Rate::new(bps, HZ).unwrap(), burst, max_delay)
    }

    #[test]
    fn default_burst_follows_spec() {
        assert_eq!(ShaperConfig::default_burst_bytes(8_000), 3028);
        assert_eq!(ShaperConfig::default_burst_bytes(20_000_000), 5000);
        assert_eq!(ShaperConfig::default_burst_bytes(10_000_000_000), 2_500_000);
        assert_eq!(
            ShaperConfig::max_delay_cycles_from_ms(100, 3_000_000_000),
            300_000_000
        );
    }

    #[test]
    fn idle_shaper_sends_its_burst_at_once_then_paces() {
        // 8 Mb/s = 1 byte per µs = 1 byte per 1000 cycles; burst 3000 bytes.
        let mut s = Shaper::new(cfg(8_000_000, 3000, u64::MAX));
        let now = 1_000_000_000;
        for _ in 0..3 {
            assert_eq!(s.schedule(now, 1000), Decision::Now);
        }
        // The bucket is empty: the fourth waits for its own 1000 bytes.
        assert_eq!(s.schedule(now, 1000), Decision::At(now + 1_000_000));
        assert_eq!(s.schedule(now, 500), Decision::At(now + 1_500_000));
        // After a long idle the bucket is full again, but no fuller.
        let later = now + 10_000_000_000;
        assert!(s.is_idle(later));
        for _ in 0..3 {
            assert_eq!(s.schedule(later, 1000), Decision::Now);
        }
        assert_eq!(s.schedule(later, 1), Decision::At(later + 1000));
    }

    #[test]
    fn partial_idle_refills_partially() {
        let mut s = Shaper::new(cfg(8_000_000, 3000, u64::MAX));
        let now = 5_000_000_000;
        for _ in 0..3 {
            assert_eq!(s.schedule(now, 1000), Decision::Now);
        }
        // 1.5 ms later the bucket holds 1500 bytes.
        let t = now + 1_500_000;
        assert_eq!(s.schedule(t, 1500), Decision::Now);
        assert_eq!(s.schedule(t, 1), Decision::At(t + 1000));
    }

    #[test]
    fn a_frame_larger_than_the_burst_waits_for_its_excess_then_leaves() {
        // 8 Mb/s = 1 byte per 1000 cycles; a 9000-byte frame against a 1514-byte bucket.
        let mut s = Shaper::new(cfg(8_000_000, 1514, u64::MAX));
        let now = 1_000_000_000;
        assert!(s.is_idle(now));
        // At a full bucket: the 7486 bytes beyond the burst, at the rate.
        let first = now + 7_486_000;
        assert_eq!(s.schedule(now, 9000), Decision::At(first));
        // The next one a whole frame's time later: 18 000 bytes in 9 ms, the bound
        // max(burst, frame) + rate × T of DECISIONS.
        assert_eq!(s.schedule(now, 9000), Decision::At(first + 9_000_000));
    }

    #[test]
    fn zero_burst_paces_every_packet() {
        let mut s = Shaper::new(cfg(8_000_000, 0, u64::MAX));
        assert_eq!(s.schedule(1_000, 10), Decision::At(11_000));
        assert_eq!(s.schedule(1_000, 10), Decision::At(21_000));
        assert_eq!(s.schedule(50_000, 10), Decision::At(60_000));
    }

    #[test]
    fn drops_beyond_max_delay_without_advancing() {
        // 1 ms of delay allowed = 1000 bytes of backlog at 8 Mb/s.
        let mut s = Shaper::new(cfg(8_000_000, 0, 1_000_000));
        let now = 1_000_000_000;
        assert_eq!(s.schedule(now, 600), Decision::At(now + 600_000));
        assert_eq!(s.schedule(now, 400), Decision::At(now + 1_000_000));
        let before = *s.state();
        assert_eq!(s.schedule(now, 1), Decision::Drop);
        assert_eq!(*s.state(), before, "a drop must not advance the clock");
        // A smaller packet a little later fits again.
        assert_eq!(s.schedule(now + 1000, 1), Decision::At(now + 1_001_000));
    }

    #[test]
    fn departures_never_decrease() {
        let mut s = Shaper::new(cfg(1_000_000, 3028, u64::MAX));
        let mut seed = 12345u64;
        let mut now = 1u64 << 40;
        let mut last = 0;
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += seed % 20_000;
            let d = match s.schedule(now, 60 + (seed % 1455) as u32) {
                Decision::Now => now,
                Decision::At(t) => {
                    assert!(t > now);
                    t
                }
                Decision::Drop => unreachable!("no delay limit"),
            };
            assert!(d >= last);
            last = d;
        }
    }

    /// Packets offered back to back at twice the rate for one second: the delayed ones
    /// (the burst aside) leave at the configured rate within 0.1 %, fitted as bytes over
    /// time between the 10th and the 90th percentile delayed packet.
    #[test]
    fn accuracy_one_second_back_to_back() {
        for &bps in &[
            100_000,
            1_000_000,
            100_000_000,
            1_000_000_000,
            10_000_000_000,
        ] {
            for &len in &[64u32, 1514] {
                let hz = 2_899_871_000; // an awkward TSC frequency
                let rate = Rate::new(bps, hz).unwrap();
                let c = ShaperConfig::new(rate, ShaperConfig::default_burst_bytes(bps), u64::MAX);
                let mut s = Shaper::new(c);
                let t0 = 7 * hz;
                let offered = 2 * bps / 8 / len as u64; // packets per second
                let step = hz / offered;
                let mut delayed = Vec::new();
                let mut now = t0;
                while now < t0 + hz {
                    match s.schedule(now, len) {
                        Decision::Now => {}
                        Decision::At(t) => delayed.push(t),
                        Decision::Drop => unreachable!("no delay limit"),
                    }
                    now += step;
                }
                let (a, b) = (delayed.len() / 10, delayed.len() * 9 / 10);
                let bits = (b - a) as f64 * len as f64 * 8.0;
                let secs = (delayed[b] - delayed[a]) as f64 / hz as f64;
                let ratio = bits / secs / bps as f64;
                assert!(
                    (ratio - 1.0).abs() < 0.001,
                    "{bps} b/s, {len} B: achieved/configured = {ratio:.6}"
                );
            }
        }
    }
}
