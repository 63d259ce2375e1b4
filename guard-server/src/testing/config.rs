//! The server's TOML configuration as tests and benchmarks write it: one builder instead of a
//! template per harness (the server's integration tests, xtask's VM-test server and its
//! benchmark all start a real guard-server from a file).
use std::fmt::Write;

/// A `server.toml`. Strings are written with TOML's basic quoting (`{:?}` of a Rust string is
/// a valid TOML basic string for the plain names and paths tests use).
#[derive(Debug, Clone)]
pub struct ServerToml {
    listen: String,
    database_url: Option<String>,
    default_timeout: Option<String>,
    tls_dir: String,
    approvers: Vec<(String, Vec<String>, Vec<String>)>,
    requires: Vec<(String, u32, Vec<String>)>,
    autos: Vec<(String, &'static str)>,
    /// TOML appended as it is (host groups, scoped rules, redaction, rate limits).
    extra: String,
    /// Top-level keys, written before the first table.
    top: String,
}

impl ServerToml {
    /// A server on `127.0.0.1:0` with the TLS files `guard-server init-pki` wrote into
    /// `pki_dir` (relative paths are relative to the config file).
    pub fn new(pki_dir: impl std::fmt::Display) -> Self {
        ServerToml {
            listen: "127.0.0.1:0".into(),
            database_url: None,
            default_timeout: None,
            tls_dir: pki_dir.to_string(),
            approvers: Vec::new(),
            requires: Vec::new(),
            autos: Vec::new(),
            extra: String::new(),
            top: String::new(),
        }
    }

    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// A duration as the config writes it ("30s").
    pub fn default_timeout(mut self, timeout: impl Into<String>) -> Self {
        self.default_timeout = Some(timeout.into());
        self
    }

    /// An `[[approver]]` whose own Unix users (names or uids) are `unix_users`.
    pub fn approver(mut self, name: &str, unix_users: &[&str]) -> Self {
        self.approvers.push((name.into(), unix_users.iter().map(|u| u.to_string()).collect(), Vec::new()));
        self
    }

    /// An `[[approver]]` who sees the hosts of `host_groups` only.
    pub fn approver_in(mut self, name: &str, unix_users: &[&str], host_groups: &[&str]) -> Self {
        let users = unix_users.iter().map(|u| u.to_string()).collect();
        self.approvers.push((name.into(), users, host_groups.iter().map(|g| g.to_string()).collect()));
        self
    }

    /// A top-level `key = value` line, written before the first table.
    pub fn top(mut self, line: &str) -> Self {
        self.top.push_str(line.trim_end());
        self.top.push('\n');
        self
    }

    /// TOML appended to the file as it is.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// A `[[require]]`: `rule` needs `approvals` distinct approvals from `approvers`.
    pub fn require(mut self, rule: &str, approvals: u32, approvers: &[&str]) -> Self {
        self.requires.push((rule.into(), approvals, approvers.iter().map(|a| a.to_string()).collect()));
        self
    }

    /// An `[[auto]]` rule that approves `rule` at once.
    pub fn auto_approve(mut self, rule: &str) -> Self {
        self.autos.push((rule.into(), "approve"));
        self
    }

    /// An `[[auto]]` rule that denies `rule` at once.
    pub fn auto_deny(mut self, rule: &str) -> Self {
        self.autos.push((rule.into(), "deny"));
        self
    }

    pub fn render(&self) -> String {
        let mut t = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(t, "listen = {:?}", self.listen);
        if let Some(url) = &self.database_url {
            let _ = writeln!(t, "database_url = {url:?}");
        }
        if let Some(timeout) = &self.default_timeout {
            let _ = writeln!(t, "default_timeout = {timeout:?}");
        }
        t.push_str(&self.top);
        let file = |f: &str| format!("{}/{f}", self.tls_dir.trim_end_matches('/'));
        let _ = writeln!(
            t,
            "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}",
            file("ca.crt"),
            file("server.crt"),
            file("server.key")
        );
        for (name, users, groups) in &self.approvers {
            let _ = writeln!(t, "[[approver]]\nname = {name:?}");
            if !users.is_empty() {
                let _ = writeln!(t, "unix_users = {users:?}");
            }
            if !groups.is_empty() {
                let _ = writeln!(t, "host_groups = {groups:?}");
            }
        }
        for (rule, approvals, approvers) in &self.requires {
            let _ = writeln!(t, "[[require]]\nrule = {rule:?}\napprovals = {approvals}\napprovers = {approvers:?}");
        }
        for (rule, decision) in &self.autos {
            let _ = writeln!(t, "[[auto]]\nrule = {rule:?}\ndecision = {decision:?}");
        }
        t.push_str(&self.extra);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use std::path::Path;

    #[test]
    fn renders_a_config_the_server_reads() {
        let text = ServerToml::new("pki")
            .database_url("sqlite:/tmp/x.db")
            .default_timeout("30s")
            .approver("alice", &["alice", "1000"])
            .approver("carol", &[])
            .require("prod-deploy", 2, &["alice", "carol"])
            .auto_approve("bench-auto")
            .auto_deny("auto-deny")
            .render();
        let config = ServerConfig::parse(Path::new("/etc/guard/server.toml"), &text).expect(&text);
        assert_eq!(config.tls.ca, Path::new("/etc/guard/pki/ca.crt"));
        assert_eq!(config.database_url, "sqlite:/tmp/x.db");
        assert_eq!(config.policy.requirement("h", "p", "prod-deploy").map(|r| r.approvals), Some(2));
        assert_eq!(config.policy.approvers["alice"].unix_users, ["alice", "1000"]);
        assert_eq!(config.policy.autos.len(), 2);
    }
}
