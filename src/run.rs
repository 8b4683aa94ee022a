//! `qosgw run`: the gateway on real or tap ports until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::Args;
use control::config::{load_gateway_config, GatewayConfig as FileConfig};
use dataplane::counters::{self, Counter, WorkerCounters};
use dataplane::dpdk::{lcores_arg, Eal};
use dataplane::flow_cache::{FlowCache, Timeouts};
use dataplane::gateway::{Gateway, GatewayConfig};
use dataplane::pipeline::PipelineConfig;
use dataplane::policy_set::{Publisher, ShaperSettings};
use dataplane::shaper::ShaperConfig;
use dataplane::worker::StopWhen;

use crate::control_thread::{self, ControlContext};
use crate::signals;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The gateway configuration (JSON, SPEC §3).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Extra EAL arguments, after `--` (appended to the config's `eal`).
    #[arg(last = true, value_name = "EAL_ARGS")]
    eal: Vec<String>,
}

pub fn run(args: &RunArgs) -> Result<(), String> {
    // First: a SIGHUP from a config tool while the gateway starts must not kill it, and a
    // SIGTERM then is a stop like any other.
    signals::install();
    let cfg = load_gateway_config(&args.config)
        .map_err(|errors| crate::first_error(&errors, &args.config))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cfg.workers > cpus {
        crate::out::warn(&format!(
            "{} workers on {cpus} CPUs: workers poll without pause, so those sharing a CPU \
             slow each other down",
            cfg.workers
        ));
    }
    let caches = cfg.workers * FlowCache::bytes_for(cfg.flow_cache_capacity);
    if let Some(usable) = crate::sysmem::usable().filter(|&m| caches > m / 2) {
        crate::out::warn(&format!(
            "flow caches of {} flows for each of {} worker(s) take about {} MB once full, more \
             than half of the {} MB this machine gives qosgw (flow_cache.capacity_per_worker)",
            cfg.flow_cache_capacity,
            cfg.workers,
            caches >> 20,
            usable >> 20
        ));
    }
    // Watched from before it is read: a change while the gateway starts is a change.
    let watch = control::watch::FileWatch::new(&cfg.policies);
    let table = crate::load_policies(&cfg.policies)?;
    // Bind before DPDK starts: a port in use is a clear error, not a half-started gateway.
    let listener = control::http::bind(cfg.metrics_listen).map_err(|e| {
        format!(
            "cannot listen on {} (metrics_listen): {e}",
            cfg.metrics_listen
        )
    })?;

    // The control thread starts before the EAL, which pins the calling thread to the main
    // lcore's CPU: spawned later it would inherit that pinning. Once the EAL is up it moves
    // itself to the CPUs no worker polls (ControlContext::cpus).
    let (to_control, from_main) = mpsc::channel::<ControlContext>();
    let (done, control_done) = mpsc::channel::<()>();
    let control = std::thread::Builder::new()
        .name("qosgw-control".into())
        .spawn(move || {
            if let Ok(ctx) = from_main.recv() {
                control_thread::run(ctx);
            }
            let _ = done.send(());
        })
        .map_err(|e| format!("cannot start the control thread: {e}"))?;

    let result = start(args, &cfg, table, watch, listener, to_control);
    // The workers have stopped. The control thread follows within a tick, unless a reload
    // is stuck reading the policy file (a hung network mount): then the gateway exits
    // without it rather than hang in its stop.
    match control_done.recv_timeout(CONTROL_STOP_LIMIT) {
        Err(mpsc::RecvTimeoutError::Timeout) => errln!(
            "qosgw: the control thread did not stop within {CONTROL_STOP_LIMIT:?} (a policy \
             reload still reading its file?); exiting without it"
        ),
        _ => {
            let _ = control.join();
        }
    }
    result
}

