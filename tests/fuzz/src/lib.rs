//! The fuzz targets' checks, one function per target, shared with the regression tests that
//! replay every stored input (`kv-core/tests/fuzz_regressions.rs`,
//! `kvd/storage/tests/fuzz_regressions.rs`, `kvd/tests/fuzz_regressions.rs` include these files), so a stored crash is
//! replayed through exactly what found it.

pub mod core_checks;
pub mod input;
pub mod kvd_checks;
pub mod storage_checks;
