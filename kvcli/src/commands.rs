//! The commands, shared by one-shot use, script mode and the REPL: each runs against a
//! connected [`Client`] and prints either a readable answer or one JSON document.

use clap::Subcommand;
use kv_core::wire::{value_from_json, ClientOp};
use serde_json::{json, Value};

use crate::client::{Client, ClientError};

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
    /// Write a value. Without --context the write is blind: existing values stay as siblings.
    Put {
        /// The key.
        key: String,
        /// The value (UTF-8 text).
        value: String,
        /// The context of an earlier get: the write replaces what that get saw.
        #[arg(long)]
        context: Option<String>,
        /// Write quorum for this request.
        #[arg(long)]
        w: Option<usize>,
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
    },
    /// Every member of the cluster: state, keys held, pending hints.
    Status,
    /// Token ownership per node, or with --key the key's preference list.
    Ring {
        /// Show this key's preference list.
        #[arg(long)]
        key: Option<String>,
    },
    /// Load generator: pure writes or reads against the cluster.
    Bench(crate::bench::BenchArgs),
}

/// What running a command produced: the text to print, or an error.
pub type Outcome = Result<(), ClientError>;

/// Runs one command and prints its result (`json`: one JSON document on one line).
pub async fn run(client: &Client, cmd: Command, json: bool) -> Outcome {
    match cmd {
        Command::Get { key, r, local } => {
            let v = client.request(&ClientOp::Get { key, r, local }).await?;
            print_get(&v, json);
        }
        Command::Put {
            key,
            value,
            context,
            w,
        } => {
            let v = client
                .request(&ClientOp::Put {
                    key,
                    value: value.into_bytes(),
                    context: context.unwrap_or_default(),
                    w,
                })
                .await?;
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "key": v["key"], "context": v["context"]})
                );
            } else {
                println!("OK");
                println!("context: {}", v["context"].as_str().unwrap_or(""));
            }
        }
        Command::Delete { key, context, w } => {
            let v = client
                .request(&ClientOp::Delete {
                    key,
                    context: context.unwrap_or_default(),
                    w,
                })
                .await?;
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "key": v["key"], "context": v["context"]})
                );
            } else {
                println!("OK (deleted)");
            }
        }
        Command::Status => {
            let v = client.request(&ClientOp::Status).await?;
            print_status(&v, json);
        }
        Command::Ring { key } => {
            let has_key = key.is_some();
            let v = client.request(&ClientOp::Ring { key }).await?;
            print_ring(&v, has_key, json);
        }
        Command::Bench(args) => crate::bench::run(client, args, json).await?,
    }
    Ok(())
}

fn strip(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
    }
    v
}

fn print_get(v: &Value, json: bool) {
    if json {
        println!("{}", strip(v));
        return;
    }
    let values = v["values"].as_array().cloned().unwrap_or_default();
    let show = |x: &Value| match value_from_json(x) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => format!("<{} bytes of binary>", e.into_bytes().len()),
        },
        Err(_) => x.to_string(),
    };
    match values.len() {
        0 => println!("(not found)"),
        1 => println!("{}", show(&values[0])),
        n => {
            println!("{n} siblings (concurrent writes; write back with the context to resolve):");
            for (i, x) in values.iter().enumerate() {
                println!("  {}) {}", i + 1, show(x));
            }
        }
    }
    if let Some(ctx) = v["context"].as_str().filter(|c| !c.is_empty()) {
        println!("context: {ctx}");
    }
}

fn print_status(v: &Value, json: bool) {
    if json {
        println!("{}", strip(v));
        return;
    }
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    let cell = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                cell(&n["id"]),
                cell(&n["addr"]),
                cell(&n["dc"]),
                cell(&n["rack"]),
                cell(&n["state"]),
                cell(&n["keys"]),
                n["disk_bytes"]
                    .as_u64()
                    .map(human_bytes)
                    .unwrap_or("-".into()),
                cell(&n["hints_pending"]),
                n["uptime_s"].as_u64().map(human_secs).unwrap_or("-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "ADDRESS", "DC", "RACK", "STATE", "KEYS", "DISK", "HINTS", "UPTIME",
        ],
        &rows,
    );
}

fn print_ring(v: &Value, has_key: bool, json: bool) {
    if json {
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
            "token {}: {}",
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

/// Prints rows under a header, columns padded to their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn human_bytes(b: u64) -> String {
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

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}
