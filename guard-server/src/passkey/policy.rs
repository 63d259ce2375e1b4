//! Which approvals need a passkey: the `[passkeys]` section of the server config.
//!
//! ```toml
//! [passkeys]
//! required = "rules"             # or "always"
//! rules = ["exec-*", "ssh-keys"] # policy rule names (globs); only with required = "rules"
//! ```
//!
//! No section: no approval needs one (a passkey is still accepted where a channel offers it).
//! The console and the chat channels ask [`PasskeyPolicy::needs_passkey`] before recording an
//! approval; a chat channel that cannot run a WebAuthn ceremony sends the approver to the
//! console instead.
use crate::config::ConfigError;
use crate::error::{GuardError, GuardResult};
use crate::rules::Glob;
use crate::service::approvals::Verified;
use guard_proto::v1::Request;
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

#[derive(Debug, Clone, Default)]
pub enum PasskeyPolicy {
    /// No `[passkeys]` section.
    #[default]
    Off,
    /// Every approval needs a passkey.
    Always,
    /// Approvals of requests whose policy rule matches one of these.
    Rules(Vec<Glob>),
}

impl PasskeyPolicy {
    /// Whether `approver` needs a fresh, user-verified passkey assertion bound to `request` to
    /// approve it. Denying never needs one (it cannot let anything through). Today the answer
    /// depends on the request's rule only; `approver` is part of the question so that every
    /// channel already asks it the same way when it depends on who approves.
    pub fn needs_passkey(&self, request: &Request, _approver: &str) -> bool {
        match self {
            PasskeyPolicy::Off => false,
            PasskeyPolicy::Always => true,
            PasskeyPolicy::Rules(rules) => {
                let rule = request.operation.as_ref().map(|o| o.rule.as_str()).unwrap_or("");
                rules.iter().any(|g| g.matches(rule))
            }
        }
    }
}

