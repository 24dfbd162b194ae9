//! kv-core: the pure logic of the store, shared by the node daemon, the CLI and the
//! WebAssembly SDK. Nothing here does I/O or reads a clock: time is an argument.
//!
//! Map of the crate:
//! - [`autoscale`]: the autoscaling policy (grow, shrink or hold from per-node load).
//! - [`counter`]: counters, a CRDT stored as the value of a sibling.
//! - [`hash`]: keys onto the 64-bit ring (xxh3).
//! - [`ring`]: physical nodes, virtual-node tokens, preference lists, move plans.
//! - [`version`]: version vectors and the dotted sibling sets every key is stored as.
//! - [`quorum`]: N/W/R settings and the trackers that decide a request's outcome.
//! - [`merkle`]: incrementally updated Merkle trees for anti-entropy.
//! - [`membership`]: gossip state and failure detection.
//! - [`wire`]: the client and peer messages.
//! - [`json`]: the hot frames' JSON, written and read by hand.
//! - [`ws_frame`]: WebSocket frame heads and masking.
//! - [`usage`]: one line for a command-line usage error (kvd and kvcli).
#![deny(clippy::unwrap_used)]

pub mod autoscale;
pub mod b64url;
pub mod counter;
pub mod hash;
pub mod json;
pub mod membership;
pub mod merkle;
pub mod quorum;
pub mod ring;
pub mod usage;
pub mod version;
pub mod wire;
pub mod ws_frame;
