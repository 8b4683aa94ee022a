//! The poll loop of one worker core: receive a burst from each port, process every frame,
//! buffer it for the other port, release the shaped packets whose time has come, and flush
//! the TX buffers (when full, and at the end of every iteration that moved packets).
//! Everything per packet is in [`Pipeline::process`]; this file only moves mbufs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::counters::WorkerCounters;
use crate::dpdk::{tsc, Mbuf, RxQueue, TxQueue};
use crate::pipeline::{Pipeline, Side, Verdict};
use crate::shaper::TimingWheel;

/// Frames taken from a queue at a time, and the TX buffer size.
pub const BURST: usize = 32;
const _: () = assert!(
    BURST <= Pipeline::MAX_STAGED,
    "a burst must fit the pipeline's stages"
);

/// One worker's queues: RX and TX on the inside and outside ports, indexed by [`Side`].
#[derive(Debug)]
pub struct WorkerQueues {
    pub rx: [RxQueue; 2],
    pub tx: [TxQueue; 2],
}

/// When the loop ends.
#[derive(Debug, Clone)]
pub enum StopWhen {
    /// When the flag is raised (SIGINT/SIGTERM for `run`).
    Flag(Arc<AtomicBool>),
    /// When this many frames have been received in all (replay: the input's frame count),
    /// or when the flag is raised.
    Received { frames: u64, flag: Arc<AtomicBool> },
}

impl StopWhen {
    /// Ends every loop watching this condition's flag.
    pub fn raise(&self) {
        match self {
            StopWhen::Flag(flag) | StopWhen::Received { flag, .. } => {
                flag.store(true, Ordering::Relaxed)
            }
        }
    }
}

/// Width of a timing-wheel slot: pacing is exact to this (a few µs, DESIGN.md step 4).
const WHEEL_SLOT_NS: u64 = 2_000;

pub struct Worker {
    queues: WorkerQueues,
    pipeline: Pipeline,
    counters: Arc<WorkerCounters>,
    burst: Vec<Mbuf>,
    /// What the pipeline decided for each frame of `burst`.
    verdicts: [Verdict; BURST],
    tx_buf: [Vec<Mbuf>; 2],
    /// Shaped packets waiting for their departure, in one timing wheel per port they
    /// leave on: a wheel's entry is then the mbuf and its slot, 16 bytes (24 with the port
    /// in it). With a million packets parked, a third less memory to move saves a tenth of
    /// the time or more (docs/BENCHMARKS.md, issue 5, session 4).
    wheels: [TimingWheel<Mbuf>; 2],
    backlog_bytes: u64,
    /// Stop receiving while the wheels hold this many packets (see [`Worker::hold_limit`]).
    hold_limit: usize,
    /// Park at most this many packets; drop what shapers would delay beyond it (see
    /// [`Worker::park_limit`]).
    park_limit: usize,
    /// Forward without processing (the baseline of `qosgw bench --passthrough`).
    passthrough: bool,
    /// `counters.handed` when a poll last found it moved.
    handed_seen: u64,
}

impl Worker {
    pub fn new(queues: WorkerQueues, pipeline: Pipeline, tsc_hz: u64) -> Worker {
        let burst = Vec::with_capacity(BURST);
        // rx_burst fills the spare capacity: one verdict per frame it can bring.
        assert!(
            burst.capacity() <= BURST,
            "the RX burst outgrew its verdicts"
        );
        Worker {
            queues,
            counters: pipeline.counters().clone(),
            pipeline,
            burst,
            verdicts: [Verdict::Forward; BURST],
            tx_buf: [Vec::with_capacity(BURST), Vec::with_capacity(BURST)],
            wheels: std::array::from_fn(|_| {
                TimingWheel::new(
                    TimingWheel::<Mbuf>::slot_shift_for(tsc_hz, WHEEL_SLOT_NS),
                    4096,
                )
            }),
            backlog_bytes: 0,
            hold_limit: usize::MAX,
            park_limit: usize::MAX,
            passthrough: false,
            handed_seen: 0,
        }
    }

