//! `[chat]`, `[chat.slack]`, `[chat.teams]`, `[chat.webhook]` of the server config. Secrets
//! live in their own files (never in the config, which is often world-readable); each is read
//! here, at start-up, so a missing or empty one is an error naming its key and file rather
//! than a card that never arrives. Unknown keys are refused like everywhere in the config.
use crate::config::ConfigError;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Debian's bundle of the public CAs: what `https://slack.com` and Microsoft's endpoints chain to.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
pub const DEFAULT_SLACK_API: &str = "https://slack.com/api";
/// Who signs the Bot Framework's tokens (its OpenID configuration's `issuer`).
pub const DEFAULT_TEAMS_ISSUER: &str = "https://api.botframework.com";

/// The chat channels; all off by default.
#[derive(Debug, Clone, Default)]
pub struct ChatConfig {
    /// The console's public base URL, for the step-up links in cards ("open in the console").
    pub console_url: Option<String>,
    /// The CAs the chat services' certificates must chain to.
    pub ca_file: PathBuf,
    pub slack: Option<SlackConfig>,
    pub teams: Option<TeamsConfig>,
    pub webhook: Option<WebhookConfig>,
}

impl ChatConfig {
    pub fn is_off(&self) -> bool {
        self.slack.is_none() && self.teams.is_none() && self.webhook.is_none()
    }
}

/// A secret read from a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// `xoxb-...`: `Authorization: Bearer` of chat.postMessage and chat.update.
    pub bot_token: Secret,
    /// The app's signing secret: interaction posts are signed with it.
    pub signing_secret: Secret,
    /// Where cards are posted: one copy per channel.
    pub channels: Vec<String>,
    /// The Web API's base URL (a local receiver in tests).
    pub api_base: String,
    /// Slack user id -> approver name. Users not listed cannot approve from Slack.
    pub users: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct TeamsConfig {
    /// Where cards are posted: an incoming webhook or a Workflows "post to a channel" URL.
    pub post_url: String,
    /// The bot's Microsoft app id: the audience (`aud`) of the tokens on its action callbacks.
    pub app_id: String,
    /// The tokens' issuer (`iss`).
    pub issuer: String,
    /// The keys that sign them: a JWKS file (no fetch at run time).
    pub jwks: JwkSet,
    /// AAD object id -> approver name.
    pub users: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key of `X-Guard-Signature`, both ways.
    pub secret: Secret,
    /// The receiver's user names -> approver names. Empty: the callback's `user` is the
    /// approver's name as it is (the receiver, holding the secret, vouches for it).
    pub users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChat {
    console_url: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    slack: Option<RawSlack>,
    teams: Option<RawTeams>,
    webhook: Option<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    bot_token_file: Spanned<String>,
    signing_secret_file: Spanned<String>,
    channel: Spanned<OneOrMany>,
    api_base: Option<Spanned<String>>,
    #[serde(default)]
    users: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeams {
    post_url: Spanned<String>,
    app_id: Spanned<String>,
    issuer: Option<Spanned<String>>,
    jwks_file: Spanned<String>,
    #[serde(default)]
    users: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    secret_file: Spanned<String>,
    #[serde(default)]
    users: BTreeMap<String, Spanned<String>>,
}

type At<'a> = dyn Fn(Range<usize>, String) -> ConfigError + 'a;
type Resolve<'a> = dyn Fn(&Spanned<String>) -> Result<PathBuf, ConfigError> + 'a;

/// `[chat]` as the server runs it.
pub(crate) fn parse(raw: &Option<RawChat>, at: &At, resolve: &Resolve) -> Result<ChatConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ChatConfig { ca_file: DEFAULT_CA_FILE.into(), ..Default::default() });
    };
    let console_url = raw.console_url.as_ref().map(|u| url(u, "chat.console_url", at)).transpose()?;
    let ca_file = match &raw.ca_file {
        Some(f) => resolve(f)?,
        None => DEFAULT_CA_FILE.into(),
    };
    let slack = match &raw.slack {
        None => None,
        Some(s) => {
            let channels = match s.channel.get_ref() {
                OneOrMany::One(c) => vec![c.clone()],
                OneOrMany::Many(c) => c.clone(),
            };
            if channels.is_empty() || channels.iter().any(|c| c.trim().is_empty()) {
                return Err(at(
                    s.channel.span(),
                    "chat.slack.channel: a channel id (or a list of them), not empty".into(),
                ));
            }
            let api_base = match &s.api_base {
                Some(u) => url(u, "chat.slack.api_base", at)?,
                None => DEFAULT_SLACK_API.into(),
            };
            Some(SlackConfig {
                bot_token: secret(&s.bot_token_file, "chat.slack.bot_token_file", at, resolve)?,
                signing_secret: secret(&s.signing_secret_file, "chat.slack.signing_secret_file", at, resolve)?,
                channels,
                api_base: api_base.trim_end_matches('/').to_string(),
                users: users(&s.users, "chat.slack.users", at)?,
            })
        }
    };
    let teams = match &raw.teams {
        None => None,
        Some(t) => {
            let app_id = t.app_id.get_ref().trim().to_string();
            if app_id.is_empty() {
                return Err(at(t.app_id.span(), "chat.teams.app_id is empty".into()));
            }
            let path = resolve(&t.jwks_file)?;
            let text = read(&path, &t.jwks_file, "chat.teams.jwks_file", at)?;
            let jwks: JwkSet = serde_json::from_str(&text).map_err(|e| {
                at(t.jwks_file.span(), format!("chat.teams.jwks_file: {} is not a JWKS: {e}", path.display()))
            })?;
            if jwks.keys.is_empty() {
                return Err(at(t.jwks_file.span(), format!("chat.teams.jwks_file: {} holds no key", path.display())));
            }
            Some(TeamsConfig {
                post_url: url(&t.post_url, "chat.teams.post_url", at)?,
                app_id,
                issuer: t.issuer.as_ref().map(|i| i.get_ref().clone()).unwrap_or_else(|| DEFAULT_TEAMS_ISSUER.into()),
                jwks,
                users: users(&t.users, "chat.teams.users", at)?,
            })
        }
    };
    let webhook = match &raw.webhook {
        None => None,
        Some(w) => Some(WebhookConfig {
            url: url(&w.url, "chat.webhook.url", at)?,
            secret: secret(&w.secret_file, "chat.webhook.secret_file", at, resolve)?,
            users: users(&w.users, "chat.webhook.users", at)?,
        }),
    };
    Ok(ChatConfig { console_url, ca_file, slack, teams, webhook })
}

