//! Peer authentication with `--cluster-secret-file`: a mutual challenge–response over the peer
//! WebSocket before any other message. Each side sends a fresh random challenge and answers the
//! other's with HMAC-SHA256(secret, role | challenge); the secret itself never crosses the wire.
//! A party that fails is disconnected before it can gossip, replicate, read or leave hints, and
//! learns nothing but that the connection closed.
//!
//! The exchange (JSON text frames):
//! 1. server → client `{"challenge": hex}`
//! 2. client → server `{"proof": hex(HMAC(secret, "client" | server challenge)), "challenge": hex}`
//! 3. server → client `{"proof": hex(HMAC(secret, "server" | client challenge))}`

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

/// How long each side waits for the other's step.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct Challenge {
    challenge: String,
}

#[derive(Serialize, Deserialize)]
struct Proof {
    proof: String,
    #[serde(default)]
    challenge: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(secret: &str, role: &str, challenge: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(role.as_bytes());
    m.update(b"|");
    m.update(challenge);
    m
}

/// The proof of knowing `secret` for `challenge` in `role` (`client` or `server`).
pub fn proof(secret: &str, role: &str, challenge: &[u8]) -> String {
    hex(&mac(secret, role, challenge).finalize().into_bytes())
}

/// Whether `proof_hex` proves `secret` for `challenge` in `role` (constant-time comparison).
pub fn verify(secret: &str, role: &str, challenge: &[u8], proof_hex: &str) -> bool {
    match unhex(proof_hex) {
        Some(tag) => mac(secret, role, challenge).verify_slice(&tag).is_ok(),
        None => false,
    }
}

/// A fresh 16-byte challenge.
fn new_challenge() -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&crate::random_u64().to_le_bytes());
    c.extend_from_slice(&crate::random_u64().to_le_bytes());
    c
}

async fn next_text<S>(ws: &mut S) -> Result<String, String>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => return Err("unexpected frame during authentication".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("connection closed during authentication".into()),
            Err(_) => return Err("no answer during authentication".into()),
        }
    }
}

/// The serving side: challenges the connecting peer and proves itself in turn.
pub async fn serve_handshake<S>(ws: &mut S, secret: &str) -> Result<(), String>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + SinkExt<Message>
        + Unpin,
{
    let mine = new_challenge();
    let text = serde_json::to_string(&Challenge {
        challenge: hex(&mine),
    })
    .map_err(|e| e.to_string())?;
    ws.send(Message::text(text))
        .await
        .map_err(|_| "cannot send the challenge".to_string())?;
    let answer: Proof = serde_json::from_str(&next_text(ws).await?)
        .map_err(|_| "malformed authentication answer".to_string())?;
    if !verify(secret, "client", &mine, &answer.proof) {
        return Err("the peer does not know the cluster secret".into());
    }
    let theirs = answer
        .challenge
        .as_deref()
        .and_then(unhex)
        .filter(|c| c.len() >= 16)
        .ok_or("the peer sent no challenge")?;
    let text = serde_json::to_string(&Proof {
        proof: proof(secret, "server", &theirs),
        challenge: None,
    })
    .map_err(|e| e.to_string())?;
    ws.send(Message::text(text))
        .await
        .map_err(|_| "cannot send the proof".to_string())
}

/// The connecting side: answers the server's challenge and checks its proof.
pub async fn client_handshake<S>(ws: &mut S, secret: &str) -> Result<(), String>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + SinkExt<Message>
        + Unpin,
{
    let challenge: Challenge = serde_json::from_str(&next_text(ws).await?)
        .map_err(|_| "the peer sent no challenge (does it run without a cluster secret?)")?;
    let theirs = unhex(&challenge.challenge)
        .filter(|c| c.len() >= 16)
        .ok_or("malformed challenge")?;
    let mine = new_challenge();
    let text = serde_json::to_string(&Proof {
        proof: proof(secret, "client", &theirs),
        challenge: Some(hex(&mine)),
    })
    .map_err(|e| e.to_string())?;
    ws.send(Message::text(text))
        .await
        .map_err(|_| "cannot send the proof".to_string())?;
    // A server that rejects the proof closes the connection without a word.
    let refused =
        |why: String| format!("refused: the peer does not accept this cluster secret ({why})");
    let text = next_text(ws).await.map_err(refused)?;
    let answer: Proof =
        serde_json::from_str(&text).map_err(|_| refused("malformed answer".into()))?;
    if verify(secret, "server", &mine, &answer.proof) {
        Ok(())
    } else {
        Err("the peer does not know the cluster secret".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_secret_role_and_challenge() {
        let c = b"0123456789abcdef";
        let p = proof("secret-one-1234567", "client", c);
        assert!(verify("secret-one-1234567", "client", c, &p));
        assert!(!verify("secret-two-1234567", "client", c, &p));
        assert!(!verify("secret-one-1234567", "server", c, &p));
        assert!(!verify(
            "secret-one-1234567",
            "client",
            b"another challenge",
            &p
        ));
        assert!(!verify("secret-one-1234567", "client", c, "zz"));
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
        assert_ne!(new_challenge(), new_challenge());
    }
}
