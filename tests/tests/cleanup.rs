//! `cleanup`: after a node joins, the nodes that gave ranges up still hold their data. Cleanup
//! hands it to the current replicas and drops it. Without it, a range that comes back (the
//! newcomer is decommissioned) after its deletes' tombstones were purged brings the deleted
//! values back; with it, deleted keys stay deleted and every other key is intact. Nodes also
//! run it on their own, `--cleanup-delay-s` after a join completes or after they start.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_tests::{kvcli, Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};

async fn preference_lists(url: &str, keys: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut ws = Ws::connect(url).await;
    let mut out = BTreeMap::new();
    for k in keys {
        let r = ws.request(json!({"op": "ring", "key": k})).await;
        let list = r["preference_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        out.insert(k.clone(), list);
    }
    out
}

/// Whether node `url` holds any state (a value or a tombstone) of `key`.
async fn holds(ws: &mut Ws, key: &str) -> bool {
    let r = ws
        .request(json!({"op": "get", "key": key, "local": true}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    r["context"] != ""
}

fn purged(addr: &str) -> u64 {
    kv_tests::metric(addr, "kv_tombstones_purged_total")
}

/// The nodes' URLs by id, and every (key, node) where the node replicated the key `before`
/// and no longer does `after`.
#[allow(clippy::type_complexity)]
fn given_up(
    cluster: &Cluster,
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let by_id = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.url()))
        .collect();
    let mut out = Vec::new();
    for (k, old) in before {
        for holder in old {
            if !after[k].contains(holder) {
                out.push((k.clone(), holder.clone()));
            }
        }
    }
    (by_id, out)
}

/// Reads every key with R=2: the deleted ones absent, the others with their own value.
async fn check_all(ws: &mut Ws, keys: &[String], deleted: &[String], when: &str) {
    for k in keys {
        let r = ws.request(json!({"op": "get", "key": k, "r": 2})).await;
        let expect = if deleted.contains(k) {
            json!([])
        } else {
            json!([k])
        };
        assert_eq!(r["values"], expect, "{k} {when}: {r}");
    }
}

/// A cluster of 3 nodes with N=2 and `extra` flags, holding `count` keys `{prefix}0...` (each
/// its own value); a connection to n1, and each key's preference list.
async fn three_nodes_with_keys(
    extra: &[&str],
    prefix: &str,
    count: usize,
) -> (Cluster, Vec<String>, Ws, BTreeMap<String, Vec<String>>) {
    let mut opts = ClusterOpts {
        n: 2,
        w: 2,
        r: 2,
        ..ClusterOpts::default()
    };
    opts.extra.extend(extra.iter().map(|s| s.to_string()));
    let cluster = Cluster::start(3, opts);
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let url0 = cluster.nodes[0].url();
    let mut ws = Ws::connect(&url0).await;
    for k in &keys {
        let r = ws.request(json!({"op": "put", "key": k, "value": k})).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let before = preference_lists(&url0, &keys).await;
    (cluster, keys, ws, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_drops_what_a_node_gave_up_so_purged_deletes_stay_deleted_when_ranges_return() {
    let flags = [&kv_tests::PURGE_SOON[..], &["--cleanup-delay-s", "0"]].concat();
    let (mut cluster, keys, mut ws, before) = three_nodes_with_keys(&flags, "k", 400).await;
    let url0 = cluster.nodes[0].url();

    // n4 joins: some keys move to it, and their old holder keeps a copy.
    cluster.add_node(false);
    cluster.wait_converged(Duration::from_secs(60));
    for i in 0..3 {
        cluster.wait_state(i, 3, "up", Duration::from_secs(60));
    }
    let after = preference_lists(&url0, &keys).await;
    let (by_id, orphans) = given_up(&cluster, &before, &after);
    assert!(orphans.len() > 30, "only {} keys moved", orphans.len());
    for (k, holder) in &orphans {
        let mut c = Ws::connect(&by_id[holder]).await;
        assert!(
            holds(&mut c, k).await,
            "{holder} gave {k} up and still has it"
        );
    }

    // Every other moved key is deleted (with the read's context).
    let deleted: Vec<String> = orphans.iter().map(|(k, _)| k.clone()).step_by(2).collect();
    for k in &deleted {
        let read = ws.request(json!({"op": "get", "key": k})).await;
        let r = ws
            .request(json!({"op": "delete", "key": k, "context": read["context"]}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }

    // Cleanup on every member.
    let (code, out, err) = kvcli(&["--node", &url0, "--json", "cleanup", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{report}");
    let removed: u64 = nodes
        .iter()
        .map(|n| n["keys_removed"].as_u64().unwrap())
        .sum();
    assert!(
        removed >= orphans.len() as u64,
        "removed {removed} of {} orphans: {report}",
        orphans.len()
    );
    assert!(nodes.iter().all(|n| n["ranges_skipped"] == 0), "{report}");
    let counted: u64 = cluster
        .nodes
        .iter()
        .map(|n| kv_tests::metric(&n.addr, "kv_cleanup_keys_removed_total"))
        .sum();
    assert_eq!(counted, removed, "kv_cleanup_keys_removed_total");
    for (k, holder) in &orphans {
        let mut c = Ws::connect(&by_id[holder]).await;
        assert!(!holds(&mut c, k).await, "{holder} still holds {k}");
    }
    // Nothing else moved: every key reads back on its current replicas.
    check_all(&mut ws, &keys, &deleted, "after cleanup").await;

    // The tombstones are purged once every replica has synced after the deletes.
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    kv_tests::purge_now(&urls).await;
    let purged_total: u64 = cluster.nodes.iter().map(|n| purged(&n.addr)).sum();
    assert!(
        purged_total >= deleted.len() as u64,
        "{purged_total} tombstones purged for {} deletes",
        deleted.len()
    );

    // n4 leaves: its ranges return to their old holders. Deleted keys stay deleted.
    let (code, out, err) = kvcli(&["--node", &by_id["n4"], "decommission", "n4"]);
    assert_eq!(code, 0, "{out}{err}");
    cluster.stop(3);
    check_all(&mut ws, &keys, &deleted, "after n4 left").await;
    eprintln!(
        "{} keys moved to n4; cleanup dropped {removed}; {} deletes purged stayed deleted",
        orphans.len(),
        deleted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_clean_up_on_their_own_after_a_join_and_after_a_restart() {
    let (mut cluster, keys, mut ws, before) =
        three_nodes_with_keys(&["--cleanup-delay-s", "1"], "a", 200).await;
    let url0 = cluster.nodes[0].url();
    // n2 is down while n4 joins: it cleans up once it is started again.
    cluster.kill(1);
    cluster.add_node(false);
    cluster.wait_converged(Duration::from_secs(60));
    cluster.restart(1);
    cluster.wait_converged(Duration::from_secs(60));
    let after = preference_lists(&url0, &keys).await;
    let (by_id, orphans) = given_up(&cluster, &before, &after);
    assert!(orphans.len() > 10, "only {} keys moved", orphans.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = 0;
        for (k, holder) in &orphans {
            let mut c = Ws::connect(&by_id[holder]).await;
            left += usize::from(holds(&mut c, k).await);
        }
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} of {} given-up keys still held after 30 s",
            orphans.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check_all(&mut ws, &keys, &[], "after the cleanups").await;
}
