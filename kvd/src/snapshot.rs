//! Snapshots: a consistent copy of this node's data, taken while it serves (Cassandra's
//! `nodetool snapshot`, RocksDB's checkpoints).
//!
//! `{"op":"snapshot","name":NAME}` flushes the memtable and hard-links every live table into
//! `DATA_DIR/snapshots/NAME/storage`, with a manifest of its own: an engine directory that
//! opens as the data stood. Tables are immutable, so a snapshot costs no disk until compaction
//! replaces the tables it shares. Restoring is done with the node stopped: its `storage`
//! directory is replaced by the snapshot's (README). The snapshot carries a marker file, so
//! the restored node knows to mint versions under a new actor name: the dots it minted after
//! the snapshot may live on other replicas, and minting one again for another write would
//! make two writes one version.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kv_core::wire::WireError;
use serde::Serialize;

use crate::node::Node;

/// Where snapshots live, under the data dir.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// A file in every snapshot's `storage`, describing it. Found in a node's own `storage` at
/// start, it says the storage was restored: the node then mints versions under a new actor
/// name and removes the file.
const MARKER: &str = "SNAPSHOT";

/// The marker's path in the storage of the node whose data dir is `data_dir`.
pub fn marker(data_dir: &Path) -> PathBuf {
    data_dir.join("storage").join(MARKER)
}

/// What a node restored from a snapshot should warn about, from the snapshot's marker
/// (`marker_text`) and the time now: `Some(message)` when the snapshot is older than
/// `tombstone_grace`, so deletes whose tombstones were purged since may come back. A marker
/// that does not parse or gives no time yields nothing: the restore itself is fine.
pub fn restore_warning(
    marker_text: &[u8],
    now_ms: u64,
    tombstone_grace: Duration,
) -> Option<String> {
    let about: serde_json::Value = serde_json::from_slice(marker_text).ok()?;
    let taken = about["taken_at_ms"].as_u64()?;
    let age = Duration::from_millis(now_ms.saturating_sub(taken));
    if age <= tombstone_grace {
        return None;
    }
    Some(format!(
        "storage restored from snapshot {} taken {} s ago, older than --tombstone-grace-s ({} s): \
         keys deleted since it was taken whose tombstones were purged on the other replicas \
         will come back from this node; run `kvcli repair` now and check such keys",
        about["name"].as_str().unwrap_or("?"),
        age.as_secs(),
        tombstone_grace.as_secs()
    ))
}

/// The answer to a snapshot request.
#[derive(Debug, Serialize)]
pub struct Taken {
    /// This node's id.
    pub node: String,
    /// The snapshot's name.
    pub name: String,
    /// Its directory (an engine directory: `storage` of a stopped node can be replaced by it).
    pub path: String,
    /// Tables in it.
    pub tables: usize,
    /// Bytes of its files (as `snapshot --list` counts them).
    pub bytes: u64,
}

/// Bytes of the files in a snapshot's `storage` directory: what `take`, `list` and `clear`
/// report, most of it shared with the live data until compaction replaces the tables.
fn files_bytes(storage: &Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for f in std::fs::read_dir(storage)? {
        bytes += f?.metadata()?.len();
    }
    Ok(bytes)
}

/// Takes a snapshot named `name` (default: the time in milliseconds).
pub async fn take(node: &Arc<Node>, name: Option<String>) -> Result<Taken, WireError> {
    let name = name.unwrap_or_else(|| crate::now_ms().to_string());
    check_name(&name)?;
    let dir = node.config.data_dir.join(SNAPSHOTS_DIR).join(&name);
    if dir.exists() {
        return Err(WireError::bad_request(format!(
            "a snapshot named {name} exists on {} ({}): pick another name or remove it",
            node.id,
            dir.display()
        )));
    }
    let dest: PathBuf = dir.join("storage");
    let path = dest.display().to_string();
    let n = node.clone();
    let about = serde_json::json!({
        "node": node.id,
        "name": name,
        "taken_at_ms": crate::now_ms(),
    })
    .to_string();
    let taken = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let written = n
            .replica
            .engine()
            .checkpoint(&dest)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let path = dest.join(MARKER);
                std::fs::File::create(&path)
                    .and_then(|mut f| {
                        f.write_all(about.as_bytes())?;
                        f.sync_all()
                    })
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                let bytes = files_bytes(&dest)
                    .map_err(|e| format!("cannot read {}: {e}", dest.display()))?;
                Ok((c.tables_linked + c.tables_copied, bytes))
            });
        if written.is_err() {
            // Leave nothing half written under the name.
            let _ = std::fs::remove_dir_all(&dir);
        }
        written
    })
    .await
    .map_err(|e| internal(format!("snapshot failed: {e}")))?
    .map_err(|e| internal(format!("snapshot failed: {e}")))?;
    let (tables, bytes) = taken;
    crate::info!("snapshot {name}: {tables} tables, {bytes} bytes, in {path}");
    Ok(Taken {
        node: node.id.clone(),
        name,
        path,
        tables,
        bytes,
    })
}

