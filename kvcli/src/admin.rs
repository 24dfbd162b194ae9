//! Admin commands for the cluster's background work: `hints`, `repair`, `decommission`,
//! `removenode` and `export`. Long ones show a progress bar (on a terminal) fed by what the
//! nodes report while the operation runs: its `/metrics` for a repair, `status` for moving data.

use std::io::Write;
use std::time::Duration;

use kv_core::wire::ClientOp;
use serde_json::{json, Value};

use crate::client::{host_port, Client, ClientError};
use crate::commands::{print_table, Env};

/// Long operations may take this long before kvcli gives up waiting.
const LONG: Duration = Duration::from_secs(24 * 3600);

/// `hints`: pending hinted-handoff writes by target.
pub async fn hints(client: &Client, env: &Env) -> Result<(), ClientError> {
    let v = client.request(&ClientOp::Hints).await?;
    if env.json {
        println!("{}", json!({"hints": v["hints"], "holders": v["holders"]}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["hints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|h| {
            vec![
                h["target"].as_str().unwrap_or("").to_string(),
                h["count"].to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no pending hints");
    } else {
        print_table(&["TARGET", "PENDING"], &rows);
    }
    let silent: Vec<&str> = v["holders"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|h| h.get("unreachable").is_some())
                .filter_map(|h| h["node"].as_str())
                .collect()
        })
        .unwrap_or_default();
    if !silent.is_empty() {
        println!("(not counted: {} did not answer)", silent.join(", "));
    }
    Ok(())
}

/// The `HOST:PORT` of member `id` (from `status`), for reading its `/metrics`.
async fn member_addr(client: &Client, id: &str) -> Result<Option<String>, ClientError> {
    let status = client.request(&ClientOp::Status).await?;
    Ok(status["nodes"].as_array().and_then(|a| {
        a.iter()
            .find(|n| n["id"] == id)
            .and_then(|n| n["addr"].as_str().map(str::to_string))
    }))
}

fn metric(samples: &[crate::metrics::Sample], name: &str) -> Option<f64> {
    samples.iter().find(|s| s.name == name).map(|s| s.value)
}

/// `repair [--node NODE]`: anti-entropy now, with a progress bar over the (range, peer) pairs.
pub async fn repair(client: &Client, node: Option<String>, env: &Env) -> Result<(), ClientError> {
    let addr = match &node {
        Some(id) => member_addr(client, id).await?,
        None => host_port(&env.node).ok(),
    };
    let pb = crate::progress::bar(0, "repair");
    let op = ClientOp::Repair { node: node.clone() };
    let request = client.request_within(&op, LONG);
    tokio::pin!(request);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let v = loop {
        tokio::select! {
            r = &mut request => break r,
            _ = tick.tick() => {
                if let Some(a) = &addr {
                    if let Ok(s) = crate::metrics::fetch(a, Duration::from_secs(2)).await {
                        let total = metric(&s, "kv_repair_pairs_total").unwrap_or(0.0) as u64;
                        let done = metric(&s, "kv_repair_pairs_done").unwrap_or(0.0) as u64;
                        pb.set_length(total);
                        pb.set_position(done.min(total));
                        pb.set_message("range pairs compared");
                    }
                }
            }
        }
    };
    pb.finish_and_clear();
    let v = v?;
    let fields = [
        "ranges_compared",
        "ranges_in_sync",
        "keys_repaired",
        "bytes_exchanged",
        "pairs_skipped",
    ];
    if env.json {
        let mut out = serde_json::Map::new();
        for f in fields {
            out.insert(f.into(), v[f].clone());
        }
        println!("{}", Value::Object(out));
    } else {
        println!(
            "repair: {} range pairs compared ({} already in sync), {} keys repaired, {} bytes exchanged{}",
            v["ranges_compared"],
            v["ranges_in_sync"],
            v["keys_repaired"],
            v["bytes_exchanged"],
            match v["pairs_skipped"].as_u64() {
                Some(0) | None => String::new(),
                Some(n) => format!(", {n} pairs skipped (peer down or silent)"),
            }
        );
    }
    Ok(())
}

/// One page of the cluster's keys in token order (the `scan` operation) from `cursor`, which
/// becomes the next page's cursor (`None` once the ring is done).
async fn scan_page(
    client: &Client,
    cursor: &mut Option<String>,
) -> Result<Vec<Value>, ClientError> {
    let page = client
        .request_within(
            &ClientOp::Scan {
                cursor: cursor.clone(),
                limit: Some(1000),
            },
            Duration::from_secs(120),
        )
        .await?;
    *cursor = page["cursor"].as_str().map(str::to_string);
    Ok(page["entries"].as_array().cloned().unwrap_or_default())
}

/// `keys [PATTERN] [--limit N]`: the keys holding a live value that match the glob `PATTERN`
/// (`*` any run, `?` one character, `\` escapes), walking the whole ring like `export`.
pub async fn keys(
    client: &Client,
    pattern: &str,
    limit: Option<u64>,
    env: &Env,
) -> Result<(), ClientError> {
    let mut found = Vec::new();
    let mut count: u64 = 0;
    let mut cursor: Option<String> = None;
    let limit = limit.unwrap_or(u64::MAX);
    'pages: while count < limit {
        for e in scan_page(client, &mut cursor).await? {
            let Some(key) = e["key"].as_str() else {
                continue;
            };
            if !glob_match(pattern, key) {
                continue;
            }
            if env.json {
                found.push(key.to_string());
            } else {
                println!("{key}");
            }
            count += 1;
            if count >= limit {
                break 'pages;
            }
        }
        if cursor.is_none() {
            break;
        }
    }
    if env.json {
        println!("{}", json!({ "keys": found, "count": count }));
    }
    Ok(())
}

/// Whether `text` matches the glob `pattern`: `*` matches any run of characters, `?` any one,
/// `\` makes the next character literal. Linear backtracking on the last `*`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '*' => Tok::Any,
            '?' => Tok::One,
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| *t == Tok::Any)
}

