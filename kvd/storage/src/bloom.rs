//! Bloom filters, one per table, over xxh3 hashes of the keys.
//!
//! Encoding: the bit array followed by one byte holding the number of probes `k`.
//! Probes use double hashing (h1 + i*h2) of one 64-bit hash, as in LevelDB.
//! Law: a key added to the filter always tests positive (no false negatives).

/// Builds a filter for `hashes` (xxh3 of each key) with `bits_per_key` bits per key.
pub(crate) fn build(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    // k = bits_per_key * ln 2 minimises the false-positive rate.
    let k = ((bits_per_key as f64) * 0.69).round().clamp(1.0, 30.0) as u8;
    let bits = (hashes.len() * bits_per_key).max(64);
    let bytes = bits.div_ceil(8);
    let bits = bytes * 8;
    let mut out = vec![0u8; bytes + 1];
    for &h in hashes {
        let (mut h1, h2) = split(h);
        for _ in 0..k {
            let bit = (h1 % bits as u64) as usize;
            out[bit / 8] |= 1 << (bit % 8);
            h1 = h1.wrapping_add(h2);
        }
    }
    out[bytes] = k;
    out
}

fn split(h: u64) -> (u64, u64) {
    // The rotation gives an independent-enough second hash; the `| 1` keeps it non-zero.
    (h, h.rotate_left(32) | 1)
}

/// Hash of a key as used by filters.
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// True if the key with hash `h` may be in the set; false means it certainly is not.
/// An empty or malformed filter answers true (it cannot exclude anything).
pub(crate) fn may_contain(filter: &[u8], h: u64) -> bool {
    let Some((&k, bitsarr)) = filter.split_last() else {
        return true;
    };
    if bitsarr.is_empty() || k == 0 || k > 30 {
        return true;
    }
    let bits = (bitsarr.len() * 8) as u64;
    let (mut h1, h2) = split(h);
    for _ in 0..k {
        let bit = (h1 % bits) as usize;
        if bitsarr[bit / 8] & (1 << (bit % 8)) == 0 {
            return false;
        }
        h1 = h1.wrapping_add(h2);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let n = 20_000u64;
        let hashes: Vec<u64> = (0..n)
            .map(|i| hash_key(format!("key{i:08}").as_bytes()))
            .collect();
        let f = build(&hashes, 10);
        for &h in &hashes {
            assert!(may_contain(&f, h));
        }
        let probes = 100_000u64;
        let fp = (0..probes)
            .filter(|i| may_contain(&f, hash_key(format!("miss{i:08}").as_bytes())))
            .count();
        let rate = fp as f64 / probes as f64;
        println!(
            "bloom false-positive rate at 10 bits/key: {:.3}%",
            rate * 100.0
        );
        assert!(rate < 0.02, "false-positive rate {rate}");
    }
}
