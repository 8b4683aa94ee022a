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

use control::{PolicyId, PolicyTable, Throttle};

use crate::counters::{Counter, Gauge};

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
    /// Records a packet of `len` bytes leaving at TSC time `at`.
    #[inline]
    pub fn sent(&self, at: u64) {
        if self.first_tx.get() == 0 {
            self.first_tx.set(at);
        }
        self.last_tx.set(at);
    }
}

/// A policy's counters on every worker, summed by readers.
#[derive(Debug)]
pub struct PolicyStats {
    pub name: String,
    per_worker: Box<[PolicyCounters]>,
}

impl PolicyStats {
    fn new(name: &str, workers: usize) -> PolicyStats {
        PolicyStats {
            name: name.to_owned(),
            per_worker: (0..workers).map(|_| PolicyCounters::default()).collect(),
        }
    }

    #[inline]
    pub fn worker(&self, worker: usize) -> &PolicyCounters {
        &self.per_worker[worker]
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

    /// Sums one counter over all workers.
    pub fn total(&self, f: impl Fn(&PolicyCounters) -> &Counter) -> u64 {
        self.per_worker.iter().map(|c| f(c).get()).sum()
    }
}

/// What a worker does for a flow of one policy.
#[derive(Debug)]
pub struct Actions {
    pub dscp: Option<u8>,
    pub pcp: Option<u8>,
    pub throttle: Option<Throttle>,
    pub stats: Arc<PolicyStats>,
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
}

/// Owned by the control side: publishes new sets and keeps the per-name registries.
#[derive(Debug)]
pub struct Publisher {
    current: Mutex<Arc<PolicySet>>,
    generation: AtomicU64,
    stats: Mutex<HashMap<String, Arc<PolicyStats>>>,
    workers: usize,
}

impl Publisher {
    /// Publishes `table` as generation 1 for `workers` workers.
    pub fn new(table: PolicyTable, workers: usize) -> Arc<Publisher> {
        let stats = Mutex::new(HashMap::new());
        let set = Arc::new(build_set(
            table,
            1,
            workers,
            &mut stats.lock().expect("fresh lock"),
        ));
        Arc::new(Publisher {
            current: Mutex::new(set),
            generation: AtomicU64::new(1),
            stats,
            workers,
        })
    }

    /// Publishes a new table; returns its generation. Existing flows are classified
    /// again at their next packet.
    pub fn publish(&self, table: PolicyTable) -> u64 {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let set = {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            Arc::new(build_set(table, generation, self.workers, &mut stats))
        };
        // Build first, then swap: the lock is held only for the pointer store.
        let old = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let old = std::mem::replace(&mut *cur, set);
            self.generation.store(generation, Ordering::Release);
            old
        };
        drop(old);
        generation
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

    /// Counters of every policy ever published, by name (including policies a reload
    /// removed, whose counters stop moving).
    pub fn all_stats(&self) -> Vec<Arc<PolicyStats>> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = stats.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A worker's view, starting at the current set.
    pub fn subscribe(self: &Arc<Self>) -> Subscriber {
        Subscriber {
            publisher: self.clone(),
            set: self.current(),
        }
    }
}

fn build_set(
    table: PolicyTable,
    generation: u64,
    workers: usize,
    registry: &mut HashMap<String, Arc<PolicyStats>>,
) -> PolicySet {
    let actions = table
        .policies()
        .iter()
        .map(|p| Actions {
            dscp: p.dscp,
            pcp: p.priority_8021p,
            throttle: p.throttle,
            stats: registry
                .entry(p.name.clone())
                .or_insert_with(|| Arc::new(PolicyStats::new(&p.name, workers)))
                .clone(),
        })
        .collect();
    PolicySet {
        generation,
        table,
        actions,
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

    fn table(text: &str) -> PolicyTable {
        control::parse_policies("test.json", text)
            .expect("valid policies")
            .0
    }

    #[test]
    fn workers_pick_up_a_new_generation_and_counters_survive_by_name() {
        let p = Publisher::new(
            table(r#"{"policies":[{"name":"a","dscp":10},{"name":"b","dscp":20}]}"#),
            2,
        );
        let mut sub = p.subscribe();
        assert_eq!(sub.set().generation, 1);
        sub.set().actions(0).stats.worker(1).packets.add(5);

        let g = p.publish(table(
            r#"{"policies":[{"name":"b","dscp":30},{"name":"a","dscp":12}]}"#,
        ));
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
}
