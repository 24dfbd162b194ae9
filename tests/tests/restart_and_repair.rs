//! A node SIGKILLed and restarted keeps its data and identity; a node paused (SIGSTOP) during a
//! write misses it and is repaired by a later read.

use std::time::Duration;

use kv_tests::{Cluster, ClusterOpts, Ws};
use kvd_storage::testing::evict_from_page_cache;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_comes_back_with_its_data_and_identity() {
    let mut cluster = Cluster::start(
        3,
        ClusterOpts {
            sync: "always",
            ..ClusterOpts::default()
        },
    );
    let url2 = cluster.nodes[2].url();
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    for i in 0..200 {
        let r = ws
            .request(json!({"op": "put", "key": format!("k{i}"), "value": format!("v{i}"), "w": 3}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let identity_before =
        std::fs::read_to_string(cluster.nodes[2].data_dir.join("node-identity.json")).unwrap();

    cluster.kill(2);
    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(30));

    let identity_after: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.nodes[2].data_dir.join("node-identity.json")).unwrap(),
    )
    .unwrap();
    let before: serde_json::Value = serde_json::from_str(&identity_before).unwrap();
    assert_eq!(identity_after["id"], "n3");
    assert_eq!(
        identity_after["tokens"], before["tokens"],
        "same place in the ring"
    );
    assert_eq!(
        identity_after["actor"], before["actor"],
        "same data, same actor"
    );

    // With N=3 on 3 nodes every key is local to every node: all 200 are there after the crash.
    let mut local = Ws::connect(&url2).await;
    for i in 0..200 {
        let r = local
            .request(json!({"op": "get", "key": format!("k{i}"), "local": true}))
            .await;
        assert_eq!(
            r["values"],
            json!([format!("v{i}")]),
            "k{i} after restart: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_misses_a_write_and_a_read_repairs_it() {
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            extra: vec![
                "--gossip-interval-ms".into(),
                "300".into(),
                "--request-timeout-ms".into(),
                "2000".into(),
            ],
            ..ClusterOpts::default()
        },
    );
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    assert_eq!(
        ws.request(json!({"op": "put", "key": "p", "value": "old", "w": 3}))
            .await["ok"],
        true
    );

    // Paused and known down: the coordinator does not send it the write at all.
    cluster.pause(2);
    cluster.wait_state(0, 2, "down", Duration::from_secs(20));
    let r = ws.request(json!({"op": "get", "key": "p", "r": 2})).await;
    let ctx = r["context"].as_str().unwrap().to_string();
    let w = ws
        .request(json!({"op": "put", "key": "p", "value": "new", "context": ctx, "w": 2}))
        .await;
    assert_eq!(w["ok"], true, "W=2 is met by the two running replicas: {w}");
    cluster.resume(2);
    cluster.wait_state(0, 2, "up", Duration::from_secs(20));

    let mut n3 = Ws::connect(&cluster.nodes[2].url()).await;
    let before = n3
        .request(json!({"op": "get", "key": "p", "local": true}))
        .await;
    assert_eq!(
        before["values"],
        json!(["old"]),
        "the paused node missed the write: {before}"
    );

    // A read through any coordinator that hears from all three repairs the stale replica.
    let r = ws.request(json!({"op": "get", "key": "p", "r": 3})).await;
    assert_eq!(r["values"], json!(["new"]), "{r}");
    let mut repaired = false;
    for _ in 0..50 {
        let after = n3
            .request(json!({"op": "get", "key": "p", "local": true}))
            .await;
        if after["values"] == json!(["new"]) {
            repaired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(repaired, "read repair brought the paused node up to date");
    // The coordinator counts the repair once the replica acknowledged it, a moment after the
    // replica applied it.
    let mut repairs = 0;
    for _ in 0..50 {
        let metrics = kv_tests::http_get(&cluster.nodes[0].addr, "/metrics").unwrap();
        repairs = metrics
            .lines()
            .find_map(|l| l.strip_prefix("kv_read_repairs_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        if repairs >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(repairs >= 1, "read repairs are counted in /metrics");
}

/// Every table file under `dir`.
fn tables(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tables(&p));
        } else if p.extension().is_some_and(|x| x == "sst") {
            out.push(p);
        }
    }
    out
}

/// A restarted node whose tables are on disk only (neither in its block cache nor in the
/// OS's page cache) still answers reads and writes of them: the request's thread cannot read
/// from memory, so the operation runs on the blocking pool, once per block (counted in
/// `kv_blocking_pool_ops_total`), and is then served from the block cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_of_data_only_on_disk_take_the_blocking_pool_once() {
    let mut cluster = Cluster::start(1, ClusterOpts::one_replica());
    let url = cluster.nodes[0].url();
    let value = "x".repeat(1000);
    let mut ws = Ws::connect(&url).await;
    for i in 0..300 {
        let r = ws
            .request(json!({"op": "put", "key": format!("k{i}"), "value": format!("{i}{value}")}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    drop(ws);
    // A clean stop flushes the memtable: the values are in tables from now on.
    assert_eq!(cluster.stop(0), Some(0));
    let files = tables(&cluster.nodes[0].data_dir);
    assert!(!files.is_empty(), "no table after a clean stop");
    let log = cluster.nodes[0].log.clone();
    let rebuilds = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("merkle trees rebuilt")
            .count()
    };
    let before_restart = rebuilds();
    cluster.restart(0);
    // After the restart's Merkle rebuild, a scan of every table (which leaves the block cache
    // as it was), the tables leave the page cache too.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rebuilds() <= before_restart {
        assert!(
            std::time::Instant::now() < deadline,
            "no Merkle rebuild after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = cluster.nodes[0].addr.clone();
    let pool = || kv_tests::metric(&addr, "kv_blocking_pool_ops_total");
    let from_page_cache = || kv_tests::metric(&addr, "kv_storage_page_cache_reads_total");
    // RWF_NOWAIT is best effort: on some kernels about one read in a hundred right after the
    // eviction still finds its page (read in on the spot). Such a read is served from the
    // page cache, which is counted too; then the next key, in another block, is tried.
    let mut ws = Ws::connect(&url).await;
    let mut read_from_disk = None;
    for i in [7, 60, 120, 180, 220] {
        for f in &files {
            evict_from_page_cache(f);
        }
        let (pool_before, page_before) = (pool(), from_page_cache());
        let r = ws
            .request(json!({"op": "get", "key": format!("k{i}")}))
            .await;
        assert_eq!(r["values"], json!([format!("{i}{value}")]), "{r}");
        if pool() > pool_before {
            read_from_disk = Some(i);
            break;
        }
        assert!(
            from_page_cache() > page_before,
            "k{i} was read from neither the disk nor the page cache"
        );
    }
    let i = read_from_disk.expect("no read of five went to the disk");
    let after_read = pool();
    // Its block is cached now: the same key again, read and then written, stays in memory.
    let page_reads = from_page_cache();
    let r = ws
        .request(json!({"op": "get", "key": format!("k{i}")}))
        .await;
    assert_eq!(r["values"], json!([format!("{i}{value}")]), "{r}");
    let r = ws
        .request(
            json!({"op": "put", "key": format!("k{i}"), "value": "new", "context": r["context"]}),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!((pool(), from_page_cache()), (after_read, page_reads));
    // A write of another key on disk only reads its state from outside the block cache (the
    // disk, or rarely the page cache as above), and is applied.
    for f in &files {
        evict_from_page_cache(f);
    }
    let r = ws
        .request(json!({"op": "put", "key": "k250", "value": "also new"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(pool() > after_read || from_page_cache() > page_reads);
    let r = ws.request(json!({"op": "get", "key": "k250"})).await;
    let mut values: Vec<String> = serde_json::from_value(r["values"].clone()).unwrap();
    values.sort();
    assert_eq!(
        values,
        [format!("250{value}"), "also new".to_string()],
        "{r}"
    );
}
