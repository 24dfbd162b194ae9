//! The checks the kv-core fuzz targets run on each input. The same functions replay every
//! stored input in `kv-core/tests/fuzz_regressions.rs`, so a regression test runs exactly
//! what the fuzzer ran.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kv_core::version::{compare_contexts, decode_context, Causality, SiblingSet};
use kv_core::wire::{
    decode_request, decode_request_by_serde, encode_request, error_response, value_from_json,
    Limits,
};

use crate::input::Input;

/// Client frames: `decode_request` on any text, under the default limits and under small ones
/// (so the too-large paths are reached), and `value_from_json` on any JSON value.
///
/// Checked: no panic; the short way of reading a request (`kv_core::json`) gives what
/// serde_json alone gives, request or error; an error answer always serializes; a request
/// that decodes re-encodes (as kvcli and the SDK send it) to a frame that decodes to the same
/// request.
pub fn wire_decode(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let small = Limits {
        max_key_bytes: 16,
        max_value_bytes: 64,
        max_frame_bytes: 512,
    };
    for limits in [Limits::default(), small] {
        assert_eq!(
            decode_request(&text, &limits),
            decode_request_by_serde(&text, &limits),
            "{text:?}"
        );
        match decode_request(&text, &limits) {
            Ok(req) => {
                let frame = encode_request(req.id, &req.op);
                let again = decode_request(&frame, &Limits::default())
                    .unwrap_or_else(|e| panic!("re-encoded {frame} does not decode: {e:?}"));
                assert_eq!(again.id, req.id);
                assert_eq!(again.op, req.op, "frame {frame}");
            }
            Err((id, e)) => {
                let answer = error_response(id, &e);
                assert!(serde_json::from_str::<serde_json::Value>(&answer).is_ok());
            }
        }
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        let _ = value_from_json(&v);
    }
}

fn mirror(c: Causality) -> Causality {
    match c {
        Causality::Before => Causality::After,
        Causality::After => Causality::Before,
        other => other,
    }
}

fn check_context(s: &str) {
    if let Ok(vv) = decode_context(s) {
        // Canonical: the only string that decodes to a vector is that vector's encoding.
        assert_eq!(vv.encode_context(), s, "context {s:?} is not canonical");
    }
}

/// Causal contexts: `decode_context` on any string and on the base64 of any bytes (which
/// reaches the binary decoder behind the base64 layer), and `compare_contexts` on pairs.
///
/// Checked: no panic; decoding is canonical (a context that decodes re-encodes to the very
/// same string); comparing a with b mirrors comparing b with a.
pub fn context_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = match mode % 3 {
        0 => (String::from_utf8_lossy(rest).into_owned(), String::new()),
        1 => {
            // Binary contexts, base64-wrapped: the format byte and vector follow.
            let mid = rest.len() / 2;
            (
                URL_SAFE_NO_PAD.encode(&rest[..mid]),
                URL_SAFE_NO_PAD.encode(&rest[mid..]),
            )
        }
        _ => {
            let s = String::from_utf8_lossy(rest).into_owned();
            match s.split_once('|') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => (s, String::new()),
            }
        }
    };
    check_context(&a);
    check_context(&b);
    if let (Ok(ab), Ok(ba)) = (compare_contexts(&a, &b), compare_contexts(&b, &a)) {
        assert_eq!(ab, mirror(ba));
    }
}

fn roundtrips(s: &SiblingSet) {
    let enc = s.encode();
    let back = SiblingSet::decode(&enc).expect("an encoded set decodes");
    assert_eq!(&back, s);
}

/// Stored sibling sets: `SiblingSet::decode` on any bytes, and the operations the node runs on
/// what it decoded (sync with another replica's set, a client update).
///
/// Checked: no panic; decoding is canonical (a set that decodes re-encodes to the very same
/// bytes, as the Merkle trees hash them); sync is idempotent; sync and update keep a set
/// that encodes and decodes back to itself (siblings sorted, every dot covered).
pub fn sibling_set_decode(data: &[u8]) {
    let mut input = Input::new(data);
    let split = usize::from(input.u16());
    let rest = input.rest();
    let (a, b) = rest.split_at(split.min(rest.len()));
    let sa = SiblingSet::decode(a);
    if let Ok(s) = &sa {
        assert_eq!(s.encode(), a, "decode accepted a non-canonical encoding");
        assert_eq!(&s.synced(s), s, "sync is not idempotent");
        let _ = (s.values(), s.lww(), s.is_deleted(), s.newest_timestamp());
    }
    let sb = SiblingSet::decode(b);
    if let (Ok(x), Ok(y)) = (&sa, &sb) {
        roundtrips(&x.synced(y));
        roundtrips(&y.synced(x));
        let mut u = x.clone();
        let value = if b.first().is_some_and(|f| f.is_multiple_of(2)) {
            None
        } else {
            Some(b.to_vec())
        };
        u.update(y.context(), "fuzz-actor", value, 42);
        roundtrips(&u);
    }
}
