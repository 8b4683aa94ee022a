//! What a worker does to one frame, as a plain function over its bytes: parse, look the
//! flow up (classifying it on a miss), mark. No DPDK here, so every step is unit-tested
//! with byte vectors.

use std::net::IpAddr;
use std::sync::Arc;

use control::{Direction, MatchKey};

use crate::counters::WorkerCounters;
use crate::flow_cache::{generation_tag, Candidate, FlowCache, FlowEntry, Probe, Tick, Timeouts};
use crate::fragments::FragmentTable;
use crate::handover::{self, Hold, Holds};
use crate::policy_set::{Actions, PolicySet, Subscriber};
use crate::shaper::{Decision, PolicyShaper, ScopeKey, ShaperHint, WorkerShapers};
use crate::wire::{self, FlowKey, Fragment, Kind, PacketInfo};

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
    /// Send it out of the other port at this TSC time (its shaper's departure).
    At(u64),
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
    shapers: WorkerShapers,
    /// Flows a reload moved off a shaper that still held their packets.
    holds: Holds,
    tsc_hz: u64,
    /// The current burst after its first stages: the first `n_staged` entries.
    staged: Box<[Staged; Pipeline::MAX_STAGED]>,
    n_staged: usize,
}

impl Pipeline {
    /// The most frames a burst may stage ([`Pipeline::stage`]).
    pub const MAX_STAGED: usize = 64;

    pub fn new(
        worker: usize,
        config: PipelineConfig,
        policies: Subscriber,
        counters: Arc<WorkerCounters>,
        tsc_hz: u64,
    ) -> Self {
        // Host and flow shaper instances: room for many before anything allocates.
        let instances = config.flow_capacity.min(1 << 16);
        Pipeline {
            worker,
            shapers: WorkerShapers::with_capacity(instances, instances),
            staged: Box::new([Staged::EMPTY; Pipeline::MAX_STAGED]),
            n_staged: 0,
            tsc_hz,
            cache: FlowCache::new(config.flow_capacity, config.timeouts, counters.clone()),
            fragments: FragmentTable::default(),
            holds: Holds::new(),
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
        // A shaper idle for a second has a full bucket: its state is not worth keeping.
        self.shapers
            .retire_idle(now.saturating_sub(self.tsc_hz), EXPIRE_PER_LOOP);
        self.holds.expire(now);
    }

    /// Processes one frame received on `side` at TSC time `now`. `frame` holds the whole
    /// frame (the dataplane's mbufs are large enough for a jumbo frame in one segment).
    /// The worker does the same for a burst in stages: [`Pipeline::stage`] its frames,
    /// [`Pipeline::prefetch_staged`], then [`Pipeline::process_staged`].
    #[inline]
    pub fn process(&mut self, frame: &mut [u8], side: Side, now: u64) -> Verdict {
        self.clear_staged();
        self.stage([Some(&*frame)], side);
        self.prefetch_staged();
        let mut verdict = [Verdict::Drop];
        self.process_staged([frame], &mut verdict, now);
        self.clear_staged();
        verdict[0]
    }

    /// First stage of a burst: parses each frame (`None`: one that does not fit a segment,
    /// counted as malformed `oversized`), hashes its flow and starts loading the flow's
    /// front-cache bucket. The frames are staged in order after those already staged, at
    /// most [`Pipeline::MAX_STAGED`] in all (the rest are ignored). Only the frames of one
    /// burst at a time: [`Pipeline::clear_staged`] after it.
    #[inline]
    pub fn stage<'f>(&mut self, frames: impl IntoIterator<Item = Option<&'f [u8]>>, side: Side) {
        let before = self.n_staged;
        let mut n = before;
        // Zipped, not indexed: a per-frame index kept in `self` cost a load, a bounds
        // check, a multiply and a store per frame.
        for (s, frame) in self.staged[before..].iter_mut().zip(frames) {
            n += 1;
            // Parsed in place: moving each result through the stack cost more than parsing.
            s.kind = frame.map(|f| wire::parse_into(f, side.is_inbound(), &mut s.info));
            if s.kind == Some(Kind::Ip) {
                s.probe.hash = self.cache.hash(&s.info.key);
                self.cache.prefetch_front(s.probe.hash);
            }
        }
        self.n_staged = n;
    }

    /// Second stage: starts loading the flow-cache slot of every staged frame.
    #[inline]
    pub fn prefetch_staged(&mut self) {
        for s in &mut self.staged[..self.n_staged] {
            if s.kind == Some(Kind::Ip) {
                s.probe.candidate = self.cache.prefetch_slot(s.probe.hash);
            }
        }
    }

    /// Lets the shapers park at most `room` more packets (see [`WorkerShapers::set_room`]).
    #[inline]
    pub fn set_park_room(&mut self, room: usize) {
        self.shapers.set_room(room);
    }

    /// Forgets the staged frames (after [`Pipeline::process_staged`]).
    #[inline]
    pub fn clear_staged(&mut self) {
        self.n_staged = 0;
    }

