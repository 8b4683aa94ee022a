//! Ethernet ports: configuration, queues, bursts and statistics.

use std::ffi::CString;
use std::sync::Arc;

use super::{DpdkError, Eal, Mbuf, Mempool};

/// The largest frame qosgw forwards (jumbo), Ethernet header included, FCS excluded.
pub const MAX_FRAME_LEN: u32 = 9216;

// Function-like macros (RTE_BIT64) that bindgen cannot evaluate; values from rte_ethdev.h.
const RX_OFFLOAD_SCATTER: u64 = 1 << 13;
const TX_OFFLOAD_MULTI_SEGS: u64 = 1 << 15;
/// RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP | RTE_ETH_RSS_SCTP: bits 2 to 13
/// (IPv4 and IPv6, fragments, TCP, UDP, SCTP, other) and 15 to 17 (IPv6 with extension
/// headers), hashed on the addresses and, where there are ports, the ports.
const RSS_IP_TCP_UDP_SCTP: u64 = 0x3_bffc;
const ETHER_HDR_LEN: u32 = 14;
const ETHER_CRC_LEN: u32 = 4;
/// Two VLAN tags (QinQ): NICs receive them beyond the MTU.
pub const VLAN_TAGS_LEN: u32 = 8;

/// The data room (headroom excluded) an mbuf needs for a NIC to receive `frame`-byte
/// frames whole: with the CRC some NICs count, rounded up to 1 KiB, since NICs round
/// their receive buffer down to their unit (1 KiB for ixgbe, 128 bytes for i40e and ice).
pub const fn rx_buffer_for(frame: u32) -> u32 {
    (frame + ETHER_CRC_LEN).next_multiple_of(1024)
}

/// A started Ethernet port. Dropping it stops and closes the device, which is what makes
/// net_pcap write its `tx_pcap` file; so a `Port` must outlive every queue handle
/// ([`RxQueue`], [`TxQueue`] hold an `Arc` to it).
#[derive(Debug)]
pub struct Port {
    id: u16,
    name: String,
    // Keeps the pool alive until the device that fills its RX rings from it is closed.
    _pool: Arc<Mempool>,
}

/// A port just opened, with one handle per queue to hand to the workers.
#[derive(Debug)]
pub struct OpenedPort {
    pub port: Arc<Port>,
    pub rx: Vec<RxQueue>,
    pub tx: Vec<TxQueue>,
}

/// Port counters as DPDK keeps them (`rte_eth_stats_get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_no_mbuf: u64,
    /// Frames received on each RX queue (the first 16, where the driver counts them).
    pub rx_queue_packets: [u64; 16],
}

/// A port's link as its driver reports it (`rte_eth_link_get_nowait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    /// Mb/s; 0 when the driver does not know (or the link is down).
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

impl std::fmt::Display for Link {
    /// `down`, or `up`, `up at 10 Gb/s` or `up at 100 Mb/s half duplex`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.up {
            return f.write_str("down");
        }
        f.write_str("up")?;
        match self.speed_mbps {
            0 => return Ok(()),
            s if s % 1000 == 0 => write!(f, " at {} Gb/s", s / 1000)?,
            s if s >= 1000 => write!(f, " at {} Gb/s", f64::from(s) / 1000.0)?,
            s => write!(f, " at {s} Mb/s")?,
        }
        if !self.full_duplex {
            f.write_str(" half duplex")?;
        }
        Ok(())
    }
}

/// The receive side of one queue of a port. There is one handle per queue, and it is not
/// `Clone`: DPDK queues are single-consumer, so each belongs to one worker.
#[derive(Debug)]
pub struct RxQueue {
    port: Arc<Port>,
    queue: u16,
}

/// The transmit side of one queue of a port; single-producer, like [`RxQueue`].
#[derive(Debug)]
pub struct TxQueue {
    port: Arc<Port>,
    queue: u16,
}

