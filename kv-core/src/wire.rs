//! The messages that cross a WebSocket: the client protocol of INTERFACE.md (JSON text frames)
//! and the peer protocol between nodes.
//!
//! Decoding never panics: a frame that is not JSON, lacks a field, carries a wrong type or
//! exceeds a limit decodes to a [`WireError`] with the protocol's error code, and to the request
//! id when one could be read, so the server can answer it and keep the connection.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The protocol's error codes (INTERFACE.md, "Wire protocol").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or one of its fields is malformed, or the op is unknown.
    BadRequest,
    /// A key, value or frame is over its limit.
    TooLarge,
    /// No token, or a token that does not allow the operation.
    Unauthorized,
    /// The quorum could not be met; the message names each replica and its failure.
    Unavailable,
    /// The request did not complete in time.
    Timeout,
    /// Too many connections or requests in flight: try again later.
    Overloaded,
    /// A failure inside the node (storage error, bug); the message says which.
    Internal,
}

impl ErrorCode {
    /// The code as it travels on the wire (`"bad_request"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error answer: a code and a sentence saying what failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One clear sentence for a human.
    pub message: String,
}

impl WireError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for WireError {}

/// Size limits enforced when decoding (INTERFACE.md: key 1 KiB, value 1 MiB, frame 2 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key in bytes.
    pub max_key_bytes: usize,
    /// Largest value in bytes (after base64 decoding).
    pub max_value_bytes: usize,
    /// Largest WebSocket frame in bytes.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_frame_bytes: 2 * 1024 * 1024,
        }
    }
}

/// A decoded client request: the id it will be answered by, and what it asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client; the answer carries the same id.
    pub id: u64,
    /// The operation.
    pub op: ClientOp,
    /// For get, put and delete: `Some(false)` asks for a strict quorum (only the key's own
    /// replicas count), `Some(true)` for a sloppy one; `None` takes the cluster default.
    pub sloppy: Option<bool>,
}

/// The operations of the client protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// Read a key. `local` reads only the connected node's replica, without coordination.
    Get {
        key: String,
        r: Option<usize>,
        local: bool,
    },
    /// Write a value. `context` is the opaque string of an earlier read ("" = blind write).
    /// With `ttl_s` the value expires that many seconds after the write (it then reads as
    /// deleted).
    Put {
        key: String,
        value: Vec<u8>,
        context: String,
        w: Option<usize>,
        ttl_s: Option<u64>,
    },
    /// Write a tombstone over what `context` saw. Without a context (`None`: no field, unlike
    /// `""`, the context of a read that found nothing) the node reads the key first and
    /// deletes what that read finds.
    Delete {
        key: String,
        context: Option<String>,
        w: Option<usize>,
    },
    /// Add `by` (negative to subtract) to the key's counter.
    Incr {
        key: String,
        by: i64,
        w: Option<usize>,
    },
    /// Every member of the cluster as this node sees it.
    Status,
    /// Token ownership, or one key's preference list.
    Ring { key: Option<String> },
    /// Pending hinted-handoff writes by target.
    Hints,
    /// Hand the data of the ranges this node no longer replicates to their replicas, then
    /// drop it here.
    Cleanup,
    /// Merge every table of this node's storage into its last level now, dropping overwritten
    /// versions and deleted keys' old data (a major compaction, as Cassandra's `nodetool
    /// compact`).
    Compact,
    /// Copy this node's data, as it stands, to a snapshot named `name` (default: the time).
    Snapshot { name: Option<String> },
    /// This node's snapshots.
    Snapshots,
    /// Remove this node's snapshot `name`.
    ClearSnapshot { name: String },
    /// Run anti-entropy now.
    Repair { node: Option<String> },
    /// Drain a node and remove it from the ring.
    Decommission { node: String },
    /// Remove a dead node from the ring: the other replicas refill its ranges' new owners.
    RemoveNode { node: String },
    /// A liveness probe: answers `{"ok":true}`.
    Ping,
    /// One page of every key of the cluster in token order (export): up to `limit` keys
    /// after `cursor` (absent: from the start); the answer carries the next cursor.
    Scan {
        cursor: Option<String>,
        limit: Option<usize>,
    },
}

