//! The control thread of `qosgw run`: reloads policies (SIGHUP, a change of the policy
//! file, `POST /-/reload`), serves `/metrics`, `/healthz` and `/policies`, and raises the
//! workers' stop flag on SIGINT/SIGTERM. It only reads the workers' counters and publishes
//! new policy sets; the workers never wait for it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::coalesce::Coalesce;
use control::http::{self, Request, Response, Route};
use control::metrics::{self, MetricsSnapshot, PolicyMetrics, PortMetrics, WorkerMetrics};
use control::process::ProcessMetrics;
use control::watch::{FileWatch, Seen};
use dataplane::counters::{malformed_label, Eviction, WorkerCounters, MALFORMED_REASONS};
use dataplane::dpdk::{CpuSet, Link, Port};
use dataplane::pipeline::Side;
use dataplane::policy_set::Publisher;

use crate::liveness::Liveness;
use crate::notify::Notifier;
use crate::signals;

/// What the control thread is handed once the gateway is up.
pub struct ControlContext {
    pub publisher: Arc<Publisher>,
    pub workers: Vec<Arc<WorkerCounters>>,
    pub ports: [Arc<Port>; 2],
    pub policies_path: PathBuf,
    /// The policy file's watch, started before the file was first read.
    pub watch: FileWatch,
    pub listener: TcpListener,
    /// Where this thread and the HTTP thread run: off the workers' CPUs when there are
    /// CPUs left ([`dataplane::dpdk::Eal::control_cpus`]).
    pub cpus: Option<CpuSet>,
    /// Raised to stop the workers (and this thread).
    pub stop: Arc<AtomicBool>,
    /// systemd's notification socket, when started by a `Type=notify` unit.
    pub notifier: Option<Notifier>,
}

/// How often the control thread looks at signals and the policy file.
const TICK: Duration = Duration::from_millis(200);

struct Controller {
    ctx: ControlContext,
    reloads_ok: AtomicU64,
    reloads_error: AtomicU64,
    /// One reload at a time, whoever triggers it; those asked for while one runs share
    /// the next.
    reloads: Coalesce<Result<u64, String>>,
    /// The policy file's watch: the tick polls it, and every reload marks the file it
    /// reads as seen, so that a change a signal or a request reloaded is not loaded again.
    watch: Mutex<FileWatch>,
    /// Polls and busy polls per worker at the previous scrape, for the busy ratio.
    last_polls: Mutex<Vec<(u64, u64)>>,
    /// Whether each worker still polls (`/healthz`, the watchdog).
    liveness: Mutex<Liveness>,
    /// Each port's link as the link watch last read it, for `/metrics`: [`LINK_UNKNOWN`],
    /// [`LINK_DOWN`] or [`LINK_UP`].
    links: [AtomicU8; 2],
}

const LINK_UNKNOWN: u8 = 0;
const LINK_DOWN: u8 = 1;
const LINK_UP: u8 = 2;

pub fn run(ctx: ControlContext) {
    // Before the HTTP thread starts, so that it inherits the placement. Unpinned, both were
    // woken on worker 0's CPU (net_tap's RX signals interrupt their sleeps) and preempted
    // it: 9 400 times a second during a TCP transfer through taps, 150 once moved.
    if let Some(cpus) = ctx.cpus {
        if let Err(e) = cpus.pin_current_thread() {
            crate::out::warn(&format!(
                "cannot move the control thread to CPUs {cpus}: {e}"
            ));
        }
    }
    let listener = match ctx.listener.try_clone() {
        Ok(l) => l,
        Err(e) => {
            errln!("qosgw: metrics listener unusable: {e}; stopping");
            ctx.stop.store(true, Ordering::SeqCst);
            return;
        }
    };
    let c = Arc::new(Controller {
        last_polls: Mutex::new(vec![(0, 0); ctx.workers.len()]),
        liveness: Mutex::new(Liveness::new(ctx.workers.len(), Instant::now())),
        links: [AtomicU8::new(LINK_UNKNOWN), AtomicU8::new(LINK_UNKNOWN)],
        watch: Mutex::new(ctx.watch.clone()),
        ctx,
        reloads_ok: AtomicU64::new(0),
        reloads_error: AtomicU64::new(0),
        reloads: Coalesce::new(),
    });
    // The links from the first scrape on, not a tick later.
    let mut links = LinkWatch::default();
    links.poll(&c.ctx.ports, &c.links);
    let server = {
        let (c, stop) = (c.clone(), c.ctx.stop.clone());
        std::thread::Builder::new()
            .name("qosgw-http".into())
            .spawn(move || http::serve(listener, &stop, move |req| c.handle(req)))
    };
    // systemd hears from a thread of its own, which looks at the workers only: a reload
    // that takes long (a slow file system) must not get a forwarding gateway killed.
    let notifier = c.ctx.notifier.as_ref();
    let _notifying = notifier.and_then(|_| {
        let c = c.clone();
        let spawned = std::thread::Builder::new()
            .name("qosgw-notify".into())
            .spawn(move || notify_systemd(&c));
        spawned.ok()
    });
    let mut stuck_before = None;
    while !c.ctx.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        // A stop raised during the tick: no reload after it (it would be logged after
        // the gateway's stop line).
        if c.ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        if signals::take_hangup() {
            let _ = c.reload("SIGHUP");
        }
        let seen = c.watch.lock().unwrap_or_else(|p| p.into_inner()).poll();
        match seen {
            Seen::Changed => {
                let _ = c.reload("policy file changed");
            }
            Seen::Gone => errln!(
                "qosgw: policy file {} is gone; the policies in force stay (generation {})",
                c.ctx.policies_path.display(),
                c.ctx.publisher.generation()
            ),
            Seen::Same | Seen::Changing => {}
        }
        // Sets the workers have all let go of are freed here, not in a worker's loop.
        c.ctx.publisher.collect();
        links.poll(&c.ctx.ports, &c.links);
        let stuck = c.stuck_worker();
        match (stuck, stuck_before) {
            (Some((w, still)), None) => errln!(
                "qosgw: worker {w} has not polled for {:.1} s; /healthz answers 503{}",
                still.as_secs_f64(),
                if notifier.is_some_and(Notifier::wants_pings) {
                    " and systemd's watchdog is no longer fed"
                } else {
                    ""
                }
            ),
            (None, Some((w, _))) => errln!("qosgw: worker {w} polls again"),
            _ => {}
        }
        stuck_before = stuck;
    }
    notifier.inspect(|n| n.stopping());
    if let Ok(server) = server {
        let _ = server.join();
    }
}

