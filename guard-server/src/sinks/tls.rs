//! The TLS client side of the syslog (RFC 5425) and https sinks: the receiver's certificate
//! must chain to the configured CA (no system roots: a SIEM collector's CA is named in the
//! config), and our certificate is presented when one is configured.
use super::config::ClientTls;
use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub fn connector(tls: &ClientTls) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca)
        .with_context(|| format!("cannot read CA file {}", tls.ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("CA file {}", tls.ca.display()))?;
    anyhow::ensure!(!cas.is_empty(), "CA file {} holds no certificate", tls.ca.display());
    for ca in cas {
        roots.add(ca).with_context(|| format!("CA file {}", tls.ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("certificate file {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("key file {}", key.display()))?;
            builder.with_client_auth_cert(chain, key).context("client certificate and key")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// TLS over `tcp` to `host` (a DNS name or an IP address, checked against the certificate).
pub async fn handshake(connector: &TlsConnector, host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .with_context(|| format!("{host:?} is not a server name"))?;
    connector.connect(name, tcp).await.with_context(|| format!("TLS handshake with {host}"))
}