impl ClientOp {
    /// The op's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Get { .. } => "get",
            ClientOp::Put { .. } => "put",
            ClientOp::Delete { .. } => "delete",
            ClientOp::Incr { .. } => "incr",
            ClientOp::Status => "status",
            ClientOp::Ring { .. } => "ring",
            ClientOp::Hints => "hints",
            ClientOp::Cleanup => "cleanup",
            ClientOp::Compact => "compact",
            ClientOp::Snapshot { .. } => "snapshot",
            ClientOp::Snapshots => "snapshots",
            ClientOp::ClearSnapshot { .. } => "clear_snapshot",
            ClientOp::Repair { .. } => "repair",
            ClientOp::Decommission { .. } => "decommission",
            ClientOp::RemoveNode { .. } => "removenode",
            ClientOp::Ping => "ping",
            ClientOp::Scan { .. } => "scan",
        }
    }
}

/// The longest time to live a put may ask for: 20 years, in seconds.
pub const MAX_TTL_S: u64 = 20 * 365 * 24 * 3600;

/// Every field any request may carry; which are required depends on `op`.
#[derive(Deserialize, Debug, PartialEq)]
struct RawRequest<'a> {
    id: u64,
    /// Borrowed from the frame: one allocation fewer per request.
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_b64: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    w: Option<usize>,
    #[serde(default)]
    ttl_s: Option<u64>,
    #[serde(default)]
    by: Option<i64>,
    #[serde(default)]
    r: Option<usize>,
    #[serde(default)]
    local: Option<bool>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    sloppy: Option<bool>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    name: Option<String>,
}

/// Used to recover the id of a request whose other fields did not decode.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

/// Decodes one client frame. On failure returns the error and, when it could be read, the id
/// to answer it by.
pub fn decode_request(text: &str, limits: &Limits) -> Result<Request, (Option<u64>, WireError)> {
    decode(text, limits, true)
}

/// [`decode_request`] through `serde_json` alone, without the short way: the reference the
/// fuzz target holds the short way to (every input must decode the same both ways).
#[doc(hidden)]
pub fn decode_request_by_serde(
    text: &str,
    limits: &Limits,
) -> Result<Request, (Option<u64>, WireError)> {
    decode(text, limits, false)
}

fn decode(
    text: &str,
    limits: &Limits,
    short_way: bool,
) -> Result<Request, (Option<u64>, WireError)> {
    if text.len() > limits.max_frame_bytes {
        // The id, when the frame has one, lets the client match the refusal to its request
        // (the frame was read whole, within the WebSocket layer's own bound).
        let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id);
        return Err((
            id,
            WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {} bytes",
                    text.len(),
                    limits.max_frame_bytes
                ),
            ),
        ));
    }
    let short = if short_way { scan_request(text) } else { None };
    let raw: RawRequest = match short.map_or_else(|| serde_json::from_str(text), Ok) {
        Ok(raw) => raw,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id);
            return Err((
                id,
                WireError::bad_request(format!("malformed request: {e}")),
            ));
        }
    };
    let id = raw.id;
    validate(raw, limits).map_err(|e| (Some(id), e))
}

/// The short way to read a request (see [`crate::json`]): `None` leaves it to `serde_json`,
/// for anything but a flat object of known, unrepeated fields of the right types.
fn scan_request(text: &str) -> Option<RawRequest<'_>> {
    use crate::json::Scalar;
    fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
        match (&slot, value) {
            (None, Some(v)) => {
                *slot = Some(v);
                true
            }
            _ => false,
        }
    }
    let string = |v: Scalar<'_>| match v {
        Scalar::Str(s) => Some(s.to_owned()),
        _ => None,
    };
    let unsigned = |v: Scalar<'_>| match v {
        Scalar::UInt(n) => Some(n),
        _ => None,
    };
    let size = |v: Scalar<'_>| unsigned(v).and_then(|n| usize::try_from(n).ok());
    let boolean = |v: Scalar<'_>| match v {
        Scalar::Bool(b) => Some(b),
        _ => None,
    };
    let (mut id, mut op, mut key, mut value, mut value_b64, mut context) =
        (None, None, None, None, None, None);
    let (mut w, mut ttl_s, mut by, mut r, mut local, mut node) =
        (None, None, None, None, None, None);
    let (mut sloppy, mut cursor, mut limit, mut name) = (None, None, None, None);
    let read = crate::json::scan_object(text, |field, v| match field {
        "id" => set(&mut id, unsigned(v)),
        "op" => set(
            &mut op,
            match v {
                Scalar::Str(s) => Some(s),
                _ => None,
            },
        ),
        "key" => set(&mut key, string(v)),
        "value" => set(&mut value, string(v)),
        "context" => set(&mut context, string(v)),
        "w" => set(&mut w, size(v)),
        "r" => set(&mut r, size(v)),
        "ttl_s" => set(&mut ttl_s, unsigned(v)),
        "by" => set(
            &mut by,
            match v {
                Scalar::UInt(n) => i64::try_from(n).ok(),
                Scalar::NegInt(n) => Some(n),
                _ => None,
            },
        ),
        "local" => set(&mut local, boolean(v)),
        "sloppy" => set(&mut sloppy, boolean(v)),
        "value_b64" => set(&mut value_b64, string(v)),
        "node" => set(&mut node, string(v)),
        "cursor" => set(&mut cursor, string(v)),
        "limit" => set(&mut limit, size(v)),
        "name" => set(&mut name, string(v)),
        _ => false,
    });
    read.then_some(())?;
    Some(RawRequest {
        id: id?,
        op: std::borrow::Cow::Borrowed(op?),
        key,
        value,
        value_b64,
        context,
        w,
        ttl_s,
        by,
        r,
        local,
        node,
        sloppy,
        cursor,
        limit,
        name,
    })
}

