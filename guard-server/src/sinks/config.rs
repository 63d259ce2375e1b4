//! `[[sink]]` tables of the server's config: parsed here, with the same `file:line:col` errors
//! as the rest of config.rs. One flat table per sink (serde refuses unknown keys), then each
//! key that is not a setting of the sink's `type` is refused by name, so a `path` on a syslog
//! sink is a mistake the operator hears about at start-up, not a setting silently ignored.
use crate::config::ConfigError;
use guard_api::export::Format;
use serde::Deserialize;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

const DEFAULT_BATCH: u32 = 500;
/// Rows one read takes at most (the store caps a query at 10,000 rows anyway).
const MAX_BATCH: u32 = 10_000;
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_KEEP: u32 = 5;
const DEFAULT_APP_NAME: &str = "guard";

/// One configured sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique among sinks: the key of its position in `sink_positions`.
    pub name: String,
    pub format: Format,
    /// Rows read and delivered at a time.
    pub batch: u32,
    /// How often a sink that has caught up looks for new rows.
    pub poll: Duration,
    pub kind: SinkKind,
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    File(FileConfig),
    Syslog(SyslogConfig),
    Http(HttpConfig),
}

#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: PathBuf,
    /// The live file is rotated before a line would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest .. `path.keep` oldest).
    pub keep: u32,
}

/// TLS client material: the CA the receiver's certificate must chain to, and optionally
/// our own certificate for receivers that ask for one.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// `host:port` of the receiver.
    pub address: String,
    /// RFC 5425 (TLS) when set, plain TCP otherwise.
    pub tls: Option<ClientTls>,
    pub app_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpShape {
    SplunkHec,
    ElasticBulk,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `http://` or `https://` base URL; the shape's path is appended.
    pub url: String,
    pub shape: HttpShape,
    /// HEC token (Splunk) or API key (Elasticsearch: `Authorization: ApiKey <token>`).
    pub token: Option<String>,
    /// HEC: the events' index (optional). _bulk: the target index (required).
    pub index: Option<String>,
    /// HEC sourcetype; default by format.
    pub sourcetype: Option<String>,
    /// Where batches (or _bulk items) the receiver refused with a 4xx are written.
    pub dead_letter: PathBuf,
    /// For https://.
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSink {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    format: Option<Spanned<String>>,
    batch_size: Option<Spanned<u32>>,
    poll_interval: Option<Spanned<String>>,
    // file
    path: Option<Spanned<String>>,
    max_bytes: Option<Spanned<u64>>,
    keep: Option<Spanned<u32>>,
    // syslog
    address: Option<Spanned<String>>,
    tls: Option<Spanned<bool>>,
    app_name: Option<Spanned<String>>,
    // syslog with tls, http with https
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    // http
    url: Option<Spanned<String>>,
    shape: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    index: Option<Spanned<String>>,
    sourcetype: Option<Spanned<String>>,
    dead_letter: Option<Spanned<String>>,
}

impl RawSink {
    /// The keys that are set, with their spans, for the "not a setting of this type" check.
    fn set_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        fn span<T>(s: &Option<Spanned<T>>) -> Option<Range<usize>> {
            s.as_ref().map(|s| s.span())
        }
        [
            ("path", span(&self.path)),
            ("max_bytes", span(&self.max_bytes)),
            ("keep", span(&self.keep)),
            ("address", span(&self.address)),
            ("tls", span(&self.tls)),
            ("app_name", span(&self.app_name)),
            ("ca", span(&self.ca)),
            ("cert", span(&self.cert)),
            ("key", span(&self.key)),
            ("url", span(&self.url)),
            ("shape", span(&self.shape)),
            ("token", span(&self.token)),
            ("index", span(&self.index)),
            ("sourcetype", span(&self.sourcetype)),
            ("dead_letter", span(&self.dead_letter)),
        ]
        .into_iter()
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .collect()
    }
}

const FILE_KEYS: &[&str] = &["path", "max_bytes", "keep"];
const SYSLOG_KEYS: &[&str] = &["address", "tls", "app_name", "ca", "cert", "key"];
const HTTP_KEYS: &[&str] = &["url", "shape", "token", "index", "sourcetype", "dead_letter", "ca", "cert", "key"];

