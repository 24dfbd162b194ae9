//! WebSocket frame heads (RFC 6455 section 5.2): parsing, writing and masking, without I/O.
//! The node's client connections and the load generator frame their messages with these
//! (each applies its own side's rules: who masks, what is refused).

/// Continuation of a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text message.
pub const OP_TEXT: u8 = 0x1;
/// Binary message.
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;

/// The head of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The last frame of its message.
    pub fin: bool,
    /// The three reserved bits (non-zero only under an extension).
    pub rsv: u8,
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length as announced.
    pub len: u64,
    /// Bytes of the head itself (2 to 14).
    pub size: usize,
}

impl Head {
    /// A control frame (close, ping, pong).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Parses the head at the start of `buf`; `None` when `buf` does not hold all of it yet.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, at) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as u64,
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (n as u64, 2),
    };
    let (mask, size) = if b1 & 0x80 != 0 {
        (Some(buf.get(at..at + 4)?.try_into().ok()?), at + 4)
    } else {
        (None, at)
    };
    Some(Head {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        len,
        size,
    })
}

/// Appends the head of a final frame of `opcode` carrying `len` bytes, masked with `mask`
/// when given (the payload must then be masked with [`apply_mask`]).
pub fn put_head(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(masked | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(masked | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(masked | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// XORs `data` with the 4-byte `mask` (masking and unmasking are the same), eight bytes at
/// a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_at_every_length_form() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 33] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut out = Vec::new();
                put_head(&mut out, OP_TEXT, len, mask);
                let head = parse_head(&out).expect("a whole head");
                assert_eq!(
                    head,
                    Head {
                        fin: true,
                        rsv: 0,
                        opcode: OP_TEXT,
                        mask,
                        len: len as u64,
                        size: out.len()
                    }
                );
                for cut in 0..out.len() {
                    assert_eq!(parse_head(&out[..cut]), None, "{len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn masking_matches_the_byte_by_byte_rule_and_undoes_itself() {
        let mask = [1, 2, 3, 250];
        for n in 0..40 {
            let plain: Vec<u8> = (0..n as u8).collect();
            let mut data = plain.clone();
            apply_mask(&mut data, mask);
            let by_byte: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(data, by_byte, "length {n}");
            apply_mask(&mut data, mask);
            assert_eq!(data, plain);
        }
    }
}
