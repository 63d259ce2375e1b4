//! `[console]` in the server's config: where the web console listens, its certificate, the
//! origin browsers reach it by, its session and lockout settings, and the optional OpenID
//! provider (`[console.oidc]`). No `[console]` table:
//! no console listener at all.
use crate::config::{ConfigError, TlsPaths};
use serde::Deserialize;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub listen: SocketAddr,
    /// The console's certificate chain and key: the server's own unless the config says.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The origin browsers use (`https://host:port`, no path): a POST whose Origin (or Referer)
    /// is not this one is refused (CSRF), and passkeys are bound to it. None: `https://` and
    /// the address the listener got (tests bind port 0).
    pub public_url: Option<String>,
    /// A session unused this long ends...
    pub session_idle: Duration,
    /// ...and any session ends this long after sign-in.
    pub session_max: Duration,
    /// Failed passwords in a row that lock an account...
    pub lockout_failures: u32,
    /// ...for this long.
    pub lockout_for: Duration,
    /// Sign-in through an OpenID provider (`[console.oidc]`), next to passwords.
    pub oidc: Option<OidcSettings>,
}

/// The bundle of system roots an https issuer is checked against unless `ca_file` says.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Which claim of the ID token names the console user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    PreferredUsername,
    Email,
}

impl Claim {
    pub fn name(self) -> &'static str {
        match self {
            Claim::PreferredUsername => "preferred_username",
            Claim::Email => "email",
        }
    }
}

/// `[console.oidc]`: the provider, this console's client registration with it, and how its
/// users map to console users (by name, to users that `guard-server user add` made).
#[derive(Clone)]
pub struct OidcSettings {
    /// The issuer URL, exactly as the ID tokens' `iss` carries it (no trailing slash added).
    pub issuer: String,
    pub client_id: String,
    /// The client secret (from `client_secret_file`).
    pub client_secret: String,
    /// The CA bundle the issuer's certificate is checked against.
    pub ca_file: PathBuf,
    pub claim: Claim,
    /// The sign-in button says "Sign in with <label>".
    pub label: String,
}

impl std::fmt::Debug for OidcSettings {
    // The secret is kept out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"..")
            .field("ca_file", &self.ca_file)
            .field("claim", &self.claim)
            .field("label", &self.label)
            .finish()
    }
}