impl PasskeyPolicy {
    /// The server's backstop, applied to every review whatever its channel (`approvals.rs`):
    /// an approval that needs a passkey but was verified another way is refused, so a channel
    /// that forgot to ask [`needs_passkey`](Self::needs_passkey) still cannot record one.
    pub fn check(&self, request: &Request, approver: &str, approve: bool, verified: Verified) -> GuardResult<()> {
        if !approve || verified.with_passkey() || !self.needs_passkey(request, approver) {
            return Ok(());
        }
        let rule = request.operation.as_ref().map(|o| o.rule.as_str()).unwrap_or("");
        Err(GuardError::precondition(
            "PASSKEY_REQUIRED",
            format!("request/{}", request.id),
            format!(
                "approving request {} (rule {rule:?}) needs a passkey: approve it in the web console \
                 (this approval was verified by {} only)",
                request.id,
                verified.label()
            ),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPasskeys {
    required: Spanned<String>,
    rules: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Parses `[passkeys]`; `at` makes an error at a span of the file.
pub(crate) fn parse(
    raw: Option<&Spanned<RawPasskeys>>,
    at: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<PasskeyPolicy, ConfigError> {
    let Some(raw) = raw else { return Ok(PasskeyPolicy::Off) };
    let raw = raw.get_ref();
    match raw.required.get_ref().as_str() {
        "always" => match &raw.rules {
            Some(r) => {
                Err(at(r.span(), "rules apply only with required = \"rules\" (\"always\" covers every rule)".into()))
            }
            None => Ok(PasskeyPolicy::Always),
        },
        "rules" => {
            let Some(rules) = &raw.rules else {
                return Err(at(raw.required.span(), "required = \"rules\" needs rules = [\"rule name\", ...]".into()));
            };
            if rules.get_ref().is_empty() {
                return Err(at(
                    rules.span(),
                    "rules is empty: name at least one policy rule (or drop [passkeys])".into(),
                ));
            }
            let globs = rules
                .get_ref()
                .iter()
                .map(|g| Glob::new(g.get_ref()).map_err(|e| at(g.span(), e)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PasskeyPolicy::Rules(globs))
        }
        other => Err(at(raw.required.span(), format!("required is {other:?}: one of \"always\", \"rules\""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use guard_proto::v1::Operation;
    use std::path::Path;

    const BASE: &str = "[tls]\nca = \"ca.crt\"\ncert = \"s.crt\"\nkey = \"s.key\"\n";

    fn load(extra: &str) -> Result<PasskeyPolicy, String> {
        ServerConfig::parse(Path::new("/etc/guard/server.toml"), &format!("{BASE}{extra}"))
            .map(|c| c.policy.passkeys)
            .map_err(|e| e.to_string())
    }

    fn request(rule: &str) -> Request {
        Request { operation: Some(Operation { rule: rule.into(), ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn off_without_a_section() {
        assert!(!load("").unwrap().needs_passkey(&request("exec-curl"), "alice"));
    }

    #[test]
    fn always_covers_every_rule() {
        let p = load("[passkeys]\nrequired = \"always\"\n").unwrap();
        assert!(p.needs_passkey(&request("exec-curl"), "alice"));
        assert!(p.needs_passkey(&request(""), "alice"));
    }

    #[test]
    fn rules_cover_only_the_named_rules() {
        let p = load("[passkeys]\nrequired = \"rules\"\nrules = [\"exec-*\", \"ssh-keys\"]\n").unwrap();
        assert!(p.needs_passkey(&request("exec-curl"), "alice"));
        assert!(p.needs_passkey(&request("ssh-keys"), "alice"));
        assert!(!p.needs_passkey(&request("ssh-keys-2"), "alice"));
        assert!(!p.needs_passkey(&request("read-env"), "alice"));
    }

    #[test]
    fn the_backstop_refuses_approvals_without_a_passkey_only() {
        let p = load("[passkeys]\nrequired = \"rules\"\nrules = [\"exec-*\"]\n").unwrap();
        let mut r = request("exec-curl");
        r.id = "abc".into();
        let e = p.check(&r, "alice", true, Verified::Slack).unwrap_err().to_string();
        assert!(e.contains("approving request abc (rule \"exec-curl\") needs a passkey") && e.contains("slack"), "{e}");
        assert!(p.check(&r, "alice", true, Verified::ClientCertificate).is_err());
        assert!(p.check(&r, "alice", true, Verified::Password).is_err());
        assert!(p.check(&r, "alice", true, Verified::PasswordAndPasskey).is_ok());
        assert!(p.check(&r, "alice", true, Verified::Oidc).is_err());
        assert!(p.check(&r, "alice", true, Verified::OidcAndPasskey).is_ok());
        assert!(p.check(&r, "alice", false, Verified::Slack).is_ok(), "a deny needs no passkey");
        assert!(p.check(&request("read-env"), "alice", true, Verified::Slack).is_ok());
        assert!(PasskeyPolicy::Off.check(&r, "alice", true, Verified::Slack).is_ok());
    }

    #[test]
    fn bad_sections_name_the_place() {
        let e = load("[passkeys]\nrequired = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("server.toml:6:") && e.contains("\"sometimes\""), "{e}");
        let e = load("[passkeys]\nrequired = \"rules\"\n").unwrap_err();
        assert!(e.contains("server.toml:6:") && e.contains("needs rules"), "{e}");
        let e = load("[passkeys]\nrequired = \"rules\"\nrules = []\n").unwrap_err();
        assert!(e.contains("server.toml:7:") && e.contains("rules is empty"), "{e}");
        let e = load("[passkeys]\nrequired = \"always\"\nrules = [\"x\"]\n").unwrap_err();
        assert!(e.contains("server.toml:7:") && e.contains("only with required"), "{e}");
        let e = load("[passkeys]\nrequired = \"always\"\nrule = [\"x\"]\n").unwrap_err();
        assert!(e.contains("server.toml:7:") && e.contains("rule"), "{e}");
    }
}
