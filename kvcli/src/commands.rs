//! The commands, shared by one-shot use, script mode and the REPL: each runs against a
//! connected [`Client`] and prints either a readable answer or one JSON document.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use clap::Subcommand;
use kv_core::wire::{value_from_json, ClientOp};
use serde_json::{json, Value};

use crate::client::{host_port, Client, ClientError};
use crate::style::Style;

/// Every command of kvcli.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Read a key: every sibling and the context to write back with.
    Get {
        /// The key.
        key: String,
        /// Read quorum for this request.
        #[arg(long)]
        r: Option<usize>,
        /// Read only the connected node's own replica, without coordination.
        #[arg(long)]
        local: bool,
    },
    /// Write a value (blind unless given a context)
    ///
    /// Without --context the write is blind: what is stored stays, as siblings. In the REPL
    /// the context of your last get (or write) of the key is used unless --blind.
    Put {
        /// The key.
        key: String,
        /// The value (UTF-8 text; quote it when it holds spaces).
        #[arg(allow_negative_numbers = true)]
        value: String,
        /// The context of an earlier get: the write replaces what that get saw.
        #[arg(long)]
        context: Option<String>,
        /// Write quorum for this request.
        #[arg(long)]
        w: Option<usize>,
        /// Write without any context even in the REPL: what is stored stays as siblings.
        #[arg(long, conflicts_with = "context")]
        blind: bool,
        /// Time to live in seconds: the value expires then and reads as deleted.
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u64>,
    },
    /// Delete a key (a versioned tombstone).
    Delete {
        /// The key.
        key: String,
        /// The context of an earlier get.
        #[arg(long)]
        context: Option<String>,
        /// Write quorum for this request.
        #[arg(long)]
        w: Option<usize>,
        /// Delete without the REPL's remembered context: the node deletes what a read finds now.
        #[arg(long, conflicts_with = "context")]
        blind: bool,
    },
    /// Add to a key's counter (1 unless told; negative to subtract) and print its value
    ///
    /// A counter counts every increment once, whichever node takes it, also when nodes are
    /// down or partitioned. A key holding a value is refused; a deleted key counts from 0.
    Incr {
        /// The key.
        key: String,
        /// What to add.
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
        /// Write quorum for this request.
        #[arg(long)]
        w: Option<usize>,
    },
    /// Replace every sibling of a key with one value
    ///
    /// A get, then a put with the context of all the siblings it saw.
    Resolve {
        /// The key.
        key: String,
        /// The value that replaces the siblings.
        #[arg(allow_negative_numbers = true)]
        value: String,
        /// Write quorum for this request.
        #[arg(long)]
        w: Option<usize>,
    },
    /// Every member: address, placement, state, keys, disk, ops/s, hints, uptime
    Status {
        /// Seconds over which ops/s is measured (0: skip the measurement).
        #[arg(long, default_value_t = 1.0)]
        sample: f64,
    },
    /// Token ownership per node, or with --key the key's preference list.
    Ring {
        /// Show this key's preference list.
        #[arg(long)]
        key: Option<String>,
    },
    /// A summary of a node's /metrics: requests, errors, latency percentiles, storage
    Metrics {
        /// A member id or HOST:PORT (default: the node kvcli talks to).
        #[arg(value_name = "NODE")]
        member: Option<String>,
        /// Every member of the cluster, one after the other.
        #[arg(long, conflicts_with = "member")]
        all: bool,
    },
    /// Load generator: put, get, or a YCSB mix (a, b, c, d, f).
    Bench(crate::bench::BenchArgs),
    /// Grow and shrink the cluster with its load (starts and drains local kvd nodes, or runs
    /// --launch / --retire commands); Ctrl-C stops it.
    Autoscale(Box<crate::autoscale::AutoscaleArgs>),
    /// Pending hinted-handoff writes, by target node.
    Hints,
    /// Run anti-entropy now on the connected node: compare Merkle trees with every other
    /// replica and sync what differs. `repair --node NODE` runs it on NODE: a URL or
    /// HOST:PORT connects there; a node id (no port) asks the default node to run it on NODE.
    Repair {
        /// Set from `--node` when it names a node id rather than an address.
        #[arg(skip)]
        node: Option<String>,
    },
    /// Hand the data of the ranges this node no longer replicates (left behind when a node
    /// joined) to their replicas, then drop it here; --all does it on every member in turn.
    Cleanup {
        /// Every up member, one after the other.
        #[arg(long)]
        all: bool,
    },
    /// Merge every table of this node's storage into its last level now (a major compaction,
    /// as `nodetool compact`): overwritten versions and deleted keys' old data go, reads
    /// touch fewer tables. Runs at the background threads' lower priority; --all does it on
    /// every member in turn.
    Compact {
        /// Every up member, one after the other.
        #[arg(long)]
        all: bool,
    },
    /// Copy this node's data as it stands to DATA_DIR/snapshots/NAME/storage (hard links:
    /// no disk until compaction replaces the tables); --all does it on every member in turn.
    ///
    /// --list shows the snapshots kept; NAME --clear removes one.
    Snapshot {
        /// The snapshot's name (letters, digits, '.', '_', '-'); default: the time in ms.
        name: Option<String>,
        /// Every up member, one after the other, under the same name.
        #[arg(long)]
        all: bool,
        /// List the snapshots kept instead of taking one.
        #[arg(long, conflicts_with_all = ["name", "clear"])]
        list: bool,
        /// Remove snapshot NAME instead of taking one.
        #[arg(long, requires = "name")]
        clear: bool,
    },
    /// Drain NODE: its data moves to the new owners, then it leaves the ring.
    Decommission {
        /// The node's id.
        #[arg(id = "decommission_node", value_name = "NODE")]
        node: String,
    },
    /// Remove NODE, which is down for good, from the ring: the other replicas refill the
    /// ranges it held on their new owners. For a node that is up, use decommission.
    #[command(name = "removenode")]
    RemoveNode {
        /// The node's id.
        #[arg(id = "removenode_node", value_name = "NODE")]
        node: String,
    },
    /// The keys holding a value that match PATTERN (a glob: * any run, ? one character)
    ///
    /// Walks the whole ring in token order, like export: keys come in no particular order.
    Keys {
        /// The glob to match (quote it in the shell).
        #[arg(default_value = "*")]
        pattern: String,
        /// Stop after this many keys.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Every live value as {"key":...,"value":...} JSON lines (one line per sibling).
    Export {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<String>,
    },
    /// Write every {"key":...,"value":...} line of a file (- for standard input)
    Import {
        /// JSON lines file, or - for standard input.
        file: String,
        /// Puts in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Write quorum of each put.
        #[arg(long)]
        w: Option<usize>,
    },
}

