//! A node's settings: command-line flags (INTERFACE.md) over an optional TOML file over defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kv_core::ring::Placement;
use kv_core::wire::Limits;
use serde::Deserialize;

use crate::storage::SyncMode;
use crate::{Error, Result};

/// The flags of `kvd` when it runs a node. Every one is optional so that a value given in the
/// `--config` file is used when the flag is absent; flags win.
#[derive(Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// Node id, stable across restarts (kept in the data dir after the first start).
    #[arg(long)]
    pub id: Option<String>,
    /// One TCP port for WebSocket clients, WebSocket peers and plain HTTP.
    #[arg(long)]
    pub listen: Option<String>,
    /// Commit log, SSTables, hints, Merkle state and node identity.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Join the cluster that this node belongs to (repeatable).
    #[arg(long = "seed")]
    pub seeds: Vec<String>,
    /// Data-center label used for replica placement.
    #[arg(long)]
    pub dc: Option<String>,
    /// Rack label used for replica placement.
    #[arg(long)]
    pub rack: Option<String>,
    /// Relative capacity: a node of weight 2 owns about twice the data.
    #[arg(long, value_parser = whole_number::<u32>)]
    pub weight: Option<u32>,
    /// Replicas per key (cluster default).
    #[arg(long, value_parser = whole_number::<usize>)]
    pub n: Option<usize>,
    /// Write quorum (cluster default; a request may override it).
    #[arg(long, value_parser = whole_number::<usize>)]
    pub w: Option<usize>,
    /// Read quorum (cluster default; a request may override it).
    #[arg(long, value_parser = whole_number::<usize>)]
    pub r: Option<usize>,
    /// Commit-log durability: always, interval or none.
    #[arg(long, value_parser = parse_sync)]
    pub sync: Option<SyncChoice>,
    /// TOML file with the same settings (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Peers must prove they share the secret in this file.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Clients must present one of the tokens in this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve TLS (wss://, https://) with this PEM certificate chain; peers are dialled with
    /// wss:// too. Needs --tls-key and --tls-ca.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM certificates of the CA(s) that sign the cluster's node certificates: the
    /// certificates of the peers this node dials are verified against them.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: every connection, client or peer, must present a certificate that --tls-ca
    /// signed (nodes present their own --tls-cert to their peers).
    #[arg(long)]
    pub tls_require_client_cert: bool,
    /// How long a coordinator waits for its quorum, in milliseconds.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub request_timeout_ms: Option<u64>,
    /// Seconds a client connection may stay without a complete frame (while nothing it asked
    /// is running) before the node closes it: idle clients and clients that trickle a frame
    /// byte by byte.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub idle_timeout_s: Option<u64>,
    /// Threads that serve requests (the async runtime's workers; default: one per core).
    /// Fewer than the cores leaves them to clients and background work on the same machine:
    /// shorter latency tails, less throughput.
    #[arg(long, value_parser = whole_number::<usize>)]
    pub worker_threads: Option<usize>,
    /// Milliseconds between gossip rounds.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub gossip_interval_ms: Option<u64>,
    /// Cluster default for writes and reads when replicas are down: true (sloppy quorum,
    /// stand-ins keep hints) or false (strict: only the key's own replicas count).
    #[arg(long)]
    pub sloppy: Option<bool>,
    /// Hinted-handoff bytes kept per down node before further hints are refused.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub hint_max_mb: Option<u64>,
    /// Size at which the storage engine's memtable is flushed to a table, in MiB (1 to 4096;
    /// default 64). Up to three memtables are in memory at once (one written, two flushing).
    #[arg(long, value_parser = whole_number::<u64>)]
    pub memtable_mb: Option<u64>,
    /// Memory budget of the block cache (decoded table blocks), in MiB (default 64; 0 turns
    /// it off). It fills as the node writes and reads.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub block_cache_mb: Option<u64>,
    /// Free space kept back on the data dir's file system for flushes and compactions, in
    /// MiB (default: 5% of the file system, at most 1024; 0: none). Below it the node refuses
    /// writes except deletes, while flushing and compaction go on; writes resume once there
    /// is free space above it again.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub reserve_mb: Option<u64>,
    /// What to do at start with a commit log damaged in the middle (a bad record with whole
    /// records after it): `strict` refuses to start (default); `skip-damaged` skips the
    /// damaged records, replays the rest and takes a new actor name, leaving what was lost
    /// to anti-entropy and read repair from the other replicas.
    #[arg(long, value_parser = parse_log_recovery)]
    pub commit_log_recovery: Option<LogRecoveryChoice>,
    /// Seconds between anti-entropy rounds (0 disables the periodic rounds; `repair` still
    /// runs on demand).
    #[arg(long, value_parser = whole_number::<u64>)]
    pub anti_entropy_interval_s: Option<u64>,
    /// Directory of the web console served at `/` (default: the source tree's `www/` when it
    /// exists).
    #[arg(long)]
    pub www_dir: Option<PathBuf>,
    /// Directory of the browser SDK the console loads, served under `/sdk/` (default: the
    /// source tree's `kv-wasm/pkg/web/` when it exists).
    #[arg(long)]
    pub sdk_dir: Option<PathBuf>,
    /// Replicas per data center, e.g. `dc1:2,dc2:1` (instead of `--n`).
    #[arg(long)]
    pub replication: Option<String>,
    /// Seconds a tombstone is kept at least, even once every replica holds it.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub tombstone_grace_s: Option<u64>,
    /// Seconds after which an undelivered hint is dropped (anti-entropy covers it); a tombstone
    /// is never purged before this age, so a late hint cannot bring a deleted value back.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub hint_expiry_s: Option<u64>,
    /// Seconds after another node joins (or a weight change) before this node hands over and
    /// drops the data of the ranges it gave up, as `cleanup` does (0: only on demand).
    #[arg(long, value_parser = whole_number::<u64>)]
    pub cleanup_delay_s: Option<u64>,
    /// Seconds after which a member that left (decommissioned) is forgotten: no longer in
    /// `status` or gossip, its id free for a newcomer.
    #[arg(long, value_parser = whole_number::<u64>)]
    pub forget_left_after_s: Option<u64>,
}

