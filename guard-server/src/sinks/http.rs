//! The HTTP sink: batches in the Splunk HEC shape (`POST <url>/services/collector/event`,
//! `Authorization: Splunk <token>`, one JSON event object after another) or the Elasticsearch
//! `_bulk` shape (`POST <url>/_bulk`, NDJSON action and document lines).
//!
//! What a response means:
//! - 2xx: delivered. For `_bulk`, each item's status is read too: 409 on `create` means the
//!   document (whose `_id` is the sink and the row's seq) is already there, from an earlier
//!   try, so it counts as delivered; 429 and 5xx items make the whole batch go again; any
//!   other refused item goes to the dead-letter file.
//! - a connection error, a timeout, 429 or 5xx: nothing is assumed delivered; the batch is
//!   sent again after a backoff (super::run).
//! - any other 4xx: the receiver will never take this batch as it is: each record goes to the
//!   dead-letter file (JSON lines: sink, seq, status, error, record) and the sink moves on.
//!
//! One connection per batch (hyper's HTTP/1.1 client, tokio-rustls for https): batches are
//! large and a fresh connection never trips on one the receiver closed while idle.
use super::config::{HttpConfig, HttpShape};
use super::tls;
use super::{Deliver, Item};
use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use guard_api::export::Format;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The whole exchange (connect, send, read the answer) of one batch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of an error answer kept in a dead letter.
const MAX_ERROR_TEXT: usize = 2048;

pub struct HttpSink {
    name: String,
    format: Format,
    config: HttpConfig,
    uri: Uri,
    tls: Option<TlsConnector>,
}

/// What the receiver did with a batch.
enum Answer {
    /// Delivered (apart from `refused`: (index in the batch, status, error) for dead letters).
    Taken { refused: Vec<(usize, u16, String)> },
    /// Try the batch again later.
    Retry(String),
}

impl HttpSink {
    pub fn new(name: &str, format: Format, config: HttpConfig) -> Result<HttpSink> {
        let path = match config.shape {
            HttpShape::SplunkHec => "/services/collector/event",
            HttpShape::ElasticBulk => "/_bulk",
        };
        let uri: Uri = format!("{}{path}", config.url).parse().with_context(|| format!("url {}", config.url))?;
        let tls = config.tls.as_ref().map(tls::connector).transpose()?;
        Ok(HttpSink { name: name.to_string(), format, config, uri, tls })
    }

    /// The record as a JSON value: the formatted line itself for the JSON formats, or
    /// `{"message": line}` (Elastic) / the line as a string (HEC) for CEF.
    fn event(&self, item: &Item) -> Value {
        match self.format {
            Format::Cef => match self.config.shape {
                HttpShape::SplunkHec => Value::String(item.line.clone()),
                HttpShape::ElasticBulk => json!({ "message": item.line }),
            },
            _ => serde_json::from_str(&item.line).unwrap_or_else(|_| Value::String(item.line.clone())),
        }
    }

    fn sourcetype(&self) -> String {
        if let Some(s) = &self.config.sourcetype {
            return s.clone();
        }
        match self.format {
            Format::Ocsf(_) => "guard:ocsf",
            Format::Ecs => "guard:ecs",
            Format::Cef => "cef",
            Format::Jsonl => "guard:jsonl",
        }
        .to_string()
    }

    pub fn body(&self, items: &[Item]) -> String {
        let mut body = String::new();
        for item in items {
            match self.config.shape {
                HttpShape::SplunkHec => {
                    let mut e = json!({
                        "time": item.time_ms as f64 / 1000.0,
                        "host": item.host,
                        "source": "guard",
                        "sourcetype": self.sourcetype(),
                        "event": self.event(item),
                    });
                    if let Some(index) = &self.config.index {
                        e["index"] = Value::String(index.clone());
                    }
                    body.push_str(&e.to_string());
                }
                HttpShape::ElasticBulk => {
                    let index = self.config.index.clone().unwrap_or_default();
                    // `create` with a stable _id: a batch sent twice cannot index a record twice.
                    let action = json!({ "create": { "_index": index, "_id": format!("{}-{}", self.name, item.seq) } });
                    body.push_str(&action.to_string());
                    body.push('\n');
                    body.push_str(&self.event(item).to_string());
                }
            }
            body.push('\n');
        }
        body
    }