    /// Last stage: processes the staged frames in order, and writes each one's verdict to
    /// `verdicts`. `frames` gives their bytes, one per staged frame, in the order they were
    /// staged. Returns whether every verdict is [`Verdict::Forward`].
    #[inline]
    pub fn process_staged<'f>(
        &mut self,
        frames: impl IntoIterator<Item = &'f mut [u8]>,
        verdicts: &mut [Verdict],
        now: u64,
    ) -> bool {
        debug_assert!(verdicts.len() >= self.n_staged, "a verdict for every frame");
        // What stays the same for the whole burst is looked up once, here.
        let set = self.policies.set();
        let mut burst = Burst {
            tick: self.cache.tick(now),
            tag: generation_tag(set.generation),
            cache: &mut self.cache,
            fragments: &mut self.fragments,
            holds: &mut self.holds,
            act: Act {
                shapers: &mut self.shapers,
                counters: &self.counters,
                set,
                config: self.config,
                worker: self.worker,
                now,
            },
        };
        let mut all_forward = true;
        let staged = &self.staged[..self.n_staged];
        for ((s, frame), v) in staged.iter().zip(frames).zip(verdicts) {
            let verdict = burst.process(s, frame);
            all_forward &= verdict == Verdict::Forward;
            *v = verdict;
        }
        all_forward
    }
}

/// A pipeline's parts as the last stage of one burst uses them: the flow tables, and what
/// acts on a classified frame (split so that a flow's entry, borrowed from the cache, can
/// be handed to the latter).
struct Burst<'p> {
    cache: &'p mut FlowCache,
    fragments: &'p mut FragmentTable,
    holds: &'p mut Holds,
    /// The flow cache's clock now.
    tick: Tick,
    /// The [`generation_tag`] of the policies in force.
    tag: u32,
    act: Act<'p>,
}

/// What acts on a classified frame: its policy's marking, shaper and counters.
struct Act<'p> {
    shapers: &'p mut WorkerShapers,
    counters: &'p WorkerCounters,
    set: &'p PolicySet,
    config: PipelineConfig,
    worker: usize,
    now: u64,
}

impl Burst<'_> {
    /// Processes one staged frame, whose bytes are `frame`. The common case, a whole
    /// datagram whose policy (if any) does not shape, is all inline here; fragments and
    /// shaped packets take a call each, which keeps the common case's registers free.
    #[inline]
    fn process(&mut self, staged: &Staged, frame: &mut [u8]) -> Verdict {
        if staged.kind != Some(Kind::Ip) {
            return self.act.not_ip(staged.kind);
        }
        // Borrowed, not copied: the parsed frame is most of a cache line.
        let info = &staged.info;
        if info.fragment != Fragment::None {
            return self.fragment(info, staged.probe, frame);
        }
        let entry = flow_entry(self.cache, self.tick, info, staged.probe);
        if entry.generation != self.tag {
            return stale(
                entry,
                &mut self.act,
                self.holds,
                info,
                staged.probe.hash,
                frame,
            );
        }
        let hint = &mut entry.shaper_hint;
        self.act
            .classified(entry.policy, info, staged.probe.hash, hint, frame)
    }

    /// A fragment: a non-first one follows its datagram's first fragment when that was
    /// seen, and a first one is remembered for the rest of its datagram.
    #[cold]
    #[inline(never)]
    fn fragment(&mut self, info: &PacketInfo, probe: Probe, frame: &mut [u8]) -> Verdict {
        let generation = self.act.set.generation;
        // The frame as its flow sees it: its own key, or its datagram's (the same
        // addresses and direction, with the first fragment's ports).
        let (mut flow, mut probe) = (*info, probe);
        if let Fragment::NonFirst { id } = info.fragment {
            match self.fragments.recall(&info.key, id) {
                Some(d) if d.generation == generation => {
                    // Held with its datagram's flow, if that is held.
                    let until = (self.holds.get(d.hash))
                        .filter(|h| h.until > self.act.now)
                        .map_or(0, |h| h.until);
                    let mut hint = ShaperHint::NONE;
                    let verdict = self
                        .act
                        .classified(d.policy, info, d.hash, &mut hint, frame);
                    return self.act.held(d.policy, verdict, until);
                }
                // The datagram straddles a reload: its first fragment was classified under
                // the policies before. The rest go as its flow goes now (classified again,
                // held behind the first if that waits on a shaper the flow has left).
                Some(d) => {
                    flow.key = d.flow;
                    let candidate = self.cache.prefetch_slot(d.hash);
                    probe = Probe {
                        hash: d.hash,
                        candidate,
                    };
                }
                None => {}
            }
        }
        let entry = flow_entry(self.cache, self.tick, &flow, probe);
        let verdict = if entry.generation != self.tag {
            stale(entry, &mut self.act, self.holds, &flow, probe.hash, frame)
        } else {
            let hint = &mut entry.shaper_hint;
            self.act
                .classified(entry.policy, &flow, probe.hash, hint, frame)
        };
        let id = match info.fragment {
            Fragment::First { id } => Some(id),
            // Remembered again under this generation, for the datagram's other fragments.
            Fragment::NonFirst { id } if flow.key != info.key => Some(id),
            _ => None,
        };
        if let Some(id) = id {
            (self.fragments).remember(&flow.key, id, entry.policy, probe.hash, generation);
        }
        verdict
    }
}

