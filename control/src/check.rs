//! `qosgw policy check FILE`.

use std::path::Path;

/// Validates a policy file. Returns the exit code and the lines to print:
///
/// * 0 and the warnings (`FILE:LINE:COLUMN: warning: ...`) followed by a
///   summary line `FILE: N policies, no errors, W warnings`; print them on
///   stdout.
/// * 1 and one line per error, `FILE:LINE:COLUMN: policy "NAME": field:
///   ...`, in file order; print them on stderr.
pub fn check(path: &Path) -> (i32, Vec<String>) {
    match crate::load_policy_file(path) {
        Ok((table, warnings)) => {
            let mut lines: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            lines.push(format!(
                "{}: {} {}, no errors, {} {}",
                path.display(),
                table.len(),
                if table.len() == 1 {
                    "policy"
                } else {
                    "policies"
                },
                warnings.len(),
                if warnings.len() == 1 {
                    "warning"
                } else {
                    "warnings"
                },
            ));
            (0, lines)
        }
        Err(errors) => (1, errors.iter().map(|e| e.to_string()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_lines() {
        let dir = crate::testdir::TestDir::new("check");
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            "{\"policies\": [\n{\"name\": \"a\", \"dst_port\": 53, \"dscp\": 1},\n{\"name\": \"b\", \"dst_port\": 53, \"dscp\": 2}\n]}",
        )
        .unwrap();
        let (code, lines) = check(&good);
        assert_eq!(code, 0);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains(":3:1: warning: policy \"b\": conflicts with policy \"a\""));
        assert!(lines[2].ends_with("good.json: 2 policies, no errors, 2 warnings"));

        let bad = dir.join("bad.json");
        std::fs::write(
            &bad,
            "{\"policies\": [\n{\"name\": \"a\", \"dscp\": 64, \"vlan\": 5000}\n]}",
        )
        .unwrap();
        let (code, lines) = check(&bad);
        assert_eq!(code, 1);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("bad.json:2:23: policy \"a\": dscp: 64 is out of range; a DSCP value is an integer from 0 to 63"), "{lines:?}");
        assert!(
            lines[1].contains("bad.json:2:35: policy \"a\": vlan: 5000 is out of range"),
            "{lines:?}"
        );

        let latin1 = dir.join("latin1.json");
        std::fs::write(
            &latin1,
            b"{\"policies\": [\n  {\"name\": \"caf\xe9\", \"dscp\": 1}]}",
        )
        .unwrap();
        let (code, lines) = check(&latin1);
        assert_eq!(code, 1);
        assert!(
            lines[0].ends_with(
                "latin1.json:2:16: byte 0xe9 is not UTF-8; the policy file is JSON text in UTF-8"
            ),
            "{lines:?}"
        );

        let (code, lines) = check(&dir.join("missing.json"));
        assert_eq!(code, 1);
        assert!(lines[0].contains("missing.json: cannot read the policy file"));
    }
}
