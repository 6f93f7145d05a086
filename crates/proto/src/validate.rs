//! Strict validation of the JSON values peers hand the gateway.
//!
//! Published values and call payloads stay JSON text ([`raw`](crate::raw))
//! and are only checked for syntax by serde_json's `RawValue`, which accepts
//! text that a conforming parser (serde_json's own `Value`, Python's `json`,
//! Go's `encoding/json`) rejects or mangles: numbers such as `1e999` that
//! overflow an f64, lone UTF-16 surrogates such as `"\ud800"`, and nesting
//! deeper than those parsers' recursion limits. The gateway would store such
//! a value and forward it to every subscriber, each of which would then fail
//! to parse it. [`check_value`] is the gate: nothing it accepts fails a
//! conforming parser, and it also bounds what a peer can make a consumer
//! allocate ([`ValueLimits`]).
//!
//! The check is one pass over the bytes with an explicit stack instead of
//! recursion, so a hostile input cannot overflow the gateway's stack, and it
//! stops at the first problem. Its memory is one small frame per open array
//! or object (at most [`ValueLimits::max_depth`] of them) plus, for each open
//! object, the set of its keys seen so far (at most
//! [`ValueLimits::max_members`] each, stored as offsets into the input, not
//! copies), which is what duplicate keys need.
//!
//! A number is finite when `f64::from_str` (exact rounding, as Python and Go
//! do) says so. serde_json's default parser rounds inexactly and overflows a
//! little below the true threshold, so numbers of magnitude 1e308 and above
//! must also pass serde_json's own number parser.
//!
//! Duplicate keys in one object are refused: parsers disagree about which
//! one wins, so a value with them means different things to different
//! consumers. Keys are compared after decoding escapes (`"a"` and `"\u0061"`
//! are the same key). An object's first [`SMALL_OBJECT_KEYS`] keys are
//! compared one by one (cheaper than hashing for the small objects most
//! values are); past that, in a set with a randomly keyed hash, so a peer
//! cannot pick keys that collide.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

/// How large a value [`check_value`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueLimits {
    /// Arrays and objects nested in each other, the outermost counting as
    /// one (`[[1]]` has depth 2; a scalar has depth 0). serde_json refuses
    /// more than 128, so a limit above that no longer guarantees that
    /// serde_json consumers can parse what is accepted. Default 64.
    pub max_depth: usize,
    /// Elements of one array, or members of one object. Default 4096.
    pub max_members: usize,
    /// Bytes of one string (object keys included) as written in the JSON
    /// text between its quotes, escapes counted as written (`\u00e9` is six
    /// bytes). That is what the gateway stores and forwards, and it is never
    /// less than the decoded UTF-8 length. Default 65536.
    pub max_string_bytes: usize,
}

impl Default for ValueLimits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_members: 4096,
            max_string_bytes: 64 * 1024,
        }
    }
}

/// Why a value was refused. `at` is the byte offset in the checked text of
/// the offending token (the start of a number, string or escape, the
/// opening bracket that is too deep, the element that is one too many).
/// Text quoted from the input is cut to [`QUOTE_MAX`] characters, so a peer
/// cannot make the error (or the log line carrying it) large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not JSON (RFC 8259) at all.
    #[error("invalid JSON at byte {at}: expected {expected}, found {}", found_text(*.found))]
    Syntax {
        at: usize,
        expected: &'static str,
        /// `None` at the end of the input.
        found: Option<char>,
    },
    /// A number that overflows an f64: a conforming parser refuses it or
    /// turns it into infinity (which JSON cannot carry back).
    #[error("number {number} at byte {at} is not finite")]
    NotFinite { at: usize, number: String },
    /// A `\u` escape of a UTF-16 surrogate that is not the first half of a
    /// pair followed by the second half.
    #[error("lone surrogate \\u{unit:04x} at byte {at}")]
    LoneSurrogate { at: usize, unit: u16 },
    #[error("control character U+{code:04X} unescaped in a string at byte {at}")]
    ControlCharacter { at: usize, code: u8 },
    #[error("nesting deeper than {max} at byte {at}")]
    TooDeep { at: usize, max: usize },
    #[error("more than {max} {} at byte {at}", if *.object { "members in one object" } else { "elements in one array" })]
    TooManyMembers { at: usize, max: usize, object: bool },
    #[error("string longer than {max} bytes at byte {at}")]
    StringTooLong { at: usize, max: usize },
    /// `key` is the second occurrence as written (escapes not decoded).
    #[error("duplicate key {key} at byte {at}")]
    DuplicateKey { at: usize, key: String },
}

