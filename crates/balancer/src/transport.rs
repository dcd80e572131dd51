//! How the balancer reaches a target group's workers: plain TCP or TLS (rustls on ring), and
//! which HTTP version it speaks to them. One [`Transport`] per target group, built when the
//! configuration is read (so a bad CA file or key is a configuration error with its line) and
//! shared by the request path, health checks and load polls.
//!
//! TLS to workers verifies the worker's certificate against a CA file or the system's roots
//! for the group's `server_name` (sent as SNI), or for the worker's IP address when none is
//! set; it may present a client certificate; `insecure` skips verification (and `/status` and
//! the status page say so). ALPN offers exactly the protocol the group speaks, so an `h2` group
//! whose worker cannot speak HTTP/2 fails at the handshake rather than mid-request.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The HTTP version a target group speaks to its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerProtocol {
    /// HTTP/1.1 on fulcrum's own codec (the default).
    #[default]
    Http1,
    /// HTTP/2: ALPN `h2` over TLS, prior knowledge (h2c) over plain TCP. For gRPC.
    H2,
}

impl WorkerProtocol {
    pub fn name(self) -> &'static str {
        match self {
            WorkerProtocol::Http1 => "http1",
            WorkerProtocol::H2 => "h2",
        }
    }
}

/// What a target group's `[target_group.tls]` table says, paths already resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// Trust only the CAs in this PEM file; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and checked in the worker's certificate; its IP address if unset.
    pub server_name: Option<String>,
    /// A client certificate chain and its key (PEM), for workers that ask for one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Accept any certificate. For testing only: a man in the middle goes unnoticed.
    pub insecure: bool,
}

/// How one target group reaches its workers.
#[derive(Clone)]
pub struct Transport {
    pub protocol: WorkerProtocol,
    pub tls: Option<Arc<TlsToWorkers>>,
}

/// A target group's TLS settings and the rustls client built from them.
pub struct TlsToWorkers {
    pub settings: TlsSettings,
    connector: tokio_rustls::TlsConnector,
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.as_ref().map(|t| &t.settings))
            .finish()
    }
}

/// Two transports are the same if their settings are: the built clients are not compared.
impl PartialEq for Transport {
    fn eq(&self, other: &Transport) -> bool {
        self.protocol == other.protocol
            && self.tls.as_ref().map(|t| &t.settings) == other.tls.as_ref().map(|t| &t.settings)
    }
}

impl Default for Transport {
    fn default() -> Transport {
        Transport::plain(WorkerProtocol::Http1)
    }
}

/// Why a connection to a worker could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("HTTP/2 handshake failed: {0}")]
    H2(String),
}

impl ConnectError {
    /// Nothing listens at the address.
    pub fn refused(&self) -> bool {
        matches!(self, ConnectError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused)
    }
}

impl Transport {
    pub fn plain(protocol: WorkerProtocol) -> Transport {
        Transport {
            protocol,
            tls: None,
        }
    }

    /// A transport with TLS; fails on unreadable or invalid files, or a bad server name.
    pub fn with_tls(protocol: WorkerProtocol, settings: TlsSettings) -> anyhow::Result<Transport> {
        let config = client_config(protocol, &settings)?;
        let name = settings
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|_| anyhow::anyhow!("server_name `{n}` is not a DNS name or an IP"))
            })
            .transpose()?;
        Ok(Transport {
            protocol,
            tls: Some(Arc::new(TlsToWorkers {
                settings,
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                name,
            })),
        })
    }

    /// `https` or `http`, as the status page and logs say it.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Opens a connection to `addr` (TCP, then the TLS handshake if any), within `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<WorkerStream, ConnectError> {
        // Boxed: a TLS handshake's state (a whole rustls connection) would otherwise sit in
        // every request's future, though pooled connections make connects rare.
        tokio::time::timeout(timeout, Box::pin(self.connect_now(addr)))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    async fn connect_now(&self, addr: SocketAddr) -> Result<WorkerStream, ConnectError> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(WorkerStream::Plain(tcp));
        };
        let name = tls
            .name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream = tls
            .connector
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        if self.protocol == WorkerProtocol::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2")
        {
            return Err(ConnectError::Tls(io::Error::other(
                "the worker did not agree to HTTP/2 (ALPN h2)",
            )));
        }
        Ok(WorkerStream::Tls(Box::new(stream)))
    }
}

/// The rustls client for a group: its roots, client certificate and ALPN.
fn client_config(
    protocol: WorkerProtocol,
    s: &TlsSettings,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if s.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots(s.ca_file.as_deref())?)
    };
    let mut config = match (&s.client_cert, &s.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .context("the client certificate and key do not form a valid pair")?,
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("client_cert and client_key go together"),
    };
    config.alpn_protocols = vec![match protocol {
        WorkerProtocol::Http1 => b"http/1.1".to_vec(),
        WorkerProtocol::H2 => b"h2".to_vec(),
    }];
    Ok(config)
}

fn roots(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {} is invalid", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            anyhow::ensure!(
                !roots.is_empty(),
                "no system root certificates found; set ca_file"
            );
        }
    }
    Ok(roots)
}

fn read_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM certificate in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

fn read_key(path: &std::path::Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key from {}", path.display()))
}

/// `insecure = true`: any certificate is taken, but the handshake's signatures are still
/// checked, so the connection is at least to whoever holds the key it presented.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to a worker, plain or TLS.
pub enum WorkerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl WorkerStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            WorkerStream::Plain(s) => s,
            WorkerStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether an idle connection is still open: nothing waits to be read on the socket (the
    /// worker has not closed it, sent a TLS alert, nor anything unasked). A peek, so nothing
    /// is taken from under TLS.
    pub fn still_open(&self) -> bool {
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.tcp().poll_peek(&mut cx, &mut probe).is_pending()
    }
}

impl AsyncRead for WorkerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            WorkerStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WorkerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WorkerStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            WorkerStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WorkerStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