impl Port {
    /// Finds the DPDK device called `name` (e.g. `net_pcap0`, `net_tap1`, a PCI address),
    /// configures `queues` RX and TX queue pairs fed from `pool`, and starts it.
    pub fn open(
        _eal: &Eal,
        name: &str,
        queues: u16,
        pool: Arc<Mempool>,
    ) -> Result<OpenedPort, DpdkError> {
        let id = port_id(name)?;
        let ctx = |what: &str| format!("port {name}: {what}");
        let info = device_info(id, name)?;
        if queues > info.max_rx_queues || queues > info.max_tx_queues {
            return Err(DpdkError::new(
                ctx("configuring queues"),
                format!(
                    "{queues} queue pairs asked, the device has {} RX and {} TX \
                     (for net_pcap give one rx_pcap/tx_pcap pair per queue)",
                    info.max_rx_queues, info.max_tx_queues
                ),
            ));
        }

        let mut conf = dpdk_sys::rte_eth_conf::default();
        // Jumbo frames pass through untouched: the MTU is as large as the device allows.
        conf.rxmode.mtu = configured_mtu(&info);
        // Chained mbufs only where a frame can outgrow one: scatter makes some drivers
        // (net_tap) read every packet into a chain, which cost a third of TCP throughput
        // through taps. The gateway's pools hold a jumbo frame per mbuf.
        if pool.data_len() < rx_buffer_for(conf.rxmode.mtu + ETHER_HDR_LEN + VLAN_TAGS_LEN) {
            if info.rx_offload_capa & RX_OFFLOAD_SCATTER != 0 {
                conf.rxmode.offloads |= RX_OFFLOAD_SCATTER;
            }
            if info.tx_offload_capa & TX_OFFLOAD_MULTI_SEGS != 0 {
                conf.txmode.offloads |= TX_OFFLOAD_MULTI_SEGS;
            }
        }
        // Several queues: the device spreads flows over them by hash where it can (a NIC's
        // RSS; net_tap's kernel side spreads by itself, net_pcap has a file per queue).
        // Which worker then handles a frame is the steering's business, not the hash's.
        let rss_hf = rss_hash_fields(queues, info.flow_type_rss_offloads);
        if rss_hf != 0 {
            conf.rxmode.mq_mode = dpdk_sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            // A null key is the driver's default key.
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        }
        // SAFETY: id is valid; conf is a fully initialised rte_eth_conf.
        let ret = unsafe { dpdk_sys::rte_eth_dev_configure(id, queues, queues, &conf) };
        if ret != 0 {
            return Err(DpdkError::from_code(ctx("configuring"), ret));
        }

        // Closing a configured port releases its queues (and the mbufs a driver put in
        // them) while the pool still lives: on every error from here on.
        let closed = |e: DpdkError| {
            // SAFETY: id is configured and not started.
            unsafe { dpdk_sys::rte_eth_dev_close(id) };
            e
        };
        // SAFETY: id is a valid port.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for q in 0..queues {
            // SAFETY: id is configured with `queues` RX queues; NULL rx_conf means the
            // driver's defaults; pool is a live pktmbuf pool that outlives the port.
            let ret = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    id,
                    q,
                    1024,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if ret != 0 {
                let what = ctx(&format!("setting up RX queue {q}"));
                return Err(closed(DpdkError::from_code(what, ret)));
            }
            // SAFETY: as above, for TX queues.
            let ret =
                unsafe { dpdk_sys::rte_eth_tx_queue_setup(id, q, 1024, socket, std::ptr::null()) };
            if ret != 0 {
                let what = ctx(&format!("setting up TX queue {q}"));
                return Err(closed(DpdkError::from_code(what, ret)));
            }
        }
        // SAFETY: id is configured with its queues set up.
        let ret = unsafe { dpdk_sys::rte_eth_dev_start(id) };
        if ret != 0 {
            return Err(closed(DpdkError::from_code(ctx("starting"), ret)));
        }
        // A bump in the wire forwards every frame, whatever its destination MAC. Devices
        // without the notion (net_pcap) refuse, which is fine.
        // SAFETY: id is a started port.
        unsafe { dpdk_sys::rte_eth_promiscuous_enable(id) };