/// `--sync` as parsed from the command line or the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncChoice {
    /// No write is acknowledged before it is fsynced (group commit).
    Always,
    /// fsync at least every 100 ms.
    Interval,
    /// Leave it to the operating system.
    None,
}

fn parse_sync(s: &str) -> std::result::Result<SyncChoice, String> {
    match s {
        "always" => Ok(SyncChoice::Always),
        "interval" => Ok(SyncChoice::Interval),
        "none" => Ok(SyncChoice::None),
        other => Err(format!("'{other}' is not one of always, interval, none")),
    }
}

/// `--commit-log-recovery` as parsed from the command line or the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogRecoveryChoice {
    /// Refuse to start over a damaged commit log.
    Strict,
    /// Skip the damaged records and replay the rest.
    SkipDamaged,
}

fn parse_log_recovery(s: &str) -> std::result::Result<LogRecoveryChoice, String> {
    match s {
        "strict" => Ok(LogRecoveryChoice::Strict),
        "skip-damaged" => Ok(LogRecoveryChoice::SkipDamaged),
        other => Err(format!("'{other}' is not one of strict, skip-damaged")),
    }
}

/// Parses a whole number of type `T` for a flag, saying plainly what is wrong with a value
/// that is not one: negative, not a number, or too large for the setting.
pub fn whole_number<T: TryFrom<u64>>(s: &str) -> std::result::Result<T, String> {
    match s.parse::<u64>() {
        Ok(n) => T::try_from(n).map_err(|_| "too large".to_string()),
        Err(_)
            if s.strip_prefix('-')
                .is_some_and(|d| d.parse::<u64>().is_ok()) =>
        {
            Err("must not be negative".to_string())
        }
        Err(_) => Err("not a whole number".to_string()),
    }
}

