//! Policy files: parsing with precise errors, and compilation into the kernel's map entries.
//!
//! A policy is checked whole before anything is loaded: the first problem is reported with
//! file:line:col and what was expected, and nothing reaches the kernel.

use guard_common::{
    class, fnv1a, Action, ArgvRule, NetRule, PathKey, RuleRef, ARG_LEN, MAX_ARGV_RULES, MAX_ARGV_TOKENS, MAX_NET_RULES,
    PATH_LEN,
};
use ipnet::IpNet;
use serde::Deserialize;
use std::{collections::BTreeMap, net::IpAddr, ops::Range, path::Path, time::Duration};
use thiserror::Error;
use toml::Spanned;

#[derive(Debug, Error)]
#[error("{file}:{line}:{col}: {msg}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Delete,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Exact path, or a prefix when it ends in '/'; with `argv`, the exact path and tokens that
    /// must all appear among the arguments.
    Exec {
        path: String,
        argv: Vec<String>,
    },
    File {
        path: String,
        access: Access,
    },
    Net {
        net: IpNet,
        port: Option<u16>,
    },
    Unix {
        path: String,
    },
    Capability(u8),
    Mount,
    Module,
    Bpf,
    Ptrace,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub matcher: Matcher,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub default: Action,
    pub ask_timeout: Duration,
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Option<Spanned<String>>,
    ask_timeout: Option<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Spanned<String>,
    exec: Option<Spanned<RawExec>>,
    file: Option<Spanned<RawFile>>,
    connect: Option<Spanned<RawConnect>>,
    capability: Option<Spanned<String>>,
    mount: Option<Spanned<bool>>,
    module: Option<Spanned<bool>>,
    bpf: Option<Spanned<bool>>,
    ptrace: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    path: Spanned<String>,
    argv: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    access: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnect {
    cidr: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    unix: Option<Spanned<String>>,
}

/// Capability names of Linux 6.x, in number order.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A file being parsed: turns byte spans into `file:line:col` errors (policies and configs).
pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, span: Range<usize>, msg: impl Into<String>) -> PolicyError {
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.len() - upto.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        PolicyError { file: self.file.into(), line, col, msg: msg.into() }
    }
}

pub fn parse_action(s: &str) -> Option<Action> {
    match s {
        "allow" => Some(Action::Allow),
        "deny" => Some(Action::Deny),
        "audit" => Some(Action::Audit),
        "ask" => Some(Action::Ask),
        _ => None,
    }
}

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Audit => "audit",
        Action::Ask => "ask",
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: file.clone(),
            line: 0,
            col: 0,
            msg: format!("cannot read the policy file: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let ctx = Ctx { file, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            ctx.err(e.span().unwrap_or(0..0), msg)
        })?;
        let default = match raw.default {
            None => Action::Allow,
            Some(d) => parse_action(d.get_ref()).ok_or_else(|| {
                ctx.err(
                    d.span(),
                    format!("unknown default action {:?}: expected allow, deny, audit or ask", d.get_ref()),
                )
            })?,
        };
        let ask_timeout = match raw.ask_timeout {
            None => Duration::from_secs(30),
            Some(t) => {
                let d = humantime::parse_duration(t.get_ref()).map_err(|e| {
                    ctx.err(
                        t.span(),
                        format!("bad ask_timeout {:?}: {e} (expected e.g. \"30s\" or \"5m\")", t.get_ref()),
                    )
                })?;
                if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                    return Err(ctx.err(t.span(), "ask_timeout must be between 1s and 24h"));
                }
                d
            }
        };
        let mut rules = Vec::new();
        let mut net_rules = 0;
        let mut argv_rules = 0;
        for r in raw.rule {
            let span = r.span();
            let r = r.into_inner();
            let span_start = span.clone();
            let rule = compile_rule(&ctx, span, r)?;
            if matches!(&rule.matcher, Matcher::Exec { argv, .. } if !argv.is_empty()) {
                argv_rules += 1;
                if argv_rules > MAX_ARGV_RULES {
                    return Err(
                        ctx.err(span_start, format!("at most {MAX_ARGV_RULES} exec rules with argv are supported"))
                    );
                }
            }
            if matches!(rule.matcher, Matcher::Net { .. }) {
                net_rules += 1;
                if net_rules > MAX_NET_RULES {
                    return Err(
                        ctx.err(0..0, format!("at most {MAX_NET_RULES} connect rules with a cidr are supported"))
                    );
                }
            }
            rules.push(rule);
        }
        Ok(Policy { default, ask_timeout, rules })
    }
}