/// Numbers at least this large are also checked with serde_json, whose
/// inexact rounding can overflow where exact rounding does not.
const NEAR_OVERFLOW: f64 = 1e308;

/// Characters of input text an error quotes at most (an ellipsis included).
pub const QUOTE_MAX: usize = 32;

fn found_text(found: Option<char>) -> String {
    match found {
        None => "end of input".to_owned(),
        Some(c) => format!("{c:?}"),
    }
}

/// `text` cut to [`QUOTE_MAX`] characters.
fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_MAX {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(QUOTE_MAX - 1).collect();
    out.push('…');
    out
}

/// Checks that `text` is exactly one JSON value (RFC 8259, surrounding
/// whitespace allowed) that every conforming parser accepts with the same
/// meaning, within `limits`. See the [module docs](self) for what is refused
/// beyond RFC 8259 and why.
pub fn check_value(text: &str, limits: &ValueLimits) -> Result<(), ValueError> {
    Checker {
        text,
        bytes: text.as_bytes(),
        limits,
        keys_state: RandomState::new(),
    }
    .run()
}

/// Keys an object may have before they go into a hash set: up to here a
/// linear scan compares fewer bytes than hashing them does.
pub const SMALL_OBJECT_KEYS: usize = 8;

/// One open array or object.
struct Frame<'a> {
    object: bool,
    /// Elements or members seen so far, the current one included.
    count: usize,
    /// Keys of an object so far; empty (and unallocated) for arrays.
    keys: Keys<'a>,
}

