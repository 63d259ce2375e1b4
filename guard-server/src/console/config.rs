//! `[console]` in the server's config: where the web console listens, its certificate, the
//! origin browsers reach it by, and its session and lockout settings. No `[console]` table:
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
    Ok(c)
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
}
