//! Sets up the two ports and the workers on an initialised EAL, runs them to the end, and
//! tears down in the order DPDK needs (queues, then ports, then the mempool).

use std::sync::Arc;

use crate::counters::WorkerCounters;
use crate::dpdk::{
    rx_buffer_for, DpdkError, DriverSignalsBlocked, Eal, Mempool, Port, PortStats, MAX_FRAME_LEN,
    VLAN_TAGS_LEN,
};
use crate::pipeline::{Pipeline, PipelineConfig, Side};
use crate::policy_set::Publisher;
use crate::steering;
use crate::worker::{StopWhen, Worker, WorkerQueues, BURST};

/// Which devices to use and how many workers.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// DPDK device names of the inside and outside ports.
    pub ports: [String; 2],
    pub workers: usize,
    /// Mbufs in the packet pool (shared by all ports and workers).
    pub mbufs: u32,
    /// Bytes of packet data per mbuf. [`GatewayConfig::JUMBO_DATA_ROOM`] keeps every frame
    /// up to MAX_FRAME_LEN in one segment; a smaller room saves memory where frames are
    /// known to be small (benchmarks).
    pub data_room: u16,
    pub pipeline: PipelineConfig,
    /// Never lose input to a dry mempool: workers stop receiving while their shapers hold
    /// their share of the pool (replay). Off for a live gateway.
    pub lossless: bool,
    /// Forward without processing: the baseline loop of `qosgw bench --passthrough`.
    pub passthrough: bool,
    /// Hand each frame to the worker that owns its inside host ([`crate::steering`]), for
    /// devices that spread flows over queues by a hash of their own (`run`). Replay and
    /// bench split their input by owner already.
    pub steer: bool,
}

impl GatewayConfig {
    /// Room for a jumbo frame with two VLAN tags beyond it (a NIC's MTU does not count
    /// them), as NICs size receive buffers ([`rx_buffer_for`]), plus DPDK's default
    /// headroom.
    pub const JUMBO_DATA_ROOM: u16 = rx_buffer_for(MAX_FRAME_LEN + VLAN_TAGS_LEN) as u16 + 128;
}

/// What a finished run leaves behind for reporting.
#[derive(Debug)]
pub struct RunReport {
    pub workers: Vec<Arc<WorkerCounters>>,
    /// Port statistics read just before the ports were closed, indexed by [`Side`].
    pub ports: [PortStats; 2],
}

pub struct Gateway<'e> {
    eal: &'e Eal,
    ports: [Arc<Port>; 2],
    workers: Vec<Worker>,
    counters: Vec<Arc<WorkerCounters>>,
    /// With steering: every worker's inboxes, emptied (and counted) after the stop.
    inboxes: Option<steering::Inboxes>,
}

impl<'e> Gateway<'e> {
    /// Opens both ports with one RX/TX queue pair per worker and builds the workers.
    pub fn new(
        eal: &'e Eal,
        cfg: &GatewayConfig,
        policies: &Arc<Publisher>,
    ) -> Result<Gateway<'e>, DpdkError> {
        if cfg.workers == 0 {
            return Err(DpdkError::new("workers", "at least one worker is needed"));
        }
        let lcores = eal.worker_lcores().len() + 1;
        if cfg.workers > lcores {
            return Err(DpdkError::new(
                "workers",
                format!(
                    "{} workers need {} lcores, the EAL has {lcores} (-l)",
                    cfg.workers, cfg.workers
                ),
            ));
        }
        let queues =
            u16::try_from(cfg.workers).map_err(|_| DpdkError::new("workers", "too many"))?;
        // Mbufs no larger than the largest frame either port can receive (a tap takes 1514
        // bytes: a jumbo-sized mbuf would only spread its packets over more memory), and
        // never smaller than DPDK's default.
        let mut largest = 0;
        for name in &cfg.ports {
            largest = largest.max(Port::largest_frame(eal, name)?);
        }
        let needed = (rx_buffer_for(largest) + 128).max(2048 + 128);
        let data_room = cfg.data_room.min(u16::try_from(needed).unwrap_or(u16::MAX));
        let pool =
            Mempool::new(eal, "qosgw_pkts", cfg.mbufs, 256, data_room).map_err(|mut e| {
                // Mbuf header and the mempool's own: 256 bytes beside the data room.
                let mb = (cfg.mbufs as usize * (usize::from(data_room) + 256)) >> 20;
                e.detail += &format!(
                    " (the pool needs about {mb} MB: give the EAL at least {} MB with -m)",
                    mb + 256
                );
                e
            })?;
        let pool = Arc::new(pool);
        let inside = Port::open(eal, &cfg.ports[Side::Inside.index()], queues, pool.clone())?;
        let outside = Port::open(eal, &cfg.ports[Side::Outside.index()], queues, pool)?;

