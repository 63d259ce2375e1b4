//! The daemon's configuration file: named policies, tree selectors, sockets, the server.
//!
//! ```toml
//! audit_log = "/var/log/guard/audit.jsonl"     # the spool; the host's audit key is audit.key beside it
//! audit_backlog_max_bytes = 1073741824       # records not yet acknowledged by the server (default 1 GiB)
//! registration_policy = "coding-agent"      # for `run --daemon` / `watch --pid` without --policy
//!
//! [policies]                                 # name = policy file (relative to this file)
//! coding-agent = "policies/coding-agent.toml"
//! ops-agent = "policies/ops-agent.toml"
//!
//! [[selector]]
//! name = "claude"                            # optional; shown in status and logs
//! policy = "coding-agent"
//! exe = "/usr/local/bin/claude"              # a path (resolved), or a file name: exe = "claude"
//! argv = ["--agent"]                         # optional: tokens that must all be arguments
//!
//! [[selector]]
//! policy = "ops-agent"
//! cgroup = "agents.slice"                    # cgroup v2 path under /sys/fs/cgroup, descendants too
//!
//! [[selector]]
//! policy = "ops-agent"
//! user = "svc-deploy"                        # or a uid
//!
//! [server]                                   # optional: holds decided by guard-server
//! url = "https://guard.example:7443"
//! ca = "/etc/guard/ca.pem"
//! cert = "/etc/guard/agent.pem"
//! key = "/etc/guard/agent.key"
//! ```
//!
//! Overlaps: a process that matches several selectors is watched under the one that wins by
//! kind, then file order: explicit registration (`run --daemon`, `watch --pid`) > exe >
//! cgroup > user; among selectors of one kind, the first in the file. A process already in a
//! tree stays in it: selectors only start new trees.

use crate::{
    audit::log::BACKLOG_MAX_BYTES,
    hold::remote::ServerConfig,
    limits::{
        ADMIN_SOCKET, CGROUP_ROOT, DEFAULT_AUDIT_LOG, DEFAULT_PIN_DIR, MAX_POLICIES, MAX_TREE_TASKS, REASON_SOCKET,
    },
    policy::{Policy, PolicyError, Source},
    tree::selector::{Match, SelectorConf},
};
use guard_common::{selector, SelKey, Selector, ARG_LEN, MAX_ARGV_TOKENS, MAX_SELECTORS};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};
use toml::Spanned;

/// A smaller bound would fill with one batch of records.
const MIN_BACKLOG_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    audit_log: Option<PathBuf>,
    audit_backlog_max_bytes: Option<Spanned<u64>>,
    admin_socket: Option<PathBuf>,
    reason_socket: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    max_tree_tasks: Option<Spanned<u64>>,
    registration_policy: Option<Spanned<String>>,
    #[serde(default)]
    policies: BTreeMap<String, Spanned<PathBuf>>,
    #[serde(default, rename = "selector")]
    selectors: Vec<Spanned<RawSelector>>,
    server: Option<ServerConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    name: Option<String>,
    policy: Spanned<String>,
    exe: Option<Spanned<String>>,
    argv: Option<Spanned<Vec<String>>>,
    cgroup: Option<Spanned<String>>,
    user: Option<Spanned<toml::Value>>,
}

pub struct NamedPolicy {
    pub name: String,
    pub file: PathBuf,
    pub policy: Policy,
}

pub struct Config {
    pub file: PathBuf,
    pub audit_log: PathBuf,
    /// The bound of the audit records not yet acknowledged by the server (see `audit::log`).
    pub audit_backlog_max_bytes: u64,
    pub admin_socket: PathBuf,
    pub reason_socket: PathBuf,
    pub pin_dir: PathBuf,
    pub max_tree_tasks: u64,
    pub registration_policy: Option<String>,
    pub policies: Vec<NamedPolicy>,
    /// In winning order (kind, then file order): the position is the kernel's rank.
    pub selectors: Vec<SelectorConf>,
    pub server: Option<ServerConfig>,
}

