//! `kvcli autoscale`: grows and shrinks the cluster with its load.
//!
//! Every `--interval-s` it reads the membership (`status`) and every up member's `/metrics`
//! (client requests, the latency histogram, table bytes), turns the counters into per-node
//! samples (ops/s and p99 since the previous reading, disk bytes), and asks the pure policy of
//! [`kv_core::autoscale`] what to do. It prints each decision with its reason, acts on it, and
//! follows the data movement the change causes until the cluster is still again.
//!
//! How nodes come and go:
//! - by default, locally: a scale-out starts new `kvd` processes that join through the seed
//!   (the global `--node`), with their data dirs and logs under `--dir`; a scale-in drains the
//!   node through the admin `decommission` op, then stops its process and removes its data
//!   dir. Only nodes this autoscaler started are removed, unless `--scale-in-any`. The nodes it
//!   started are recorded in `DIR/autoscale.json`, so a later run with the same `--dir` adopts
//!   them.
//! - with `--launch CMD` / `--retire CMD`, those shell commands do it instead (a cluster
//!   manager's `kubectl scale`, say); see [`AutoscaleArgs`] for their environment.
//!
//! Ctrl-C (or SIGTERM) stops the autoscaler between two steps. Started nodes run in their own
//! process group, so they keep running (they hold data); it prints how to remove each one, or
//! drains and stops them first with `--drain-on-exit`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::commands::unix_ms;

use clap::Args;
use kv_core::autoscale::{
    decide, summarize, Decision, LoadSample, LoadWindow, Member, MemberState, Policy, Targets,
};
use kv_core::ring::Placement;
use kv_core::wire::ClientOp;
use serde_json::{json, Value};

use crate::client::{host_port, Client, ClientError};
use crate::commands::Env;
use crate::metrics::{quantile, Sample};

/// Flags of `kvcli autoscale`.
#[derive(Args, Debug, Clone)]
pub struct AutoscaleArgs {
    /// Never fewer members than this.
    #[arg(long, default_value_t = 3)]
    pub min: usize,
    /// Never more members than this.
    #[arg(long, default_value_t = 6)]
    pub max: usize,
    /// High watermark: mean client ops/s per node above which the cluster grows.
    #[arg(long, default_value_t = 5000.0)]
    pub target_ops: f64,
    /// Low watermark: the cluster shrinks when its peak ops/s over the window, spread over one
    /// node fewer, stays below this per node (default: 40% of --target-ops).
    #[arg(long)]
    pub low_ops: Option<f64>,
    /// Grow when a node's p99 latency (ms) stays above this.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Grow when the data on disk (MB, 10^6 bytes) per node would exceed this.
    #[arg(long)]
    pub max_disk_mb: Option<u64>,
    /// Seconds between two readings of the cluster.
    #[arg(long, default_value_t = 10.0)]
    pub interval_s: f64,
    /// Seconds without any change after a change has finished.
    #[arg(long, default_value_t = 120.0)]
    pub cooldown_s: f64,
    /// Seconds of readings the policy looks at (default: 6 intervals).
    #[arg(long)]
    pub window_s: Option<f64>,
    /// Most nodes added at once.
    #[arg(long, default_value_t = 1)]
    pub max_step: usize,
    /// Readings of every node needed before a scale-in.
    #[arg(long, default_value_t = 3)]
    pub min_samples: usize,
    /// The cluster's replica placement (`3` or `dc1:2,dc2:1`); default: the replica count the
    /// node reports in `ring`. A scale-in never goes below it.
    #[arg(long)]
    pub replication: Option<String>,
    /// Where started nodes keep their data dirs and logs, and the autoscaler its record of them.
    #[arg(long, default_value = "./kvd-autoscale")]
    pub dir: PathBuf,
    /// The kvd binary to start (default: `kvd` next to kvcli, else from PATH).
    #[arg(long)]
    pub kvd: Option<PathBuf>,
    /// IP address started nodes listen on (each gets a free port).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// An extra flag for every started kvd, e.g. `--kvd-arg=--sync --kvd-arg=interval`
    /// (repeatable).
    #[arg(long = "kvd-arg", allow_hyphen_values = true)]
    pub kvd_args: Vec<String>,
    /// Ids of started nodes: PREFIX1, PREFIX2, ...
    #[arg(long, default_value = "auto")]
    pub id_prefix: String,
    /// Shell command that adds nodes instead of starting kvd (env: KV_AUTOSCALE_COUNT,
    /// KV_AUTOSCALE_CURRENT, KV_AUTOSCALE_TARGET, KV_AUTOSCALE_REASON, KV_NODE).
    #[arg(long, requires = "retire")]
    pub launch: Option<String>,
    /// Shell command that removes a node once it has handed its data over and left the ring
    /// (env: KV_AUTOSCALE_NODE, KV_AUTOSCALE_NODE_ADDR, KV_AUTOSCALE_CURRENT,
    /// KV_AUTOSCALE_TARGET, KV_AUTOSCALE_REASON, KV_NODE).
    #[arg(long, requires = "launch")]
    pub retire: Option<String>,
    /// Also remove nodes this autoscaler did not start (highest id first: the last pod of a
    /// StatefulSet).
    #[arg(long)]
    pub scale_in_any: bool,
    /// Only the member with the highest id (in natural order: `kvd-10` after `kvd-9`) may be
    /// removed, as a StatefulSet always removes its last pod.
    #[arg(long)]
    pub scale_in_highest_only: bool,
    /// Seconds to wait for a change to finish (a node joining, or a launch command's nodes
    /// appearing) before giving up on it.
    #[arg(long, default_value_t = 600.0)]
    pub settle_timeout_s: f64,
    /// On Ctrl-C, drain and stop every node this autoscaler started before exiting.
    #[arg(long)]
    pub drain_on_exit: bool,
}

