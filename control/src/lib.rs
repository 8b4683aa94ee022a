//! The qosgw control plane: the policy model, validation, the compiled
//! classifier, and the `policy check` / `policy explain` commands. Builds and
//! tests without DPDK.
//!
//! * [`parse_policies`] / [`load_policy_file`]: text or file → a
//!   [`PolicyTable`] plus warnings, or every error as a [`Diagnostic`].
//! * [`PolicyTable::classify`]: which policy wins for a [`MatchKey`].

pub mod check;
pub mod diag;
pub mod explain;
pub mod json;
pub mod parse;
pub mod policy;
mod serialize;
pub mod table;
pub mod warnings;

use std::path::Path;

pub use check::check;
pub use diag::{Diagnostic, Severity};
pub use explain::explain;
pub use json::Pos;
pub use policy::{
    Condition, Direction, MatchKey, Policy, PolicyDirection, PolicyId, PortRange, PrecedenceKey,
    Prefix, Throttle, ThrottleScope,
};
pub use table::{PolicyTable, TableStats};

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
    match std::fs::read_to_string(path) {
        Ok(text) => parse_policies(&name, &text),
        Err(e) => Err(vec![Diagnostic::error(
            &name,
            Pos::default(),
            format!("cannot read the policy file: {e}"),
        )]),
    }
}
