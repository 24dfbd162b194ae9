//! The functions JavaScript calls (`#[wasm_bindgen]` exports).
//!
//! Each one converts its JS arguments, calls the plain Rust function of the module that owns
//! the logic and converts the answer back; failures become thrown `Error` objects named
//! `KvError` whose `code` property holds the protocol-style code. No decision is made here.
//!
//! Values: a JS string is its UTF-8 bytes and a `Uint8Array` its bytes; on the way back a
//! UTF-8 value is a string and anything else a `Uint8Array`.

use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::context;
use crate::error::SdkError;
use crate::protocol::{self, Value, ValueForm, MAX_ID};
use crate::reconcile::{self, Resolved, SiblingRef, Strategy};

/// A thrown `KvError`: an `Error` with a `code` property.
fn js_error(e: SdkError) -> JsValue {
    let err = js_sys::Error::new(&e.message);
    err.set_name("KvError");
    // Setting a property on a fresh, unfrozen Error cannot fail.
    let _ = Reflect::set(
        &err,
        &JsValue::from_str("code"),
        &JsValue::from_str(&e.code),
    );
    err.into()
}

/// Sets `obj[key] = value` on an object this module created.
fn set(obj: &Object, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(obj, &JsValue::from_str(key), value).map(|_| ())
}

/// A request id from a JS number.
fn id_arg(id: f64) -> Result<u64, SdkError> {
    if id.is_finite() && id.fract() == 0.0 && id >= 1.0 && id <= MAX_ID as f64 {
        Ok(id as u64)
    } else {
        Err(SdkError::bad_request(format!(
            "request id {id} is not an integer in 1..=2^53-1"
        )))
    }
}

/// The bytes of a value given as a string or a `Uint8Array`.
fn bytes_arg(v: &JsValue, what: &str) -> Result<Vec<u8>, SdkError> {
    if let Some(s) = v.as_string() {
        Ok(s.into_bytes())
    } else if let Some(a) = v.dyn_ref::<Uint8Array>() {
        Ok(a.to_vec())
    } else {
        Err(SdkError::bad_request(format!(
            "{what} must be a string or a Uint8Array"
        )))
    }
}

/// A value as JS sees it.
fn value_to_js(v: &Value) -> JsValue {
    match v {
        Value::Text(s) => JsValue::from_str(s),
        Value::Bytes(b) => Uint8Array::from(b.as_slice()).into(),
    }
}

/// Any JSON as a JS value.
fn json_to_js(v: &serde_json::Value) -> Result<JsValue, JsValue> {
    js_sys::JSON::parse(&v.to_string())
}

/// Reads a property, `undefined` when `obj` is not an object.
fn get(obj: &JsValue, key: &str) -> JsValue {
    if obj.is_object() {
        Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

/// One sibling given to `reconcile`.
struct JsSibling {
    /// The value as the caller gave it (returned unchanged when `lww` picks it).
    original: JsValue,
    /// Its bytes.
    bytes: Vec<u8>,
    /// Its timestamp, when given.
    timestamp_ms: Option<u64>,
}

/// The siblings of `reconcile`'s first argument: an array of values, an array of
/// `{value, timestampMs}` siblings, or a get result (its `siblings`, else its `values`).
fn siblings_arg(input: &JsValue) -> Result<Vec<JsSibling>, SdkError> {
    let list = if Array::is_array(input) {
        input.clone()
    } else if Array::is_array(&get(input, "siblings")) {
        get(input, "siblings")
    } else if Array::is_array(&get(input, "values")) {
        get(input, "values")
    } else {
        return Err(SdkError::bad_request(
            "reconcile takes an array of values or siblings, or the result of get",
        ));
    };
    Array::from(&list)
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("sibling #{i}");
            if item.is_string() || item.is_instance_of::<Uint8Array>() {
                return Ok(JsSibling {
                    bytes: bytes_arg(&item, &what)?,
                    original: item,
                    timestamp_ms: None,
                });
            }
            let value = get(&item, "value");
            let mut ts = get(&item, "timestampMs");
            if ts.is_undefined() {
                ts = get(&item, "timestamp_ms");
            }
            Ok(JsSibling {
                bytes: bytes_arg(&value, &what)?,
                original: value,
                timestamp_ms: ts
                    .as_f64()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .map(|t| t as u64),
            })
        })
        .collect()
}

