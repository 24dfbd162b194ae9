//! `kvd bench-storage`: db_bench-style workloads on the storage engine alone (no network).
//! The workloads live with the engine (`storage::bench`); this file is the command line.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::storage::bench::{self, BenchConfig};
use crate::storage::SyncMode;
use crate::{Error, Result};

/// Flags of `kvd bench-storage` (INTERFACE.md).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated: fillseq, fillrandom, readrandom, readmissing, readwhilewriting, scan.
    #[arg(
        long,
        default_value = "fillseq,fillrandom,readrandom,readmissing,readwhilewriting,scan"
    )]
    pub benchmarks: String,
    /// Number of keys.
    #[arg(long, default_value_t = 1_000_000)]
    pub num: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Commit-log durability: always, interval or none (db_bench's default is none: the
    /// commit log is written but not fsynced).
    #[arg(long, default_value = "none")]
    pub sync: String,
    /// Block cache budget in MiB (db_bench's default is 8).
    #[arg(long, default_value_t = 8)]
    pub cache_mb: usize,
    /// Threads issuing operations.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Compress data blocks with LZ4 (off, like the db_bench comparison).
    #[arg(long)]
    pub compression: bool,
    /// Database directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmarks and prints the results.
pub fn run(args: BenchArgs) -> Result<()> {
    let sync = SyncMode::parse(&args.sync).ok_or_else(|| {
        Error::Config(format!(
            "--sync {} is not one of always, interval, none",
            args.sync
        ))
    })?;
    let (db, _cleanup) = match &args.db {
        Some(d) => (d.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("kvd-bench-{}", crate::random_u64()));
            (dir.clone(), Some(RemoveOnDrop(dir)))
        }
    };
    let cfg = BenchConfig {
        benchmarks: args
            .benchmarks
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        num: args.num,
        key_size: args.key_size,
        value_size: args.value_size,
        sync,
        cache_mb: args.cache_mb,
        threads: args.threads.max(1),
        compression: args.compression,
        db,
        ..BenchConfig::default()
    };
    let quiet = args.json;
    let results = bench::run(&cfg, |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })
    .map_err(|e| Error::Io(format!("benchmark failed: {e}")))?;
    if args.json {
        let results: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "benchmark": r.benchmark,
                    "ops": r.ops,
                    "ops_per_sec": r.ops_per_sec,
                    "micros_per_op": r.micros_per_op,
                    "p99_us": r.p99_us,
                    "write_amplification": r.write_amplification,
                })
            })
            .collect();
        println!("{}", json!({ "results": results }));
    } else {
        println!(
            "{:<18} {:>10} {:>12} {:>10} {:>10} {:>8}",
            "benchmark", "ops", "ops/s", "us/op", "p99 us", "w-amp"
        );
        for r in &results {
            let wa = r
                .write_amplification
                .map(|w| format!("{w:.2}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<18} {:>10} {:>12.0} {:>10.2} {:>10.1} {:>8}",
                r.benchmark, r.ops, r.ops_per_sec, r.micros_per_op, r.p99_us, wa
            );
        }
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
