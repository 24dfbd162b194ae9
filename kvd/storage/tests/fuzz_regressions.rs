//! Replays every stored fuzz input of the storage targets (`tests/fuzz/regressions/<target>/`:
//! each crash the fuzzers found, plus a seed of their corpora) through the very checks the
//! fuzz targets run, on stable Rust, as part of the regular suite. Each input must give a
//! value or an error: no panic, no failed law.

#[allow(dead_code)]
#[path = "../../../tests/fuzz/src/input.rs"]
mod input;
#[path = "../../../tests/fuzz/src/replay.rs"]
mod replay;
#[path = "../../../tests/fuzz/src/storage_checks.rs"]
mod storage_checks;

fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let dir = replay::regressions(env!("CARGO_MANIFEST_DIR"), 2);
    replay::replay(&dir, target, check);
}

#[test]
fn commit_log_replay_inputs() {
    replay("commit_log_replay", storage_checks::commit_log_replay);
}

#[test]
fn sstable_block_inputs() {
    replay("sstable_block", storage_checks::sstable_block);
}

#[test]
fn sstable_table_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    replay("sstable_table", move |data| {
        storage_checks::sstable_table(&path, data)
    });
}

#[test]
fn bloom_filter_inputs() {
    replay("bloom_filter", storage_checks::bloom_filter);
}

#[test]
fn manifest_decode_inputs() {
    replay("manifest_decode", storage_checks::manifest_decode);
}
