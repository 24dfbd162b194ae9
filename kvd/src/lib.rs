//! kvd: the node daemon of the store.
//!
//! Follow a write through the files: [`server`] accepts a TCP connection and routes it (plain
//! HTTP in [`http`], a client WebSocket in [`connection`], a peer WebSocket in [`peer`]) ->
//! [`coordinator`] computes the preference list and gathers the quorum -> [`replica`] merges
//! the new version into the key's sibling set -> [`storage`] (the LSM engine, its own crate)
//! makes it durable. Around them: [`node`] holds the shared state, [`gossip`] drives membership
//! and failure detection, [`identity`] keeps who this node is across restarts, [`metrics`]
//! counts for `/metrics`, [`dev`] starts a local cluster.
#![deny(clippy::unwrap_used)]

pub use kvd_storage as storage;
pub mod allocator;
pub mod anti_entropy;
pub mod auth;
pub mod bench;
pub mod config;
pub mod connection;
pub mod coordinator;
pub mod dev;
pub mod gossip;
pub mod hints;
pub mod http;
pub mod identity;
pub mod log;
pub mod merkle_index;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod peer_codec;
pub mod rebalance;
pub mod replica;
pub mod scan;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod tombstones;
pub mod ws;

/// Everything that can stop a node from starting or serving.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A flag, the config file or a secret/token file is wrong.
    Config(String),
    /// The data dir cannot be used (unreadable, belongs to another node, corrupted).
    DataDir(String),
    /// The storage engine failed.
    Storage(storage::Error),
    /// A socket could not be bound or used.
    Io(String),
    /// The cluster could not be joined.
    Join(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "bad configuration: {m}"),
            Error::DataDir(m) => write!(f, "data dir: {m}"),
            Error::Storage(e) => write!(f, "storage: {e}"),
            Error::Io(m) => write!(f, "{m}"),
            Error::Join(m) => write!(f, "cannot join the cluster: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        Error::Storage(e)
    }
}

/// Result of kvd's fallible operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Milliseconds since the Unix epoch: the one place the daemon reads the wall clock for
/// kv-core, which takes time as an argument.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random u64 from the standard library's per-process random hash keys, mixed with the
/// clock and a counter: enough for token seeds, incarnations and gossip target choice.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
