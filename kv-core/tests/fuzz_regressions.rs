//! Replays every stored fuzz input of the kv-core targets (`tests/fuzz/regressions/<target>/`:
//! each crash the fuzzers found, plus a seed of their corpora) through the very checks the
//! fuzz targets run, on stable Rust, as part of the regular suite. Each input must give a
//! value or an error: no panic, no failed law.

#[path = "../../tests/fuzz/src/core_checks.rs"]
mod core_checks;
#[allow(dead_code)]
#[path = "../../tests/fuzz/src/input.rs"]
mod input;
#[path = "../../tests/fuzz/src/replay.rs"]
mod replay;

fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let dir = replay::regressions(env!("CARGO_MANIFEST_DIR"), 1);
    replay::replay(&dir, target, check);
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
