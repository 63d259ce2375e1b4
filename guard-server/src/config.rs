//! The server's TOML configuration. Unknown keys are refused and every error names
//! `file:line:col`, so a typo in a rule is found at start-up rather than when a request
//! arrives and nobody can approve it.
use guard_api::Location;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Everything `serve` needs, with paths resolved.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub tls: TlsPaths,
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The rules the lifecycle applies: who may approve what, how many approvals, what is
/// decided without a person.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub approvers: BTreeMap<String, ApproverConfig>,
    pub requires: BTreeMap<String, Requirement>,
    pub autos: BTreeMap<String, AutoDecision>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_timeout: DEFAULT_TIMEOUT,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            approvers: BTreeMap::new(),
            requires: BTreeMap::new(),
            autos: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApproverConfig {
    /// Unix users (names or uids as text) that are this approver's own: requests from trees
    /// running as them are not theirs to approve.
    pub unix_users: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Requirement {
    pub approvals: u32,
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoDecision {
    Approve,
    Deny,
}

/// A configuration error and where it is (`guard_api::Location`: the one file:line:col rule).
#[derive(Debug, thiserror::Error)]
#[error("{at}: {message}")]
pub struct ConfigError {
    pub at: Location,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    database_url: Option<Spanned<String>>,
    default_timeout: Option<Spanned<String>>,
    max_timeout: Option<Spanned<String>>,
    tls: Spanned<RawTls>,
    #[serde(default)]
    approver: Vec<Spanned<RawApprover>>,
    #[serde(default)]
    require: Vec<Spanned<RawRequire>>,
    #[serde(default)]
    auto: Vec<Spanned<RawAuto>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprover {
    name: Spanned<String>,
    #[serde(default)]
    unix_users: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    rule: Spanned<String>,
    approvals: Spanned<u32>,
    approvers: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuto {
    rule: Spanned<String>,
    decision: AutoDecision,
}

impl ServerConfig {
    pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Ok(Self::parse(path, &text)?)
    }

    /// Parses `text` as the content of `path` (relative paths in it are relative to the
    /// file's directory).
    pub fn parse(path: &Path, text: &str) -> Result<ServerConfig, ConfigError> {
        let at = |span: Range<usize>, message: String| locate(path, text, span, message);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, toml_message(text, &e))
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Spanned<String>| -> Result<PathBuf, ConfigError> {
            if p.get_ref().is_empty() {
                return Err(at(p.span(), "empty path".into()));
            }
            Ok(base.join(p.get_ref()))
        };

        let listen = match &raw.listen {
            Some(l) => l.get_ref().parse().map_err(|e| at(l.span(), format!("listen: {e} (want IP:PORT)")))?,
            None => DEFAULT_LISTEN.parse().map_err(|e| at(0..0, format!("default listen: {e}")))?,
        };
        let database_url = match &raw.database_url {
            Some(u) if u.get_ref().starts_with("sqlite:") || u.get_ref().starts_with("postgres") => u.get_ref().clone(),
            Some(u) => return Err(at(u.span(), "database_url must start with sqlite: or postgres://".into())),
            None => format!("sqlite://{}", base.join("guard.db").display()),
        };
        let duration = |d: &Option<Spanned<String>>, default: Duration| -> Result<Duration, ConfigError> {
            match d {
                None => Ok(default),
                Some(d) => match humantime::parse_duration(d.get_ref()) {
                    Ok(v) if v.is_zero() => Err(at(d.span(), "duration must be positive".into())),
                    Ok(v) => Ok(v),
                    Err(e) => Err(at(d.span(), format!("{e} (examples: 30s, 5m, 1h)"))),
                },
            }
        };
        let max_timeout = duration(&raw.max_timeout, DEFAULT_MAX_TIMEOUT)?;
        let default_timeout = duration(&raw.default_timeout, DEFAULT_TIMEOUT)?.min(max_timeout);
        let tls = raw.tls.get_ref();
        let tls = TlsPaths { ca: resolve(&tls.ca)?, cert: resolve(&tls.cert)?, key: resolve(&tls.key)? };

        let mut approvers = BTreeMap::new();
        for a in &raw.approver {
            let name = &a.get_ref().name;
            if name.get_ref().is_empty() {
                return Err(at(name.span(), "approver name is empty".into()));
            }
            let entry = ApproverConfig { unix_users: a.get_ref().unix_users.clone() };
            if approvers.insert(name.get_ref().clone(), entry).is_some() {
                return Err(at(name.span(), format!("approver {:?} is declared twice", name.get_ref())));
            }
        }

        let mut requires = BTreeMap::new();
        for r in &raw.require {
            let r = r.get_ref();
            let list = r.approvers.get_ref();
            // Approvers need no [[approver]] entry (that is only for their unix_users): a
            // certificate is enough. Empty names can only be typos.
            for a in list {
                if a.get_ref().is_empty() {
                    return Err(at(a.span(), "empty approver name".into()));
                }
            }
            let names: Vec<String> = list.iter().map(|a| a.get_ref().clone()).collect();
            let distinct = names.iter().collect::<std::collections::BTreeSet<_>>().len();
            let approvals = *r.approvals.get_ref();
            if approvals == 0 || approvals as usize > distinct {
                return Err(at(
                    r.approvals.span(),
                    format!("approvals must be between 1 and the {distinct} distinct approvers listed"),
                ));
            }
            let requirement = Requirement { approvals, approvers: names };
            if requires.insert(r.rule.get_ref().clone(), requirement).is_some() {
                return Err(at(r.rule.span(), format!("rule {:?} has two [[require]] entries", r.rule.get_ref())));
            }
        }

        let mut autos = BTreeMap::new();
        for a in &raw.auto {
            let a = a.get_ref();
            if requires.contains_key(a.rule.get_ref()) {
                return Err(at(
                    a.rule.span(),
                    format!("rule {:?} is both in [[require]] and [[auto]]", a.rule.get_ref()),
                ));
            }
            if autos.insert(a.rule.get_ref().clone(), a.decision).is_some() {
                return Err(at(a.rule.span(), format!("rule {:?} has two [[auto]] entries", a.rule.get_ref())));
            }
        }

        Ok(ServerConfig {
            listen,
            database_url,
            tls,
            policy: Policy { default_timeout, max_timeout, approvers, requires, autos },
        })
    }

    /// No config file: TLS material from an `init-pki` directory, SQLite next to it, an empty
    /// policy (any approver may approve anything once).
    pub fn from_pki(dir: &Path, listen: SocketAddr, database_url: Option<String>) -> ServerConfig {
        let db_dir = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        ServerConfig {
            listen,
            database_url: database_url.unwrap_or_else(|| format!("sqlite://{}", db_dir.join("guard.db").display())),
            tls: TlsPaths { ca: dir.join("ca.crt"), cert: dir.join("server.crt"), key: dir.join("server.key") },
            policy: Policy::default(),
        }
    }
}

/// toml's message for `e`, or what is wrong when it gives none (the fuzzer found inputs with
/// a control character for which the message is empty): an error must say what it is.
pub fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let m = e.message().trim();
    if !m.is_empty() {
        return m.to_string();
    }
    let at = e.span().map(|s| s.start).unwrap_or(0);
    match text.get(at..).and_then(|t| t.chars().next()) {
        Some(c) => format!("invalid TOML: unexpected character {c:?}"),
        None => "invalid TOML: the file ends too early".to_string(),
    }
}

fn locate(path: &Path, text: &str, span: Range<usize>, message: String) -> ConfigError {
    ConfigError { at: Location::of(path, text, span), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(Path::new("/etc/guard/server.toml"), text)
    }

    const TLS: &str = "[tls]\nca = \"pki/ca.crt\"\ncert = \"pki/server.crt\"\nkey = \"pki/server.key\"\n";

    #[test]
    fn full_example_parses_and_resolves_paths() {
        let text = format!(
            "listen = \"127.0.0.1:9000\"\ndefault_timeout = \"2m\"\n{TLS}\
             [[approver]]\nname = \"alice\"\nunix_users = [\"alice\", \"1000\"]\n\
             [[approver]]\nname = \"bob\"\n\
             [[require]]\nrule = \"prod\"\napprovals = 2\napprovers = [\"alice\", \"bob\"]\n\
             [[auto]]\nrule = \"bench-auto\"\ndecision = \"approve\"\n"
        );
        let c = parse(&text).expect("valid");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.tls.ca, Path::new("/etc/guard/pki/ca.crt"));
        assert_eq!(c.database_url, "sqlite:///etc/guard/guard.db");
        assert_eq!(c.policy.default_timeout, Duration::from_secs(120));
        assert_eq!(c.policy.requires["prod"].approvals, 2);
        assert_eq!(c.policy.autos["bench-auto"], AutoDecision::Approve);
        assert_eq!(c.policy.approvers["alice"].unix_users, ["alice", "1000"]);
    }

    #[test]
    fn a_control_character_is_named_not_an_empty_message() {
        // Found by the `server_config` fuzz target: toml gives no message for this one.
        let err = parse("#\0\0\0\0 \"O\"O").unwrap_err();
        assert!(!err.message.is_empty(), "{err}");
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = parse(&format!("{TLS}\n[[approver]]\nname = \"a\"\nunix_user = []\n")).unwrap_err();
        assert_eq!((err.at.line, err.at.col), (8, 1), "{err}");
        assert!(err.to_string().starts_with("/etc/guard/server.toml:8:1: "), "{err}");
        assert!(err.message.contains("unix_user"), "{err}");
    }

    #[test]
    fn semantic_errors_name_their_line() {
        let err = parse(&format!("{TLS}default_timeout = \"soon\"\n")).unwrap_err();
        assert_eq!(err.at.line, 5, "{err}");
        let err = parse(&format!(
            "{TLS}[[approver]]\nname = \"alice\"\n[[require]]\nrule = \"r\"\napprovals = 1\napprovers = [\"alice\", \"\"]\n"
        ))
        .unwrap_err();
        assert_eq!(err.at.line, 10, "{err}");
        assert!(err.message.contains("empty"), "{err}");
        let err = parse(&format!(
            "{TLS}[[approver]]\nname = \"alice\"\n[[require]]\nrule = \"r\"\napprovals = 3\napprovers = [\"alice\"]\n"
        ))
        .unwrap_err();
        assert_eq!(err.at.line, 9, "{err}");
    }
}
