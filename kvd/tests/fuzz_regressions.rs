//! Replays every stored fuzz input of the kvd targets (`tests/fuzz/regressions/peer_decode/`:
//! seeds of each peer frame kind and whatever the fuzzer found) through the very check the
//! fuzz target runs, on stable Rust, as part of the regular suite.

use std::path::Path;

#[path = "../../tests/fuzz/src/kvd_checks.rs"]
mod kvd_checks;

#[test]
fn peer_decode_inputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/regressions/peer_decode");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no stored inputs in {}", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| kvd_checks::peer_decode(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "inputs that fail: {failed:#?}");
    // The seeds are valid frames: the check would be vacuous if none decoded.
    let decoded = files
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap();
            kvd::peer_codec::decode_request(&data).is_ok()
                || kvd::peer_codec::decode_response(&data).is_ok()
        })
        .count();
    assert!(decoded >= 8, "only {decoded} stored inputs decode");
    println!("peer_decode: {} stored inputs replayed", files.len());
}
