//! The server's TOML configuration. Unknown keys are refused and every error names
//! `file:line:col`, so a typo in a rule is found at start-up rather than when a request
//! arrives and nobody can approve it.
use crate::ratelimit::{Limits, Rate};
use crate::rules::{Glob, Redactor, Scope};
use crate::sinks::config::{RawSink, SinkConfig};
use guard_api::{toml_message, Location};
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
    pub audit: AuditSettings,
    /// The audit sinks (`[[sink]]`), each with its own position in the audit trail.
    pub sinks: Vec<SinkConfig>,
    /// The web console (`[console]`); None: no console listener.
    pub console: Option<crate::console::config::ConsoleSettings>,
    /// Chat approvals (`[chat]`): Slack, Teams, the signed webhook; off by default.
    pub chat: crate::chat::ChatConfig,
}

/// The server's own audit chain: its signing key and how often it signs a checkpoint.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The ed25519 key (PKCS#8) that signs checkpoints; created on first start.
    pub key: PathBuf,
    /// A checkpoint after this many new rows...
    pub checkpoint_rows: u64,
    /// ...or this long after the first row it does not cover yet.
    pub checkpoint_every: Duration,
}

impl AuditSettings {
    pub const DEFAULT_ROWS: u64 = 1000;
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

    fn at(key: PathBuf) -> Self {
        AuditSettings { key, checkpoint_rows: Self::DEFAULT_ROWS, checkpoint_every: Self::DEFAULT_EVERY }
    }
}

#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The rules the lifecycle applies: who may approve what, how many approvals, what is
/// decided without a person, who sees which hosts, what is redacted, how often a host may ask.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub approvers: BTreeMap<String, ApproverConfig>,
    /// In file order; the first whose scope matches applies.
    pub requires: Vec<Requirement>,
    /// In file order; applies only when no `[[require]]` matches, the first match wins.
    pub autos: Vec<AutoRule>,
    /// Host groups by name. Empty: every approver sees every host.
    pub host_groups: BTreeMap<String, Vec<Glob>>,
    pub redact: Redactor,
    pub policy_changed: PolicyChanged,
    pub limits: Limits,
    /// Which approvals need a passkey (`[passkeys]`).
    pub passkeys: crate::passkey::PasskeyPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_timeout: DEFAULT_TIMEOUT,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            approvers: BTreeMap::new(),
            requires: Vec::new(),
            autos: Vec::new(),
            host_groups: BTreeMap::new(),
            redact: Redactor::default(),
            policy_changed: PolicyChanged::Flag,
            limits: Limits::default(),
            passkeys: crate::passkey::PasskeyPolicy::Off,
        }
    }
}

impl Policy {
    /// The `[[require]]` that applies to a request from `host` under `policy` by `rule`.
    pub fn requirement(&self, host: &str, policy: &str, rule: &str) -> Option<&Requirement> {
        self.requires.iter().find(|r| r.scope.matches(host, policy, rule))
    }

    /// The `[[auto]]` that applies, when no `[[require]]` does.
    pub fn auto(&self, host: &str, policy: &str, rule: &str) -> Option<&AutoRule> {
        if self.requirement(host, policy, rule).is_some() {
            return None;
        }
        self.autos.iter().find(|a| a.scope.matches(host, policy, rule))
    }

