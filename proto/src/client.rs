//! Connecting to guard-server over mTLS, the one way every client does it (guard-agent,
//! guardctl, guard-loadgen, the server's own tests): which files to use, read with errors that
//! name the file and the flag it came from, and the TLS name taken from the URL's host.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// The CA that signed the server's certificate, and this client's certificate and key, each
/// with the flag it was given by (for error messages).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: (PathBuf, &'static str),
    pub cert: (PathBuf, &'static str),
    pub key: (PathBuf, &'static str),
}

impl TlsFiles {
    /// The layout `guard-server init-pki` writes: DIR/ca.crt and DIR/<prefix><name>.crt/.key.
    pub fn from_pki(dir: &Path, prefix: &str, name: &str, flag: &'static str) -> Self {
        TlsFiles {
            ca: (dir.join("ca.crt"), flag),
            cert: (dir.join(format!("{prefix}{name}.crt")), flag),
            key: (dir.join(format!("{prefix}{name}.key")), flag),
        }
    }
}

/// The files, read once, ready to configure any number of connections.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: Certificate,
    identity: Identity,
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let ca = read_pem(&files.ca.0, files.ca.1, "CA certificate")?;
        let cert = read_pem(&files.cert.0, files.cert.1, "client certificate")?;
        let key = read_pem(&files.key.0, files.key.1, "client key")?;
        Ok(TlsMaterial { ca: Certificate::from_pem(ca), identity: Identity::from_pem(cert, key) })
    }
}

fn read_pem(path: &Path, flag: &str, what: &str) -> Result<Vec<u8>> {
    let data =
        std::fs::read(path).with_context(|| format!("cannot read the {what} {} (from {flag})", path.display()))?;
    if !data.windows(10).any(|w| w == b"-----BEGIN") {
        bail!("the {what} {} (from {flag}) is not PEM", path.display());
    }
    Ok(data)
}

/// A server URL as given: `https://host:port`, or `host:port` (https assumed).
pub fn parse_server(url: &str) -> Result<(Uri, String)> {
    let text = if url.contains("://") { url.to_string() } else { format!("https://{url}") };
    let uri: Uri = text.parse().with_context(|| format!("--server {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            bail!("--server {url:?}: scheme {other:?} is not supported; guard-server speaks https (mTLS) only")
        }
        None => bail!("--server {url:?} has no scheme"),
    }
    let host = uri.host().with_context(|| format!("--server {url:?} has no host"))?;
    // IPv6 literals come with their brackets; the TLS name is the bare address.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((uri, host))
}

/// An endpoint for the server with mTLS configured; `connect()` it once per connection, or
/// `connect_lazy()` it for a channel that reconnects by itself. HTTP/2 keep-alives notice a
/// dead server within 15 s even while no call is in flight.
pub fn endpoint(server: &str, tls: &TlsMaterial) -> Result<Endpoint> {
    let (uri, host) = parse_server(server)?;
    let config = ClientTlsConfig::new().ca_certificate(tls.ca.clone()).identity(tls.identity.clone()).domain_name(host);
    Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tls_config(config)
        .context("configuring TLS")
}

/// Connects (TCP and TLS) now, so that an unreachable server is reported as such.
pub async fn connect(server: &str, tls: &TlsMaterial) -> Result<Channel> {
    let ep = endpoint(server, tls)?;
    ep.connect().await.map_err(|e| anyhow::anyhow!(ConnectError { server: server.to_string(), source: e }))
}

/// The server could not be reached (TCP or TLS): exit code 1, not 2.
#[derive(Debug)]
pub struct ConnectError {
    pub server: String,
    pub source: tonic::transport::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot connect to {}: {}", self.server, self.source)?;
        let mut cause = std::error::Error::source(&self.source);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_forms() {
        let (uri, host) = parse_server("127.0.0.1:7443").unwrap();
        assert_eq!(uri.to_string(), "https://127.0.0.1:7443/");
        assert_eq!(host, "127.0.0.1");
        assert_eq!(parse_server("https://guard.example:9/").unwrap().1, "guard.example");
        assert_eq!(parse_server("https://[::1]:7443").unwrap().1, "::1");
        assert!(parse_server("http://127.0.0.1:7443").unwrap_err().to_string().contains("https"));
    }

    #[test]
    fn missing_file_names_the_file_and_flag() {
        let files = TlsFiles::from_pki(Path::new("/nonexistent-pki"), "approver-", "alice", "--pki");
        let err = format!("{:#}", TlsMaterial::load(&files).err().unwrap());
        assert!(err.contains("/nonexistent-pki/ca.crt"), "{err}");
        assert!(err.contains("--pki"), "{err}");
    }
}
