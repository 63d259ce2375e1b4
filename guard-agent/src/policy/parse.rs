//! Policy files: TOML -> [`Policy`], every error at its `file:line:col` (one counting rule,
//! `guard_api::Location`, shared with the daemon's configuration).

use super::{parse_action, Access, Matcher, Policy, Rule, CAPABILITIES};
use guard_api::{toml_message, Location};
use guard_common::{Action, ARG_LEN, MAX_ARGV_RULES, MAX_ARGV_TOKENS, MAX_NET_RULES, PATH_LEN};
use ipnet::IpNet;
use serde::Deserialize;
use std::{net::IpAddr, ops::Range, path::Path, time::Duration};
use thiserror::Error;
use toml::Spanned;

/// A problem in a policy or configuration file, at its place (`file` alone when the whole
/// file is at fault, e.g. it cannot be read).
#[derive(Debug, Error)]
#[error("{at}: {msg}")]
pub struct PolicyError {
    pub at: Location,
    pub msg: String,
}

/// The largest policy or configuration file read (far above any real one).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// A file being parsed: its path and text, to place errors.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn err(&self, span: Range<usize>, msg: impl Into<String>) -> PolicyError {
        PolicyError { at: Location::of(self.path, self.text, span), msg: msg.into() }
    }

    /// Reads `path` whole; an unreadable file is an error of the file itself. Only a regular
    /// file of at most [`MAX_FILE_BYTES`] is read: a name like `/dev/zero` or a FIFO would
    /// otherwise never end (or block) the read, and the agent with it.
    pub fn read(path: &Path, what: &str) -> Result<String, PolicyError> {
        use std::io::Read;
        let fail = |msg: String| PolicyError { at: Location::whole(path), msg };
        let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read the {what}: {e}")))?;
        if !meta.is_file() {
            return Err(fail(format!("the {what} is not a regular file")));
        }
        let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read the {what}: {e}")))?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| fail(format!("cannot read the {what}: {e}")))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(fail(format!("the {what} is larger than {MAX_FILE_BYTES} bytes")));
        }
        Ok(text)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    include: Vec<Spanned<String>>,
    default: Option<Spanned<String>>,
    ask_timeout: Option<Spanned<String>>,
    io_uring: Option<Spanned<String>>,
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
    userns: Option<Spanned<bool>>,
    chroot: Option<Spanned<bool>>,
    pivot_root: Option<Spanned<bool>>,
    umount: Option<Spanned<bool>>,
    exec_anonymous: Option<Spanned<bool>>,
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

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = Source::read(path, "policy file")?;
        Self::parse_with(&path.display().to_string(), &text, true)
    }

    /// Parses a policy as text alone: rule paths are taken as written (see [`canonical`] for
    /// what [`Policy::load`] does with them). Its `include`s are still read (relative to
    /// `file`'s directory).
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        Self::parse_with(file, text, false)
    }

    /// As `parse`; with `resolve`, rule paths through symbolic links are resolved against
    /// this machine's filesystem (a policy file loaded to be enforced here).
    pub fn parse_with(file: &str, text: &str, resolve: bool) -> Result<Self, PolicyError> {
        let mut stack = vec![include_key(Path::new(file))];
        parse_file(file, text, resolve, &mut stack, true)
    }
}

/// How deep includes may nest (the baseline included by a policy included by another is 2).
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// Built-in policies, named `guard:<name>` in `include`: shipped inside the agent so that it
/// never needs the source tree (or a file an attacker could edit) to find them.
pub const BUILTIN: [(&str, &str); 1] = [("baseline", include_str!("../../../policies/baseline.toml"))];

