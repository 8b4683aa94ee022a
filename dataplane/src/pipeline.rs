//! What a worker does to one frame, as a plain function over its bytes: parse, look the
//! flow up (classifying it on a miss), mark. No DPDK here, so every step is unit-tested
//! with byte vectors.

use std::net::IpAddr;
use std::sync::Arc;

use control::{Direction, MatchKey};

use crate::counters::WorkerCounters;
use crate::flow_cache::{FlowCache, FlowEntry, Timeouts};
use crate::fragments::FragmentTable;
use crate::policy_set::{PolicySet, Subscriber};
use crate::wire::{self, FlowKey, Fragment, PacketInfo, Parsed};

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

/// Gateway-wide settings of the data path (SPEC §3).
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    /// `trust_dscp: false` clears the DSCP of IP traffic no policy matches.
    pub trust_dscp: bool,
    /// `malformed: drop` drops malformed frames instead of forwarding them.
    pub drop_malformed: bool,
    pub flow_capacity: usize,
    pub timeouts: Timeouts,
}

impl PipelineConfig {
    /// SPEC §3's defaults, with timeouts converted to TSC cycles.
    pub fn defaults(tsc_hz: u64) -> PipelineConfig {
        PipelineConfig {
            trust_dscp: true,
            drop_malformed: false,
            flow_capacity: 1 << 20,
            timeouts: Timeouts {
                idle: 30 * tsc_hz,
                tcp_closed: 2 * tsc_hz,
            },
        }
    }
}

/// Flow-cache slots examined for expiry per poll loop.
const EXPIRE_PER_LOOP: usize = 8;

/// One worker's packet-processing state.
pub struct Pipeline {
    worker: usize,
    config: PipelineConfig,
    counters: Arc<WorkerCounters>,
    policies: Subscriber,
    cache: FlowCache,
    fragments: FragmentTable,
}

impl Pipeline {
    pub fn new(
        worker: usize,
        config: PipelineConfig,
        policies: Subscriber,
        counters: Arc<WorkerCounters>,
    ) -> Self {
        Pipeline {
            worker,
            cache: FlowCache::new(config.flow_capacity, config.timeouts, counters.clone()),
            fragments: FragmentTable::default(),
            config,
            counters,
            policies,
        }
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// Once per poll loop: pick up a newly published policy set and expire a few idle flows.
    #[inline]
    pub fn housekeeping(&mut self, now: u64) {
        self.policies.refresh();
        self.cache.expire(now, EXPIRE_PER_LOOP);
    }

    /// Processes one frame received on `side` at TSC time `now`. `frame` holds the whole
    /// frame (the dataplane's mbufs are large enough for a jumbo frame in one segment).
    #[inline]
    pub fn process(&mut self, frame: &mut [u8], side: Side, now: u64) -> Verdict {
        let info = match wire::parse(frame, side.is_inbound()) {
            Parsed::Ip(info) => info,
            Parsed::NonIp => {
                self.counters.non_ip_packets.inc();
                return Verdict::Forward;
            }
            Parsed::Malformed(reason) => {
                self.counters.malformed_packets[reason as usize].inc();
                return if self.config.drop_malformed {
                    Verdict::Drop
                } else {
                    Verdict::Forward
                };
            }
        };
        let policy = self.classify(&info, now);
        let set = self.policies.set();
        if policy == FlowEntry::NO_POLICY {
            self.counters.unmatched_packets.inc();
            if !self.config.trust_dscp && wire::dscp(frame, &info) != Some(0) {
                wire::set_dscp(frame, &info, 0);
            }
            return Verdict::Forward;
        }
        let actions = set.actions(policy);
        let counters = actions.stats.worker(self.worker);
        counters.packets.inc();
        counters.bytes.add(frame.len() as u64);
        if let Some(dscp) = actions.dscp {
            wire::set_dscp(frame, &info, dscp);
        }
        if let Some(pcp) = actions.pcp {
            wire::set_pcp(frame, &info, pcp);
        }
        if actions.dscp.is_some() || actions.pcp.is_some() {
            counters.marked.inc();
        }
        counters.sent(now);
        Verdict::Forward
    }

    /// A frame that does not fit one mbuf segment: passed on (or dropped, per
    /// `malformed`) without being parsed.
    #[cold]
    pub fn oversized(&mut self) -> Verdict {
        self.counters.malformed_packets[crate::counters::MALFORMED_OVERSIZED].inc();
        if self.config.drop_malformed {
            Verdict::Drop
        } else {
            Verdict::Forward
        }
    }

    /// The flow's policy: from the flow cache, classifying on a miss or after a reload;
    /// non-first fragments follow their datagram's first fragment when it was seen.
    #[inline]
    fn classify(&mut self, info: &PacketInfo, now: u64) -> u32 {
        let set = self.policies.set();
        let generation = set.generation;
        if let Fragment::NonFirst { id } = info.fragment {
            if let Some(policy) = self.fragments.recall(&info.key, id, generation) {
                return policy;
            }
        }
        let closing = info.tcp_flags & (wire::tcp::flags::FIN | wire::tcp::flags::RST) != 0;
        let entry = self.cache.lookup(&info.key, now, closing);
        if entry.generation != generation {
            entry.policy = classify(set, &info.key);
            entry.generation = generation;
            if entry.policy != FlowEntry::NO_POLICY {
                set.actions(entry.policy)
                    .stats
                    .worker(self.worker)
                    .flows
                    .inc();
            }
        }
        let policy = entry.policy;
        if let Fragment::First { id } = info.fragment {
            self.fragments.remember(&info.key, id, policy, generation);
        }
        policy
    }
}

/// First-packet classification against the policy table.
fn classify(set: &PolicySet, key: &FlowKey) -> u32 {
    set.table
        .classify(&match_key(key))
        .unwrap_or(FlowEntry::NO_POLICY)
}

/// The classifier's view of a flow key.
pub fn match_key(key: &FlowKey) -> MatchKey {
    let (src, dst): (IpAddr, IpAddr) = (key.src_addr(), key.dst_addr());
    let ports = if key.ports_unknown() || !control::policy::has_ports(key.protocol) {
        None
    } else {
        Some((key.src_port, key.dst_port))
    };
    MatchKey {
        direction: if key.is_inbound() {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        vlan: (key.vlan != FlowKey::NO_VLAN).then_some(key.vlan),
        src,
        dst,
        protocol: key.protocol,
        ports,
    }
}