fn check_abs_path(ctx: &Ctx, p: &Spanned<String>, what: &str) -> Result<String, PolicyError> {
    let s = p.get_ref();
    if !s.starts_with('/') {
        return Err(ctx.err(p.span(), format!("{what} {s:?} is relative: expected an absolute path starting with '/'")));
    }
    if s.split('/').any(|c| c == ".." || c == ".") {
        return Err(ctx.err(p.span(), format!("{what} {s:?} contains '.' or '..': give the resolved path")));
    }
    if s.contains('\0') {
        return Err(ctx.err(p.span(), format!("{what} contains a NUL byte")));
    }
    if s.len() >= PATH_LEN - 1 {
        return Err(
            ctx.err(p.span(), format!("{what} is {} bytes long: at most {} are supported", s.len(), PATH_LEN - 2))
        );
    }
    Ok(s.clone())
}

/// argv conditions: 1 to 4 whole arguments, on an exact path, for rules that restrict.
fn check_argv(ctx: &Ctx, a: &Spanned<Vec<String>>, path: &str, action: Action) -> Result<Vec<String>, PolicyError> {
    let tokens = a.get_ref();
    if tokens.is_empty() || tokens.len() > MAX_ARGV_TOKENS {
        return Err(ctx.err(a.span(), format!("argv takes 1 to {MAX_ARGV_TOKENS} arguments, got {}", tokens.len())));
    }
    if path.ends_with('/') {
        return Err(ctx.err(a.span(), "argv conditions need an exact exec path, not a prefix"));
    }
    if action == Action::Allow {
        // A program can hide arguments past the ones the kernel captures; an allow that
        // depends on them could be tricked into allowing.
        return Err(ctx.err(a.span(), "argv conditions are for deny, ask and audit rules, not allow"));
    }
    for t in tokens {
        if t.is_empty() || t.len() >= ARG_LEN || t.contains('\0') {
            return Err(ctx.err(a.span(), format!("argv token {t:?} must be 1 to {} bytes, without NUL", ARG_LEN - 1)));
        }
    }
    Ok(tokens.clone())
}

