//! Crash loop: under a steady write load (read-modify-writes and blind writes, W=2 of N=3),
//! nodes of a five-node cluster running `--sync always` are SIGKILLed at random — sometimes two
//! at once — and restarted at once. Every restart must come up, every node must still be
//! running when the next kill comes, and after the loop the checker (`kv_tests::checker`) must
//! find every acknowledged write (itself or a descendant), nothing never written, and replicas
//! in agreement.
//!
//! - The suite runs 20 kills (about a minute).
//! - Soak: `KV_CRASH_LOOP_KILLS=1000 cargo nextest run -p kv-tests --test crash_loop --no-capture`
//! - Replay a schedule: `KV_CRASH_SEED=<seed printed>`.
//! - `KV_CRASH_SYNC=interval` runs the same loop with `--sync interval` (for experiments; the
//!   suite's contract is `always`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_tests::checker::{run_workload, verify, History, Workload};
use kv_tests::faults::Rng;
use kv_tests::{Cluster, ClusterOpts};

const NODES: usize = 5;

/// `--sync` of the nodes: `always` unless `KV_CRASH_SYNC` says otherwise.
fn sync_mode() -> &'static str {
    match std::env::var("KV_CRASH_SYNC").as_deref() {
        Ok("interval") => "interval",
        Ok("none") => "none",
        _ => "always",
    }
}

fn kills_wanted() -> u64 {
    std::env::var("KV_CRASH_LOOP_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_sync_always_loses_no_acknowledged_write() {
    let seed = Rng::seed_from_env("KV_CRASH_SEED");
    let wanted = kills_wanted();
    let sync = sync_mode();
    println!(
        "crash loop: seed {seed} (replay with KV_CRASH_SEED={seed}), {wanted} kills, --sync {sync}"
    );
    let opts = ClusterOpts {
        n: 3,
        w: 2,
        r: 2,
        sync,
        extra: [
            "--gossip-interval-ms",
            "300",
            "--request-timeout-ms",
            "2000",
        ]
        .map(String::from)
        .to_vec(),
        dcs: Vec::new(),
        tls: None,
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(NODES, opts))
        .await
        .unwrap();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_workload(
        urls.clone(),
        Workload::default(),
        history.clone(),
        stop.clone(),
        seed,
    ));

    let (cluster, kills, restarts) = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let mut rng = Rng::new(seed);
        let start = Instant::now();
        let (mut kills, mut restarts) = (0u64, 0u64);
        while kills < wanted {
            for i in 0..NODES {
                assert!(
                    cluster.nodes[i].is_running(),
                    "n{} died on its own after its last restart:\n{}",
                    i + 1,
                    cluster.logs()
                );
            }
            let a = rng.below(NODES as u64) as usize;
            let mut victims = vec![a];
            if wanted - kills >= 2 && rng.chance(0.2) {
                victims.push((a + 1 + rng.below(NODES as u64 - 1) as usize) % NODES);
            }
            let down = Duration::from_millis(rng.range(0, 400));
            let names: Vec<String> = victims.iter().map(|i| format!("n{}", i + 1)).collect();
            println!(
                "[{:7.1}s] kill #{}: SIGKILL {} for {down:?}",
                start.elapsed().as_secs_f64(),
                kills + 1,
                names.join(" and ")
            );
            for &v in &victims {
                cluster.kill(v);
                kills += 1;
            }
            std::thread::sleep(down);
            for &v in &victims {
                // Panics with the node's log if it does not answer /health within 30 s.
                cluster.restart(v);
                restarts += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.range(500, 2500)));
        }
        cluster.wait_converged(Duration::from_secs(60));
        (cluster, kills, restarts)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let report = verify(&history, &urls).await;
    for (why, n) in history.write_failure_reasons() {
        println!("  {n:6} writes {why}");
    }
    println!(
        "crash loop (seed {seed}): {kills} SIGKILLs, {restarts} restarts (all came up); {}",
        report.summary()
    );
    assert_eq!(kills, restarts, "every killed node was restarted");
    assert!(
        report.counts.writes_ok > 100,
        "too few acknowledged writes to mean anything: {}",
        report.summary()
    );
    report.assert_clean(seed, || cluster.logs());
}
