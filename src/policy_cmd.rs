//! `qosgw policy check` and `qosgw policy explain`: thin wrappers over `control`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file: exit 0 when valid (warnings allowed), 1 with one
    /// `FILE:LINE:COLUMN: message` line per error.
    Check {
        /// The policy file (JSON).
        file: PathBuf,
    },
    /// Show which policy wins for a flow, and why every other matching policy lost.
    Explain(ExplainArgs),
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The policy file (JSON).
    file: PathBuf,
    /// Protocol: tcp, udp, icmp, icmpv6, esp, ah, gre, sctp or a number.
    #[arg(long, value_name = "P")]
    proto: String,
    /// Source address, with a port for TCP/UDP/SCTP: 10.1.1.10:5000, [2001:db8::1]:443.
    #[arg(long, value_name = "IP[:PORT]")]
    src: String,
    /// Destination address, with a port for TCP/UDP/SCTP.
    #[arg(long, value_name = "IP[:PORT]")]
    dst: String,
    /// Outer VLAN ID (0-4095) of the flow.
    #[arg(long, value_name = "N")]
    vlan: Option<u16>,
    /// outbound (inside to outside, the default) or inbound.
    #[arg(long, value_name = "D")]
    direction: Option<String>,
}

pub fn run(cmd: &PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check { file } => {
            let (code, lines) = control::check(file);
            if code == 0 {
                print(&lines.iter().map(|l| format!("{l}\n")).collect::<String>())
            } else {
                lines.iter().for_each(|l| errln!("{l}"));
                ExitCode::from(code as u8)
            }
        }
        PolicyCommand::Explain(a) => {
            match control::explain(
                &a.file,
                &a.proto,
                &a.src,
                &a.dst,
                a.vlan,
                a.direction.as_deref(),
            ) {
                Ok(mut text) => {
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                    print(&text)
                }
                Err(e) => {
                    errln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints `text` on stdout: success, or a failure said on stderr (a closed pipe, a full
/// disk).
fn print(text: &str) -> ExitCode {
    match crate::out::print(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("qosgw: error: {e}");
            ExitCode::FAILURE
        }
    }
}
