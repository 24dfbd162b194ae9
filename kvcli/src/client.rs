//! A WebSocket client of the node's JSON protocol: many requests in flight on one connection,
//! answers matched by id.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kv_core::wire::{encode_request, encode_request_into, ClientOp, ValueForm};
use kv_core::ws_frame::{apply_mask, parse_head, put_head, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use serde::Deserialize;
use serde_json::Value;
use std::hash::BuildHasher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Why a request failed, and so which exit status the CLI gives.
#[derive(Debug, Clone)]
pub enum ClientError {
    /// The node could not be reached or the connection broke (exit 3).
    Unreachable(String),
    /// The node answered with an error (exit 1): its code and message.
    Refused {
        /// The protocol's error code.
        code: String,
        /// The node's message.
        message: String,
    },
    /// No answer in time (exit 1).
    Timeout,
    /// The command was given bad arguments (exit 2).
    Usage(String),
    /// A command failed on the client side: unreadable input, every operation failed (exit 1).
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(m) => write!(f, "node unreachable: {m}"),
            ClientError::Refused { code, message } => write!(f, "{code}: {message}"),
            ClientError::Timeout => write!(f, "timeout: no answer from the node in time"),
            ClientError::Usage(m) | ClientError::Failed(m) => write!(f, "{m}"),
        }
    }
}

/// TLS for every connection of this process, once turned on by a `wss://` node URL.
static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Turns TLS on for this process: every connection to a node, WebSocket and HTTP, and every
/// node address learned from the cluster, uses it. Certificates are verified against the CA
/// certificates in `ca_file` (PEM), else against the system's roots. With `identity` (a PEM
/// certificate chain and its key), the client presents it to nodes that require one.
pub fn use_tls(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<(), ClientError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ClientError::Usage(format!("--ca-file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(ClientError::Usage(format!(
                    "--ca-file {}: no PEM certificate in it",
                    path.display()
                )));
            }
            for c in certs {
                roots.add(c).map_err(|e| {
                    ClientError::Usage(format!("--ca-file {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            // Certificates the system store holds but rustls cannot parse are skipped.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Usage(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let usage = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
                ClientError::Usage(format!("{what} {}: {e}", path.display()))
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| usage("--cert-file", cert, &e))?;
            if chain.is_empty() {
                return Err(usage("--cert-file", cert, &"no PEM certificate in it"));
            }
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| usage("--key-file", key, &format!("no usable private key: {e}")))?;
            config
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| usage("--cert-file", cert, &e))?
        }
    };
    let _ = TLS.set(Arc::new(config));
    Ok(())
}

/// The URL of the node at `host_port`: `wss://` when this process uses TLS.
pub fn node_url(host_port: &str) -> String {
    let scheme = if TLS.get().is_some() { "wss" } else { "ws" };
    format!("{scheme}://{host_port}")
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connection to one node.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    /// Set when the connection ended (the node closed it, went away, or restarted).
    closed: Arc<AtomicBool>,
}

/// Bytes read from the socket at a time (bigger answers take several reads).
const SOCKET_READ_BUFFER: usize = 8 * 1024;
/// Bytes the WebSocket layer asks for at a time, from the buffered socket: it zeroes that
/// much before every read, so it stays small.
const READ_BUFFER: usize = 2 * 1024;

impl Client {
    /// Connects to `url` (`ws://HOST:PORT`), presenting `token` when given.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let ws = open(url, token, timeout).await?;
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let p = pending.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = lock(&p).remove(&id) {
                        let _ = tx.send(v);
                    }
                } else if v["ok"] == false {
                    // An error without an id: the node could not read the frame (one too
                    // large for its WebSocket layer) and closes the connection after this
                    // answer, so every request in flight on it ends with this error.
                    for (_, tx) in lock(&p).drain() {
                        let _ = tx.send(v.clone());
                    }
                }
            }
            c.store(true, Ordering::Relaxed);
            lock(&p).clear();
        });
        Ok(Client {
            tx,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            timeout,
            closed,
        })
    }

    /// Whether the connection has ended; requests on it fail as unreachable.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.tx.is_closed()
    }

    /// Sends one request and returns the answer's fields (`ok: true`), or the error.
    pub async fn request(&self, op: &ClientOp) -> Result<Value, ClientError> {
        self.request_within(op, self.timeout).await
    }

    /// [`request`](Self::request) with its own time limit (long admin operations).
    pub async fn request_within(
        &self,
        op: &ClientOp,
        limit: Duration,
    ) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self.tx.send(Message::text(encode_request(id, op))).is_err() {
            return Err(ClientError::Unreachable("the connection is closed".into()));
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(v)) => answer_fields(v),
            Ok(Err(_)) => Err(ClientError::Unreachable("the connection closed".into())),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ClientError::Timeout)
            }
        }
    }
}

