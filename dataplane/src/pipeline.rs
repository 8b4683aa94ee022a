//! What a worker does to one frame, as a plain function over its bytes: no DPDK here, so
//! every step is unit-tested with byte vectors.

use std::sync::Arc;

use crate::counters::WorkerCounters;

/// The port a frame arrived on. A bump in the wire sends it out of the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Inside = 0,
    Outside = 1,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Inside, Side::Outside];

    /// The port the frame leaves on.
    #[inline]
    pub fn other(self) -> Side {
        match self {
            Side::Inside => Side::Outside,
            Side::Outside => Side::Inside,
        }
    }

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// inside→outside traffic is outbound (SPEC §2 `direction`).
    #[inline]
    pub fn is_inbound(self) -> bool {
        self == Side::Outside
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Inside => "inside",
            Side::Outside => "outside",
        }
    }
}

/// What happens to a frame after processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it out of the other port now.
    Forward,
    /// Free it (already counted).
    Drop,
}

/// One worker's packet-processing state.
#[derive(Debug)]
pub struct Pipeline {
    counters: Arc<WorkerCounters>,
}

impl Pipeline {
    pub fn new(counters: Arc<WorkerCounters>) -> Self {
        Pipeline { counters }
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// Processes one frame received on `side`. `frame` holds at least every header (the
    /// first segment); `frame_len` is the whole frame's length.
    #[inline]
    pub fn process(&mut self, frame: &mut [u8], frame_len: u32, side: Side) -> Verdict {
        let _ = (frame, frame_len, side);
        Verdict::Forward
    }
}
