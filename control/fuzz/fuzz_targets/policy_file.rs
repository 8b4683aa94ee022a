//! The policy and gateway-configuration readers on arbitrary text: they must never panic,
//! every diagnostic must point into the text, and every policy set they accept must come
//! back unchanged from its `GET /policies` form.
#![no_main]

use control::{parse_gateway_config, parse_policies, Diagnostic, Policy, Pos};
use libfuzzer_sys::fuzz_target;

/// A position is a line of the text and a column within it or just past its end.
fn assert_points_into(text: &str, d: &Diagnostic) {
    let lines: Vec<&str> = text.split('\n').collect();
    let (line, column) = (d.pos.line as usize, d.pos.column as usize);
    assert!(
        line >= 1 && line <= lines.len(),
        "{d:?} in {} lines",
        lines.len()
    );
    let chars = lines[line - 1].chars().count();
    assert!(
        column >= 1 && column <= chars + 1,
        "{d:?}: line of {chars} chars"
    );
    assert!(!d.message.is_empty(), "{d:?}");
    // Control characters from the input are escaped when printed: one line, no escapes
    // sent to a terminal.
    assert!(!d.to_string().chars().any(|c| c.is_control()), "{d:?}");
}

/// The policies as they read, wherever in a file they were.
fn placeless(policies: &[Policy]) -> Vec<Policy> {
    let mut v = policies.to_vec();
    v.iter_mut().for_each(|p| p.location = Pos::default());
    v
}

fuzz_target!(|data: &[u8]| {
    // The readers check UTF-8 before parsing (its own error, at the first bad byte).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_policies("f.json", text) {
        Ok((table, warnings)) => {
            warnings.iter().for_each(|w| assert_points_into(text, w));
            let json = serde_json::json!({ "policies": table.policies() }).to_string();
            match parse_policies("back.json", &json) {
                Ok((back, _)) => assert_eq!(
                    placeless(back.policies()),
                    placeless(table.policies()),
                    "{json}"
                ),
                Err(e) => panic!("{json} does not read back: {e:?}"),
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            errors.iter().for_each(|e| assert_points_into(text, e));
        }
    }
    if let Err(errors) = parse_gateway_config("g.json", text) {
        assert!(!errors.is_empty());
        errors.iter().for_each(|e| assert_points_into(text, e));
    }
});
