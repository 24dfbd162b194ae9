//! The built-in sibling resolvers: `lww`, `union` and `merge`.
//!
//! Each takes the siblings of one read (their value bytes and, when known, the timestamps the
//! replicas stamped them with) and returns the one value to write back under the read's
//! context. They are deterministic given the siblings in the order the server lists them (dot
//! order), so two clients reconciling the same read write the same value.
//!
//! - `lww`: the sibling with the newest timestamp; ties go to the sibling listed last (the one
//!   with the larger dot), as kv-core's `SiblingSet::lww` breaks them.
//! - `union`: every sibling is a JSON array; the answer is the array of every distinct element
//!   (JSON equality), in the order first seen going from the oldest sibling to the newest.
//! - `merge`: deep merge of JSON values, for shopping-cart style objects: objects merge key by
//!   key (recursively), arrays merge as sets (as `union`), equal values stay, and where two
//!   siblings disagree on a scalar (or on the type) the newer sibling's value wins.

use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::{Result, SdkError};

/// A built-in strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Last writer wins by the replica timestamp.
    Lww,
    /// JSON arrays as sets.
    Union,
    /// Deep merge of JSON objects.
    Merge,
}

impl FromStr for Strategy {
    type Err = SdkError;

    fn from_str(s: &str) -> Result<Strategy> {
        match s {
            "lww" => Ok(Strategy::Lww),
            "union" => Ok(Strategy::Union),
            "merge" => Ok(Strategy::Merge),
            other => Err(SdkError::bad_request(format!(
                "unknown reconcile strategy {other:?}: use \"lww\", \"union\", \"merge\" or a function"
            ))),
        }
    }
}

/// What a built-in strategy resolved the siblings to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// No sibling to keep (an empty read under `lww`).
    Nothing,
    /// Keep the sibling at this index unchanged (`lww`), so a string stays a string and bytes
    /// stay bytes.
    Sibling(usize),
    /// Keep this JSON text (`union`, `merge`).
    Json(String),
}

/// One sibling as the resolvers see it.
#[derive(Debug, Clone, Copy)]
pub struct SiblingRef<'a> {
    /// The value's bytes.
    pub value: &'a [u8],
    /// Replica timestamp in milliseconds, when the read carried it.
    pub timestamp_ms: Option<u64>,
}