        let port = Arc::new(Port {
            id,
            name: name.to_owned(),
            _pool: pool,
        });
        let rx = (0..queues)
            .map(|queue| RxQueue {
                port: port.clone(),
                queue,
            })
            .collect();
        let tx = (0..queues)
            .map(|queue| TxQueue {
                port: port.clone(),
                queue,
            })
            .collect();
        Ok(OpenedPort { port, rx, tx })
    }

    /// The largest frame (Ethernet header, two VLAN tags, payload) the device `name` will
    /// be configured to receive: a jumbo frame, or less if the device cannot take one. For
    /// sizing mbufs before the port is opened: a frame that outgrows its mbuf arrives as a
    /// chain, which the worker forwards unparsed, and which a port set up without
    /// multi-segment TX (as they are when the pool holds this) may send cut short.
    pub fn largest_frame(_eal: &Eal, name: &str) -> Result<u32, DpdkError> {
        let info = device_info(port_id(name)?, name)?;
        Ok(configured_mtu(&info) + ETHER_HDR_LEN + VLAN_TAGS_LEN)
    }

    /// The DPDK device name the port was opened by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port's counters.
    pub fn stats(&self) -> PortStats {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: self.id is a started port; s is a valid out-pointer. The drivers' per-queue
        // counters are aligned 64-bit words that only their worker writes: read from here,
        // each is a whole value (x86-64), at worst a burst old.
        unsafe { dpdk_sys::rte_eth_stats_get(self.id, &mut s) };
        PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
            rx_queue_packets: s.q_ipackets,
        }
    }

    /// The link's state now, as the driver last saw it (without waiting for it to settle,
    /// so the control thread can ask every tick); None if the driver cannot tell. Call it
    /// from one thread only (the control thread's link watch): DPDK does not promise that
    /// two link updates of one port may run at once.
    pub fn link(&self) -> Option<Link> {
        let mut l = dpdk_sys::rte_eth_link::default();
        // SAFETY: self.id is a started port; l is a valid out-pointer. A link update reads
        // the device's link state (registers, an admin queue, net_tap an ioctl) and writes
        // the port's link word, which the RX/TX bursts of the workers never touch.
        let rc = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.id, &mut l) };
        if rc != 0 {
            return None;
        }
        let up = l.link_status() == 1;
        // RTE_ETH_SPEED_NUM_UNKNOWN is u32::MAX.
        let known = up && l.link_speed != u32::MAX;
        Some(Link {
            up,
            speed_mbps: if known { l.link_speed } else { 0 },
            full_duplex: l.link_duplex() == 1,
        })
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: no queue handle is left (each holds an Arc to us), so no lcore is using
        // the device. Stop, then close: close is what flushes net_pcap's tx_pcap file. A
        // device that fails to stop may still hold mbufs: the pool then stays allocated
        // (Mempool's drop frees it only when every mbuf is back).
        unsafe {
            dpdk_sys::rte_eth_dev_stop(self.id);
            dpdk_sys::rte_eth_dev_close(self.id);
        }
    }
}

impl RxQueue {
    /// Receives up to `out`'s spare capacity of packets, appending them to `out`. Never
    /// allocates: the caller reserves the burst size once.
    #[inline]
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>) -> usize {
        let spare = out.spare_capacity_mut();
        let max = spare.len().min(usize::from(u16::MAX)) as u16;
        // SAFETY: Mbuf is repr(transparent) over a non-null rte_mbuf pointer, so the spare
        // capacity is room for `max` mbuf pointers; the driver writes n <= max of them, each
        // a packet it hands over to us. We own this queue (&mut self, one handle per queue).
        let n = unsafe {
            dpdk_sys::qosgw_rx_burst(
                self.port.id,
                self.queue,
                spare.as_mut_ptr().cast::<*mut dpdk_sys::rte_mbuf>(),
                max,
            )
        };
        // SAFETY: the driver initialised the first n slots with valid mbufs.
        unsafe { out.set_len(out.len() + usize::from(n)) };
        usize::from(n)
    }

    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Registers `callback` to run on every RX burst of this queue, with `param`.
    ///
    /// # Safety
    /// `callback` must be an `rte_rx_callback_fn` that is sound for this queue's packets
    /// with `param`, and `param` must stay valid while the port exists; the queue must
    /// not be polled while this runs.
    pub(crate) unsafe fn add_callback(
        &self,
        callback: dpdk_sys::rte_rx_callback_fn,
        param: *mut std::ffi::c_void,
    ) -> Result<(), DpdkError> {
        // SAFETY: as the caller promises; the port and queue exist (we hold the port).
        let added =
            unsafe { dpdk_sys::rte_eth_add_rx_callback(self.port.id, self.queue, callback, param) };
        if added.is_null() {
            return Err(DpdkError::from_errno(format!(
                "adding an RX callback to {} queue {}",
                self.port.name, self.queue
            )));
        }
        Ok(())
    }
}

impl TxQueue {
    /// Hands the packets at the front of `pkts` to the driver and removes the ones it took
    /// (usually all); the rest stay in `pkts` for the caller to retry or drop.
    #[inline]
    pub fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        let len = pkts.len().min(usize::from(u16::MAX));
        // SAFETY: pkts holds `len` owned mbufs laid out as rte_mbuf pointers (Mbuf is
        // repr(transparent)). The driver takes ownership of the first n it returns; we own
        // this queue (&mut self, one handle per queue).
        let n = unsafe {
            dpdk_sys::qosgw_tx_burst(
                self.port.id,
                self.queue,
                pkts.as_mut_ptr().cast::<*mut dpdk_sys::rte_mbuf>(),
                len as u16,
            )
        };
        let n = usize::from(n);
        // The first n now belong to the driver: forget them without freeing.
        pkts.drain(..n).for_each(|m| {
            m.into_raw();
        });
        n
    }

    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }
}