/// The socket of a client connection.
type Socket = tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<tokio::io::BufReader<tokio::net::TcpStream>>,
>;

/// Opens a WebSocket to `url`, presenting `token` when given; a refusal says why.
async fn open(url: &str, token: Option<&str>, timeout: Duration) -> Result<Socket, ClientError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::Unreachable(format!("{url}: {e}")))?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ClientError::Unreachable("the token is not a valid header value".into())
        })?;
        request.headers_mut().insert("authorization", value);
    }
    // A small read buffer: the socket layer zeroes the whole buffer before every read,
    // which at its 128 KiB default costs more than a small answer itself. The socket is read
    // through a buffer of its own underneath, so a big answer still takes few system calls.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER);
    let connector = TLS
        .get()
        .map(|c| tokio_tungstenite::Connector::Rustls(c.clone()));
    let uri = request.uri();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
        let _ = tcp.set_nodelay(true);
        let buffered = tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, tcp);
        tokio_tungstenite::client_async_tls_with_config(request, buffered, Some(config), connector)
            .await
    };
    let (ws, _) = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            // The body may not reach us: the status alone says what kind of refusal.
            let by_status = match status.as_u16() {
                401 | 403 => "unauthorized",
                503 => "overloaded",
                _ => "refused",
            };
            let code = v["error"]["code"].as_str().unwrap_or(by_status).to_string();
            // A refused token is said in kvcli's words, naming the node: whether a token was
            // given is what the user needs to know, and the node cannot tell.
            let message = match (by_status, v["error"]["message"].as_str()) {
                ("unauthorized", _) if token.is_some() => {
                    format!("{url} refused the token (HTTP {status})")
                }
                ("unauthorized", _) => {
                    format!("{url} requires a token (HTTP {status}); give --token or KV_TOKEN")
                }
                (_, Some(m)) => format!("{url}: {m}"),
                (_, None) => format!("{url} answered HTTP {status}"),
            };
            return Err(ClientError::Refused { code, message });
        }
        Ok(Err(
            e @ tokio_tungstenite::tungstenite::Error::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::HttparseError(_),
            ),
        )) if url.starts_with("ws://") => {
            return Err(ClientError::Unreachable(format!(
                "{url}: {e} (the node may serve TLS: try wss://)"
            )))
        }
        Ok(Err(e)) if e.to_string().contains("CertificateRequired") => {
            return Err(ClientError::Unreachable(format!(
                "{url}: {e} (the node requires a client certificate: give --cert-file and --key-file)"
            )))
        }
        Ok(Err(e)) => return Err(ClientError::Unreachable(format!("{url}: {e}"))),
        Err(_) => {
            return Err(ClientError::Unreachable(format!(
                "{url}: connect timed out"
            )))
        }
    };
    Ok(ws)
}

/// A connection for one task with one request in flight at a time (the load generator's
/// clients): the request is written and its answer read on the caller's own task, with no
/// reader or writer task and no channel between them, and the frames are read and written
/// here (`kv_core::ws_frame`) rather than through the WebSocket layer, which took a quarter
/// of this client's CPU: this client shares the machine with the node it measures.
pub struct DirectClient {
    io: tokio_tungstenite::MaybeTlsStream<tokio::io::BufReader<tokio::net::TcpStream>>,
    /// Bytes read: `rbuf[start..end]` not yet parsed.
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// The request being sent, and then the frame it is sent in.
    request: String,
    wbuf: Vec<u8>,
    /// State of the generator of masking keys.
    mask_state: u64,
    next_id: u64,
    timeout: Duration,
    /// The timer of the request in flight, moved to each request's deadline. A timer made per
    /// request (`tokio::time::timeout`) is registered with the runtime's timer wheel and taken
    /// out again every time, under its lock; moved later, a registered timer only records its
    /// new deadline.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Read buffer of a [`DirectClient`]; a bigger answer grows it for as long as it needs.
const DIRECT_READ: usize = 16 * 1024;
/// Largest answer frame a [`DirectClient`] takes (far above any answer a node gives).
const MAX_ANSWER: u64 = 1 << 30;

impl DirectClient {
    /// Connects to `url`, presenting `token` when given.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<DirectClient, ClientError> {
        // The handshake is the WebSocket layer's; after it the socket is used directly. A
        // node sends nothing before it is asked, so the layer holds no unread bytes here.
        let io = open(url, token, timeout).await?.into_inner();
        let seed = std::collections::hash_map::RandomState::new().hash_one(url);
        Ok(DirectClient {
            io,
            rbuf: vec![0; DIRECT_READ],
            start: 0,
            end: 0,
            request: String::with_capacity(512),
            wbuf: Vec::with_capacity(512),
            mask_state: seed | 1,
            next_id: 1,
            timeout,
            timer: None,
        })
    }