/// A context the REPL remembers for a key: what the last get (or write) of it saw.
#[derive(Debug, Clone)]
pub struct Remembered {
    /// The opaque context.
    pub context: String,
    /// How many values the read showed (0 for a tombstone or absent key).
    pub values: usize,
    /// The command it came from (`get`, `put`, ...), for the note printed when used.
    pub from: &'static str,
}

/// What every command runs with.
pub struct Env {
    /// Print one JSON document per command.
    pub json: bool,
    /// Colours of standard output.
    pub out: Style,
    /// The node's URL (bench clients and metrics connect to it).
    pub node: String,
    /// The token (bench clients present it).
    pub token: Option<String>,
    /// How long to wait for the node.
    pub timeout: Duration,
    /// The REPL's memory of contexts by key; `None` outside the REPL, where writes without
    /// --context stay blind as documented.
    pub memory: Option<Mutex<HashMap<String, Remembered>>>,
}

impl Env {
    fn recall(&self, key: &str) -> Option<Remembered> {
        self.memory.as_ref().and_then(|m| lock(m).get(key).cloned())
    }

    fn remember(&self, key: &str, context: &Value, values: usize, from: &'static str) {
        let Some(m) = &self.memory else { return };
        match context.as_str().filter(|c| !c.is_empty()) {
            Some(c) => {
                lock(m).insert(
                    key.to_string(),
                    Remembered {
                        context: c.to_string(),
                        values,
                        from,
                    },
                );
            }
            None => {
                lock(m).remove(key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What running a command produced: the text to print, or an error.
pub type Outcome = Result<(), ClientError>;

/// The context a write uses: `--context` if given; in the REPL, unless `--blind`, the
/// remembered one (announced on stdout); else none: a blind put, or a delete of what the node
/// reads at that moment.
fn write_context(
    env: &Env,
    key: &str,
    given: Option<String>,
    blind: bool,
    what: &str,
) -> Option<String> {
    if given.is_some() {
        return given;
    }
    if blind {
        return None;
    }
    match env.recall(key) {
        Some(r) => {
            if !env.json {
                let seen = match r.values {
                    0 => "nothing live".to_string(),
                    1 => "1 value".to_string(),
                    n => format!("{n} siblings"),
                };
                println!(
                    "{}",
                    env.out.yellow(&format!(
                        "(with the context of your last {} of {key}: this {what} replaces the {seen} it saw; {})",
                        r.from,
                        if what == "delete" {
                            "--blind to delete what is stored now"
                        } else {
                            "--blind to keep them"
                        }
                    ))
                );
            }
            Some(r.context)
        }
        None => None,
    }
}

/// Runs one command and prints its result (`env.json`: one JSON document on one line).
pub async fn run(client: &Client, cmd: Command, env: &Env) -> Outcome {
    let json = env.json;
    match cmd {
        Command::Get { key, r, local } => {
            let v = client
                .request(&ClientOp::Get {
                    key: key.clone(),
                    r,
                    local,
                })
                .await?;
            let n = v["values"].as_array().map_or(0, Vec::len);
            env.remember(&key, &v["context"], n, "get");
            print_get(&v, env);
        }
        Command::Put {
            key,
            value,
            context,
            w,
            blind,
            ttl,
        } => {
            let context = write_context(env, &key, context, blind, "put").unwrap_or_default();
            let v = client
                .request(&ClientOp::Put {
                    key: key.clone(),
                    value: value.into_bytes(),
                    context,
                    w,
                    ttl_s: ttl,
                })
                .await?;
            env.remember(&key, &v["context"], 1, "put");
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "key": v["key"], "context": v["context"]})
                );
            } else {
                println!("{}", env.out.green("OK"));
                if let Some(c) = v["context"].as_str().filter(|c| !c.is_empty()) {
                    println!("{}", env.out.dim(&format!("context: {c}")));
                }
            }
        }
        Command::Delete {
            key,
            context,
            w,
            blind,
        } => {
            let context = write_context(env, &key, context, blind, "delete");
            let v = client
                .request(&ClientOp::Delete {
                    key: key.clone(),
                    context,
                    w,
                })
                .await?;
            env.remember(&key, &v["context"], 0, "delete");
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "key": v["key"], "context": v["context"]})
                );
            } else {
                println!("{}", env.out.green("OK (deleted)"));
            }
        }
        Command::Incr { key, by, w } => {
            let v = client
                .request(&ClientOp::Incr {
                    key: key.clone(),
                    by,
                    w,
                })
                .await?;
            env.remember(&key, &v["context"], 1, "incr");
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "key": v["key"], "value": v["value"], "context": v["context"]})
                );
            } else {
                println!("{}", v["value"]);
            }
        }
        Command::Resolve { key, value, w } => {
            let read = client
                .request(&ClientOp::Get {
                    key: key.clone(),
                    r: None,
                    local: false,
                })
                .await?;
            let replaced = read["values"].as_array().map_or(0, Vec::len);
            let v = client
                .request(&ClientOp::Put {
                    key: key.clone(),
                    value: value.into_bytes(),
                    context: read["context"].as_str().unwrap_or("").to_string(),
                    w,
                    ttl_s: None,
                })
                .await?;
            env.remember(&key, &v["context"], 1, "resolve");
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "key": key, "replaced": replaced, "context": v["context"]})
                );
            } else {
                let what = match replaced {
                    0 => "no live value".to_string(),
                    1 => "1 value".to_string(),
                    n => format!("{n} siblings"),
                };
                println!(
                    "{}",
                    env.out
                        .green(&format!("OK: replaced {what} of {key} with one value"))
                );
                println!(
                    "{}",
                    env.out
                        .dim(&format!("context: {}", v["context"].as_str().unwrap_or("")))
                );
            }
        }
        Command::Status { sample } => {
            let v = client.request(&ClientOp::Status).await?;
            let v = with_ops_per_sec(v, sample, env.timeout).await;
            print_status(&v, env);
        }
        Command::Ring { key } => {
            let has_key = key.is_some();
            let v = client.request(&ClientOp::Ring { key }).await?;
            print_ring(&v, has_key, env);
        }
        Command::Metrics { member, all } => metrics(client, member, all, env).await?,
        Command::Hints => crate::admin::hints(client, env).await?,
        Command::Repair { node } => crate::admin::repair(client, node, env).await?,
        Command::Cleanup { all } => crate::admin::cleanup(client, all, env).await?,
        Command::Compact { all } => crate::admin::compact(client, all, env).await?,
        Command::Snapshot {
            name,
            all,
            list,
            clear,
        } => {
            let what = match (list, clear, name) {
                (true, _, _) => crate::admin::SnapshotCmd::List,
                (_, true, Some(name)) => crate::admin::SnapshotCmd::Clear(name),
                (_, _, name) => crate::admin::SnapshotCmd::Take(name),
            };
            crate::admin::snapshot(client, what, all, env).await?
        }
        Command::Decommission { node } => crate::admin::decommission(client, node, env).await?,
        Command::RemoveNode { node } => crate::admin::remove_node(client, node, env).await?,
        Command::Export { out } => crate::admin::export(client, out, env).await?,
        Command::Keys { pattern, limit } => {
            crate::admin::keys(client, &pattern, limit, env).await?
        }
        Command::Bench(args) => crate::bench::run(client, args, env).await?,
        Command::Autoscale(args) => crate::autoscale::run(client, *args, env).await?,
        Command::Import {
            file,
            concurrency,
            w,
        } => crate::import::run(client, &file, concurrency, w, env).await?,
    }
    Ok(())
}

