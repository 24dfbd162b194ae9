//! One TCP port for everything: reads the HTTP request head of each connection and routes it
//! to the peer protocol (`GET /peer` with a WebSocket upgrade), the client protocol (any other
//! WebSocket upgrade) or plain HTTP (`/health`, `/metrics`, `/`). With TLS configured every
//! connection first completes a TLS handshake (see `tls`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::node::Node;
use crate::tls::Io;

/// The parts of an HTTP request head the server looks at.
pub struct RequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string after `?`, if any.
    pub query: String,
    /// Header names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }

    fn is_websocket(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // The two digits are read as bytes: slicing the string there could cut a
            // multi-byte character in half (a panic on `/%aé`).
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// A client must send its request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one line per this long about failing accepts.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections until shutdown.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let clients = Arc::new(Semaphore::new(node.config.max_connections));
    let mut shutdown = node.shutdown_signal();
    // Failed accepts since the last one logged, and when that was: out of file descriptors,
    // a node would otherwise log 20 lines a second (filling the disk it needs).
    let mut failed = 0u64;
    let mut logged: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                failed += 1;
                if logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    let more = match failed {
                        1 => String::new(),
                        n => format!(" ({n} failed accepts since the last line)"),
                    };
                    crate::warn!("accept failed: {e}{more}; retrying every 50 ms");
                    logged = Some(std::time::Instant::now());
                    failed = 0;
                }
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let node = node.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            // A failed exchange concerns only that connection; the client sees it closed.
            let _ = handle(node, stream, clients).await;
        });
    }
}

async fn handle(
    node: Arc<Node>,
    stream: TcpStream,
    clients: Arc<Semaphore>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut stream = match &node.config.tls {
        None => Io::plain(stream),
        Some(tls) => {
            let from = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match tokio::time::timeout(HEAD_TIMEOUT, tls.acceptor().accept(stream)).await {
                Ok(Ok(s)) => Io::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    node.metrics.tls_handshakes_failed.fetch_add(1, Relaxed);
                    crate::warn!("TLS handshake from {from} failed: {e}");
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
        }
    };
    let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let body = format!("{{\"error\":\"{e}\"}}");
            return write_response(
                &mut stream,
                400,
                "Bad Request",
                "application/json",
                body.as_bytes(),
            )
            .await;
        }
        Err(_) => return Ok(()),
    };
    if !head.is_websocket() {
        return crate::http::respond(&node, &head, &mut stream).await;
    }
    if head.path == "/peer" {
        let ws = upgrade(stream, &head, rest, peer_config(&node)).await?;
        if let Some(ws) = ws {
            crate::peer::serve(node, ws).await;
        }
        return Ok(());
    }
    let mut read_only = false;
    if let Some(tokens) = &node.config.tokens {
        let presented = head.query_param("token").or_else(|| {
            head.header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
        let found = presented.and_then(|t| tokens.iter().find(|k| constant_time_eq(&k.token, &t)));
        let Some(token) = found else {
            let body = br#"{"ok":false,"error":{"code":"unauthorized","message":"a valid token is required"}}"#;
            return write_response(&mut stream, 401, "Unauthorized", "application/json", body)
                .await;
        };
        read_only = token.read_only;
    }
    let Ok(permit) = clients.clone().try_acquire_owned() else {
        node.metrics.connections_refused.fetch_add(1, Relaxed);
        let body = br#"{"ok":false,"error":{"code":"overloaded","message":"too many connections to this node"}}"#;
        return write_response(
            &mut stream,
            503,
            "Service Unavailable",
            "application/json",
            body,
        )
        .await;
    };
    if accept_upgrade(&mut stream, &head).await? {
        // Frames up to the frame limit are requests; the socket layer allows more so that an
        // oversized frame is answered `too_large` instead of cutting the connection (up to 4x).
        let max = node.config.limits.max_frame_bytes * 4;
        let ws = crate::ws::ServerWs::new(stream, rest, max);
        node.metrics.connections.fetch_add(1, Relaxed);
        crate::connection::serve(node.clone(), ws, read_only).await;
        node.metrics.connections.fetch_sub(1, Relaxed);
    }
    drop(permit);
    Ok(())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn peer_config(node: &Node) -> WebSocketConfig {
    crate::peer::peer_ws_config(crate::node::max_state_bytes(&node.config))
}

async fn upgrade(
    mut stream: Io,
    head: &RequestHead,
    rest: Vec<u8>,
    config: WebSocketConfig,
) -> std::io::Result<Option<WebSocketStream<Io>>> {
    if !accept_upgrade(&mut stream, head).await? {
        return Ok(None);
    }
    Ok(Some(
        WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await,
    ))
}

/// Answers a WebSocket upgrade: `101 Switching Protocols`, or `400` (false) without a key.
async fn accept_upgrade(stream: &mut Io, head: &RequestHead) -> std::io::Result<bool> {
    let Some(key) = head.header("sec-websocket-key") else {
        write_response(
            stream,
            400,
            "Bad Request",
            "text/plain",
            b"missing Sec-WebSocket-Key\n",
        )
        .await?;
        return Ok(false);
    };
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(true)
}

/// Reads the request head; returns it with any bytes read past it. `None` when the peer
/// closed before sending anything.
async fn read_head(stream: &mut Io) -> std::io::Result<Option<(RequestHead, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::other(
                    "connection closed inside the request head",
                ))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
    };
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| std::io::Error::other("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or("/");
    if method.is_empty() || !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(std::io::Error::other("not an HTTP/1.x request"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Some((
        RequestHead {
            method,
            path: path.to_string(),
            query: query.to_string(),
            headers,
        },
        buf[end..].to_vec(),
    )))
}

/// Writes a complete HTTP/1.1 response and closes the exchange.
pub async fn write_response(
    stream: &mut Io,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_never_cuts_a_character() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
        // Not two hex digits: kept as written, never a panic (this cut 'é' in half).
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("%é"), "%é");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
