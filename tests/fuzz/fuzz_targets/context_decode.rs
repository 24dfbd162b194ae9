//! Fuzz target: see `kv_fuzz::core_checks::context_decode` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::core_checks::context_decode(data));