/// The `--config` file: the same settings as the flags, by the same names.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    id: Option<String>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    seed: Vec<String>,
    dc: Option<String>,
    rack: Option<String>,
    weight: Option<u32>,
    n: Option<usize>,
    w: Option<usize>,
    r: Option<usize>,
    sync: Option<SyncChoice>,
    cluster_secret_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_require_client_cert: Option<bool>,
    request_timeout_ms: Option<u64>,
    idle_timeout_s: Option<u64>,
    worker_threads: Option<usize>,
    gossip_interval_ms: Option<u64>,
    sloppy: Option<bool>,
    hint_max_mb: Option<u64>,
    memtable_mb: Option<u64>,
    block_cache_mb: Option<u64>,
    reserve_mb: Option<u64>,
    commit_log_recovery: Option<LogRecoveryChoice>,
    anti_entropy_interval_s: Option<u64>,
    www_dir: Option<PathBuf>,
    sdk_dir: Option<PathBuf>,
    replication: Option<String>,
    tombstone_grace_s: Option<u64>,
    hint_expiry_s: Option<u64>,
    cleanup_delay_s: Option<u64>,
    forget_left_after_s: Option<u64>,
}

/// Everything a node runs with, resolved.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Explicit id, if given; otherwise the one in the data dir, else derived from `listen`.
    pub id: Option<String>,
    /// Address to bind.
    pub listen: String,
    /// Where everything is kept.
    pub data_dir: PathBuf,
    /// Addresses of nodes of the cluster to join.
    pub seeds: Vec<String>,
    /// Placement labels.
    pub dc: String,
    /// Placement labels.
    pub rack: String,
    /// Relative capacity.
    pub weight: u32,
    /// Replicas per key.
    pub n: usize,
    /// Default write quorum.
    pub w: usize,
    /// Default read quorum.
    pub r: usize,
    /// Commit-log durability.
    pub sync: SyncMode,
    /// Shared peer secret, when peers must authenticate.
    pub cluster_secret: Option<String>,
    /// Client tokens, when clients must authenticate.
    pub tokens: Option<Vec<ClientToken>>,
    /// TLS on the port and to peers, when configured (shared: SIGHUP reloads it).
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
    /// Protocol size limits.
    pub limits: Limits,
    /// How long a coordinator waits for its quorum.
    pub request_timeout: Duration,
    /// How long a client connection may go without a complete frame while idle.
    pub idle_timeout: Duration,
    /// Threads of the async runtime that serves requests (`None`: one per core).
    pub worker_threads: Option<usize>,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Most requests in flight on one client connection.
    pub max_in_flight: usize,
    /// Sloppy quorum by default (a request may say otherwise).
    pub sloppy: bool,
    /// Hint bytes kept per down node.
    pub hint_max_bytes: u64,
    /// Memtable size at which the engine flushes.
    pub memtable_bytes: usize,
    /// Block cache budget.
    pub block_cache_bytes: usize,
    /// Free space kept back for flushes and compactions (`None`: the engine's default).
    pub reserve_bytes: Option<u64>,
    /// What opening the storage does with a commit log damaged in the middle.
    pub log_recovery: crate::storage::LogRecovery,
    /// Time between anti-entropy rounds (zero: only on demand).
    pub anti_entropy_interval: Duration,
    /// Where the console's files are.
    pub www_dir: Option<PathBuf>,
    /// Where the browser SDK's files are.
    pub sdk_dir: Option<PathBuf>,
    /// Replicas per data center, when set (N is their sum).
    pub per_dc: Option<std::collections::BTreeMap<String, usize>>,
    /// Minimum age of a tombstone before it may be purged.
    pub tombstone_grace: Duration,
    /// Age at which undelivered hints are dropped.
    pub hint_expiry: Duration,
    /// Delay of the automatic cleanup after a membership change (zero: only on demand).
    pub cleanup_delay: Duration,
    /// How long a member that left stays in the membership.
    pub forget_left_after: Duration,
}