    /// Makes the worker stop polling RX while its shapers hold `limit` packets, until they
    /// drain. For replay, where the whole input is at hand and nothing may be lost: the
    /// mempool would otherwise run dry and net_pcap drop input records. A live gateway
    /// keeps receiving (unthrottled traffic must never wait) and bounds its backlog with
    /// `max_delay` instead.
    pub fn hold_limit(&mut self, limit: usize) {
        self.hold_limit = limit;
    }

    /// Makes the worker's shapers park at most `limit` packets: past it, a packet a shaper
    /// would delay is dropped and counted as its policy's shaper drop, as one past
    /// `max_delay` is. For a live gateway, whose shapers would otherwise take every buffer
    /// of the pool under a sustained overload (`max_delay` bounds a backlog in time, not in
    /// packets) and leave none to receive unthrottled traffic into.
    pub fn park_limit(&mut self, limit: usize) {
        self.park_limit = limit;
    }

    /// Makes the worker forward every frame untouched, without parsing or classifying: the
    /// pass-through loop that `qosgw bench --passthrough` measures the pipeline against.
    pub fn passthrough(&mut self) {
        self.passthrough = true;
    }

    /// Polls until `stop` says so, then flushes what it holds. Packets still held by the
    /// shapers are sent at their departure times when the stop is [`StopWhen::Received`]
    /// (replay: the loop goes on until the wheels are empty), and freed and counted when it
    /// is the flag (`run` stopping on a signal).
    pub fn run(&mut self, stop: &StopWhen) {
        let mut received = 0u64;
        loop {
            let now = tsc();
            self.pipeline.housekeeping(now);
            // Due packets first: a flow's next packet may be due now too, and if it were
            // received first it would leave at once, ahead of its flow's parked packets.
            let released = self.release_due(now);
            let mut got = 0;
            if self.parked() < self.hold_limit {
                for side in Side::BOTH {
                    got += self.poll(side, now);
                }
            }
            received += got as u64;
            if got + released > 0 {
                // Whatever this iteration moved leaves now: a partly filled buffer waiting
                // for more would add its wait to every TCP round trip (and shaped packets
                // must leave at their departure time). At full load bursts are full anyway.
                self.flush_all();
            }
            self.counters.polls.inc();
            if got > 0 {
                self.counters.busy_polls.inc();
                self.handed_seen = self.counters.handed.get();
            } else {
                self.count_handing_poll();
            }
            let done = match stop {
                StopWhen::Flag(flag) => flag.load(Ordering::Relaxed),
                StopWhen::Received { frames, flag } => {
                    (received >= *frames && self.parked() == 0) || flag.load(Ordering::Relaxed)
                }
            };
            if done {
                break;
            }
        }
        self.flush_all();
        let counters = &self.counters;
        let dropped: usize = self.wheels.iter_mut().map(|w| w.drain_all(drop)).sum();
        counters.shaper_stop_dropped.add(dropped as u64);
        self.backlog_bytes = 0;
        counters.shaper_backlog_packets.set(0);
        counters.shaper_backlog_bytes.set(0);
    }

    /// A poll that received nothing for this worker was busy all the same if it handed
    /// frames on to other workers (steering). Out of line: at load every poll gets frames.
    #[cold]
    #[inline(never)]
    fn count_handing_poll(&mut self) {
        let handed = self.counters.handed.get();
        if handed != self.handed_seen {
            self.counters.busy_polls.inc();
            self.handed_seen = handed;
        }
    }

    /// Moves the shaped packets whose departure has come to the TX buffers; returns how
    /// many.
    #[inline]
    fn release_due(&mut self, now: u64) -> usize {
        if self.parked() == 0 {
            return 0;
        }
        let (tx_buf, queues, counters) = (&mut self.tx_buf, &mut self.queues, &*self.counters);
        let mut bytes = 0u64;
        let mut n = 0;
        for (out, wheel) in self.wheels.iter_mut().enumerate() {
            n += wheel.pop_due(now, |m| {
                bytes += u64::from(m.pkt_len());
                buffer(&mut queues.tx[out], &mut tx_buf[out], m, counters, out);
            });
        }
        self.backlog_bytes -= bytes;
        counters.shaper_backlog_packets.set(self.parked() as u64);
        counters.shaper_backlog_bytes.set(self.backlog_bytes);
        n
    }