/// This node's snapshots, by name: `{"node","snapshots":[{"name","taken_at_ms","bytes"}]}`.
/// `bytes` counts the snapshot's files, most of them shared with the live data until
/// compaction replaces them.
pub async fn list(node: &Arc<Node>) -> Result<serde_json::Value, WireError> {
    let root = node.config.data_dir.join(SNAPSHOTS_DIR);
    let listed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<serde_json::Value>> {
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let storage = entry.path().join("storage");
            // Only complete snapshots carry their marker.
            let Ok(about) = std::fs::read(storage.join(MARKER)) else {
                continue;
            };
            let about: serde_json::Value = serde_json::from_slice(&about).unwrap_or_default();
            out.push(serde_json::json!({
                "name": entry.file_name().to_string_lossy(),
                "taken_at_ms": about["taken_at_ms"],
                "bytes": files_bytes(&storage)?,
            }));
        }
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(out)
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(|e| internal(format!("cannot list the snapshots: {e}")))?;
    Ok(serde_json::json!({ "node": node.id, "snapshots": listed }))
}

/// Removes snapshot `name`: `{"node","name","bytes"}` (`bytes`: what its files held).
pub async fn clear(node: &Arc<Node>, name: String) -> Result<serde_json::Value, WireError> {
    check_name(&name)?;
    let dir = node.config.data_dir.join(SNAPSHOTS_DIR).join(&name);
    if !dir.is_dir() {
        return Err(WireError::bad_request(format!(
            "{} has no snapshot named {name}",
            node.id
        )));
    }
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        // A snapshot left half written (no storage directory) holds nothing to count.
        let bytes = files_bytes(&dir.join("storage")).unwrap_or(0);
        std::fs::remove_dir_all(&dir)?;
        Ok(bytes)
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(|e| internal(format!("cannot remove snapshot {name}: {e}")))?;
    crate::info!("snapshot {name} removed");
    Ok(serde_json::json!({ "node": node.id, "name": name, "bytes": bytes }))
}

fn internal(why: String) -> WireError {
    WireError::new(kv_core::wire::ErrorCode::Internal, why)
}

/// A name is 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`: one directory
/// name, never a path.
fn check_name(name: &str) -> Result<(), WireError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(WireError::bad_request(format!(
            "bad snapshot name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not \
             starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_older_than_the_tombstone_grace_is_warned_about() {
        let day = Duration::from_secs(86_400);
        let marker = |taken: u64| json_marker(taken).into_bytes();
        let now = 10 * 86_400_000;
        assert_eq!(restore_warning(&marker(now - 3_600_000), now, day), None);
        assert_eq!(restore_warning(&marker(now - 86_400_000), now, day), None);
        let w = restore_warning(&marker(now - 2 * 86_400_000), now, day).expect("a warning");
        assert!(w.contains("snapshot nightly taken 172800 s ago"), "{w}");
        assert!(w.contains("--tombstone-grace-s (86400 s)"), "{w}");
        assert!(w.contains("kvcli repair"), "{w}");
        // A marker without a time (or not JSON) restores without a warning.
        assert_eq!(restore_warning(b"{}", now, day), None);
        assert_eq!(restore_warning(b"not json", now, day), None);
    }

    fn json_marker(taken_at_ms: u64) -> String {
        serde_json::json!({"node": "n1", "name": "nightly", "taken_at_ms": taken_at_ms}).to_string()
    }

    #[test]
    fn names_are_one_directory_never_a_path() {
        for good in ["daily", "2026-11-26", "before_upgrade.1", "1795711023085"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../up",
            "sp ace",
            "é",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