impl Act<'_> {
    /// Acts on a frame classified to `policy` (or to none), whose flow hashes to `hash` and
    /// whose shaper instance was last found at `hint`.
    #[inline(always)]
    fn classified(
        &mut self,
        policy: u32,
        info: &PacketInfo,
        hash: u64,
        hint: &mut ShaperHint,
        frame: &mut [u8],
    ) -> Verdict {
        if policy == FlowEntry::NO_POLICY {
            self.counters.unmatched_packets.inc();
            if !self.config.trust_dscp && wire::dscp(frame, info) != Some(0) {
                wire::set_dscp(frame, info, 0);
            }
            return Verdict::Forward;
        }
        let actions = self.set.actions(policy);
        if let Some(shaper) = &actions.shaper {
            return self.shaped(shaper, actions, info, hash, hint, frame);
        }
        self.mark(actions, info, frame, self.now);
        Verdict::Forward
    }

    /// A frame of a policy with a shaper: scheduled, then marked unless dropped.
    #[inline(never)]
    fn shaped(
        &mut self,
        shaper: &PolicyShaper,
        actions: &Actions,
        info: &PacketInfo,
        hash: u64,
        hint: &mut ShaperHint,
        frame: &mut [u8],
    ) -> Verdict {
        let counters = actions.counters(self.worker);
        let key = ScopeKey {
            host: inside_host(&info.key),
            flow: hash,
        };
        let now = self.now;
        let (verdict, at) = match self
            .shapers
            .schedule(shaper, &key, hint, now, frame.len() as u32)
        {
            Decision::Now => (Verdict::Forward, now),
            Decision::At(t) => {
                counters.delayed.inc();
                (Verdict::At(t), t)
            }
            Decision::Drop => {
                counters.dropped.inc();
                self.counters.shaper_dropped.inc();
                return Verdict::Drop;
            }
        };
        self.mark(actions, info, frame, at);
        verdict
    }

    /// What becomes of `verdict`, for a frame classified to `policy`, while its flow is held
    /// until `until` (0: not held). A frame the hold makes wait is counted as delayed by
    /// its policy, as one its shaper made wait would be (an unmatched one has no policy to
    /// count it).
    #[inline]
    fn held(&self, policy: u32, verdict: Verdict, until: u64) -> Verdict {
        let after = handover::held(verdict, until);
        if verdict == Verdict::Forward && after != verdict && policy != FlowEntry::NO_POLICY {
            let actions = self.set.actions(policy);
            actions.counters(self.worker).delayed.inc();
        }
        after
    }

    /// Counts a frame its policy lets go at TSC time `at`, and marks it.
    #[inline(always)]
    fn mark(&self, actions: &Actions, info: &PacketInfo, frame: &mut [u8], at: u64) {
        let counters = actions.counters(self.worker);
        counters.packets.inc();
        counters.bytes.add(frame.len() as u64);
        if let Some(dscp) = actions.dscp {
            wire::set_dscp(frame, info, dscp);
        }
        if let Some(pcp) = actions.pcp {
            wire::set_pcp(frame, info, pcp);
        }
        // Marked: its DSCP set, or the PCP of a tag it has (none is ever added).
        if actions.dscp.is_some() || (actions.pcp.is_some() && info.outer_tag_offset.is_some()) {
            counters.marked.inc();
        }
        counters.sent(at);
    }

    /// Counts a frame that is not IP (`None`: oversized) and says what becomes of it.
    #[cold]
    #[inline(never)]
    fn not_ip(&self, kind: Option<Kind>) -> Verdict {
        let slot = match kind {
            Some(Kind::NonIp) => {
                self.counters.non_ip_packets.inc();
                return Verdict::Forward;
            }
            Some(Kind::Malformed(reason)) => reason as usize,
            _ => crate::counters::MALFORMED_OVERSIZED,
        };
        self.counters.malformed_packets[slot].inc();
        if self.config.drop_malformed {
            Verdict::Drop
        } else {
            Verdict::Forward
        }
    }
}

/// A frame after the first stages of a burst: parsed (`None`: oversized; `info` holds
/// something only for [`Kind::Ip`]), hashed, and the flow-cache slot the front cache names
/// for it.
#[derive(Clone, Copy)]
struct Staged {
    kind: Option<Kind>,
    info: PacketInfo,
    probe: Probe,
}

impl Staged {
    const EMPTY: Staged = Staged {
        kind: None,
        info: PacketInfo::EMPTY,
        probe: Probe {
            hash: 0,
            candidate: Candidate::NONE,
        },
    };
}

/// The flow's cache entry at `tick` (new ones unclassified: see [`settle`]).
#[inline(always)]
fn flow_entry<'a>(
    cache: &'a mut FlowCache,
    tick: Tick,
    info: &PacketInfo,
    probe: Probe,
) -> &'a mut FlowEntry {
    cache.lookup_probed(&info.key, probe, tick, info.tcp_flags)
}

