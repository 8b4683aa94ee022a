//! `qosgw`: the command line (SPEC §4).

mod bench;
mod policy_cmd;
mod replay;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// qosgw: a bump-in-the-wire QoS gateway on DPDK. Policies in the style of Windows
/// Policy-based QoS mark DSCP and throttle traffic between an inside and an outside port.
#[derive(Parser)]
#[command(name = "qosgw", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a capture through the real dataplane on DPDK net_pcap devices (no NIC, no
    /// hugepages) and print a per-policy summary. Every input frame is treated as outbound.
    Replay(replay::ReplayArgs),
    /// Measure the full worker pipeline at full speed on two virtual ports replaying N
    /// flows from memory, against M generated policies.
    Bench(bench::BenchArgs),
    /// Check a policy file, or explain which policy wins for a flow.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => replay::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Policy(cmd) => return policy_cmd::run(&cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("qosgw: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and compiles a policy file; warnings go to stderr, errors become one line (the
/// first error, and how many more `qosgw policy check` would show).
fn load_policies(path: &Path) -> Result<control::PolicyTable, String> {
    match control::load_policy_file(path) {
        Ok((table, warnings)) => {
            for w in warnings {
                eprintln!("qosgw: warning: {w}");
            }
            Ok(table)
        }
        Err(errors) => {
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            Err(match errors.len() {
                0 | 1 => first,
                n => format!(
                    "{first} (and {} more: run `qosgw policy check {}`)",
                    n - 1,
                    path.display()
                ),
            })
        }
    }
}