    /// Receives one burst on `side` and processes it; returns how many frames came.
    #[inline]
    fn poll(&mut self, side: Side, now: u64) -> usize {
        let n = self.queues.rx[side.index()].rx_burst(&mut self.burst);
        if n == 0 {
            return 0;
        }
        let counters = &*self.counters;
        let out = side.other().index();
        counters.rx_packets[side.index()].add(n as u64);
        if !self.passthrough {
            // Parse and hash the whole burst, then prefetch its flow-cache slots, so that
            // the packets' cache misses overlap. Frames bigger than a segment (beyond a
            // jumbo frame with two VLAN tags) are not parsed: counted as oversized, handled
            // as malformed.
            let frames = self
                .burst
                .iter()
                .map(|m| m.is_contiguous().then(|| m.data()));
            self.pipeline.stage(frames, side);
            self.pipeline.prefetch_staged();
            let room = self.park_limit.saturating_sub(self.parked());
            self.pipeline.set_park_room(room);
        }
        // Summed apart from the processing, whose loop has no register to spare.
        let bytes = bytes_of(&self.burst);
        let all_forward = if self.passthrough {
            self.verdicts.fill(Verdict::Forward);
            true
        } else {
            let frames = self.burst.iter_mut().map(Mbuf::data_mut);
            self.pipeline
                .process_staged(frames, &mut self.verdicts, now)
        };
        if all_forward && self.tx_buf[out].is_empty() {
            // The usual case: the whole burst leaves as it came, in one TX burst.
            send(
                &mut self.queues.tx[out],
                &mut self.burst,
                bytes,
                counters,
                out,
            );
        } else {
            for (m, &verdict) in self.burst.drain(..).zip(&self.verdicts) {
                match verdict {
                    Verdict::Forward => buffer(
                        &mut self.queues.tx[out],
                        &mut self.tx_buf[out],
                        m,
                        counters,
                        out,
                    ),
                    Verdict::At(departure) => {
                        self.backlog_bytes += u64::from(m.pkt_len());
                        self.wheels[out].insert(m, departure);
                    }
                    Verdict::Drop => drop(m),
                }
            }
        }
        counters.rx_bytes[side.index()].add(bytes);
        self.pipeline.clear_staged();
        n
    }

    /// Packets the shapers hold.
    fn parked(&self) -> usize {
        self.wheels.iter().map(TimingWheel::len).sum()
    }

    fn flush_all(&mut self) {
        for side in 0..2 {
            flush(
                &mut self.queues.tx[side],
                &mut self.tx_buf[side],
                &self.counters,
                side,
            );
        }
    }
}

/// Adds `m` to the TX buffer of `side`, sending the buffer once it holds a burst.
#[inline]
fn buffer(tx: &mut TxQueue, buf: &mut Vec<Mbuf>, m: Mbuf, counters: &WorkerCounters, side: usize) {
    buf.push(m);
    if buf.len() == BURST {
        flush(tx, buf, counters, side);
    }
}

/// Sends a TX buffer; what the queue refuses is freed and counted as `tx_full`.
#[inline]
fn flush(tx: &mut TxQueue, buf: &mut Vec<Mbuf>, counters: &WorkerCounters, side: usize) {
    if buf.is_empty() {
        return;
    }
    send(tx, buf, bytes_of(buf), counters, side);
}

/// Sends `buf`, which holds `bytes` bytes, emptying it; what the queue refuses is freed
/// and counted as `tx_full`.
#[inline]
fn send(tx: &mut TxQueue, buf: &mut Vec<Mbuf>, bytes: u64, counters: &WorkerCounters, side: usize) {
    let sent = tx.tx_burst(buf);
    counters.tx_packets[side].add(sent as u64);
    counters.tx_bytes[side].add(bytes - bytes_of(buf));
    counters.tx_full[side].add(buf.len() as u64);
    buf.clear();
}

/// The bytes of `mbufs`, every segment counted.
#[inline]
fn bytes_of(mbufs: &[Mbuf]) -> u64 {
    mbufs.iter().map(|m| u64::from(m.pkt_len())).sum()
}