/// What identifies an included file for cycle detection: its canonical path, or the name.
fn include_key(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// Where a rule of a policy being assembled came from: its own span, or the include entry
/// (by index) whose file held it.
enum Place {
    Own(Range<usize>),
    Included(usize),
}

/// One policy file with its includes. `top` is the policy being loaded; an included file holds
/// rules (and includes) only: the default, ask_timeout and io_uring are the top policy's.
///
/// Precedence: the included rules come first, in include order, then the file's own rules.
/// Where rules overlap the earliest wins (see `compile`), so a later rule cannot loosen an
/// included one; a rule with the *same name* as an included rule and the same matcher
/// replaces its action in place, if at least as strict (ask -> deny); a looser one is refused.
/// To loosen the baseline, do not include it (copy it and edit the copy).
fn parse_file(
    file: &str,
    text: &str,
    resolve: bool,
    stack: &mut Vec<String>,
    top: bool,
) -> Result<Policy, PolicyError> {
    let ctx = Source { path: Path::new(file), text };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| ctx.err(e.span().unwrap_or(0..0), toml_message(text, &e)))?;
    if !top {
        for (key, v) in [("default", &raw.default), ("ask_timeout", &raw.ask_timeout), ("io_uring", &raw.io_uring)] {
            if let Some(v) = v {
                return Err(ctx.err(
                    v.span(),
                    format!("an included policy holds rules only: set {key} in the policy that includes it"),
                ));
            }
        }
    }
    let default = match raw.default {
        None => Action::Allow,
        Some(d) => parse_action(d.get_ref()).ok_or_else(|| {
            ctx.err(d.span(), format!("unknown default action {:?}: expected allow, deny, audit or ask", d.get_ref()))
        })?,
    };
    let ask_timeout = match raw.ask_timeout {
        None => Duration::from_secs(30),
        Some(t) => {
            let d = humantime::parse_duration(t.get_ref()).map_err(|e| {
                ctx.err(t.span(), format!("bad ask_timeout {:?}: {e} (expected e.g. \"30s\" or \"5m\")", t.get_ref()))
            })?;
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return Err(ctx.err(t.span(), "ask_timeout must be between 1s and 24h"));
            }
            d
        }
    };
    let io_uring_deny = match raw.io_uring {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "allow" => false,
            "deny" => true,
            other => {
                return Err(ctx.err(v.span(), format!("unknown io_uring setting {other:?}: expected allow or deny")))
            }
        },
    };
    let mut items: Vec<(Rule, Place)> = Vec::new();
    let mut hash_input = text.to_string();
    let mut included_files = vec![];
    for (n, entry) in raw.include.iter().enumerate() {
        let name = entry.get_ref();
        let fail = |msg: String| ctx.err(entry.span(), format!("include {name:?}: {msg}"));
        let (shown, key, inc_text, file) = if let Some(builtin) = name.strip_prefix("guard:") {
            let Some((_, t)) = BUILTIN.iter().find(|(b, _)| *b == builtin) else {
                let known: Vec<String> = BUILTIN.iter().map(|(b, _)| format!("guard:{b}")).collect();
                return Err(fail(format!("no built-in policy of that name (built in: {})", known.join(", "))));
            };
            (name.clone(), name.clone(), t.to_string(), None)
        } else {
            if name.is_empty() {
                return Err(fail("the path is empty".into()));
            }
            let path = ctx.path.parent().unwrap_or(Path::new("")).join(name);
            let t = Source::read(&path, "included policy").map_err(|e| fail(e.msg))?;
            (path.display().to_string(), include_key(&path), t, Some(path))
        };
        if stack.contains(&key) {
            return Err(fail(format!("includes itself (through {})", stack.join(" -> "))));
        }
        if stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(fail(format!("includes nest deeper than {MAX_INCLUDE_DEPTH}")));
        }
        stack.push(key);
        let inner = parse_file(&shown, &inc_text, resolve, stack, false).map_err(|e| fail(e.to_string()))?;
        stack.pop();
        hash_input.push_str(&format!("\n\0include {name}\0{}", inner.hash));
        included_files.extend(file);
        included_files.extend(inner.included);
        items.extend(inner.rules.into_iter().map(|r| (r, Place::Included(n))));
    }
    let included = items.len();
    for r in raw.rule {
        let span = r.span();
        let rule = compile_rule(&ctx, span.clone(), r.into_inner(), resolve)?;
        if let Some(i) = items[..included].iter().position(|(x, _)| x.name == rule.name) {
            let base = &mut items[i].0;
            if base.matcher != rule.matcher {
                return Err(ctx.err(
                    span,
                    format!(
                        "rule {:?} has the name of an included rule but another matcher: a rule of that name \
                         may only make the included one stricter (rename it to add a rule)",
                        rule.name
                    ),
                ));
            }
            if super::strictness(rule.action) < super::strictness(base.action) {
                return Err(ctx.err(
                    span,
                    format!(
                        "rule {:?} would loosen the included rule of that name ({} -> {}): an including \
                         policy can only make included rules stricter",
                        rule.name,
                        super::action_name(base.action),
                        super::action_name(rule.action)
                    ),
                ));
            }
            base.action = rule.action;
            continue;
        }
        items.push((rule, Place::Own(span)));
    }
    check_limits(&ctx, &raw.include, &items)?;
    let hash = if raw.include.is_empty() { super::text_hash(text) } else { super::text_hash(&hash_input) };
    let rules = items.into_iter().map(|(r, _)| r).collect();
    Ok(Policy { default, ask_timeout, io_uring_deny, rules, hash, included: included_files })
}