fn compile_rule(ctx: &Ctx, span: Range<usize>, r: RawRule) -> Result<Rule, PolicyError> {
    let name = r.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(ctx.err(r.name.span(), "rule name is empty"));
    }
    let action = parse_action(r.action.get_ref()).ok_or_else(|| {
        ctx.err(r.action.span(), format!("unknown action {:?}: expected allow, deny, audit or ask", r.action.get_ref()))
    })?;
    let mut matchers: Vec<(Range<usize>, Matcher)> = Vec::new();
    if let Some(e) = r.exec {
        let span = e.span();
        let e = e.into_inner();
        let path = check_abs_path(ctx, &e.path, "exec path")?;
        let argv = match e.argv {
            None => vec![],
            Some(a) => check_argv(ctx, &a, &path, action)?,
        };
        matchers.push((span, Matcher::Exec { path, argv }));
    }
    if let Some(f) = r.file {
        let span = f.span();
        let f = f.into_inner();
        let path = check_abs_path(ctx, &f.path, "file path")?;
        let access = match &f.access {
            None => Access::Any,
            Some(a) => match a.get_ref().as_str() {
                "read" => Access::Read,
                "write" => Access::Write,
                "delete" => Access::Delete,
                "any" => Access::Any,
                other => {
                    return Err(ctx
                        .err(a.span(), format!("unknown file access {other:?}: expected read, write, delete or any")))
                }
            },
        };
        matchers.push((span, Matcher::File { path, access }));
    }
    if let Some(c) = r.connect {
        let span = c.span();
        let c = c.into_inner();
        match (&c.cidr, &c.unix) {
            (Some(_), Some(u)) => {
                return Err(ctx.err(u.span(), "connect takes either cidr (with an optional port) or unix, not both"))
            }
            (None, None) if c.port.is_none() => return Err(ctx.err(span, "connect needs cidr, port or unix")),
            (None, Some(u)) => {
                if let Some(p) = &c.port {
                    return Err(ctx.err(p.span(), "a unix socket has no port"));
                }
                let path = u.get_ref();
                let path = if let Some(name) = path.strip_prefix('@') {
                    if name.is_empty() {
                        return Err(ctx.err(u.span(), "abstract unix socket name after '@' is empty"));
                    }
                    path.clone()
                } else {
                    check_abs_path(ctx, u, "unix socket path")?
                };
                matchers.push((span, Matcher::Unix { path }));
            }
            (cidr, None) => {
                let net = match cidr {
                    None => "::/0".parse().expect("valid"),
                    Some(s) => parse_cidr(s.get_ref()).ok_or_else(|| {
                        ctx.err(s.span(), format!("bad cidr {:?}: expected an IPv4 or IPv6 network like \"10.0.0.0/8\" or \"fd00::/8\", or one address", s.get_ref()))
                    })?,
                };
                let port = match &c.port {
                    None => None,
                    Some(p) => {
                        let v = *p.get_ref();
                        if !(1..=65535).contains(&v) {
                            return Err(ctx.err(p.span(), format!("port {v} is out of range: expected 1 to 65535")));
                        }
                        Some(v as u16)
                    }
                };
                // No cidr means any address; compile() expands that to IPv4 and IPv6.
                matchers.push((span, Matcher::Net { net, port }));
            }
        }
    }
    if let Some(c) = r.capability {
        let s = c.get_ref().to_ascii_uppercase();
        let s = if s.starts_with("CAP_") { s } else { format!("CAP_{s}") };
        let n = CAPABILITIES.iter().position(|&x| x == s).ok_or_else(|| {
            ctx.err(
                c.span(),
                format!("unknown capability {:?}: expected a name like CAP_NET_ADMIN or CAP_SYS_ADMIN", c.get_ref()),
            )
        })?;
        matchers.push((c.span(), Matcher::Capability(n as u8)));
    }
    for (flag, m) in
        [(r.mount, Matcher::Mount), (r.module, Matcher::Module), (r.bpf, Matcher::Bpf), (r.ptrace, Matcher::Ptrace)]
    {
        if let Some(f) = flag {
            if !*f.get_ref() {
                return Err(ctx.err(f.span(), "this matcher only takes `true`; leave it out to not match"));
            }
            matchers.push((f.span(), m));
        }
    }
    match matchers.len() {
        0 => Err(ctx.err(span, format!("rule {name:?} has no matcher: expected one of exec, file, connect, capability, mount, module, bpf, ptrace"))),
        1 => {
            let matcher = matchers.into_iter().next().expect("one").1;
            Ok(Rule { name, action, matcher })
        }
        _ => Err(ctx.err(matchers[1].0.clone(), format!("rule {name:?} has more than one matcher: split it into one rule per matcher"))),
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Everything the kernel maps hold for one policy.
#[derive(Default)]
pub struct Compiled {
    pub paths: Vec<(PathKey, u32, RuleRef)>,
    /// Exec rules with argv conditions, in file order.
    pub argv: Vec<ArgvRule>,
    pub net: Vec<NetRule>,
    pub caps: BTreeMap<u8, RuleRef>,
    pub mount: Option<RuleRef>,
    pub module: Option<RuleRef>,
    pub bpf: Option<RuleRef>,
    pub ptrace: Option<RuleRef>,
}

fn rule_ref(index: usize, action: Action) -> RuleRef {
    RuleRef { rule: index as u32 + 1, action: action as u8, _pad: [0; 3] }
}

/// Keys (class, bytes) for a path matcher: "/x/" is a prefix; "/x" is the path itself and,
/// for files, everything under it.
fn path_keys(path: &str, classes: &[u8], dir_too: bool) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    for &c in classes {
        let mut exact = path.as_bytes().to_vec();
        if !path.ends_with('/') {
            if dir_too {
                let mut under = exact.clone();
                under.push(b'/');
                out.push((c, under));
            }
            exact.push(0);
        }
        out.push((c, exact));
    }
    out
}

fn v6_bytes(net: &IpNet) -> ([u8; 16], [u8; 16]) {
    match net {
        IpNet::V4(n) => {
            let mut a = [0u8; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&n.network().octets());
            let mut m = [0xffu8; 16];
            m[12..].copy_from_slice(&n.netmask().octets());
            (a, m)
        }
        IpNet::V6(n) => (n.network().octets(), n.netmask().octets()),
    }
}

