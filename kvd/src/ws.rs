//! WebSocket framing of a client connection, after its handshake (RFC 6455, server side, no
//! extensions).
//!
//! Requests arrive as small text frames, one per request, and each answer leaves as one: on
//! this path the general WebSocket layer (a stream and a sink split over a lock, a message
//! allocated per frame, its read chunk zeroed before every read) cost about a fifth of the
//! node's instructions per request. Here frames are parsed where the socket's bytes landed,
//! unmasked in place and handed over as `&str`; answers are framed straight into one write
//! buffer, written with one system call for all the answers ready at that moment.
//!
//! What a server must do is done: client frames must be masked; reserved bits, unknown
//! opcodes, fragmented or oversized control frames and text that is not UTF-8 end the
//! connection with a close frame giving the reason; fragmented messages are assembled up to
//! the size limit; pings are answered with pongs; a close is answered with a close. A frame
//! or message over the limit is refused from its header, before its payload is buffered.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use kv_core::ws_frame::{
    apply_mask, parse_head, put_head, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG,
    OP_TEXT,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time; a bigger frame grows the buffer to its size.
const READ_CHUNK: usize = 16 * 1024;
/// Buffers grown past this (by a big frame or answer) are given back once emptied.
const KEEP_BYTES: usize = 256 * 1024;

/// Close codes (RFC 6455 section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_NOT_UTF8: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text message: read it with [`ServerWs::text`] (which checks it is UTF-8) before
    /// polling again.
    Text(TextAt),
    /// A binary message (its payload is not kept).
    Binary,
    /// A ping (its pong is queued) or a pong: no message, but the client is alive.
    Control,
    /// The client closed (its close frame is answered by [`ServerWs::close`]).
    Close,
}

/// Where a text message's bytes are until the next poll.
#[derive(Debug, PartialEq, Eq)]
pub enum TextAt {
    /// One frame, in the read buffer.
    Buffer(Range<usize>),
    /// Assembled from fragments.
    Assembled,
}

/// Why the connection cannot go on.
#[derive(Debug)]
pub enum WsError {
    /// The socket failed.
    Io(io::Error),
    /// The client broke the protocol; a close frame saying so is queued.
    Protocol(String),
    /// A frame or message over the limit; a close frame saying so is queued.
    TooLarge(String),
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Io(e) => write!(f, "{e}"),
            WsError::Protocol(m) | WsError::TooLarge(m) => write!(f, "{m}"),
        }
    }
}