/// Resolves `siblings` (in the order the server listed them) with `strategy`.
///
/// Errors: `bad_request` when `lww` lacks timestamps, or when a sibling is not the JSON that
/// `union` (an array) or `merge` (any JSON) needs; the message names the sibling's position.
pub fn resolve(strategy: Strategy, siblings: &[SiblingRef<'_>]) -> Result<Resolved> {
    match strategy {
        Strategy::Lww => lww(siblings),
        Strategy::Union => {
            let parsed = parse_all(siblings, "union")?;
            let mut out = Vec::new();
            for (i, v) in parsed {
                match v {
                    Value::Array(items) => union_into(&mut out, items),
                    _ => {
                        return Err(SdkError::bad_request(format!(
                            "union: sibling #{i} is not a JSON array"
                        )))
                    }
                }
            }
            Ok(Resolved::Json(Value::Array(out).to_string()))
        }
        Strategy::Merge => {
            let parsed = parse_all(siblings, "merge")?;
            let merged = parsed
                .into_iter()
                .map(|(_, v)| v)
                .reduce(merge_values)
                .unwrap_or_else(|| Value::Object(Map::new()));
            Ok(Resolved::Json(merged.to_string()))
        }
    }
}

/// The newest sibling by timestamp, ties to the later position.
fn lww(siblings: &[SiblingRef<'_>]) -> Result<Resolved> {
    let mut best: Option<(u64, usize)> = None;
    for (i, s) in siblings.iter().enumerate() {
        let ts = s.timestamp_ms.ok_or_else(|| {
            SdkError::bad_request(
                "lww needs the siblings' timestamps: pass the result of get (or its siblings), not bare values",
            )
        })?;
        // `>=` hands ties to the later sibling.
        if best.is_none_or(|(b, _)| ts >= b) {
            best = Some((ts, i));
        }
    }
    Ok(best.map_or(Resolved::Nothing, |(_, i)| Resolved::Sibling(i)))
}

/// Parses every sibling as JSON and orders them oldest first (stable: equal or unknown
/// timestamps keep the server's order), which is the order later values win in.
fn parse_all(siblings: &[SiblingRef<'_>], who: &str) -> Result<Vec<(usize, Value)>> {
    let mut order: Vec<usize> = (0..siblings.len()).collect();
    order.sort_by_key(|&i| siblings[i].timestamp_ms.unwrap_or(0));
    order
        .into_iter()
        .map(|i| {
            let v = serde_json::from_slice(siblings[i].value).map_err(|e| {
                SdkError::bad_request(format!("{who}: sibling #{i} is not JSON: {e}"))
            })?;
            Ok((i, v))
        })
        .collect()
}

/// Appends the items not already in `out` (JSON equality).
fn union_into(out: &mut Vec<Value>, items: Vec<Value>) {
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
}

/// Deep merge, `newer` winning scalar disagreements.
///
/// Laws: idempotent (`merge(a, a) == a`); for objects and arrays the set of keys / elements is
/// the union of both sides whatever the order.
fn merge_values(older: Value, newer: Value) -> Value {
    match (older, newer) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                let merged = match a.remove(&k) {
                    Some(old) => merge_values(old, v),
                    None => v,
                };
                a.insert(k, merged);
            }
            Value::Object(a)
        }
        (Value::Array(mut a), Value::Array(b)) => {
            let mut out = Vec::with_capacity(a.len() + b.len());
            union_into(&mut out, std::mem::take(&mut a));
            union_into(&mut out, b);
            Value::Array(out)
        }
        (_, newer) => newer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sib(v: &str, ts: u64) -> SiblingRef<'_> {
        SiblingRef {
            value: v.as_bytes(),
            timestamp_ms: Some(ts),
        }
    }

    fn json(r: Resolved) -> Value {
        match r {
            Resolved::Json(s) => serde_json::from_str(&s).unwrap(),
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    #[test]
    fn strategy_names() {
        assert_eq!("lww".parse::<Strategy>().unwrap(), Strategy::Lww);
        assert_eq!("union".parse::<Strategy>().unwrap(), Strategy::Union);
        assert_eq!("merge".parse::<Strategy>().unwrap(), Strategy::Merge);
        let err = "newest".parse::<Strategy>().unwrap_err();
        assert_eq!(err.code, "bad_request");
        assert!(err.message.contains("newest"));
    }

    #[test]
    fn lww_takes_the_newest_and_ties_go_to_the_later_sibling() {
        let s = [sib("a", 10), sib("b", 30), sib("c", 20)];
        assert_eq!(resolve(Strategy::Lww, &s).unwrap(), Resolved::Sibling(1));
        let tie = [sib("a", 30), sib("b", 30)];
        assert_eq!(resolve(Strategy::Lww, &tie).unwrap(), Resolved::Sibling(1));
        assert_eq!(resolve(Strategy::Lww, &[]).unwrap(), Resolved::Nothing);
    }

    #[test]
    fn lww_without_timestamps_is_an_error() {
        let s = [SiblingRef {
            value: b"a",
            timestamp_ms: None,
        }];
        let err = resolve(Strategy::Lww, &s).unwrap_err();
        assert!(err.message.contains("timestamps"), "{}", err.message);
    }

    #[test]
    fn union_keeps_every_distinct_element_once() {
        let s = [
            sib(r#"["milk","eggs"]"#, 1),
            sib(r#"["eggs","bread",{"x":1}]"#, 2),
        ];
        assert_eq!(
            json(resolve(Strategy::Union, &s).unwrap()),
            serde_json::json!(["milk", "eggs", "bread", {"x": 1}])
        );
        assert_eq!(
            json(resolve(Strategy::Union, &[]).unwrap()),
            serde_json::json!([])
        );
    }

    #[test]
    fn union_rejects_non_arrays_and_non_json() {
        let err = resolve(Strategy::Union, &[sib("[1]", 1), sib(r#"{"a":1}"#, 2)]).unwrap_err();
        assert!(
            err.message.contains("sibling #1 is not a JSON array"),
            "{}",
            err.message
        );
        let err = resolve(Strategy::Union, &[sib("[1", 1)]).unwrap_err();
        assert!(
            err.message.contains("sibling #0 is not JSON"),
            "{}",
            err.message
        );
    }

    #[test]
    fn merge_is_deep_and_the_newer_scalar_wins() {
        let older = r#"{"items":{"apple":1,"pear":2},"tags":["a"],"owner":"ann"}"#;
        let newer = r#"{"items":{"apple":3,"fig":1},"tags":["b","a"],"owner":"bob"}"#;
        // Listed newest first: the timestamps, not the order, decide who wins.
        let s = [sib(newer, 20), sib(older, 10)];
        assert_eq!(
            json(resolve(Strategy::Merge, &s).unwrap()),
            serde_json::json!({
                "items": {"apple": 3, "pear": 2, "fig": 1},
                "tags": ["a", "b"],
                "owner": "bob"
            })
        );
    }

    #[test]
    fn merge_is_idempotent_and_keys_do_not_depend_on_order() {
        let a = r#"{"x":{"y":[1,2]},"k":1}"#;
        let b = r#"{"x":{"z":true},"m":null}"#;
        assert_eq!(
            json(resolve(Strategy::Merge, &[sib(a, 1), sib(a, 2)]).unwrap()),
            serde_json::from_str::<Value>(a).unwrap()
        );
        let ab = json(resolve(Strategy::Merge, &[sib(a, 1), sib(b, 1)]).unwrap());
        let ba = json(resolve(Strategy::Merge, &[sib(b, 1), sib(a, 1)]).unwrap());
        assert_eq!(ab, ba);
        assert_eq!(
            json(resolve(Strategy::Merge, &[]).unwrap()),
            serde_json::json!({})
        );
    }
}