fn validate(raw: RawRequest<'_>, limits: &Limits) -> Result<Request, WireError> {
    let key = |raw_key: Option<String>| -> Result<String, WireError> {
        let key =
            raw_key.ok_or_else(|| WireError::bad_request(format!("'{}' needs a key", raw.op)))?;
        check_key(&key, limits)?;
        Ok(key)
    };
    let quorum = |name: &str, v: Option<usize>| -> Result<Option<usize>, WireError> {
        match v {
            Some(0) => Err(WireError::bad_request(format!("{name} must be at least 1"))),
            other => Ok(other),
        }
    };
    let ttl = |v: Option<u64>| -> Result<Option<u64>, WireError> {
        match v {
            Some(t) if t == 0 || t > MAX_TTL_S => Err(WireError::bad_request(format!(
                "ttl_s must be from 1 to {MAX_TTL_S} seconds, not {t}"
            ))),
            other => Ok(other),
        }
    };
    if raw.ttl_s.is_some() && raw.op != "put" {
        return Err(WireError::bad_request(format!(
            "ttl_s applies to 'put' only, not '{}'",
            raw.op
        )));
    }
    if raw.by.is_some() && raw.op != "incr" {
        return Err(WireError::bad_request(format!(
            "by applies to 'incr' only, not '{}'",
            raw.op
        )));
    }
    let op = match &*raw.op {
        "get" => ClientOp::Get {
            key: key(raw.key)?,
            r: quorum("r", raw.r)?,
            local: raw.local.unwrap_or(false),
        },
        "put" => {
            let value = match (raw.value, raw.value_b64) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(b)) => B64.decode(b.as_bytes()).map_err(|e| {
                    WireError::bad_request(format!("value_b64 is not valid base64: {e}"))
                })?,
                (Some(_), Some(_)) => {
                    return Err(WireError::bad_request(
                        "give either value or value_b64, not both",
                    ))
                }
                (None, None) => return Err(WireError::bad_request("'put' needs a value")),
            };
            check_value(&value, limits)?;
            ClientOp::Put {
                key: key(raw.key)?,
                value,
                context: raw.context.unwrap_or_default(),
                w: quorum("w", raw.w)?,
                ttl_s: ttl(raw.ttl_s)?,
            }
        }
        "delete" => ClientOp::Delete {
            key: key(raw.key)?,
            context: raw.context,
            w: quorum("w", raw.w)?,
        },
        "incr" => ClientOp::Incr {
            key: key(raw.key)?,
            by: raw.by.unwrap_or(1),
            w: quorum("w", raw.w)?,
        },
        "status" => ClientOp::Status,
        "ring" => ClientOp::Ring {
            key: match raw.key {
                Some(k) => Some(key(Some(k))?),
                None => None,
            },
        },
        "hints" => ClientOp::Hints,
        "cleanup" => ClientOp::Cleanup,
        "compact" => ClientOp::Compact,
        "snapshot" => ClientOp::Snapshot { name: raw.name },
        "snapshots" => ClientOp::Snapshots,
        "clear_snapshot" => ClientOp::ClearSnapshot {
            name: raw
                .name
                .ok_or_else(|| WireError::bad_request("'clear_snapshot' needs a name"))?,
        },
        "repair" => ClientOp::Repair { node: raw.node },
        "decommission" => ClientOp::Decommission {
            node: raw
                .node
                .ok_or_else(|| WireError::bad_request("'decommission' needs a node"))?,
        },
        "removenode" => ClientOp::RemoveNode {
            node: raw
                .node
                .ok_or_else(|| WireError::bad_request("'removenode' needs a node"))?,
        },
        "ping" => ClientOp::Ping,
        "scan" => ClientOp::Scan {
            cursor: raw.cursor,
            limit: raw.limit,
        },
        other => return Err(WireError::bad_request(format!("unknown op '{other}'"))),
    };
    Ok(Request {
        id: raw.id,
        op,
        sloppy: raw.sloppy,
    })
}

