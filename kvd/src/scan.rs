//! `scan`: every key of the cluster, page by page in token order (what `kvcli export` walks).
//!
//! Each page covers part of one stretch of the ring: it is read from every live replica of
//! that stretch and the answers are merged per key (DVV sync), as a read with R = all live
//! replicas would. Replicas page independently, so a page ends at the smallest key where any
//! replica stopped, and the cursor continues from there. Keys written while a scan runs may or
//! may not appear; deleted keys (only tombstones left) are not listed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use kv_core::version::SiblingSet;
use kv_core::wire::{ErrorCode, WireError};
use serde_json::{json, Value};

use crate::anti_entropy::KeyState;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::rebalance::{read_tokens, token_key, token_pieces};

/// One page of the scan after `cursor`, about `limit` keys.
pub async fn scan(
    node: &Arc<Node>,
    cursor: Option<String>,
    limit: usize,
) -> Result<Value, WireError> {
    let after = match cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(B64.decode(c.as_bytes()).map_err(|e| {
            WireError::bad_request(format!("the scan cursor does not decode: {e}"))
        })?),
        None => None,
    };
    let start_token = after
        .as_ref()
        .and_then(|a| a.get(1..9))
        .map(|t| u64::from_be_bytes(t.try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    let ring = node.ring();
    let placement = node.placement(&ring);
    let mut pieces: Vec<((u64, u64), Vec<String>)> = Vec::new();
    for (range, replicas) in ring.ranges(&placement) {
        for piece in token_pieces(range) {
            pieces.push((piece, replicas.clone()));
        }
    }
    pieces.sort();
    let Some(((lo, hi), replicas)) = pieces.into_iter().find(|((_, hi), _)| *hi >= start_token)
    else {
        return Ok(json!({ "entries": [], "cursor": null }));
    };
    let cursor_in_piece = after.filter(|a| a.as_slice() >= token_key(lo).as_slice());
    let max_bytes = limit.saturating_mul(1024).clamp(16 << 10, 4 << 20);

    let mut merged: BTreeMap<String, SiblingSet> = BTreeMap::new();
    let mut cut: Option<Vec<u8>> = None;
    let mut answered = 0;
    let mut failures = Vec::new();
    for replica in &replicas {
        if !node.is_up(replica) {
            failures.push(format!("{replica}: down"));
            continue;
        }
        let page = if *replica == node.id {
            let n = node.clone();
            let a = cursor_in_piece.clone();
            tokio::task::spawn_blocking(move || read_tokens(&n, (lo, hi), a.as_deref(), max_bytes))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        } else {
            let req = PeerRequest::ScanTokens {
                lo,
                hi,
                after: cursor_in_piece.clone(),
                max_bytes,
            };
            match node.addr_of(replica) {
                None => Err("not a member".to_string()),
                Some(addr) => match node.peers.call(&addr, &req, Duration::from_secs(30)).await {
                    Ok(PeerResponse::Chunk { entries, next }) => Ok((entries, next)),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                },
            }
        };
        let (entries, next): (Vec<KeyState>, Option<Vec<u8>>) = match page {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{replica}: {e}"));
                continue;
            }
        };
        answered += 1;
        if let Some(n) = next {
            if cut.as_ref().is_none_or(|c| n < *c) {
                cut = Some(n);
            }
        }
        for e in entries {
            let Ok(set) = SiblingSet::decode(&e.state) else {
                continue;
            };
            merged
                .entry(e.key)
                .and_modify(|m| m.sync(&set))
                .or_insert(set);
        }
    }
    if answered == 0 {
        return Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "no replica of tokens {lo}..={hi} answered: {}",
                failures.join("; ")
            ),
        ));
    }
    // Keep only what every replica has paged through, and only live values.
    let now = crate::now_ms();
    let entries: Vec<Value> = merged
        .into_iter()
        .filter(|(k, _)| {
            cut.as_ref()
                .is_none_or(|c| crate::replica::data_key(k.as_bytes()) <= *c)
        })
        .filter(|(_, s)| !s.live_values(now).is_empty())
        .map(|(k, s)| crate::connection::get_answer(&k, &s))
        .collect::<Result<_, _>>()
        .map_err(|e| WireError::new(ErrorCode::Internal, e))?;
    let next = match cut {
        Some(c) => Some(c),
        // The stretch is done: continue at token `hi + 1` (user keys are never empty, so
        // every key of that token sorts after its bare token prefix).
        None => hi.checked_add(1).map(token_key),
    };
    Ok(json!({
        "entries": entries,
        "cursor": next.map(|c| B64.encode(c)),
        "replicas_answered": answered,
    }))
}
