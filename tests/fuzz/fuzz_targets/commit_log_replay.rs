//! Fuzz target: see `kv_fuzz::storage_checks::commit_log_replay` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::storage_checks::commit_log_replay(data));
