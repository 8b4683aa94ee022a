//! Diagnostics: errors and warnings about a policy file, each with a place.

use std::fmt;

use crate::json::Pos;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One error or warning about a policy file.
///
/// Displays as `FILE:LINE:COLUMN: message` (warnings as
/// `FILE:LINE:COLUMN: warning: message`). A diagnostic about the file as a
/// whole (it cannot be read) has line 0 and displays as `FILE: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    pub severity: Severity,
    /// For a policy: `policy "NAME": field: what is wrong and what is allowed`.
    pub message: String,
}

impl Diagnostic {
    pub fn error(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            pos,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, pos, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.file)?;
        if self.pos.line == 0 {
            f.write_str(": ")?;
        } else {
            write!(f, ":{}:{}: ", self.pos.line, self.pos.column)?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        write_escaped(f, &self.message)
    }
}

/// Writes `s` with its control characters escaped (`\n`, `\u{1b}`): a diagnostic stays
/// one line, and a terminal shows it as written, whatever a key in the file holds.
fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let pos = Pos {
            line: 3,
            column: 14,
        };
        let e = Diagnostic::error("p.json", pos, "policy \"a\": dscp: bad");
        assert_eq!(e.to_string(), "p.json:3:14: policy \"a\": dscp: bad");
        let w = Diagnostic::warning("p.json", pos, "x");
        assert_eq!(w.to_string(), "p.json:3:14: warning: x");
        let io = Diagnostic::error("p.json", Pos::default(), "cannot read");
        assert_eq!(io.to_string(), "p.json: cannot read");
        let odd = Diagnostic::error("p.json", pos, "policy \"a\": x\ny\u{1b}[31m: unknown field");
        assert_eq!(
            odd.to_string(),
            "p.json:3:14: policy \"a\": x\\ny\\u{1b}[31m: unknown field"
        );
    }
}