impl NodeConfig {
    /// Resolves flags over the `--config` file over defaults and checks the result.
    pub fn resolve(args: NodeArgs) -> Result<NodeConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| Error::Config(toml_error_line(path, &text, &e)))?
            }
            None => FileConfig::default(),
        };
        let seeds = if args.seeds.is_empty() {
            file.seed
        } else {
            args.seeds
        };
        let sync = match args.sync.or(file.sync).unwrap_or(SyncChoice::Always) {
            SyncChoice::Always => SyncMode::Always,
            SyncChoice::Interval => SyncMode::Interval,
            SyncChoice::None => SyncMode::None,
        };
        let cluster_secret = match args.cluster_secret_file.or(file.cluster_secret_file) {
            Some(path) => Some(read_secret(&path)?),
            None => None,
        };
        let tokens = match args.token_file.or(file.token_file) {
            Some(path) => Some(read_tokens(&path)?),
            None => None,
        };
        let require_client_cert =
            args.tls_require_client_cert || file.tls_require_client_cert.unwrap_or(false);
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_ca.or(file.tls_ca),
        ) {
            (None, None, None) if require_client_cert => {
                return Err(Error::Config(
                    "--tls-require-client-cert needs TLS: --tls-cert, --tls-key and --tls-ca"
                        .into(),
                ))
            }
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                let tls = crate::tls::Tls::load(&cert, &key, &ca, require_client_cert)
                    .map_err(Error::Config)?;
                Some(std::sync::Arc::new(tls))
            }
            _ => {
                return Err(Error::Config(
                    "TLS needs all three of --tls-cert, --tls-key and --tls-ca".into(),
                ))
            }
        };
        let config = NodeConfig {
            id: args.id.or(file.id),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:7070".to_string()),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./kvd-data")),
            seeds,
            dc: args.dc.or(file.dc).unwrap_or_else(|| "dc1".to_string()),
            rack: args.rack.or(file.rack).unwrap_or_else(|| "r1".to_string()),
            weight: args.weight.or(file.weight).unwrap_or(1),
            n: args.n.or(file.n).unwrap_or(3),
            w: args.w.or(file.w).unwrap_or(2),
            r: args.r.or(file.r).unwrap_or(2),
            sync,
            cluster_secret,
            tokens,
            tls,
            limits: Limits::default(),
            request_timeout: Duration::from_millis(
                args.request_timeout_ms
                    .or(file.request_timeout_ms)
                    .unwrap_or(5000),
            ),
            idle_timeout: Duration::from_secs(
                args.idle_timeout_s
                    .or(file.idle_timeout_s)
                    .unwrap_or(600)
                    .max(1),
            ),
            worker_threads: match args.worker_threads.or(file.worker_threads) {
                Some(0) => {
                    return Err(Error::Config(
                        "--worker-threads must be at least 1".to_string(),
                    ))
                }
                n => n,
            },
            gossip_interval: Duration::from_millis(
                args.gossip_interval_ms
                    .or(file.gossip_interval_ms)
                    .unwrap_or(1000),
            ),
            max_connections: 4096,
            max_in_flight: 1024,
            sloppy: args.sloppy.or(file.sloppy).unwrap_or(true),
            hint_max_bytes: args.hint_max_mb.or(file.hint_max_mb).unwrap_or(256) << 20,
            memtable_bytes: match args.memtable_mb.or(file.memtable_mb).unwrap_or(64) {
                mb @ 1..=4096 => (mb as usize) << 20,
                mb => {
                    return Err(Error::Config(format!(
                        "--memtable-mb {mb}: must be between 1 and 4096"
                    )))
                }
            },
            block_cache_bytes: match args.block_cache_mb.or(file.block_cache_mb).unwrap_or(64) {
                mb @ 0..=1_048_576 => (mb as usize) << 20,
                mb => {
                    return Err(Error::Config(format!(
                        "--block-cache-mb {mb}: must be at most 1048576 (1 TiB)"
                    )))
                }
            },
            reserve_bytes: match args.reserve_mb.or(file.reserve_mb) {
                Some(mb @ 0..=1_048_576) => Some(mb << 20),
                Some(mb) => {
                    return Err(Error::Config(format!(
                        "--reserve-mb {mb}: must be at most 1048576 (1 TiB)"
                    )))
                }
                None => None,
            },
            log_recovery: match args
                .commit_log_recovery
                .or(file.commit_log_recovery)
                .unwrap_or(LogRecoveryChoice::Strict)
            {
                LogRecoveryChoice::Strict => crate::storage::LogRecovery::Strict,
                LogRecoveryChoice::SkipDamaged => crate::storage::LogRecovery::SkipDamaged,
            },
            anti_entropy_interval: Duration::from_secs(
                args.anti_entropy_interval_s
                    .or(file.anti_entropy_interval_s)
                    .unwrap_or(60),
            ),
            www_dir: args
                .www_dir
                .or(file.www_dir)
                .or_else(|| source_dir("www", "index.html")),
            sdk_dir: args
                .sdk_dir
                .or(file.sdk_dir)
                .or_else(|| source_dir("kv-wasm/pkg/web", "package.json")),
            per_dc: None,
            tombstone_grace: Duration::from_secs(
                args.tombstone_grace_s
                    .or(file.tombstone_grace_s)
                    .unwrap_or(86_400),
            ),
            hint_expiry: Duration::from_secs(
                args.hint_expiry_s
                    .or(file.hint_expiry_s)
                    .unwrap_or(3 * 3600),
            ),
            cleanup_delay: Duration::from_secs(
                args.cleanup_delay_s.or(file.cleanup_delay_s).unwrap_or(60),
            ),
            forget_left_after: Duration::from_secs(
                args.forget_left_after_s
                    .or(file.forget_left_after_s)
                    .unwrap_or(3 * 86_400),
            ),
        };
        let mut config = config;
        let n_given = args.n.or(file.n);
        let (w_given, r_given) = (args.w.or(file.w), args.r.or(file.r));
        if let Some(spec) = args.replication.or(file.replication) {
            match Placement::parse(&spec) {
                Ok(Placement::PerDc(per_dc)) => {
                    let sum: usize = per_dc.values().sum();
                    // N is the sum of the per-DC counts; a different --n is a contradiction,
                    // not something to pick one side of silently.
                    if let Some(n) = n_given.filter(|&n| n != sum) {
                        return Err(Error::Config(format!(
                            "--n {n} contradicts --replication {spec} ({sum} replicas in all); \
                             give one of them"
                        )));
                    }
                    config.n = sum;
                    config.per_dc = Some(per_dc);
                }
                Ok(Placement::Simple { n }) => config.n = n,
                Err(e) => return Err(Error::Config(format!("--replication {spec}: {e}"))),
            }
        }
        // The default quorums (2 of 3) follow a smaller N: `--n 1` alone means W = R = 1. Only
        // quorums given outright are held to N as they are.
        if w_given.is_none() {
            config.w = config.w.min(config.n);
        }
        if r_given.is_none() {
            config.r = config.r.min(config.n);
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.weight == 0 || self.weight > 64 {
            return Err(Error::Config(format!(
                "--weight {} is out of range (1 to 64)",
                self.weight
            )));
        }
        if self.n == 0 {
            return Err(Error::Config("--n must be at least 1".into()));
        }
        if self.w == 0 || self.w > self.n || self.r == 0 || self.r > self.n {
            return Err(Error::Config(format!(
                "quorums must satisfy 1 <= W, R <= N (got N={}, W={}, R={})",
                self.n, self.w, self.r
            )));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Config(format!(
                "--listen {} is not HOST:PORT with a numeric host",
                self.listen
            )));
        }
        for seed in &self.seeds {
            // A name is fine (it is resolved when dialled, and DNS may come up later); the
            // shape is checked now, instead of after half a minute of failed dials.
            let port = seed.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then(|| port.parse::<u16>().ok().filter(|&p| p > 0))?
            });
            if port.is_none() {
                return Err(Error::Config(format!(
                    "--seed {seed} is not HOST:PORT (a host name or address, a port from 1 to 65535)"
                )));
            }
        }
        if let Some(id) = &self.id {
            check_node_id(id)?;
        }
        Ok(())
    }
}