impl Config {
    /// Reads and checks the whole configuration, every policy file included.
    pub fn load(path: &Path) -> Result<Config, PolicyError> {
        let text = Source::read(path, "configuration")?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, PolicyError> {
        let ctx = Source { path, text };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ctx.err(e.span().unwrap_or(0..0), guard_api::toml_message(text, &e)))?;
        let base = path.parent().unwrap_or(Path::new("/"));
        if raw.policies.is_empty() {
            return Err(ctx.err(0..0, "no [policies]: name at least one policy file (name = \"file.toml\")"));
        }
        if raw.policies.len() > MAX_POLICIES as usize {
            return Err(ctx.err(0..0, format!("at most {} policies are supported", MAX_POLICIES)));
        }
        let mut policies = vec![];
        for (name, f) in &raw.policies {
            if name.is_empty() || name.len() > 64 {
                return Err(ctx.err(f.span(), "a policy name must be 1 to 64 characters"));
            }
            let pf = base.join(f.get_ref());
            // A policy's own errors carry its own file:line:col.
            let policy = Policy::load(&pf)?;
            policies.push(NamedPolicy { name: name.clone(), file: pf, policy });
        }
        let known = |s: &Spanned<String>| -> Result<String, PolicyError> {
            if raw.policies.contains_key(s.get_ref()) {
                Ok(s.get_ref().clone())
            } else {
                let names: Vec<&String> = raw.policies.keys().collect();
                Err(ctx.err(s.span(), format!("unknown policy {:?}: expected one of {names:?}", s.get_ref())))
            }
        };
        let registration_policy = raw.registration_policy.as_ref().map(known).transpose()?;
        let mut selectors = vec![];
        for (i, s) in raw.selectors.iter().enumerate() {
            let span = s.span();
            let s = s.get_ref();
            let policy = known(&s.policy)?;
            let n = s.exe.is_some() as u8 + s.cgroup.is_some() as u8 + s.user.is_some() as u8;
            if n != 1 {
                return Err(ctx.err(span, "a selector needs exactly one of exe, cgroup or user"));
            }
            let argv = match &s.argv {
                None => vec![],
                Some(a) => {
                    if s.exe.is_none() {
                        return Err(ctx.err(a.span(), "argv is only for exe selectors"));
                    }
                    let v = a.get_ref().clone();
                    if v.is_empty() || v.len() > MAX_ARGV_TOKENS {
                        return Err(ctx.err(a.span(), format!("argv takes 1 to {MAX_ARGV_TOKENS} arguments")));
                    }
                    if let Some(t) = v.iter().find(|t| t.is_empty() || t.len() >= ARG_LEN || t.contains('\0')) {
                        return Err(ctx.err(
                            a.span(),
                            format!("argv token {t:?} must be 1 to {} bytes, without NUL", ARG_LEN - 1),
                        ));
                    }
                    v
                }
            };
            let matcher = if let Some(e) = &s.exe {
                let v = e.get_ref();
                if v.is_empty() || v.contains('\0') {
                    return Err(ctx.err(e.span(), "exe must be a path or a file name"));
                }
                if v.contains('/') {
                    if !v.starts_with('/') {
                        return Err(ctx.err(e.span(), format!("exe {v:?} is relative: give an absolute path")));
                    }
                    // The kernel compares the resolved path: resolve symlinks now.
                    let resolved = std::fs::canonicalize(v).map(|p| p.display().to_string()).unwrap_or(v.clone());
                    Match::ExePath(resolved)
                } else {
                    Match::ExeName(v.clone())
                }
            } else if let Some(c) = &s.cgroup {
                let v = c.get_ref().trim_end_matches('/');
                let rel = v.strip_prefix(CGROUP_ROOT).unwrap_or(v);
                let rel = if rel.starts_with('/') { rel.to_string() } else { format!("/{rel}") };
                if rel == "/" || rel.split('/').any(|p| p == "." || p == "..") {
                    return Err(ctx.err(
                        c.span(),
                        format!("cgroup {v:?}: expected a cgroup below the root, e.g. \"agents.slice\""),
                    ));
                }
                Match::Cgroup(rel)
            } else if let Some(u) = &s.user {
                let uid = match u.get_ref() {
                    toml::Value::Integer(n) if (0..u32::MAX as i64).contains(n) => *n as u32,
                    toml::Value::String(name) => match nix::unistd::User::from_name(name) {
                        Ok(Some(u)) => u.uid.as_raw(),
                        _ => match name.parse::<u32>() {
                            Ok(n) => n,
                            Err(_) => return Err(ctx.err(u.span(), format!("no user named {name:?} on this host"))),
                        },
                    },
                    _ => return Err(ctx.err(u.span(), "user must be a user name or a uid")),
                };
                Match::User(uid)
            } else {
                unreachable!("checked above")
            };
            let name = s.name.clone().unwrap_or_else(|| format!("selector-{}", i + 1));
            selectors.push(SelectorConf { name, policy, matcher, argv, index: i + 1 });
        }
        if selectors.len() > MAX_SELECTORS as usize {
            return Err(ctx.err(0..0, format!("at most {MAX_SELECTORS} selectors are supported")));
        }
        // Stable: file order is kept within a kind.
        selectors.sort_by_key(|s| s.matcher.kind_rank());
        let max_tree_tasks = match raw.max_tree_tasks {
            None => MAX_TREE_TASKS,
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > MAX_TREE_TASKS => {
                return Err(ctx.err(n.span(), format!("max_tree_tasks must be 1 to {}", MAX_TREE_TASKS)))
            }
            Some(n) => *n.get_ref(),
        };
        let audit_backlog_max_bytes = match raw.audit_backlog_max_bytes {
            None => BACKLOG_MAX_BYTES,
            Some(n) if *n.get_ref() < MIN_BACKLOG_BYTES => {
                return Err(
                    ctx.err(n.span(), format!("audit_backlog_max_bytes must be at least {MIN_BACKLOG_BYTES} (1 MiB)"))
                )
            }
            Some(n) => *n.get_ref(),
        };
        Ok(Config {
            file: path.to_path_buf(),
            audit_log: raw.audit_log.unwrap_or_else(|| DEFAULT_AUDIT_LOG.into()),
            audit_backlog_max_bytes,
            admin_socket: raw.admin_socket.unwrap_or_else(|| ADMIN_SOCKET.into()),
            reason_socket: raw.reason_socket.unwrap_or_else(|| REASON_SOCKET.into()),
            pin_dir: raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            max_tree_tasks,
            registration_policy,
            policies,
            selectors,
            server: raw.server,
        })
    }