/// Raises a stop flag when dropped.
struct RaiseOnDrop(Arc<AtomicBool>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long a stopping gateway waits for its control thread.
const CONTROL_STOP_LIMIT: Duration = Duration::from_secs(3);

fn start(
    args: &RunArgs,
    cfg: &FileConfig,
    table: control::PolicyTable,
    watch: control::watch::FileWatch,
    listener: std::net::TcpListener,
    to_control: mpsc::Sender<ControlContext>,
) -> Result<(), String> {
    if signals::stop_requested() {
        errln!("qosgw: stopping (signal) before the ports were started");
        return Ok(());
    }
    let eal = Eal::init(&eal_args(cfg, &args.eal)).map_err(|e| e.to_string())?;
    let hz = eal.tsc_hz();
    let settings = ShaperSettings {
        tsc_hz: hz,
        max_delay_cycles: ShaperConfig::max_delay_cycles_from_ms(cfg.max_delay_ms, hz),
    };
    let publisher = Publisher::new(table, cfg.workers, settings)?;
    // SPEC §3's settings over the data path's defaults (the TCP-close timeout has none).
    let defaults = PipelineConfig::defaults(hz);
    let pipeline = PipelineConfig {
        trust_dscp: cfg.trust_dscp,
        drop_malformed: cfg.malformed_drop,
        flow_capacity: cfg.flow_cache_capacity,
        timeouts: Timeouts {
            idle: cfg.idle_timeout_s * hz,
            ..defaults.timeouts
        },
    };
    let gcfg = GatewayConfig {
        ports: [cfg.inside.clone(), cfg.outside.clone()],
        workers: cfg.workers,
        mbufs: (16383 * cfg.workers as u32).max(16383),
        data_room: GatewayConfig::JUMBO_DATA_ROOM,
        lossless: false,
        passthrough: false,
        steer: cfg.workers > 1,
        pipeline,
    };
    let gateway = Gateway::new(&eal, &gcfg, &publisher).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    // However this ends, the control thread is told to stop too.
    let _raise = RaiseOnDrop(stop.clone());
    let ctx = ControlContext {
        publisher: publisher.clone(),
        workers: gateway.counters().to_vec(),
        ports: gateway.ports().clone(),
        policies_path: cfg.policies.clone(),
        watch,
        listener,
        cpus: eal.control_cpus(),
        stop: stop.clone(),
        notifier: crate::notify::Notifier::from_env(),
    };
    let cpus = ctx.cpus;
    // The address bound, not the configured one: port 0 picks a free port.
    let metrics = (ctx.listener.local_addr()).unwrap_or(cfg.metrics_listen);
    to_control
        .send(ctx)
        .map_err(|_| "the control thread ended early".to_owned())?;
    signals::stop_on_signal(stop.clone(), cpus)
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    errln!(
        "qosgw: forwarding between {} (inside) and {} (outside) with {} worker(s), {} policies (generation {}); metrics on http://{}/metrics",
        cfg.inside,
        cfg.outside,
        cfg.workers,
        publisher.current().table.len(),
        publisher.generation(),
        metrics
    );
    let stops = (0..cfg.workers)
        .map(|_| StopWhen::Flag(stop.clone()))
        .collect();
    let report = gateway.run(stops).map_err(|e| e.to_string())?;
    let workers = || report.workers.iter().map(|w| &**w);
    let handed = counters::sum(workers(), |w| {
        w.handed_dropped.iter().map(Counter::get).sum()
    });
    let malformed = if cfg.malformed_drop {
        counters::sum(workers(), WorkerCounters::malformed_total)
    } else {
        0
    };
    let tx_full = counters::sum(workers(), |w| w.tx_full.iter().map(Counter::get).sum());
    errln!(
        "qosgw: stopped; {}",
        stop_line(
            report.ports[0].rx_packets + report.ports[1].rx_packets,
            report.ports[0].tx_packets + report.ports[1].tx_packets,
            &[
                (
                    counters::sum(workers(), |w| w.shaper_dropped.get()),
                    "by shapers (tail drop)"
                ),
                (
                    counters::sum(workers(), |w| w.shaper_stop_dropped.get()),
                    "still held by shapers"
                ),
                (malformed, "malformed"),
                // (A driver's own TX errors are not among them: net_tap counts a frame it
                // could not write there and refuses it, so it is in `tx_full` already.)
                (tx_full, "refused by a TX queue"),
                (handed, "between workers (an inbox full or stopped)"),
            ],
        )
    );
    Ok(())
}

/// The books of a stopped gateway, for its last line: frames in, out, and each way they
/// were dropped (the first two ways always, the others when there were any), so that the
/// line adds up by itself: in = out + dropped.
fn stop_line(frames_in: u64, out: u64, dropped: &[(u64, &str)]) -> String {
    let shown: Vec<String> = (dropped.iter().enumerate())
        .filter(|&(i, &(n, _))| i < 2 || n > 0)
        .map(|(_, (n, why))| format!("{n} {why}"))
        .collect();
    format!(
        "{frames_in} frames in, {out} out; dropped: {}",
        shown.join(", ")
    )
}

/// The config's EAL arguments plus the command line's, with one lcore per worker when
/// neither names lcores, and DPDK's log at notice level when neither sets it.
fn eal_args(cfg: &FileConfig, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = cfg.eal.iter().chain(extra).cloned().collect();
    let names_lcores = args.iter().any(|a| {
        a == "-l" || a == "-c" || a.starts_with("--lcores") || (a.starts_with("-l") && a.len() > 2)
    });
    if !names_lcores {
        args.push(lcores_arg(cfg.workers));
    }
    // DPDK's start-up chatter (detected CPUs, NUMA nodes, IOVA mode) is INFO; its
    // warnings and errors still show.
    if !args.iter().any(|a| a.starts_with("--log-level")) {
        args.push("--log-level=notice".to_owned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::stop_line;

    #[test]
    fn the_stop_line_shows_the_first_two_drops_always_and_the_others_when_any() {
        let drops = [
            (4680, "late"),
            (0, "held"),
            (0, "malformed"),
            (3, "refused"),
        ];
        assert_eq!(
            stop_line(5000, 317, &drops),
            "5000 frames in, 317 out; dropped: 4680 late, 0 held, 3 refused"
        );
    }
}