/// A node process this autoscaler started (or adopted from its record).
#[derive(Debug)]
struct Started {
    id: String,
    addr: String,
    data_dir: PathBuf,
    pid: u32,
    /// The process handle, when this run started it (adopted nodes have only the pid).
    child: Option<Child>,
    /// When this run restarted it after a crash, most recent last.
    restarts: Vec<Instant>,
}

/// Crashes of one node within [`RESTART_WINDOW`] that are restarted; past that it stays down.
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The previous reading of a node's counters, to turn them into rates.
struct Reading {
    at: Instant,
    requests: f64,
    /// Cumulative latency buckets summed over the ops: (upper bound in s, count).
    buckets: Vec<(f64, f64)>,
}

/// How nodes are added and removed.
enum Scaler {
    /// Start and stop local kvd processes.
    Local { kvd: PathBuf },
    /// Run the operator's shell commands.
    Commands { launch: String, retire: String },
}

/// Everything the loop keeps between readings.
struct Autoscaler {
    /// The flags, as given.
    args: AutoscaleArgs,
    /// The policy the flags describe (its placement follows what `ring` reports).
    policy: Policy,
    /// How nodes are added and removed.
    scaler: Scaler,
    /// `HOST:PORT` of the seed (the global --node).
    seed: String,
    /// The seed's URL.
    url: String,
    /// Presented on every connection.
    token: Option<String>,
    /// How long a request may take.
    timeout: Duration,
    /// Print JSON lines.
    json: bool,
    /// The connection to the seed; `None` after it broke, reopened on the next use.
    client: Option<Client>,
    /// The nodes this autoscaler started (or adopted), oldest first.
    started: Vec<Started>,
    /// Nodes that joined after a launch command: removable like started ones.
    launched: Vec<String>,
    /// Every id the cluster has known, including members that left: never reused.
    known_ids: HashSet<String>,
    /// The last decision line printed, so that an unchanged hold is not repeated.
    last_line: String,
    /// The last reading of each node's counters.
    readings: HashMap<String, Reading>,
    /// The samples the policy looks at.
    window: LoadWindow,
    /// When the last change finished (the cooldown counts from there), in policy time.
    last_change_ms: Option<u64>,
    /// The start of policy time.
    epoch: Instant,
}

/// Runs the autoscaler until Ctrl-C or SIGTERM.
pub async fn run(client: &Client, args: AutoscaleArgs, env: &Env) -> Result<(), ClientError> {
    // The REPL cancels a command on Ctrl-C, which would skip the summary of the nodes left
    // running: the autoscaler is a long-running process of its own.
    if env.memory.is_some() {
        return Err(ClientError::Usage(
            "autoscale runs on its own: kvcli --node URL autoscale [FLAGS]".into(),
        ));
    }
    let mut a = Autoscaler::new(client, args, env).await?;
    a.adopt();
    a.say(
        json!({"event": "start", "seed": a.seed, "policy": a.policy,
               "adopted": a.started.iter().map(|s| s.id.clone()).collect::<Vec<_>>()}),
        format!(
            "autoscaling through {} between {} and {} nodes (ops/s per node: grow above {}, shrink below {}); every {} s, Ctrl-C stops",
            a.seed,
            a.policy.min_nodes,
            a.policy.max_nodes,
            a.policy.targets.high_ops_per_node,
            a.policy.targets.low_ops_per_node,
            a.args.interval_s
        ),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ClientError::Failed(format!("autoscale: cannot watch SIGTERM: {e}")))?;
    let outcome = {
        let work = a.run_loop();
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    };
    // An error is printed by main, after the summary of what is left running.
    a.finish().await;
    outcome
}

/// `HH:MM:SS` (UTC) for the readable lines.
fn clock() -> String {
    let s = unix_ms() / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// A member of `status`: id, address, dc, state, whether ranges are moving.
#[derive(Debug, Clone)]
struct StatusMember {
    id: String,
    addr: String,
    dc: String,
    state: String,
    transfer: Option<Value>,
}

fn status_members(status: &Value) -> Vec<StatusMember> {
    status["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
                    StatusMember {
                        id: s("id"),
                        addr: s("addr"),
                        dc: s("dc"),
                        state: s("state"),
                        transfer: Some(n["transfer"].clone()).filter(Value::is_object),
                    }
                })
                // A node that left is no member any more.
                .filter(|m| m.state != "left")
                .collect()
        })
        .unwrap_or_default()
}

/// Compares ids so that `kvd-10` comes after `kvd-9` (numbers inside compare as numbers).
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut num: Option<u64> = None;
        for c in s.chars() {
            match (c.to_digit(10), num) {
                (Some(d), Some(n)) => num = Some(n.saturating_mul(10).saturating_add(d as u64)),
                (Some(d), None) => num = Some(d as u64),
                (None, Some(n)) => {
                    out.push((std::mem::take(&mut text), n));
                    num = None;
                    text.push(c);
                }
                (None, None) => text.push(c),
            }
        }
        out.push((text, num.unwrap_or(0)));
        out
    }
    parts(a).cmp(&parts(b))
}

