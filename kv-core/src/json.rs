//! JSON for the frames every request passes through, written and read by hand.
//!
//! A put or a get costs the node about as much in `serde_json` as in everything else it does
//! in user space: the derived decoder walks a map of sixteen optional fields, and the
//! serializer escapes strings one byte at a time through a table. The hot frames are small and
//! flat, so this module:
//!
//! - writes strings and integers exactly as `serde_json` writes them ([`write_str`],
//!   [`write_u64`], [`write_i64`]), checking eight bytes at a time for what needs escaping;
//! - reads a flat object of scalars ([`scan_object`]) and gives up (returns `false`) on anything
//!   it does not take the short way: escapes in a string, fractions and exponents, `null`,
//!   nesting. Callers then decode with `serde_json`, so what is accepted and every error
//!   message stay `serde_json`'s. Where the scanner does succeed, it reads what `serde_json`
//!   would have read (tested against it in [`crate::wire`]).

/// One scalar member of a flat object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A string without escapes, as it stood between its quotes.
    Str(&'a str),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    NegInt(i64),
    Bool(bool),
}

/// The bytes of `word` below `n` (n <= 128), flagged by their high bit. The lowest flag is
/// exact (no borrow reaches the first such byte); flags above it may be false.
#[inline]
const fn has_less(word: u64, n: u8) -> u64 {
    const ONES: u64 = u64::MAX / 255;
    word.wrapping_sub(ONES * n as u64) & !word & (ONES * 0x80)
}

/// The bytes of `word` equal to `b`, flagged as by [`has_less`].
#[inline]
const fn has_byte(word: u64, b: u8) -> u64 {
    has_less(word ^ (u64::MAX / 255 * b as u64), 1)
}

/// The index of the first byte of `bytes[i..]` that a JSON string cannot hold as it is (a
/// quote, a backslash or a control character), or `bytes.len()`. Eight bytes at a time: the
/// lowest flag of the three tests is the first such byte. A string's contents end at such a
/// byte when it is its closing quote and has no escape before it.
#[inline]
pub fn find_special(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found = has_less(word, 0x20) | has_byte(word, b'"') | has_byte(word, b'\\');
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b < 0x20 || b == b'"' || b == b'\\' {
            break;
        }
        i += 1;
    }
    i
}

/// Appends `s` as a JSON string, quotes included, escaped as `serde_json` escapes it.
pub fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push('"');
    let mut start = 0;
    loop {
        let at = find_special(bytes, start);
        // Both ends are next to ASCII (or the ends of `s`): character boundaries.
        out.push_str(&s[start..at]);
        let Some(&b) = bytes.get(at) else { break };
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[(b >> 4) as usize]));
                out.push(char::from(HEX[(b & 0xf) as usize]));
            }
        }
        start = at + 1;
    }
    out.push('"');
}

/// The length of what [`write_str`] appends for `s`, quotes included, without writing it.
pub fn escaped_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut len = bytes.len() + 2;
    let mut at = find_special(bytes, 0);
    while let Some(&b) = bytes.get(at) {
        // A two-character escape (`\n`, `\"`, ...) adds one byte, `\u00XX` adds five.
        len += match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            _ => 5,
        };
        at = find_special(bytes, at + 1);
    }
    len
}

/// Appends `n` in decimal.
pub fn write_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `n` in decimal.
pub fn write_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    write_u64(out, n.unsigned_abs());
}

