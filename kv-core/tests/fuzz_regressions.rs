//! Replays every stored fuzz input of the kv-core targets (`tests/fuzz/regressions/<target>/`:
//! each crash the fuzzers found, plus a seed of their corpora) through the very checks the
//! fuzz targets run, on stable Rust, as part of the regular suite. Each input must give a
//! value or an error: no panic, no failed law.

use std::path::{Path, PathBuf};

#[path = "../../tests/fuzz/src/core_checks.rs"]
mod core_checks;
#[allow(dead_code)]
#[path = "../../tests/fuzz/src/input.rs"]
mod input;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no stored inputs in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// Runs `check` on every stored input of `target`; names every input that failed.
fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut failed = Vec::new();
    let all = inputs(target);
    for (path, data) in &all {
        if std::panic::catch_unwind(|| check(data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: inputs that fail: {failed:#?}");
    println!("{target}: {} stored inputs replayed", all.len());
}

#[test]
fn wire_decode_inputs() {
    replay("wire_decode", core_checks::wire_decode);
}

#[test]
fn context_decode_inputs() {
    replay("context_decode", core_checks::context_decode);
}

#[test]
fn sibling_set_decode_inputs() {
    replay("sibling_set_decode", core_checks::sibling_set_decode);
}
