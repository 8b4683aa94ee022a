//! The policies in force, as the workers see them, and how a new set is published.
//!
//! The control thread compiles a complete [`PolicySet`] and publishes it with a new
//! generation; each worker checks the generation once per burst (one relaxed load) and
//! picks up the new set when it changed. A worker never waits: it only *tries* the lock
//! that guards the current set, and if the control thread happens to hold it (for the few
//! nanoseconds of a pointer swap) the worker keeps its old set for one more burst. Flows
//! in the cache remember the generation they were classified under and are classified
//! again at their next packet.
//!
//! Per-policy counters and, later, shaper state are registered by policy name, so a
//! policy whose name survives a reload keeps counting where it was (Prometheus counters
//! must not go backwards).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::{PolicyId, PolicyTable};

use crate::counters::{Counter, Gauge};
use crate::shaper::{PolicyShaper, ShaperConfig, ShaperRegistry};

/// One policy's counters on one worker (single writer).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PolicyCounters {
    pub packets: Counter,
    pub bytes: Counter,
    /// Flows classified to the policy.
    pub flows: Counter,
    /// Packets whose DSCP (or PCP) the policy set.
    pub marked: Counter,
    /// Packets the shaper held for later.
    pub delayed: Counter,
    /// Packets the shaper dropped (max delay exceeded).
    pub dropped: Counter,
    /// TSC times of the first and the latest packet sent, for the achieved rate.
    pub first_tx: Gauge,
    pub last_tx: Gauge,
}

impl PolicyCounters {
    /// Records a packet leaving at TSC time `at` (now, or its shaped departure).
    #[inline]
    pub fn sent(&self, at: u64) {
        // TSC times are never 0, so the first packet moves `last_tx` too: `first_tx` need
        // only be looked at when `last_tx` moves (once a burst, not once a packet).
        if at > self.last_tx.get() {
            self.last_tx.set(at);
            if self.first_tx.get() == 0 {
                self.first_tx.set(at);
            }
        }
    }
}

/// A policy's counters summed over all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyTotals {
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    pub marked: u64,
    pub delayed: u64,
    pub dropped: u64,
}

/// A policy's counters on every worker, summed by readers.
#[derive(Debug)]
pub struct PolicyStats {
    pub name: String,
    /// Unique among the names whose counters exist (registration order), never
    /// [`FlowEntry::NO_POLICY`](crate::flow_cache::FlowEntry::NO_POLICY).
    pub id: u32,
    /// Shared with every published [`Actions`] of the policy, which reaches a worker's
    /// counters through it in one step.
    per_worker: Arc<[PolicyCounters]>,
}

impl PolicyStats {
    fn new(name: &str, id: u32, workers: usize) -> PolicyStats {
        PolicyStats {
            name: name.to_owned(),
            id,
            per_worker: (0..workers).map(|_| PolicyCounters::default()).collect(),
        }
    }

    /// The achieved rate in bits/s over the span between the first and the latest packet
    /// sent (on any worker); 0 until two packets have left.
    pub fn rate_bps(&self, tsc_hz: u64) -> u64 {
        let first = self
            .per_worker
            .iter()
            .map(|c| c.first_tx.get())
            .filter(|&t| t != 0)
            .min();
        let last = self.per_worker.iter().map(|c| c.last_tx.get()).max();
        match (first, last) {
            (Some(f), Some(l)) if l > f => {
                let bits = u128::from(self.total(|c| &c.bytes)) * 8;
                (bits * u128::from(tsc_hz) / u128::from(l - f)) as u64
            }
            _ => 0,
        }
    }

    /// Every counter summed over all workers.
    pub fn totals(&self) -> PolicyTotals {
        PolicyTotals {
            packets: self.total(|c| &c.packets),
            bytes: self.total(|c| &c.bytes),
            flows: self.total(|c| &c.flows),
            marked: self.total(|c| &c.marked),
            delayed: self.total(|c| &c.delayed),
            dropped: self.total(|c| &c.dropped),
        }
    }

    /// Sums one counter over all workers.
    pub fn total(&self, f: impl Fn(&PolicyCounters) -> &Counter) -> u64 {
        self.per_worker.iter().map(|c| f(c).get()).sum()
    }
}

/// What a worker does for a flow of one policy. One cache line: every matched packet reads
/// it (the shaper's config, which only throttled packets need, is one step further).
#[derive(Debug)]
#[repr(align(64))]
pub struct Actions {
    pub dscp: Option<u8>,
    pub pcp: Option<u8>,
    /// The policy's shaper, if it has a `throttle`.
    pub shaper: Option<Box<PolicyShaper>>,
    pub stats: Arc<PolicyStats>,
    /// `stats`' per-worker counters, one pointer nearer than through `stats`.
    counters: Arc<[PolicyCounters]>,
}