/// The members of the cluster as `(id, addr, state)`.
async fn members(client: &Client) -> Result<Vec<(String, String, String)>, ClientError> {
    let v = client.request(&ClientOp::Status).await?;
    Ok(v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
                    (s("id"), s("addr"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default())
}

async fn metrics(client: &Client, node: Option<String>, all: bool, env: &Env) -> Outcome {
    // (member id when known, HOST:PORT) of each node to read.
    let members = members(client).await?;
    let id_at = |addr: &str| {
        members
            .iter()
            .find(|(_, a, _)| a == addr)
            .map_or_else(|| addr.to_string(), |(id, _, _)| id.clone())
    };
    let targets: Vec<(String, String)> = if all {
        members
            .iter()
            .filter(|(_, _, state)| state == "up")
            .map(|(id, addr, _)| (id.clone(), addr.clone()))
            .collect()
    } else {
        match node {
            None => {
                let hp = host_port(&env.node)?;
                vec![(id_at(&hp), hp)]
            }
            Some(n) => match members.iter().find(|(id, _, _)| *id == n) {
                Some((id, addr, _)) => vec![(id.clone(), addr.clone())],
                None if n.contains(':') => {
                    let hp = if n.contains("://") {
                        host_port(&n)?
                    } else {
                        n.to_string()
                    };
                    vec![(id_at(&hp), hp)]
                }
                None => {
                    return Err(ClientError::Usage(format!(
                        "metrics: no member named {n} (give a member id or HOST:PORT)"
                    )))
                }
            },
        }
    };
    let mut docs = Vec::new();
    for (name, addr) in targets {
        let samples = crate::metrics::fetch(&addr, env.timeout).await?;
        let mut doc = crate::metrics::summarize(&name, &samples);
        doc["addr"] = json!(addr);
        docs.push(doc);
    }
    if env.json {
        if all {
            println!("{}", json!({ "nodes": docs }));
        } else if let Some(d) = docs.first() {
            println!("{d}");
        }
    } else {
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                println!();
            }
            crate::metrics::print_summary(d, env);
        }
    }
    Ok(())
}

