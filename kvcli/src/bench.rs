//! `kvcli bench`: a load generator in the spirit of redis-benchmark, cassandra-stress and YCSB.
//!
//! Each client is its own connection with one request in flight. Workloads `put` and `get` are
//! pure writes and reads; `a`..`f` are YCSB's core mixes (see [`crate::workload`]). Every
//! workload first loads its `--records` keys (outside the measurement). Latencies go into HDR histograms (1 us to 60 s, 3
//! significant digits), one per operation kind plus one for all.
//!
//! Writes are not blind where the bench knows better: every get and put leaves its context in
//! a shared table, and an update writes with the latest context known for its key, as a
//! well-behaved application does. Blind updates would pile up siblings on every hot key (a
//! Dynamo store keeps concurrent writes) and measure sibling growth instead of the store; the
//! load gives the put workload the context of every key, so a second run on the same keys is
//! not slower than the first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use kv_core::wire::ClientOp;
use serde_json::{json, Value};

use crate::client::{Client, ClientError, DirectClient};
use crate::commands::Env;
use crate::workload::{Distribution, KeyChooser, OpKind, Rng, Workload};

/// Flags of `kvcli bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to run: put, get, or a YCSB mix a, b, c, d, f.
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Records (distinct keys) the workload works on; they are written first (read, then
    /// written with their context), outside the measured phase.
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Operations to run in total (default 100000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub ops: Option<u64>,
    /// Run for this many seconds instead of a number of operations.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent clients, each with its own connection and one request in flight.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Key distribution (default: uniform for put/get, latest for d, zipfian for the others).
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Write quorum of each put.
    #[arg(long)]
    pub w: Option<usize>,
    /// Read quorum of each get.
    #[arg(long)]
    pub r: Option<usize>,
    /// Threads that run the clients (default: one per core; redis-benchmark runs on one). A
    /// one-shot command's setting: the REPL's threads are already running.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Context shards: enough that 50+ clients rarely meet on one lock.
const SHARDS: usize = 64;

/// State every bench client shares.
struct Shared {
    workload: Workload,
    chooser: KeyChooser,
    w: Option<usize>,
    r: Option<usize>,
    /// Operations handed out so far; a client stops when it draws `limit` or more.
    next_op: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    /// Records that exist: the loaded ones plus inserts (workload d).
    records: AtomicU64,
    /// Operations finished (for the progress bar).
    done: AtomicU64,
    /// The first error seen, for the report.
    first_error: Mutex<Option<String>>,
    /// Ctrl-C: clients stop after the operation they have in flight.
    stop: AtomicBool,
    /// The latest context known per record: record `i` at `i / SHARDS` of shard `i % SHARDS`
    /// (records are numbered densely: a slot, not a hash table, and the slot's string is
    /// reused from one context to the next).
    contexts: Vec<Mutex<Vec<String>>>,
}

impl Shared {
    /// Copies the latest context known for record `i` into `out` ("" if none).
    fn context(&self, i: u64, out: &mut String) {
        out.clear();
        if let Some(c) = lock(&self.contexts[i as usize % SHARDS]).get(i as usize / SHARDS) {
            out.push_str(c);
        }
    }

    /// Keeps `context` (an answer's) as the latest for record `i`.
    fn remember(&self, i: u64, context: &str) {
        if context.is_empty() {
            return;
        }
        let mut shard = lock(&self.contexts[i as usize % SHARDS]);
        let at = i as usize / SHARDS;
        if shard.len() <= at {
            shard.resize(at + 1, String::new());
        }
        shard[at].clear();
        shard[at].push_str(context);
    }

    fn note_error(&self, e: &ClientError) {
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }

    fn expired(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// What one client measured.
struct Tally {
    by_kind: Vec<Histogram<u64>>,
    errors: [u64; 4],
}

impl Tally {
    fn new() -> Tally {
        Tally {
            by_kind: OpKind::ALL.iter().map(|_| new_histogram()).collect(),
            errors: [0; 4],
        }
    }

    fn add(&mut self, other: &Tally) {
        for (a, b) in self.by_kind.iter_mut().zip(&other.by_kind) {
            let _ = a.add(b);
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
    }
}

/// Runs the benchmark. `probe` checks the node first; every client opens its own connection
/// to `env.node`.
///
/// Errors: [`ClientError::Usage`] for impossible settings, the probe's error when the node
/// does not answer, [`ClientError::Failed`] when not one operation succeeded.
pub async fn run(probe: &Client, args: BenchArgs, env: &Env) -> Result<(), ClientError> {
    if args.clients == 0 || args.records == 0 {
        return Err(ClientError::Usage(
            "bench: --clients and --records must be at least 1".into(),
        ));
    }
    if args.ops == Some(0) || args.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        return Err(ClientError::Usage(
            "bench: --ops and --duration must be positive".into(),
        ));
    }
    probe.request(&ClientOp::Ping).await?;
    // Ctrl-C ends the run early: the report covers what was done (while loading, it aborts).
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    let dist = args
        .distribution
        .unwrap_or(args.workload.default_distribution());
    let limit = match (args.ops, args.duration) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => 100_000,
    };
    let shared = Arc::new(Shared {
        workload: args.workload,
        chooser: KeyChooser::new(dist, args.records),
        w: args.w,
        r: args.r,
        next_op: AtomicU64::new(0),
        limit,
        deadline: None,
        records: AtomicU64::new(args.records),
        done: AtomicU64::new(0),
        first_error: Mutex::new(None),
        stop: AtomicBool::new(false),
        contexts: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
    });
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(DirectClient::connect(&env.node, env.token.as_deref(), env.timeout).await?);
    }

    // Every workload starts from its records written with their contexts (see `load`).
    clients = load(clients, &shared, &args, &mut interrupt).await?;

    let shared = Arc::new(Shared {
        deadline: args
            .duration
            .map(|d| Instant::now() + Duration::from_secs_f64(d)),
        next_op: AtomicU64::new(0),
        done: AtomicU64::new(0),
        ..Arc::try_unwrap(shared).map_err(|_| {
            ClientError::Failed("bench: the load phase left a client running".into())
        })?
    });
    let pb = match args.duration {
        Some(d) => crate::progress::bar((d * 1000.0) as u64, "bench"),
        None => crate::progress::bar(limit, "bench"),
    };
    let started = Instant::now();
    // A JoinSet aborts its tasks when dropped: an interrupted bench stops its clients.
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let shared = shared.clone();
        let mut ops = Scratch::new(&shared, random_value(c as u64, args.value_size));
        tasks.spawn(async move {
            let mut rng = Rng::new(0x5eed ^ (c as u64 + 1));
            let mut tally = Tally::new();
            while !shared.expired() && shared.next_op.fetch_add(1, Ordering::Relaxed) < shared.limit
            {
                let kind = shared.workload.next_op(&mut rng);
                let t = Instant::now();
                match one_op(&mut client, &shared, kind, &mut ops, &mut rng).await {
                    Ok(()) => {
                        let us = t.elapsed().as_micros().max(1) as u64;
                        let _ = tally.by_kind[kind.index()].record(us);
                    }
                    Err(e) => {
                        tally.errors[kind.index()] += 1;
                        shared.note_error(&e);
                    }
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            tally
        });
    }
    let mut ticker = tokio::task::JoinSet::new();
    {
        let (shared, pb) = (shared.clone(), pb.clone());
        let duration_mode = args.duration.is_some();
        ticker.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = shared.done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                if duration_mode {
                    pb.set_position(started.elapsed().as_millis() as u64);
                } else {
                    pb.set_position(done);
                }
                pb.set_message(format!("{done} ops, {:.0} ops/s", done as f64 / secs));
            }
        });
    }
    let mut total = Tally::new();
    let mut interrupted = false;
    loop {
        tokio::select! {
            t = tasks.join_next() => match t {
                None => break,
                Some(Ok(tally)) => total.add(&tally),
                Some(Err(e)) => {
                    return Err(ClientError::Failed(format!("bench: a client failed: {e}")))
                }
            },
            _ = &mut interrupt, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    ticker.abort_all();
    pb.finish_and_clear();
    if interrupted {
        crate::style::error_line(&format!(
            "bench interrupted after {elapsed:.1} s; the report covers the operations done"
        ));
    }
    report(&args, dist, &shared, &total, elapsed, env)
}

/// Writes records `0..records` with every client, before the measured phase: each a get and
/// a put with its context. Gives the clients back for the measured phase.
async fn load<F>(
    clients: Vec<DirectClient>,
    shared: &Arc<Shared>,
    args: &BenchArgs,
    interrupt: &mut std::pin::Pin<Box<F>>,
) -> Result<Vec<DirectClient>, ClientError>
where
    F: std::future::Future,
{
    let pb = crate::progress::bar(args.records, "load");
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut back = Vec::with_capacity(clients.len());
    for (c, mut client) in clients.into_iter().enumerate() {
        let (shared, next, failed, pb) = (shared.clone(), next.clone(), failed.clone(), pb.clone());
        let mut ops = Scratch::new(&shared, random_value(c as u64 + 1_000_003, args.value_size));
        let records = args.records;
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= records {
                    break;
                }
                // Read first: a record left by an earlier run is replaced, not given one more
                // sibling, so runs can repeat on the same cluster.
                ops.get_of(i);
                if client.request(&ops.get, &mut ops.context).await.is_err() {
                    ops.context.clear();
                }
                ops.put_with_answer_context(i);
                match client.request(&ops.put, &mut ops.context).await {
                    Ok(()) => shared.remember(i, &ops.context),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        shared.note_error(&e);
                    }
                }
                pb.inc(1);
            }
            client
        });
    }
    loop {
        tokio::select! {
            t = tasks.join_next() => match t {
                None => break,
                Some(Ok(client)) => back.push(client),
                Some(Err(e)) => {
                    return Err(ClientError::Failed(format!("bench: a client failed: {e}")))
                }
            },
            _ = interrupt.as_mut() => {
                pb.finish_and_clear();
                return Err(ClientError::Failed(format!(
                    "bench interrupted while loading records ({} of {} written)",
                    next.load(Ordering::Relaxed).min(args.records),
                    args.records
                )));
            }
        }
    }
    pb.finish_and_clear();
    let failed = failed.load(Ordering::Relaxed);
    // Updates measure their own failures (the same writes fail again, counted in the
    // summary); a read workload without its records would measure nothing.
    if args.workload == Workload::Put {
        return Ok(back);
    }
    if failed == args.records {
        let first = lock(&shared.first_error).clone().unwrap_or_default();
        return Err(ClientError::Failed(format!(
            "bench: loading {} records failed: {first}",
            args.records
        )));
    }
    if failed > 0 {
        crate::style::error_line(&format!(
            "bench: {failed} of {} record loads failed; reads of them will find nothing",
            args.records
        ));
    }
    Ok(back)
}