    /// Files whose change triggers a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.file.clone()];
        v.extend(self.policies.iter().map(|p| p.file.clone()));
        v
    }

    /// The policy for a registration that names none.
    pub fn default_registration_policy(&self) -> Option<&str> {
        self.registration_policy
            .as_deref()
            .or_else(|| (self.policies.len() == 1).then(|| self.policies[0].name.as_str()))
    }

    /// The kernel's selector table. `policy_id` maps names to kernel ids. Cgroups that do not
    /// exist (yet) are left out and listed in the second value.
    pub fn kernel_selectors(&self, policy_id: &dyn Fn(&str) -> Option<u8>) -> (Vec<(SelKey, Selector)>, Vec<String>) {
        let mut out: Vec<(SelKey, Selector)> = vec![];
        let mut missing = vec![];
        for (rank, s) in self.selectors.iter().enumerate() {
            let Some(policy) = policy_id(&s.policy) else { continue };
            let (kind, value) = match &s.matcher {
                Match::ExePath(p) => (selector::EXE_PATH, guard_common::fnv1a(p.as_bytes())),
                Match::ExeName(n) => (selector::EXE_NAME, guard_common::fnv1a(n.as_bytes())),
                Match::Cgroup(c) => match cgroup_id(c) {
                    Some(id) => (selector::CGROUP, id),
                    None => {
                        missing.push(c.clone());
                        continue;
                    }
                },
                Match::User(u) => (selector::USER, *u as u64),
            };
            let key = SelKey { kind, _pad: [0; 7], value };
            // Same key twice: the first (winning) one stays.
            if out.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let mut tokens = [0u64; MAX_ARGV_TOKENS];
            for (t, a) in tokens.iter_mut().zip(&s.argv) {
                *t = guard_common::fnv1a(a.as_bytes());
            }
            let sel = Selector { rank: rank as u32, policy, ntok: s.argv.len() as u8, _pad: [0; 2], tokens };
            out.push((key, sel));
        }
        (out, missing)
    }
}

