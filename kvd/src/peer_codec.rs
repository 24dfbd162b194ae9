//! Binary frames for the peer messages of the request path.
//!
//! Every client write and read turns into peer messages (`Mint`, `Replicate`, `Read` and their
//! answers `Minted`, `Ack`, `State`, `Error`); as JSON they carried every state in base64 and
//! cost more to encode and parse than to apply. These travel as binary WebSocket frames:
//!
//! ```text
//! frame   = kind:u8 id:u64le body
//! bytes   = len:u32le byte*          string = bytes (UTF-8)
//! option  = 0 | 1 item
//! Mint      (1)    key:string value:option<bytes> context:string
//! MintTtl   (4)    key:string value:option<bytes> context:string ttl_ms:u64le
//! Increment (5)    key:string by:i64le
//! Replicate (2)    key:string state:bytes hint_for:option<string>
//! Read      (3)    key:string with_hints:u8
//! Minted    (129)  state:bytes write_context:string capped:u64le
//! Ack       (130)
//! State     (131)  state:option<bytes>
//! Error     (132)  message:string
//! ```
//!
//! Every other message stays a JSON text frame (`{"id", "body"}`): they are rare, and JSON
//! keeps them readable. Decoding checks every length against what is left and rejects
//! trailing bytes, so a damaged frame is an error, never a misread message.

use crate::peer::{PeerRequest, PeerResponse};

const MINT: u8 = 1;
const REPLICATE: u8 = 2;
const READ: u8 = 3;
/// A `Mint` of a value with a time to live (a plain write keeps the frame of kind 1).
const MINT_TTL: u8 = 4;
const INCREMENT: u8 = 5;
const MINTED: u8 = 129;
const ACK: u8 = 130;
const STATE: u8 = 131;
const ERROR: u8 = 132;