/// Reconciles siblings into the one value to write back.
///
/// `values` is an array of values (strings / `Uint8Array`s), an array of
/// `{value, timestampMs}` siblings, or a get result. `strategy` is `"lww"`, `"union"`,
/// `"merge"` or a function called with the array of values that returns the value to keep.
/// Built-ins answer a JSON string (`union`, `merge`) or the winning value unchanged (`lww`,
/// `null` when there is none). Throws a `KvError` (`bad_request`) for input the strategy
/// cannot read; a function's exception propagates unchanged.
#[wasm_bindgen(js_name = reconcile)]
pub fn reconcile_js(values: &JsValue, strategy: &JsValue) -> Result<JsValue, JsValue> {
    let siblings = siblings_arg(values).map_err(js_error)?;
    if let Some(f) = strategy.dyn_ref::<Function>() {
        let plain: Array = siblings.iter().map(|s| s.original.clone()).collect();
        return f.call1(&JsValue::UNDEFINED, &plain);
    }
    let name = strategy.as_string().ok_or_else(|| {
        js_error(SdkError::bad_request(
            "the strategy is \"lww\", \"union\", \"merge\" or a function",
        ))
    })?;
    let strategy: Strategy = name.parse().map_err(js_error)?;
    let refs: Vec<SiblingRef<'_>> = siblings
        .iter()
        .map(|s| SiblingRef {
            value: &s.bytes,
            timestamp_ms: s.timestamp_ms,
        })
        .collect();
    match reconcile::resolve(strategy, &refs).map_err(js_error)? {
        Resolved::Nothing => Ok(JsValue::NULL),
        Resolved::Sibling(i) => Ok(siblings
            .get(i)
            .map_or(JsValue::NULL, |s| s.original.clone())),
        Resolved::Json(text) => Ok(JsValue::from_str(&text)),
    }
}

/// How context `a` relates to `b`: `"before"`, `"after"`, `"equal"` or `"concurrent"`.
/// Throws a `KvError` (`bad_request`) when either is corrupt.
#[wasm_bindgen(js_name = compareContexts)]
pub fn compare_contexts_js(a: &str, b: &str) -> Result<String, JsValue> {
    context::compare(a, b)
        .map(|c| context::causality_name(c).to_owned())
        .map_err(js_error)
}

/// The context covering every context of the array (to write back after reconciling
/// several reads). Throws a `KvError` (`bad_request`) for a corrupt one.
#[wasm_bindgen(js_name = mergeContexts)]
pub fn merge_contexts_js(contexts: &Array) -> Result<String, JsValue> {
    let strings = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.as_string().ok_or_else(|| {
                js_error(SdkError::bad_request(format!(
                    "causal context #{i} is not a string"
                )))
            })
        })
        .collect::<Result<Vec<String>, JsValue>>()?;
    context::merge(strings.iter().map(String::as_str)).map_err(js_error)
}

/// Throws a `KvError` (`bad_request`) unless `context` is a causal context the servers made
/// (or the empty string).
#[wasm_bindgen(js_name = checkContext)]
pub fn check_context_js(context: &str) -> Result<(), JsValue> {
    context::check_context(context)
        .map(|_| ())
        .map_err(js_error)
}

/// A get request frame.
#[wasm_bindgen(js_name = encodeGet)]
pub fn encode_get_js(
    id: f64,
    key: &str,
    r: Option<u32>,
    local: Option<bool>,
) -> Result<String, JsValue> {
    let id = id_arg(id).map_err(js_error)?;
    protocol::encode_get(id, key, r.map(|r| r as usize), local.unwrap_or(false)).map_err(js_error)
}

/// A put request frame; `value` is a string (sent as text) or a `Uint8Array` (sent as text or
/// base64, whichever is shorter); `ttl_seconds` makes the value expire that long after the
/// write. Throws a `KvError` (`bad_request`) for another value type,
/// a corrupt context or a time to live that is not a whole number of seconds in range.
#[wasm_bindgen(js_name = encodePut)]
pub fn encode_put_js(
    id: f64,
    key: &str,
    value: &JsValue,
    context: Option<String>,
    w: Option<u32>,
    ttl_seconds: Option<f64>,
) -> Result<String, JsValue> {
    let id = id_arg(id).map_err(js_error)?;
    let bytes = bytes_arg(value, "the value").map_err(js_error)?;
    let form = if value.is_string() {
        ValueForm::Text
    } else {
        ValueForm::Shortest
    };
    let ttl = match ttl_seconds {
        None => None,
        Some(t) if t.fract() == 0.0 && t >= 1.0 && t <= u64::MAX as f64 => Some(t as u64),
        Some(t) => {
            return Err(js_error(SdkError::bad_request(format!(
                "ttlSeconds must be a whole number of seconds, at least 1, not {t}"
            ))))
        }
    };
    protocol::encode_put(
        id,
        key,
        &bytes,
        form,
        context.as_deref(),
        w.map(|w| w as usize),
        ttl,
    )
    .map_err(js_error)
}

