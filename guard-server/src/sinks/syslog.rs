//! The syslog sink: RFC 5424 messages, octet-counted (RFC 6587 3.4.1, the framing RFC 5425
//! requires for TLS), over TCP or TLS.
//!
//! A message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [guard@32473 seq=".." host=".."] MSG`
//! with PRI = facility 13 (log audit) * 8 + the record's severity, HOSTNAME the record's host,
//! MSGID its kind and MSG the record in the sink's format (no BOM: MSG-ANY, since CEF and JSON
//! receivers take the text as it is). 32473 is the private enterprise number RFC 5612 sets
//! aside for examples; a site with its own can rewrite the SD-ID at the receiver.
//!
//! Syslog has no acknowledgement: a batch counts as delivered when the kernel took all of it.
//! Before each batch the connection is probed for an end or an error from the receiver (a
//! restarted rsyslogd closes it), so a batch is not written into a socket already known dead;
//! what a receiver loses after the write (it crashed with our bytes unread) cannot be seen
//! from here: that is the limit of syslog over TCP (RELP would close it).
use super::config::SyslogConfig;
use super::tls;
use super::{Deliver, Item};
use anyhow::{Context, Result};
use async_trait::async_trait;
use guard_api::export::Severity;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A batch that takes longer than this to write: the receiver is stuck; reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// `log audit` (RFC 5424 table 1).
const FACILITY: u8 = 13;
/// The SD-ID of guard's structured data (see the module comment).
const SD_ID: &str = "guard@32473";

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

pub struct SyslogSink {
    config: SyslogConfig,
    tls: Option<TlsConnector>,
    conn: Option<Box<dyn Stream>>,
}

impl SyslogSink {
    pub fn new(config: SyslogConfig) -> Result<SyslogSink> {
        let tls = config.tls.as_ref().map(tls::connector).transpose()?;
        Ok(SyslogSink { config, tls, conn: None })
    }

    async fn connect(&self) -> Result<Box<dyn Stream>> {
        let address = &self.config.address;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .with_context(|| format!("connecting to {address}: timed out"))?
            .with_context(|| format!("connecting to {address}"))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
                Box::new(tls::handshake(connector, host, tcp).await?)
            }
        })
    }
}

/// Whether the receiver closed the connection or reset it. Receivers send nothing on a syslog
/// connection, so anything readable is an end or an error.
async fn closed(conn: &mut Box<dyn Stream>) -> bool {
    let mut byte = [0u8; 1];
    tokio::select! {
        biased;
        read = conn.read(&mut byte) => !matches!(read, Ok(n) if n > 0),
        _ = std::future::ready(()) => false,
    }
}

#[async_trait]
impl Deliver for SyslogSink {
    async fn deliver(&mut self, items: &[Item]) -> Result<()> {
        let mut open = self.conn.take();
        if let Some(c) = open.as_mut() {
            if closed(c).await {
                open = None;
            }
        }
        let mut conn = match open {
            Some(c) => c,
            None => self.connect().await?,
        };
        let mut frames = Vec::new();
        for item in items {
            frame(&mut frames, &message(&self.config.app_name, item));
        }
        let write = async {
            conn.write_all(&frames).await?;
            conn.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {
                self.conn = Some(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(e).with_context(|| format!("writing to {}", self.config.address)),
            Err(_) => anyhow::bail!("writing to {}: no progress in {WRITE_TIMEOUT:?}", self.config.address),
        }
    }
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(format!("{} ", message.len()).as_bytes());
    out.extend_from_slice(message.as_bytes());
}

/// Severity (RFC 5424 table 2) of a record: warnings for blocked and rejected operations,
/// critical for tampering and lost events.
fn severity(s: Severity) -> u8 {
    match s {
        Severity::Informational => 6,
        Severity::Low => 5,
        Severity::Medium => 4,
        Severity::High => 2,
    }
}

/// A header field: printable ASCII without spaces, at most `max` octets, "-" when empty.
fn header(text: &str, max: usize) -> String {
    let clean: String = text.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(max).collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn message(app_name: &str, item: &Item) -> String {
    let pri = FACILITY * 8 + severity(item.severity);
    let time = guard_api::Timestamp::from_unix_ms(item.time_ms);
    format!(
        "<{pri}>1 {time} {} {} - {} [{SD_ID} seq=\"{}\" host=\"{}\"] {}",
        header(&item.host, 255),
        header(app_name, 48),
        header(&item.kind, 32),
        item.seq,
        param(&item.host),
        item.line
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> Item {
        Item {
            seq: 7,
            host: "web 1".into(),
            time_ms: 1_796_002_226_007,
            kind: "enforcement".into(),
            severity: Severity::Medium,
            line: "CEF:0|guard|x".into(),
            json: String::new(),
        }
    }

    #[test]
    fn a_message_has_every_rfc5424_field_and_is_octet_counted() {
        let m = message("guard", &item());
        assert_eq!(
            m,
            "<108>1 2026-11-30T01:30:26.007Z web_1 guard - enforcement [guard@32473 seq=\"7\" host=\"web 1\"] CEF:0|guard|x"
        );
        let mut out = Vec::new();
        frame(&mut out, "é");
        assert_eq!(out, b"2 \xc3\xa9", "the length counts octets, not characters");
        assert_eq!(param("a\"b]c\\"), "a\\\"b\\]c\\\\");
    }
}