/// The keys of one object so far: a short list, then a hash set.
enum Keys<'a> {
    Few(Vec<Key<'a>>),
    Many(HashSet<Key<'a>, RandomState>),
}

impl<'a> Keys<'a> {
    /// Adds `key`; false if the object has it already.
    fn insert(&mut self, key: Key<'a>, state: &RandomState) -> bool {
        match self {
            Keys::Few(few) if few.len() < SMALL_OBJECT_KEYS => {
                if few.contains(&key) {
                    return false;
                }
                few.push(key);
                true
            }
            Keys::Few(few) => {
                let mut many = HashSet::with_capacity_and_hasher(few.len() * 2, state.clone());
                many.extend(few.drain(..));
                let added = many.insert(key);
                *self = Keys::Many(many);
                added
            }
            Keys::Many(many) => many.insert(key),
        }
    }
}

struct Checker<'a, 'l> {
    text: &'a str,
    bytes: &'a [u8],
    limits: &'l ValueLimits,
    keys_state: RandomState,
}

impl<'a> Checker<'a, '_> {
    fn run(&self) -> Result<(), ValueError> {
        let b = self.bytes;
        let mut stack: Vec<Frame<'a>> = Vec::new();
        let mut p = 0;
        // Each turn reads one value at `p`, then closes containers and
        // consumes separators until the next value starts.
        loop {
            p = skip_ws(b, p);
            match b.get(p) {
                Some(&open @ (b'[' | b'{')) => {
                    if stack.len() >= self.limits.max_depth {
                        return Err(ValueError::TooDeep {
                            at: p,
                            max: self.limits.max_depth,
                        });
                    }
                    let object = open == b'{';
                    let close = if object { b'}' } else { b']' };
                    p = skip_ws(b, p + 1);
                    if b.get(p) == Some(&close) {
                        p += 1;
                    } else {
                        let mut frame = Frame {
                            object,
                            count: 0,
                            keys: Keys::Few(Vec::new()),
                        };
                        p = self.next_member(&mut frame, p, "a string key or '}'")?;
                        stack.push(frame);
                        continue;
                    }
                }
                Some(b'"') => p = self.string(p)?,
                Some(b'-' | b'0'..=b'9') => p = self.number(p)?,
                Some(b't') => p = self.literal(p, "true")?,
                Some(b'f') => p = self.literal(p, "false")?,
                Some(b'n') => p = self.literal(p, "null")?,
                _ => return Err(self.syntax(p, "a value")),
            }
            // After a value: close what ends here, up to the next value.
            loop {
                p = skip_ws(b, p);
                let Some(top) = stack.last_mut() else {
                    if p == b.len() {
                        return Ok(());
                    }
                    return Err(self.syntax(p, "end of input"));
                };
                let close = if top.object { b'}' } else { b']' };
                match b.get(p) {
                    Some(b',') => {
                        p = self.next_member(top, skip_ws(b, p + 1), "a string key")?;
                        break;
                    }
                    Some(&c) if c == close => {
                        p += 1;
                        stack.pop();
                    }
                    _ if top.object => return Err(self.syntax(p, "',' or '}'")),
                    _ => return Err(self.syntax(p, "',' or ']'")),
                }
            }
        }
    }

    /// Starts the next element of `frame` at `p` (whitespace skipped): counts
    /// it and, in an object, reads its key and the colon. Returns where its
    /// value starts.
    fn next_member(
        &self,
        frame: &mut Frame<'a>,
        p: usize,
        key_expected: &'static str,
    ) -> Result<usize, ValueError> {
        frame.count += 1;
        if frame.count > self.limits.max_members {
            return Err(ValueError::TooManyMembers {
                at: p,
                max: self.limits.max_members,
                object: frame.object,
            });
        }
        if !frame.object {
            return Ok(p);
        }
        if self.bytes.get(p) != Some(&b'"') {
            return Err(self.syntax(p, key_expected));
        }
        let end = self.string(p)?;
        let key = Key {
            text: self.text,
            start: p,
            end,
        };
        if !frame.keys.insert(key, &self.keys_state) {
            return Err(ValueError::DuplicateKey {
                at: p,
                key: quote(&self.text[p..end]),
            });
        }
        let p = skip_ws(self.bytes, end);
        if self.bytes.get(p) != Some(&b':') {
            return Err(self.syntax(p, "':'"));
        }
        Ok(p + 1)
    }

    /// A string starting with the quote at `start`; returns the offset past
    /// its closing quote.
    fn string(&self, start: usize) -> Result<usize, ValueError> {
        let b = self.bytes;
        let mut p = start + 1;
        loop {
            match b.get(p) {
                None => return Err(self.syntax(p, "'\"' (unterminated string)")),
                Some(b'"') => break,
                Some(b'\\') => p = self.escape(p)?,
                Some(&c) if c < 0x20 => {
                    return Err(ValueError::ControlCharacter { at: p, code: c });
                }
                // UTF-8 continuation and lead bytes are all >= 0x80: the
                // text is a `str`, so they form valid characters.
                Some(_) => p += 1,
            }
        }
        if p - start - 1 > self.limits.max_string_bytes {
            return Err(ValueError::StringTooLong {
                at: start,
                max: self.limits.max_string_bytes,
            });
        }
        Ok(p + 1)
    }

    /// An escape starting with the backslash at `p`; returns the offset past
    /// it (past both halves of a surrogate pair).
    fn escape(&self, p: usize) -> Result<usize, ValueError> {
        match self.bytes.get(p + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(p + 2),
            Some(b'u') => {
                let unit = self.hex4(p + 2)?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = if self.bytes.get(p + 6..p + 8) == Some(b"\\u") {
                            Some(self.hex4(p + 8)?)
                        } else {
                            None
                        };
                        match low {
                            Some(0xDC00..=0xDFFF) => Ok(p + 12),
                            _ => Err(ValueError::LoneSurrogate { at: p, unit }),
                        }
                    }
                    0xDC00..=0xDFFF => Err(ValueError::LoneSurrogate { at: p, unit }),
                    _ => Ok(p + 6),
                }
            }
            _ => Err(self.syntax(p + 1, "an escape (one of \" \\ / b f n r t u)")),
        }
    }

    /// Four hex digits at `p`.
    fn hex4(&self, p: usize) -> Result<u16, ValueError> {
        let mut unit = 0u16;
        for i in p..p + 4 {
            let digit = self
                .bytes
                .get(i)
                .and_then(|&c| char::from(c).to_digit(16))
                .ok_or_else(|| self.syntax(i, "a hex digit (4 after \\u)"))?;
            unit = unit << 4 | digit as u16;
        }
        Ok(unit)
    }

    /// A number starting at `start`; returns the offset past it.
    fn number(&self, start: usize) -> Result<usize, ValueError> {
        let b = self.bytes;
        let digits = |mut p: usize| {
            while b.get(p).is_some_and(u8::is_ascii_digit) {
                p += 1;
            }
            p
        };
        let mut p = start;
        if b.get(p) == Some(&b'-') {
            p += 1;
        }
        match b.get(p) {
            Some(b'0') => p += 1,
            Some(b'1'..=b'9') => p = digits(p + 1),
            _ => return Err(self.syntax(p, "a digit")),
        }
        if b.get(p) == Some(&b'.') {
            let end = digits(p + 1);
            if end == p + 1 {
                return Err(self.syntax(end, "a digit after '.'"));
            }
            p = end;
        }
        if matches!(b.get(p), Some(b'e' | b'E')) {
            p += 1;
            if matches!(b.get(p), Some(b'+' | b'-')) {
                p += 1;
            }
            let end = digits(p);
            if end == p {
                return Err(self.syntax(end, "a digit in the exponent"));
            }
            p = end;
        }
        // The grammar above is ASCII, so `start..p` is on char boundaries,
        // and it is a subset of what `f64::from_str` accepts.
        let number = &self.text[start..p];
        let finite = match number.parse::<f64>() {
            // serde_json's default number parser is fast rather than exact
            // (within a few ULP): just below the overflow threshold it can
            // reach infinity where correct rounding gives f64::MAX. In that
            // band (nowhere near any real value) its answer counts too.
            Ok(value) if value.abs() >= NEAR_OVERFLOW => {
                value.is_finite() && serde_json::from_str::<f64>(number).is_ok()
            }
            Ok(value) => value.is_finite(),
            Err(_) => false,
        };
        if !finite {
            return Err(ValueError::NotFinite {
                at: start,
                number: quote(number),
            });
        }
        Ok(p)
    }

    fn literal(&self, p: usize, word: &'static str) -> Result<usize, ValueError> {
        let end = p + word.len();
        if self.bytes.get(p..end) == Some(word.as_bytes()) {
            return Ok(end);
        }
        // Point at the first byte that differs.
        let at = (p..end)
            .find(|&i| self.bytes.get(i) != word.as_bytes().get(i - p))
            .unwrap_or(p);
        Err(self.syntax(
            at,
            match word {
                "true" => "a value (true)",
                "false" => "a value (false)",
                _ => "a value (null)",
            },
        ))
    }

    fn syntax(&self, at: usize, expected: &'static str) -> ValueError {
        ValueError::Syntax {
            at,
            expected,
            found: self.text.get(at..).and_then(|rest| rest.chars().next()),
        }
    }
}