/// Checks a key against the limits: non-empty and at most `max_key_bytes`.
pub fn check_key(key: &str, limits: &Limits) -> Result<(), WireError> {
    if key.is_empty() {
        return Err(WireError::bad_request("the key is empty"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks a value against `max_value_bytes`.
pub fn check_value(value: &[u8], limits: &Limits) -> Result<(), WireError> {
    if value.len() > limits.max_value_bytes {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                limits.max_value_bytes
            ),
        ));
    }
    Ok(())
}

/// How a request frame carries a put's value. Both forms decode to the same bytes; answers
/// are not concerned (they always show UTF-8 as text, see [`write_value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueForm {
    /// `"value"` text whenever the value is UTF-8, else `"value_b64"`: for a value its writer
    /// gave as text, which stays text on the wire.
    Text,
    /// `"value"` text or `"value_b64"`, whichever is shorter: for a value its writer gave as
    /// bytes. UTF-8 made of control characters escapes to six bytes per byte (`\u0001`),
    /// which base64 keeps to four per three.
    Shortest,
}

/// Encodes a client request as a JSON text frame (what kvcli and the SDK send): `id`, `op`,
/// then the op's fields, absent ones left out. A put's value travels as
/// [`ValueForm::Text`]. Written by hand ([`crate::json`]).
pub fn encode_request(id: u64, op: &ClientOp) -> String {
    encode_request_with(id, op, ValueForm::Text)
}

/// [`encode_request`] with a put's value carried as `form` says.
pub fn encode_request_with(id: u64, op: &ClientOp, form: ValueForm) -> String {
    let mut out = String::new();
    encode_request_into(&mut out, id, op, form);
    out
}

/// [`encode_request_with`] appending to `out`: a client that sends many requests reuses one
/// buffer.
pub fn encode_request_into(out: &mut String, id: u64, op: &ClientOp, form: ValueForm) {
    use crate::json::{write_bool, write_i64, write_str, write_u64};
    /// `,"name":` then the value, when there is one.
    fn string(out: &mut String, name: &str, v: Option<&str>) {
        if let Some(v) = v {
            field(out, name);
            write_str(out, v);
        }
    }
    fn number(out: &mut String, name: &str, v: Option<u64>) {
        if let Some(v) = v {
            field(out, name);
            write_u64(out, v);
        }
    }
    fn field(out: &mut String, name: &str) {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
    }
    let size = |v: &Option<usize>| v.map(|n| n as u64);
    // Room for the strings and their usual escapes: growing from empty took two or three
    // reallocations per put.
    let room = |strings: &[&str]| 96 + strings.iter().map(|s| s.len() + s.len() / 8).sum::<usize>();
    let head = |out: &mut String, strings: &[&str]| {
        out.reserve(room(strings));
        out.push_str("{\"id\":");
        write_u64(out, id);
        out.push_str(",\"op\":\"");
        out.push_str(op.name());
        out.push('"');
    };
    match op {
        ClientOp::Get { key, r, local } => {
            head(out, &[key]);
            string(out, "key", Some(key));
            number(out, "r", size(r));
            if *local {
                field(out, "local");
                write_bool(out, true);
            }
        }
        ClientOp::Put {
            key,
            value,
            context,
            w,
            ttl_s,
        } => {
            let b64;
            let as_text = std::str::from_utf8(value).ok().filter(|text| match form {
                ValueForm::Text => true,
                ValueForm::Shortest => {
                    crate::json::escaped_len(text) <= value.len().div_ceil(3) * 4 + 2
                }
            });
            let (text, encoded) = match as_text {
                Some(text) => (Some(text), None),
                None => {
                    b64 = B64.encode(value);
                    (None, Some(b64.as_str()))
                }
            };
            head(out, &[key, text.or(encoded).unwrap_or_default(), context]);
            string(out, "key", Some(key));
            string(out, "value", text);
            string(out, "value_b64", encoded);
            string(out, "context", non_empty(context));
            number(out, "w", size(w));
            number(out, "ttl_s", *ttl_s);
        }
        ClientOp::Delete { key, context, w } => {
            head(out, &[key, context.as_deref().unwrap_or_default()]);
            string(out, "key", Some(key));
            string(out, "context", context.as_deref());
            number(out, "w", size(w));
        }
        ClientOp::Incr { key, by, w } => {
            head(out, &[key]);
            string(out, "key", Some(key));
            number(out, "w", size(w));
            field(out, "by");
            write_i64(out, *by);
        }
        ClientOp::Ring { key } => {
            head(out, &[key.as_deref().unwrap_or_default()]);
            string(out, "key", key.as_deref());
        }
        ClientOp::Repair { node } => {
            head(out, &[node.as_deref().unwrap_or_default()]);
            string(out, "node", node.as_deref());
        }
        ClientOp::Decommission { node } | ClientOp::RemoveNode { node } => {
            head(out, &[node]);
            string(out, "node", Some(node));
        }
        ClientOp::Snapshot { name } => {
            head(out, &[name.as_deref().unwrap_or_default()]);
            string(out, "name", name.as_deref());
        }
        ClientOp::ClearSnapshot { name } => {
            head(out, &[name]);
            string(out, "name", Some(name));
        }
        ClientOp::Scan { cursor, limit } => {
            head(out, &[cursor.as_deref().unwrap_or_default()]);
            string(out, "cursor", cursor.as_deref());
            number(out, "limit", size(limit));
        }
        ClientOp::Status
        | ClientOp::Hints
        | ClientOp::Ping
        | ClientOp::Cleanup
        | ClientOp::Compact
        | ClientOp::Snapshots => head(out, &[]),
    }
    out.push('}');
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A value as JSON: a string when it is UTF-8 text, else `{"value_b64": "..."}`.
pub fn value_to_json(value: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::Value::String(text.to_owned()),
        Err(_) => serde_json::json!({ "value_b64": B64.encode(value) }),
    }
}

