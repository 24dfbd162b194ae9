//! Base64url without padding (RFC 4648 §5), for the causal-context strings every write answer
//! carries and every write request hands back.
//!
//! The `base64` crate's general engine is built for long inputs: on a context of some 30 bytes
//! its setup and its allocations cost more than the rest of encoding the answer. This module
//! does the same job one group of three bytes at a time, into the exact allocation (encoding)
//! or the caller's buffer (decoding), and accepts exactly what `URL_SAFE_NO_PAD` accepts: no
//! padding, no whitespace, and no non-zero bits left over in the last symbol (one string per
//! byte sequence), which the tests check against that engine.

use std::fmt;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Marks a byte that is not a symbol of the alphabet in [`DECODE`].
const INVALID: u8 = 0xff;

/// The value of each symbol, `INVALID` for every other byte.
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a string is not base64url without padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A byte outside the alphabet (padding included), at this offset.
    InvalidByte(usize, u8),
    /// A length that leaves one symbol over: no byte sequence encodes to it.
    InvalidLength(usize),
    /// The last symbol, at this offset, has bits set that no byte sequence sets.
    InvalidLastSymbol(usize, u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidByte(at, b) => write!(f, "invalid byte {b:#04x} at offset {at}"),
            DecodeError::InvalidLength(len) => write!(f, "invalid length {len}"),
            DecodeError::InvalidLastSymbol(at, b) => {
                write!(f, "invalid last symbol {b:#04x} at offset {at}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// The length of the encoding of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    n / 3 * 4 + [0, 2, 3][n % 3]
}

/// The number of bytes a string of `len` symbols decodes to (if it decodes at all).
pub fn decoded_len(len: usize) -> usize {
    len / 4 * 3 + [0, 0, 1, 2][len % 4]
}

/// The encoding of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let symbol = |v: u32| ALPHABET[(v & 63) as usize];
    // Written by index into the exact length: appending checked the capacity at every group.
    let mut out = vec![0u8; encoded_len(bytes.len())];
    let mut groups = bytes.chunks_exact(3);
    let mut quads = out.chunks_exact_mut(4);
    for (g, q) in (&mut groups).zip(&mut quads) {
        let v = u32::from(g[0]) << 16 | u32::from(g[1]) << 8 | u32::from(g[2]);
        q.copy_from_slice(&[symbol(v >> 18), symbol(v >> 12), symbol(v >> 6), symbol(v)]);
    }
    let tail = quads.into_remainder();
    match *groups.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            tail.copy_from_slice(&[symbol(v >> 18), symbol(v >> 12)]);
        }
        [a, b] => {
            let v = u32::from(a) << 16 | u32::from(b) << 8;
            tail.copy_from_slice(&[symbol(v >> 18), symbol(v >> 12), symbol(v >> 6)]);
        }
        _ => {}
    }
    String::from_utf8(out).expect("the alphabet is ASCII")
}

/// Decodes `s` into the start of `out`, which must hold [`decoded_len`]`(s.len())` bytes;
/// returns that length.
///
/// Errors: [`DecodeError`] for anything [`encode`] never produces. Panics only when `out` is
/// too short.
pub fn decode_to_slice(s: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
    if s.len() % 4 == 1 {
        return Err(DecodeError::InvalidLength(s.len()));
    }
    let n = decoded_len(s.len());
    let out = &mut out[..n];
    // Symbol values are below 64 and INVALID has the high bit: one test of the OR of a group
    // finds any invalid byte.
    let invalid = |from: usize| -> DecodeError {
        let at = from
            + s[from..]
                .iter()
                .position(|b| DECODE[*b as usize] == INVALID)
                .unwrap_or(0);
        DecodeError::InvalidByte(at, s[at])
    };
    let mut quads = s.chunks_exact(4);
    for (i, q) in (&mut quads).enumerate() {
        let [a, b, c, d] = [q[0], q[1], q[2], q[3]].map(|x| DECODE[x as usize]);
        if (a | b | c | d) & 0x80 != 0 {
            return Err(invalid(i * 4));
        }
        let v = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
        out[i * 3..i * 3 + 3].copy_from_slice(&v.to_be_bytes()[1..]);
    }
    let rest = quads.remainder();
    if rest.is_empty() {
        return Ok(n);
    }
    let from = s.len() - rest.len();
    let mut v = 0u32;
    for (k, x) in rest.iter().enumerate() {
        let d = DECODE[*x as usize];
        if d == INVALID {
            return Err(invalid(from));
        }
        v |= u32::from(d) << (18 - 6 * k);
    }
    // The bits of the last symbol below the bytes it completes must be zero.
    let unused = if rest.len() == 2 { 0xffff } else { 0xff };
    if v & unused != 0 {
        return Err(DecodeError::InvalidLastSymbol(s.len() - 1, s[s.len() - 1]));
    }
    let tail = &mut out[from / 4 * 3..];
    tail.copy_from_slice(&v.to_be_bytes()[1..1 + tail.len()]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use proptest::prelude::*;

    fn decode(s: &str) -> Result<Vec<u8>, DecodeError> {
        let mut out = vec![0; decoded_len(s.len())];
        let n = decode_to_slice(s.as_bytes(), &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    #[test]
    fn known_strings() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (&[0xfb, 0xff, 0xfe], "-__-"),
        ] {
            assert_eq!(encode(bytes), text);
            assert_eq!(encoded_len(bytes.len()), text.len());
            assert_eq!(decode(text).unwrap(), bytes);
        }
    }

    #[test]
    fn what_is_refused() {
        assert_eq!(decode("Zg=="), Err(DecodeError::InvalidByte(2, b'=')));
        assert_eq!(decode("Zm9v+A"), Err(DecodeError::InvalidByte(4, b'+')));
        assert_eq!(decode("Zm9vY"), Err(DecodeError::InvalidLength(5)));
        // "Zh" sets bits below the one byte it encodes: "Zg" is that byte's only spelling.
        assert_eq!(decode("Zh"), Err(DecodeError::InvalidLastSymbol(1, b'h')));
        assert_eq!(decode("Zm9"), Err(DecodeError::InvalidLastSymbol(2, b'9')));
    }

    proptest! {
        #[test]
        fn prop_encoding_matches_the_base64_crate(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(&s, &URL_SAFE_NO_PAD.encode(&bytes));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }

        #[test]
        fn prop_decoding_accepts_what_the_base64_crate_accepts(s in "[A-Za-z0-9_=+/-]{0,12}") {
            prop_assert_eq!(decode(&s).ok(), URL_SAFE_NO_PAD.decode(&s).ok());
        }
    }
}
