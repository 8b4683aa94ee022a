//! Handing every frame to the worker that owns its inside host, for `run` with several
//! workers.
//!
//! `throttle_per: host` shapers are per worker, so every flow of an inside host must meet
//! on one worker ([`distribute::worker_for`] names it) for the host to be held to its
//! rate. replay and bench split their input that way; a live device does not: net_tap
//! (and a NIC's RSS) spreads flows over queues by a hash of the whole 5-tuple, so one
//! host's flows reach several workers, each of which gave the host its full rate.
//!
//! An RX callback on each worker's queues (run inside the RX burst, so the worker's own
//! loop is untouched) hands the frames of other workers' hosts, unprocessed, to their
//! owner's inbox for the side they came in on, and fills the burst up with what other
//! workers handed to this one. Each flow comes in on one queue, so it stays in order.
//! When an inbox is full, the frame stays with the worker that received it (it is
//! processed in full; only its host's rate may then be exceeded). Frames are counted by
//! the worker that processes them, so the port totals (sums over workers) are unchanged.

use std::ffi::c_void;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::distribute::worker_for;
use crate::dpdk::{DpdkError, Mbuf, RxQueue};
use crate::pipeline::Side;

/// Frames an inbox holds per side.
const INBOX: usize = 1024;

/// Every worker's inboxes, one per side the frames came in on.
pub type Inboxes = Arc<[[ArrayQueue<Mbuf>; 2]]>;

/// The inboxes of `workers` workers.
pub fn inboxes(workers: usize) -> Inboxes {
    (0..workers)
        .map(|_| [ArrayQueue::new(INBOX), ArrayQueue::new(INBOX)])
        .collect()
}

/// What the callback of one RX queue needs.
struct Hook {
    /// The worker that polls the queue.
    me: usize,
    side: Side,
    inboxes: Inboxes,
}

/// Makes worker `me`'s RX queue `rx` (on `side`) steer through `inboxes`. The callback's
/// state lives as long as the process (a gateway runs once per process).
pub fn install(rx: &RxQueue, me: usize, side: Side, inboxes: &Inboxes) -> Result<(), DpdkError> {
    let hook = Box::leak(Box::new(Hook {
        me,
        side,
        inboxes: inboxes.clone(),
    }));
    // SAFETY: `steer` matches rte_rx_callback_fn, and `hook` is valid for the rest of the
    // process; the queue is not polled yet (the workers start later).
    unsafe { rx.add_callback(Some(steer), (hook as *mut Hook).cast::<c_void>()) }
}

/// The RX callback: `pkts[..nb]` came in, there is room for `max`.
///
/// # Safety
/// DPDK calls it from the queue's RX burst with `param` a [`Hook`] and `pkts` room for
/// `max` mbuf pointers, the first `nb` of them received packets owned by the caller.
unsafe extern "C" fn steer(
    _port: u16,
    _queue: u16,
    pkts: *mut *mut dpdk_sys::rte_mbuf,
    nb: u16,
    max: u16,
    param: *mut c_void,
) -> u16 {
    // SAFETY: as the function's contract says.
    let hook = unsafe { &*param.cast::<Hook>() };
    // Slots past `nb` are not initialised: they are only written, through the pointer.
    let put = |at: usize, m: Mbuf| {
        // SAFETY: at < max, room the caller provides.
        unsafe { pkts.add(at).write(m.into_raw()) }
    };
    let workers = hook.inboxes.len();
    let mut kept = 0;
    for i in 0..usize::from(nb) {
        // SAFETY: pkts[..nb] are received packets, each now owned here.
        let m = unsafe { Mbuf::from_raw(pkts.add(i).read()) };
        let owner = worker_for(m.data(), hook.side.is_inbound(), workers);
        let m = if owner == hook.me {
            m
        } else {
            match hook.inboxes[owner][hook.side.index()].push(m) {
                Ok(()) => continue,
                Err(m) => m,
            }
        };
        // kept <= i: the slot was read already.
        put(kept, m);
        kept += 1;
    }
    let inbox = &hook.inboxes[hook.me][hook.side.index()];
    while kept < usize::from(max) {
        let Some(m) = inbox.pop() else { break };
        put(kept, m);
        kept += 1;
    }
    kept as u16
}