/// `READY=1` once every worker has polled (the gateway forwards), then `WATCHDOG=1` every
/// tick while every worker polls, until the stop.
fn notify_systemd(c: &Controller) {
    let Some(n) = c.ctx.notifier.as_ref() else {
        return;
    };
    let started = || c.ctx.workers.iter().all(|w| w.polls.get() > 0);
    while !started() {
        if c.ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    n.send("READY=1");
    while n.wants_pings() && !c.ctx.stop.load(Ordering::SeqCst) {
        if c.stuck_worker().is_none() {
            n.send("WATCHDOG=1");
        }
        std::thread::sleep(TICK);
    }
}

/// Reads each port's link (the only reader: see [`Port::link`]) into `states` for
/// `/metrics`, and logs it when it changes, and a link found down at start.
#[derive(Default)]
struct LinkWatch {
    last: [Option<Link>; 2],
}

impl LinkWatch {
    fn poll(&mut self, ports: &[Arc<Port>; 2], states: &[AtomicU8; 2]) {
        for side in Side::BOTH {
            let port = &ports[side.index()];
            // A driver that cannot tell: nothing to log, and no link series.
            let Some(now) = port.link() else { continue };
            states[side.index()].store(if now.up { LINK_UP } else { LINK_DOWN }, Ordering::Relaxed);
            let last = self.last[side.index()].replace(now);
            // Up at start goes without saying (the start line); down never does.
            if link_news(last, now) {
                errln!("qosgw: {} port {}: link {now}", side.name(), port.name());
            }
        }
    }
}

/// Whether a port's link `now`, after `last` (None: not looked at yet), is worth a line.
fn link_news(last: Option<Link>, now: Link) -> bool {
    match last {
        None => !now.up,
        Some(last) => last != now,
    }
}

impl Controller {
    /// Loads, validates and compiles the policy file, then publishes it; on any error the
    /// running set stays in force. Returns the new generation. One reload runs at a time;
    /// asked for while one runs, it waits for that one and shares the next with whoever
    /// else asked meanwhile.
    fn reload(&self, why: &str) -> Result<u64, String> {
        self.reloads.run(|| self.reload_now(why))
    }

    fn reload_now(&self, why: &str) -> Result<u64, String> {
        let path = &self.ctx.policies_path;
        self.watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark_seen();
        // The file's errors are logged one a line as they are found; the summary line then
        // only says what became of the reload. The caller gets the first error either way.
        let result = match control::load_policy_file(path) {
            Ok((table, warnings)) => {
                warnings
                    .iter()
                    .for_each(|w| crate::out::warn(&w.to_string()));
                let n = table.len();
                match self.ctx.publisher.publish(table) {
                    Ok(generation) => Ok((generation, n)),
                    Err(e) => Err((e.clone(), e)),
                }
            }
            Err(errors) => {
                errors.iter().for_each(|e| errln!("qosgw: {e}"));
                let n = errors.len();
                let summary = format!("{n} error{} above", if n == 1 { "" } else { "s" });
                Err((crate::first_error(&errors, path), summary))
            }
        };
        match result {
            Ok((generation, n)) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                errln!(
                    "qosgw: reloaded {} ({why}): {n} policies, generation {generation}",
                    path.display()
                );
                Ok(generation)
            }
            Err((e, logged)) => {
                self.reloads_error.fetch_add(1, Ordering::Relaxed);
                errln!(
                    "qosgw: reload ({why}) failed, keeping generation {}: {logged}",
                    self.ctx.publisher.generation()
                );
                Err(e)
            }
        }
    }

    fn handle(&self, req: &Request) -> Response {
        match http::route(req) {
            Err(refused) => refused,
            Ok(Route::Healthz) => match self.stuck_worker() {
                None => Response::text(200, "ok\n"),
                Some((w, still)) => Response::text(
                    503,
                    format!(
                        "worker {w} has not polled for {:.1} s\n",
                        still.as_secs_f64()
                    ),
                ),
            },
            Ok(Route::Metrics) => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: metrics::render(&self.snapshot()),
            },
            Ok(Route::Policies) => {
                let set = self.ctx.publisher.current();
                let body = serde_json::json!({
                    "generation": set.generation,
                    "policies": set.table.policies(),
                });
                Response::json(200, format!("{body}\n"))
            }
            Ok(Route::Reload) => match self.reload("POST /-/reload") {
                Ok(g) => {
                    Response::json(200, format!("{}\n", serde_json::json!({ "generation": g })))
                }
                Err(e) => Response::json(
                    400,
                    format!(
                        "{}\n",
                        serde_json::json!({ "error": e, "generation": self.ctx.publisher.generation() })
                    ),
                ),
            },
        }
    }

    /// The first worker whose poll count has stood still too long, if any.
    fn stuck_worker(&self) -> Option<(usize, Duration)> {
        let polls: Vec<u64> = self.ctx.workers.iter().map(|c| c.polls.get()).collect();
        let mut liveness = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        liveness.observe(&polls, Instant::now())
    }

    /// Everything SPEC §6 exports, read from the workers' counters and DPDK's port stats.
    fn snapshot(&self) -> MetricsSnapshot {
        let w = &self.ctx.workers;
        let total = |f: &dyn Fn(&WorkerCounters) -> u64| w.iter().map(|c| f(c)).sum::<u64>();
        let ports = Side::BOTH
            .iter()
            .map(|&side| {
                let s = self.ctx.ports[side.index()].stats();
                PortMetrics {
                    port: side.name().to_owned(),
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_missed: s.rx_missed,
                    no_mbuf: s.rx_no_mbuf,
                    tx_full: total(&|c| c.tx_full[side.index()].get()),
                    handoff_full: total(&|c| c.handed_dropped[side.index()].get()),
                    rx_errors: s.rx_errors,
                    tx_errors: s.tx_errors,
                    link_up: match self.links[side.index()].load(Ordering::Relaxed) {
                        LINK_UP => Some(true),
                        LINK_DOWN => Some(false),
                        _ => None,
                    },
                }
            })
            .collect();
        let policies = self
            .ctx
            .publisher
            .all_stats()
            .iter()
            .map(|p| {
                let t = p.totals();
                PolicyMetrics {
                    name: p.name.clone(),
                    packets: t.packets,
                    bytes: t.bytes,
                    flows: t.flows,
                    delayed: t.delayed,
                    dropped: t.dropped,
                }
            })
            .collect();
        let malformed = (0..MALFORMED_REASONS)
            .map(|slot| {
                (
                    malformed_label(slot).to_owned(),
                    total(&|c| c.malformed_packets[slot].get()),
                )
            })
            .collect();
        let mut last = self.last_polls.lock().unwrap_or_else(|p| p.into_inner());
        let workers = w
            .iter()
            .zip(last.iter_mut())
            .map(|(c, last)| {
                let (polls, busy) = (c.polls.get(), c.busy_polls.get());
                let (dp, db) = (polls - last.0, busy - last.1);
                *last = (polls, busy);
                WorkerMetrics {
                    cache_entries: c.cache_entries.get(),
                    cache_hits: c.cache_hits.get(),
                    cache_misses: c.cache_misses.get(),
                    evictions_idle: c.evictions[Eviction::Idle as usize].get(),
                    evictions_full: c.evictions[Eviction::Full as usize].get(),
                    evictions_tcp_close: c.evictions[Eviction::TcpClose as usize].get(),
                    backlog_packets: c.shaper_backlog_packets.get(),
                    backlog_bytes: c.shaper_backlog_bytes.get(),
                    busy_ratio: if dp == 0 { 0.0 } else { db as f64 / dp as f64 },
                }
            })
            .collect();
        MetricsSnapshot {
            ports,
            policies,
            unmatched_packets: total(&|c| c.unmatched_packets.get()),
            non_ip_packets: total(&|c| c.non_ip_packets.get()),
            malformed,
            workers,
            policy_generation: self.ctx.publisher.generation(),
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_error: self.reloads_error.load(Ordering::Relaxed),
            process: ProcessMetrics::read(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_news_when_it_changes_or_is_down_at_start() {
        let up = Link {
            up: true,
            speed_mbps: 10_000,
            full_duplex: true,
        };
        let down = Link {
            up: false,
            speed_mbps: 0,
            full_duplex: true,
        };
        let slower = Link {
            speed_mbps: 1_000,
            ..up
        };
        assert!(
            !link_news(None, up),
            "up at start: the start line says enough"
        );
        assert!(link_news(None, down));
        assert!(!link_news(Some(up), up));
        assert!(!link_news(Some(down), down));
        assert!(link_news(Some(up), down));
        assert!(link_news(Some(down), up));
        assert!(link_news(Some(up), slower), "a new speed");
    }
}
