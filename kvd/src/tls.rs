//! TLS for the node's one port (`wss://`, `https://`) and for its connections to peers,
//! from PEM files, through rustls with the ring provider.
//!
//! With `--tls-cert`/`--tls-key` every connection to the port must start with a TLS
//! handshake: clients, peers and plain HTTP (`/health`, `/metrics`, the console) alike. A
//! plain request gets no answer beyond the failed handshake. Outgoing peer connections verify
//! the peer's certificate against `--tls-ca` (the CA that signs the cluster's node
//! certificates) and the address they dial, so a node certificate names the node's IP
//! addresses and host names. With `--tls-require-client-cert`, every connection must also
//! present a certificate that `--tls-ca` signed (mutual TLS): clients and peers alike, so a
//! node always presents its own certificate when it dials a peer. SIGHUP reloads the three
//! files: new connections use the new certificate and CA, open ones keep theirs; files that
//! do not load leave the old ones in use.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The node's TLS settings: the files, and what was last loaded from them.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    require_client_cert: bool,
    loaded: RwLock<Loaded>,
}

/// One load of the files.
#[derive(Clone)]
struct Loaded {
    /// Accepts incoming connections with the node's certificate.
    acceptor: TlsAcceptor,
    /// Dials peers, trusting the cluster CA.
    client: Arc<ClientConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tls({})", self.cert.display())
    }
}

impl Tls {
    /// Loads the certificate chain, its private key and the CA certificates peers (and, with
    /// `require_client_cert`, every client) are verified against; every error names the file
    /// and what is wrong with it.
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        require_client_cert: bool,
    ) -> Result<Tls, String> {
        Ok(Tls {
            loaded: RwLock::new(Tls::read(cert, key, ca, require_client_cert)?),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca: ca.to_path_buf(),
            require_client_cert,
        })
    }

    /// Loads the files again; on an error the settings in use stay as they were.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Tls::read(&self.cert, &self.key, &self.ca, self.require_client_cert)?;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Accepts an incoming connection with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current().acceptor
    }

    /// The configuration that dials peers, trusting the current CA.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.current().client
    }

    fn current(&self) -> Loaded {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn read(
        cert: &Path,
        key: &Path,
        ca: &Path,
        require_client_cert: bool,
    ) -> Result<Loaded, String> {
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("--tls-key {}: no usable private key: {e}", key.display()))?;
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let server = if require_client_cert {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            server.with_client_cert_verifier(verifier)
        } else {
            server.with_no_client_auth()
        };
        let server = server
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("--tls-cert {} with its key: {e}", cert.display()))?;
        // A node presents its own certificate to the peers it dials (peers that require one
        // verify it against the cluster CA; the others never ask).
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("--tls-cert {} as a client certificate: {e}", cert.display()))?;
        Ok(Loaded {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            client: Arc::new(client),
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Bytes a plain connection reads from its socket at a time (buffered here, so the
/// WebSocket layer's own reads, which zero their buffer first, can stay small).
pub const SOCKET_READ_BUFFER: usize = 8 * 1024;

/// An accepted connection: plain TCP or TLS over TCP.
pub enum Io {
    /// No TLS configured.
    Plain(BufReader<TcpStream>),
    /// After a completed TLS handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    /// A plain connection, read through a buffer.
    pub fn plain(stream: TcpStream) -> Io {
        Io::Plain(BufReader::with_capacity(SOCKET_READ_BUFFER, stream))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