/// The policy's view of the members, in order of preference for removal: the nodes this
/// autoscaler added (`ours`, oldest first), newest first; then the others, highest id first.
/// Removable: ours, or any with `any`; with `highest_only`, only the member of the highest id.
fn removal_order(
    members: &[StatusMember],
    ours: &[&str],
    any: bool,
    highest_only: bool,
) -> Vec<Member> {
    let rank = |id: &str| ours.iter().position(|o| *o == id);
    let highest = members
        .iter()
        .map(|m| m.id.as_str())
        .max_by(|a, b| natural_cmp(a, b));
    let mut sorted: Vec<&StatusMember> = members.iter().collect();
    sorted.sort_by(|a, b| match (rank(&a.id), rank(&b.id)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => natural_cmp(&b.id, &a.id),
    });
    sorted
        .into_iter()
        .map(|m| Member {
            id: m.id.clone(),
            dc: m.dc.clone(),
            state: match m.state.as_str() {
                "up" => MemberState::Up,
                "joining" => MemberState::Joining,
                "leaving" => MemberState::Leaving,
                _ => MemberState::Down,
            },
            moving: m.transfer.is_some(),
            removable: (any || rank(&m.id).is_some())
                && (!highest_only || highest == Some(m.id.as_str())),
        })
        .collect()
}

/// Sums the per-op latency buckets of `/metrics` by upper bound, sorted.
fn latency_buckets(samples: &[Sample]) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "kv_request_duration_seconds_bucket")
    {
        let Some(le) = s.label("le") else { continue };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        // Keyed by the bound's bits: bounds are non-negative, so their order is the bits' order.
        by_le.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += s.value;
    }
    by_le.into_values().collect()
}

/// A node's bytes of tables on disk (the memtable not included) and whether it refuses writes
/// for lack of disk space, from its `/metrics`.
fn disk_figures(samples: &[Sample]) -> (u64, bool) {
    let bytes: f64 = samples
        .iter()
        .filter(|s| s.name == "kv_storage_level_bytes")
        .map(|s| s.value)
        .sum();
    let full = samples
        .iter()
        .any(|s| s.name == "kv_storage_disk_full" && s.value > 0.0);
    (bytes as u64, full)
}

/// The p99 (ms) of the requests between two readings of cumulative buckets.
fn p99_between(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(bound, count)| {
            let old = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, (count - old).max(0.0))
        })
        .collect();
    quantile(&delta, 0.99).map(|s| s * 1000.0)
}

