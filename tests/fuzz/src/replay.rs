//! Replays the stored inputs of a fuzz target (`tests/fuzz/regressions/<target>/`) through the
//! target's check; the regression tests of kv-core, kvd-storage and kvd include this file.

use std::path::{Path, PathBuf};

/// `tests/fuzz/regressions`, from the manifest dir of the crate whose test runs (`up` levels
/// below the repository's root).
pub fn regressions(manifest_dir: &str, up: usize) -> PathBuf {
    let mut dir = PathBuf::from(manifest_dir);
    for _ in 0..up {
        dir.push("..");
    }
    dir.join("tests/fuzz/regressions")
}

/// The stored inputs of `target` in `regressions`, by file name.
pub fn inputs(regressions: &Path, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = regressions.join(target);
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
pub fn replay(regressions: &Path, target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut failed = Vec::new();
    let all = inputs(regressions, target);
    for (path, data) in &all {
        if std::panic::catch_unwind(|| check(data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: inputs that fail: {failed:#?}");
    println!("{target}: {} stored inputs replayed", all.len());
}