    /// Sends one request; on a success (`ok: true`) puts the answer's causal context into
    /// `context` ("" when it has none), else returns the error. The answer is parsed into
    /// borrowed fields, not a JSON tree, and the context copied into the caller's string.
    pub async fn request(
        &mut self,
        op: &ClientOp,
        context: &mut String,
    ) -> Result<(), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let answer = tokio::select! {
            biased;
            answer = self.exchange(id, op, context) => answer,
            () = timer.as_mut() => Err(ClientError::Timeout),
        };
        self.timer = Some(timer);
        answer
    }

    async fn exchange(
        &mut self,
        id: u64,
        op: &ClientOp,
        context: &mut String,
    ) -> Result<(), ClientError> {
        let mut request = std::mem::take(&mut self.request);
        request.clear();
        encode_request_into(&mut request, id, op, ValueForm::Text);
        let sent = self.send_frame(OP_TEXT, request.as_bytes()).await;
        self.request = request;
        sent?;
        loop {
            let (opcode, at) = self.read_frame().await?;
            match opcode {
                OP_TEXT => {
                    let text = std::str::from_utf8(&self.rbuf[at])
                        .map_err(|_| ClientError::Failed("an answer is not UTF-8".into()))?;
                    let frame = AnswerFrame::read(text)
                        .map_err(|e| ClientError::Failed(format!("an answer is not JSON: {e}")))?;
                    if frame.id != Some(id) {
                        continue;
                    }
                    if frame.ok {
                        context.clear();
                        context.push_str(frame.context.as_deref().unwrap_or_default());
                        return Ok(());
                    }
                    let error = frame.error.unwrap_or_default();
                    return Err(ClientError::Refused {
                        code: error.code.map_or_else(|| "error".into(), Cow::into_owned),
                        message: error.message.map(Cow::into_owned).unwrap_or_default(),
                    });
                }
                OP_PING => {
                    let body = self.rbuf[at].to_vec();
                    self.send_frame(OP_PONG, &body).await?;
                }
                OP_CLOSE => return Err(ClientError::Unreachable("the connection closed".into())),
                _ => {}
            }
        }
    }

    /// Writes one masked frame.
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), ClientError> {
        // xorshift64: masking keys the node cannot predict from the traffic alone.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        let mask = (x as u32).to_ne_bytes();
        self.wbuf.clear();
        put_head(&mut self.wbuf, opcode, payload.len(), Some(mask));
        let at = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        apply_mask(&mut self.wbuf[at..], mask);
        let broke =
            |e: std::io::Error| ClientError::Unreachable(format!("the connection broke: {e}"));
        self.io.write_all(&self.wbuf).await.map_err(broke)?;
        self.io.flush().await.map_err(broke)?;
        if self.wbuf.capacity() > 256 * 1024 {
            self.wbuf = Vec::with_capacity(512);
        }
        Ok(())
    }

    /// Reads one whole frame: its opcode and where its payload is in the read buffer (valid
    /// until the next read).
    async fn read_frame(&mut self) -> Result<(u8, std::ops::Range<usize>), ClientError> {
        let malformed = |why: &str| ClientError::Unreachable(format!("the node sent {why}"));
        loop {
            if let Some(h) = parse_head(&self.rbuf[self.start..self.end]) {
                if h.mask.is_some() || h.rsv != 0 {
                    return Err(malformed("a malformed frame"));
                }
                if !h.fin {
                    return Err(malformed("a fragmented answer"));
                }
                if h.len > MAX_ANSWER {
                    return Err(malformed("a frame of more than 1 GiB"));
                }
                let need = h.size + h.len as usize;
                if self.end - self.start >= need {
                    let at = self.start + h.size..self.start + need;
                    self.start += need;
                    return Ok((h.opcode, at));
                }
                if self.rbuf.len() - self.start < need {
                    self.rbuf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    if self.rbuf.len() < need {
                        self.rbuf.resize(need, 0);
                    }
                }
            } else if self.start == self.end {
                self.start = 0;
                self.end = 0;
                if self.rbuf.len() > 256 * 1024 {
                    self.rbuf = vec![0; DIRECT_READ];
                }
            } else if self.rbuf.len() - self.end < 64 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self
                .io
                .read(&mut self.rbuf[self.end..])
                .await
                .map_err(|e| ClientError::Unreachable(format!("the connection broke: {e}")))?;
            if n == 0 {
                return Err(ClientError::Unreachable("the connection closed".into()));
            }
            self.end += n;
        }
    }
}