/// `cleanup [--all]`: on the connected node, or on every up member one after the other.
pub async fn cleanup(client: &Client, all: bool, env: &Env) -> Result<(), ClientError> {
    const FIELDS: [&str; 5] = [
        "ranges_foreign",
        "ranges_cleaned",
        "ranges_skipped",
        "keys_removed",
        "bytes_removed",
    ];
    let pick = |v: &Value| -> serde_json::Map<String, Value> {
        FIELDS
            .iter()
            .map(|f| (f.to_string(), v[*f].clone()))
            .collect()
    };
    let say = |who: &str, v: &Value| {
        println!(
            "cleanup{who}: {} keys ({} bytes) of {} ranges handed to their replicas and dropped; \
             {} ranges not replicated here{}",
            v["keys_removed"],
            v["bytes_removed"],
            v["ranges_cleaned"],
            v["ranges_foreign"],
            match v["ranges_skipped"].as_u64() {
                Some(0) | None => String::new(),
                Some(n) => format!(", {n} kept for a later cleanup (a replica down)"),
            }
        );
    };
    if !all {
        let pb = crate::progress::spinner("cleanup");
        let v = client.request_within(&ClientOp::Cleanup, LONG).await;
        pb.finish_and_clear();
        let v = v?;
        if env.json {
            println!("{}", Value::Object(pick(&v)));
        } else {
            say("", &v);
        }
        return Ok(());
    }
    let mut out = Vec::new();
    for (id, v) in on_every_up_member(client, "cleanup", &ClientOp::Cleanup, env).await? {
        if !env.json {
            say(&format!(" on {id}"), &v);
        }
        let mut fields = pick(&v);
        fields.insert("node".into(), Value::String(id));
        out.push(Value::Object(fields));
    }
    if env.json {
        println!("{}", serde_json::json!({ "nodes": out }));
    }
    Ok(())
}

/// `compact [--all]`: a major compaction on the connected node, or on every up member one
/// after the other.
pub async fn compact(client: &Client, all: bool, env: &Env) -> Result<(), ClientError> {
    let say = |v: &Value| {
        println!(
            "compaction on {}: {} tables ({}) -> {} tables ({}) in {} s",
            v["node"].as_str().unwrap_or_default(),
            v["tables_before"],
            crate::commands::human_bytes(v["bytes_before"].as_u64().unwrap_or(0)),
            v["tables_after"],
            crate::commands::human_bytes(v["bytes_after"].as_u64().unwrap_or(0)),
            v["seconds"]
        );
    };
    here_or_on_every_member(client, &ClientOp::Compact, all, env, say).await
}

/// What `snapshot` does.
pub enum SnapshotCmd {
    /// Take one, named or named by the time.
    Take(Option<String>),
    /// List the snapshots kept.
    List,
    /// Remove one.
    Clear(String),
}

