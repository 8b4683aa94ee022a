//! `qosgw run`: the gateway on real or tap ports until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

use clap::Args;
use control::config::{load_gateway_config, GatewayConfig as FileConfig};
use dataplane::dpdk::{lcores_arg, Eal};
use dataplane::flow_cache::Timeouts;
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
    let cfg = load_gateway_config(&args.config)
        .map_err(|errors| crate::first_error(&errors, &args.config))?;
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
    signals::install();

    // The control thread starts before the EAL, which pins the calling thread to the main
    // lcore's CPU: spawned later it would inherit that pinning. Once the EAL is up it moves
    // itself to the CPUs no worker polls (ControlContext::cpus).
    let (to_control, from_main) = mpsc::channel::<ControlContext>();
    let control = std::thread::Builder::new()
        .name("qosgw-control".into())
        .spawn(move || {
            if let Ok(ctx) = from_main.recv() {
                control_thread::run(ctx);
            }
        })
        .map_err(|e| format!("cannot start the control thread: {e}"))?;

    let result = start(args, &cfg, table, watch, listener, to_control);
    let _ = control.join();
    result
}

fn start(
    args: &RunArgs,
    cfg: &FileConfig,
    table: control::PolicyTable,
    watch: control::watch::FileWatch,
    listener: std::net::TcpListener,
    to_control: mpsc::Sender<ControlContext>,
) -> Result<(), String> {
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
        pipeline,
    };
    let gateway = Gateway::new(&eal, &gcfg, &publisher).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = ControlContext {
        publisher: publisher.clone(),
        workers: gateway.counters().to_vec(),
        ports: gateway.ports().clone(),
        policies_path: cfg.policies.clone(),
        watch,
        listener,
        cpus: eal.control_cpus(),
        stop: stop.clone(),
    };
    to_control
        .send(ctx)
        .map_err(|_| "the control thread ended early".to_owned())?;
    errln!(
        "qosgw: forwarding between {} (inside) and {} (outside) with {} worker(s), {} policies (generation {}); metrics on http://{}/metrics",
        cfg.inside,
        cfg.outside,
        cfg.workers,
        publisher.current().table.len(),
        publisher.generation(),
        cfg.metrics_listen
    );
    let stops = (0..cfg.workers)
        .map(|_| StopWhen::Flag(stop.clone()))
        .collect();
    let report = gateway.run(stops).map_err(|e| e.to_string())?;
    let held: u64 = report
        .workers
        .iter()
        .map(|w| w.shaper_stop_dropped.get())
        .sum();
    errln!(
        "qosgw: stopped; {} frames in, {} out, {held} shaped frames still held were dropped",
        report.ports[0].rx_packets + report.ports[1].rx_packets,
        report.ports[0].tx_packets + report.ports[1].tx_packets,
    );
    Ok(())
}

/// The config's EAL arguments plus the command line's, with one lcore per worker when
/// neither names lcores.
fn eal_args(cfg: &FileConfig, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = cfg.eal.iter().chain(extra).cloned().collect();
    let names_lcores = args.iter().any(|a| {
        a == "-l" || a == "-c" || a.starts_with("--lcores") || (a.starts_with("-l") && a.len() > 2)
    });
    if !names_lcores {
        args.push(lcores_arg(cfg.workers));
    }
    args
}