/// The fields of an answer frame the load generator looks at; the others are skipped.
#[derive(Deserialize)]
struct AnswerFrame<'a> {
    id: Option<u64>,
    #[serde(default)]
    ok: bool,
    #[serde(borrow, default)]
    context: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<ErrorFrame<'a>>,
}

impl<'a> AnswerFrame<'a> {
    /// Reads a write's answer, a flat object, the short way ([`kv_core::json`]); anything
    /// else (a get's values, an error) through serde_json.
    fn read(text: &'a str) -> Result<Self, serde_json::Error> {
        use kv_core::json::Scalar;
        if let Some((id, context)) = fixed_write_answer(text) {
            return Ok(AnswerFrame {
                id: Some(id),
                ok: true,
                context: Some(Cow::Borrowed(context)),
                error: None,
            });
        }
        let (mut id, mut ok, mut context) = (None, None, None);
        let flat = kv_core::json::scan_object(text, |name, v| match (name, v) {
            ("id", Scalar::UInt(n)) => id.replace(n).is_none(),
            ("ok", Scalar::Bool(b)) => ok.replace(b).is_none(),
            ("context", Scalar::Str(s)) => context.replace(s).is_none(),
            // Of the wrong type: serde_json says how.
            ("id" | "ok" | "context" | "error", _) => false,
            _ => true,
        });
        if flat {
            return Ok(AnswerFrame {
                id,
                ok: ok.unwrap_or(false),
                context: context.map(Cow::Borrowed),
                error: None,
            });
        }
        serde_json::from_str(text)
    }
}

