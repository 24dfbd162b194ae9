//! Keys onto the 64-bit ring.
//!
//! A key's position on the consistent-hash ring is the xxh3-64 hash of its bytes. Every node,
//! the CLI and the WebAssembly SDK must agree on it bit for bit, so the function is pinned by a
//! test against a known value: changing it would silently move every key to other replicas.
//!
//! Besides the ring position, other parts of the crate need hashes that are *independent* of it
//! (Merkle buckets, token allocation tie-breaks): [`seeded_hash`] and [`mix64`] give those.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A position on the ring: the whole `u64` range, wrapping from `u64::MAX` back to 0.
pub type Token = u64;

/// The ring position of a key: xxh3-64 of its bytes (seed 0, default secret).
///
/// Law: deterministic and platform independent (same value on x86-64 and wasm32).
pub fn key_token(key: &[u8]) -> Token {
    xxh3_64(key)
}

/// xxh3-64 of `bytes` with `seed`. Different seeds give hashes that are independent of each
/// other and of [`key_token`], so a key's Merkle bucket does not correlate with its token.
pub fn seeded_hash(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

/// A bijective 64-bit mixer (the SplitMix64 finalizer): turns counters and seeds into
/// well-spread values without hashing a byte buffer.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_token_is_pinned_xxh3() {
        // Reference value of XXH3_64bits("") from the xxHash specification.
        assert_eq!(key_token(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(key_token(b"user:42"), xxh3_64(b"user:42"));
        assert_ne!(key_token(b"a"), key_token(b"b"));
    }

    #[test]
    fn seeded_hash_depends_on_seed() {
        assert_eq!(seeded_hash(b"k", 0), key_token(b"k"));
        assert_ne!(seeded_hash(b"k", 1), key_token(b"k"));
        assert_ne!(seeded_hash(b"k", 1), seeded_hash(b"k", 2));
    }

    #[test]
    fn mix64_spreads_neighbours() {
        assert_ne!(mix64(0), 0);
        assert_ne!(mix64(1), mix64(2));
        // Neighbouring inputs differ in about half of their bits.
        let flipped = (mix64(1) ^ mix64(2)).count_ones();
        assert!((16..=48).contains(&flipped), "{flipped} bits differ");
    }

    proptest! {
        #[test]
        fn key_token_is_deterministic(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(key_token(&key), key_token(&key.clone()));
        }

        #[test]
        fn mix64_is_injective_on_pairs(a in any::<u64>(), b in any::<u64>()) {
            prop_assume!(a != b);
            prop_assert_ne!(mix64(a), mix64(b));
        }
    }
}