/// The kernel's limits over the assembled rules, each refusal at the rule's own place (or the
/// include entry that brought it).
fn check_limits(ctx: &Source, includes: &[Spanned<String>], items: &[(Rule, Place)]) -> Result<(), PolicyError> {
    let mut net_rules = 0;
    let mut argv_rules = 0;
    for (rule, place) in items {
        let at = |msg: String| match place {
            Place::Own(span) => ctx.err(span.clone(), msg),
            Place::Included(n) => {
                let e = &includes[*n];
                ctx.err(e.span(), format!("include {:?}: {msg}", e.get_ref()))
            }
        };
        if matches!(&rule.matcher, Matcher::Exec { argv, .. } if !argv.is_empty()) {
            argv_rules += 1;
            if argv_rules > MAX_ARGV_RULES {
                return Err(at(format!("at most {MAX_ARGV_RULES} exec rules with argv are supported")));
            }
        }
        if let Matcher::Net { net, .. } = &rule.matcher {
            // The count is of kernel entries, not rules: a rule for any address ("/0", or a
            // port alone) takes one entry per family (see `compile`). A rule that does not
            // fit is refused here, at its own place in the file; never installed in part.
            net_rules += if net.prefix_len() == 0 { 2 } else { 1 };
            if net_rules > MAX_NET_RULES {
                return Err(at(format!(
                    "rule {:?}: too many connect rules with a cidr or port: the kernel holds {MAX_NET_RULES} \
                     entries per policy, and a rule for any address (a port alone, or a /0) takes two",
                    rule.name
                )));
            }
        }
    }
    Ok(())
}

fn check_abs_path(ctx: &Source, p: &Spanned<String>, what: &str) -> Result<String, PolicyError> {
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

/// Rule paths name objects. The kernel compares the paths it resolved, so a rule written on a
/// path through a symbolic link (`/bin/x` on merged /usr, `/usr/bin/python3` -> `python3.11`,
/// `/var/run/`) would never match: it is resolved here, at load, to the path the kernel will
/// see, and a warning at the rule's `file:line:col` says so. Only the part of the path that
/// exists is resolved (the rest is kept as written); a path that does not exist yet is kept.
fn canonical(ctx: &Source, p: &Spanned<String>, path: String, what: &str) -> Result<String, PolicyError> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(path);
    }
    let mut head = std::path::PathBuf::from(trimmed);
    let mut tail: Vec<std::ffi::OsString> = vec![];
    let resolved = loop {
        match std::fs::canonicalize(&head) {
            Ok(c) => break c,
            Err(_) => {
                let Some(name) = head.file_name().map(|n| n.to_os_string()) else { return Ok(path) };
                tail.push(name);
                if !head.pop() {
                    return Ok(path);
                }
            }
        }
    };
    let mut out = resolved;
    for name in tail.iter().rev() {
        out.push(name);
    }
    let Some(mut out) = out.to_str().map(str::to_string) else { return Ok(path) };
    if path.ends_with('/') && !out.ends_with('/') {
        out.push('/');
    }
    if out == path {
        return Ok(path);
    }
    if out.len() >= PATH_LEN - 1 {
        return Err(ctx.err(
            p.span(),
            format!(
                "{what} {path:?} resolves to {out:?}, {} bytes long: at most {} are supported",
                out.len(),
                PATH_LEN - 2
            ),
        ));
    }
    let at = Location::of(ctx.path, ctx.text, p.span());
    tracing::warn!(
        "{at}: {what} {path:?} goes through a symbolic link: the rule applies to {out:?}, the object it names now"
    );
    Ok(out)
}

/// argv conditions: 1 to 4 whole arguments, on an exact path, for rules that restrict.
fn check_argv(ctx: &Source, a: &Spanned<Vec<String>>, path: &str, action: Action) -> Result<Vec<String>, PolicyError> {
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

fn compile_rule(ctx: &Source, span: Range<usize>, r: RawRule, resolve: bool) -> Result<Rule, PolicyError> {
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
        let path = if resolve { canonical(ctx, &e.path, path, "exec path")? } else { path };
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
        let path = if resolve { canonical(ctx, &f.path, path, "file path")? } else { path };
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
    for (flag, m) in [
        (r.mount, Matcher::Mount),
        (r.module, Matcher::Module),
        (r.bpf, Matcher::Bpf),
        (r.ptrace, Matcher::Ptrace),
        (r.userns, Matcher::Userns),
        (r.chroot, Matcher::Chroot),
        (r.pivot_root, Matcher::PivotRoot),
        (r.umount, Matcher::Umount),
        (r.exec_anonymous, Matcher::ExecAnonymous),
    ] {
        if let Some(f) = flag {
            if !*f.get_ref() {
                return Err(ctx.err(f.span(), "this matcher only takes `true`; leave it out to not match"));
            }
            matchers.push((f.span(), m));
        }
    }
    match matchers.len() {
        0 => Err(ctx.err(span, format!("rule {name:?} has no matcher: expected one of exec, file, connect, capability, mount, umount, chroot, pivot_root, userns, exec_anonymous, module, bpf, ptrace"))),
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