fn device_info(id: u16, name: &str) -> Result<dpdk_sys::rte_eth_dev_info, DpdkError> {
    // SAFETY: rte_eth_dev_info is plain data; DPDK fills it.
    let mut info: dpdk_sys::rte_eth_dev_info = unsafe { std::mem::zeroed() };
    // SAFETY: id is a valid port; info is a valid out-pointer.
    let ret = unsafe { dpdk_sys::rte_eth_dev_info_get(id, &mut info) };
    if ret != 0 {
        return Err(DpdkError::from_code(
            format!("port {name}: reading device info"),
            ret,
        ));
    }
    Ok(info)
}

/// The RSS hash fields to configure: the IP, TCP, UDP and SCTP types the device can hash
/// (`capa`, its `flow_type_rss_offloads`) when there are queues to spread over, else none.
fn rss_hash_fields(queues: u16, capa: u64) -> u64 {
    if queues > 1 {
        capa & RSS_IP_TCP_UDP_SCTP
    } else {
        0
    }
}

/// The MTU a port is configured with: a jumbo frame's, or the device's largest if smaller.
fn configured_mtu(info: &dpdk_sys::rte_eth_dev_info) -> u32 {
    (MAX_FRAME_LEN - ETHER_HDR_LEN).min(device_max_mtu(info))
}

/// The largest MTU the device can receive. Both of its limits count: `max_mtu`, and the
/// largest frame `max_rx_pktlen` less the overhead ethdev adds to an MTU (net_tap, for one,
/// says `max_mtu` 65535 but receives frames of at most 1522 bytes). The overhead is
/// ethdev's own rule: the difference of the two limits when the driver gives both, else
/// Ethernet header and CRC.
fn device_max_mtu(info: &dpdk_sys::rte_eth_dev_info) -> u32 {
    let max_mtu = u32::from(info.max_mtu);
    let overhead = if info.max_mtu != u16::MAX && info.max_rx_pktlen > max_mtu {
        info.max_rx_pktlen - max_mtu
    } else {
        ETHER_HDR_LEN + ETHER_CRC_LEN
    };
    info.max_rx_pktlen.saturating_sub(overhead).min(max_mtu)
}

fn port_id(name: &str) -> Result<u16, DpdkError> {
    let cname =
        CString::new(name).map_err(|_| DpdkError::new("port name", "contains a NUL byte"))?;
    let mut id = 0u16;
    // SAFETY: cname is a valid C string; id is a valid out-pointer.
    let ret = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
    if ret != 0 {
        return Err(DpdkError::new(
            format!("port {name}"),
            "no such DPDK device (give it to the EAL with --vdev=... or check its PCI address)",
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_reads_as_an_operator_writes_it() {
        let link = |up, speed_mbps, full_duplex| {
            Link {
                up,
                speed_mbps,
                full_duplex,
            }
            .to_string()
        };
        assert_eq!(link(false, 10_000, true), "down");
        assert_eq!(link(true, 0, true), "up");
        assert_eq!(link(true, 10_000, true), "up at 10 Gb/s");
        assert_eq!(link(true, 2_500, true), "up at 2.5 Gb/s");
        assert_eq!(link(true, 100, false), "up at 100 Mb/s half duplex");
    }

    #[test]
    fn rss_is_asked_for_only_with_queues_to_spread_over_and_only_what_the_device_hashes() {
        assert_eq!(rss_hash_fields(1, u64::MAX), 0);
        assert_eq!(rss_hash_fields(2, 0), 0);
        // IPV4, FRAG_IPV4, NONFRAG_IPV4_{TCP,UDP,SCTP,OTHER}, the same six for IPv6, and
        // IPV6_EX, IPV6_TCP_EX, IPV6_UDP_EX (rte_ethdev.h's RTE_BIT64 numbers).
        let named = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17];
        let all = named.iter().fold(0u64, |m, b| m | 1 << b);
        assert_eq!(rss_hash_fields(2, u64::MAX), all);
        // A device hashing IPv4 TCP and L2 payloads only: TCP, not L2 payload.
        assert_eq!(rss_hash_fields(4, 1 << 4 | 1 << 14), 1 << 4);
    }
}