/// An https URL; plain http only to this machine (a local receiver or proxy): tokens and
/// cards never cross a network in the clear.
fn url(u: &Spanned<String>, key: &str, at: &At) -> Result<String, ConfigError> {
    let text = u.get_ref().trim();
    let uri: http::Uri = text.parse().map_err(|e| at(u.span(), format!("{key}: {text:?} is not a URL: {e}")))?;
    let host = uri.host().unwrap_or_default();
    let loopback = ["127.0.0.1", "localhost", "[::1]", "::1"].contains(&host);
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(text.trim_end_matches('/').to_string()),
        Some("http") if loopback => Ok(text.trim_end_matches('/').to_string()),
        Some("http") => {
            Err(at(u.span(), format!("{key}: http:// only to this machine (127.0.0.1, localhost); use https://")))
        }
        _ => Err(at(u.span(), format!("{key}: {text:?} is not an https:// URL"))),
    }
}

fn read(path: &Path, span: &Spanned<String>, key: &str, at: &At) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| at(span.span(), format!("{key}: cannot read {}: {e}", path.display())))
}

fn secret(file: &Spanned<String>, key: &str, at: &At, resolve: &Resolve) -> Result<Secret, ConfigError> {
    let path = resolve(file)?;
    let text = read(&path, file, key, at)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(at(file.span(), format!("{key}: {} is empty", path.display())));
    }
    Ok(Secret(text.to_string()))
}

fn users(raw: &BTreeMap<String, Spanned<String>>, key: &str, at: &At) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (id, name) in raw {
        if id.is_empty() || name.get_ref().is_empty() {
            return Err(at(name.span(), format!("{key}: empty user id or approver name")));
        }
        out.insert(id.clone(), name.get_ref().clone());
    }
    Ok(out)
}