/// A delete request frame. Throws a `KvError` (`bad_request`) for a corrupt context.
#[wasm_bindgen(js_name = encodeDelete)]
pub fn encode_delete_js(
    id: f64,
    key: &str,
    context: Option<String>,
    w: Option<u32>,
) -> Result<String, JsValue> {
    let id = id_arg(id).map_err(js_error)?;
    protocol::encode_delete(id, key, context.as_deref(), w.map(|w| w as usize)).map_err(js_error)
}

/// An incr request frame. `by` must be a whole number within JavaScript's safe integers;
/// throws a `KvError` (`bad_request`) otherwise.
#[wasm_bindgen(js_name = encodeIncr)]
pub fn encode_incr_js(id: f64, key: &str, by: f64, w: Option<u32>) -> Result<String, JsValue> {
    /// 2^53 - 1, the largest integer a JavaScript number holds exactly.
    const SAFE: f64 = 9_007_199_254_740_991.0;
    let id = id_arg(id).map_err(js_error)?;
    if by.fract() != 0.0 || !(-SAFE..=SAFE).contains(&by) {
        return Err(js_error(SdkError::bad_request(format!(
            "by must be a whole number within the safe integers, not {by}"
        ))));
    }
    protocol::encode_incr(id, key, by as i64, w.map(|w| w as usize)).map_err(js_error)
}

/// A frame for `ping`, `status` or `hints`.
#[wasm_bindgen(js_name = encodeOp)]
pub fn encode_op_js(id: f64, op: &str) -> Result<String, JsValue> {
    let id = id_arg(id).map_err(js_error)?;
    protocol::encode_simple(id, op).map_err(js_error)
}

/// Decodes an answer frame into `{id, ok: true, ...fields}` or
/// `{id, ok: false, error: {code, message}}`. A get answer's fields become `found`,
/// `values` (strings or `Uint8Array`s), `siblings` (`{value, timestampMs}`) and `context`.
/// Throws a `KvError` (`bad_response`) for a frame that does not decode, with an `id`
/// property when the frame's id is readable (so the request it answers can fail now rather
/// than wait for its timeout).
#[wasm_bindgen(js_name = decodeResponse)]
pub fn decode_response_js(text: &str) -> Result<JsValue, JsValue> {
    decode_answer(text).inspect_err(|e| {
        if let (true, Some(id)) = (e.is_object(), protocol::answer_id(text)) {
            // Setting a property on the fresh Error this module threw cannot fail.
            let _ = Reflect::set(e, &JsValue::from_str("id"), &JsValue::from_f64(id as f64));
        }
    })
}

/// [`decode_response_js`] without the id on its errors.
fn decode_answer(text: &str) -> Result<JsValue, JsValue> {
    let resp = protocol::decode_response(text).map_err(js_error)?;
    let out = Object::new();
    let id = resp
        .id
        .map_or(JsValue::NULL, |i| JsValue::from_f64(i as f64));
    set(&out, "id", &id)?;
    match resp.outcome {
        Ok(fields) => {
            set(&out, "ok", &JsValue::TRUE)?;
            let is_get = fields.contains_key("values") || fields.contains_key("siblings");
            for (k, v) in &fields {
                if !(is_get && (k == "values" || k == "siblings")) {
                    set(&out, k, &json_to_js(v)?)?;
                }
            }
            if is_get {
                let ans = protocol::decode_get_answer(&fields).map_err(js_error)?;
                let values: Array = ans.siblings.iter().map(|s| value_to_js(&s.value)).collect();
                let siblings = Array::new();
                for s in &ans.siblings {
                    let o = Object::new();
                    set(&o, "value", &value_to_js(&s.value))?;
                    let ts = s
                        .timestamp_ms
                        .map_or(JsValue::NULL, |t| JsValue::from_f64(t as f64));
                    set(&o, "timestampMs", &ts)?;
                    if let Some(at) = s.expires_at_ms {
                        set(&o, "expiresAtMs", &JsValue::from_f64(at as f64))?;
                    }
                    if s.counter {
                        set(&o, "counter", &JsValue::TRUE)?;
                    }
                    siblings.push(&o);
                }
                set(&out, "found", &JsValue::from_bool(ans.found))?;
                set(&out, "values", &values)?;
                set(&out, "siblings", &siblings)?;
                set(&out, "context", &JsValue::from_str(&ans.context))?;
            }
        }
        Err(e) => {
            set(&out, "ok", &JsValue::FALSE)?;
            let err = Object::new();
            set(&err, "code", &JsValue::from_str(&e.code))?;
            set(&err, "message", &JsValue::from_str(&e.message))?;
            set(&out, "error", &err)?;
        }
    }
    Ok(out.into())
}