/// `snapshot [NAME] [--list | --clear] [--all]`: on the connected node, or on every up member
/// one after the other (a snapshot taken under the same name).
pub async fn snapshot(
    client: &Client,
    what: SnapshotCmd,
    all: bool,
    env: &Env,
) -> Result<(), ClientError> {
    let op = match what {
        // Every member's snapshot of one --all run has the same name.
        SnapshotCmd::Take(name) => ClientOp::Snapshot {
            name: name.or_else(|| all.then(|| crate::commands::unix_ms().to_string())),
        },
        SnapshotCmd::List => ClientOp::Snapshots,
        SnapshotCmd::Clear(name) => ClientOp::ClearSnapshot { name },
    };
    let say = |v: &Value| {
        let node = v["node"].as_str().unwrap_or_default();
        let name = v["name"].as_str().unwrap_or_default();
        match &op {
            ClientOp::Snapshot { .. } => println!(
                "snapshot {name} on {node}: {} tables, {}, in {}",
                v["tables"],
                crate::commands::human_bytes(v["bytes"].as_u64().unwrap_or(0)),
                v["path"].as_str().unwrap_or_default()
            ),
            ClientOp::ClearSnapshot { .. } => println!(
                "snapshot {name} removed from {node} ({})",
                crate::commands::human_bytes(v["bytes"].as_u64().unwrap_or(0))
            ),
            _ => {
                let list = v["snapshots"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("{node}: no snapshots");
                }
                let now_ms = crate::commands::unix_ms();
                for s in list {
                    let taken = s["taken_at_ms"].as_u64().unwrap_or(0);
                    let age = crate::commands::human_secs(now_ms.saturating_sub(taken) / 1000);
                    println!(
                        "{node}: {}, taken {age} ago, {}",
                        s["name"].as_str().unwrap_or_default(),
                        crate::commands::human_bytes(s["bytes"].as_u64().unwrap_or(0))
                    );
                }
            }
        }
    };
    here_or_on_every_member(client, &op, all, env, say).await
}

/// Runs `op` on the connected node, or with `all` on every up member one after the other;
/// prints each answer with `say`, or under --json the answer (`{"nodes": [...]}` for all).
async fn here_or_on_every_member(
    client: &Client,
    op: &ClientOp,
    all: bool,
    env: &Env,
    say: impl Fn(&Value),
) -> Result<(), ClientError> {
    if !all {
        let pb = crate::progress::spinner(op.name());
        let v = client.request_within(op, LONG).await;
        pb.finish_and_clear();
        let v = v?;
        if env.json {
            println!("{v}");
        } else {
            say(&v);
        }
        return Ok(());
    }
    let mut out = Vec::new();
    for (_, v) in on_every_up_member(client, op.name(), op, env).await? {
        if !env.json {
            say(&v);
        }
        out.push(v);
    }
    if env.json {
        println!("{}", serde_json::json!({ "nodes": out }));
    }
    Ok(())
}

/// Runs `op` on every up member, one after the other, each behind a spinner labelled `what`;
/// stops at the first failure. Answers by member id, in `status` order.
async fn on_every_up_member(
    client: &Client,
    what: &str,
    op: &ClientOp,
    env: &Env,
) -> Result<Vec<(String, Value)>, ClientError> {
    let status = client.request(&ClientOp::Status).await?;
    let members: Vec<(String, String)> = status["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["state"] == "up")
                .filter_map(|n| Some((n["id"].as_str()?.into(), n["addr"].as_str()?.into())))
                .collect()
        })
        .unwrap_or_default();
    let scheme = if env.node.starts_with("wss://") {
        "wss"
    } else {
        "ws"
    };
    let mut out = Vec::new();
    for (id, addr) in members {
        let pb = crate::progress::spinner(&format!("{what} {id}"));
        let url = format!("{scheme}://{addr}");
        let answer = match Client::connect(&url, env.token.as_deref(), env.timeout).await {
            Ok(c) => c.request_within(op, LONG).await,
            Err(e) => Err(e),
        };
        pb.finish_and_clear();
        out.push((id, answer?));
    }
    Ok(out)
}

/// Runs a membership change `op` about `node` (`decommission`, `removenode`) with a bar fed
/// every half second by the transfers `status` reports that `counts` picks (ranges done, ranges
/// in all, keys moved); prints the outcome, `done` saying it in words.
async fn membership_change(
    client: &Client,
    op: ClientOp,
    node: &str,
    label: &str,
    counts: impl Fn(&Value) -> (u64, u64, u64),
    done: impl Fn(&Value) -> String,
    env: &Env,
) -> Result<(), ClientError> {
    let pb = crate::progress::bar(0, label);
    let request = client.request_within(&op, LONG);
    tokio::pin!(request);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let v = loop {
        tokio::select! {
            r = &mut request => break r,
            _ = tick.tick() => {
                if let Ok(status) = client.request(&ClientOp::Status).await {
                    let (ranges_done, ranges, keys) = counts(&status);
                    pb.set_length(ranges);
                    pb.set_position(ranges_done);
                    pb.set_message(format!("{keys} keys moved"));
                }
            }
        }
    };
    pb.finish_and_clear();
    let v = v?;
    if env.json {
        println!(
            "{}",
            json!({"ok": true, "node": node, "moved_keys": v["moved_keys"]})
        );
    } else {
        println!("{}", done(&v));
    }
    Ok(())
}

