//! Constrained output. JSON mode: output constrained, byte by byte, to a valid JSON value (an object at the top, as
//! OpenAI's `response_format: {"type": "json_object"}` asks). A pushdown recogniser of JSON's
//! grammar says which next bytes keep the text a prefix of valid JSON; a token is allowed when
//! all of its bytes are. Runs of whitespace are capped so a model cannot pad forever.

use std::sync::Arc;

/// Longest run of whitespace allowed between tokens of the JSON text.
const MAX_WHITESPACE_RUN: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Number {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Number {
    /// Whether a number may end here.
    fn complete(self) -> bool {
        matches!(
            self,
            Number::Zero | Number::Int | Number::Frac | Number::ExpDigits
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A value must come (start of text, after `:` or after `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value inside a container.
    CommaOrClose,
    /// Inside a string; `escape`: 0 none, 1 after `\`, 2..=5 hex digits of `\u` still due.
    Str {
        key: bool,
        escape: u8,
    },
    Num(Number),
    /// Inside `true`, `false` or `null`: the bytes still due.
    Literal {
        word: &'static [u8],
        at: u8,
    },
    /// The top-level value is complete.
    Done,
}

/// Where a recogniser stands in the text so far.
#[derive(Clone, Debug)]
pub struct JsonState {
    stack: Vec<Container>,
    mode: Mode,
    whitespace_run: u8,
    object_only: bool,
}

impl JsonState {
    /// `object_only`: the top-level value must be an object.
    pub fn new(object_only: bool) -> Self {
        JsonState {
            stack: vec![],
            mode: Mode::Value,
            whitespace_run: 0,
            object_only,
        }
    }

    /// The text so far is a complete JSON value.
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
            || (self.stack.is_empty() && matches!(self.mode, Mode::Num(n) if n.complete()))
    }

    fn value_done(&mut self) {
        self.mode = if self.stack.is_empty() {
            Mode::Done
        } else {
            Mode::CommaOrClose
        };
    }

    fn close(&mut self, c: Container) -> bool {
        if self.stack.pop() == Some(c) {
            self.value_done();
            true
        } else {
            false
        }
    }

    /// Starts a value with byte `b`; false if no value starts so.
    fn start_value(&mut self, b: u8) -> bool {
        if self.object_only && self.stack.is_empty() && b != b'{' {
            return false;
        }
        self.mode = match b {
            b'{' => {
                self.stack.push(Container::Object);
                Mode::KeyOrClose
            }
            b'[' => {
                self.stack.push(Container::Array);
                Mode::ValueOrClose
            }
            b'"' => Mode::Str {
                key: false,
                escape: 0,
            },
            b'-' => Mode::Num(Number::Minus),
            b'0' => Mode::Num(Number::Zero),
            b'1'..=b'9' => Mode::Num(Number::Int),
            b't' => Mode::Literal {
                word: b"true",
                at: 1,
            },
            b'f' => Mode::Literal {
                word: b"false",
                at: 1,
            },
            b'n' => Mode::Literal {
                word: b"null",
                at: 1,
            },
            _ => return false,
        };
        true
    }

    /// Feeds one byte; false (and the state is then meaningless) if the text can no longer be
    /// the start of valid JSON.
    pub fn push(&mut self, b: u8) -> bool {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let between_tokens = !matches!(
            self.mode,
            Mode::Str { .. } | Mode::Num(_) | Mode::Literal { .. }
        );
        let started = !(self.stack.is_empty() && self.mode == Mode::Value);
        if ws && between_tokens {
            if !started {
                // Nothing before the value: the output starts with it.
                return false;
            }
            self.whitespace_run += 1;
            return self.whitespace_run <= MAX_WHITESPACE_RUN;
        }
        self.whitespace_run = 0;
        match self.mode {
            Mode::Value => self.start_value(b),
            Mode::ValueOrClose => b == b']' && self.close(Container::Array) || self.start_value(b),
            Mode::KeyOrClose | Mode::Key => {
                if b == b'"' {
                    self.mode = Mode::Str {
                        key: true,
                        escape: 0,
                    };
                    true
                } else {
                    self.mode == Mode::KeyOrClose && b == b'}' && self.close(Container::Object)
                }
            }
            Mode::Colon => {
                self.mode = Mode::Value;
                b == b':'
            }
            Mode::CommaOrClose => match (b, self.stack.last()) {
                (b',', Some(Container::Object)) => {
                    self.mode = Mode::Key;
                    true
                }
                (b',', Some(Container::Array)) => {
                    self.mode = Mode::Value;
                    true
                }
                (b'}', _) => self.close(Container::Object),
                (b']', _) => self.close(Container::Array),
                _ => false,
            },
            Mode::Str { key, escape } => {
                let escape = match (escape, b) {
                    (0, b'"') => {
                        if key {
                            self.mode = Mode::Colon;
                        } else {
                            self.value_done();
                        }
                        return true;
                    }
                    (0, b'\\') => 1,
                    (0, 0..=0x1f) => return false,
                    (0, _) => 0,
                    (1, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 0,
                    (1, b'u') => 5,
                    (1, _) => return false,
                    (n, c) if c.is_ascii_hexdigit() => {
                        if n == 2 {
                            0
                        } else {
                            n - 1
                        }
                    }
                    _ => return false,
                };
                self.mode = Mode::Str { key, escape };
                true
            }
            Mode::Num(n) => {
                let next = match (n, b) {
                    (Number::Minus, b'0') => Some(Number::Zero),
                    (Number::Minus, b'1'..=b'9') => Some(Number::Int),
                    (Number::Int, b'0'..=b'9') => Some(Number::Int),
                    (Number::Zero | Number::Int, b'.') => Some(Number::Dot),
                    (Number::Dot | Number::Frac, b'0'..=b'9') => Some(Number::Frac),
                    (Number::Zero | Number::Int | Number::Frac, b'e' | b'E') => Some(Number::Exp),
                    (Number::Exp, b'+' | b'-') => Some(Number::ExpSign),
                    (Number::Exp | Number::ExpSign | Number::ExpDigits, b'0'..=b'9') => {
                        Some(Number::ExpDigits)
                    }
                    _ => None,
                };
                match next {
                    Some(n) => {
                        self.mode = Mode::Num(n);
                        true
                    }
                    // The number ends here; the byte belongs to what follows it.
                    None if n.complete() => {
                        self.value_done();
                        self.push(b)
                    }
                    None => false,
                }
            }
            Mode::Literal { word, at } => {
                if word.get(at as usize) != Some(&b) {
                    return false;
                }
                if at as usize + 1 == word.len() {
                    self.value_done();
                } else {
                    self.mode = Mode::Literal { word, at: at + 1 };
                }
                true
            }
            Mode::Done => false,
        }
    }
}

/// One part of a constrained output.
#[derive(Clone, Debug)]
pub enum Stage {
    /// Exactly one of these byte strings (a tool's name and the text after it).
    OneOf(Vec<Vec<u8>>),
    /// A JSON value (an object when `object_only`).
    Json { object_only: bool },
}

/// Output constrained to a sequence of stages over a vocabulary (JSON mode is one JSON stage; a
/// forced tool call is a choice of names, then JSON arguments): which tokens may come next, and
/// the state after one.
#[derive(Clone)]
pub struct OutputConstraint {
    stages: Arc<[Stage]>,
    at: usize,
    chosen: Vec<u8>,
    json: JsonState,
    token_bytes: Arc<Vec<Option<Vec<u8>>>>,
}

impl OutputConstraint {
    /// `token_bytes` from [`crate::Tokenizer::token_bytes`].
    pub fn new(token_bytes: Arc<Vec<Option<Vec<u8>>>>, stages: Vec<Stage>) -> Self {
        let mut c = OutputConstraint {
            stages: stages.into(),
            at: 0,
            chosen: vec![],
            json: JsonState::new(true),
            token_bytes,
        };
        c.enter_stage();
        c
    }

    /// JSON mode: one JSON object.
    pub fn json_object(token_bytes: Arc<Vec<Option<Vec<u8>>>>) -> Self {
        Self::new(token_bytes, vec![Stage::Json { object_only: true }])
    }

    fn enter_stage(&mut self) {
        self.chosen.clear();
        if let Some(Stage::Json { object_only }) = self.stages.get(self.at) {
            self.json = JsonState::new(*object_only);
        }
    }

    pub fn is_complete(&self) -> bool {
        match self.stages.get(self.at) {
            None => true,
            Some(Stage::Json { .. }) => self.at + 1 == self.stages.len() && self.json.is_complete(),
            Some(Stage::OneOf(_)) => false,
        }
    }

    fn push(&mut self, b: u8) -> bool {
        match self.stages.get(self.at) {
            None => false,
            Some(Stage::OneOf(options)) => {
                self.chosen.push(b);
                if !options.iter().any(|o| o.starts_with(&self.chosen)) {
                    return false;
                }
                if options.contains(&self.chosen) {
                    self.at += 1;
                    self.enter_stage();
                }
                true
            }
            Some(Stage::Json { .. }) => {
                if self.json.is_complete() && self.at + 1 < self.stages.len() {
                    self.at += 1;
                    self.enter_stage();
                    return self.push(b);
                }
                self.json.push(b)
            }
        }
    }

    /// Whether token `id` keeps the output within the constraint. Special tokens never do.
    pub fn allows(&self, id: u32) -> bool {
        match self.token_bytes.get(id as usize) {
            Some(Some(bytes)) if !bytes.is_empty() => {
                let mut s = self.clone();
                bytes.iter().all(|&b| s.push(b))
            }
            _ => false,
        }
    }

    /// Moves past token `id` (which [`OutputConstraint::allows`] accepted).
    pub fn advance(&mut self, id: u32) {
        if let Some(Some(bytes)) = self.token_bytes.clone().get(id as usize) {
            for &b in bytes {
                self.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str, object_only: bool) -> (bool, bool) {
        let mut s = JsonState::new(object_only);
        let ok = text.bytes().all(|b| s.push(b));
        (ok, ok && s.is_complete())
    }

    #[test]
    fn accepts_valid_json_and_its_prefixes() {
        for t in [
            r#"{"a": [1, -2.5e+3, true, null, {"b": "x\"y\u00e9"}], "c": {}}"#,
            "{}",
            r#"{"k":[]}"#,
            "{\"é\": \"ünï\"}",
        ] {
            assert_eq!(accepts(t, true), (true, true), "{t}");
            // Each prefix is acceptable but incomplete.
            for cut in 1..t.len() {
                if t.is_char_boundary(cut) {
                    assert!(accepts(&t[..cut], true).0, "{}", &t[..cut]);
                    assert!(!accepts(&t[..cut], true).1, "{}", &t[..cut]);
                }
            }
            // And the recogniser agrees with serde_json.
            assert!(serde_json::from_str::<serde_json::Value>(t).is_ok());
        }
        assert_eq!(accepts("[1, 2]", false), (true, true));
        assert_eq!(accepts("12", false), (true, true));
    }

    #[test]
    fn rejects_invalid_json() {
        for t in [
            "[1]", // not an object at the top
            r#"{"a" 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1,}"#,
            r#"{"a": tru }"#,
            r#"{"a": "\x"}"#,
            "{\"a\": \"line\nbreak\"}",
            r#"{"a": 1}}"#,
            r#"{a: 1}"#,
            r#"{"a": [1, 2}"#,
            r#"{"a": -}"#,
            r#"{"a": 1.}"#,
        ] {
            assert!(!accepts(t, true).0, "{t}");
        }
        assert!(!accepts(&format!("{{{}", " ".repeat(40)), true).0);
        assert!(!accepts(" {}", true).0);
    }

    #[test]
    fn constraint_checks_whole_tokens() {
        let vocab: Vec<Option<Vec<u8>>> = ["{\"", "a", "\":", " 1", "}", "x", "}}"]
            .iter()
            .map(|s| Some(s.as_bytes().to_vec()))
            .chain([None])
            .collect();
        let mut c = OutputConstraint::json_object(Arc::new(vocab));
        assert!(c.allows(0) && !c.allows(1) && !c.allows(7));
        for id in [0, 1, 2, 3] {
            assert!(c.allows(id), "{id}");
            c.advance(id);
        }
        assert!(c.allows(4) && !c.allows(6) && !c.allows(5));
        c.advance(4);
        assert!(c.is_complete());
    }

    #[test]
    fn a_choice_of_names_then_json() {
        let vocab: Vec<Option<Vec<u8>>> = ["get", "_time", "_date", "\n", "{}", "{", "}"]
            .iter()
            .map(|s| Some(s.as_bytes().to_vec()))
            .collect();
        let names = vec![b"get_time\n".to_vec(), b"get_date\n".to_vec()];
        let mut c = OutputConstraint::new(
            Arc::new(vocab),
            vec![Stage::OneOf(names), Stage::Json { object_only: true }],
        );
        assert!(c.allows(0) && !c.allows(1) && !c.allows(4));
        c.advance(0);
        assert!(c.allows(1) && c.allows(2) && !c.allows(3));
        c.advance(2);
        assert!(c.allows(3) && !c.allows(4));
        c.advance(3);
        assert!(!c.is_complete() && c.allows(4) && c.allows(5) && !c.allows(6));
        c.advance(4);
        assert!(c.is_complete());
    }
}