/// One line for a config file that does not parse or does not fit [`FileConfig`]: the file,
/// the line and column where the problem starts (when known) and the problem, without the
/// multi-line excerpt with a caret that the toml error renders by default.
fn toml_error_line(path: &std::path::Path, text: &str, e: &toml::de::Error) -> String {
    let problem = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(
                "config file {} line {line}, column {column}: {problem}",
                path.display()
            )
        }
        None => format!("config file {}: {problem}", path.display()),
    }
}

/// A directory of the source tree this binary was built from, if it is still there and holds
/// `marker` (so `cargo run` and `kvd dev` serve the console without flags).
fn source_dir(rel: &str, marker: &str) -> Option<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join(rel);
    dir.join(marker).exists().then_some(dir)
}

/// A node id is short, printable and has no spaces (it appears in contexts, logs and tables).
pub fn check_node_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "node id '{id}' must be 1 to 64 characters of letters, digits, '-', '_', '.', ':'"
        )))
    }
}

fn read_secret(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read cluster secret file {}: {e}",
            path.display()
        ))
    })?;
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        return Err(Error::Config(format!(
            "cluster secret in {} is shorter than 16 characters",
            path.display()
        )));
    }
    Ok(secret)
}

/// A client token and what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientToken {
    /// The secret string the client presents.
    pub token: String,
    /// Reads only (`get`, `status`, `ring`, `hints`, `scan`, `ping`); writes and admin
    /// operations are refused with `unauthorized`.
    pub read_only: bool,
}