/// The binary frame of `req` with `id`, or `None` when the message travels as JSON.
pub fn encode_request(id: u64, req: &PeerRequest) -> Option<Vec<u8>> {
    let mut out;
    match req {
        PeerRequest::Mint {
            key,
            value,
            ttl_ms,
            context,
        } => {
            out = header(
                if ttl_ms.is_some() { MINT_TTL } else { MINT },
                id,
                key.len() + value.as_ref().map_or(0, Vec::len) + 64,
            );
            put_bytes(&mut out, key.as_bytes());
            put_option(&mut out, value.as_deref());
            put_bytes(&mut out, context.as_bytes());
            if let Some(t) = ttl_ms {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        PeerRequest::Replicate {
            key,
            state,
            hint_for,
        } => out = encode_replicate(id, key, state, hint_for.as_deref()),
        PeerRequest::Increment { key, by } => {
            out = header(INCREMENT, id, key.len() + 12);
            put_bytes(&mut out, key.as_bytes());
            out.extend_from_slice(&by.to_le_bytes());
        }
        PeerRequest::Read { key, with_hints } => {
            out = header(READ, id, key.len() + 16);
            put_bytes(&mut out, key.as_bytes());
            out.push(u8::from(*with_hints));
        }
        _ => return None,
    }
    Some(out)
}

/// The binary frame of a `Replicate` request made of borrowed parts.
pub fn encode_replicate(id: u64, key: &str, state: &[u8], hint_for: Option<&str>) -> Vec<u8> {
    let mut out = header(REPLICATE, id, key.len() + state.len() + 64);
    put_bytes(&mut out, key.as_bytes());
    put_bytes(&mut out, state);
    put_option(&mut out, hint_for.map(str::as_bytes));
    out
}

/// The binary frame of `resp` with `id`, or `None` when the message travels as JSON.
pub fn encode_response(id: u64, resp: &PeerResponse) -> Option<Vec<u8>> {
    let mut out;
    match resp {
        PeerResponse::Minted {
            state,
            write_context,
            capped,
        } => {
            out = header(MINTED, id, state.len() + write_context.len() + 24);
            put_bytes(&mut out, state);
            put_bytes(&mut out, write_context.as_bytes());
            out.extend_from_slice(&(*capped as u64).to_le_bytes());
        }
        PeerResponse::Ack => out = header(ACK, id, 0),
        PeerResponse::State { state } => {
            out = header(STATE, id, state.as_ref().map_or(0, Vec::len) + 8);
            put_option(&mut out, state.as_deref());
        }
        PeerResponse::Error { message } => {
            out = header(ERROR, id, message.len() + 4);
            put_bytes(&mut out, message.as_bytes());
        }
        _ => return None,
    }
    Some(out)
}

/// Decodes a binary request frame: its id and the request.
pub fn decode_request(frame: &[u8]) -> Result<(u64, PeerRequest), String> {
    let mut r = Reader::new(frame);
    let (kind, id) = (r.u8()?, r.u64()?);
    let req = match kind {
        MINT | MINT_TTL => PeerRequest::Mint {
            key: r.string()?,
            value: r.option()?.map(<[u8]>::to_vec),
            context: r.string()?,
            ttl_ms: match kind {
                MINT_TTL => Some(r.u64()?),
                _ => None,
            },
        },
        REPLICATE => PeerRequest::Replicate {
            key: r.string()?,
            state: r.bytes()?.to_vec(),
            hint_for: match r.option()? {
                Some(b) => Some(utf8(b)?),
                None => None,
            },
        },
        READ => PeerRequest::Read {
            key: r.string()?,
            with_hints: r.flag()?,
        },
        INCREMENT => PeerRequest::Increment {
            key: r.string()?,
            by: r.u64()? as i64,
        },
        other => return Err(format!("unknown peer request kind {other}")),
    };
    r.finish()?;
    Ok((id, req))
}

/// Decodes a binary answer frame: the id it answers and the answer.
pub fn decode_response(frame: &[u8]) -> Result<(u64, PeerResponse), String> {
    let mut r = Reader::new(frame);
    let (kind, id) = (r.u8()?, r.u64()?);
    let resp = match kind {
        MINTED => PeerResponse::Minted {
            state: r.bytes()?.to_vec(),
            write_context: r.string()?,
            capped: usize::try_from(r.u64()?).map_err(|_| "sibling count out of range")?,
        },
        ACK => PeerResponse::Ack,
        STATE => PeerResponse::State {
            state: r.option()?.map(<[u8]>::to_vec),
        },
        ERROR => PeerResponse::Error {
            message: r.string()?,
        },
        other => return Err(format!("unknown peer answer kind {other}")),
    };
    r.finish()?;
    Ok((id, resp))
}

fn header(kind: u8, id: u64, body: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body);
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Frames are bounded far below 4 GiB by the WebSocket limits.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_option(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// Reads fields off a frame, every length checked against what is left.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(frame: &'a [u8]) -> Reader<'a> {
        Reader { rest: frame }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err(format!(
                "truncated peer frame: {n} bytes needed, {} left",
                self.rest.len()
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        self.take(u32::from_le_bytes(b) as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        utf8(self.bytes()?)
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bad flag byte {b}")),
        }
    }

    fn option(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.flag()? {
            true => self.bytes().map(Some),
            false => Ok(None),
        }
    }

    fn finish(&self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} unexpected bytes after a peer message",
                self.rest.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requests() -> impl Strategy<Value = PeerRequest> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (
                ".{0,12}",
                proptest::option::of(bytes.clone()),
                ".{0,12}",
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(key, value, context, ttl_ms)| PeerRequest::Mint {
                    key,
                    value,
                    ttl_ms,
                    context
                }),
            (".{0,12}", bytes, proptest::option::of(".{0,8}")).prop_map(
                |(key, state, hint_for)| PeerRequest::Replicate {
                    key,
                    state,
                    hint_for
                }
            ),
            (".{0,12}", any::<bool>())
                .prop_map(|(key, with_hints)| PeerRequest::Read { key, with_hints }),
            (".{0,12}", any::<i64>()).prop_map(|(key, by)| PeerRequest::Increment { key, by }),
        ]
    }

    fn responses() -> impl Strategy<Value = PeerResponse> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (bytes.clone(), ".{0,12}", 0usize..70).prop_map(|(state, write_context, capped)| {
                PeerResponse::Minted {
                    state,
                    write_context,
                    capped,
                }
            }),
            Just(PeerResponse::Ack),
            proptest::option::of(bytes).prop_map(|state| PeerResponse::State { state }),
            ".{0,20}".prop_map(|message| PeerResponse::Error { message }),
        ]
    }

    proptest! {
        /// Law: decode(encode(m)) == m, for every binary message and id.
        #[test]
        fn requests_round_trip(id in any::<u64>(), req in requests()) {
            let frame = encode_request(id, &req).unwrap();
            let (id2, back) = decode_request(&frame).unwrap();
            prop_assert_eq!(id2, id);
            prop_assert_eq!(format!("{back:?}"), format!("{req:?}"));
        }

        #[test]
        fn responses_round_trip(id in any::<u64>(), resp in responses()) {
            let frame = encode_response(id, &resp).unwrap();
            let (id2, back) = decode_response(&frame).unwrap();
            prop_assert_eq!(id2, id);
            prop_assert_eq!(format!("{back:?}"), format!("{resp:?}"));
        }

        /// Law: a damaged frame is an error or some message, never a panic; a cut frame is
        /// always an error.
        #[test]
        fn damaged_frames_never_panic(req in requests(), cut in any::<prop::sample::Index>(),
                                      garbage in proptest::collection::vec(any::<u8>(), 0..80)) {
            let frame = encode_request(7, &req).unwrap();
            let at = cut.index(frame.len());
            prop_assert!(decode_request(&frame[..at]).is_err());
            let _ = decode_request(&garbage);
            let _ = decode_response(&garbage);
        }
    }

    #[test]
    fn other_messages_stay_json() {
        assert!(encode_request(1, &PeerRequest::Stats).is_none());
        assert!(encode_response(1, &PeerResponse::Decommissioned { moved_keys: 3 }).is_none());
    }

    #[test]
    fn trailing_bytes_and_unknown_kinds_are_refused() {
        let mut frame = encode_response(3, &PeerResponse::Ack).unwrap();
        frame.push(0);
        assert!(decode_response(&frame)
            .unwrap_err()
            .contains("unexpected bytes"));
        frame[0] = 77;
        assert!(decode_response(&frame).unwrap_err().contains("unknown"));
    }
}