impl Actions {
    /// The policy's counters on `worker`.
    #[inline]
    pub fn counters(&self, worker: usize) -> &PolicyCounters {
        &self.counters[worker]
    }
}

/// Every policy's counters by name: those in force, and those a reload removed, kept
/// (frozen) for [`StatsRegistry::KEEP_REMOVED`] so that scrapes see their last values and
/// a policy that comes back soon under its name goes on counting, but no longer and at
/// most [`StatsRegistry::MAX_REMOVED`] of them: a policy generator that renames its
/// policies at each reload must not grow the gateway's memory and `/metrics` for ever. A
/// policy that comes back after its counters were forgotten starts again from 0, which
/// Prometheus takes as a counter reset.
#[derive(Default)]
struct StatsRegistry {
    /// The counters, and since when the policy is out of force (`None`: in force).
    by_name: HashMap<String, (Arc<PolicyStats>, Option<Instant>)>,
    next_id: u32,
}

impl StatsRegistry {
    const KEEP_REMOVED: Duration = Duration::from_secs(15 * 60);
    const MAX_REMOVED: usize = 10_000;

    /// The counters of policy `name`, in force again if it had been removed.
    fn in_force(&mut self, name: &str, workers: usize) -> Arc<PolicyStats> {
        if let Some((stats, removed)) = self.by_name.get_mut(name) {
            *removed = None;
            return stats.clone();
        }
        let id = self.next_id;
        // Never FlowEntry::NO_POLICY (u32::MAX); ids repeat only after 4 billion names.
        self.next_id = (id + 1) % u32::MAX;
        let stats = Arc::new(PolicyStats::new(name, id, workers));
        self.by_name.insert(name.to_owned(), (stats.clone(), None));
        stats
    }

    /// Marks every policy but those of `in_force` removed (since `now`, if it was not yet).
    fn removed_except(&mut self, in_force: &[Actions], now: Instant) {
        let live: std::collections::HashSet<u32> = in_force.iter().map(|a| a.stats.id).collect();
        for (stats, removed) in self.by_name.values_mut() {
            if !live.contains(&stats.id) && removed.is_none() {
                *removed = Some(now);
            }
        }
        self.forget_removed(now);
    }

    /// Forgets the counters of policies removed longer than [`Self::KEEP_REMOVED`] ago, and
    /// the oldest beyond [`Self::MAX_REMOVED`].
    fn forget_removed(&mut self, now: Instant) {
        self.by_name
            .retain(|_, (_, removed)| removed.is_none_or(|t| now - t < Self::KEEP_REMOVED));
        let mut removed: Vec<(Instant, u32)> = self
            .by_name
            .values()
            .filter_map(|(s, r)| r.map(|t| (t, s.id)))
            .collect();
        if removed.len() > Self::MAX_REMOVED {
            removed.sort_unstable();
            let excess = removed.len() - Self::MAX_REMOVED;
            let oldest: std::collections::HashSet<u32> =
                removed[..excess].iter().map(|&(_, id)| id).collect();
            self.by_name.retain(|_, (s, _)| !oldest.contains(&s.id));
        }
    }
}

/// A compiled, immutable set of policies with its generation.
#[derive(Debug)]
pub struct PolicySet {
    pub generation: u64,
    pub table: PolicyTable,
    /// Indexed by [`PolicyId`].
    pub actions: Vec<Actions>,
}

impl PolicySet {
    #[inline]
    pub fn actions(&self, id: PolicyId) -> &Actions {
        &self.actions[id as usize]
    }

    /// Whether `id` names a policy of this set.
    pub fn has(&self, id: PolicyId) -> bool {
        (id as usize) < self.actions.len()
    }
}

/// What the shapers of every published set are built with.
#[derive(Debug, Clone, Copy)]
pub struct ShaperSettings {
    pub tsc_hz: u64,
    /// SPEC §3 `shaper.max_delay_ms` in TSC cycles; `u64::MAX` for none (replay).
    pub max_delay_cycles: u64,
}

/// Owned by the control side: publishes new sets and keeps the per-name registries.
pub struct Publisher {
    current: Mutex<Arc<PolicySet>>,
    /// Sets replaced by a publish that some worker may still hold: dropped here, by
    /// [`Publisher::collect`] on the control side, once no worker does. Otherwise the last
    /// worker to let go of a set would free it (its table, its actions) inside its poll
    /// loop: milliseconds for tens of thousands of policies, enough to overflow an RX ring.
    retired: Mutex<Vec<Arc<PolicySet>>>,
    generation: AtomicU64,
    stats: Mutex<StatsRegistry>,
    shapers: ShaperRegistry,
    settings: ShaperSettings,
    workers: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher(generation {})", self.generation())
    }
}