impl ConsoleSettings {
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);
    pub const DEFAULT_MAX: Duration = Duration::from_secs(12 * 3600);
    pub const DEFAULT_FAILURES: u32 = 5;
    pub const DEFAULT_LOCKOUT: Duration = Duration::from_secs(15 * 60);

    /// The console on `listen` with the server's certificate and every default.
    pub fn new(listen: SocketAddr, tls: &TlsPaths) -> ConsoleSettings {
        ConsoleSettings {
            listen,
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            public_url: None,
            session_idle: Self::DEFAULT_IDLE,
            session_max: Self::DEFAULT_MAX,
            lockout_failures: Self::DEFAULT_FAILURES,
            lockout_for: Self::DEFAULT_LOCKOUT,
            oidc: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsole {
    listen: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    session_idle: Option<Spanned<String>>,
    session_max: Option<Spanned<String>>,
    lockout_failures: Option<Spanned<u32>>,
    lockout_for: Option<Spanned<String>>,
    oidc: Option<Spanned<RawOidc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    issuer: Spanned<String>,
    client_id: Spanned<String>,
    client_secret_file: Spanned<String>,
    ca_file: Option<Spanned<String>>,
    claim: Option<Spanned<String>>,
    label: Option<Spanned<String>>,
}

/// The console's settings from `[console]`, every bad value named by its place.
pub(crate) fn parse(
    raw: &Spanned<RawConsole>,
    tls: &TlsPaths,
    at: &dyn Fn(Range<usize>, String) -> ConfigError,
    resolve: &dyn Fn(&Spanned<String>) -> Result<PathBuf, ConfigError>,
) -> Result<ConsoleSettings, ConfigError> {
    let r = raw.get_ref();
    let listen = match &r.listen {
        Some(l) => l.get_ref().parse().map_err(|e| at(l.span(), format!("console listen: {e} (want IP:PORT)")))?,
        None => DEFAULT_LISTEN.parse().map_err(|e| at(raw.span(), format!("default console listen: {e}")))?,
    };
    let mut c = ConsoleSettings::new(listen, tls);
    match (&r.cert, &r.key) {
        (Some(cert), Some(key)) => {
            c.cert = resolve(cert)?;
            c.key = resolve(key)?;
        }
        (None, None) => {}
        (Some(one), None) | (None, Some(one)) => {
            return Err(at(one.span(), "give the console's cert and key together (or neither: the server's)".into()))
        }
    }
    if let Some(u) = &r.public_url {
        c.public_url =
            Some(origin(u.get_ref()).map_err(|e| at(u.span(), format!("public_url {:?}: {e}", u.get_ref())))?);
    }
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
    c.session_idle = duration(&r.session_idle, c.session_idle)?;
    c.session_max = duration(&r.session_max, c.session_max)?;
    c.lockout_for = duration(&r.lockout_for, c.lockout_for)?;
    if let Some(n) = &r.lockout_failures {
        if *n.get_ref() == 0 {
            return Err(at(n.span(), "lockout_failures must be at least 1".into()));
        }
        c.lockout_failures = *n.get_ref();
    }
    if let Some(o) = &r.oidc {
        c.oidc = Some(parse_oidc(o.get_ref(), at, resolve)?);
    }
    Ok(c)
}

fn parse_oidc(
    o: &RawOidc,
    at: &dyn Fn(Range<usize>, String) -> ConfigError,
    resolve: &dyn Fn(&Spanned<String>) -> Result<PathBuf, ConfigError>,
) -> Result<OidcSettings, ConfigError> {
    let issuer = issuer(o.issuer.get_ref())
        .map_err(|e| at(o.issuer.span(), format!("console.oidc.issuer {:?}: {e}", o.issuer.get_ref())))?;
    let client_id = o.client_id.get_ref().trim().to_string();
    if client_id.is_empty() || client_id.chars().any(|c| c.is_control()) {
        return Err(at(o.client_id.span(), "console.oidc.client_id: empty or not printable".into()));
    }
    let secret_path = resolve(&o.client_secret_file)?;
    let secret = std::fs::read_to_string(&secret_path).map_err(|e| {
        at(
            o.client_secret_file.span(),
            format!("console.oidc.client_secret_file: cannot read {}: {e}", secret_path.display()),
        )
    })?;
    let client_secret = secret.trim().to_string();
    if client_secret.is_empty() {
        return Err(at(
            o.client_secret_file.span(),
            format!("console.oidc.client_secret_file: {} is empty", secret_path.display()),
        ));
    }
    let ca_file = match &o.ca_file {
        Some(f) => {
            let path = resolve(f)?;
            if !path.is_file() {
                return Err(at(f.span(), format!("console.oidc.ca_file: {} is not a readable file", path.display())));
            }
            path
        }
        None => PathBuf::from(DEFAULT_CA_FILE),
    };
    let claim = match &o.claim {
        None => Claim::PreferredUsername,
        Some(c) => match c.get_ref().as_str() {
            "preferred_username" => Claim::PreferredUsername,
            "email" => Claim::Email,
            other => {
                return Err(at(
                    c.span(),
                    format!("console.oidc.claim {other:?}: use \"preferred_username\" (the default) or \"email\""),
                ))
            }
        },
    };
    let label = match &o.label {
        None => "single sign-on".to_string(),
        Some(l) => {
            let text = l.get_ref().trim();
            if text.is_empty() || text.chars().count() > 60 || text.chars().any(|c| c.is_control()) {
                return Err(at(l.span(), "console.oidc.label: 1 to 60 printable characters".into()));
            }
            text.to_string()
        }
    };
    Ok(OidcSettings { issuer, client_id, client_secret, ca_file, claim, label })
}

/// An issuer URL: https, or plain http to this machine only (a provider on loopback, as the
/// chat channels allow): codes and tokens never cross a network in the clear. No query or
/// fragment (OpenID Connect Discovery forbids them); a trailing slash is kept, since `iss`
/// must match it exactly.
pub fn issuer(url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    let loopback = ["127.0.0.1", "localhost", "[::1]", "::1"].contains(&host);
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => {}
        Some("http") if loopback => {}
        Some("http") => return Err("http:// only to this machine (127.0.0.1, localhost); use https://".into()),
        _ => return Err("must be an https:// URL".into()),
    }
    if uri.query().is_some() || url.contains('#') || url.contains('@') {
        return Err("no query, fragment or user info in an issuer".into());
    }
    Ok(url.to_string())
}

/// `url` as an origin, `https://host[:port]` without a trailing slash, or why it is not one.
pub fn origin(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("https://").ok_or("must start with https:// (the console is served over TLS only)")?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) || host.chars().any(|c| c.is_control()) {
        return Err("must be an origin: https://host or https://host:port, nothing after it".into());
    }
    Ok(format!("https://{host}"))
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn public_url_is_an_https_origin() {
        assert_eq!(origin("https://guard.example:8443/").unwrap(), "https://guard.example:8443");
        assert!(origin("http://guard.example").is_err());
        assert!(origin("https://guard.example/console").is_err());
        assert!(origin("https://").is_err());
    }

    #[test]
    fn an_issuer_is_https_or_loopback_http() {
        use super::issuer;
        assert!(issuer("https://idp.example/realms/x").is_ok());
        assert!(issuer("http://127.0.0.1:8080").is_ok());
        assert!(issuer("http://idp.example").is_err());
        assert!(issuer("https://idp.example/?a=b").is_err());
        assert!(issuer("ftp://idp.example").is_err());
    }
}
