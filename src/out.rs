//! Output that never panics (SPEC §4: errors are one line and a non-zero exit, never a
//! panic): `println!` panics when stdout is a closed pipe (`qosgw ... | head -1`) or a full
//! disk, and `eprintln!` likewise on stderr.

use std::io::Write;

/// Writes `text` to stdout as it is; a failed write is an error to report.
pub fn print(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}

/// `qosgw: warning: ...` on stderr.
pub fn warn(text: &str) {
    crate::errln!("qosgw: warning: {text}");
}

/// `eprintln!` that never panics: a line stderr cannot take is lost, nothing else.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