/// Adds `ops_per_sec` to every up member of a status answer: client requests counted by the
/// member's `/metrics` over `sample` seconds (null when it could not be measured).
async fn with_ops_per_sec(mut status: Value, sample: f64, timeout: Duration) -> Value {
    let Some(nodes) = status["nodes"].as_array_mut() else {
        return status;
    };
    if !(sample > 0.0 && sample.is_finite()) {
        return status;
    }
    let addrs: Vec<Option<String>> = nodes
        .iter()
        .map(|n| {
            (n["state"] == "up")
                .then(|| n["addr"].as_str().map(str::to_string))
                .flatten()
        })
        .collect();
    let read_all = |addrs: Vec<Option<String>>| async move {
        let mut tasks = Vec::new();
        for a in addrs {
            tasks.push(tokio::spawn(async move {
                let a = a?;
                let s = crate::metrics::fetch(&a, timeout.min(Duration::from_secs(2)))
                    .await
                    .ok()?;
                Some((
                    std::time::Instant::now(),
                    crate::metrics::requests_total(&s),
                ))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.ok().flatten());
        }
        out
    };
    let first = read_all(addrs.clone()).await;
    tokio::time::sleep(Duration::from_secs_f64(sample)).await;
    let second = read_all(addrs).await;
    for ((n, a), b) in nodes.iter_mut().zip(first).zip(second) {
        let rate = match (a, b) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                Some(((c1 - c0).max(0.0) / (t1 - t0).as_secs_f64() * 10.0).round() / 10.0)
            }
            _ => None,
        };
        n["ops_per_sec"] = json!(rate);
    }
    status
}

