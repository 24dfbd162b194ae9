//! Replays every stored fuzz input of the kvd targets (`tests/fuzz/regressions/peer_decode/`:
//! seeds of each peer frame kind and whatever the fuzzer found) through the very check the
//! fuzz target runs, on stable Rust, as part of the regular suite.

#[path = "../../tests/fuzz/src/kvd_checks.rs"]
mod kvd_checks;
#[path = "../../tests/fuzz/src/replay.rs"]
mod replay;

#[test]
fn peer_decode_inputs() {
    let dir = replay::regressions(env!("CARGO_MANIFEST_DIR"), 1);
    replay::replay(&dir, "peer_decode", kvd_checks::peer_decode);
    // The seeds are valid frames: the check would be vacuous if none decoded.
    let decoded = replay::inputs(&dir, "peer_decode")
        .iter()
        .filter(|(_, data)| {
            kvd::peer_codec::decode_request(data).is_ok()
                || kvd::peer_codec::decode_response(data).is_ok()
        })
        .count();
    assert!(decoded >= 8, "only {decoded} stored inputs decode");
}