/// Reads a token file: one token per line, optionally followed by `rw` (the default) or `ro`
/// (read-only); `#` starts a comment.
fn read_tokens(path: &std::path::Path) -> Result<Vec<ClientToken>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read token file {}: {e}", path.display())))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let token = words.next().unwrap_or_default().to_string();
        let read_only = match words.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => {
                return Err(Error::Config(format!(
                    "token file {} line {}: '{other}' is not rw or ro",
                    path.display(),
                    n + 1
                )))
            }
        };
        tokens.push(ClientToken { token, read_only });
    }
    if tokens.is_empty() {
        return Err(Error::Config(format!(
            "token file {} holds no token",
            path.display()
        )));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvd.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ndc = \"east\"\nn = 5\nw = 3\nr = 3\nsync = \"interval\"\n",
        )
        .unwrap();
        let args = NodeArgs {
            config: Some(file),
            dc: Some("west".into()),
            ..NodeArgs::default()
        };
        let c = NodeConfig::resolve(args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.dc, "west");
        assert_eq!((c.n, c.w, c.r), (5, 3, 3));
        assert_eq!(c.sync, SyncMode::Interval);
        assert_eq!(
            (c.memtable_bytes, c.block_cache_bytes),
            (64 << 20, 64 << 20)
        );
    }

    #[test]
    fn an_n_that_contradicts_the_replication_is_refused() {
        let with = |n: Option<usize>| {
            NodeConfig::resolve(NodeArgs {
                replication: Some("dc1:2,dc2:1".into()),
                n,
                ..NodeArgs::default()
            })
        };
        assert_eq!(with(None).unwrap().n, 3);
        assert_eq!(with(Some(3)).unwrap().n, 3);
        let e = with(Some(5)).unwrap_err().to_string();
        assert!(
            e.contains("--n 5 contradicts --replication dc1:2,dc2:1"),
            "{e}"
        );
    }

    #[test]
    fn default_quorums_follow_a_smaller_n_and_given_ones_are_held_to_it() {
        let with = |n: usize, w: Option<usize>, r: Option<usize>| {
            NodeConfig::resolve(NodeArgs {
                n: Some(n),
                w,
                r,
                ..NodeArgs::default()
            })
        };
        let c = with(1, None, None).unwrap();
        assert_eq!((c.n, c.w, c.r), (1, 1, 1));
        let c = with(5, None, None).unwrap();
        assert_eq!((c.n, c.w, c.r), (5, 2, 2));
        let c = with(2, None, Some(1)).unwrap();
        assert_eq!((c.n, c.w, c.r), (2, 2, 1));
        let err = with(1, Some(2), None).unwrap_err().to_string();
        assert!(err.contains("N=1, W=2"), "{err}");
    }

    #[test]
    fn seeds_are_host_port_and_names_are_fine() {
        let with_seed = |seed: &str| {
            NodeConfig::resolve(NodeArgs {
                seeds: vec![seed.to_string()],
                ..NodeArgs::default()
            })
        };
        for good in [
            "localhost:7070",
            "10.0.0.1:7070",
            "[::1]:7070",
            "kv-0.kv:7070",
        ] {
            assert!(with_seed(good).is_ok(), "{good}");
        }
        for bad in ["garbage", "host:", ":7070", "h:0", "h:99999", "h:x"] {
            let e = with_seed(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("--seed {bad} is not HOST:PORT")), "{e}");
        }
    }

    #[test]
    fn commit_log_recovery_comes_from_the_flag_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvd.toml");
        std::fs::write(&file, "commit-log-recovery = \"skip-damaged\"\n").unwrap();
        let c = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(c.log_recovery, crate::storage::LogRecovery::SkipDamaged);
        let c = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            commit_log_recovery: Some(LogRecoveryChoice::Strict),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(c.log_recovery, crate::storage::LogRecovery::Strict);
        assert_eq!(
            NodeConfig::resolve(NodeArgs::default())
                .unwrap()
                .log_recovery,
            crate::storage::LogRecovery::Strict
        );
        assert!(parse_log_recovery("lenient").is_err());
    }

    #[test]
    fn storage_memory_comes_from_flags_or_the_file_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvd.toml");
        std::fs::write(&file, "memtable-mb = 8\nblock-cache-mb = 0\n").unwrap();
        let args = NodeArgs {
            config: Some(file.clone()),
            ..NodeArgs::default()
        };
        let c = NodeConfig::resolve(args).unwrap();
        assert_eq!((c.memtable_bytes, c.block_cache_bytes), (8 << 20, 0));
        let args = NodeArgs {
            config: Some(file),
            memtable_mb: Some(16),
            block_cache_mb: Some(256),
            ..NodeArgs::default()
        };
        let c = NodeConfig::resolve(args).unwrap();
        assert_eq!(
            (c.memtable_bytes, c.block_cache_bytes),
            (16 << 20, 256 << 20)
        );
        for (memtable_mb, block_cache_mb, flag) in [
            (Some(0), None, "--memtable-mb 0"),
            (Some(4097), None, "--memtable-mb 4097"),
            (None, Some(1 << 21), "--block-cache-mb 2097152"),
        ] {
            let bad = NodeArgs {
                memtable_mb,
                block_cache_mb,
                ..NodeArgs::default()
            };
            let e = NodeConfig::resolve(bad).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        // The disk reserve: the engine's default unless set, 0 for none.
        assert_eq!(
            NodeConfig::resolve(NodeArgs::default())
                .unwrap()
                .reserve_bytes,
            None
        );
        for (mb, bytes) in [(0, 0), (512, 512 << 20)] {
            let args = NodeArgs {
                reserve_mb: Some(mb),
                ..NodeArgs::default()
            };
            assert_eq!(
                NodeConfig::resolve(args).unwrap().reserve_bytes,
                Some(bytes)
            );
        }
        let bad = NodeArgs {
            reserve_mb: Some(1 << 21),
            ..NodeArgs::default()
        };
        let e = NodeConfig::resolve(bad).unwrap_err().to_string();
        assert!(e.contains("--reserve-mb 2097152"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let bad = NodeArgs {
            w: Some(4),
            ..NodeArgs::default()
        };
        let e = NodeConfig::resolve(bad).unwrap_err().to_string();
        assert!(e.contains("1 <= W, R <= N"), "{e}");
        let bad = NodeArgs {
            listen: Some("nowhere".into()),
            ..NodeArgs::default()
        };
        assert!(NodeConfig::resolve(bad).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvd.toml");
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        let bad = NodeArgs {
            config: Some(file),
            ..NodeArgs::default()
        };
        assert!(NodeConfig::resolve(bad).is_err());
    }

    #[test]
    fn a_bad_config_file_is_one_line_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvd.toml");
        std::fs::write(&file, "dc = \"east\"\nweight = \"two\"\n").unwrap();
        let bad = NodeArgs {
            config: Some(file.clone()),
            ..NodeArgs::default()
        };
        let e = NodeConfig::resolve(bad).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.contains(&format!("{} line 2, column 10", file.display())),
            "{e}"
        );
    }

    #[test]
    fn whole_numbers_say_what_is_wrong() {
        assert_eq!(whole_number::<u32>("7"), Ok(7));
        assert_eq!(
            whole_number::<u32>("-1"),
            Err("must not be negative".to_string())
        );
        assert_eq!(
            whole_number::<u32>("1x"),
            Err("not a whole number".to_string())
        );
        assert_eq!(whole_number::<u16>("70000"), Err("too large".to_string()));
    }
}
