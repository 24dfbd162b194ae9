//! Who this node is, kept in the data dir so that a restarted node comes back as itself: its
//! id, its tokens on the ring, the actor name it mints versions with, and a generation that
//! grows at every start (gossip uses it to tell a restart from an old heartbeat).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const FILE: &str = "node-identity.json";

/// The persisted identity of a node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// The node id, stable across restarts.
    pub id: String,
    /// The name this node mints version dots with. It is the id plus an incarnation suffix that
    /// is new whenever the data dir is new, so a node wiped and restarted under the same id can
    /// never mint a dot that its earlier life already used.
    pub actor: String,
    /// The node's tokens on the ring (empty until it has joined).
    pub tokens: Vec<u64>,
    /// Incremented at every start.
    pub generation: u64,
    /// True from choosing tokens in an existing cluster until the node has streamed in the
    /// data of its ranges (a restart resumes the join).
    #[serde(default)]
    pub joining: bool,
    /// The `--weight` the tokens were chosen for (absent in files of older versions).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Set by a weight change until its data move is done: the weight and tokens before it.
    #[serde(default)]
    pub moving_from: Option<(u32, Vec<u64>)>,
    /// A decommission was started and has not finished (a restart resumes it).
    #[serde(default)]
    pub leaving: bool,
    /// The node was decommissioned: it stays out of the ring if started again.
    #[serde(default)]
    pub left: bool,
}

impl Identity {
    /// A fresh identity for a node with an empty data dir.
    pub fn fresh(id: &str) -> Identity {
        let incarnation = crate::random_u64() & 0xff_ffff;
        Identity {
            id: id.to_string(),
            actor: format!("{id}~{incarnation:x}"),
            tokens: Vec::new(),
            // Time-based, so that a later incarnation under a reused id (after the cluster
            // forgot the old one) has a newer generation than any record of the old one.
            generation: crate::now_ms(),
            joining: false,
            weight: None,
            moving_from: None,
            leaving: false,
            left: false,
        }
    }

    /// Reads the identity kept in `dir`, if there is one. A file that exists but cannot be read
    /// or parsed is an error: the node must not start as someone else over existing data.
    pub fn load(dir: &Path) -> Result<Option<Identity>> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::DataDir(format!("{} is corrupted: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::DataDir(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the identity durably: a temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomically(
            dir,
            FILE,
            &serde_json::to_vec_pretty(self).unwrap_or_default(),
        )
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new file.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let err = |p: &PathBuf, e: std::io::Error| Error::DataDir(format!("{}: {e}", p.display()));
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| err(&tmp, e))?;
    f.sync_all().map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
    let d = std::fs::File::open(dir).map_err(|e| err(&dir.to_path_buf(), e))?;
    d.sync_all().map_err(|e| err(&dir.to_path_buf(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_a_round_trip_and_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        let mut id = Identity::fresh("n1");
        id.tokens = vec![1, 2, 3];
        id.save(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(id.clone()));
        assert!(id.actor.starts_with("n1~"));
        assert_ne!(Identity::fresh("n1").actor, Identity::fresh("n1").actor);
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(Identity::load(dir.path()).is_err());
    }
}
