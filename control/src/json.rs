//! A small, strict JSON parser (RFC 8259) that remembers where every value
//! starts.
//!
//! serde_json reports the position of syntax errors but not of values, and a
//! policy error must point at the offending value (`FILE:LINE:COLUMN`). This
//! parser keeps a [`Pos`] for every value and object key. It accepts exactly
//! RFC 8259 JSON: no comments, no trailing commas; a UTF-8 byte order mark at
//! the start is skipped. Numbers are kept as their source text so that the
//! policy model decides which numbers it accepts.
//!
//! Lines and columns are 1-based; a column counts Unicode scalar values (a tab
//! is one column), as most editors do for "go to line:column".

use std::fmt;

/// A position in the source text (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A JSON value with the position of its first character.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned {
    pub pos: Pos,
    pub value: Value,
}

/// One `"key": value` member of an object.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub key: String,
    pub key_pos: Pos,
    pub value: Spanned,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number exactly as written (already checked against the JSON grammar).
    Number(String),
    String(String),
    Array(Vec<Spanned>),
    /// Members in source order; duplicate keys are kept (the caller reports them).
    Object(Vec<Member>),
}

impl Value {
    /// A short name of the value's JSON type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// A JSON syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 128;

/// Parses a complete JSON document.
pub fn parse(text: &str) -> Result<Spanned, SyntaxError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        i: 0,
        line: 1,
        column: 1,
    };
    if p.bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        p.i = 3;
    }
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.i < p.bytes.len() {
        return Err(p.error("unexpected text after the end of the JSON document"));
    }
    Ok(v)
}

struct Parser<'a> {
    bytes: &'a [u8],
    i: usize,
    line: u32,
    column: u32,
}