impl Policy {
    pub fn compile(&self, policy_id: u8) -> Compiled {
        let mut c = Compiled::default();
        let mut keys: Vec<(u8, Vec<u8>, usize)> = vec![];
        for (i, r) in self.rules.iter().enumerate() {
            let rr = rule_ref(i, r.action);
            match &r.matcher {
                Matcher::Exec { path, argv } if argv.is_empty() => {
                    keys.extend(path_keys(path, &[class::EXEC], false).into_iter().map(|(c, k)| (c, k, i)))
                }
                Matcher::Exec { path, argv } => {
                    let mut tokens = [0u64; MAX_ARGV_TOKENS];
                    for (t, a) in tokens.iter_mut().zip(argv) {
                        *t = fnv1a(a.as_bytes());
                    }
                    c.argv.push(ArgvRule {
                        path_hash: fnv1a(path.as_bytes()),
                        tokens,
                        rule: rr.rule,
                        ntok: argv.len() as u8,
                        action: r.action as u8,
                        used: 1,
                        _pad: 0,
                    });
                }
                Matcher::File { path, access } => {
                    let classes: &[u8] = match access {
                        Access::Read => &[class::READ],
                        Access::Write => &[class::WRITE],
                        Access::Delete => &[class::DELETE],
                        Access::Any => &[class::READ, class::WRITE, class::DELETE],
                    };
                    keys.extend(path_keys(path, classes, true).into_iter().map(|(c, k)| (c, k, i)));
                }
                Matcher::Unix { path } => {
                    keys.extend(path_keys(path, &[class::UNIX], false).into_iter().map(|(c, k)| (c, k, i)))
                }
                Matcher::Net { net, port } => {
                    // A rule for "any address" covers both families.
                    let nets: Vec<IpNet> = if net.prefix_len() == 0 {
                        vec!["0.0.0.0/0".parse().expect("valid"), "::/0".parse().expect("valid")]
                    } else {
                        vec![*net]
                    };
                    for n in nets {
                        let (addr, mask) = v6_bytes(&n);
                        c.net.push(NetRule {
                            addr,
                            mask,
                            port: port.unwrap_or(0),
                            used: 1,
                            action: r.action as u8,
                            rule: rr.rule,
                        });
                    }
                }
                Matcher::Capability(n) => {
                    c.caps.entry(*n).or_insert(rr);
                }
                Matcher::Mount => {
                    c.mount.get_or_insert(rr);
                }
                Matcher::Module => {
                    c.module.get_or_insert(rr);
                }
                Matcher::Bpf => {
                    c.bpf.get_or_insert(rr);
                }
                Matcher::Ptrace => {
                    c.ptrace.get_or_insert(rr);
                }
            }
        }
        c.net.truncate(MAX_NET_RULES as usize);
        // Each key maps to the earliest rule among itself and its prefixes (same class), so the
        // kernel's longest-prefix lookup yields the first matching rule in file order.
        for (class, bytes, _) in &keys {
            let best = keys
                .iter()
                .filter(|(c2, b2, _)| c2 == class && bytes.starts_with(b2))
                .map(|(_, _, i)| *i)
                .min()
                .expect("a key is its own prefix");
            if c.paths.iter().any(|(k, len, _)| {
                k.class == *class && *len as usize == (bytes.len() + 2) * 8 && k.path[..bytes.len()] == bytes[..]
            }) {
                continue;
            }
            let mut key = PathKey { policy: policy_id, class: *class, path: [0; PATH_LEN] };
            key.path[..bytes.len()].copy_from_slice(bytes);
            c.paths.push((key, ((bytes.len() + 2) * 8) as u32, rule_ref(best, self.rules[best].action)));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Policy::parse("p.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_design_example() {
        let p = Policy::parse(
            "p.toml",
            r#"
default = "allow"
ask_timeout = "30s"
[[rule]]
name = "no-cloud-metadata"
action = "deny"
connect = { cidr = "169.254.169.254/32" }
[[rule]]
name = "etc-writes"
action = "ask"
file = { path = "/etc/", access = "write" }
[[rule]]
name = "kubectl"
action = "ask"
exec = { path = "/usr/bin/kubectl" }
[[rule]]
name = "fw"
action = "deny"
capability = "CAP_NET_ADMIN"
"#,
        )
        .unwrap();
        assert_eq!(p.rules.len(), 4);
        assert_eq!(p.ask_timeout, Duration::from_secs(30));
        assert_eq!(p.rules[3].matcher, Matcher::Capability(12));
        let c = p.compile(0);
        assert_eq!(c.net.len(), 1);
        assert_eq!(c.caps.get(&12).unwrap().rule, 4);
    }

    #[test]
    fn errors_name_line_and_column() {
        assert_eq!(
            err("default = \"allow\"\nbogus = 1\n"),
            "p.toml:2:1: unknown field `bogus`, expected one of `default`, `ask_timeout`, `rule`"
        );
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\nconnect = { cidr = \"10.0.0.300/8\" }\n");
        assert!(e.starts_with("p.toml:4:20: bad cidr \"10.0.0.300/8\""), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\nfile = { path = \"etc/\" }\n");
        assert!(e.starts_with("p.toml:4:17: file path \"etc/\" is relative"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"maybe\"\nmount = true\n");
        assert!(e.starts_with("p.toml:3:10: unknown action \"maybe\""), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\ncapability = \"CAP_FLY\"\n");
        assert!(e.starts_with("p.toml:4:14: unknown capability"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\n");
        assert!(e.contains("has no matcher"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\nmount = true\nbpf = true\n");
        assert!(e.starts_with("p.toml:5:7:") && e.contains("more than one matcher"), "{e}");
        let e = err("ask_timeout = \"soon\"\n");
        assert!(e.starts_with("p.toml:1:15: bad ask_timeout"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\nconnect = { port = 70000 }\n");
        assert!(e.contains("port 70000 is out of range"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\nfile = { path = \"/a/../b\" }\n");
        assert!(e.contains("contains '.' or '..'"), "{e}");
    }

    #[test]
    fn earliest_rule_wins_through_prefixes() {
        let p = Policy::parse(
            "p.toml",
            r#"
[[rule]]
name = "secret"
action = "deny"
file = { path = "/etc/shadow", access = "read" }
[[rule]]
name = "etc"
action = "audit"
file = { path = "/etc/", access = "read" }
[[rule]]
name = "etc-ssh-late"
action = "ask"
file = { path = "/etc/ssh/", access = "read" }
"#,
        )
        .unwrap();
        let c = p.compile(0);
        let find = |s: &[u8]| {
            c.paths
                .iter()
                .find(|(k, len, _)| {
                    k.class == class::READ && *len as usize == (s.len() + 2) * 8 && &k.path[..s.len()] == s
                })
                .map(|x| x.2.rule)
        };
        assert_eq!(find(b"/etc/shadow\0"), Some(1));
        assert_eq!(find(b"/etc/"), Some(2));
        // "/etc/ssh/" sits under "/etc/" (rule 2), which comes first in the file.
        assert_eq!(find(b"/etc/ssh/"), Some(2));
    }

    #[test]
    fn argv_conditions() {
        let p = Policy::parse(
            "p.toml",
            "[[rule]]\nname = \"kdel\"\naction = \"ask\"\nexec = { path = \"/usr/bin/kubectl\", argv = [\"delete\"] }\n[[rule]]\nname = \"k\"\naction = \"audit\"\nexec = { path = \"/usr/bin/kubectl\" }\n",
        )
        .unwrap();
        let c = p.compile(0);
        assert_eq!(c.argv.len(), 1);
        assert_eq!(c.argv[0].path_hash, fnv1a(b"/usr/bin/kubectl"));
        assert_eq!(c.argv[0].tokens[0], fnv1a(b"delete"));
        assert_eq!((c.argv[0].rule, c.argv[0].ntok), (1, 1));
        // Only the plain exec rule is in the path trie.
        assert_eq!(c.paths.len(), 1);
        assert_eq!(c.paths[0].2.rule, 2);
        let e = err("[[rule]]\nname = \"x\"\naction = \"allow\"\nexec = { path = \"/bin/x\", argv = [\"a\"] }\n");
        assert!(e.starts_with("p.toml:4:34:") && e.contains("not allow"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\nexec = { path = \"/bin/\", argv = [\"a\"] }\n");
        assert!(e.contains("exact exec path"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\naction = \"deny\"\nexec = { path = \"/bin/x\", argv = [] }\n");
        assert!(e.contains("1 to 4 arguments"), "{e}");
    }

    #[test]
    fn port_only_connect_covers_both_families() {
        let p =
            Policy::parse("p.toml", "[[rule]]\nname = \"x\"\naction = \"deny\"\nconnect = { port = 22 }\n").unwrap();
        let c = p.compile(0);
        assert_eq!(c.net.len(), 2);
        assert!(c.net.iter().all(|n| n.port == 22));
    }
}
