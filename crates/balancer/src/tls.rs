//! TLS termination with rustls (ring provider, installed explicitly): certificates from PEM
//! files, or a self-signed one made at start-up for local use. ALPN offers h2 and http/1.1.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Tls;

/// Installs ring as the process-wide rustls provider. Idempotent. Doing it explicitly keeps
/// rustls from panicking when both ring and aws-lc-rs end up in the dependency graph.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn acceptor(tls: &Tls) -> anyhow::Result<TlsAcceptor> {
    let (certs, key) = match tls {
        Tls::Files { cert, key } => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read certificates from {}", cert.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("bad PEM certificate in {}", cert.display()))?;
            anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read a private key from {}", key.display()))?;
            (certs, key)
        }
        Tls::SelfSigned => {
            let names = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            let generated = rcgen::generate_simple_self_signed(names)
                .context("generating a self-signed certificate")?;
            let cert = generated.cert.der().clone();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                generated.signing_key.serialize_der(),
            ));
            (vec![cert], key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a valid pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
