//! The wire protocol as the SDK speaks it: request frames built by kv-core's encoder, and
//! answers decoded into ids, errors and siblings.

pub use kv_core::wire::ValueForm;
use kv_core::wire::{encode_request, encode_request_with, value_from_json, ClientOp};
use serde_json::{Map, Value as Json};

use crate::context::check_context;
use crate::error::{Result, SdkError};

/// The largest request id the SDK uses: ids travel as JS numbers, exact up to 2^53.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// A value as the server returned it: text when it is UTF-8, bytes otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A UTF-8 value (`"value"` on the wire).
    Text(String),
    /// Any other bytes (`{"value_b64"}` on the wire).
    Bytes(Vec<u8>),
}

impl Value {
    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Text(s) => s.as_bytes(),
            Value::Bytes(b) => b,
        }
    }

    /// Decodes one value of an answer (a string or `{"value_b64"}`).
    ///
    /// Errors: `bad_response` when it is neither.
    pub fn from_json(v: &Json) -> Result<Value> {
        match v {
            Json::String(s) => Ok(Value::Text(s.clone())),
            other => value_from_json(other).map(Value::Bytes).map_err(|e| {
                SdkError::bad_response(format!("a value in the answer: {}", e.message))
            }),
        }
    }
}

/// One sibling of a get answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// Its value.
    pub value: Value,
    /// The replica's timestamp of the write, when the answer carried it.
    pub timestamp_ms: Option<u64>,
    /// When a value written with a time to live expires (milliseconds since the epoch).
    pub expires_at_ms: Option<u64>,
    /// Whether the value shows the key's counter (its decimal text).
    pub counter: bool,
}

/// A decoded get answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetAnswer {
    /// Whether a live value exists (false for absent and deleted keys).
    pub found: bool,
    /// Every live sibling, in the server's (dot) order.
    pub siblings: Vec<Sibling>,
    /// The context to write back with (empty for a key never written).
    pub context: String,
}

/// A decoded answer frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id of the request it answers; `None` when the server could not read one.
    pub id: Option<u64>,
    /// The answer's fields (without `id` and `ok`), or the error it carried.
    pub outcome: std::result::Result<Map<String, Json>, SdkError>,
}

/// Decodes one text frame from the server.
///
/// Errors: `bad_response` when the frame is not a JSON object with a boolean `ok`, or an
/// error answer lacks its code.
pub fn decode_response(text: &str) -> Result<Response> {
    let parsed: Json = serde_json::from_str(text).map_err(|e| {
        SdkError::bad_response(format!("the server sent a frame that is not JSON: {e}"))
    })?;
    let Json::Object(mut obj) = parsed else {
        return Err(SdkError::bad_response(
            "the server sent a frame that is not a JSON object",
        ));
    };
    let id = match obj.remove("id") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => Some(n.as_u64().ok_or_else(|| {
            SdkError::bad_response(format!("the answer's id {n} is not a request id"))
        })?),
        Some(other) => {
            return Err(SdkError::bad_response(format!(
                "the answer's id {other} is not a number"
            )))
        }
    };
    let outcome = match obj.remove("ok") {
        Some(Json::Bool(true)) => Ok(obj),
        Some(Json::Bool(false)) => {
            let err = obj.get("error");
            let field = |name: &str| err.and_then(|e| e.get(name)).and_then(Json::as_str);
            let code = field("code")
                .ok_or_else(|| SdkError::bad_response("an error answer without error.code"))?;
            Err(SdkError::new(
                code,
                field("message").unwrap_or("(no message)"),
            ))
        }
        _ => return Err(SdkError::bad_response("an answer without a boolean \"ok\"")),
    };
    Ok(Response { id, outcome })
}

/// The id of an answer frame, when it is a JSON object with a request id: what a frame that
/// fails [`decode_response`] or [`decode_get_answer`] can still tell about the request it
/// answers.
pub fn answer_id(text: &str) -> Option<u64> {
    let parsed: Json = serde_json::from_str(text).ok()?;
    parsed
        .get("id")?
        .as_u64()
        .filter(|id| (1..=MAX_ID).contains(id))
}