        // A worker's share of the pool, less what RX/TX rings, bursts and the per-lcore
        // mempool caches may hold at once.
        let share = cfg.mbufs as usize / cfg.workers;
        let hold_limit = share.saturating_sub(2048).max(BURST);
        // Live, the RX rings stay full and the TX rings and the inboxes from the other
        // workers may be too (1 024 each, per port), besides bursts and caches.
        let park_limit = share.saturating_sub(6 * 1024 + 512).max(BURST);
        let mut workers = Vec::with_capacity(cfg.workers);
        let mut counters = Vec::with_capacity(cfg.workers);
        let queues = inside
            .rx
            .into_iter()
            .zip(inside.tx)
            .zip(outside.rx.into_iter().zip(outside.tx));
        let inboxes = (cfg.steer && cfg.workers > 1).then(|| steering::inboxes(cfg.workers));
        for (id, ((rx_i, tx_i), (rx_o, tx_o))) in queues.enumerate() {
            let c = Arc::new(WorkerCounters::default());
            if let Some(inboxes) = &inboxes {
                steering::install(&rx_i, id, Side::Inside, inboxes, &c)?;
                steering::install(&rx_o, id, Side::Outside, inboxes, &c)?;
            }
            let q = WorkerQueues {
                rx: [rx_i, rx_o],
                tx: [tx_i, tx_o],
            };
            let pipeline = Pipeline::new(
                id,
                cfg.pipeline,
                policies.subscribe(),
                c.clone(),
                eal.tsc_hz(),
            );
            let mut worker = Worker::new(q, pipeline, eal.tsc_hz());
            if cfg.lossless {
                worker.hold_limit(hold_limit);
            } else {
                worker.park_limit(park_limit);
            }
            if cfg.passthrough {
                worker.passthrough();
            }
            workers.push(worker);
            counters.push(c);
        }
        Ok(Gateway {
            eal,
            ports: [inside.port, outside.port],
            workers,
            counters,
            inboxes,
        })
    }

    /// The workers' counters, for a control thread to read while the gateway runs.
    pub fn counters(&self) -> &[Arc<WorkerCounters>] {
        &self.counters
    }

    /// The ports, for a control thread to read their statistics.
    pub fn ports(&self) -> &[Arc<Port>; 2] {
        &self.ports
    }

    /// Runs worker 0 on the calling (main) lcore and the others on the EAL's worker
    /// lcores, each until its `stops` entry says so and leaving the drivers' signals to
    /// the other threads ([`DriverSignalsBlocked`]); then closes the ports (which flushes
    /// net_pcap files).
    pub fn run(self, mut stops: Vec<StopWhen>) -> Result<RunReport, DpdkError> {
        let Gateway {
            eal,
            ports,
            mut workers,
            counters,
            inboxes,
        } = self;
        assert_eq!(stops.len(), workers.len(), "one stop condition per worker");
        let lcores = eal.worker_lcores();
        let mut first = workers.remove(0);
        let first_stop = stops.remove(0);
        let mut launched = Vec::new();
        for ((mut w, stop), lcore) in workers.into_iter().zip(stops).zip(&lcores) {
            let work = move || {
                let _signals = DriverSignalsBlocked::new();
                w.run(&stop);
            };
            if let Err(e) = eal.launch(*lcore, work) {
                first_stop.raise();
                launched.iter().for_each(|&l| eal.wait(l));
                if let Some(inboxes) = &inboxes {
                    steering::drain(inboxes, &counters[0]);
                }
                return Err(e);
            }
            launched.push(*lcore);
        }
        {
            let _signals = DriverSignalsBlocked::new();
            first.run(&first_stop);
        }
        drop(first);
        for lcore in launched {
            eal.wait(lcore);
        }
        // Frames handed between workers and not yet taken: freed while their pool lives.
        if let Some(inboxes) = &inboxes {
            steering::drain(inboxes, &counters[0]);
        }
        let stats = [ports[0].stats(), ports[1].stats()];
        // The workers (and their queue handles) are gone: unless a control thread still
        // holds the ports (for their statistics), these are the last references, and the
        // ports stop and close here.
        drop(ports);
        Ok(RunReport {
            workers: counters,
            ports: stats,
        })
    }
}