impl Publisher {
    /// Publishes `table` as generation 1 for `workers` workers.
    pub fn new(
        table: PolicyTable,
        workers: usize,
        settings: ShaperSettings,
    ) -> Result<Arc<Publisher>, String> {
        let empty = PolicySet {
            generation: 0,
            table: PolicyTable::empty(),
            actions: Vec::new(),
        };
        let p = Publisher {
            current: Mutex::new(Arc::new(empty)),
            retired: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            stats: Mutex::new(StatsRegistry::default()),
            shapers: ShaperRegistry::new(),
            settings,
            workers,
        };
        p.publish(table)?;
        Ok(Arc::new(p))
    }

    /// Publishes a new table; returns its generation. Existing flows are classified
    /// again at their next packet; shaper state carries over by policy name. Fails (and
    /// changes nothing) only if a throttle is outside what the shapers can hold.
    pub fn publish(&self, table: PolicyTable) -> Result<u64, String> {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let set = {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            Arc::new(self.build_set(table, generation, &mut stats)?)
        };
        self.shapers
            .retain(set.table.policies().iter().map(|p| p.name.as_str()));
        // Build first, then swap: the lock is held only for the pointer store.
        let old = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let old = std::mem::replace(&mut *cur, set);
            self.generation.store(generation, Ordering::Release);
            old
        };
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.push(old);
        Publisher::drop_unheld(&mut retired);
        Ok(generation)
    }

    /// Drops the replaced sets no worker holds any more. The control side calls it now and
    /// then (every publish does too); a worker's refresh then never frees a set.
    pub fn collect(&self) {
        Publisher::drop_unheld(&mut self.retired.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Replaced sets still held by some worker.
    pub fn retired(&self) -> usize {
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn drop_unheld(retired: &mut Vec<Arc<PolicySet>>) {
        // Only `current` hands out clones, and a retired set is no longer there: a count of
        // one stays one.
        retired.retain(|set| Arc::strong_count(set) > 1);
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Counters of the policies in force and of those a reload removed lately (see
    /// [`StatsRegistry`]), by name.
    pub fn all_stats(&self) -> Vec<Arc<PolicyStats>> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.forget_removed(Instant::now());
        let mut v: Vec<_> = stats.by_name.values().map(|(s, _)| s.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn build_set(
        &self,
        table: PolicyTable,
        generation: u64,
        registry: &mut StatsRegistry,
    ) -> Result<PolicySet, String> {
        // Every throttle is checked before anything is registered: a set that fails
        // changes nothing (no counters, no shapers).
        let configs = table
            .policies()
            .iter()
            .map(|p| {
                let Some(t) = &p.throttle else {
                    return Ok(None);
                };
                let (hz, max_delay) = (self.settings.tsc_hz, self.settings.max_delay_cycles);
                ShaperConfig::from_throttle(t, hz, max_delay)
                    .map(|cfg| Some((t.scope, cfg)))
                    .map_err(|e| format!("policy \"{}\": throttle: {e}", p.name))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let shapers = table
            .policies()
            .iter()
            .zip(configs)
            .map(|(p, config)| {
                config
                    .map(|(scope, cfg)| self.shapers.shaper_for(&p.name, scope, cfg).map(Box::new))
                    .transpose()
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut actions = Vec::with_capacity(table.len());
        for (p, shaper) in table.policies().iter().zip(shapers) {
            let stats = registry.in_force(&p.name, self.workers);
            actions.push(Actions {
                dscp: p.dscp,
                pcp: p.priority_8021p,
                shaper,
                counters: stats.per_worker.clone(),
                stats,
            });
        }
        registry.removed_except(&actions, Instant::now());
        Ok(PolicySet {
            generation,
            table,
            actions,
        })
    }

    /// A worker's view, starting at the current set.
    pub fn subscribe(self: &Arc<Self>) -> Subscriber {
        Subscriber {
            publisher: self.clone(),
            set: self.current(),
        }
    }
}

/// A worker's handle on the published set.
#[derive(Debug)]
pub struct Subscriber {
    publisher: Arc<Publisher>,
    set: Arc<PolicySet>,
}

impl Subscriber {
    /// Picks up a newly published set, if any. Called once per burst; never blocks.
    #[inline]
    pub fn refresh(&mut self) {
        if self.publisher.generation.load(Ordering::Relaxed) == self.set.generation {
            return;
        }
        if let Ok(cur) = self.publisher.current.try_lock() {
            self.set = cur.clone();
        }
    }

    #[inline]
    pub fn set(&self) -> &PolicySet {
        &self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher for `workers` workers of a TSC at `tsc_hz`, publishing `policies`.
    fn publisher(tsc_hz: u64, workers: usize, policies: &str) -> Arc<Publisher> {
        let settings = ShaperSettings {
            tsc_hz,
            max_delay_cycles: u64::MAX,
        };
        Publisher::new(table(policies), workers, settings).unwrap()
    }

    fn table(text: &str) -> PolicyTable {
        control::parse_policies("test.json", text)
            .expect("valid policies")
            .0
    }

    #[test]
    fn actions_are_one_cache_line() {
        assert_eq!(std::mem::size_of::<Actions>(), 64);
    }

    #[test]
    fn workers_pick_up_a_new_generation_and_counters_survive_by_name() {
        let p = publisher(
            1_000_000_000,
            2,
            r#"{"policies":[{"name":"a","dscp":10},{"name":"b","dscp":20}]}"#,
        );
        let mut sub = p.subscribe();
        assert_eq!(sub.set().generation, 1);
        sub.set().actions(0).counters(1).packets.add(5);

        let g = p
            .publish(table(
                r#"{"policies":[{"name":"b","dscp":30},{"name":"a","dscp":12}]}"#,
            ))
            .unwrap();
        assert_eq!(g, 2);
        assert_eq!(
            sub.set().generation,
            1,
            "nothing changes until the worker looks"
        );
        sub.refresh();
        assert_eq!(sub.set().generation, 2);
        let a = sub.set().actions(1);
        assert_eq!((a.stats.name.as_str(), a.dscp), ("a", Some(12)));
        assert_eq!(
            a.stats.total(|c| &c.packets),
            5,
            "a's counters carried over"
        );
        assert_eq!(p.all_stats().len(), 2);
    }

    /// A worker that lets go of a replaced set never frees it: the publisher does, on the
    /// control side, once no worker holds it.
    #[test]
    fn replaced_sets_are_freed_by_the_publisher_not_by_a_worker() {
        let p = publisher(1_000_000_000, 2, r#"{"policies":[{"name":"a","dscp":10}]}"#);
        let (mut w0, mut w1) = (p.subscribe(), p.subscribe());
        let first = Arc::downgrade(&p.current());
        p.publish(table(r#"{"policies":[{"name":"a","dscp":12}]}"#))
            .unwrap();
        w0.refresh();
        p.collect();
        assert!(first.upgrade().is_some(), "worker 1 still holds it");
        w1.refresh();
        assert!(
            first.upgrade().is_some(),
            "the last worker to let go did not free it"
        );
        assert_eq!(p.retired(), 1);
        p.collect();
        assert!(first.upgrade().is_none(), "freed by the publisher");
        assert_eq!(p.retired(), 0);
    }

    /// A set that cannot be published changes nothing: no counters appear for its names.
    #[test]
    fn a_failed_publish_registers_nothing() {
        // A TSC no shaper can count in: every throttle fails.
        let p = publisher(1, 1, r#"{"policies":[{"name":"a","dscp":10}]}"#);
        let bad = table(r#"{"policies":[{"name":"x","dscp":1},{"name":"y","throttle":"1Mbps"}]}"#);
        let err = p.publish(bad).unwrap_err();
        assert!(err.starts_with("policy \"y\": throttle:"), "{err}");
        let names: Vec<String> = p.all_stats().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, ["a"]);
        assert_eq!(p.generation(), 1);
    }

    /// Removed policies' counters stay a while (frozen), then go; at most
    /// `MAX_REMOVED` of them stay, the most recently removed.
    #[test]
    fn removed_policies_counters_are_kept_for_a_while_and_bounded() {
        let mut r = StatsRegistry::default();
        let t0 = Instant::now();
        let a = r.in_force("a", 1);
        r.removed_except(&[], t0);
        assert_eq!(r.by_name.len(), 1, "kept after removal");
        assert!(
            Arc::ptr_eq(&r.in_force("a", 1), &a),
            "back under its name: same counters"
        );
        r.removed_except(&[], t0);
        r.forget_removed(t0 + StatsRegistry::KEEP_REMOVED);
        assert!(r.by_name.is_empty(), "forgotten after KEEP_REMOVED");
        assert_ne!(r.in_force("a", 1).id, a.id, "new counters, a new id");

        let mut r = StatsRegistry::default();
        let names = |from: usize, n: usize| (from..from + n).map(|i| format!("p{i}"));
        for name in names(0, 10) {
            r.in_force(&name, 1);
        }
        r.removed_except(&[], t0);
        for name in names(10, StatsRegistry::MAX_REMOVED) {
            r.in_force(&name, 1);
        }
        r.removed_except(&[], t0 + Duration::from_secs(1));
        assert_eq!(r.by_name.len(), StatsRegistry::MAX_REMOVED);
        assert!(!r.by_name.contains_key("p9") && r.by_name.contains_key("p10"));
    }
}
