//! `kvcli bench`: a load generator in the spirit of redis-benchmark. Each client is its own
//! connection with one request in flight; latencies go into an HDR histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use kv_core::wire::ClientOp;
use serde_json::json;

use crate::client::{Client, ClientError};

/// The workloads.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Pure writes of fresh values to random keys.
    Put,
    /// Pure reads of random keys, after writing `--records` keys first.
    Get,
}

/// Flags of `kvcli bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to run.
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Distinct keys (the get workload writes them first).
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Operations to run in total.
    #[arg(long, conflicts_with = "duration")]
    pub ops: Option<u64>,
    /// Run for this many seconds instead of a number of operations.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Write quorum of each put.
    #[arg(long)]
    pub w: Option<usize>,
    /// Read quorum of each get.
    #[arg(long)]
    pub r: Option<usize>,
    /// Node to connect the clients to (default: the global --node).
    #[arg(skip)]
    pub url: String,
    /// Token for the clients.
    #[arg(skip)]
    pub token: Option<String>,
}

struct Shared {
    next_op: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    errors: AtomicU64,
}

/// Runs the benchmark with the settings of `args`, reusing `probe` only to check the node.
pub async fn run(probe: &Client, args: BenchArgs, json: bool) -> Result<(), ClientError> {
    if args.clients == 0 || args.records == 0 {
        return Err(ClientError::Refused {
            code: "bad_request".into(),
            message: "--clients and --records must be at least 1".into(),
        });
    }
    probe.request(&ClientOp::Ping).await?;
    let value = "x".repeat(args.value_size);
    if args.workload == Workload::Get {
        if !json {
            eprintln!("loading {} records...", args.records);
        }
        let load = Arc::new(Shared {
            next_op: AtomicU64::new(0),
            limit: args.records,
            deadline: None,
            errors: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        for _ in 0..args.clients.min(args.records as usize) {
            let client = connect(&args).await?;
            let (load, value) = (load.clone(), value.clone());
            let w = args.w;
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = load.next_op.fetch_add(1, Ordering::Relaxed);
                    if i >= load.limit {
                        break;
                    }
                    let op = ClientOp::Put {
                        key: key_name(i),
                        value: value.clone().into_bytes(),
                        context: String::new(),
                        w,
                    };
                    if client.request(&op).await.is_err() {
                        load.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    let shared = Arc::new(Shared {
        next_op: AtomicU64::new(0),
        limit: match (args.ops, args.duration) {
            (Some(n), _) => n,
            (None, Some(_)) => u64::MAX,
            (None, None) => 100_000,
        },
        deadline: args
            .duration
            .map(|d| Instant::now() + Duration::from_secs_f64(d)),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = connect(&args).await?;
        let (shared, value) = (shared.clone(), value.clone());
        let (workload, records, w, r) = (args.workload, args.records, args.w, args.r);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((c as u64 + 1) * 0xbf58_476d_1ce4_e5b9);
            loop {
                if shared.deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if shared.next_op.fetch_add(1, Ordering::Relaxed) >= shared.limit {
                    break;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = key_name(rng % records);
                let op = match workload {
                    Workload::Put => ClientOp::Put {
                        key,
                        value: value.clone().into_bytes(),
                        context: String::new(),
                        w,
                    },
                    Workload::Get => ClientOp::Get {
                        key,
                        r,
                        local: false,
                    },
                };
                let t = Instant::now();
                match client.request(&op).await {
                    Ok(_) => {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let mut total = new_histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = total.add(&h);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = total.len();
    let errors = shared.errors.load(Ordering::Relaxed);
    let ops = ok + errors;
    let ops_per_sec = ok as f64 / elapsed.max(1e-9);
    let q = |p: f64| total.value_at_quantile(p);
    let name = match args.workload {
        Workload::Put => "put",
        Workload::Get => "get",
    };
    if json {
        println!(
            "{}",
            json!({
                "workload": name,
                "ops": ops,
                "errors": errors,
                "ops_per_sec": ops_per_sec,
                "seconds": elapsed,
                "clients": args.clients,
                "latency_us": {
                    "p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "p999": q(0.999), "max": total.max()
                }
            })
        );
    } else {
        println!(
            "workload {name}: {ops} ops in {elapsed:.2}s with {} clients, {errors} errors",
            args.clients
        );
        println!("throughput: {ops_per_sec:.0} ops/s");
        println!(
            "latency us: p50 {}  p95 {}  p99 {}  p99.9 {}  max {}",
            q(0.50),
            q(0.95),
            q(0.99),
            q(0.999),
            total.max()
        );
    }
    Ok(())
}

/// Latencies from 1 us to 60 s with 3 significant figures.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

async fn connect(args: &BenchArgs) -> Result<Client, ClientError> {
    Client::connect(&args.url, args.token.as_deref(), Duration::from_secs(30)).await
}

/// The name of record `i`.
pub fn key_name(i: u64) -> String {
    format!("key:{i:010}")
}
