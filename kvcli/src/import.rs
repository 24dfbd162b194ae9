//! `kvcli import FILE`: JSON lines `{"key": "...", "value": "..."}` (or `"value_b64"` for
//! bytes, or `"value": {"value_b64": ...}` as `get --json` prints them) written as blind puts,
//! and `{"key": "...", "counter": N}` (a counter, as export writes it) as an increment by N;
//! with a bounded number in flight on one connection and a progress bar over the file's bytes.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kv_core::wire::{value_from_json, ClientOp};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::client::{Client, ClientError};
use crate::commands::Env;

/// Failed lines reported one by one on stderr; beyond this only the count.
const REPORTED_FAILURES: u64 = 10;

/// What one line writes.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    /// A value (a blind put).
    Value(Vec<u8>),
    /// A counter's value (an increment by it).
    Counter(i64),
}

/// The key and what to write of one line, or why the line is malformed.
pub fn parse_line(line: &str) -> Result<(String, Imported, Option<u64>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let key = v["key"].as_str().ok_or("no \"key\" string")?.to_string();
    let value = match (v.get("value"), v.get("value_b64"), v.get("counter")) {
        (Some(x), _, None) => {
            Imported::Value(value_from_json(x).map_err(|e| format!("bad \"value\": {e}"))?)
        }
        (None, Some(b), None) => Imported::Value(
            value_from_json(&json!({ "value_b64": b }))
                .map_err(|e| format!("bad \"value_b64\": {e}"))?,
        ),
        (None, None, Some(c)) => {
            Imported::Counter(c.as_i64().ok_or("\"counter\" is not a 64-bit integer")?)
        }
        (None, None, None) => return Err("no \"value\", \"value_b64\" or \"counter\"".into()),
        _ => return Err("give one of \"value\", \"value_b64\" or \"counter\"".into()),
    };
    let expires_at_ms = match v.get("expires_at_ms") {
        None | Some(Value::Null) => None,
        Some(x) => Some(
            x.as_u64()
                .ok_or("\"expires_at_ms\" is not a time in milliseconds")?,
        ),
    };
    Ok((key, value, expires_at_ms))
}

/// The time to live, in whole seconds (rounded up), left until `expires_at_ms`; `None` when
/// it has passed.
fn ttl_left(expires_at_ms: u64, now_ms: u64) -> Option<u64> {
    (expires_at_ms > now_ms).then(|| (expires_at_ms - now_ms).div_ceil(1000))
}