/// Appends a value as answers show it, the same JSON as [`value_to_json`] (a string when it
/// is UTF-8, else `{"value_b64": ...}`), written by hand ([`crate::json`]).
pub fn write_value(out: &mut String, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => crate::json::write_str(out, text),
        Err(_) => {
            out.push_str("{\"value_b64\":");
            crate::json::write_str(out, &B64.encode(value));
            out.push('}');
        }
    }
}

/// The inverse of [`value_to_json`].
pub fn value_from_json(v: &serde_json::Value) -> Result<Vec<u8>, WireError> {
    match v {
        serde_json::Value::String(s) => Ok(s.as_bytes().to_vec()),
        serde_json::Value::Object(o) => match o.get("value_b64") {
            Some(serde_json::Value::String(b)) => B64
                .decode(b.as_bytes())
                .map_err(|e| WireError::bad_request(format!("value_b64 is not valid base64: {e}"))),
            _ => Err(WireError::bad_request("a value object needs value_b64")),
        },
        _ => Err(WireError::bad_request("a value is a string or {value_b64}")),
    }
}

/// An error answer frame: `{"id", "ok": false, "error": {"code", "message"}}`.
pub fn error_response(id: Option<u64>, error: &WireError) -> String {
    serde_json::json!({ "id": id, "ok": false, "error": error }).to_string()
}

/// A success answer frame: `fields` (a JSON object) plus `"id"` and `"ok": true`.
pub fn ok_response(id: u64, fields: serde_json::Value) -> String {
    let mut obj = match fields {
        serde_json::Value::Object(o) => o,
        _ => serde_json::Map::new(),
    };
    obj.insert("id".into(), id.into());
    obj.insert("ok".into(), true.into());
    serde_json::Value::Object(obj).to_string()
}