/// A frame whose flow entry is not current (new, classified under another generation, or
/// held): the entry is settled, then the frame acted on as any other, no earlier than its
/// flow's hold. Out of the per-packet path: once per flow and reload, and while held.
#[cold]
#[inline(never)]
fn stale(
    entry: &mut FlowEntry,
    act: &mut Act,
    holds: &mut Holds,
    info: &PacketInfo,
    hash: u64,
    frame: &mut [u8],
) -> Verdict {
    let until = settle(entry, act, holds, &info.key, hash);
    let verdict = act.classified(entry.policy, info, hash, &mut entry.shaper_hint, frame);
    act.held(entry.policy, verdict, until)
}

/// Brings a stale entry up to date with `act`'s policies: classifies it again unless it is
/// only held, and holds it when the reload moved it off a shaper whose clock is still
/// ahead of now ([`crate::handover`]). Returns until when the flow is held, 0 if it is not.
fn settle(
    entry: &mut FlowEntry,
    act: &mut Act,
    holds: &mut Holds,
    key: &FlowKey,
    hash: u64,
) -> u64 {
    let tag = generation_tag(act.set.generation);
    let was_held = entry.generation == FlowEntry::HOLDING;
    let (classified_under, mut until) = match entry.generation {
        // Its hold says which generation its policy index belongs to; a hold forgotten
        // (all were over) leaves it to be classified afresh.
        FlowEntry::HOLDING => holds
            .get(hash)
            .map_or((FlowEntry::UNCLASSIFIED, 0), |h| (h.tag, h.until)),
        // A new entry may be a held flow the cache evicted (full) and meets again: its
        // hold outlives the entry, though its policy index did not.
        FlowEntry::UNCLASSIFIED if !holds.is_empty() => (
            FlowEntry::UNCLASSIFIED,
            holds.get(hash).map_or(0, |h| h.until),
        ),
        g => (g, 0),
    };
    // (A hold found for another flow of the same 64-bit hash could pair this entry with
    // the wrong generation: an index outside the set is classified again, never used.)
    let foreign = entry.policy != FlowEntry::NO_POLICY && !act.set.has(entry.policy);
    if classified_under != tag || foreign {
        reclassify(entry, act.set, key, act.worker);
        // The shaper its packets were last parked by, as its hint names it (whatever the
        // generations between), against the one it has now.
        let scope = ScopeKey {
            host: inside_host(key),
            flow: hash,
        };
        if let Some((id, kind, clock)) = act.shapers.parked(entry.shaper_hint, &scope) {
            let new = (entry.policy != FlowEntry::NO_POLICY)
                .then(|| act.set.actions(entry.policy).shaper.as_deref())
                .flatten();
            // The same instance (name and scope survived) keeps the flow's order itself.
            // Another: the hold carries the old clock from here on, and the hint is let go,
            // so that a later reload does not hold the flow behind a shaper it has left.
            if !new.is_some_and(|n| n.id() == id && n.scope() == kind) {
                until = until.max(clock);
                entry.shaper_hint = ShaperHint::NONE;
            }
        }
    }
    if until > act.now {
        entry.generation = FlowEntry::HOLDING;
        holds.hold(hash, Hold { until, tag });
        until
    } else {
        if was_held {
            holds.release(hash);
        }
        entry.generation = tag;
        0
    }
}

/// Classifies a new flow, or one last classified under another policy generation (kept
/// out of the per-packet path: it runs once per flow and reload). A flow counts for its
/// policy's `flows` when it comes to that policy, not each time a reload confirms it.
#[cold]
#[inline(never)]
fn reclassify(entry: &mut FlowEntry, set: &PolicySet, key: &FlowKey, worker: usize) {
    entry.policy = first_packet(set, key);
    entry.generation = generation_tag(set.generation);
    let counted = if entry.policy == FlowEntry::NO_POLICY {
        FlowEntry::NO_POLICY
    } else {
        let actions = set.actions(entry.policy);
        if actions.stats.id != entry.counted {
            actions.counters(worker).flows.inc();
        }
        actions.stats.id
    };
    entry.counted = counted;
}

/// The inside host of a flow (its source when outbound, its destination when inbound),
/// as `host`-scope shapers name it: IPv4 as `::ffff:a.b.c.d`.
#[inline]
fn inside_host(key: &FlowKey) -> [u8; 16] {
    let addr = if key.is_inbound() { &key.dst } else { &key.src };
    if key.is_ipv6() {
        *addr
    } else {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&addr[..4]);
        mapped
    }
}