fn strip(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
    }
    v
}

fn print_get(v: &Value, env: &Env) {
    if env.json {
        println!("{}", strip(v));
        return;
    }
    let st = env.out;
    let values = v["values"].as_array().cloned().unwrap_or_default();
    let show = |x: &Value| match value_from_json(x) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => format!("<{} bytes of binary>", e.into_bytes().len()),
        },
        Err(_) => x.to_string(),
    };
    // Write times of the siblings, when the node gives them, in the order of `values`.
    let now_ms = unix_ms();
    let ages: Vec<Option<String>> = v["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    s["timestamp_ms"]
                        .as_u64()
                        .map(|t| human_secs(now_ms.saturating_sub(t) / 1000) + " ago")
                })
                .collect()
        })
        .unwrap_or_default();
    match values.len() {
        0 => println!("{}", st.dim("(not found)")),
        1 => println!("{}", show(&values[0])),
        n => {
            println!(
                "{}",
                st.yellow(&format!(
                    "{n} siblings (concurrent writes; write back with the context to resolve):"
                ))
            );
            for (i, x) in values.iter().enumerate() {
                let age = match ages.get(i).cloned().flatten() {
                    Some(a) if ages.len() == n => st.dim(&format!("  (written {a})")),
                    _ => String::new(),
                };
                println!("  {}) {}{age}", st.bold(&(i + 1).to_string()), show(x));
            }
        }
    }
    // When values expire (a put with --ttl): the soonest.
    let expiry = v["siblings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["expires_at_ms"].as_u64())
        .min();
    if let Some(at) = expiry {
        let left = at.saturating_sub(now_ms).div_ceil(1000);
        println!("{}", st.dim(&format!("expires in {}", human_secs(left))));
    }
    if let Some(ctx) = v["context"].as_str().filter(|c| !c.is_empty()) {
        println!("{}", st.dim(&format!("context: {ctx}")));
    }
}

