//! db_bench-style benchmark of the storage engine alone.
//!
//! `cargo run --release -p kvd-storage --example bench_storage -- [--benchmarks fillseq,fillrandom,readrandom,readmissing,readwhilewriting,scan] [--num N] [--key-size 16] [--value-size 100] [--sync always|interval|none] [--cache-mb M] [--db DIR] [--threads T] [--memtable-mb M] [--compression] [--json]`

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cfg, json) = match kvd_storage::bench::parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_storage: {e}");
            std::process::exit(2);
        }
    };
    if !json {
        println!(
            "kvd-storage bench: {} keys, {} B keys, {} B values, sync {:?}, cache {} MiB, {} threads, compression {}, db {}",
            cfg.num,
            cfg.key_size,
            cfg.value_size,
            cfg.sync,
            cfg.cache_mb,
            cfg.threads,
            cfg.compression,
            cfg.db.display()
        );
    }
    match kvd_storage::bench::run(&cfg, |line| {
        if !json {
            println!("{line}");
        }
    }) {
        Ok(results) => {
            if json {
                println!("{}", kvd_storage::bench::results_json(&results));
            }
        }
        Err(e) => {
            eprintln!("bench_storage: {e}");
            std::process::exit(1);
        }
    }
}