/// Imports `path` (`-` for standard input) with at most `concurrency` puts in flight.
///
/// Errors: [`ClientError::Failed`] when the file cannot be read or any line failed (after all
/// lines were tried; the counts are printed first).
pub async fn run(
    client: &Client,
    path: &str,
    concurrency: usize,
    w: Option<usize>,
    env: &Env,
) -> Result<(), ClientError> {
    let concurrency = concurrency.max(1);
    let (reader, size): (Box<dyn BufRead + Send>, u64) = if path == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), 0)
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| ClientError::Failed(format!("import: cannot open {path}: {e}")))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(std::io::BufReader::new(f)), size)
    };
    let pb = crate::progress::bar(size.max(1), "import");
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(concurrency));
    let imported = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut expired = 0u64;
    let report = |lineno: u64, what: &str, errors: &AtomicU64| {
        let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= REPORTED_FAILURES {
            crate::style::error_line(&format!("import: {path} line {lineno}: {what}"));
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut lineno = 0u64;
    for line in reader.lines() {
        lineno += 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                pb.finish_and_clear();
                return Err(ClientError::Failed(format!(
                    "import: cannot read {path} at line {lineno}: {e}"
                )));
            }
        };
        pb.inc(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let (key, value, expires_at_ms) = match parse_line(&line) {
            Ok(kv) => kv,
            Err(e) => {
                report(lineno, &e, &errors);
                continue;
            }
        };
        // A value exported with an expiry keeps it: imported with the time it has left, or
        // not at all once that has passed.
        let ttl_s = match expires_at_ms {
            None => None,
            Some(at) => match ttl_left(at, crate::commands::unix_ms()) {
                Some(t) => Some(t),
                None => {
                    expired += 1;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, imported, errors) = (client.clone(), imported.clone(), errors.clone());
        let path = path.to_string();
        tasks.spawn(async move {
            let op = match value {
                Imported::Value(value) => ClientOp::Put {
                    key: key.clone(),
                    value,
                    context: String::new(),
                    w,
                    ttl_s,
                },
                Imported::Counter(by) => ClientOp::Incr {
                    key: key.clone(),
                    by,
                    w,
                },
            };
            match client.request(&op).await {
                Ok(_) => {
                    imported.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
                    if n <= REPORTED_FAILURES {
                        crate::style::error_line(&format!(
                            "import: {path} line {lineno} (key {}): {e}",
                            shortened(&key)
                        ));
                    }
                }
            }
            drop(permit);
        });
        // Reap finished puts so the set stays as small as the window.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    pb.finish_and_clear();
    let imported = imported.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    if env.json {
        let mut out = json!({ "imported": imported, "errors": errors });
        if expired > 0 {
            out["expired"] = json!(expired);
        }
        println!("{out}");
    } else {
        println!(
            "imported {imported} keys from {path} in {:.2} s, {errors} errors{}",
            started.elapsed().as_secs_f64(),
            match expired {
                0 => String::new(),
                n => format!(", {n} skipped (expired)"),
            }
        );
    }
    if errors > REPORTED_FAILURES {
        crate::style::error_line(&format!(
            "import: {} more failed lines not shown",
            errors - REPORTED_FAILURES
        ));
    }
    if errors > 0 {
        return Err(ClientError::Failed(format!(
            "import: {errors} of {} lines failed",
            imported + errors
        )));
    }
    Ok(())
}

/// A key as an error line shows it: up to 64 characters, then how long it is.
fn shortened(key: &str) -> String {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}... ({} bytes)", &key[..cut], key.len()),
        None => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_line, shortened, ttl_left, Imported};

    #[test]
    fn long_keys_are_shortened_in_error_lines() {
        assert_eq!(shortened("k1"), "k1");
        assert_eq!(shortened(&"k".repeat(64)), "k".repeat(64));
        assert_eq!(
            shortened(&"é".repeat(1000)),
            format!("{}... (2000 bytes)", "é".repeat(64))
        );
    }

    #[test]
    fn lines_in_every_value_form() {
        assert_eq!(
            parse_line(r#"{"key":"a","value":"x y"}"#).unwrap(),
            ("a".to_string(), Imported::Value(b"x y".to_vec()), None)
        );
        assert_eq!(
            parse_line(r#"{"key":"a","value":"x","expires_at_ms":1700000000000}"#)
                .unwrap()
                .2,
            Some(1_700_000_000_000)
        );
        assert!(
            parse_line(r#"{"key":"a","value":"x","expires_at_ms":"soon"}"#)
                .unwrap_err()
                .contains("expires_at_ms")
        );
        assert_eq!(
            parse_line(r#"{"key":"b","value_b64":"AAE="}"#).unwrap().1,
            Imported::Value(vec![0, 1])
        );
        assert_eq!(
            parse_line(r#"{"key":"c","value":{"value_b64":"/w=="}}"#)
                .unwrap()
                .1,
            Imported::Value(vec![255])
        );
        assert_eq!(
            parse_line(r#"{"key":"n","counter":-42}"#).unwrap().1,
            Imported::Counter(-42)
        );
        assert!(parse_line(r#"{"key":"n","counter":1.5}"#)
            .unwrap_err()
            .contains("counter"));
        assert!(parse_line(r#"{"key":"n","counter":1,"value":"x"}"#)
            .unwrap_err()
            .contains("one of"));
        assert!(parse_line(r#"{"value":"x"}"#).unwrap_err().contains("key"));
        assert!(parse_line(r#"{"key":"x"}"#).unwrap_err().contains("value"));
        assert!(parse_line("nope").unwrap_err().contains("JSON"));
    }

    #[test]
    fn an_expiry_becomes_the_whole_seconds_left() {
        assert_eq!(ttl_left(10_000, 8_500), Some(2));
        assert_eq!(ttl_left(10_000, 9_000), Some(1));
        assert_eq!(ttl_left(10_000, 9_999), Some(1));
        assert_eq!(ttl_left(10_000, 10_000), None);
        assert_eq!(ttl_left(10_000, 20_000), None);
    }
}