/// Parses the `[[sink]]` tables. `at` makes an error at a span of the file; `resolve` makes a
/// configured path absolute (relative to the config file's directory).
pub(crate) fn parse(
    raw: &[Spanned<RawSink>],
    at: &dyn Fn(Range<usize>, String) -> ConfigError,
    resolve: &dyn Fn(&Spanned<String>) -> Result<PathBuf, ConfigError>,
) -> Result<Vec<SinkConfig>, ConfigError> {
    let mut sinks: Vec<SinkConfig> = Vec::new();
    for table in raw {
        let s = table.get_ref();
        let name = s.name.get_ref();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(at(s.name.span(), format!("sink name {name:?}: use letters, digits, '-', '_', '.'")));
        }
        if sinks.iter().any(|o| &o.name == name) {
            return Err(at(s.name.span(), format!("sink {name:?} is declared twice")));
        }
        let format = match &s.format {
            None => Format::parse("ocsf").map_err(|e| at(table.span(), e.to_string()))?,
            Some(f) => Format::parse(f.get_ref()).map_err(|_| {
                at(
                    f.span(),
                    format!("format is {:?}: one of \"ocsf\", \"ocsf-1.5\", \"ecs\", \"cef\", \"jsonl\"", f.get_ref()),
                )
            })?,
        };
        let batch = match &s.batch_size {
            None => DEFAULT_BATCH,
            Some(b) if *b.get_ref() == 0 || *b.get_ref() > MAX_BATCH => {
                return Err(at(b.span(), format!("batch_size must be between 1 and {MAX_BATCH}")))
            }
            Some(b) => *b.get_ref(),
        };
        let poll = match &s.poll_interval {
            None => DEFAULT_POLL,
            Some(p) => match humantime::parse_duration(p.get_ref()) {
                Ok(d) if d.is_zero() => return Err(at(p.span(), "poll_interval must be positive".into())),
                Ok(d) => d,
                Err(e) => return Err(at(p.span(), format!("poll_interval: {e} (examples: 200ms, 1s)"))),
            },
        };
        let allowed = match s.kind.get_ref().as_str() {
            "file" => FILE_KEYS,
            "syslog" => SYSLOG_KEYS,
            "http" => HTTP_KEYS,
            other => {
                return Err(at(s.kind.span(), format!("sink type is {other:?}: one of \"file\", \"syslog\", \"http\"")))
            }
        };
        for (key, span) in s.set_keys() {
            if !allowed.contains(&key) {
                return Err(at(span, format!("{key} is not a setting of a {} sink", s.kind.get_ref())));
            }
        }
        let missing =
            |key: &str| at(table.span(), format!("sink {name:?}: {key} is required for a {} sink", s.kind.get_ref()));
        let opt_path = |p: &Option<Spanned<String>>| p.as_ref().map(resolve).transpose();
        let tls = |required_for: &str| -> Result<ClientTls, ConfigError> {
            let ca = s.ca.as_ref().ok_or_else(|| missing(&format!("ca ({required_for})")))?;
            let (cert, key) = (opt_path(&s.cert)?, opt_path(&s.key)?);
            if cert.is_some() != key.is_some() {
                let span = s.cert.as_ref().or(s.key.as_ref()).map(|k| k.span()).unwrap_or(table.span());
                return Err(at(span, "cert and key go together (a client certificate needs its key)".into()));
            }
            Ok(ClientTls { ca: resolve(ca)?, cert, key })
        };
        let kind = match s.kind.get_ref().as_str() {
            "file" => {
                let path = resolve(s.path.as_ref().ok_or_else(|| missing("path"))?)?;
                let max_bytes = match &s.max_bytes {
                    None => DEFAULT_MAX_BYTES,
                    Some(m) if *m.get_ref() < 1024 => {
                        return Err(at(m.span(), "max_bytes must be at least 1024".into()))
                    }
                    Some(m) => *m.get_ref(),
                };
                let keep = match &s.keep {
                    None => DEFAULT_KEEP,
                    Some(k) if *k.get_ref() == 0 => {
                        return Err(at(
                            k.span(),
                            "keep must be at least 1 (0 would drop records at each rotation)".into(),
                        ))
                    }
                    Some(k) => *k.get_ref(),
                };
                SinkKind::File(FileConfig { path, max_bytes, keep })
            }
            "syslog" => {
                let address = s.address.as_ref().ok_or_else(|| missing("address"))?;
                if address.get_ref().rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    return Err(at(address.span(), format!("address {:?}: want HOST:PORT", address.get_ref())));
                }
                let use_tls = s.tls.as_ref().is_some_and(|t| *t.get_ref());
                if !use_tls {
                    if let Some((key, span)) = s.set_keys().into_iter().find(|(k, _)| ["ca", "cert", "key"].contains(k))
                    {
                        return Err(at(span, format!("{key} is only for tls = true")));
                    }
                }
                let app_name = match &s.app_name {
                    None => DEFAULT_APP_NAME.to_string(),
                    Some(a)
                        if a.get_ref().is_empty()
                            || a.get_ref().len() > 48
                            || !a.get_ref().bytes().all(|b| (33..=126).contains(&b)) =>
                    {
                        return Err(at(
                            a.span(),
                            "app_name: 1 to 48 printable ASCII characters, no spaces (RFC 5424)".into(),
                        ))
                    }
                    Some(a) => a.get_ref().clone(),
                };
                let tls = if use_tls { Some(tls("tls = true")?) } else { None };
                SinkKind::Syslog(SyslogConfig { address: address.get_ref().clone(), tls, app_name })
            }
            _ => {
                let url = s.url.as_ref().ok_or_else(|| missing("url"))?;
                let parsed: Result<http::Uri, _> = url.get_ref().parse();
                let https = match parsed.as_ref().ok().and_then(|u| u.scheme_str().map(str::to_string)) {
                    Some(s) if s == "http" => false,
                    Some(s) if s == "https" => true,
                    _ => {
                        return Err(at(
                            url.span(),
                            format!("url {:?}: want http://HOST[:PORT] or https://...", url.get_ref()),
                        ))
                    }
                };
                if parsed.as_ref().ok().and_then(|u| u.host()).is_none() {
                    return Err(at(url.span(), format!("url {:?} has no host", url.get_ref())));
                }
                let shape = s.shape.as_ref().ok_or_else(|| missing("shape"))?;
                let shape_v = match shape.get_ref().as_str() {
                    "splunk-hec" => HttpShape::SplunkHec,
                    "elastic-bulk" => HttpShape::ElasticBulk,
                    other => {
                        return Err(at(
                            shape.span(),
                            format!("shape is {other:?}: one of \"splunk-hec\", \"elastic-bulk\""),
                        ))
                    }
                };
                if shape_v == HttpShape::SplunkHec && s.token.is_none() {
                    return Err(missing("token"));
                }
                if shape_v == HttpShape::ElasticBulk && s.index.is_none() {
                    return Err(missing("index"));
                }
                if shape_v == HttpShape::ElasticBulk {
                    if let Some(st) = &s.sourcetype {
                        return Err(at(st.span(), "sourcetype is a Splunk HEC setting".into()));
                    }
                }
                let dead_letter = resolve(s.dead_letter.as_ref().ok_or_else(|| missing("dead_letter"))?)?;
                let tls = if https {
                    Some(tls("https")?)
                } else {
                    if let Some((key, span)) = s.set_keys().into_iter().find(|(k, _)| ["ca", "cert", "key"].contains(k))
                    {
                        return Err(at(span, format!("{key} is only for an https:// url")));
                    }
                    None
                };
                let text = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().clone());
                SinkKind::Http(HttpConfig {
                    url: url.get_ref().trim_end_matches('/').to_string(),
                    shape: shape_v,
                    token: text(&s.token),
                    index: text(&s.index),
                    sourcetype: text(&s.sourcetype),
                    dead_letter,
                    tls,
                })
            }
        };
        sinks.push(SinkConfig { name: name.clone(), format, batch, poll, kind });
    }
    Ok(sinks)
}
