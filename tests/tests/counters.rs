//! Counters (`{"op":"incr"}`, `kvcli incr`): every increment counted once, whichever node
//! coordinates it, also when a replica was down and is brought back by repair; a key holding a
//! value refuses increments; a delete resets; overflow is refused; export and import carry
//! counters as counters.

use kv_tests::{kvcli, Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};

async fn get(url: &str, key: &str, extra: Value) -> Value {
    let mut req = json!({"op": "get", "key": key});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    let r = Ws::connect(url).await.request(req).await;
    assert_eq!(r["ok"], true, "{r}");
    r
}

/// Increments `key` `times` times through `url` (amounts from `seed`); returns their sum.
fn spawn_incrementer(
    url: String,
    key: &'static str,
    times: i64,
    seed: i64,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut ws = Ws::connect(&url).await;
        let mut sum = 0;
        for j in 0..times {
            let by = (j * 7 + seed * 3) % 11 - 4;
            let r = ws
                .request(json!({"op": "incr", "key": key, "by": by}))
                .await;
            assert_eq!(r["ok"], true, "{r}");
            assert!(r["value"].is_i64(), "{r}");
            assert!(r["context"].is_string(), "{r}");
            sum += by;
        }
        sum
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_every_increment_once_across_coordinators_a_down_replica_and_repair() {
    let mut opts = ClusterOpts::default();
    opts.extra
        .extend(["--anti-entropy-interval-s", "0"].map(String::from));
    let mut cluster = Cluster::start(3, opts);
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();

    // Three coordinators at once: each mints on its own replica, so concurrent increments
    // meet as counter siblings on every replica.
    let tasks: Vec<_> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| spawn_incrementer(u.clone(), "hits", 150, i as i64))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    for u in &urls {
        let r = get(u, "hits", json!({"r": 3})).await;
        assert_eq!(r["counter"], total, "{r}");
        assert_eq!(r["values"], json!([total.to_string()]), "{r}");
        assert_eq!(r["siblings"][0]["counter"], true, "{r}");
        assert_eq!(r["found"], true);
    }

    // One replica is down while the other two keep counting; repair brings it up to date.
    cluster.kill(2);
    let tasks: Vec<_> = urls[..2]
        .iter()
        .enumerate()
        .map(|(i, u)| spawn_incrementer(u.clone(), "hits", 100, 10 + i as i64))
        .collect();
    for t in tasks {
        total += t.await.unwrap();
    }
    cluster.restart(2);
    let stale = get(&urls[2], "hits", json!({"local": true})).await;
    assert_ne!(
        stale["counter"], total,
        "the hung replica missed increments"
    );
    let mut ws = Ws::connect(&urls[2]).await;
    let rep = ws.request(json!({"op": "repair"})).await;
    assert_eq!(rep["ok"], true, "{rep}");
    for u in &urls {
        let r = get(u, "hits", json!({"local": true})).await;
        assert_eq!(r["counter"], total, "after repair, {u}: {r}");
    }
    eprintln!("counted {total} over 650 increments through 3 coordinators");

    // A key holding a value refuses increments.
    let r = ws
        .request(json!({"op": "put", "key": "plain", "value": "text"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = ws.request(json!({"op": "incr", "key": "plain"})).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a counter"),
        "{r}"
    );
    // A delete with the read's context resets; the next increment counts from 0.
    let read = get(&urls[0], "hits", json!({})).await;
    let r = ws
        .request(json!({"op": "delete", "key": "hits", "context": read["context"]}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(get(&urls[1], "hits", json!({"r": 3})).await["found"], false);
    let r = ws
        .request(json!({"op": "incr", "key": "hits", "by": 5}))
        .await;
    assert_eq!(r["value"], 5, "{r}");
    // Leaving the i64 range is refused and changes nothing.
    let r = ws
        .request(json!({"op": "incr", "key": "big", "by": i64::MAX}))
        .await;
    assert_eq!(r["value"], i64::MAX, "{r}");
    let r = ws.request(json!({"op": "incr", "key": "big"})).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert_eq!(get(&urls[0], "big", json!({})).await["counter"], i64::MAX);

    // kvcli: incr prints the value; get shows it; export writes a counter line that import
    // turns back into a counter.
    let node = ["--node", urls[1].as_str()];
    let run = |args: &[&str]| {
        let (code, out, err) = kvcli(&[&node[..], args].concat());
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    assert_eq!(run(&["incr", "cli"]), "1\n");
    assert_eq!(run(&["incr", "cli", "10"]), "11\n");
    assert_eq!(run(&["incr", "cli", "-4"]), "7\n");
    let shown = run(&["get", "cli"]);
    assert!(shown.starts_with("7\n"), "{shown}");
    let out: Value = serde_json::from_str(&run(&["--json", "incr", "cli", "2"])).unwrap();
    assert_eq!(out["value"], 9, "{out}");
    let (code, _, err) = kvcli(&[&node[..], &["incr", "plain"]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("not a counter"), "{err}");

    let file = cluster.dir().join("export.jsonl");
    run(&["export", "--out", file.to_str().unwrap()]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(r#"{"counter":9,"key":"cli"}"#), "{text}");
    let read = get(&urls[0], "cli", json!({})).await;
    let r = ws
        .request(json!({"op": "delete", "key": "cli", "context": read["context"], "w": 3}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let cli_only: String = text
        .lines()
        .filter(|l| l.contains(r#""key":"cli""#))
        .map(|l| format!("{l}\n"))
        .collect();
    let one = cluster.dir().join("cli.jsonl");
    std::fs::write(&one, cli_only).unwrap();
    run(&["import", one.to_str().unwrap()]);
    assert_eq!(get(&urls[2], "cli", json!({"r": 3})).await["counter"], 9);
}