    async fn post(&self, body: String) -> Result<(StatusCode, Bytes)> {
        let host = self.uri.host().context("url has no host")?.to_string();
        let https = self.uri.scheme_str() == Some("https");
        let port = self.uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        let authority = self.uri.authority().map(|a| a.to_string()).unwrap_or(host.clone());
        let (content_type, auth) = match self.config.shape {
            HttpShape::SplunkHec => ("application/json", self.config.token.as_ref().map(|t| format!("Splunk {t}"))),
            HttpShape::ElasticBulk => {
                ("application/x-ndjson", self.config.token.as_ref().map(|t| format!("ApiKey {t}")))
            }
        };
        // Origin-form (the path alone) as clients send it to an origin server; Host says where.
        let target = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let mut request = Request::post(target)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::USER_AGENT, concat!("guard-server/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = auth {
            request = request.header(http::header::AUTHORIZATION, auth);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response = match &self.tls {
            Some(connector) => {
                let stream = tls::handshake(connector, &host, tcp).await?;
                send(TokioIo::new(stream), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        Ok(response)
    }

    fn answer(&self, status: StatusCode, body: &[u8], count: usize) -> Answer {
        let text = || String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT)]).into_owned();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Answer::Retry(format!("{status}: {}", text()));
        }
        if !status.is_success() {
            let error = text();
            return Answer::Taken { refused: (0..count).map(|i| (i, status.as_u16(), error.clone())).collect() };
        }
        if self.config.shape == HttpShape::SplunkHec {
            return Answer::Taken { refused: Vec::new() };
        }
        // _bulk: 200 with per-item results.
        let Ok(reply) = serde_json::from_slice::<Value>(body) else {
            return Answer::Retry(format!("{status} with a body that is not JSON: {}", text()));
        };
        if reply.get("errors").and_then(Value::as_bool) != Some(true) {
            return Answer::Taken { refused: Vec::new() };
        }
        let items = reply.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        if items.len() != count {
            return Answer::Retry(format!("_bulk answered {} items for {count}", items.len()));
        }
        let mut refused = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let result = item.as_object().and_then(|o| o.values().next()).cloned().unwrap_or(Value::Null);
            let status = result.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
            match status {
                200..=299 | 409 => {}
                429 | 500..=599 | 0 => return Answer::Retry(format!("_bulk item {i}: status {status}: {result}")),
                _ => refused.push((i, status, result.get("error").map(Value::to_string).unwrap_or_default())),
            }
        }
        Answer::Taken { refused }
    }

    async fn dead_letter(&self, items: &[Item], refused: &[(usize, u16, String)]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let path = &self.config.dead_letter;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut out = String::new();
        for (i, status, error) in refused {
            let item = &items[*i];
            let record: Value = serde_json::from_str(&item.json).unwrap_or(Value::String(item.json.clone()));
            let line = json!({
                "sink": self.name,
                "seq": item.seq,
                "status": status,
                "error": error,
                "time": guard_api::Timestamp::now().to_string(),
                "record": record,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .with_context(|| format!("cannot open dead-letter file {}", path.display()))?;
        file.write_all(out.as_bytes()).await.with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_data().await.with_context(|| format!("fsync {}", path.display()))
    }
}

async fn send<S>(io: TokioIo<S>, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.context("HTTP handshake")?;
    let driver = tokio::spawn(conn);
    let response = sender.send_request(request).await.context("sending the batch");
    let result = match response {
        Ok(response) => {
            let status = response.status();
            let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
            Ok((status, body))
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

#[async_trait]
impl Deliver for HttpSink {
    async fn deliver(&mut self, items: &[Item]) -> Result<()> {
        let body = self.body(items);
        let (status, reply) = tokio::time::timeout(REQUEST_TIMEOUT, self.post(body))
            .await
            .with_context(|| format!("{}: no answer in {REQUEST_TIMEOUT:?}", self.uri))??;
        match self.answer(status, &reply, items.len()) {
            Answer::Retry(why) => anyhow::bail!("{}: {why}", self.uri),
            Answer::Taken { refused } if refused.is_empty() => Ok(()),
            Answer::Taken { refused } => {
                tracing::error!(
                    "sink {}: {} records refused by {} ({}): written to {}",
                    self.name,
                    refused.len(),
                    self.uri,
                    refused[0].1,
                    self.config.dead_letter.display()
                );
                // If the dead-letter file cannot be written the batch is not done: it goes
                // again (nothing is dropped silently).
                self.dead_letter(items, &refused).await
            }
        }
    }
}
