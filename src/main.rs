//! `qosgw`: the command line (SPEC §4).

#[macro_use]
mod out;

mod bench;
mod control_thread;
mod liveness;
mod notify;
mod policy_cmd;
mod replay;
mod run;
mod signals;
mod sysmem;

use std::path::Path;
use std::process::ExitCode;

use clap::error::ErrorKind;
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
    /// Run the gateway between the inside and outside ports of a configuration file until
    /// SIGINT/SIGTERM; SIGHUP, a change of the policy file or POST /-/reload reload policies.
    Run(run::RunArgs),
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and `qosgw` alone (which shows the help): as clap prints them.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            errln!("qosgw: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run(args) => {
            few_malloc_arenas();
            run::run(&args)
        }
        Command::Replay(args) => replay::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Policy(cmd) => return policy_cmd::run(&cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            errln!("qosgw: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Caps glibc's malloc at two arenas for the gateway's threads. By default each thread
/// that allocates may get an arena of its own (up to 8 per CPU), and memory freed into one
/// is reused by no other: reloads of a large policy set run on whichever HTTP connection
/// thread asked, so a gateway with 40 000 policies grew by some 60 MB a round of parallel
/// reloads. The workers do not allocate on their packet path, so sharing costs nothing.
fn few_malloc_arenas() {
    /// glibc's `M_ARENA_MAX` (malloc.h).
    const M_ARENA_MAX: std::ffi::c_int = -8;
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called before any
    // thread of ours exists, and an unknown or refused value only makes it return 0.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
    }
}

/// A command-line count that must be at least 1 (a flow cache of no entries classifies
/// nothing).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Loads and compiles a policy file; warnings go to stderr, errors become one line (the
/// first error, and how many more `qosgw policy check` would show).
fn load_policies(path: &Path) -> Result<control::PolicyTable, String> {
    match control::load_policy_file(path) {
        Ok((table, warnings)) => {
            for w in warnings {
                out::warn(&w.to_string());
            }
            Ok(table)
        }
        Err(errors) => Err(first_error(&errors, path)),
    }
}

/// One line for a file with errors: the first, and how many more there are.
fn first_error(errors: &[control::Diagnostic], path: &Path) -> String {
    let first = errors.first().map(ToString::to_string).unwrap_or_default();
    match errors.len() {
        0 | 1 => first,
        n => format!("{first} (and {} more in {})", n - 1, path.display()),
    }
}

/// clap's error as one line: its message and the items listed under it, without the usage
/// and the "try --help" hint (SPEC §4: one clear line on stderr).
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    format!("{} (see --help)", lines.join(" "))
}
