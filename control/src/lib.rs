//! The qosgw control plane: the policy model, validation, the compiled
//! classifier, and the `policy check` / `policy explain` commands. Builds and
//! tests without DPDK.
//!
//! * [`parse_policies`] / [`load_policy_file`]: text or file → a
//!   [`PolicyTable`] plus warnings, or every error as a [`Diagnostic`]
//!   (`FILE:LINE:COLUMN: policy "NAME": field: what is wrong and what is
//!   allowed`).
//! * [`PolicyTable::classify`]: which policy wins for a [`MatchKey`]
//!   (`&self`, no allocation, no lock; share the table with an `Arc`).
//!
//! # Calling `policy check` and `policy explain` from the CLI
//!
//! ```no_run
//! use std::path::Path;
//!
//! // qosgw policy check FILE
//! let (code, lines) = control::check(Path::new("policies.json"));
//! for line in &lines {
//!     if code == 0 { println!("{line}") } else { eprintln!("{line}") }
//! }
//! std::process::exit(code);
//! ```
//!
//! ```no_run
//! use std::path::Path;
//!
//! // qosgw policy explain FILE --proto tcp --src 10.1.2.3:40000
//! //     --dst [2001:db8::1]:443 [--vlan N] [--direction inbound]
//! let vlan: Option<u16> = None;
//! let direction: Option<&str> = None; // "outbound" (default) or "inbound"
//! match control::explain(Path::new("policies.json"), "tcp", "10.1.2.3:40000",
//!                        "10.1.2.4:443", vlan, direction) {
//!     Ok(text) => print!("{text}"), // first line: `winner: NAME` or `winner: none`
//!     Err(e) => {
//!         eprintln!("{e}"); // one line per problem (bad argument or file errors)
//!         std::process::exit(1);
//!     }
//! }
//! ```
//!
//! `--src`/`--dst` take `IP` or `IP:PORT`, IPv6 with a port as
//! `[2001:db8::1]:443`. For a protocol with ports, a side without `:PORT`
//! gets port 0 (no port condition matches it); with neither side given, the
//! ports count as unknown (as for a non-first fragment).
//!
//! The choices SPEC.md leaves open (throttle strings, ports, positions,
//! warnings) are listed in `docs/DECISIONS.md`.

pub mod check;
pub mod coalesce;
pub mod config;
pub mod diag;
pub mod explain;
pub mod http;
pub mod json;
pub mod metrics;
pub mod parse;
pub mod policy;
pub mod process;
mod serialize;
pub mod table;
#[cfg(test)]
mod testdir;
#[cfg(test)]
mod testgen;
pub mod warnings;
pub mod watch;

use std::path::Path;

pub use check::check;
pub use config::{load_gateway_config, parse_gateway_config, GatewayConfig};
pub use diag::{Diagnostic, Severity};
pub use explain::explain;
pub use json::Pos;
pub use policy::{
    Condition, Direction, MatchKey, Policy, PolicyDirection, PolicyId, PortRange, PrecedenceKey,
    Prefix, Throttle, ThrottleScope,
};
pub use table::{PolicyTable, TableStats};
pub use watch::FileWatch;

/// A compiled table and its warnings, or the errors.
pub type LoadResult = Result<(PolicyTable, Vec<Diagnostic>), Vec<Diagnostic>>;

/// Parses, validates and compiles a policy file's text. `file_name` is used
/// in diagnostics only.
pub fn parse_policies(file_name: &str, text: &str) -> LoadResult {
    let policies = parse::parse_policy_list(file_name, text)?;
    let table = PolicyTable::new(policies);
    let warnings = warnings::warnings(file_name, &table);
    Ok((table, warnings))
}

/// Reads, validates and compiles a policy file. A file that cannot be read
/// is one diagnostic.
pub fn load_policy_file(path: &Path) -> LoadResult {
    let name = path.display().to_string();
    let text = read_text(&name, path, "policy file").map_err(|e| vec![e])?;
    parse_policies(&name, &text)
}

/// The longest policy or configuration file read (50 000 policies take about 7 MB).
pub const MAX_FILE_LEN: u64 = 64 << 20;

/// Opens a regular file for reading, and its metadata. Anything else is an error rather
/// than a wait: a FIFO would block the reading thread until someone writes to it (the
/// control thread, and with it every reload and the shutdown; or a replay, deaf to
/// signals while it reads its input), and `/dev/zero` would fill memory.
pub fn open_regular_file(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::OpenOptionsExt;
    /// Linux's `O_NONBLOCK`: opening a FIFO does not wait for a writer (the type is
    /// checked on the open file, so a FIFO renamed into place in between is seen too).
    const O_NONBLOCK: i32 = 0o4000;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(Error::new(ErrorKind::InvalidInput, format!("it is {kind}")));
    }
    Ok((file, meta))
}

/// A regular file's bytes, at most `limit` of them ([`open_regular_file`]).
pub(crate) fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let (file, meta) = open_regular_file(path)?;
    let too_long = || {
        Error::new(
            ErrorKind::InvalidData,
            format!("it is longer than {} MiB", limit >> 20),
        )
    };
    if meta.len() > limit {
        return Err(too_long());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_long());
    }
    Ok(bytes)
}

/// A JSON file's text (`what` it is, for the message). A file that cannot be read is a
/// diagnostic about the whole file (`FILE: cannot read ...`); one that is not UTF-8, a
/// diagnostic at its first byte that is not.
pub(crate) fn read_text(name: &str, path: &Path, what: &str) -> Result<String, Diagnostic> {
    let whole_file = |msg: String| Diagnostic::error(name, Pos::default(), msg);
    let bytes = read_bounded(path, MAX_FILE_LEN)
        .map_err(|e| whole_file(format!("cannot read the {what}: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let valid = e.utf8_error().valid_up_to();
        let text = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let line_start = text.rfind('\n').map_or(0, |i| i + 1);
        let pos = Pos {
            line: text.matches('\n').count() as u32 + 1,
            column: text[line_start..].chars().count() as u32 + 1,
        };
        Diagnostic::error(
            name,
            pos,
            format!(
                "byte 0x{:02x} is not UTF-8; the {what} is JSON text in UTF-8",
                bytes[valid]
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = crate::testdir::TestDir::new("read");
        let file = dir.join("p.json");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        let err = read_bounded(&file, 9).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
        let err = read_bounded(&dir, 10).unwrap_err().to_string();
        assert_eq!(err, "it is a directory");
        // A FIFO with no writer would block a reader forever.
        let fifo = dir.join("fifo.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = read_bounded(&fifo, 10).unwrap_err().to_string();
            assert_eq!(err, "it is not a regular file");
        }
    }
}
