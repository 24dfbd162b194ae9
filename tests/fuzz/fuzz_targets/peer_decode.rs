//! Fuzz target: see `kv_fuzz::kvd_checks::peer_decode` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::kvd_checks::peer_decode(data));