fn skip_ws(b: &[u8], mut p: usize) -> usize {
    while matches!(b.get(p), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        p += 1;
    }
    p
}

/// An object key already checked, by its opening quote's offset; equal and
/// hashed by its decoded characters.
struct Key<'a> {
    text: &'a str,
    /// The opening quote.
    start: usize,
    /// Past the closing quote.
    end: usize,
}

impl Key<'_> {
    fn chars(&self) -> KeyChars<'_> {
        KeyChars {
            rest: self.text.get(self.start + 1..).unwrap_or(""),
        }
    }
}

impl Key<'_> {
    /// The key as written, quotes included.
    fn raw(&self) -> &[u8] {
        self.text
            .as_bytes()
            .get(self.start..self.end)
            .unwrap_or(b"")
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.raw(), other.raw());
        // Without escapes, equal keys are equal bytes.
        if !a.contains(&b'\\') && !b.contains(&b'\\') {
            return a == b;
        }
        self.chars().eq(other.chars())
    }
}

impl Eq for Key<'_> {}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for c in self.chars() {
            state.write_u32(c as u32);
        }
        state.write_u8(0xff);
    }
}

/// Decodes a string that [`Checker::string`] accepted, from after its
/// opening quote to its closing quote. Anything malformed (which the check
/// rules out) ends it or becomes U+FFFD rather than a panic.
struct KeyChars<'a> {
    rest: &'a str,
}

impl KeyChars<'_> {
    fn unit(&mut self) -> u32 {
        let hex = self.rest.get(..4).unwrap_or("");
        self.rest = self.rest.get(4..).unwrap_or("");
        u32::from_str_radix(hex, 16).unwrap_or(0xFFFD)
    }
}