/// One client's two requests, rewritten in place for each operation (no allocation per
/// request for the key, the value or the context), and the context of its last answer.
struct Scratch {
    get: ClientOp,
    put: ClientOp,
    context: String,
}

impl Scratch {
    fn new(sh: &Shared, value: Vec<u8>) -> Scratch {
        Scratch {
            get: ClientOp::Get {
                key: String::new(),
                r: sh.r,
                local: false,
            },
            put: ClientOp::Put {
                key: String::new(),
                value,
                context: String::new(),
                w: sh.w,
                ttl_s: None,
            },
            context: String::new(),
        }
    }

    /// Makes the get of record `i`.
    fn get_of(&mut self, i: u64) {
        if let ClientOp::Get { key, .. } = &mut self.get {
            set_key_name(key, i);
        }
    }

    /// Makes the put of record `i` with the latest context `sh` knows for it.
    fn put_with_known_context(&mut self, i: u64, sh: &Shared) {
        if let ClientOp::Put { key, context, .. } = &mut self.put {
            set_key_name(key, i);
            sh.context(i, context);
        }
    }

    /// Makes the put of record `i` with the context of the last answer.
    fn put_with_answer_context(&mut self, i: u64) {
        if let ClientOp::Put { key, context, .. } = &mut self.put {
            set_key_name(key, i);
            context.clone_from(&self.context);
        }
    }
}

