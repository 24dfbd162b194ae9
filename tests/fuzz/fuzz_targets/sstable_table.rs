//! Fuzz target: see `kv_fuzz::storage_checks::sstable_table` for what it feeds and checks.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch directory per fuzzing process (in memory when /dev/shm exists); the table file
/// in it is rewritten for every input. run.sh removes it afterwards.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("kvd-fuzz-table-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::storage_checks::sstable_table(dir(), data));