/// Serde helper: `Vec<u8>` as a base64 string (peer messages carry opaque bytes in JSON).
pub mod b64 {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    /// Deserializes base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Vec<u8>>`.
    pub mod option {
        use super::B64;
        use base64::Engine as _;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serializes optional bytes as base64 or null.
        pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(b) => s.serialize_str(&B64.encode(b)),
                None => s.serialize_none(),
            }
        }

        /// Deserializes base64 or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
            match s {
                Some(s) => B64
                    .decode(s.as_bytes())
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<Request, (Option<u64>, WireError)> {
        decode_request(text, &Limits::default())
    }

    /// The short way reads what serde_json reads, wherever it reads anything: random requests
    /// (known and unknown fields, repeats, every JSON type, escapes, odd numbers, whitespace)
    /// through both.
    #[test]
    fn the_short_way_reads_requests_as_serde_json_does() {
        let names = [
            "id",
            "op",
            "key",
            "value",
            "value_b64",
            "context",
            "w",
            "ttl_s",
            "by",
            "r",
            "local",
            "node",
            "sloppy",
            "cursor",
            "limit",
            "name",
            "other",
            "k\\u0065y",
        ];
        let values = [
            "0",
            "1",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "-0",
            "-9223372036854775808",
            "-9223372036854775807",
            "01",
            "1.0",
            "1e2",
            "true",
            "false",
            "null",
            "\"put\"",
            "\"get\"",
            "\"k\"",
            "\"\"",
            "\"a\\nb\"",
            "\"\\u0070ut\"",
            "\"é😀\"",
            "[]",
            "{}",
            "\"AP8=\"",
        ];
        let spaces = ["", " ", "\n\t ", "\r"];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut short, mut both) = (0, 0);
        for round in 0..20_000 {
            let mut text = String::from(spaces[next(spaces.len())]);
            text.push('{');
            // Most rounds: a request that decodes; the rest anything.
            let fields = 1 + next(6);
            for i in 0..fields {
                if i > 0 {
                    text.push(',');
                }
                let (name, value) = match (round % 3, i) {
                    (0 | 1, 0) => ("id", values[next(4)]),
                    (0 | 1, 1) => ("op", ["\"put\"", "\"get\""][next(2)]),
                    _ => (names[next(names.len())], values[next(values.len())]),
                };
                let sp = spaces[next(spaces.len())];
                text.push_str(&format!("{sp}\"{name}\"{sp}:{sp}{value}{sp}"));
            }
            text.push('}');
            let serde = serde_json::from_str::<RawRequest>(&text);
            if let Some(raw) = scan_request(&text) {
                short += 1;
                assert_eq!(Some(&raw), serde.as_ref().ok(), "{text}");
            }
            both += usize::from(serde.is_ok());
        }
        // The short way is taken for most of what decodes at all.
        assert!(short * 10 > both * 7, "short way {short} of {both}");
        // And for what kvcli and the SDK send.
        for op in [
            ClientOp::Get {
                key: "k".into(),
                r: Some(2),
                local: true,
            },
            ClientOp::Put {
                key: "user:1".into(),
                value: b"x".repeat(100),
                context: "AQIDBA==".into(),
                w: Some(1),
                ttl_s: Some(60),
            },
            ClientOp::Delete {
                key: "k".into(),
                context: Some("ctx".into()),
                w: None,
            },
            ClientOp::Incr {
                key: "n".into(),
                by: -5,
                w: None,
            },
            ClientOp::Scan {
                cursor: Some("c".into()),
                limit: Some(10),
            },
        ] {
            let text = encode_request(9, &op);
            assert!(scan_request(&text).is_some(), "{text}");
            assert_eq!(decode(&text).unwrap().op, op);
        }
    }

    #[test]
    fn decodes_each_op() {
        let r = decode(r#"{"id":7,"op":"get","key":"k","r":1}"#).unwrap();
        assert_eq!(
            r,
            Request {
                id: 7,
                op: ClientOp::Get {
                    key: "k".into(),
                    r: Some(1),
                    local: false
                },
                sloppy: None,
            }
        );
        let r = decode(r#"{"id":1,"op":"put","key":"k","value":"v","context":"c","w":2}"#).unwrap();
        assert_eq!(
            r.op,
            ClientOp::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                context: "c".into(),
                w: Some(2),
                ttl_s: None,
            }
        );
        let r = decode(r#"{"id":1,"op":"put","key":"k","value_b64":"AP8="}"#).unwrap();
        assert!(matches!(r.op, ClientOp::Put { ref value, .. } if value == &[0u8, 255]));
        assert_eq!(
            decode(r#"{"id":2,"op":"delete","key":"k"}"#).unwrap().op,
            ClientOp::Delete {
                key: "k".into(),
                context: None,
                w: None
            }
        );
        // An empty context is a context (of a read that found nothing), not a missing one.
        assert_eq!(
            decode(r#"{"id":2,"op":"delete","key":"k","context":""}"#)
                .unwrap()
                .op,
            ClientOp::Delete {
                key: "k".into(),
                context: Some(String::new()),
                w: None
            }
        );
        assert_eq!(
            decode(r#"{"id":3,"op":"status"}"#).unwrap().op,
            ClientOp::Status
        );
        assert_eq!(
            decode(r#"{"id":3,"op":"cleanup"}"#).unwrap().op,
            ClientOp::Cleanup
        );
        assert_eq!(
            decode(r#"{"id":3,"op":"compact"}"#).unwrap().op,
            ClientOp::Compact
        );
        assert_eq!(
            decode(r#"{"id":3,"op":"ring","key":"a"}"#).unwrap().op,
            ClientOp::Ring {
                key: Some("a".into())
            }
        );
    }

    #[test]
    fn incr_adds_one_unless_told_and_by_is_for_incr_only() {
        assert_eq!(
            decode(r#"{"id":1,"op":"incr","key":"k"}"#).unwrap().op,
            ClientOp::Incr {
                key: "k".into(),
                by: 1,
                w: None
            }
        );
        let op = ClientOp::Incr {
            key: "k".into(),
            by: -7,
            w: Some(2),
        };
        assert_eq!(decode(&encode_request(4, &op)).unwrap().op, op);
        for bad in [
            r#"{"id":2,"op":"put","key":"k","value":"v","by":5}"#,
            r#"{"id":2,"op":"incr","key":"k","by":1.5}"#,
            r#"{"id":2,"op":"incr","key":"k","by":"1"}"#,
            r#"{"id":2,"op":"incr","by":1}"#,
            r#"{"id":2,"op":"incr","key":"k","by":99999999999999999999}"#,
        ] {
            let (id, e) = decode(bad).unwrap_err();
            assert_eq!(id, Some(2), "{bad}");
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn a_time_to_live_is_for_puts_and_bounded() {
        let r = decode(r#"{"id":1,"op":"put","key":"k","value":"v","ttl_s":30}"#).unwrap();
        assert!(matches!(
            r.op,
            ClientOp::Put {
                ttl_s: Some(30),
                ..
            }
        ));
        for bad in [
            r#"{"id":2,"op":"put","key":"k","value":"v","ttl_s":0}"#,
            r#"{"id":2,"op":"put","key":"k","value":"v","ttl_s":999999999999}"#,
            r#"{"id":2,"op":"delete","key":"k","ttl_s":5}"#,
            r#"{"id":2,"op":"put","key":"k","value":"v","ttl_s":-1}"#,
        ] {
            let (id, e) = decode(bad).unwrap_err();
            assert_eq!(id, Some(2), "{bad}");
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
            assert!(
                e.message.contains("ttl_s") || e.message.contains("malformed"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let ops = vec![
            ClientOp::Get {
                key: "k".into(),
                r: Some(2),
                local: true,
            },
            ClientOp::Put {
                key: "k".into(),
                value: vec![0, 159, 146, 150],
                context: "ctx".into(),
                w: Some(3),
                ttl_s: None,
            },
            ClientOp::Put {
                key: "k".into(),
                value: b"text value".to_vec(),
                context: String::new(),
                w: None,
                ttl_s: Some(60),
            },
            ClientOp::Put {
                key: "quote \" backslash \\ controls \n\t\u{1}\u{1f} é 😀".into(),
                value: "x\"\\\u{0}y/€".as_bytes().to_vec(),
                context: "AQID+/==".into(),
                w: Some(usize::MAX),
                ttl_s: Some(MAX_TTL_S),
            },
            ClientOp::Incr {
                key: "n".into(),
                by: i64::MIN,
                w: Some(1),
            },
            ClientOp::Delete {
                key: "k".into(),
                context: Some("c".into()),
                w: None,
            },
            ClientOp::Delete {
                key: "k".into(),
                context: Some(String::new()),
                w: None,
            },
            ClientOp::Delete {
                key: "k".into(),
                context: None,
                w: None,
            },
            ClientOp::Status,
            ClientOp::Ring { key: None },
            ClientOp::Hints,
            ClientOp::Repair {
                node: Some("n1".into()),
            },
            ClientOp::Decommission { node: "n2".into() },
            ClientOp::RemoveNode { node: "n3".into() },
            ClientOp::Snapshot { name: None },
            ClientOp::Snapshot {
                name: Some("daily".into()),
            },
            ClientOp::Snapshots,
            ClientOp::ClearSnapshot {
                name: "daily".into(),
            },
            ClientOp::Cleanup,
            ClientOp::Compact,
            ClientOp::Ping,
            ClientOp::Scan {
                cursor: Some("c".into()),
                limit: Some(10),
            },
            ClientOp::Scan {
                cursor: None,
                limit: None,
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let text = encode_request(i as u64, &op);
            // serde_json reads the hand-written frame as the same request.
            let raw: RawRequest = serde_json::from_str(&text).unwrap();
            assert_eq!(validate(raw, &Limits::default()).unwrap().op, op, "{text}");
            assert_eq!(
                decode(&text).unwrap(),
                Request {
                    id: i as u64,
                    op,
                    sloppy: None
                }
            );
        }
    }

    #[test]
    fn bytes_take_the_shorter_of_text_and_base64() {
        let put = |value: Vec<u8>| ClientOp::Put {
            key: "k".into(),
            value,
            context: String::new(),
            w: None,
            ttl_s: None,
        };
        // (value, sent as text when given as bytes)
        for (value, text) in [
            (b"plain text".to_vec(), true),
            ("héllo €".as_bytes().to_vec(), true),
            (vec![1; 3000], false),
            (vec![0; 7], false),
            (b"a\nb".to_vec(), true),
            (vec![0xff, 0], false),
            (Vec::new(), true),
        ] {
            let op = put(value.clone());
            let shortest = encode_request_with(1, &op, ValueForm::Shortest);
            assert_eq!(shortest.contains("\"value\":"), text, "{shortest}");
            assert_eq!(decode(&shortest).unwrap().op, op);
            // Given as text, UTF-8 stays text whatever it costs.
            let as_text = encode_request_with(1, &op, ValueForm::Text);
            assert_eq!(as_text, encode_request(1, &op));
            let utf8 = std::str::from_utf8(&value).is_ok();
            assert_eq!(as_text.contains("\"value\":"), utf8, "{as_text}");
            assert!(shortest.len() <= as_text.len(), "{shortest} vs {as_text}");
        }
        // A value of zeros: six bytes each as text, four per three in base64.
        let zeros = encode_request_with(1, &put(vec![0; 400 * 1024]), ValueForm::Shortest);
        assert!(zeros.len() < 560 * 1024, "{}", zeros.len());
    }

    #[test]
    fn malformed_frames_are_errors_with_the_id_when_readable() {
        let (id, e) = decode("not json").unwrap_err();
        assert_eq!((id, e.code), (None, ErrorCode::BadRequest));
        let (id, e) = decode(r#"{"id":5,"op":"nope"}"#).unwrap_err();
        assert_eq!((id, e.code), (Some(5), ErrorCode::BadRequest));
        assert!(e.message.contains("unknown op"));
        let (id, e) = decode(r#"{"id":6,"op":"get","key":"k","r":"two"}"#).unwrap_err();
        assert_eq!((id, e.code), (Some(6), ErrorCode::BadRequest));
        let (id, e) = decode(r#"{"id":8,"op":"get"}"#).unwrap_err();
        assert_eq!((id, e.code), (Some(8), ErrorCode::BadRequest));
        let (_, e) = decode(r#"{"id":9,"op":"put","key":"k","value_b64":"!!"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let (_, e) = decode(r#"{"id":9,"op":"get","key":"k","w":0,"r":0}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let (_, e) = decode(r#"[1,2,3]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn limits_are_too_large() {
        let big_key = "k".repeat(1025);
        let (id, e) = decode(&format!(r#"{{"id":1,"op":"get","key":"{big_key}"}}"#)).unwrap_err();
        assert_eq!((id, e.code), (Some(1), ErrorCode::TooLarge));
        let big_value = "v".repeat(1024 * 1024 + 1);
        let (_, e) = decode(&format!(
            r#"{{"id":1,"op":"put","key":"k","value":"{big_value}"}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        let limits = Limits {
            max_frame_bytes: 10,
            ..Limits::default()
        };
        let (id, e) = decode_request(r#"{"id":7,"op":"status"}"#, &limits).unwrap_err();
        assert_eq!(
            (id, e.code),
            (Some(7), ErrorCode::TooLarge),
            "the id is kept"
        );
        let (id, e) = decode_request(r#"{"op":"status","id":"#, &limits).unwrap_err();
        assert_eq!((id, e.code), (None, ErrorCode::TooLarge), "no id to keep");
    }

    #[test]
    fn values_round_trip_through_json() {
        for v in [b"plain".to_vec(), vec![0xff, 0x00, 0x80], Vec::new()] {
            assert_eq!(value_from_json(&value_to_json(&v)).unwrap(), v);
            let mut written = String::new();
            write_value(&mut written, &v);
            assert_eq!(written, value_to_json(&v).to_string());
        }
        assert!(value_from_json(&serde_json::json!(3)).is_err());
    }

    #[test]
    fn responses_carry_id_and_ok() {
        let ok: serde_json::Value =
            serde_json::from_str(&ok_response(4, serde_json::json!({"found": false}))).unwrap();
        assert_eq!(ok["id"], 4);
        assert_eq!(ok["ok"], true);
        let err: serde_json::Value = serde_json::from_str(&error_response(
            Some(4),
            &WireError::new(ErrorCode::Unavailable, "n2: down"),
        ))
        .unwrap();
        assert_eq!(err["ok"], false);
        assert_eq!(err["error"]["code"], "unavailable");
    }
}
