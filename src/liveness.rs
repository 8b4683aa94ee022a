//! Whether every worker is still polling, for `/healthz` and systemd's watchdog.
//!
//! A worker busy-polls: its poll count moves millions of times a second, whatever the
//! traffic. One whose count has not moved for [`STALL`] is stuck (a driver that hangs in a
//! burst, a bug), and a gateway with a stuck worker forwards nothing for that worker's
//! queues while the rest of the process still answers.

use std::time::{Duration, Instant};

/// How long a worker's poll count may stand still before the worker counts as stuck: far
/// beyond any scheduling delay a busy-polling thread meets, short enough that a watchdog
/// of a few seconds acts on it.
pub const STALL: Duration = Duration::from_secs(2);

/// Each worker's poll count when last seen to move, and when.
#[derive(Debug)]
pub struct Liveness {
    seen: Vec<(u64, Instant)>,
}

impl Liveness {
    /// `workers` workers, all counted as moving at `now` (they are starting).
    pub fn new(workers: usize, now: Instant) -> Liveness {
        Liveness {
            seen: vec![(0, now); workers],
        }
    }

    /// Takes the workers' poll counts at `now`; returns the first worker that has not
    /// polled for longer than [`STALL`], and for how long.
    pub fn observe(&mut self, polls: &[u64], now: Instant) -> Option<(usize, Duration)> {
        let mut stuck = None;
        for (w, (&count, seen)) in polls.iter().zip(&mut self.seen).enumerate() {
            if count != seen.0 {
                *seen = (count, now);
            }
            let still = now.saturating_duration_since(seen.1);
            if still > STALL && stuck.is_none() {
                stuck = Some((w, still));
            }
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_stuck_once_its_count_stands_still_beyond_the_limit() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Liveness::new(2, t0);
        // Starting: nothing counted yet, within the limit.
        assert_eq!(l.observe(&[0, 0], at(1_500)), None);
        assert_eq!(l.observe(&[10, 0], at(1_900)), None);
        // Worker 1 never moved: stuck 2.1 s after the start.
        assert_eq!(l.observe(&[20, 0], at(2_100)), Some((1, at(2_100) - t0)));
        assert_eq!(l.observe(&[30, 5], at(2_200)), None, "it moved");
        // Worker 0 stops at 30 (seen at 2.2 s); worker 1 keeps going.
        assert_eq!(l.observe(&[30, 6], at(4_000)), None);
        assert_eq!(
            l.observe(&[30, 7], at(4_300)),
            Some((0, at(4_300) - at(2_200)))
        );
        // A long gap between looks is no stall when the count moved meanwhile.
        assert_eq!(l.observe(&[31, 8], at(60_000)), None);
    }
}
