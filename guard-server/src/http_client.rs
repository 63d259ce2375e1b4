//! The server's one outbound HTTP client (the chat channels' posts, the console's OpenID
//! provider): GETs and POSTs with a few headers, over TLS whose roots are a configured CA
//! bundle (`chat.ca_file`, `console.oidc.ca_file`), or plain HTTP to this machine (the configs
//! allow no other). One connection per exchange: they are rare, and a fresh connection never
//! trips on one the service closed while idle.
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The whole exchange; a chat service or provider slower than this is retried later.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The most of an answer read (Slack's answers and a provider's JWKS are small; an error page
/// is cut).
const MAX_ANSWER: usize = 1 << 20;

#[derive(Clone)]
pub struct Client {
    /// None when the CA file could not be read: https posts then fail (and say why) while
    /// plain posts to this machine still work.
    tls: Option<TlsConnector>,
    tls_error: String,
}

impl Client {
    pub fn new(ca_file: &Path) -> Client {
        match connector(ca_file) {
            Ok(tls) => Client { tls: Some(tls), tls_error: String::new() },
            Err(e) => Client { tls: None, tls_error: format!("{e:#}") },
        }
    }

    /// POSTs `body` as JSON to `url` with `headers`; the status and the answer's body.
    pub async fn post_json(&self, url: &str, headers: &[(&str, String)], body: String) -> Result<(StatusCode, Bytes)> {
        self.exchange(Method::POST, url, headers, Some("application/json; charset=utf-8"), body).await
    }

    /// POSTs `body` as an HTML form (`application/x-www-form-urlencoded`, as OAuth token
    /// endpoints take it).
    pub async fn post_form(&self, url: &str, headers: &[(&str, String)], body: String) -> Result<(StatusCode, Bytes)> {
        self.exchange(Method::POST, url, headers, Some("application/x-www-form-urlencoded"), body).await
    }

    /// GETs `url`.
    pub async fn get(&self, url: &str, headers: &[(&str, String)]) -> Result<(StatusCode, Bytes)> {
        self.exchange(Method::GET, url, headers, None, String::new()).await
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        content_type: Option<&str>,
        body: String,
    ) -> Result<(StatusCode, Bytes)> {
        tokio::time::timeout(TIMEOUT, self.send(method, url, headers, content_type, body))
            .await
            .with_context(|| format!("{}: no answer in {TIMEOUT:?}", redact(url)))?
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        content_type: Option<&str>,
        body: String,
    ) -> Result<(StatusCode, Bytes)> {
        let uri: Uri = url.parse().with_context(|| format!("bad url {}", redact(url)))?;
        let host = uri.host().context("url has no host")?.to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tcp =
            TcpStream::connect((bare.as_str(), port)).await.with_context(|| format!("connecting to {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host.clone());
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header(http::header::HOST, authority)
            .header(http::header::USER_AGENT, concat!("guard-server/", env!("CARGO_PKG_VERSION")));
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        if https {
            let tls = self.tls.as_ref().with_context(|| format!("no TLS roots: {}", self.tls_error))?;
            let name = ServerName::try_from(bare.clone()).with_context(|| format!("{host:?} is not a server name"))?;
            let stream = tls.connect(name, tcp).await.with_context(|| format!("TLS handshake with {host}"))?;
            round_trip(TokioIo::new(stream), request).await
        } else {
            round_trip(TokioIo::new(tcp), request).await
        }
    }
}

/// The URL without its path: Teams and webhook URLs carry their secret in the path.
pub fn redact(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(u) => format!("{}://{}/…", u.scheme_str().unwrap_or("?"), u.authority().map(|a| a.as_str()).unwrap_or("?")),
        Err(_) => "(bad url)".into(),
    }
}

fn connector(ca_file: &Path) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("cannot read CA file {}", ca_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("CA file {}", ca_file.display()))?;
    let (added, _) = roots.add_parsable_certificates(cas);
    anyhow::ensure!(added > 0, "CA file {} holds no usable certificate", ca_file.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn round_trip<S>(io: TokioIo<S>, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.context("HTTP handshake")?;
    let driver = tokio::spawn(conn);
    let result = async {
        let response = sender.send_request(request).await.context("sending")?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}