/// Appends `true` or `false`.
pub fn write_bool(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

/// Reads `text` as one JSON object whose members are all scalars, calling `member` for each
/// in order. Returns `false`, having stopped, when `member` does, or when the text is not a
/// flat object the short way can read (see the module notes): the caller then decodes with
/// `serde_json`, which takes or refuses it. Returns `true` when the whole text was read.
pub fn scan_object<'a>(text: &'a str, mut member: impl FnMut(&'a str, Scalar<'a>) -> bool) -> bool {
    let mut s = Scanner {
        bytes: text.as_bytes(),
        text,
        at: 0,
    };
    if !s.eat(b'{') {
        return false;
    }
    if s.eat(b'}') {
        return s.at_end();
    }
    loop {
        let Some(name) = s.string() else { return false };
        if !s.eat(b':') {
            return false;
        }
        let Some(value) = s.scalar() else {
            return false;
        };
        if !member(name, value) {
            return false;
        }
        if s.eat(b',') {
            continue;
        }
        return s.eat(b'}') && s.at_end();
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// After whitespace, the byte `b`, consumed.
    fn eat(&mut self, b: u8) -> bool {
        self.skip_space();
        if self.bytes.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_space();
        self.at == self.bytes.len()
    }

    /// After whitespace, a string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        let end = find_special(self.bytes, start);
        if self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        self.text.get(start..end)
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        self.skip_space();
        match *self.bytes.get(self.at)? {
            b'"' => self.string().map(Scalar::Str),
            b't' => self.word(b"true").then_some(Scalar::Bool(true)),
            b'f' => self.word(b"false").then_some(Scalar::Bool(false)),
            b'-' => {
                self.at += 1;
                let n = self.digits()?;
                // Zero and i64::MIN are left to serde_json (it reads `-0` as a float).
                (n != 0 && n <= i64::MAX as u64).then(|| Scalar::NegInt(-(n as i64)))
            }
            b'0'..=b'9' => self.digits().map(Scalar::UInt),
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(w) {
            self.at += w.len();
            true
        } else {
            false
        }
    }

    /// An unsigned JSON integer: no leading zeros, no fraction or exponent after it, no
    /// overflow.
    fn digits(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let len = self.at - start;
        let leading_zero = len > 1 && self.bytes[start] == b'0';
        let more = matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'));
        (len > 0 && !leading_zero && !more).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(s: &str) -> String {
        let mut out = String::new();
        write_str(&mut out, s);
        out
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for b in 0u8..128 {
            let s = char::from(b).to_string();
            assert_eq!(written(&s), serde_json::to_string(&s).unwrap(), "byte {b}");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: Vec<char> = "ab\"\\\n\t\u{1}\u{1f}\u{7f}é€😀 /xyz0123456789"
            .chars()
            .collect();
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            assert_eq!(written(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            assert_eq!(escaped_len(&s), written(&s).len(), "{s:?}");
        }
        for b in 0u8..128 {
            let s = char::from(b).to_string().repeat(9);
            assert_eq!(escaped_len(&s), written(&s).len(), "byte {b}");
        }
    }

    #[test]
    fn integers_are_written_as_serde_json_writes_them() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX - 1, u64::MAX] {
            let mut out = String::new();
            write_u64(&mut out, n);
            assert_eq!(out, serde_json::to_string(&n).unwrap());
        }
        for n in [0i64, -1, 1, -10, i64::MIN, i64::MAX] {
            let mut out = String::new();
            write_i64(&mut out, n);
            assert_eq!(out, serde_json::to_string(&n).unwrap());
        }
    }

    fn scanned(text: &str) -> Option<Vec<(&str, Scalar<'_>)>> {
        let mut members = Vec::new();
        scan_object(text, |k, v| {
            members.push((k, v));
            true
        })
        .then_some(members)
    }

    #[test]
    fn flat_objects_are_read() {
        assert_eq!(scanned("{}"), Some(vec![]));
        assert_eq!(
            scanned(" { \"a\" : \"x y\" ,\"b\":12,\"c\":-3,\"d\":true,\"e\":false,\"é\":\"€\"}\n"),
            Some(vec![
                ("a", Scalar::Str("x y")),
                ("b", Scalar::UInt(12)),
                ("c", Scalar::NegInt(-3)),
                ("d", Scalar::Bool(true)),
                ("e", Scalar::Bool(false)),
                ("é", Scalar::Str("€")),
            ])
        );
        assert_eq!(
            scanned(&format!("{{\"n\":{}}}", u64::MAX)),
            Some(vec![("n", Scalar::UInt(u64::MAX))])
        );
    }

    #[test]
    fn anything_else_is_left_to_serde_json() {
        for text in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1}x",
            "{\"a\":1}{}",
            "{\"a\":\"x\\ny\"}",
            "{\"a\\\"\":1}",
            "{\"a\":\"x\u{1}\"}",
            "{\"a\":\"x",
            "{\"a\":01}",
            "{\"a\":1.5}",
            "{\"a\":1e3}",
            "{\"a\":-0}",
            "{\"a\":-}",
            "{\"a\":null}",
            "{\"a\":tru}",
            "{\"a\":[1]}",
            "{\"a\":{}}",
            "{\"a\":18446744073709551616}",
            "{\"a\":-9223372036854775808}",
            "{a:1}",
        ] {
            assert_eq!(scanned(text), None, "{text:?}");
        }
        // A member refused by the caller stops the scan.
        assert!(!scan_object("{\"a\":1,\"b\":2}", |k, _| k == "a"));
    }
}