async fn one_op(
    client: &mut DirectClient,
    sh: &Shared,
    kind: OpKind,
    ops: &mut Scratch,
    rng: &mut Rng,
) -> Result<(), ClientError> {
    let i = match kind {
        OpKind::Insert => sh.records.fetch_add(1, Ordering::Relaxed),
        _ => sh.chooser.pick(rng, sh.records.load(Ordering::Relaxed)),
    };
    match kind {
        OpKind::Read => {
            ops.get_of(i);
            client.request(&ops.get, &mut ops.context).await?;
        }
        OpKind::Update => {
            ops.put_with_known_context(i, sh);
            client.request(&ops.put, &mut ops.context).await?;
        }
        OpKind::Insert => {
            ops.context.clear();
            ops.put_with_answer_context(i);
            client.request(&ops.put, &mut ops.context).await?;
        }
        OpKind::ReadModifyWrite => {
            ops.get_of(i);
            client.request(&ops.get, &mut ops.context).await?;
            ops.put_with_answer_context(i);
            client.request(&ops.put, &mut ops.context).await?;
        }
    }
    sh.remember(i, &ops.context);
    Ok(())
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p95": h.value_at_quantile(0.95),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

fn report(
    args: &BenchArgs,
    dist: Distribution,
    shared: &Shared,
    tally: &Tally,
    elapsed: f64,
    env: &Env,
) -> Result<(), ClientError> {
    let mut all = new_histogram();
    for h in &tally.by_kind {
        let _ = all.add(h);
    }
    let ok = all.len();
    let errors: u64 = tally.errors.iter().sum();
    let ops = ok + errors;
    let ops_per_sec = ok as f64 / elapsed.max(1e-9);
    let first_error = lock(&shared.first_error).clone();
    if env.json {
        let mut by_op = serde_json::Map::new();
        for k in OpKind::ALL {
            let h = &tally.by_kind[k.index()];
            let e = tally.errors[k.index()];
            if h.len() + e > 0 {
                by_op.insert(
                    k.name().into(),
                    json!({"ops": h.len() + e, "errors": e, "latency_us": percentiles(h)}),
                );
            }
        }
        println!(
            "{}",
            json!({
                "workload": args.workload.name(),
                "ops": ops,
                "errors": errors,
                "ops_per_sec": ops_per_sec,
                "seconds": elapsed,
                "clients": args.clients,
                "records": args.records,
                "value_size": args.value_size,
                "distribution": dist.name(),
                "latency_us": percentiles(&all),
                "by_op": by_op,
                "first_error": first_error,
            })
        );
    } else {
        let st = env.out;
        println!(
            "{}",
            st.bold(&format!(
                "workload {} ({}), {} distribution, {} records, {} clients, {} B values",
                args.workload.name(),
                args.workload.describe(),
                dist.name(),
                args.records,
                args.clients,
                args.value_size
            ))
        );
        let err_text = format!("{errors} errors");
        println!(
            "{ops} ops in {elapsed:.2} s, {}",
            if errors > 0 {
                st.red(&err_text)
            } else {
                err_text
            }
        );
        println!("throughput: {ops_per_sec:.0} ops/s");
        let mut rows = vec![latency_row("all", &all, errors)];
        for k in OpKind::ALL {
            let h = &tally.by_kind[k.index()];
            let e = tally.errors[k.index()];
            if h.len() + e > 0 && h.len() + e < ops {
                rows.push(latency_row(k.name(), h, e));
            }
        }
        crate::commands::print_table(
            &[
                "LATENCY(us)",
                "OPS",
                "ERRORS",
                "P50",
                "P95",
                "P99",
                "P99.9",
                "MAX",
            ],
            &rows,
        );
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }
    if ok == 0 {
        return Err(ClientError::Failed(format!(
            "bench: every operation failed ({})",
            first_error.unwrap_or_else(|| "no operation ran".into())
        )));
    }
    Ok(())
}

fn latency_row(name: &str, h: &Histogram<u64>, errors: u64) -> Vec<String> {
    vec![
        name.to_string(),
        (h.len() + errors).to_string(),
        errors.to_string(),
        h.value_at_quantile(0.50).to_string(),
        h.value_at_quantile(0.95).to_string(),
        h.value_at_quantile(0.99).to_string(),
        h.value_at_quantile(0.999).to_string(),
        h.max().to_string(),
    ]
}

/// Latencies from 1 us to 60 s with 3 significant figures.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// A printable value of `size` bytes that does not compress to nothing.
fn random_value(seed: u64, size: usize) -> Vec<u8> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = Rng::new(seed);
    (0..size)
        .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
        .collect()
}

/// Makes `key` the name of record `i` (`key:` and ten digits), in place.
/// `key:` and `i` in ten digits at least, zero-padded (`format!("key:{i:010}")` without the
/// formatting machinery, a sixth of the generator's instructions per put).
fn set_key_name(key: &mut String, mut i: u64) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while i > 0 {
        at -= 1;
        digits[at] = b'0' + (i % 10) as u8;
        i /= 10;
    }
    key.clear();
    key.push_str("key:");
    let from = at.min(digits.len() - 10);
    key.push_str(std::str::from_utf8(&digits[from..]).expect("ASCII digits"));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_ten_digits_zero_padded() {
        let mut key = String::from("stale");
        for i in [0, 1, 9, 10, 12345, 9_999_999_999, 10_000_000_000, u64::MAX] {
            set_key_name(&mut key, i);
            assert_eq!(key, format!("key:{i:010}"));
        }
    }
}