/// A write's answer exactly as a node writes it, `{"id":N,"ok":true,"key":"K","context":"C"}`
/// with no escape or control character in the key and the context: its id and context, read
/// by matching the fixed parts (a fraction of the general reader's work on the answer nearly
/// every bench request gets). `None` for anything else, which the general reader takes.
fn fixed_write_answer(text: &str) -> Option<(u64, &str)> {
    use kv_core::json::find_special;
    let rest = text.strip_prefix("{\"id\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    // JSON numbers have no leading zeros.
    if digits == 0 || (digits > 1 && rest.starts_with('0')) {
        return None;
    }
    let id = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(",\"ok\":true,\"key\":\"")?;
    // Past the key: what ends it must be its closing quote.
    let rest = rest[find_special(rest.as_bytes(), 0)..].strip_prefix("\",\"context\":\"")?;
    let end = find_special(rest.as_bytes(), 0);
    (&rest[end..] == "\"}").then_some((id, &rest[..end]))
}

#[derive(Deserialize, Default)]
struct ErrorFrame<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// An answer frame as the result of its request: its fields when `ok`, else the error.
fn answer_fields(v: Value) -> Result<Value, ClientError> {
    if v["ok"].as_bool() == Some(true) {
        Ok(v)
    } else {
        Err(ClientError::Refused {
            code: v["error"]["code"].as_str().unwrap_or("error").to_string(),
            message: v["error"]["message"].as_str().unwrap_or("").to_string(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `HOST:PORT` of a `ws://HOST:PORT[/...]` URL (the node's one port also answers plain HTTP;
/// `wss://` and `https://` alike).
pub fn host_port(url: &str) -> Result<String, ClientError> {
    let rest = ["ws://", "wss://", "http://", "https://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
        .ok_or_else(|| {
            ClientError::Usage(format!("{url}: a node address looks like ws://HOST:PORT"))
        })?;
    let hp = rest.split(['/', '?']).next().unwrap_or("");
    if hp.is_empty() {
        return Err(ClientError::Usage(format!("{url}: no HOST:PORT")));
    }
    Ok(hp.to_string())
}

/// An HTTP GET of `path` on `host_port` (HTTPS when this process uses TLS); the body of a
/// 200 answer.
///
/// Errors: [`ClientError::Unreachable`] when the connection fails or times out,
/// [`ClientError::Refused`] for any status but 200.
pub async fn http_get(
    host_port: &str,
    path: &str,
    timeout: Duration,
) -> Result<String, ClientError> {
    let scheme = if TLS.get().is_some() { "https" } else { "http" };
    let fetch = async {
        let s = tokio::net::TcpStream::connect(host_port).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n");
        match TLS.get() {
            None => exchange(s, &req).await,
            Some(config) => {
                let host = host_of(host_port);
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
                let s = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, s)
                    .await?;
                exchange(s, &req).await
            }
        }
    };
    let buf = match tokio::time::timeout(timeout, fetch).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Err(ClientError::Unreachable(format!(
                "{scheme}://{host_port}{path}: {e}"
            )))
        }
        Err(_) => {
            return Err(ClientError::Unreachable(format!(
                "{scheme}://{host_port}{path}: no answer in time"
            )))
        }
    };
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(ClientError::Unreachable(format!(
            "{scheme}://{host_port}{path}: not an HTTP answer"
        )));
    };
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(ClientError::Refused {
            code: "http".into(),
            message: format!("{scheme}://{host_port}{path} answered {status}"),
        });
    }
    Ok(body.to_string())
}

/// Writes `request` and reads the answer to the end.
async fn exchange<S>(mut s: S, request: &str) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// The host of `HOST:PORT` (`[::1]:7070` gives `::1`).
fn host_of(host_port: &str) -> &str {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short way reads an answer as serde_json does, and leaves what it cannot to it.
    #[test]
    fn answers_are_read_as_serde_json_reads_them() {
        for text in [
            r#"{"id":7,"ok":true,"key":"k","context":"AQID"}"#,
            r#"{"id":18446744073709551615,"ok":true,"key":"k:1","context":"A-_z9"}"#,
            r#"{"id":0,"ok":true,"key":"","context":""}"#,
            r#"{"id":7,"ok":true,"key":"k\"x","context":"AQID"}"#,
            r#"{"id":7,"ok":true,"key":"kö","context":"A\u0051"}"#,
            r#"{"id":7,"ok":true,"key":"k","context":"AQID","x":1}"#,
            r#"{"id":7,"ok":true,"key":"k","context":"AQID"} "#,
            r#"{"id":7,"ok":true,"key":"k\n","context":"AQID"}"#,
            r#"{"ok":true}"#,
            r#"{"id":7}"#,
            r#"{"id":7,"ok":false,"error":{"code":"timeout","message":"m"}}"#,
            r#"{"id":7,"ok":true,"key":"k","found":true,"values":["v"],"context":"c"}"#,
            r#"{"id":7,"ok":true,"extra":1,"extra":2}"#,
        ] {
            let want: AnswerFrame<'_> = serde_json::from_str(text).unwrap();
            let got = AnswerFrame::read(text).unwrap();
            assert_eq!(got.id, want.id, "{text}");
            assert_eq!(got.ok, want.ok, "{text}");
            assert_eq!(got.context, want.context, "{text}");
            let code = |f: &AnswerFrame<'_>| {
                f.error
                    .as_ref()
                    .and_then(|e| e.code.as_deref().map(str::to_owned))
            };
            assert_eq!(code(&got), code(&want), "{text}");
        }
        for text in [
            r#"{"id":07,"ok":true,"key":"k","context":"AQID"}"#,
            "{\"id\":7,\"ok\":true,\"key\":\"k\tx\",\"context\":\"AQID\"}",
            r#"{"id":18446744073709551616,"ok":true,"key":"k","context":"AQID"}"#,
            r#"{"id":7,"ok":true,"key":"k","context":"AQID""#,
            r#"{"id":7,"id":8}"#,
            r#"{"id":-1}"#,
            r#"{"ok":"yes"}"#,
            r#"{"error":"x"}"#,
            "[true]",
        ] {
            assert!(
                serde_json::from_str::<AnswerFrame<'_>>(text).is_err(),
                "{text}"
            );
            assert!(AnswerFrame::read(text).is_err(), "{text}");
        }
    }
}