fn print_status(v: &Value, env: &Env) {
    if env.json {
        println!("{}", strip(v));
        return;
    }
    let st = env.out;
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    let cell = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let state = cell(&n["state"]);
            let state = match state.as_str() {
                // Up, but refusing writes until a restart (an I/O error), or for lack of
                // disk space.
                "up" if n["storage_failed"] == true => st.red("up, storage failed"),
                "up" if n["disk_full"] == true => st.red("up, disk full"),
                "up" => st.green(&state),
                "down" | "unknown" => st.red(&state),
                _ => st.yellow(&state),
            };
            vec![
                cell(&n["id"]),
                cell(&n["addr"]),
                cell(&n["dc"]),
                cell(&n["rack"]),
                state,
                cell(&n["keys"]),
                n["disk_bytes"]
                    .as_u64()
                    .map(human_bytes)
                    .unwrap_or("-".into()),
                n["disk_free_bytes"]
                    .as_u64()
                    .map(human_bytes)
                    .unwrap_or("-".into()),
                n["ops_per_sec"]
                    .as_f64()
                    .map(|x| format!("{x:.1}"))
                    .unwrap_or("-".into()),
                cell(&n["hints_pending"]),
                n["uptime_s"].as_u64().map(human_secs).unwrap_or("-".into()),
            ]
        })
        .collect();
    if let Some(me) = v["node"].as_str() {
        println!("{}", st.dim(&format!("as seen by {me}")));
    }
    print_table(
        &[
            "ID", "ADDRESS", "DC", "RACK", "STATE", "KEYS", "DISK", "FREE", "OPS/S", "HINTS",
            "UPTIME",
        ],
        &rows,
    );
    // Why a member refuses writes: its storage failed, or its disk is full.
    for n in &nodes {
        if let Some(why) = n["storage_error"].as_str() {
            println!("{} storage failed: {why}", cell(&n["id"]));
        } else if let Some(why) = n["disk_full_reason"].as_str() {
            println!("{} disk full: {why}", cell(&n["id"]));
        }
    }
    // Data moving because of a join, a decommission or a weight change.
    for n in &nodes {
        let t = &n["transfer"];
        if t.is_object() {
            println!(
                "{} {}: {}/{} ranges, {} keys, {} moved",
                cell(&n["id"]),
                cell(&t["kind"]),
                t["ranges_done"],
                t["ranges_total"],
                t["keys"],
                t["bytes"].as_u64().map(human_bytes).unwrap_or("-".into())
            );
        }
    }
}

fn print_ring(v: &Value, has_key: bool, env: &Env) {
    if env.json {
        println!("{}", strip(v));
        return;
    }
    if has_key {
        let list: Vec<String> = v["preference_list"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "key {} (token {}): {}",
            v["key"].as_str().unwrap_or("?"),
            v["token"].as_str().unwrap_or("?"),
            list.join(", ")
        );
        return;
    }
    let rows: Vec<Vec<String>> = v["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            vec![
                n["id"].as_str().unwrap_or("").to_string(),
                n["addr"].as_str().unwrap_or("").to_string(),
                format!(
                    "{}/{}",
                    n["dc"].as_str().unwrap_or(""),
                    n["rack"].as_str().unwrap_or("")
                ),
                n["weight"].to_string(),
                n["tokens"].to_string(),
                format!("{:.1}%", n["ownership"].as_f64().unwrap_or(0.0) * 100.0),
            ]
        })
        .collect();
    println!("replicas per key: {}", v["replicas"]);
    print_table(
        &["ID", "ADDRESS", "DC/RACK", "WEIGHT", "TOKENS", "OWNS"],
        &rows,
    );
}

/// Prints rows under a header, columns padded to their widest cell (colour escapes take no
/// room).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(visible_len(c));
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(visible_len(c));
                format!("{c}{}", " ".repeat(pad))
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Characters a terminal shows for `s`: ANSI escape sequences (`ESC [ ... m`) take no room.
pub fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

/// Bytes in binary units (`1.5 MiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Milliseconds since the Unix epoch (0 on a clock before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A duration in the two largest units (`3m20s`, `2d4h`).
pub fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_take_no_room() {
        assert_eq!(visible_len("\x1b[32mup\x1b[0m"), 2);
        assert_eq!(visible_len("down"), 4);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(3700), "1h1m");
    }
}