    /// Whether `approver` may see (list, show, review, cancel) requests and records of `host`.
    /// With no host groups configured every approver sees every host; with some, an approver
    /// sees the hosts of the groups their `[[approver]]` entry names, and nothing else.
    pub fn sees_host(&self, approver: &str, host: &str) -> bool {
        if self.host_groups.is_empty() {
            return true;
        }
        let Some(a) = self.approvers.get(approver) else { return false };
        a.host_groups.iter().filter_map(|g| self.host_groups.get(g)).flatten().any(|glob| glob.matches(host))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApproverConfig {
    /// Unix users (names or uids as text) that are this approver's own: requests from trees
    /// they own are not theirs to approve.
    pub unix_users: Vec<String>,
    /// The host groups whose requests this approver sees.
    pub host_groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Requirement {
    pub scope: Scope,
    pub approvals: u32,
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AutoRule {
    pub scope: Scope,
    pub decision: AutoDecision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoDecision {
    Approve,
    Deny,
}

/// What to do with a request whose policy hash is not the one its host registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyChanged {
    /// Create it, with a `policy-changed` flag approvers see; `[[auto]]` rules do not apply.
    Flag,
    /// Refuse it (PERMISSION_DENIED): the agent denies the hold.
    Refuse,
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
    audit: Option<Spanned<RawAudit>>,
    #[serde(default)]
    approver: Vec<Spanned<RawApprover>>,
    #[serde(default)]
    require: Vec<Spanned<RawRequire>>,
    #[serde(default)]
    auto: Vec<Spanned<RawAuto>>,
    #[serde(default)]
    host_group: Vec<Spanned<RawHostGroup>>,
    redact: Option<Spanned<RawRedact>>,
    policy_changed: Option<Spanned<String>>,
    rate_limit: Option<Spanned<RawRateLimit>>,
    #[serde(default)]
    sink: Vec<Spanned<RawSink>>,
    console: Option<Spanned<crate::console::config::RawConsole>>,
    passkeys: Option<Spanned<crate::passkey::policy::RawPasskeys>>,
    // Not Spanned: `[chat.slack]` alone defines `chat` implicitly, which toml cannot span.
    chat: Option<crate::chat::config::RawChat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostGroup {
    name: Spanned<String>,
    hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedact {
    /// Keep the built-in patterns (true unless said otherwise).
    defaults: Option<bool>,
    #[serde(default)]
    patterns: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    host_per_minute: Option<Spanned<u32>>,
    host_burst: Option<Spanned<u32>>,
    tree_per_minute: Option<Spanned<u32>>,
    tree_burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    key: Option<Spanned<String>>,
    checkpoint_rows: Option<Spanned<u64>>,
    checkpoint_every: Option<Spanned<String>>,
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
    #[serde(default)]
    host_groups: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    host: Option<Spanned<String>>,
    policy: Option<Spanned<String>>,
    rule: Spanned<String>,
    approvals: Spanned<u32>,
    approvers: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuto {
    host: Option<Spanned<String>>,
    policy: Option<Spanned<String>>,
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

        let glob = |g: &Spanned<String>| Glob::new(g.get_ref()).map_err(|e| at(g.span(), e));
        let opt_glob = |g: &Option<Spanned<String>>| g.as_ref().map(glob).unwrap_or_else(|| Ok(Glob::any()));

        let mut host_groups = BTreeMap::new();
        for g in &raw.host_group {
            let g = g.get_ref();
            if g.name.get_ref().is_empty() {
                return Err(at(g.name.span(), "host group name is empty".into()));
            }
            let hosts = g.hosts.iter().map(glob).collect::<Result<Vec<_>, _>>()?;
            if host_groups.insert(g.name.get_ref().clone(), hosts).is_some() {
                return Err(at(g.name.span(), format!("host group {:?} is declared twice", g.name.get_ref())));
            }
        }

        let mut approvers = BTreeMap::new();
        for a in &raw.approver {
            let name = &a.get_ref().name;
            if name.get_ref().is_empty() {
                return Err(at(name.span(), "approver name is empty".into()));
            }
            for g in &a.get_ref().host_groups {
                if !host_groups.contains_key(g.get_ref()) {
                    return Err(at(g.span(), format!("no [[host_group]] is named {:?}", g.get_ref())));
                }
            }
            let entry = ApproverConfig {
                unix_users: a.get_ref().unix_users.clone(),
                host_groups: a.get_ref().host_groups.iter().map(|g| g.get_ref().clone()).collect(),
            };
            if approvers.insert(name.get_ref().clone(), entry).is_some() {
                return Err(at(name.span(), format!("approver {:?} is declared twice", name.get_ref())));
            }
        }

        let mut requires: Vec<Requirement> = Vec::new();
        for r in &raw.require {
            let r = r.get_ref();
            let list = r.approvers.get_ref();
            // Approvers need no [[approver]] entry (that is only for their unix_users and host
            // groups): a certificate is enough. Empty names can only be typos.
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
            let scope = Scope { host: opt_glob(&r.host)?, policy: opt_glob(&r.policy)?, rule: glob(&r.rule)? };
            if requires.iter().any(|q| q.scope == scope) {
                return Err(at(r.rule.span(), format!("two [[require]] entries for {}", scope.describe())));
            }
            requires.push(Requirement { scope, approvals, approvers: names });
        }

        let mut autos: Vec<AutoRule> = Vec::new();
        for a in &raw.auto {
            let a = a.get_ref();
            let scope = Scope { host: opt_glob(&a.host)?, policy: opt_glob(&a.policy)?, rule: glob(&a.rule)? };
            if requires.iter().any(|r| r.scope == scope) {
                return Err(at(a.rule.span(), format!("{} is both in [[require]] and [[auto]]", scope.describe())));
            }
            if autos.iter().any(|q| q.scope == scope) {
                return Err(at(a.rule.span(), format!("two [[auto]] entries for {}", scope.describe())));
            }
            autos.push(AutoRule { scope, decision: a.decision });
        }

        let redact = match &raw.redact {
            None => Redactor::default(),
            Some(r) => {
                let r = r.get_ref();
                let mut patterns: Vec<String> = Vec::new();
                let defaults = r.defaults.unwrap_or(true);
                if defaults {
                    patterns.extend(crate::rules::DEFAULT_PATTERNS.iter().map(|p| p.to_string()));
                }
                for p in &r.patterns {
                    Redactor::check(p.get_ref()).map_err(|e| at(p.span(), format!("bad redaction pattern: {e}")))?;
                    patterns.push(p.get_ref().clone());
                }
                let flag = defaults.then(|| crate::rules::DEFAULT_SECRET_FLAGS.to_string());
                Redactor::new(patterns, flag).map_err(|e| at(0..0, e))?
            }
        };

        let policy_changed = match &raw.policy_changed {
            None => PolicyChanged::Flag,
            Some(p) => match p.get_ref().as_str() {
                "flag" => PolicyChanged::Flag,
                "refuse" => PolicyChanged::Refuse,
                other => return Err(at(p.span(), format!("policy_changed is {other:?}: one of \"flag\", \"refuse\""))),
            },
        };

        let mut limits = Limits::default();
        if let Some(r) = &raw.rate_limit {
            let r = r.get_ref();
            // 0 per minute: no limit of that kind.
            let rate = |per: &Option<Spanned<u32>>, burst: &Option<Spanned<u32>>, default: Option<Rate>| {
                let d = default.unwrap_or(Rate { per_minute: 0, burst: 0 });
                let per_minute = per.as_ref().map(|p| *p.get_ref()).unwrap_or(d.per_minute);
                let burst_v = burst.as_ref().map(|b| *b.get_ref()).unwrap_or(d.burst.max(1));
                if per_minute > 0 && burst_v == 0 {
                    let span = burst.as_ref().map(|b| b.span()).unwrap_or(0..0);
                    return Err(at(span, "burst must be at least 1 (0 would refuse everything)".into()));
                }
                Ok((per_minute > 0).then_some(Rate { per_minute, burst: burst_v }))
            };
            limits.host = rate(&r.host_per_minute, &r.host_burst, limits.host)?;
            limits.tree = rate(&r.tree_per_minute, &r.tree_burst, limits.tree)?;
        }

        let mut audit = AuditSettings::at(base.join("audit.key"));
        if let Some(a) = &raw.audit {
            let a = a.get_ref();
            if let Some(k) = &a.key {
                audit.key = resolve(k)?;
            }
            if let Some(n) = &a.checkpoint_rows {
                if *n.get_ref() == 0 {
                    return Err(at(n.span(), "checkpoint_rows must be at least 1".into()));
                }
                audit.checkpoint_rows = *n.get_ref();
            }
            audit.checkpoint_every = duration(&a.checkpoint_every, audit.checkpoint_every)?;
        }
        let sinks = crate::sinks::config::parse(&raw.sink, &at, &resolve)?;
        let console =
            raw.console.as_ref().map(|c| crate::console::config::parse(c, &tls, &at, &resolve)).transpose()?;
        let passkeys = crate::passkey::policy::parse(raw.passkeys.as_ref(), &at)?;
        let chat = crate::chat::config::parse(&raw.chat, &at, &resolve)?;

        Ok(ServerConfig {
            listen,
            database_url,
            tls,
            audit,
            sinks,
            console,
            chat,
            policy: Policy {
                default_timeout,
                max_timeout,
                approvers,
                requires,
                autos,
                host_groups,
                redact,
                policy_changed,
                limits,
                passkeys,
            },
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
            audit: AuditSettings::at(dir.join("audit.key")),
            sinks: Vec::new(),
            console: None,
            chat: crate::chat::ChatConfig::default(),
        }
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
        assert_eq!(c.policy.requirement("h1", "any", "prod").map(|r| r.approvals), Some(2));
        assert_eq!(c.policy.auto("h1", "any", "bench-auto").map(|a| a.decision), Some(AutoDecision::Approve));
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

    #[test]
    fn trust_settings_parse() {
        let text = format!(
            "policy_changed = \"refuse\"\n{TLS}\
             [[host_group]]\nname = \"prod\"\nhosts = [\"prod-*\"]\n\
             [[approver]]\nname = \"alice\"\nunix_users = [\"alice\", \"1000\"]\nhost_groups = [\"prod\"]\n\
             [[require]]\nhost = \"prod-*\"\npolicy = \"coding-agent\"\nrule = \"deploy-*\"\napprovals = 2\napprovers = [\"alice\", \"bob\", \"carol\"]\n\
             [[auto]]\nrule = \"read-docs\"\ndecision = \"approve\"\n\
             [redact]\npatterns = [\"sk_live_[a-z0-9]+\"]\n\
             [rate_limit]\nhost_per_minute = 600\ntree_per_minute = 0\n"
        );
        let p = parse(&text).expect("valid").policy;
        assert_eq!(p.policy_changed, PolicyChanged::Refuse);
        assert!(p.sees_host("alice", "prod-db") && !p.sees_host("alice", "dev-1") && !p.sees_host("bob", "prod-db"));
        assert_eq!(p.requirement("prod-db", "coding-agent", "deploy-web").map(|r| r.approvals), Some(2));
        assert!(p.requirement("prod-db", "other", "deploy-web").is_none());
        let mut argv = vec!["x".to_string(), "sk_live_abc".into(), "--password=p".into()];
        assert!(p.redact.redact(&mut argv));
        assert_eq!(argv, ["x", "[REDACTED]", "--password=[REDACTED]"], "configured and default patterns");
        assert_eq!(p.limits.host, Some(Rate { per_minute: 600, burst: 120 }));
        assert_eq!(p.limits.tree, None, "0 per minute: no limit");
        // Without any host group, everyone sees every host.
        assert!(parse(TLS).unwrap().policy.sees_host("anyone", "any-host"));
    }
}