impl Iterator for KeyChars<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let c = chars.next()?;
        self.rest = chars.as_str();
        match c {
            '"' => {
                self.rest = "";
                None
            }
            '\\' => {
                let mut chars = self.rest.chars();
                let e = chars.next()?;
                self.rest = chars.as_str();
                Some(match e {
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => {
                        let mut code = self.unit();
                        if (0xD800..0xDC00).contains(&code) && self.rest.starts_with("\\u") {
                            self.rest = &self.rest[2..];
                            let low = self.unit();
                            code = 0x10000
                                + ((code - 0xD800) << 10)
                                + (low.wrapping_sub(0xDC00) & 0x3FF);
                        }
                        char::from_u32(code).unwrap_or('\u{FFFD}')
                    }
                    other => other,
                })
            }
            c => Some(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn check(text: &str) -> Result<(), ValueError> {
        check_value(text, &ValueLimits::default())
    }

    fn accepted(text: &str) {
        assert_eq!(check(text), Ok(()), "{text:?} should be accepted");
        assert!(
            serde_json::from_str::<Value>(text).is_ok(),
            "{text:?} accepted but serde_json refuses it"
        );
    }

    fn refused(text: &str) -> String {
        match check(text) {
            Ok(()) => panic!("{text:?} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn the_three_poison_values_are_refused() {
        assert_eq!(
            check("1e999"),
            Err(ValueError::NotFinite {
                at: 0,
                number: "1e999".into()
            })
        );
        assert_eq!(
            check(r#""\ud800""#),
            Err(ValueError::LoneSurrogate {
                at: 1,
                unit: 0xd800
            })
        );
        assert_eq!(
            check(&nested(129)),
            Err(ValueError::TooDeep { at: 64, max: 64 })
        );
        // Each of them also fails serde_json: that is the point.
        for poison in ["1e999", r#""\ud800""#, &nested(129)] {
            assert!(serde_json::from_str::<Value>(poison).is_err(), "{poison}");
        }
    }

    #[test]
    fn messages_name_the_problem_and_the_offset() {
        assert_eq!(
            refused(r#"{"a": [1, 1e999]}"#),
            "number 1e999 at byte 10 is not finite"
        );
        assert_eq!(
            refused(r#"  "x\ud800""#),
            r"lone surrogate \ud800 at byte 4"
        );
        assert_eq!(
            refused(&format!(" {}", nested(70))),
            "nesting deeper than 64 at byte 65"
        );
        assert_eq!(
            refused("[1, 2 3]"),
            "invalid JSON at byte 6: expected ',' or ']', found '3'"
        );
        assert_eq!(
            refused("[1,"),
            "invalid JSON at byte 3: expected a value, found end of input"
        );
        assert_eq!(
            refused(r#"{"a":1,"a":2}"#),
            r#"duplicate key "a" at byte 7"#
        );
        assert_eq!(
            refused("\"a\u{1}\""),
            "control character U+0001 unescaped in a string at byte 2"
        );
    }

    #[test]
    fn quoted_input_is_truncated() {
        let huge = format!("{}e999", "9".repeat(10_000));
        let message = refused(&huge);
        assert!(message.len() < 100, "{message}");
        assert!(message.starts_with(&format!("number {}…", "9".repeat(31))));
        let key = "k".repeat(1000);
        let message = refused(&format!(r#"{{"{key}":1,"{key}":2}}"#));
        assert!(message.len() < 100, "{message}");
        match check(&format!(r#"{{"{key}":1,"{key}":2}}"#)) {
            Err(ValueError::DuplicateKey { key, .. }) => assert_eq!(key.chars().count(), 32),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_json_is_accepted() {
        for text in [
            "0",
            "-0",
            "1E+2",
            "0.5e-3",
            "-12.25E-7",
            "1e-999",
            "123456789012345678901234567890",
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "true",
            "false",
            "null",
            r#""""#,
            r#""plain ütf-8 ✓""#,
            r#""\" \\ \/ \b \f \n \r \t \u0000 \u001f \uffff \u00E9""#,
            r#""\ud83d\ude00""#,
            r#""\uDBFF\uDFFF""#,
            "[]",
            "{}",
            " \t\r\n[ 1 , [ ] , { } , \"a\" ] \n",
            r#"{"a": {"b": [1, {"c": null}]}, "b": "a", "c": {"a": 1}}"#,
            r#"{"a": 1, "A": 2, "a ": 3, "\u0061b": 4}"#,
            r#"[{"a": 1}, {"a": 2}]"#,
            r#"{"a": {"a": {"a": 1}}}"#,
        ] {
            accepted(text);
        }
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        accepted(&nested(64));
        accepted(&format!("{}1{}", "[".repeat(64), "]".repeat(64)));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(64), "}".repeat(64));
        accepted(&objects);
        assert!(matches!(
            check(&nested(65)),
            Err(ValueError::TooDeep { .. })
        ));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert!(matches!(check(&objects), Err(ValueError::TooDeep { .. })));
        // Depth is what is open at once, not how many containers there are.
        accepted(&format!("[{}]", vec![nested(63); 100].join(",")));
        // Deep nesting needs no call stack: any depth is checked without a crash.
        let limits = ValueLimits {
            max_depth: usize::MAX,
            ..ValueLimits::default()
        };
        assert_eq!(check_value(&nested(200_000), &limits), Ok(()));
    }

    #[test]
    fn surrogates_must_pair() {
        for (text, at, unit) in [
            (r#""\ud800""#, 1, 0xd800),
            (r#""\udc00""#, 1, 0xdc00),
            (r#""\uDFFF""#, 1, 0xdfff),
            (r#""\ud800x""#, 1, 0xd800),
            (r#""\ud800\n""#, 1, 0xd800),
            (r#""\ud800\u0041""#, 1, 0xd800),
            (r#""\ud800\ud800""#, 1, 0xd800),
            (r#""\ude00\ud83d""#, 1, 0xde00),
            (r#""ok \ud83d\ude00 then \udc00""#, 22, 0xdc00),
            (r#"{"\udbff": 1}"#, 2, 0xdbff),
        ] {
            assert_eq!(
                check(text),
                Err(ValueError::LoneSurrogate { at, unit }),
                "{text}"
            );
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
        }
        assert!(matches!(
            check(r#""\ud800\u00""#),
            Err(ValueError::Syntax { .. })
        ));
    }

    #[test]
    fn numbers_must_be_finite() {
        for text in [
            "1e999",
            "-1e999",
            "1E309",
            "1.8e308",
            "[0, 2e400]",
            &"9".repeat(400),
        ] {
            assert!(
                matches!(check(text), Err(ValueError::NotFinite { .. })),
                "{text}"
            );
        }
        accepted("1e-999");
        accepted("-0.0e-400");
    }

    /// Near the largest f64, serde_json's inexact rounding overflows where
    /// exact rounding gives f64::MAX: sweep the boundary. (The converse, a
    /// number serde_json rounds down to f64::MAX that really overflows, is
    /// refused, as Python and Go would turn it into infinity.)
    #[test]
    fn nothing_accepted_overflows_serde_json_at_the_boundary() {
        let mut texts = Vec::new();
        for last in 0..100 {
            texts.push(format!("1.79769313486231{last:02}e308"));
            texts.push(format!("-0.179769313486231{last:02}e309"));
            texts.push(format!("179769313486231{last:02}{}", "0".repeat(294)));
            texts.push(format!("1797693134862315{last:02}{}.5", "0".repeat(292)));
            texts.push(format!("8.98846567431157{last:02}e307"));
        }
        for extra in 0..40 {
            texts.push(format!("1.7976931348623157{}e308", "9".repeat(extra)));
            texts.push(format!("1.797693134862315{}e308", "8".repeat(extra)));
            texts.push(format!(
                "0.{}17976931348623157e{}",
                "0".repeat(extra),
                309 + extra
            ));
        }
        let mut accepted_count = 0;
        for text in &texts {
            if check(text).is_ok() {
                accepted_count += 1;
                assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
            }
        }
        assert!(accepted_count > 0, "{accepted_count} of {}", texts.len());
        accepted("1.7976931348623157e308");
        // Written out as an integer, f64::MAX is too much for serde_json.
        let integer = f64::MAX.to_string();
        assert!(serde_json::from_str::<Value>(&integer).is_err());
        assert!(matches!(check(&integer), Err(ValueError::NotFinite { .. })));
        accepted(&serde_json::to_string(&f64::MIN).unwrap());
    }

    #[test]
    fn raw_control_characters_are_refused() {
        for c in (0u8..0x20).map(char::from) {
            let text = format!("\"a{c}b\"");
            assert_eq!(
                check(&text),
                Err(ValueError::ControlCharacter {
                    at: 2,
                    code: c as u8
                })
            );
        }
        // DEL and above are fine raw.
        accepted("\"\u{7f}\u{80}\u{9f}\"");
    }

    #[test]
    fn member_limit_is_per_container() {
        let limits = ValueLimits {
            max_members: 3,
            ..ValueLimits::default()
        };
        assert_eq!(check_value("[1,2,3]", &limits), Ok(()));
        assert_eq!(check_value(r#"{"a":1,"b":2,"c":[1,2,3]}"#, &limits), Ok(()));
        assert_eq!(check_value("[[1,2,3],[1,2,3],[1,2,3]]", &limits), Ok(()));
        assert_eq!(
            check_value("[1,2,3,4]", &limits),
            Err(ValueError::TooManyMembers {
                at: 7,
                max: 3,
                object: false
            })
        );
        assert_eq!(
            check_value(r#"{"a":1,"b":2,"c":3,"d":4}"#, &limits)
                .unwrap_err()
                .to_string(),
            "more than 3 members in one object at byte 19"
        );
        let defaults = ValueLimits::default();
        let items = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        assert_eq!(check_value(&items(4096), &defaults), Ok(()));
        assert_eq!(
            check_value(&items(4097), &defaults)
                .unwrap_err()
                .to_string(),
            format!(
                "more than 4096 elements in one array at byte {}",
                1 + 2 * 4096
            )
        );
        let zero = ValueLimits {
            max_members: 0,
            ..ValueLimits::default()
        };
        assert_eq!(check_value("[{}, []]", &limits), Ok(()));
        assert_eq!(check_value("[]", &zero), Ok(()));
        assert!(check_value("[0]", &zero).is_err());
    }

    #[test]
    fn string_limit_counts_raw_bytes() {
        let limits = ValueLimits {
            max_string_bytes: 6,
            ..ValueLimits::default()
        };
        assert_eq!(check_value(r#""abcdef""#, &limits), Ok(()));
        assert_eq!(check_value(r#""\u00e9""#, &limits), Ok(()));
        assert_eq!(check_value(r#""ééé""#, &limits), Ok(()));
        assert_eq!(
            check_value(r#"[1, "abcdefg"]"#, &limits),
            Err(ValueError::StringTooLong { at: 4, max: 6 })
        );
        assert_eq!(
            check_value(r#""\u00e9x""#, &limits),
            Err(ValueError::StringTooLong { at: 0, max: 6 })
        );
        assert!(matches!(
            check_value(r#"{"abcdefg": 1}"#, &limits),
            Err(ValueError::StringTooLong { at: 1, .. })
        ));
        let defaults = ValueLimits::default();
        let string = |n: usize| format!("\"{}\"", "x".repeat(n));
        assert_eq!(check_value(&string(65536), &defaults), Ok(()));
        assert_eq!(
            check_value(&string(65537), &defaults)
                .unwrap_err()
                .to_string(),
            "string longer than 65536 bytes at byte 0"
        );
    }

    #[test]
    fn duplicate_keys_are_found_in_small_and_large_objects_alike() {
        // Below, at and past SMALL_OBJECT_KEYS keys (the list, then the
        // set): a repeat of the first key, written plainly or escaped, is
        // refused wherever it comes; distinct keys pass.
        for n in [
            1,
            SMALL_OBJECT_KEYS - 1,
            SMALL_OBJECT_KEYS,
            SMALL_OBJECT_KEYS + 1,
            40,
        ] {
            let members: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            let distinct = format!("{{{}}}", members.join(","));
            assert_eq!(check(&distinct), Ok(()), "{distinct}");
            for repeat in [r#""k0":0"#, r#""\u006b0":0"#] {
                let text = format!("{{{},{repeat}}}", members.join(","));
                assert!(
                    matches!(check(&text), Err(ValueError::DuplicateKey { .. })),
                    "{text}: {:?}",
                    check(&text)
                );
            }
        }
        // Keys that differ only past an escape are different keys.
        assert_eq!(check(r#"{"a\n":1,"a\t":2,"a\u000b":3}"#), Ok(()));
    }

    #[test]
    fn duplicate_keys_are_refused_after_decoding() {
        for (text, at) in [
            (r#"{"a":1,"a":2}"#, 7),
            (r#"{"a":1,"b":2,"a":3}"#, 13),
            (r#"{"a":1,"\u0061":2}"#, 7),
            (r#"{"\n":1,"\u000a":2}"#, 8),
            (r#"{"😀":1,"\ud83d\ude00":2}"#, 10),
            (r#"[{"x":{"a":1,"b":{"a":1},"a":2}}]"#, 25),
        ] {
            assert!(
                matches!(check(text), Err(ValueError::DuplicateKey { at: a, .. }) if a == at),
                "{text}: {:?}",
                check(text)
            );
        }
        assert_eq!(
            refused(r#"{"\u0061":1,"a":2}"#),
            r#"duplicate key "a" at byte 12"#
        );
    }

    #[test]
    fn what_serde_json_refuses_is_refused() {
        for text in [
            "",
            " ",
            "[1,]",
            "[1,,2]",
            "[,1]",
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{a:1}"#,
            "{1:1}",
            "01",
            "-01",
            "00",
            "+1",
            ".5",
            "1.",
            "1.e3",
            "1e",
            "1e+",
            "-",
            "- 1",
            "0x10",
            "NaN",
            "-NaN",
            "Infinity",
            "-Infinity",
            "'a'",
            "['a']",
            r#""abc"#,
            r#"["abc]"#,
            r#""\"#,
            r#""\x41""#,
            r#""\u12""#,
            r#""\u12G4""#,
            "tru",
            "truex",
            "nul",
            "True",
            "None",
            "[1] [2]",
            "1 2",
            "{} x",
            "[1]]",
            "[1}",
            r#"{"a":1]"#,
            "]",
            "\u{feff}1",
            "\u{a0}1",
            "[1\u{b}]",
            "/* */ 1",
        ] {
            assert!(
                matches!(check(text), Err(ValueError::Syntax { .. })),
                "{text:?}: {:?}",
                check(text)
            );
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn limits_default() {
        assert_eq!(
            ValueLimits::default(),
            ValueLimits {
                max_depth: 64,
                max_members: 4096,
                max_string_bytes: 65536,
            }
        );
    }

    /// Any JSON value serde_json can build, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| {
                serde_json::Number::from_f64(f).map(Value::Number)
            }),
            any::<String>().prop_map(Value::String),
            "[\\u{0}-\\u{1f}\"\\\\/]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(8, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![any::<String>(), "[a-c\\n]{0,2}"],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Text built from JSON tokens, valid and not: mostly near misses.
    fn json_like() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("["),
            Just("]"),
            Just("{"),
            Just("}"),
            Just(","),
            Just(":"),
            Just(" "),
            Just("\""),
            Just("\\"),
            Just("\"a\""),
            Just("\"\\u0061\""),
            Just("\"\\ud83d\\ude00\""),
            Just("\\ud800"),
            Just("\\udc00"),
            Just("\\u00"),
            Just("\\n"),
            Just("\n"),
            Just("\u{1}"),
            Just("0"),
            Just("1"),
            Just("-"),
            Just("+"),
            Just("."),
            Just("e"),
            Just("E"),
            Just("1e999"),
            Just("1e308"),
            Just("1.7976931348623157e308"),
            Just("true"),
            Just("null"),
            Just("fals"),
            Just("é"),
        ];
        proptest::collection::vec(token, 0..24).prop_map(|tokens| tokens.concat())
    }

    proptest! {
        /// Whatever serde_json writes, compact or pretty, passes.
        #[test]
        fn serde_json_output_is_accepted(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            prop_assert_eq!(check(&text), Ok(()), "{}", text);
        }

        /// Nothing accepted fails a conforming parser; and what is refused
        /// that serde_json takes is refused for a rule beyond RFC 8259.
        #[test]
        fn accepted_text_parses(text in prop_oneof![json_like(), any::<String>()]) {
            let ours = check(&text);
            let theirs = serde_json::from_str::<Value>(&text);
            if ours.is_ok() {
                prop_assert!(theirs.is_ok(), "{:?} accepted, serde_json: {:?}", text, theirs);
            }
            if theirs.is_ok() {
                prop_assert!(
                    matches!(ours, Ok(()) | Err(ValueError::DuplicateKey { .. })),
                    "{:?} refused: {:?}", text, ours
                );
            }
        }
    }
}
