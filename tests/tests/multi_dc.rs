//! Multi-DC placement: with `--replication dc1:2,dc2:1` every key has replicas in both data
//! centers, and losing a whole data center leaves every key readable and writable at the
//! quorums the surviving one can meet.

use std::time::Duration;

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_dc_cluster_survives_losing_one_dc() {
    let mut extra = ClusterOpts::default().extra;
    extra.extend(["--replication".to_string(), "dc1:2,dc2:1".to_string()]);
    let mut cluster = Cluster::start(
        5,
        ClusterOpts {
            dcs: vec!["dc1", "dc1", "dc1", "dc2", "dc2"],
            extra,
            ..ClusterOpts::default()
        },
    );
    let dc_of = |id: &str| {
        if ["n1", "n2", "n3"].contains(&id) {
            "dc1"
        } else {
            "dc2"
        }
    };
    let mut ws = Ws::connect(&cluster.nodes[3].url()).await;
    for i in 0..200 {
        let key = format!("dc{i}");
        let r = ws
            .request(json!({"op": "put", "key": key, "value": key, "w": 2}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        let pl = ws.request(json!({"op": "ring", "key": key})).await;
        let prefs: Vec<&str> = pl["preference_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(prefs.len(), 3, "{pl}");
        assert_eq!(
            prefs.iter().filter(|id| dc_of(id) == "dc1").count(),
            2,
            "{pl}"
        );
        assert_eq!(
            prefs.iter().filter(|id| dc_of(id) == "dc2").count(),
            1,
            "{pl}"
        );
    }

    // dc1 goes dark.
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.wait_state(3, 0, "down", Duration::from_secs(20));
    cluster.wait_state(3, 1, "down", Duration::from_secs(20));
    cluster.wait_state(3, 2, "down", Duration::from_secs(20));

    // Every key is still readable from its dc2 replica, and writable: the dc2 replica takes the
    // write and a dc2 stand-in keeps a hint for a dc1 replica (W=2, sloppy quorum).
    for i in 0..200 {
        let key = format!("dc{i}");
        let r = ws.request(json!({"op": "get", "key": key, "r": 1})).await;
        assert_eq!(r["values"], json!([key]), "{r}");
        let w = ws
            .request(
                json!({"op": "put", "key": key, "value": "after", "context": r["context"], "w": 2}),
            )
            .await;
        assert_eq!(w["ok"], true, "{w}");
        let r = ws.request(json!({"op": "get", "key": key, "r": 1})).await;
        assert_eq!(r["values"], json!(["after"]), "{r}");
    }
}