impl Parser<'_> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }

    fn error(&self, message: &str) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            message: format!("invalid JSON: {message}"),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    /// Advances one byte, keeping line and column (columns count characters,
    /// so UTF-8 continuation bytes do not advance the column).
    fn bump(&mut self) {
        let b = self.bytes[self.i];
        self.i += 1;
        if b == b'\n' {
            self.line += 1;
            self.column = 1;
        } else if b & 0xC0 != 0x80 {
            self.column += 1;
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.bump();
        }
    }

    fn expect_literal(&mut self, lit: &str, v: Value) -> Result<Value, SyntaxError> {
        if self.bytes[self.i..].starts_with(lit.as_bytes()) {
            for _ in 0..lit.len() {
                self.bump();
            }
            Ok(v)
        } else {
            Err(self.error("expected a value (object, array, string, number, true, false or null)"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Spanned, SyntaxError> {
        let pos = self.pos();
        let value = match self.peek() {
            None => return Err(self.error("unexpected end of file; expected a value")),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(b't') => self.expect_literal("true", Value::Bool(true))?,
            Some(b'f') => self.expect_literal("false", Value::Bool(false))?,
            Some(b'n') => self.expect_literal("null", Value::Null)?,
            Some(_) => {
                return Err(self.error(
                    "expected a value (object, array, string, number, true, false or null)",
                ))
            }
        };
        Ok(Spanned { pos, value })
    }

    fn enter(&self, depth: usize) -> Result<(), SyntaxError> {
        if depth >= MAX_DEPTH {
            Err(self.error(&format!("nesting deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(())
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.enter(depth)?;
        self.bump(); // '{'
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.bump();
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(if self.peek() == Some(b'}') {
                    self.error("trailing comma before '}'")
                } else {
                    self.error("expected a member name in double quotes")
                });
            }
            let key_pos = self.pos();
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after the member name"));
            }
            self.bump();
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push(Member {
                key,
                key_pos,
                value,
            });
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.bump(),
                Some(b'}') => {
                    self.bump();
                    return Ok(Value::Object(members));
                }
                None => return Err(self.error("unexpected end of file; expected ',' or '}'")),
                Some(_) => return Err(self.error("expected ',' or '}' after an object member")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.enter(depth)?;
        self.bump(); // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.bump();
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            if self.peek() == Some(b']') {
                return Err(self.error("trailing comma before ']'"));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.bump(),
                Some(b']') => {
                    self.bump();
                    return Ok(Value::Array(items));
                }
                None => return Err(self.error("unexpected end of file; expected ',' or ']'")),
                Some(_) => return Err(self.error("expected ',' or ']' after an array element")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.bump();
        }
        match self.peek() {
            Some(b'0') => self.bump(),
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.bump();
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit after '.'"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.bump();
            if let Some(b'+' | b'-') = self.peek() {
                self.bump();
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit in the exponent"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.error("numbers must not have leading zeros"));
        }
        // The slice is ASCII by construction.
        let text = String::from_utf8_lossy(&self.bytes[start..self.i]).into_owned();
        Ok(Value::Number(text))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.bump();
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.error("expected four hex digits after \\u")),
            };
            v = v * 16 + u32::from(d);
            self.bump();
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.bump(); // opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error("unexpected end of file inside a string"));
            };
            match b {
                b'"' => {
                    self.bump();
                    // The input is a &str and escapes produce valid UTF-8.
                    return Ok(String::from_utf8(out).unwrap_or_default());
                }
                b'\\' => {
                    let esc_pos = self.pos();
                    self.bump();
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.bump();
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.bytes[self.i..].starts_with(b"\\u") {
                                    return Err(self.error("unpaired surrogate in \\u escape"));
                                }
                                self.bump();
                                self.bump();
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.error("unpaired surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let Some(c) = char::from_u32(code) else {
                                return Err(SyntaxError {
                                    pos: esc_pos,
                                    message: "invalid JSON: unpaired surrogate in \\u escape"
                                        .into(),
                                });
                            };
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        _ => return Err(self.error("invalid escape in string")),
                    };
                    self.bump();
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0x00..=0x1F => {
                    return Err(self
                        .error("control character in string (a line break must be written \\n)"))
                }
                _ => {
                    out.push(b);
                    self.bump();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: u32, column: u32) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn values_carry_positions() {
        let v = parse("{\n  \"a\": [1, \"x\"],\n  \"b\": null\n}").unwrap();
        assert_eq!(v.pos, p(1, 1));
        let Value::Object(m) = v.value else { panic!() };
        assert_eq!(m[0].key, "a");
        assert_eq!(m[0].key_pos, p(2, 3));
        assert_eq!(m[0].value.pos, p(2, 8));
        let Value::Array(items) = &m[0].value.value else {
            panic!()
        };
        assert_eq!(items[1].pos, p(2, 12));
        assert_eq!(items[1].value, Value::String("x".into()));
        assert_eq!(m[1].value.pos, p(3, 8));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let v = parse("[\"é€\", 7]").unwrap();
        let Value::Array(items) = v.value else {
            panic!()
        };
        assert_eq!(items[1].pos, p(1, 8));
    }

    #[test]
    fn escapes() {
        let v = parse(r#""a\n\u00e9\ud83d\ude00\"""#).unwrap();
        assert_eq!(v.value, Value::String("a\né😀\"".into()));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let cases = [
            ("{\"a\": 1,}", p(1, 9), "trailing comma"),
            ("[1 2]", p(1, 4), "expected ',' or ']'"),
            ("{\n  \"a\" 1}", p(2, 7), "expected ':'"),
            ("{\"a\": 01}", p(1, 8), "leading zeros"),
            ("{\"a\": tru}", p(1, 7), "expected a value"),
            ("[1]\n x", p(2, 2), "after the end"),
            ("{\"a\": \"x", p(1, 9), "end of file inside a string"),
            ("", p(1, 1), "end of file"),
            ("// c\n{}", p(1, 1), "expected a value"),
        ];
        for (text, pos, msg) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.pos, pos, "{text:?}: {e:?}");
            assert!(e.message.contains(msg), "{text:?}: {e:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "[".repeat(10_000);
        assert!(parse(&text).unwrap_err().message.contains("nesting"));
    }
}
