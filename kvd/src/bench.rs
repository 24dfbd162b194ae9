//! `kvd bench-storage`: db_bench-style workloads on the storage engine alone (no network).
//! The workloads live with the engine (`storage::bench`); this file is the command line.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::config::whole_number;
use crate::storage::bench::{self, BenchConfig};
use crate::storage::SyncMode;
use crate::{Error, Result};

/// Flags of `kvd bench-storage` (INTERFACE.md).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated: fillseq, fillrandom, readrandom, readmissing, readwhilewriting, scan.
    #[arg(
        long,
        default_value = "fillseq,fillrandom,readrandom,readmissing,readwhilewriting,scan",
        value_parser = benchmark_list
    )]
    pub benchmarks: BenchmarkList,
    /// Number of keys.
    #[arg(long, default_value_t = 1_000_000, value_parser = at_least_one::<u64>)]
    pub num: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16, value_parser = at_least_one::<usize>)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100, value_parser = whole_number::<usize>)]
    pub value_size: usize,
    /// Commit-log durability: always, interval or none (db_bench's default is none: the
    /// commit log is written but not fsynced).
    #[arg(long, default_value = "none", value_parser = sync_mode)]
    pub sync: SyncMode,
    /// Block cache budget in MiB (db_bench's default is 8).
    #[arg(long, default_value_t = 8, value_parser = whole_number::<usize>)]
    pub cache_mb: usize,
    /// Threads issuing operations (at least 1).
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>)]
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

/// The benchmarks to run, in order, each a known name.
#[derive(Clone, Debug)]
pub struct BenchmarkList(pub Vec<String>);

/// Parses `--benchmarks`: a comma-separated list of known names, none empty.
fn benchmark_list(s: &str) -> std::result::Result<BenchmarkList, String> {
    let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
    // `readseq` is db_bench's name for `scan`.
    let known = |n: &str| bench::BENCHMARKS.contains(&n) || n == "readseq";
    if let Some(bad) = names.iter().find(|n| !known(n)) {
        let what = if bad.is_empty() {
            "an empty name".to_string()
        } else {
            format!("unknown benchmark '{bad}'")
        };
        return Err(format!(
            "{what}; give a comma-separated list of {}",
            bench::BENCHMARKS.join(", ")
        ));
    }
    Ok(BenchmarkList(names))
}

/// A whole number of at least 1.
fn at_least_one<T: TryFrom<u64>>(s: &str) -> std::result::Result<T, String> {
    match whole_number::<u64>(s)? {
        0 => Err("must be at least 1".into()),
        _ => whole_number(s),
    }
}

fn sync_mode(s: &str) -> std::result::Result<SyncMode, String> {
    SyncMode::parse(s).ok_or_else(|| "not one of always, interval, none".to_string())
}

/// Runs the benchmarks and prints the results.
pub fn run(args: BenchArgs) -> Result<()> {
    let (db, temp_db) = match &args.db {
        Some(d) => (d.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("kvd-bench-{}", crate::random_u64()));
            (dir.clone(), Some(RemoveOnDrop(dir)))
        }
    };
    // Before any other thread exists, so that every thread the run starts inherits the mask.
    watch_signals(temp_db.as_ref().map(|t| t.0.clone()))?;
    let cfg = BenchConfig {
        benchmarks: args.benchmarks.0.clone(),
        num: args.num,
        key_size: args.key_size,
        value_size: args.value_size,
        sync: args.sync,
        cache_mb: args.cache_mb,
        threads: args.threads,
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

/// SIGINT and SIGTERM end the run at once, like their default action, but first remove the
/// run's own temporary database (`temp_db`; never a `--db` the user gave), which would
/// otherwise stay behind in the temporary directory. The exit status is 128 + the signal, as a
/// shell reports a process killed by it.
///
/// The two signals are blocked in this thread (and so in every thread started after it) and
/// taken by one watcher thread with sigwait(2): the benchmark's threads go on undisturbed
/// until the process exits.
fn watch_signals(temp_db: Option<PathBuf>) -> Result<()> {
    // SAFETY: sigemptyset/sigaddset initialize a sigset_t we own; pthread_sigmask changes
    // only this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(Error::Io(format!(
                "cannot block SIGINT and SIGTERM: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        set
    };
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialized sigset_t and `sig` a valid out-pointer.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            if let Some(dir) = &temp_db {
                // The benchmark threads may still be writing into it: try a few times.
                for _ in 0..20 {
                    let _ = std::fs::remove_dir_all(dir);
                    if !dir.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            std::process::exit(128 + sig);
        })
        .map_err(|e| Error::Io(format!("cannot start the signal watcher: {e}")))?;
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
