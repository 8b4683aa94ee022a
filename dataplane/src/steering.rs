//! Handing every frame to the worker that owns its inside host, for `run` with several
//! workers.
//!
//! `throttle_per: host` shapers are per worker, so every flow of an inside host must meet
//! on one worker ([`worker_for`] names it) for the host to be held to its rate. replay and
//! bench split their input that way; a live device does not: net_tap (and a NIC's RSS)
//! spreads flows over queues by a hash of the whole 5-tuple, so one host's flows reach
//! several workers, each of which gave the host its full rate.
//!
//! An RX callback on each worker's queues (run inside the RX burst, so the worker's own
//! loop is untouched) hands the frames of other workers' hosts, unprocessed, to their
//! owner's inbox for the side they came in on. The owner's callback gives its burst what
//! waits in its inbox first: while the inbox holds anything, the owner's own frames join
//! its tail, so that no frame overtakes an earlier one of its flow that a worker has
//! received, whichever queue each came in on (net_tap moves a flow to the queue its
//! replies leave on; a frame still in the old queue's ring at the move can be overtaken). A frame that finds
//! an inbox full is dropped and counted, as `qosgw_port_dropped_packets_total` with
//! `reason="handoff_full"`: the worker it is for is overloaded. Frames are counted
//! (received) by the worker that processes them.

use std::ffi::c_void;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::counters::WorkerCounters;
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
    /// Counts frames dropped for a full inbox.
    counters: Arc<WorkerCounters>,
}

/// Makes worker `me`'s RX queue `rx` (on `side`) steer through `inboxes`, counting into
/// `counters`. The callback's state lives as long as the process (a gateway runs once per
/// process).
pub(crate) fn install(
    rx: &RxQueue,
    me: usize,
    side: Side,
    inboxes: &Inboxes,
    counters: &Arc<WorkerCounters>,
) -> Result<(), DpdkError> {
    // The callback must not panic (it runs inside C): every index it takes is checked here.
    assert!(me < inboxes.len(), "worker {me} has no inbox");
    let hook = Box::leak(Box::new(Hook {
        me,
        side,
        inboxes: inboxes.clone(),
        counters: counters.clone(),
    }));
    // SAFETY: `steer` matches rte_rx_callback_fn, and `hook` is valid for the rest of the
    // process; the queue is not polled yet (the workers start later).
    unsafe { rx.add_callback(Some(steer), (hook as *mut Hook).cast::<c_void>()) }
}

/// Frees what the inboxes still hold once every worker has stopped, counting it into
/// `counters` (the receiving side's count: which worker received a frame is not kept).
pub(crate) fn drain(inboxes: &Inboxes, counters: &WorkerCounters) {
    for inbox in inboxes.iter() {
        for (side, queue) in inbox.iter().enumerate() {
            let mut n = 0;
            while queue.pop().is_some() {
                n += 1;
            }
            counters.handed_dropped[side].add(n);
        }
    }
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
    let (side, workers) = (hook.side.index(), hook.inboxes.len());
    let mine = &hook.inboxes[hook.me][side];
    let (mut dropped, mut handed) = (0, 0);
    let mut hand = |inbox: &ArrayQueue<Mbuf>, m: Mbuf| {
        if inbox.push(m).is_err() {
            dropped += 1;
        }
    };
    // Own frames stay in place (compacted, in order); the others go to their owners.
    let mut kept = 0;
    for i in 0..usize::from(nb) {
        // SAFETY: pkts[..nb] are received packets, each now owned here.
        let Some(m) = (unsafe { Mbuf::from_raw(pkts.add(i).read()) }) else {
            continue;
        };
        let owner = worker_for(m.data(), hook.side.is_inbound(), workers);
        if owner == hook.me {
            // kept <= i: the slot was read already.
            put(kept, m);
            kept += 1;
        } else {
            hand(&hook.inboxes[owner][side], m);
            handed += 1;
        }
    }
    if !mine.is_empty() {
        // What waits in the inbox goes first, own frames behind it.
        for i in 0..kept {
            // SAFETY: pkts[..kept] hold the own frames just put there.
            if let Some(m) = unsafe { Mbuf::from_raw(pkts.add(i).read()) } {
                hand(mine, m);
            }
        }
        kept = 0;
        while kept < usize::from(max) {
            let Some(m) = mine.pop() else { break };
            put(kept, m);
            kept += 1;
        }
    }
    if handed > 0 {
        hook.counters.handed.add(handed);
    }
    if dropped > 0 {
        hook.counters.handed_dropped[side].add(dropped);
    }
    kept as u16
}