/// A cgroup v2 id: the inode number of its directory.
pub fn cgroup_id(rel: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("{CGROUP_ROOT}{rel}")).ok().filter(|m| m.is_dir()).map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(dir: &Path, text: &str) -> Result<Config, PolicyError> {
        Config::parse(&dir.join("agent.toml"), text)
    }

    #[test]
    fn selectors_order_and_errors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), "default = \"allow\"\n").unwrap();
        std::fs::write(d.path().join("b.toml"), "default = \"deny\"\n").unwrap();
        let c = parse(
            d.path(),
            r#"
[policies]
a = "a.toml"
b = "b.toml"
[[selector]]
policy = "b"
user = 1234
[[selector]]
policy = "a"
cgroup = "agents.slice"
[[selector]]
policy = "a"
exe = "claude"
argv = ["--agent"]
"#,
        )
        .unwrap();
        let kinds: Vec<&Match> = c.selectors.iter().map(|s| &s.matcher).collect();
        assert_eq!(
            kinds,
            vec![&Match::ExeName("claude".into()), &Match::Cgroup("/agents.slice".into()), &Match::User(1234)]
        );
        assert_eq!(c.selectors[1].index, 2);
        let e = parse(d.path(), "[policies]\na = \"a.toml\"\n[[selector]]\npolicy = \"x\"\nuser = 1\n").err().unwrap();
        assert_eq!((e.at.line, e.at.col), (4, 10), "{e}");
        let e = parse(d.path(), "[policies]\na = \"a.toml\"\n[[selector]]\npolicy = \"a\"\nuser = 1\nexe = \"x\"\n")
            .err()
            .unwrap();
        assert!(e.msg.contains("exactly one"), "{e}");
        let e = parse(d.path(), "[policies]\na = \"missing.toml\"\n").err().unwrap();
        assert!(e.at.file.ends_with("missing.toml"), "{e}");
        assert!(e.to_string().contains("missing.toml: cannot read the policy file"), "{e}");
        let e = parse(d.path(), "[policies]\na = \"a.toml\"\n[[selector]]\npolicy = \"a\"\ncgroup = \"/\"\n")
            .err()
            .unwrap();
        assert!(e.msg.contains("below the root"), "{e}");
    }

    #[test]
    fn the_audit_backlog_bound_defaults_to_1_gib_and_a_tiny_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), "default = \"allow\"\n").unwrap();
        let c = parse(d.path(), "[policies]\na = \"a.toml\"\n").unwrap();
        assert_eq!(c.audit_backlog_max_bytes, 1 << 30);
        let c = parse(d.path(), "audit_backlog_max_bytes = 5000000\n[policies]\na = \"a.toml\"\n").unwrap();
        assert_eq!(c.audit_backlog_max_bytes, 5_000_000);
        let e = parse(d.path(), "audit_backlog_max_bytes = 10\n[policies]\na = \"a.toml\"\n").err().unwrap();
        assert_eq!((e.at.line, e.at.col), (1, 27), "{e}");
        assert!(e.msg.contains("audit_backlog_max_bytes must be at least"), "{e}");
    }
}