/// The server end of a WebSocket over `S`.
pub struct ServerWs<S> {
    io: S,
    /// Bytes read: `rbuf[start..end]` not yet parsed. Initialized once; reads land in place.
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// The opcode and payload so far of a fragmented message.
    partial: Option<(u8, Vec<u8>)>,
    /// The last assembled message (see [`TextAt::Assembled`]).
    assembled: Vec<u8>,
    /// Frames to write: `wbuf[written..]` not yet written.
    wbuf: Vec<u8>,
    written: usize,
    /// Bytes were written and the socket not flushed since (a TLS layer may hold them).
    unflushed: bool,
    /// Largest message accepted, in bytes.
    max_message: usize,
    /// Nothing more is read: the client closed, or broke the protocol.
    input_done: bool,
    /// The close frame's body [`ServerWs::close`] sends: the client's code echoed, or the
    /// code and reason of a failure (normal closure when none).
    close_body: Option<Vec<u8>>,
    /// The close frame is queued: nothing more is written.
    sent_close: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerWs<S> {
    /// Frames over `io`, starting with `already_read` (bytes the handshake read past its head).
    pub fn new(io: S, already_read: Vec<u8>, max_message: usize) -> ServerWs<S> {
        let mut rbuf = already_read;
        let end = rbuf.len();
        rbuf.resize(end.max(READ_CHUNK), 0);
        ServerWs {
            io,
            rbuf,
            start: 0,
            end,
            partial: None,
            assembled: Vec::new(),
            wbuf: Vec::with_capacity(4096),
            written: 0,
            unflushed: false,
            max_message,
            input_done: false,
            close_body: None,
            sent_close: false,
        }
    }

    /// The text of a message returned by the last poll. Its bytes are checked for UTF-8
    /// here, once (not when the frame is parsed, which would check them twice): text that
    /// is not UTF-8 fails the connection, as a protocol violation does in a poll.
    pub fn text(&mut self, at: &TextAt) -> Result<&str, WsError> {
        let (bytes, why) = match at {
            TextAt::Buffer(r) => (&self.rbuf[r.clone()], "a text frame that is not UTF-8"),
            TextAt::Assembled => (&self.assembled[..], "a text message that is not UTF-8"),
        };
        std::str::from_utf8(bytes).map_err(|_| {
            failure(
                &mut self.close_body,
                &mut self.input_done,
                CLOSE_NOT_UTF8,
                why,
            )
        })
    }

    /// The next complete message; `None` when the client closed the socket (or after a close
    /// frame). Pings are answered (queued for the next flush) and pongs dropped on the way.
    pub fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Incoming>, WsError>> {
        if self.input_done {
            return Poll::Ready(Ok(None));
        }
        loop {
            if let Some(msg) = self.parse()? {
                return Poll::Ready(Ok(Some(msg)));
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                if self.rbuf.len() > KEEP_BYTES {
                    self.rbuf = vec![0; READ_CHUNK];
                }
            } else if self.rbuf.len() - self.end < READ_CHUNK / 4 && self.start > 0 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.rbuf.len() {
                let grown = (self.rbuf.len() * 2).max(READ_CHUNK);
                self.rbuf.resize(grown, 0);
            }
            let mut buf = ReadBuf::new(&mut self.rbuf[self.end..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)).map_err(WsError::Io)?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            self.end += n;
        }
    }

    /// Parses one frame from the buffer: a complete message, or `None` when more bytes are
    /// needed (or the frame was a control frame or a fragment, handled here).
    fn parse(&mut self) -> Result<Option<Incoming>, WsError> {
        loop {
            let have = &self.rbuf[self.start..self.end];
            let Some(h) = parse_head(have) else {
                return Ok(None);
            };
            let (fin, opcode) = (h.fin, h.opcode);
            if h.rsv != 0 {
                return Err(self.fail(CLOSE_PROTOCOL, "reserved bits set: no extension was agreed"));
            }
            let Some(mask) = h.mask else {
                return Err(self.fail(CLOSE_PROTOCOL, "client frames must be masked"));
            };
            if h.is_control() && (!fin || h.len > 125) {
                return Err(self.fail(CLOSE_PROTOCOL, "control frames must be whole and short"));
            }
            let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
            if !h.is_control() && h.len.saturating_add(so_far) > self.max_message as u64 {
                let what = format!(
                    "a message of {} bytes or more is over the limit of {} bytes",
                    h.len.saturating_add(so_far),
                    self.max_message
                );
                return Err(self.fail(CLOSE_TOO_BIG, &what));
            }
            let (len, head) = (h.len as usize, h.size);
            if have.len() < head + len {
                // Room for the whole frame, so the reads can complete it.
                let need = head + len;
                if self.rbuf.len() - self.start < need {
                    self.rbuf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    if self.rbuf.len() < need {
                        self.rbuf.resize(need.max(READ_CHUNK), 0);
                    }
                }
                return Ok(None);
            }
            let payload = self.start + head..self.start + head + len;
            self.start += head + len;
            apply_mask(&mut self.rbuf[payload.clone()], mask);
            match opcode {
                OP_TEXT | OP_BINARY if self.partial.is_some() => {
                    return Err(self.fail(CLOSE_PROTOCOL, "a new message inside a fragmented one"));
                }
                OP_TEXT | OP_BINARY if !fin => {
                    self.partial = Some((opcode, self.rbuf[payload].to_vec()));
                }
                OP_TEXT => return Ok(Some(Incoming::Text(TextAt::Buffer(payload)))),
                OP_BINARY => return Ok(Some(Incoming::Binary)),
                OP_CONTINUATION => {
                    let Some((first, mut so_far)) = self.partial.take() else {
                        return Err(self.fail(CLOSE_PROTOCOL, "a continuation of no message"));
                    };
                    so_far.extend_from_slice(&self.rbuf[payload]);
                    if !fin {
                        self.partial = Some((first, so_far));
                        continue;
                    }
                    if first == OP_BINARY {
                        return Ok(Some(Incoming::Binary));
                    }
                    self.assembled = so_far;
                    return Ok(Some(Incoming::Text(TextAt::Assembled)));
                }
                OP_PING => {
                    let body = self.rbuf[payload].to_vec();
                    self.frame(OP_PONG, &body);
                    return Ok(Some(Incoming::Control));
                }
                OP_PONG => return Ok(Some(Incoming::Control)),
                OP_CLOSE => {
                    // Answered with the client's code (or none when it gave none).
                    let code = self.rbuf[payload].get(..2).unwrap_or_default().to_vec();
                    self.close_body = Some(code);
                    self.input_done = true;
                    return Ok(Some(Incoming::Close));
                }
                _ => return Err(self.fail(CLOSE_PROTOCOL, "an unknown opcode")),
            }
        }
    }

    /// Stops reading and makes the close frame give `code` and `why` (answers queued before
    /// [`ServerWs::close`] still go first); gives the error for it.
    fn fail(&mut self, code: u16, why: &str) -> WsError {
        failure(&mut self.close_body, &mut self.input_done, code, why)
    }

    /// Queues a text message (written by the next flush).
    pub fn feed_text(&mut self, text: &str) {
        if !self.sent_close {
            self.frame(OP_TEXT, text.as_bytes());
        }
    }

    /// Appends one unmasked frame to the write buffer.
    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        self.wbuf.reserve(payload.len() + 10);
        put_head(&mut self.wbuf, opcode, payload.len(), None);
        self.wbuf.extend_from_slice(payload);
    }