/// (ranges done, ranges in all, keys moved) of the transfers in `status` that `pick` selects.
fn transfer_counts(status: &Value, pick: impl Fn(&Value, &Value) -> bool) -> (u64, u64, u64) {
    let mut sum = (0, 0, 0);
    for n in status["nodes"].as_array().into_iter().flatten() {
        let t = &n["transfer"];
        if !t.is_null() && pick(n, t) {
            sum.0 += t["ranges_done"].as_u64().unwrap_or(0);
            sum.1 += t["ranges_total"].as_u64().unwrap_or(0);
            sum.2 += t["keys"].as_u64().unwrap_or(0);
        }
    }
    sum
}

/// `decommission NODE`: the node hands its ranges over and leaves the ring; the bar follows
/// the transfer it reports in `status`.
pub async fn decommission(client: &Client, node: String, env: &Env) -> Result<(), ClientError> {
    let op = ClientOp::Decommission { node: node.clone() };
    let counts = |status: &Value| transfer_counts(status, |n, _| n["id"] == node.as_str());
    let done = |v: &Value| {
        format!(
            "{node} handed {} keys over and left the ring; it can be stopped now",
            v["moved_keys"]
        )
    };
    membership_change(client, op, &node, "draining", counts, done, env).await
}

/// `removenode NODE`: the node, down for good, leaves the ring and the nodes that take its
/// ranges over stream them in from the other replicas; the bar sums their transfers as
/// `status` reports them.
pub async fn remove_node(client: &Client, node: String, env: &Env) -> Result<(), ClientError> {
    let op = ClientOp::RemoveNode { node: node.clone() };
    let counts = |status: &Value| transfer_counts(status, |_, t| t["kind"] == "adopting");
    let done = |v: &Value| {
        format!(
            "{node} is out of the ring; {} keys were streamed to the nodes that took its ranges over",
            v["moved_keys"]
        )
    };
    membership_change(client, op, &node, "refilling", counts, done, env).await
}

/// `export [--out FILE]`: every live value of the cluster as JSON lines
/// `{"key":...,"value":...}` (one line per sibling), walking the ring with `scan`.
pub async fn export(client: &Client, out: Option<String>, env: &Env) -> Result<(), ClientError> {
    let mut sink: Box<dyn Write> = match &out {
        Some(path) if path != "-" => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| ClientError::Failed(format!("cannot create {path}: {e}")))?,
        )),
        _ => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let to_stdout = out.as_deref().is_none_or(|p| p == "-");
    let pb = crate::progress::spinner("export");
    let (mut keys, mut lines) = (0u64, 0u64);
    let mut cursor: Option<String> = None;
    loop {
        let page = scan_page(client, &mut cursor).await?;
        for e in page.iter() {
            keys += 1;
            for sibling in e["siblings"].as_array().cloned().unwrap_or_default() {
                // A counter is exported as its value, and imported as an increment by it.
                let mut line = match (sibling["counter"].as_bool(), e["counter"].as_i64()) {
                    (Some(true), Some(c)) => json!({"key": e["key"], "counter": c}),
                    _ => json!({"key": e["key"], "value": sibling["value"]}),
                };
                if let Some(at) = sibling["expires_at_ms"].as_u64() {
                    line["expires_at_ms"] = json!(at);
                }
                writeln!(sink, "{line}").map_err(|err| {
                    ClientError::Failed(format!("cannot write the export: {err}"))
                })?;
                lines += 1;
            }
        }
        pb.set_message(format!("{keys} keys"));
        pb.tick();
        if cursor.is_none() {
            break;
        }
    }
    sink.flush()
        .map_err(|err| ClientError::Failed(format!("cannot write the export: {err}")))?;
    pb.finish_and_clear();
    if !to_stdout {
        if env.json {
            println!("{}", json!({"exported": lines, "keys": keys}));
        } else {
            println!("exported {lines} values of {keys} keys");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_as_in_redis_keys() {
        for (p, t) in [
            ("*", ""),
            ("*", "anything"),
            ("user:*", "user:42"),
            ("user:*", "user:"),
            ("*:42", "user:42"),
            ("u?er:*", "user:1"),
            ("a*b*c", "aXXbYYc"),
            ("a*b*c", "abc"),
            ("*a*a*", "banana"),
            (r"star\*", "star*"),
            ("héllo?", "héllo!"),
        ] {
            assert!(glob_match(p, t), "{p} should match {t}");
        }
        for (p, t) in [
            ("user:*", "users:1"),
            ("u?er", "uer"),
            ("a*b*c", "aXXbYY"),
            (r"star\*", "starX"),
            ("exact", "exactly"),
            ("", "x"),
        ] {
            assert!(!glob_match(p, t), "{p} should not match {t}");
        }
    }
}