/// Reads the siblings out of a get answer's fields. Uses `siblings` (values with
/// timestamps) when present, else the bare `values`.
///
/// Errors: `bad_response` when neither is an array of values or a field has the wrong type.
pub fn decode_get_answer(fields: &Map<String, Json>) -> Result<GetAnswer> {
    let context = match fields.get("context") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(_) => {
            return Err(SdkError::bad_response(
                "the answer's context is not a string",
            ))
        }
    };
    let siblings = if let Some(list) = fields.get("siblings") {
        let list = list
            .as_array()
            .ok_or_else(|| SdkError::bad_response("the answer's siblings is not an array"))?;
        list.iter()
            .map(|s| {
                let value = s
                    .get("value")
                    .ok_or_else(|| SdkError::bad_response("a sibling without a value"))?;
                Ok(Sibling {
                    value: Value::from_json(value)?,
                    timestamp_ms: s.get("timestamp_ms").and_then(Json::as_u64),
                    expires_at_ms: s.get("expires_at_ms").and_then(Json::as_u64),
                    counter: s.get("counter").and_then(Json::as_bool).unwrap_or(false),
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let list = match fields.get("values") {
            None | Some(Json::Null) => &Vec::new(),
            Some(Json::Array(a)) => a,
            Some(_) => {
                return Err(SdkError::bad_response(
                    "the answer's values is not an array",
                ))
            }
        };
        list.iter()
            .map(|v| {
                Ok(Sibling {
                    value: Value::from_json(v)?,
                    timestamp_ms: None,
                    expires_at_ms: None,
                    counter: false,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let found = match fields.get("found") {
        Some(Json::Bool(b)) => *b,
        _ => !siblings.is_empty(),
    };
    Ok(GetAnswer {
        found,
        siblings,
        context,
    })
}

/// Checks that a request id is one the SDK can round-trip through a JS number.
fn check_id(id: u64) -> Result<u64> {
    if id == 0 || id > MAX_ID {
        return Err(SdkError::bad_request(format!(
            "request id {id} is outside 1..=2^53-1"
        )));
    }
    Ok(id)
}

/// Checks an optional context, giving the empty (blind) context for `None`.
fn context_arg(context: Option<&str>) -> Result<String> {
    let c = context.unwrap_or("");
    check_context(c)?;
    Ok(c.to_owned())
}

/// A get frame.
///
/// Errors: `bad_request` for an id out of range.
pub fn encode_get(id: u64, key: &str, r: Option<usize>, local: bool) -> Result<String> {
    let op = ClientOp::Get {
        key: key.to_owned(),
        r,
        local,
    };
    Ok(encode_request(check_id(id)?, &op))
}

/// A put frame. A value given as text (`form` [`ValueForm::Text`]) travels as `"value"` when
/// it is UTF-8; one given as bytes ([`ValueForm::Shortest`]) as `"value"` or `"value_b64"`,
/// whichever is shorter. With `ttl_s` the value expires that many seconds after the write.
///
/// Errors: `bad_request` for an id out of range, a corrupt context (caught here, before it
/// travels) or a time to live out of range.
pub fn encode_put(
    id: u64,
    key: &str,
    value: &[u8],
    form: ValueForm,
    context: Option<&str>,
    w: Option<usize>,
    ttl_s: Option<u64>,
) -> Result<String> {
    if let Some(t) = ttl_s.filter(|t| *t == 0 || *t > kv_core::wire::MAX_TTL_S) {
        return Err(SdkError::bad_request(format!(
            "the time to live must be from 1 to {} seconds, not {t}",
            kv_core::wire::MAX_TTL_S
        )));
    }
    let op = ClientOp::Put {
        key: key.to_owned(),
        value: value.to_vec(),
        context: context_arg(context)?,
        w,
        ttl_s,
    };
    Ok(encode_request_with(check_id(id)?, &op, form))
}

/// A delete frame (a versioned tombstone).
///
/// Errors: as [`encode_put`].
pub fn encode_delete(
    id: u64,
    key: &str,
    context: Option<&str>,
    w: Option<usize>,
) -> Result<String> {
    // No context asks the node to delete what it reads now; "" (a read that found nothing)
    // is kept as a context that saw nothing.
    let context = match context {
        Some(c) => Some(context_arg(Some(c))?),
        None => None,
    };
    let op = ClientOp::Delete {
        key: key.to_owned(),
        context,
        w,
    };
    Ok(encode_request(check_id(id)?, &op))
}

/// An incr request frame: add `by` to the key's counter.
///
/// Errors: `bad_request` for an id out of range.
pub fn encode_incr(id: u64, key: &str, by: i64, w: Option<usize>) -> Result<String> {
    let op = ClientOp::Incr {
        key: key.to_owned(),
        by,
        w,
    };
    Ok(encode_request(check_id(id)?, &op))
}

/// A frame for one of the argument-less ops (`ping`, `status`, `hints`).
///
/// Errors: `bad_request` for another op name or an id out of range.
pub fn encode_simple(id: u64, op: &str) -> Result<String> {
    let op = match op {
        "ping" => ClientOp::Ping,
        "status" => ClientOp::Status,
        "hints" => ClientOp::Hints,
        other => {
            return Err(SdkError::bad_request(format!(
                "{other:?} is not an op without arguments (ping, status, hints)"
            )))
        }
    };
    Ok(encode_request(check_id(id)?, &op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::version::VersionVector;
    use kv_core::wire::{decode_request, Limits};

    #[test]
    fn requests_round_trip_through_the_server_decoder() {
        let ctx = VersionVector::from_entries([("n1", 3)]).encode_context();
        let frame = encode_put(
            7,
            "k",
            &[0xff, 0, 1],
            ValueForm::Text,
            Some(&ctx),
            Some(2),
            Some(30),
        )
        .unwrap();
        let req = decode_request(&frame, &Limits::default()).unwrap();
        assert_eq!(req.id, 7);
        assert_eq!(
            req.op,
            ClientOp::Put {
                key: "k".into(),
                value: vec![0xff, 0, 1],
                context: ctx.clone(),
                w: Some(2),
                ttl_s: Some(30),
            }
        );
        assert!(frame.contains("value_b64"), "{frame}");
        let frame = encode_put(
            8,
            "k",
            "héllo".as_bytes(),
            ValueForm::Text,
            None,
            None,
            None,
        )
        .unwrap();
        assert!(frame.contains(r#""value":"héllo""#), "{frame}");
        // Control characters given as bytes go as base64 (shorter than their escapes); given
        // as text they stay text.
        let controls = [1u8; 64];
        let frame = encode_put(8, "k", &controls, ValueForm::Shortest, None, None, None).unwrap();
        assert!(frame.contains("value_b64"), "{frame}");
        let frame = encode_put(8, "k", &controls, ValueForm::Text, None, None, None).unwrap();
        assert!(frame.contains(r#""value":"\u0001"#), "{frame}");
        let req = decode_request(
            &encode_get(9, "k", Some(3), true).unwrap(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            req.op,
            ClientOp::Get {
                key: "k".into(),
                r: Some(3),
                local: true
            }
        );
        // A context is sent as given, "" included; no context stays none (the node then
        // deletes what it reads).
        for (given, sent) in [
            (Some(ctx.as_str()), Some(ctx.clone())),
            (Some(""), Some(String::new())),
            (None, None),
        ] {
            let req = decode_request(
                &encode_delete(10, "k", given, None).unwrap(),
                &Limits::default(),
            )
            .unwrap();
            assert_eq!(
                req.op,
                ClientOp::Delete {
                    key: "k".into(),
                    context: sent,
                    w: None
                }
            );
        }
        let req = decode_request(&encode_simple(11, "ping").unwrap(), &Limits::default()).unwrap();
        assert_eq!(req.op, ClientOp::Ping);
    }

    #[test]
    fn bad_arguments_fail_before_sending() {
        let err =
            encode_put(1, "k", b"v", ValueForm::Text, Some("garbage!"), None, None).unwrap_err();
        assert_eq!(err.code, "bad_request");
        assert!(err.message.contains("corrupt"), "{}", err.message);
        assert!(encode_delete(1, "k", Some("AQ"), None).is_err());
        assert!(encode_get(0, "k", None, false).is_err());
        assert!(encode_get(MAX_ID + 1, "k", None, false).is_err());
        assert!(encode_simple(1, "put").is_err());
    }

    #[test]
    fn decodes_a_get_answer_into_siblings() {
        let text = r#"{"id":4,"ok":true,"key":"k","found":true,"values":["a",{"value_b64":"/wA="}],
            "siblings":[{"value":"a","timestamp_ms":5},{"value":{"value_b64":"/wA="},"timestamp_ms":9,"expires_at_ms":60000}],
            "context":"AQEEbjEBAQ"}"#;
        let resp = decode_response(text).unwrap();
        assert_eq!(resp.id, Some(4));
        let fields = resp.outcome.unwrap();
        assert_eq!(fields["key"], "k");
        let ans = decode_get_answer(&fields).unwrap();
        assert!(ans.found);
        assert_eq!(ans.context, "AQEEbjEBAQ");
        assert_eq!(
            ans.siblings,
            vec![
                Sibling {
                    value: Value::Text("a".into()),
                    timestamp_ms: Some(5),
                    expires_at_ms: None,
                    counter: false,
                },
                Sibling {
                    value: Value::Bytes(vec![0xff, 0]),
                    timestamp_ms: Some(9),
                    expires_at_ms: Some(60_000),
                    counter: false,
                },
            ]
        );
    }

    #[test]
    fn decodes_values_without_siblings_and_absent_keys() {
        let fields = decode_response(r#"{"id":1,"ok":true,"values":["x"],"context":""}"#)
            .unwrap()
            .outcome
            .unwrap();
        let ans = decode_get_answer(&fields).unwrap();
        assert!(ans.found);
        assert_eq!(ans.siblings[0].timestamp_ms, None);
        let fields =
            decode_response(r#"{"id":1,"ok":true,"found":false,"values":[],"siblings":[]}"#)
                .unwrap()
                .outcome
                .unwrap();
        let ans = decode_get_answer(&fields).unwrap();
        assert!(!ans.found);
        assert!(ans.siblings.is_empty());
        assert_eq!(ans.context, "");
    }

    #[test]
    fn decodes_error_answers_with_their_code() {
        let resp = decode_response(
            r#"{"id":3,"ok":false,"error":{"code":"unavailable","message":"n2: down"}}"#,
        )
        .unwrap();
        assert_eq!(resp.id, Some(3));
        assert_eq!(
            resp.outcome.unwrap_err(),
            SdkError::new("unavailable", "n2: down")
        );
        let resp = decode_response(
            r#"{"id":null,"ok":false,"error":{"code":"bad_request","message":"m"}}"#,
        )
        .unwrap();
        assert_eq!(resp.id, None);
    }

    #[test]
    fn malformed_frames_are_bad_responses() {
        for text in [
            "not json",
            "[1]",
            r#"{"id":1}"#,
            r#"{"id":"x","ok":true}"#,
            r#"{"id":-1,"ok":true}"#,
            r#"{"id":1,"ok":false}"#,
        ] {
            assert_eq!(
                decode_response(text).unwrap_err().code,
                "bad_response",
                "{text}"
            );
        }
        let fields = decode_response(r#"{"id":1,"ok":true,"values":[3]}"#)
            .unwrap()
            .outcome
            .unwrap();
        assert_eq!(decode_get_answer(&fields).unwrap_err().code, "bad_response");
        // The id still names the request a malformed answer was for, when it is readable.
        for (text, id) in [
            (r#"{"id":1,"ok":true,"values":5}"#, Some(1)),
            (r#"{"id":7,"ok":"yes"}"#, Some(7)),
            (r#"{"id":0,"ok":"yes"}"#, None),
            (r#"{"id":"7","ok":true}"#, None),
            (r#"{"id":7,"ok":tru"#, None),
            ("[7]", None),
        ] {
            assert_eq!(answer_id(text), id, "{text}");
        }
    }
}