impl Autoscaler {
    async fn new(
        client: &Client,
        args: AutoscaleArgs,
        env: &Env,
    ) -> Result<Autoscaler, ClientError> {
        let usage = |m: String| ClientError::Usage(format!("autoscale: {m}"));
        for (name, v) in [
            ("--interval-s", args.interval_s),
            ("--settle-timeout-s", args.settle_timeout_s),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(usage(format!(
                    "{name} must be a positive number of seconds"
                )));
            }
        }
        if !(args.cooldown_s >= 0.0 && args.cooldown_s.is_finite()) {
            return Err(usage("--cooldown-s must be 0 or more seconds".into()));
        }
        let window_s = args.window_s.unwrap_or(args.interval_s * 6.0);
        if !(window_s > 0.0 && window_s.is_finite()) {
            return Err(usage(
                "--window-s must be a positive number of seconds".into(),
            ));
        }
        let placement = match &args.replication {
            Some(text) => {
                Placement::parse(text).map_err(|e| usage(format!("--replication: {e}")))?
            }
            None => {
                let ring = client.request(&ClientOp::Ring { key: None }).await?;
                let n = ring["replicas"].as_u64().unwrap_or(1).max(1) as usize;
                Placement::Simple { n }
            }
        };
        let policy = Policy {
            min_nodes: args.min,
            max_nodes: args.max,
            targets: Targets {
                high_ops_per_node: args.target_ops,
                low_ops_per_node: args.low_ops.unwrap_or(args.target_ops * 0.4),
                max_p99_ms: args.max_p99_ms,
                max_disk_bytes_per_node: args.max_disk_mb.map(|mb| mb.saturating_mul(1_000_000)),
            },
            placement,
            cooldown_ms: (args.cooldown_s * 1000.0) as u64,
            window_ms: (window_s * 1000.0) as u64,
            max_step: args.max_step,
            min_samples_to_shrink: args.min_samples,
        };
        policy.validate().map_err(usage)?;
        let scaler = match (&args.launch, &args.retire) {
            (Some(launch), Some(retire)) => Scaler::Commands {
                launch: launch.clone(),
                retire: retire.clone(),
            },
            _ => Scaler::Local {
                kvd: match &args.kvd {
                    Some(p) => p.clone(),
                    None => find_kvd(),
                },
            },
        };
        if let Scaler::Local { .. } = scaler {
            if args.host.parse::<std::net::IpAddr>().is_err() {
                return Err(usage(format!(
                    "--host {} is not an IP address (kvd listens on a numeric address)",
                    args.host
                )));
            }
        }
        std::fs::create_dir_all(&args.dir).map_err(|e| {
            ClientError::Failed(format!(
                "autoscale: cannot create {}: {e}",
                args.dir.display()
            ))
        })?;
        Ok(Autoscaler {
            policy,
            scaler,
            seed: host_port(&env.node)?,
            url: env.node.clone(),
            token: env.token.clone(),
            timeout: env.timeout,
            json: env.json,
            client: Some(client.clone()),
            started: Vec::new(),
            launched: Vec::new(),
            known_ids: HashSet::new(),
            last_line: String::new(),
            readings: HashMap::new(),
            window: LoadWindow::new(),
            last_change_ms: None,
            epoch: Instant::now(),
            args,
        })
    }

    /// Milliseconds since the autoscaler started: the policy's clock.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Prints one event: a JSON line with `--json` (with `event` and `at_ms`), else `text`.
    fn say(&self, mut doc: Value, text: String) {
        if self.json {
            doc["at_ms"] = json!(unix_ms());
            println!("{doc}");
        } else {
            println!("{} {text}", clock());
        }
    }

    fn record_path(&self) -> PathBuf {
        self.args.dir.join("autoscale.json")
    }

    /// Writes the record of started nodes (best effort: a failure is reported, not fatal).
    fn save(&self) {
        let nodes: Vec<Value> = self
            .started
            .iter()
            .map(|s| json!({"id": s.id, "addr": s.addr, "data_dir": s.data_dir, "pid": s.pid}))
            .collect();
        let body = json!({ "seed": self.seed, "nodes": nodes }).to_string();
        if let Err(e) = std::fs::write(self.record_path(), body) {
            crate::style::error_line(&format!(
                "autoscale: cannot write {}: {e}",
                self.record_path().display()
            ));
        }
    }

    /// Takes over the nodes a previous run recorded (checked against `status` on each round).
    fn adopt(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.record_path()) else {
            return;
        };
        let doc: Value = serde_json::from_str(&text).unwrap_or_default();
        for n in doc["nodes"].as_array().cloned().unwrap_or_default() {
            let (Some(id), Some(addr), Some(dir), Some(pid)) = (
                n["id"].as_str(),
                n["addr"].as_str(),
                n["data_dir"].as_str(),
                n["pid"].as_u64(),
            ) else {
                continue;
            };
            self.started.push(Started {
                id: id.into(),
                addr: addr.into(),
                data_dir: dir.into(),
                pid: pid as u32,
                child: None,
                restarts: Vec::new(),
            });
        }
    }

    /// A connection to the seed, reopened when it broke.
    async fn client(&mut self) -> Result<Client, ClientError> {
        if let Some(c) = self.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Client::connect(&self.url, self.token.as_deref(), self.timeout).await?;
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn status(&mut self) -> Result<Vec<StatusMember>, ClientError> {
        let c = self.client().await?;
        let v = c.request(&ClientOp::Status).await?;
        // Ids of members that left stay taken: the cluster would keep a newcomer of the same
        // id out.
        for n in v["nodes"].as_array().into_iter().flatten() {
            if let Some(id) = n["id"].as_str() {
                self.known_ids.insert(id.to_string());
            }
        }
        Ok(status_members(&v))
    }

    /// Without --replication, the replica count the node reports: kvd caps it at the ring's
    /// size while the cluster is smaller, so the largest count seen is kept (the floor only
    /// rises).
    async fn refresh_replicas(&mut self) {
        if self.args.replication.is_some() {
            return;
        }
        let Ok(c) = self.client().await else { return };
        if let Ok(ring) = c.request(&ClientOp::Ring { key: None }).await {
            let seen = ring["replicas"].as_u64().unwrap_or(0) as usize;
            if seen > self.policy.placement.replicas() {
                self.policy.placement = Placement::Simple { n: seen };
            }
        }
    }

    /// One reading of every up member's `/metrics`, turned into samples.
    async fn read_load(&mut self, members: &[StatusMember]) {
        let now_ms = self.now_ms();
        let limit = self.timeout.min(Duration::from_secs(3));
        let mut tasks = Vec::new();
        for m in members.iter().filter(|m| m.state == "up") {
            let (id, addr) = (m.id.clone(), m.addr.clone());
            tasks.push(tokio::spawn(async move {
                let s = crate::metrics::fetch(&addr, limit).await;
                (id, Instant::now(), s)
            }));
        }
        for t in tasks {
            let Ok((id, at, Ok(samples))) = t.await else {
                continue;
            };
            let (disk, disk_full) = disk_figures(&samples);
            let reading = Reading {
                at,
                requests: crate::metrics::requests_total(&samples),
                buckets: latency_buckets(&samples),
            };
            if let Some(prev) = self.readings.get(&id) {
                let secs = reading.at.duration_since(prev.at).as_secs_f64();
                // A restarted node's counters start again from 0: skip that reading.
                if secs > 0.0 && reading.requests >= prev.requests {
                    self.window.push(LoadSample {
                        node: id.clone(),
                        at_ms: now_ms,
                        ops_per_sec: (reading.requests - prev.requests) / secs,
                        p99_ms: p99_between(&prev.buckets, &reading.buckets),
                        disk_bytes: disk,
                        disk_full,
                    });
                }
            }
            self.readings.insert(id, reading);
        }
        let keep: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        self.window.prune(now_ms, self.policy.window_ms, &keep);
    }

    /// The policy's view of the members (see [`removal_order`]).
    fn policy_members(&self, members: &[StatusMember]) -> Vec<Member> {
        let ours: Vec<&str> = self
            .started
            .iter()
            .map(|s| s.id.as_str())
            .chain(self.launched.iter().map(String::as_str))
            .collect();
        removal_order(
            members,
            &ours,
            self.args.scale_in_any,
            self.args.scale_in_highest_only,
        )
    }

    async fn run_loop(&mut self) -> Result<(), ClientError> {
        let interval = Duration::from_secs_f64(self.args.interval_s);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let members = match self.status().await {
                Ok(m) => m,
                Err(e) => {
                    self.client = None;
                    self.say(
                        json!({"event": "error", "error": e.to_string()}),
                        format!("cannot read the membership from {}: {e}", self.seed),
                    );
                    continue;
                }
            };
            self.check_children();
            self.refresh_replicas().await;
            self.read_load(&members).await;
            let view = self.policy_members(&members);
            let now = self.now_ms();
            let samples = self.window.samples();
            let decision = decide(&self.policy, &view, &samples, now, self.last_change_ms);
            let load = summarize(&view, &samples, now, self.policy.window_ms);
            let per_node = if load.nodes_reporting > 0 {
                load.total_ops / load.nodes_reporting as f64
            } else {
                0.0
            };
            let mut doc = serde_json::to_value(&decision).unwrap_or_default();
            doc["event"] = json!("decision");
            doc["nodes"] = json!(view.len());
            doc["load"] = json!({
                "total_ops_per_sec": (load.total_ops * 10.0).round() / 10.0,
                "ops_per_sec_per_node": (per_node * 10.0).round() / 10.0,
                "worst_p99_ms": load.worst_p99_ms,
                "disk_bytes": load.total_disk_bytes,
            });
            let line = format!("[{} nodes] {decision}", view.len());
            // A readable log shows a hold again only when its reason changed; JSON lines
            // carry every decision.
            if self.json || line != self.last_line {
                self.say(doc, line.clone());
            }
            self.last_line = line;
            match decision {
                Decision::Hold { .. } => {}
                Decision::ScaleOut { count, reason } => {
                    self.scale_out(count, &reason, &members).await?;
                    self.changed();
                }
                Decision::ScaleIn { node, reason } => {
                    let addr = members
                        .iter()
                        .find(|m| m.id == node)
                        .map(|m| m.addr.clone())
                        .unwrap_or_default();
                    self.scale_in(&node, &addr, &reason, members.len()).await?;
                    self.changed();
                }
            }
        }
    }

    /// After a change: the cooldown starts now, and the figures of the old shape are dropped.
    fn changed(&mut self) {
        self.last_change_ms = Some(self.now_ms());
        self.window.clear();
    }

    /// Reports started processes that exited on their own, and starts again (same id, address
    /// and data dir, like a supervisor) those that crashed: killed by a signal or failed, at
    /// most [`MAX_RESTARTS`] times in [`RESTART_WINDOW`]. A clean exit (someone stopped it)
    /// stays stopped.
    fn check_children(&mut self) {
        let mut gone = Vec::new();
        for (i, s) in self.started.iter_mut().enumerate() {
            if let Some(c) = s.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    gone.push((i, status));
                    s.child = None;
                }
            }
        }
        for (i, status) in gone {
            let id = self.started[i].id.clone();
            let log = self.args.dir.join(format!("{id}.log"));
            self.say(
                json!({"event": "node_exited", "node": id, "status": status.to_string()}),
                format!(
                    "node {id} exited on its own ({status}); see {}",
                    log.display()
                ),
            );
            let Scaler::Local { kvd } = &self.scaler else {
                continue;
            };
            self.started[i]
                .restarts
                .retain(|t| t.elapsed() < RESTART_WINDOW);
            let recent = self.started[i].restarts.len();
            if status.success() {
                continue;
            }
            if recent >= MAX_RESTARTS {
                self.say(
                    json!({"event": "node_given_up", "node": id}),
                    format!(
                        "node {id} crashed {} times in {} min: not starting it again",
                        recent + 1,
                        RESTART_WINDOW.as_secs() / 60
                    ),
                );
                continue;
            }
            let node = &self.started[i];
            match self.spawn_kvd(
                &kvd.clone(),
                &id,
                &node.addr.clone(),
                &node.data_dir.clone(),
            ) {
                Ok(child) => {
                    let pid = child.id();
                    let s = &mut self.started[i];
                    s.restarts.push(Instant::now());
                    let count = s.restarts.len();
                    s.pid = pid;
                    s.child = Some(child);
                    self.save();
                    self.say(
                        json!({"event": "node_restarted", "node": id, "pid": pid, "restarts": count}),
                        format!("node {id} crashed; started it again with its data (pid {pid})"),
                    );
                }
                Err(e) => self.say(
                    json!({"event": "error", "error": e.to_string()}),
                    format!("cannot start {id} again: {e}"),
                ),
            }
        }
    }

    async fn scale_out(
        &mut self,
        count: usize,
        reason: &str,
        members: &[StatusMember],
    ) -> Result<(), ClientError> {
        let before: HashSet<String> = members.iter().map(|m| m.id.clone()).collect();
        match &self.scaler {
            Scaler::Local { kvd } => {
                let kvd = kvd.clone();
                // One at a time: a joining node picks its tokens knowing the ones before it.
                for _ in 0..count {
                    let node = self.start_node(&kvd, &before)?;
                    let (id, addr) = (node.id.clone(), node.addr.clone());
                    self.say(
                        json!({"event": "started", "node": id, "addr": addr, "pid": node.pid,
                               "data_dir": node.data_dir, "log": self.args.dir.join(format!("{id}.log"))}),
                        format!("started {id} on {addr} (pid {}), joining through {}", node.pid, self.seed),
                    );
                    self.started.push(node);
                    self.save();
                    self.wait_joined(&id, &addr).await?;
                }
            }
            Scaler::Commands { launch, .. } => {
                let n = members.len();
                let target = n + count;
                let env = [
                    ("KV_AUTOSCALE_COUNT", count.to_string()),
                    ("KV_AUTOSCALE_CURRENT", n.to_string()),
                    ("KV_AUTOSCALE_TARGET", target.to_string()),
                    ("KV_AUTOSCALE_REASON", reason.to_string()),
                    ("KV_NODE", self.url.clone()),
                ];
                let launch = launch.clone();
                self.run_command("launch", &launch, &env).await?;
                let fresh = self.wait_members(target, &before).await?;
                self.launched.extend(fresh);
            }
        }
        Ok(())
    }

    /// Starts one kvd that joins through the seed.
    fn start_node(&self, kvd: &Path, taken: &HashSet<String>) -> Result<Started, ClientError> {
        let failed = |m: String| ClientError::Failed(format!("autoscale: {m}"));
        let mut k = 1;
        let id = loop {
            let id = format!("{}{k}", self.args.id_prefix);
            let used = taken.contains(&id)
                || self.known_ids.contains(&id)
                || self.args.dir.join(format!("{id}.log")).exists()
                || self.started.iter().any(|s| s.id == id)
                || self.args.dir.join(&id).exists();
            if !used {
                break id;
            }
            k += 1;
        };
        let port = std::net::TcpListener::bind((self.args.host.as_str(), 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| failed(format!("no free port on {}: {e}", self.args.host)))?
            .port();
        let addr = if self.args.host.contains(':') {
            format!("[{}]:{port}", self.args.host)
        } else {
            format!("{}:{port}", self.args.host)
        };
        let data_dir = self.args.dir.join(&id);
        let child = self.spawn_kvd(kvd, &id, &addr, &data_dir)?;
        Ok(Started {
            id,
            addr,
            data_dir,
            pid: child.id(),
            child: Some(child),
            restarts: Vec::new(),
        })
    }

    /// Starts kvd as node `id` on `addr` with `data_dir`, joining through the seed; its output
    /// is appended to `DIR/<id>.log`.
    fn spawn_kvd(
        &self,
        kvd: &Path,
        id: &str,
        addr: &str,
        data_dir: &Path,
    ) -> Result<Child, ClientError> {
        let failed = |m: String| ClientError::Failed(format!("autoscale: {m}"));
        let log_path = self.args.dir.join(format!("{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| failed(format!("cannot open {}: {e}", log_path.display())))?;
        let mut cmd = std::process::Command::new(kvd);
        cmd.arg("--id")
            .arg(id)
            .arg("--listen")
            .arg(addr)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--seed")
            .arg(&self.seed)
            .args(&self.args.kvd_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // Its own process group: a Ctrl-C meant for the autoscaler does not stop the nodes,
        // which hold data and are removed only by draining them.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", kvd.display())))
    }

    /// Waits until `id` answers, is up in the seed's view and no data moves any more, printing
    /// the progress of its join.
    async fn wait_joined(&mut self, id: &str, addr: &str) -> Result<(), ClientError> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.args.settle_timeout_s);
        let mut shown = None;
        loop {
            if Instant::now() > deadline {
                return Err(ClientError::Failed(format!(
                    "autoscale: {id} did not finish joining within {} s; see {}",
                    self.args.settle_timeout_s,
                    self.args.dir.join(format!("{id}.log")).display()
                )));
            }
            if let Some(s) = self.started.iter_mut().find(|s| s.id == id) {
                if let Some(Ok(Some(status))) = s.child.as_mut().map(|c| c.try_wait()) {
                    return Err(ClientError::Failed(format!(
                        "autoscale: {id} exited while joining ({status}); see {}",
                        self.args.dir.join(format!("{id}.log")).display()
                    )));
                }
            }
            // The joining node reports its own transfer.
            if let Ok(c) = Client::connect(
                &crate::client::node_url(addr),
                self.token.as_deref(),
                self.timeout,
            )
            .await
            {
                if let Ok(v) = c.request(&ClientOp::Status).await {
                    let me = status_members(&v).into_iter().find(|m| m.id == id);
                    if let Some(t) = me.and_then(|m| m.transfer) {
                        self.progress(id, &t, &mut shown);
                    }
                }
            }
            if let Ok(members) = self.status().await {
                let up = members.iter().any(|m| m.id == id && m.state == "up");
                let still = members
                    .iter()
                    .all(|m| (m.transfer.is_none() && m.state == "up") || m.state == "down");
                if up && still {
                    self.say(
                        json!({"event": "joined", "node": id, "nodes": members.len()}),
                        format!("{id} joined: {} nodes", members.len()),
                    );
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Prints a transfer's progress when it changed since the last line.
    fn progress(&self, id: &str, t: &Value, shown: &mut Option<(u64, u64)>) {
        let done = t["ranges_done"].as_u64().unwrap_or(0);
        let total = t["ranges_total"].as_u64().unwrap_or(0);
        if *shown == Some((done, total)) {
            return;
        }
        *shown = Some((done, total));
        let kind = t["kind"].as_str().unwrap_or("moving");
        self.say(
            json!({"event": "progress", "node": id, "kind": kind, "ranges_done": done,
                   "ranges_total": total, "keys": t["keys"], "bytes": t["bytes"]}),
            format!(
                "  {id} {kind}: {done}/{total} ranges, {} keys, {} moved",
                t["keys"],
                t["bytes"]
                    .as_u64()
                    .map_or("-".into(), crate::commands::human_bytes)
            ),
        );
    }

    /// Waits until the cluster has `target` members, all up and still; returns the new ids.
    async fn wait_members(
        &mut self,
        target: usize,
        before: &HashSet<String>,
    ) -> Result<Vec<String>, ClientError> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.args.settle_timeout_s);
        let mut shown: HashMap<String, Option<(u64, u64)>> = HashMap::new();
        loop {
            if let Ok(members) = self.status().await {
                for m in &members {
                    if let Some(t) = &m.transfer {
                        let entry = shown.entry(m.id.clone()).or_default();
                        self.progress(&m.id, t, entry);
                    }
                }
                let still = members
                    .iter()
                    .all(|m| (m.transfer.is_none() && m.state == "up") || m.state == "down");
                if members.len() >= target && still {
                    let fresh: Vec<String> = members
                        .iter()
                        .filter(|m| !before.contains(&m.id))
                        .map(|m| m.id.clone())
                        .collect();
                    self.say(
                        json!({"event": "joined", "nodes": members.len(), "new": fresh}),
                        format!("{} joined: {} nodes", fresh.join(", "), members.len()),
                    );
                    return Ok(fresh);
                }
            }
            if Instant::now() > deadline {
                return Err(ClientError::Failed(format!(
                    "autoscale: the cluster did not reach {target} members within {} s of the launch command",
                    self.args.settle_timeout_s
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs `sh -c CMD` with `env`, reporting its exit status.
    async fn run_command(
        &self,
        what: &str,
        cmd: &str,
        env: &[(&str, String)],
    ) -> Result<(), ClientError> {
        let mut c = std::process::Command::new("sh");
        // Its output goes to standard error: standard output carries only our own lines
        // (JSON lines with --json).
        c.arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(std::io::stderr());
        for (k, v) in env {
            c.env(k, v);
        }
        c.env("KV_AUTOSCALE_ACTION", what);
        let status = tokio::task::spawn_blocking(move || c.status())
            .await
            .map_err(|e| ClientError::Failed(format!("autoscale: the {what} command: {e}")))?
            .map_err(|e| {
                ClientError::Failed(format!("autoscale: cannot run the {what} command: {e}"))
            })?;
        self.say(
            json!({"event": what, "command": cmd, "status": status.code()}),
            format!("{what} command exited with {status}"),
        );
        if !status.success() {
            return Err(ClientError::Failed(format!(
                "autoscale: the {what} command failed ({status}): {cmd}"
            )));
        }
        Ok(())
    }

    async fn scale_in(
        &mut self,
        node: &str,
        addr: &str,
        reason: &str,
        current: usize,
    ) -> Result<(), ClientError> {
        let moved = self.decommission(node).await?;
        self.say(
            json!({"event": "drained", "node": node, "moved_keys": moved}),
            format!("{node} handed {moved} keys over and left the ring"),
        );
        match &self.scaler {
            Scaler::Commands { retire, .. } => {
                let env = [
                    ("KV_AUTOSCALE_NODE", node.to_string()),
                    ("KV_AUTOSCALE_NODE_ADDR", addr.to_string()),
                    ("KV_AUTOSCALE_CURRENT", current.to_string()),
                    ("KV_AUTOSCALE_TARGET", current.saturating_sub(1).to_string()),
                    ("KV_AUTOSCALE_REASON", reason.to_string()),
                    ("KV_NODE", self.url.clone()),
                ];
                let retire = retire.clone();
                self.run_command("retire", &retire, &env).await?;
                self.launched.retain(|l| l != node);
            }
            Scaler::Local { .. } => {
                if let Some(i) = self.started.iter().position(|s| s.id == node) {
                    let s = self.started.remove(i);
                    self.save();
                    let (id, pid) = (s.id.clone(), s.pid);
                    stop_process(s).await;
                    self.say(
                        json!({"event": "stopped", "node": id, "pid": pid}),
                        format!("stopped {id} (pid {pid}) and removed its data dir"),
                    );
                } else {
                    self.say(
                        json!({"event": "left", "node": node, "addr": addr}),
                        format!(
                            "{node} ({addr}) was not started by this autoscaler: it has left the ring; stop its process yourself"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Drains `node` through the admin op, printing its transfer's progress.
    async fn decommission(&mut self, node: &str) -> Result<u64, ClientError> {
        let c = self.client().await?;
        let op = ClientOp::Decommission {
            node: node.to_string(),
        };
        let limit = Duration::from_secs_f64(self.args.settle_timeout_s.max(60.0) * 10.0);
        let request = c.request_within(&op, limit);
        tokio::pin!(request);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut shown = None;
        let v = loop {
            tokio::select! {
                r = &mut request => break r,
                _ = tick.tick() => {
                    if let Ok(v) = c.request(&ClientOp::Status).await {
                        let me = status_members(&v).into_iter().find(|m| m.id == node);
                        if let Some(t) = me.and_then(|m| m.transfer) {
                            self.progress(node, &t, &mut shown);
                        }
                    }
                }
            }
        }?;
        Ok(v["moved_keys"].as_u64().unwrap_or(0))
    }

    /// On exit: drains the started nodes with --drain-on-exit, else tells how to remove them.
    async fn finish(&mut self) {
        let running: Vec<&Started> = self.started.iter().collect();
        if running.is_empty() {
            self.say(
                json!({"event": "exit", "running": []}),
                "autoscale stopped; it leaves no node of its own running".into(),
            );
            return;
        }
        if self.args.drain_on_exit {
            while let Some(s) = self.started.last() {
                let (id, addr) = (s.id.clone(), s.addr.clone());
                self.say(
                    json!({"event": "draining_on_exit", "node": id}),
                    format!("draining {id} before exiting"),
                );
                let members = self.status().await.map(|m| m.len()).unwrap_or(0);
                if members <= self.policy.placement.replicas() {
                    self.say(
                        json!({"event": "error", "error": "too few members to drain"}),
                        format!("not draining {id}: the cluster would have fewer members than the placement needs"),
                    );
                    break;
                }
                if let Err(e) = self.scale_in(&id, &addr, "exiting", members).await {
                    self.say(
                        json!({"event": "error", "node": id, "error": e.to_string()}),
                        format!("could not drain {id}: {e}"),
                    );
                    break;
                }
            }
        }
        let running: Vec<Value> = self
            .started
            .iter()
            .map(|s| json!({"id": s.id, "addr": s.addr, "pid": s.pid}))
            .collect();
        if running.is_empty() {
            self.say(
                json!({"event": "exit", "running": []}),
                "autoscale stopped; every node it started was drained and stopped".into(),
            );
            return;
        }
        let mut text = format!(
            "autoscale stopped; {} node(s) it started keep running (they hold data). To remove one, drain it, then stop it:",
            running.len()
        );
        for s in &self.started {
            text.push_str(&format!(
                "\n  kvcli --node {} decommission {} && kill {}   # {}",
                self.url, s.id, s.pid, s.addr
            ));
        }
        text.push_str(&format!(
            "\n  (or run kvcli autoscale again with --dir {} to adopt them; --drain-on-exit drains them on Ctrl-C)",
            self.args.dir.display()
        ));
        self.say(json!({"event": "exit", "running": running}), text);
    }
}

/// SIGTERMs a drained node and waits up to 15 s for its clean exit (then SIGKILL), then
/// removes its data dir: the node has left the ring and would not be let back in with it.
async fn stop_process(mut s: Started) {
    match s.child.as_mut() {
        Some(child) => {
            // SAFETY: kill(2) on a child we own, with a valid signal, touches no memory.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        None => {
            // Adopted from a previous run: signal the pid only if it still runs this node.
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.pid)).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(&*s.data_dir.to_string_lossy()) {
                // SAFETY: as above; the pid was checked to be this node's process.
                unsafe {
                    libc::kill(s.pid as libc::pid_t, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(15);
                while Path::new(&format!("/proc/{}", s.pid)).exists() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&s.data_dir);
}

/// `kvd` next to this kvcli (as cargo and the Docker image place them), else from PATH.
fn find_kvd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("kvd")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("kvd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> StatusMember {
        StatusMember {
            id: id.into(),
            addr: String::new(),
            dc: "dc1".into(),
            state: "up".into(),
            transfer: None,
        }
    }

    #[test]
    fn removal_prefers_our_newest_node_and_keeps_the_others() {
        let m: Vec<StatusMember> = ["n1", "auto1", "n2", "auto2"].map(member).into();
        let view = removal_order(&m, &["auto1", "auto2"], false, false);
        let ids: Vec<&str> = view.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["auto2", "auto1", "n2", "n1"]);
        let removable: Vec<bool> = view.iter().map(|x| x.removable).collect();
        assert_eq!(removable, [true, true, false, false]);
    }

    #[test]
    fn a_statefulset_loses_only_its_last_pod() {
        let m: Vec<StatusMember> = ["kvd-0-a", "kvd-10-b", "kvd-9-c", "kvd-2-d"]
            .map(member)
            .into();
        let view = removal_order(&m, &[], true, true);
        let removable: Vec<&str> = view
            .iter()
            .filter(|x| x.removable)
            .map(|x| x.id.as_str())
            .collect();
        assert_eq!(removable, ["kvd-10-b"]);
        assert_eq!(view[1].id, "kvd-9-c");
        // Without --scale-in-highest-only every member may go, highest first.
        let view = removal_order(&m, &[], true, false);
        assert!(view.iter().all(|x| x.removable));
        assert_eq!(view[0].id, "kvd-10-b");
    }

    #[test]
    fn natural_order_puts_ten_after_nine() {
        let mut ids = vec!["kvd-10", "kvd-9", "kvd-1", "auto2"];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(ids, vec!["auto2", "kvd-1", "kvd-9", "kvd-10"]);
    }

    #[test]
    fn disk_figures_are_the_tables_bytes_and_whether_writes_are_refused() {
        let text = "kv_storage_level_bytes{level=\"0\"} 1000\n\
                    kv_storage_level_bytes{level=\"1\"} 2500\n\
                    kv_storage_disk_full 0\n";
        assert_eq!(disk_figures(&crate::metrics::parse(text)), (3500, false));
        let full = text.replace("kv_storage_disk_full 0", "kv_storage_disk_full 1");
        assert_eq!(disk_figures(&crate::metrics::parse(&full)), (3500, true));
        // An older node without the gauge is not full.
        assert_eq!(disk_figures(&crate::metrics::parse("")), (0, false));
    }

    #[test]
    fn p99_comes_from_the_requests_between_two_readings() {
        let text_before = "kv_request_duration_seconds_bucket{op=\"get\",le=\"0.001\"} 100\n\
                           kv_request_duration_seconds_bucket{op=\"get\",le=\"0.1\"} 100\n\
                           kv_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"} 100\n";
        let text_after = "kv_request_duration_seconds_bucket{op=\"get\",le=\"0.001\"} 100\n\
                          kv_request_duration_seconds_bucket{op=\"get\",le=\"0.1\"} 200\n\
                          kv_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"} 200\n\
                          kv_request_duration_seconds_bucket{op=\"put\",le=\"0.001\"} 0\n\
                          kv_request_duration_seconds_bucket{op=\"put\",le=\"0.1\"} 0\n\
                          kv_request_duration_seconds_bucket{op=\"put\",le=\"+Inf\"} 0\n";
        let before = latency_buckets(&crate::metrics::parse(text_before));
        let after = latency_buckets(&crate::metrics::parse(text_after));
        assert_eq!(after.len(), 3);
        // The 100 new requests all took 1..100 ms: the old fast ones do not hide them.
        let p99 = p99_between(&before, &after).unwrap();
        assert!(p99 > 90.0 && p99 <= 100.0, "{p99}");
        assert_eq!(p99_between(&after, &after), None);
    }

    #[test]
    fn status_members_skip_those_that_left() {
        let v = json!({"nodes": [
            {"id": "n1", "addr": "a:1", "dc": "dc1", "state": "up", "transfer": null},
            {"id": "n2", "addr": "a:2", "dc": "dc1", "state": "left"},
            {"id": "n3", "addr": "a:3", "dc": "dc1", "state": "joining",
             "transfer": {"kind": "joining", "ranges_done": 1, "ranges_total": 4}},
        ]});
        let m = status_members(&v);
        assert_eq!(m.len(), 2);
        assert!(m[0].transfer.is_none());
        assert!(m[1].transfer.is_some());
    }
}