/// First-packet classification against the policy table.
fn first_packet(set: &PolicySet, key: &FlowKey) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Eviction;
    use crate::policy_set::{Publisher, ShaperSettings};
    use crate::synth::{Packet, L4};

    const HZ: u64 = 1_000_000_000;

    fn table(policies: &str) -> control::PolicyTable {
        control::parse_policies("test.json", policies)
            .expect("valid policies")
            .0
    }

    fn publisher(policies: &str) -> Arc<Publisher> {
        let settings = ShaperSettings {
            tsc_hz: HZ,
            max_delay_cycles: u64::MAX,
        };
        Publisher::new(table(policies), 1, settings).expect("publishable")
    }

    fn frame(client: u8) -> Vec<u8> {
        let src = IpAddr::from([10, 0, 0, client]);
        let dst = IpAddr::from([192, 0, 2, 1]);
        Packet::new(src, dst, L4::Udp { src: 5000, dst: 53 })
            .payload(1100)
            .build()
    }

    fn dscp(frame: &[u8]) -> u8 {
        frame[14 + 1] >> 2
    }

    /// A pipeline on `pubr`'s policies, as worker 0.
    fn pipeline(pubr: &Arc<Publisher>) -> Pipeline {
        pipeline_with(pubr, PipelineConfig::defaults(HZ))
    }

    /// [`pipeline`] with `config`.
    fn pipeline_with(pubr: &Arc<Publisher>, config: PipelineConfig) -> Pipeline {
        let counters = Arc::new(WorkerCounters::default());
        Pipeline::new(0, config, pubr.subscribe(), counters, HZ)
    }

    /// `n` microseconds in TSC cycles.
    fn us(n: u64) -> u64 {
        n * HZ / 1_000_000
    }

    /// Client `client`'s next frame through `p` at `at`.
    fn send(p: &mut Pipeline, client: u8, at: u64) -> Verdict {
        p.process(&mut frame(client), Side::Inside, at)
    }

    /// Cached flows name their policy by its index in the set they were classified under.
    /// After a reload to fewer policies that index may not exist: the flows must be
    /// classified again before it is used, and take the new policy's marking and shaper.
    #[test]
    fn a_reload_to_fewer_policies_reclassifies_cached_flows() {
        let pubr = publisher(
            r#"{"policies":[
                {"name":"a","dst_prefix":"198.51.100.0/24","dscp":8,
                 "throttle":1000000,"throttle_per":"flow"},
                {"name":"b","dst_prefix":"203.0.113.0/24","dscp":16},
                {"name":"c","dst_prefix":"192.0.2.0/24","dscp":24,
                 "throttle":8000000,"throttle_per":"host"}]}"#,
        );
        let mut p = pipeline(&pubr);
        let now = 10 * HZ;
        // Three hosts' first frames (1 142 bytes each), within their shapers' bursts.
        let mut frames: Vec<Vec<u8>> = (1..=3).map(frame).collect();
        for f in &mut frames {
            assert_eq!(p.process(f, Side::Inside, now), Verdict::Forward);
            assert_eq!(dscp(f), 24);
        }
        // Policy 2 is gone; the three flows' entries still name it.
        pubr.publish(table(
            r#"{"policies":[{"name":"d","dst_prefix":"192.0.2.0/24","dscp":46,
                "throttle":8000,"throttle_per":"host","burst":1514}]}"#,
        ))
        .expect("publishable");
        p.housekeeping(now);
        let mut frames: Vec<Vec<u8>> = (1..=3).map(frame).collect();
        p.stage(frames.iter().map(|f| Some(&f[..])), Side::Inside);
        p.prefetch_staged();
        let mut verdicts = [Verdict::Drop; 3];
        p.process_staged(frames.iter_mut().map(|f| &mut f[..]), &mut verdicts, now);
        p.clear_staged();
        // Each host's first frame under "d" fits its new shaper's burst; all are marked.
        assert_eq!(verdicts, [Verdict::Forward; 3]);
        assert!(frames.iter().all(|f| dscp(f) == 46));
        // A fresh shaper, not policy c's: host 1's bucket of 1 514 bytes has 372 left, so
        // its next frame leaves when 770 more bytes have drained at 8 kb/s, 0.77 s later.
        let mut again = frame(1);
        assert_eq!(
            p.process(&mut again, Side::Inside, now),
            Verdict::At(now + 770 * HZ / 1_000)
        );
    }
    /// SPEC §5: a reload reorders nothing within a flow. A flow the reload moves off a
    /// shaper that still holds its packets (here: the policy renamed and its throttle
    /// dropped) leaves no earlier than its last parked packet until that one is gone; a
    /// flow whose shaper survives (same name and scope, a new rate) needs no hold.
    #[test]
    fn a_reload_that_moves_a_flow_off_its_shaper_keeps_its_order() {
        // 8 Mb/s = 1 byte a µs; 1 142-byte frames; a 1 514-byte bucket: the first frame
        // leaves at once, with 372 bytes to spare, the second 770 µs later.
        let shaped = |name: &str, bps: u32| {
            format!(
                r#"{{"policies":[{{"name":"{name}","dst_port":53,"dscp":8,"throttle":{bps},
                    "throttle_per":"flow","burst":1514}}]}}"#
            )
        };
        let pubr = publisher(&shaped("a", 8_000_000));
        let mut p = pipeline(&pubr);
        let now = 10 * HZ;
        for client in [1, 2] {
            assert_eq!(send(&mut p, client, now), Verdict::Forward);
            assert_eq!(send(&mut p, client, now), Verdict::At(now + us(770)));
            assert_eq!(send(&mut p, client, now), Verdict::At(now + us(1_912)));
        }

        // Same name and scope, half the rate: the clock goes on, no hold.
        pubr.publish(table(&shaped("a", 4_000_000)))
            .expect("publishable");
        p.housekeeping(now);
        assert_eq!(send(&mut p, 1, now), Verdict::At(now + us(1_912 + 2_284)));

        // Renamed and unthrottled: flow 2's packets wait for its last parked one.
        pubr.publish(table(
            r#"{"policies":[{"name":"b","dst_port":53,"dscp":16}]}"#,
        ))
        .expect("publishable");
        p.housekeeping(now);
        let mut f = frame(2);
        assert_eq!(
            p.process(&mut f, Side::Inside, now),
            Verdict::At(now + us(1_912))
        );
        assert_eq!(dscp(&f), 16, "the new policy's marking");
        assert_eq!(
            send(&mut p, 2, now + us(1_000)),
            Verdict::At(now + us(1_912))
        );
        // Flow 1 waits for its own last one, under the old rate's later clock.
        assert_eq!(send(&mut p, 1, now), Verdict::At(now + us(4_196)));
        // Once those have left, the flows go straight through again.
        assert_eq!(send(&mut p, 2, now + us(1_912)), Verdict::Forward);
        assert_eq!(send(&mut p, 2, now + us(1_913)), Verdict::Forward);
        assert_eq!(send(&mut p, 1, now + us(4_197)), Verdict::Forward);
        assert!(p.holds.is_empty());
        // The three frames the holds made wait count as delayed by "b", the policy that
        // sent them; the three that went straight through do not.
        let b = pubr.all_stats().into_iter().find(|s| s.name == "b");
        let t = b.expect("b's counters").totals();
        assert_eq!((t.packets, t.delayed), (6, 3));
    }

    /// The same for a `policy`-scope shaper (its clock is shared): a new `throttle_per`
    /// under the same name moves the flow to another instance, and a removed policy leaves
    /// it unmatched; either way it waits for what the old shaper holds of the policy.
    #[test]
    fn a_reload_that_changes_scope_or_removes_the_policy_keeps_the_order() {
        let shaped = |per: &str| {
            format!(
                r#"{{"policies":[{{"name":"a","dst_port":53,"dscp":8,"throttle":8000000,
                    "throttle_per":"{per}","burst":1514}}]}}"#
            )
        };
        let pubr = publisher(&shaped("policy"));
        let mut p = pipeline(&pubr);
        let now = 10 * HZ;
        // One clock for both flows: 0, 770, 1 912, 3 054 µs.
        assert_eq!(send(&mut p, 1, now), Verdict::Forward);
        assert_eq!(send(&mut p, 2, now), Verdict::At(now + us(770)));
        assert_eq!(send(&mut p, 1, now), Verdict::At(now + us(1_912)));
        assert_eq!(send(&mut p, 2, now), Verdict::At(now + us(3_054)));

        // Per host now: host 1's fresh bucket is charged as its frames come (0, 770, 1 912,
        // 3 054, 4 196 µs), but none leaves before the policy's last parked packet.
        pubr.publish(table(&shaped("host"))).expect("publishable");
        p.housekeeping(now);
        for departs in [3_054, 3_054, 3_054, 3_054, 4_196] {
            assert_eq!(send(&mut p, 1, now), Verdict::At(now + us(departs)));
        }
        // Gone: host 2's flow is unmatched, and waits for what the policy shaper held.
        pubr.publish(table(
            r#"{"policies":[{"name":"b","dst_port":80,"dscp":16}]}"#,
        ))
        .expect("publishable");
        p.housekeeping(now);
        assert_eq!(send(&mut p, 2, now + us(100)), Verdict::At(now + us(3_054)));
        assert_eq!(send(&mut p, 2, now + us(3_055)), Verdict::Forward);
        // Host 1's flow waits for its host shaper's last one, and then not again: a
        // further reload does not hold it behind a shaper it has left.
        assert_eq!(
            send(&mut p, 1, now + us(3_100)),
            Verdict::At(now + us(4_196))
        );
        pubr.publish(table(
            r#"{"policies":[{"name":"c","dst_port":80,"dscp":24}]}"#,
        ))
        .expect("publishable");
        p.housekeeping(now);
        assert_eq!(send(&mut p, 1, now + us(4_197)), Verdict::Forward);
    }

    /// A flow held once on leaving a busy shaper is not held behind it again by later
    /// reloads, while that shaper stays busy with other flows.
    #[test]
    fn a_flow_that_left_a_busy_shaper_is_not_held_behind_it_again() {
        let bulk = r#"{"name":"bulk","dst_port":53,"dscp":8,"throttle":8000000,"burst":1514}"#;
        let vip = r#"{"name":"vip","src_prefix":"10.0.0.1","dst_port":53,"dscp":46}"#;
        let other = r#"{"name":"other","dst_port":80,"dscp":24}"#;
        let pubr = publisher(&format!(r#"{{"policies":[{bulk}]}}"#));
        let mut p = pipeline(&pubr);
        let now = 10 * HZ;
        for client in [1, 2, 1, 2] {
            send(&mut p, client, now);
        }
        // Host 1 to "vip": held once, behind bulk's last (3 054 µs).
        pubr.publish(table(&format!(r#"{{"policies":[{bulk},{vip}]}}"#)))
            .expect("publishable");
        p.housekeeping(now);
        assert_eq!(send(&mut p, 1, now), Verdict::At(now + us(3_054)));
        // Host 2 keeps bulk busy; an unrelated reload; host 1 goes straight through.
        assert_eq!(send(&mut p, 2, now), Verdict::At(now + us(4_196)));
        pubr.publish(table(&format!(r#"{{"policies":[{bulk},{vip},{other}]}}"#)))
            .expect("publishable");
        p.housekeeping(now);
        assert_eq!(send(&mut p, 1, now + us(3_100)), Verdict::Forward);
        assert!(p.holds.is_empty(), "its hold let go");
    }

    /// A throttled flow that the flow cache evicts (full) and meets again keeps its order
    /// across a reload, whether the eviction came after the reload held it (the hold
    /// outlives its entry) or before (the cache gives the returning flow its shaper hint
    /// back, so the reload still finds the shaper that holds its packets).
    #[test]
    fn a_throttled_flow_evicted_from_a_full_cache_keeps_its_order_across_a_reload() {
        for evicted_after_reload in [true, false] {
            let pubr = publisher(
                r#"{"policies":[{"name":"a","dst_port":53,"dscp":8,"throttle":8000000,
                    "throttle_per":"flow","burst":1514}]}"#,
            );
            let config = PipelineConfig {
                flow_capacity: 16,
                ..PipelineConfig::defaults(HZ)
            };
            let mut p = pipeline_with(&pubr, config);
            let now = 10 * HZ;
            for _ in 0..3 {
                send(&mut p, 1, now);
            }
            let reload = |p: &mut Pipeline| {
                pubr.publish(table(
                    r#"{"policies":[{"name":"b","dst_port":53,"dscp":16}]}"#,
                ))
                .expect("publishable");
                p.housekeeping(now);
            };
            if evicted_after_reload {
                reload(&mut p);
                assert_eq!(send(&mut p, 1, now), Verdict::At(now + us(1_912)));
            }
            // 160 other flows through the 16-flow cache push flow 1 out.
            for port in 0..160u16 {
                let src = IpAddr::from([10, 0, 1, 1]);
                let dst = IpAddr::from([192, 0, 2, 9]);
                let mut f = Packet::new(src, dst, L4::Udp { src: port, dst: 9 }).build();
                assert_eq!(p.process(&mut f, Side::Inside, now), Verdict::Forward);
            }
            let full = p.counters.evictions[Eviction::Full as usize].get();
            assert!(full >= 144, "{full} evicted: flow 1 among them");
            if !evicted_after_reload {
                reload(&mut p);
            }
            let at = now + us(10);
            let why = if evicted_after_reload {
                "after"
            } else {
                "before"
            };
            assert_eq!(send(&mut p, 1, at), Verdict::At(now + us(1_912)), "{why}");
            assert_eq!(send(&mut p, 1, now + us(1_913)), Verdict::Forward);
        }
    }

    /// The fragments of a held flow's datagram are held with it: the non-first ones, which
    /// follow their first fragment's result, do not overtake it.
    #[test]
    fn fragments_of_a_held_flow_are_held_with_it() {
        let shaped = r#"{"policies":[{"name":"a","dst_port":53,"dscp":8,"throttle":8000000,
            "throttle_per":"flow","burst":1514}]}"#;
        let pubr = publisher(shaped);
        let mut p = pipeline(&pubr);
        let now = 10 * HZ;
        for _ in 0..3 {
            p.process(&mut frame(1), Side::Inside, now);
        }
        pubr.publish(table(
            r#"{"policies":[{"name":"b","dst_port":53,"dscp":16}]}"#,
        ))
        .expect("publishable");
        p.housekeeping(now);
        // Datagram 7 of the flow, in two fragments.
        let (mut first, mut rest) = (fragment(7, 0x2000), fragment(7, 139));
        assert_eq!(
            p.process(&mut first, Side::Inside, now),
            Verdict::At(now + us(1_912))
        );
        assert_eq!(
            p.process(&mut rest, Side::Inside, now),
            Verdict::At(now + us(1_912))
        );
        assert_eq!((dscp(&first), dscp(&rest)), (16, 16));
    }

    /// A fragment of client 1's flow (10.0.0.1:5000 → 192.0.2.1:53): datagram `id`, with
    /// IPv4 flags and offset `flags_offset` (More Fragments is 0x2000).
    fn fragment(id: u16, flags_offset: u16) -> Vec<u8> {
        let src = IpAddr::from([10, 0, 0, 1]);
        let dst = IpAddr::from([192, 0, 2, 1]);
        let udp = L4::Udp { src: 5000, dst: 53 };
        let mut f = Packet::new(src, dst, udp).ip_id(id).payload(1100).build();
        f[20..22].copy_from_slice(&flags_offset.to_be_bytes());
        f[24..26].fill(0);
        let sum = crate::synth::checksum(&[&f[14..34]]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        f
    }

    /// A datagram whose first fragment came before a reload and the rest after: the rest
    /// go as the flow goes under the new policies (not as a flow of unknown ports), and
    /// no earlier than the first fragment, which the old shaper still holds.
    #[test]
    fn a_datagram_that_straddles_a_reload_keeps_its_order_and_takes_the_new_policy() {
        let pubr = publisher(
            r#"{"policies":[{"name":"a","dst_port":53,"dscp":8,"throttle":8000000,
                "throttle_per":"flow","burst":1514}]}"#,
        );
        let mut p = pipeline(&pubr);
        let now = 10 * HZ;
        for departs in [0, 770] {
            let expect = if departs == 0 {
                Verdict::Forward
            } else {
                Verdict::At(now + us(departs))
            };
            assert_eq!(send(&mut p, 1, now), expect);
        }
        let mut first = fragment(9, 0x2000);
        assert_eq!(
            p.process(&mut first, Side::Inside, now),
            Verdict::At(now + us(1_912))
        );
        assert_eq!(dscp(&first), 8);
        pubr.publish(table(
            r#"{"policies":[{"name":"b","dst_port":53,"dscp":16}]}"#,
        ))
        .expect("publishable");
        p.housekeeping(now);
        for (at, flags_offset) in [(100, 139 | 0x2000), (200, 278)] {
            let mut rest = fragment(9, flags_offset);
            let v = p.process(&mut rest, Side::Inside, now + us(at));
            assert_eq!(
                v,
                Verdict::At(now + us(1_912)),
                "fragment at offset {flags_offset:#x}"
            );
            assert_eq!(dscp(&rest), 16, "policy b's marking");
        }
        let b = pubr.all_stats().into_iter().find(|s| s.name == "b");
        let t = b.expect("b's counters").totals();
        assert_eq!((t.flows, t.packets, t.delayed), (1, 2, 2));
    }

    /// A PCP-only policy marks tagged frames; an untagged one passes unchanged and is not
    /// counted as marked.
    #[test]
    fn a_pcp_only_policy_counts_only_frames_it_changed_as_marked() {
        let pubr = publisher(r#"{"policies":[{"name":"p","dst_port":53,"priority_8021p":5}]}"#);
        let mut p = pipeline(&pubr);
        let udp = |vlans: &[u16]| {
            Packet::new(
                IpAddr::from([10, 0, 0, 1]),
                IpAddr::from([192, 0, 2, 1]),
                L4::Udp { src: 5000, dst: 53 },
            )
            .vlans(vlans)
            .build()
        };
        let (mut untagged, mut tagged) = (udp(&[]), udp(&[7]));
        let before = untagged.clone();
        assert_eq!(p.process(&mut untagged, Side::Inside, HZ), Verdict::Forward);
        assert_eq!(untagged, before);
        assert_eq!(p.process(&mut tagged, Side::Inside, HZ), Verdict::Forward);
        assert_eq!(tagged[14] >> 5, 5, "the tag's PCP");
        let t = pubr.all_stats()[0].totals();
        assert_eq!((t.packets, t.marked), (2, 1));
    }

    /// `qosgw_policy_flows_total` counts flows classified to a policy: a reload that
    /// classifies a cached flow to the same policy again does not count it again; one
    /// that moves it to another policy counts it there.
    #[test]
    fn a_reload_counts_a_flow_only_when_its_policy_changes() {
        let a = r#"{"name":"a","dst_prefix":"192.0.2.0/24","dscp":8}"#;
        let b = r#"{"name":"b","dst_port":53,"dscp":16}"#;
        let pubr = publisher(&format!(r#"{{"policies":[{a},{b}]}}"#));
        let mut p = pipeline(&pubr);
        let flows = |name: &str| {
            let stats = pubr.all_stats();
            stats
                .iter()
                .find(|s| s.name == name)
                .map_or(0, |s| s.totals().flows)
        };
        let send = |p: &mut Pipeline, expect: u8| {
            for client in 1..=2 {
                let mut f = frame(client);
                assert_eq!(p.process(&mut f, Side::Inside, HZ), Verdict::Forward);
                assert_eq!(dscp(&f), expect);
            }
        };
        send(&mut p, 8);
        assert_eq!((flows("a"), flows("b")), (2, 0));
        // The same policies again, in another order: same winner, nothing new to count.
        pubr.publish(table(&format!(r#"{{"policies":[{b},{a}]}}"#)))
            .expect("publishable");
        p.housekeeping(HZ);
        send(&mut p, 8);
        assert_eq!((flows("a"), flows("b")), (2, 0));
        // "a" gone: the two flows come to "b" and count there once.
        pubr.publish(table(&format!(r#"{{"policies":[{b}]}}"#)))
            .expect("publishable");
        p.housekeeping(HZ);
        send(&mut p, 16);
        send(&mut p, 16);
        assert_eq!((flows("a"), flows("b")), (2, 2));
    }
}