    /// Bytes queued and not yet written.
    pub fn unwritten(&self) -> usize {
        self.wbuf.len() - self.written
    }

    /// Something is queued, or written and not yet flushed.
    pub fn wants_flush(&self) -> bool {
        self.unflushed || self.written < self.wbuf.len()
    }

    /// Writes everything queued and flushes the socket.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.unflushed = true;
        }
        self.wbuf.clear();
        self.written = 0;
        if self.wbuf.capacity() > KEEP_BYTES {
            self.wbuf = Vec::with_capacity(4096);
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Queues the close frame after what is queued (see `close_body`), writes it all and
    /// shuts the socket.
    pub async fn close(&mut self) {
        if !self.sent_close {
            let body = self
                .close_body
                .take()
                .unwrap_or_else(|| CLOSE_NORMAL.to_be_bytes().to_vec());
            self.frame(OP_CLOSE, &body);
            self.sent_close = true;
        }
        if std::future::poll_fn(|cx| self.poll_flush(cx)).await.is_ok() {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await;
        }
    }
}

/// [`ServerWs::fail`] on the two fields it sets, so that it can be called while the read
/// buffer is borrowed.
fn failure(
    close_body: &mut Option<Vec<u8>>,
    input_done: &mut bool,
    code: u16,
    why: &str,
) -> WsError {
    if !*input_done {
        let mut body = code.to_be_bytes().to_vec();
        // A close frame's reason fits in 123 bytes.
        let mut cut = why.len().min(123);
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        body.extend_from_slice(&why.as_bytes()[..cut]);
        *close_body = Some(body);
        *input_done = true;
    }
    match code {
        CLOSE_TOO_BIG => WsError::TooLarge(why.to_string()),
        _ => WsError::Protocol(why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = Vec::new();
        put_head(&mut out, opcode, payload.len(), Some(mask));
        if !fin {
            out[0] &= 0x7F;
        }
        let at = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[at..], mask);
        out
    }

    /// The next message, pings and pongs passed over.
    async fn next(ws: &mut ServerWs<tokio::io::DuplexStream>) -> Result<Option<String>, String> {
        loop {
            return match poll_fn(|cx| ws.poll_message(cx)).await {
                Ok(Some(Incoming::Text(at))) => ws
                    .text(&at)
                    .map(|t| Some(t.to_string()))
                    .map_err(|e| e.to_string()),
                Ok(Some(Incoming::Binary)) => Ok(Some("<binary>".into())),
                Ok(Some(Incoming::Control)) => continue,
                Ok(Some(Incoming::Close)) => Ok(Some("<close>".into())),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
        }
    }

    fn pair(max: usize) -> (ServerWs<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (ServerWs::new(a, Vec::new(), max), b)
    }

    /// Reads one unmasked server frame: (opcode, payload).
    async fn server_frame(c: &mut tokio::io::DuplexStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        c.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7F {
            126 => c.read_u16().await.unwrap() as usize,
            127 => c.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut p = vec![0; len];
        c.read_exact(&mut p).await.unwrap();
        (h[0] & 0x0F, p)
    }

    #[tokio::test]
    async fn frames_of_every_length_arrive_whole_even_split_byte_by_byte() {
        let (mut ws, mut c) = pair(1 << 20);
        let texts: Vec<String> = [0, 1, 7, 125, 126, 127, 65535, 65536, 200_000]
            .iter()
            .map(|&n| "é".repeat(n / 2) + &"x".repeat(n % 2))
            .collect();
        let mut bytes = Vec::new();
        for t in &texts {
            bytes.extend(client_frame(true, OP_TEXT, t.as_bytes()));
        }
        let writer = tokio::spawn(async move {
            // The first frames a byte at a time, the rest at once.
            for b in &bytes[..300] {
                c.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            c.write_all(&bytes[300..]).await.unwrap();
            c
        });
        for t in &texts {
            assert_eq!(next(&mut ws).await.unwrap().as_deref(), Some(t.as_str()));
        }
        drop(writer.await.unwrap());
        assert_eq!(next(&mut ws).await.unwrap(), None, "end of stream");
    }

    #[tokio::test]
    async fn fragments_are_assembled_and_pings_answered_between_them() {
        let (mut ws, mut c) = pair(1 << 20);
        c.write_all(&client_frame(false, OP_TEXT, b"hel"))
            .await
            .unwrap();
        c.write_all(&client_frame(true, OP_PING, b"p1"))
            .await
            .unwrap();
        c.write_all(&client_frame(false, OP_CONTINUATION, b"lo "))
            .await
            .unwrap();
        c.write_all(&client_frame(true, OP_PONG, b"ignored"))
            .await
            .unwrap();
        c.write_all(&client_frame(true, OP_CONTINUATION, "wörld".as_bytes()))
            .await
            .unwrap();
        c.write_all(&client_frame(true, OP_BINARY, b"\x00\x01"))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await.unwrap().as_deref(), Some("hello wörld"));
        assert_eq!(next(&mut ws).await.unwrap().as_deref(), Some("<binary>"));
        ws.feed_text("answer");
        poll_fn(|cx| ws.poll_flush(cx)).await.unwrap();
        assert_eq!(server_frame(&mut c).await, (OP_PONG, b"p1".to_vec()));
        assert_eq!(server_frame(&mut c).await, (OP_TEXT, b"answer".to_vec()));
        // A long answer takes the 16-bit and 64-bit length forms.
        for n in [300, 70_000] {
            ws.feed_text(&"a".repeat(n));
            poll_fn(|cx| ws.poll_flush(cx)).await.unwrap();
            assert_eq!(server_frame(&mut c).await.1.len(), n);
        }
    }

    #[tokio::test]
    async fn a_close_is_answered_with_the_same_code() {
        let (mut ws, mut c) = pair(1 << 20);
        c.write_all(&client_frame(
            true,
            OP_CLOSE,
            &[0x03, 0xE8, b'b', b'y', b'e'],
        ))
        .await
        .unwrap();
        assert_eq!(next(&mut ws).await.unwrap().as_deref(), Some("<close>"));
        assert_eq!(next(&mut ws).await.unwrap(), None, "nothing after a close");
        ws.close().await;
        assert_eq!(server_frame(&mut c).await, (OP_CLOSE, vec![0x03, 0xE8]));
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "one close frame only: {rest:?}");
    }

    #[tokio::test]
    async fn protocol_violations_end_the_connection_with_a_reason() {
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"hi");
                    f[1] &= 0x7F; // unmasked: drop the mask bit (the payload stays as is)
                    f
                },
                CLOSE_PROTOCOL,
                "masked",
            ),
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"hi");
                    f[0] |= 0x40;
                    f
                },
                CLOSE_PROTOCOL,
                "reserved",
            ),
            (client_frame(true, 0x3, b"hi"), CLOSE_PROTOCOL, "opcode"),
            (
                client_frame(false, OP_PING, b"hi"),
                CLOSE_PROTOCOL,
                "control",
            ),
            (
                client_frame(true, OP_PING, &[0; 126]),
                CLOSE_PROTOCOL,
                "control",
            ),
            (
                client_frame(true, OP_CONTINUATION, b"hi"),
                CLOSE_PROTOCOL,
                "continuation",
            ),
            (
                client_frame(true, OP_TEXT, &[0xff, 0xfe]),
                CLOSE_NOT_UTF8,
                "UTF-8",
            ),
            (
                client_frame(true, OP_TEXT, &[b'x'; 1001]),
                CLOSE_TOO_BIG,
                "limit",
            ),
            (
                [
                    client_frame(false, OP_TEXT, &[b'x'; 600]),
                    client_frame(true, OP_CONTINUATION, &[b'x'; 600]),
                ]
                .concat(),
                CLOSE_TOO_BIG,
                "limit",
            ),
            (
                [
                    client_frame(false, OP_TEXT, b"a"),
                    client_frame(true, OP_TEXT, b"b"),
                ]
                .concat(),
                CLOSE_PROTOCOL,
                "inside",
            ),
        ];
        for (bytes, code, says) in cases {
            let (mut ws, mut c) = pair(1000);
            c.write_all(&bytes).await.unwrap();
            let err = next(&mut ws).await.expect_err("a violation is an error");
            assert!(err.contains(says), "{says}: {err}");
            assert_eq!(
                next(&mut ws).await,
                Ok(None),
                "{says}: nothing is read after it"
            );
            // The answer saying why goes out before the close frame.
            ws.feed_text("the error answer");
            ws.close().await;
            ws.feed_text("not sent after the close");
            assert_eq!(
                server_frame(&mut c).await,
                (OP_TEXT, b"the error answer".to_vec())
            );
            let (op, body) = server_frame(&mut c).await;
            assert_eq!(op, OP_CLOSE, "{says}");
            assert_eq!(u16::from_be_bytes([body[0], body[1]]), code, "{says}");
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            assert!(
                rest.is_empty(),
                "{says}: nothing after the close frame: {rest:?}"
            );
        }
    }

    #[tokio::test]
    async fn random_bytes_give_messages_or_a_reason_never_a_panic() {
        // Valid frames with a random byte flipped, cut short, or noise: whatever arrives, the
        // codec returns messages, the end of the stream or an error, and stays usable.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seen = [0; 3];
        for round in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..1 + rand() % 4 {
                let len = (rand() % 300) as usize;
                let op = [OP_TEXT, OP_BINARY, OP_PING, OP_CONTINUATION][(rand() % 4) as usize];
                let body: Vec<u8> = (0..len).map(|_| b'a' + (rand() % 26) as u8).collect();
                bytes.extend(client_frame(rand() % 3 != 0, op, &body));
            }
            match round % 3 {
                0 => {
                    let i = (rand() as usize) % bytes.len();
                    bytes[i] = rand() as u8;
                }
                1 => bytes.truncate((rand() as usize) % bytes.len()),
                _ => bytes = (0..rand() % 64).map(|_| rand() as u8).collect(),
            }
            let (mut ws, mut c) = pair(200);
            c.write_all(&bytes).await.unwrap();
            drop(c);
            for _ in 0..10 {
                match next(&mut ws).await {
                    Ok(Some(_)) => seen[0] += 1,
                    Ok(None) => {
                        seen[1] += 1;
                        break;
                    }
                    Err(_) => {
                        seen[2] += 1;
                        break;
                    }
                }
            }
        }
        assert!(
            seen.iter().all(|&n| n > 100),
            "messages, ends, errors: {seen:?}"
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header_alone() {
        let (mut ws, mut c) = pair(1000);
        // Announces 2^40 bytes and sends none of them.
        let mut head = vec![0x81, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        c.write_all(&head).await.unwrap();
        let err = next(&mut ws).await.expect_err("over the limit");
        assert!(err.contains("over the limit of 1000 bytes"), "{err}");
    }
}
