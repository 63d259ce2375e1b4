//! Policies: what a tree may do. [`parse`] reads a policy file (TOML) into a [`Policy`], with
//! `file:line:col` errors; [`compile`] turns a policy into the kernel's map entries.
//!
//! A policy is checked whole before anything is loaded: the first problem is reported with
//! file:line:col and what was expected, and nothing reaches the kernel.

pub mod compile;
pub mod parse;

pub use compile::Compiled;
pub use parse::{PolicyError, Source};

use guard_common::Action;
use ipnet::IpNet;
use std::time::Duration;

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
    /// A unix socket's path: exact, a directory prefix when it ends in '/', or any path that
    /// starts with the text before a final '*' (`/tmp/tmux-*`).
    Unix {
        path: String,
    },
    Capability(u8),
    Mount,
    Module,
    Bpf,
    Ptrace,
    /// Creating a user namespace (unshare/clone with CLONE_NEWUSER).
    Userns,
    /// chroot(2).
    Chroot,
    /// pivot_root(2).
    PivotRoot,
    /// umount(2)/umount2(2), lazy (`umount -l`) or not.
    Umount,
    /// Running (or mapping executable) a program with no name left: a memfd, a deleted file.
    ExecAnonymous,
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
    /// `io_uring = "deny"`: every hooked operation that comes through io_uring is refused, and
    /// so are SQPOLL rings and registered personalities. Default "allow": io_uring requests
    /// are decided by the rules like the syscalls they stand for.
    pub io_uring_deny: bool,
    pub rules: Vec<Rule>,
    /// "sha256:<hex>" of the policy's text: guard-server checks requests name the policy the
    /// host registered (a tree that edits the policy to rename its rules is flagged).
    pub hash: String,
    /// The files its `include`s read (nested too; not the built-in ones): guard's own files,
    /// protected like the policy file itself.
    pub included: Vec<std::path::PathBuf>,
}

/// "sha256:<hex>" of a policy's text.
pub fn text_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
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

pub fn parse_action(s: &str) -> Option<Action> {
    match s {
        "allow" => Some(Action::Allow),
        "deny" => Some(Action::Deny),
        "audit" => Some(Action::Audit),
        "ask" => Some(Action::Ask),
        _ => None,
    }
}

/// How strict an action is: allow < audit < ask < deny.
pub fn strictness(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Audit => 1,
        Action::Ask => 2,
        Action::Deny => 3,
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

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::{class, fnv1a, MAX_NET_RULES};

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
            "p.toml:2:1: unknown field `bogus`, expected one of `include`, `default`, `ask_timeout`, `io_uring`, `rule`"
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
    fn a_control_character_is_named_not_an_empty_message() {
        // Found by the `policy` fuzz target: toml gives no message for this one.
        let e = Policy::parse("p.toml", "#\0\0\0\0 \"O\"O").unwrap_err();
        assert!(!e.msg.is_empty(), "{e}");
        assert!(e.to_string().starts_with("p.toml:1:"), "{e}");
    }

    #[test]
    fn io_uring_setting() {
        assert!(!Policy::parse("p.toml", "default = \"allow\"\n").unwrap().io_uring_deny);
        assert!(!Policy::parse("p.toml", "io_uring = \"allow\"\n").unwrap().io_uring_deny);
        assert!(Policy::parse("p.toml", "io_uring = \"deny\"\n").unwrap().io_uring_deny);
        assert_eq!(
            err("io_uring = \"maybe\"\n"),
            "p.toml:1:12: unknown io_uring setting \"maybe\": expected allow or deny"
        );
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

    /// A policy of `n` connect rules, each `matcher`.
    fn connect_rules(n: usize, matcher: &str) -> String {
        (0..n).map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\nconnect = {matcher}\n")).collect()
    }

    #[test]
    fn connect_rules_past_the_kernel_limit_are_refused_with_their_place() {
        let max = MAX_NET_RULES as usize;
        // Rules for one network take one entry each: exactly the limit fits, one more does not.
        let p = Policy::parse("p.toml", &connect_rules(max, "{ cidr = \"10.0.0.0/8\" }")).unwrap();
        assert_eq!(p.compile(0).net.len(), max);
        let e = err(&connect_rules(max + 1, "{ cidr = \"10.0.0.0/8\" }"));
        let line = 4 * max + 1;
        assert!(e.starts_with(&format!("p.toml:{line}:")) && e.contains(&format!("rule \"r{max}\"")), "{e}");
        // A port alone (any address) takes two entries: half as many rules fit, and the first
        // that does not is named, never cut off at compile time.
        let p = Policy::parse("p.toml", &connect_rules(max / 2, "{ port = 22 }")).unwrap();
        assert_eq!(p.compile(0).net.len(), max);
        let e = err(&connect_rules(max / 2 + 1, "{ port = 22 }"));
        let line = 4 * (max / 2) + 1;
        assert!(e.starts_with(&format!("p.toml:{line}:")) && e.contains(&format!("rule \"r{}\"", max / 2)), "{e}");
        // The same with a /0 among one-entry rules: the /0 is the one refused.
        let mut text = connect_rules(max - 1, "{ cidr = \"10.0.0.0/8\" }");
        text.push_str("[[rule]]\nname = \"any\"\naction = \"deny\"\nconnect = { cidr = \"::/0\" }\n");
        let e = err(&text);
        assert!(e.contains("rule \"any\"") && e.starts_with(&format!("p.toml:{}:", 4 * (max - 1) + 1)), "{e}");
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

#[cfg(test)]
mod escape_ns_tests {
    use super::*;

    #[test]
    fn namespace_and_anonymous_exec_matchers_compile_to_their_own_rules() {
        let mut text = String::new();
        for m in ["userns", "chroot", "pivot_root", "umount", "exec_anonymous", "mount"] {
            text.push_str(&format!("[[rule]]\nname = \"{m}\"\naction = \"allow\"\n{m} = true\n"));
        }
        let c = Policy::parse("p.toml", &text).unwrap().compile(0);
        let rules = [c.userns, c.chroot, c.pivot_root, c.umount, c.exec_anonymous, c.mount];
        for (i, r) in rules.iter().enumerate() {
            assert_eq!(r.map(|r| r.rule), Some(i as u32 + 1));
        }
        let e = Policy::parse("p.toml", "[[rule]]\nname = \"x\"\naction = \"deny\"\nuserns = false\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:4:10:") && e.contains("only takes `true`"), "{e}");
    }

    #[test]
    fn rule_paths_through_symlinks_are_resolved_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(real.join("real")).unwrap();
        std::fs::write(real.join("real/tool"), b"").unwrap();
        std::os::unix::fs::symlink(real.join("real/tool"), real.join("tool-link")).unwrap();
        std::os::unix::fs::symlink(real.join("real"), real.join("dir-link")).unwrap();
        let r = real.display();
        let text = format!(
            "[[rule]]\nname = \"a\"\naction = \"deny\"\nexec = {{ path = \"{r}/tool-link\" }}\n\
             [[rule]]\nname = \"b\"\naction = \"deny\"\nfile = {{ path = \"{r}/dir-link/\" }}\n\
             [[rule]]\nname = \"c\"\naction = \"deny\"\nfile = {{ path = \"{r}/dir-link/not-yet\" }}\n"
        );
        let p = Policy::parse_with("p.toml", &text, true).unwrap();
        assert_eq!(p.rules[0].matcher, Matcher::Exec { path: format!("{r}/real/tool"), argv: vec![] });
        assert_eq!(p.rules[1].matcher, Matcher::File { path: format!("{r}/real/"), access: Access::Any });
        assert_eq!(p.rules[2].matcher, Matcher::File { path: format!("{r}/real/not-yet"), access: Access::Any });
    }
}

#[cfg(test)]
mod include_tests {
    use super::*;
    use std::path::Path;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const OWN: &str = "[[rule]]\nname = \"own\"\naction = \"deny\"\nmount = true\n";

    #[test]
    fn the_builtin_baseline_parses_and_its_rules_come_first() {
        let text = format!("include = [\"guard:baseline\"]\n{OWN}");
        let p = Policy::parse("p.toml", &text).unwrap();
        let base = Policy::parse("baseline.toml", parse::BUILTIN[0].1).unwrap();
        assert!(base.rules.len() >= 20, "{}", base.rules.len());
        assert_eq!(p.rules.len(), base.rules.len() + 1);
        assert_eq!(p.rules[0].name, base.rules[0].name);
        assert_eq!(p.rules.last().unwrap().name, "own");
        // The shipped file is the built-in text.
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/baseline.toml")).unwrap();
        assert_eq!(shipped, parse::BUILTIN[0].1);
        // It compiles within the kernel's limits and has the escapes it is for.
        let c = p.compile(0);
        assert_eq!(c.net.len(), 2);
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        for n in ["baseline-docker", "baseline-tmux", "baseline-core-pattern", "baseline-cron-spool"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn a_later_rule_cannot_loosen_an_included_one() {
        // An allow for the docker socket after the include: the earlier baseline deny keeps
        // the key.
        let text = "include = [\"guard:baseline\"]\n[[rule]]\nname = \"docker-ok\"\naction = \"allow\"\nconnect = { unix = \"/run/docker.sock\" }\n";
        let p = Policy::parse("p.toml", text).unwrap();
        let c = p.compile(0);
        let docker = p.rules.iter().position(|r| r.name == "baseline-docker").unwrap() as u32 + 1;
        let key = c
            .paths
            .iter()
            .find(|(k, _, _)| k.class == guard_common::class::UNIX && k.path.starts_with(b"/run/docker.sock\0"))
            .unwrap();
        assert_eq!(key.2.rule, docker);
        assert_eq!(key.2.action, Action::Deny as u8);
        // The same name may make a rule stricter, in place; never looser.
        let stricter =
            "include = [\"guard:baseline\"]\n[[rule]]\nname = \"baseline-tmux\"\naction = \"deny\"\nconnect = { unix = \"/tmp/tmux-*\" }\n";
        let p = Policy::parse("p.toml", stricter).unwrap();
        let r = p.rules.iter().find(|r| r.name == "baseline-tmux").unwrap();
        assert_eq!(r.action, Action::Deny);
        assert_eq!(p.rules.iter().filter(|r| r.name == "baseline-tmux").count(), 1);
        let looser = stricter.replace("\"deny\"", "\"allow\"");
        let e = Policy::parse("p.toml", &looser).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:2:1:") && e.contains("would loosen") && e.contains("ask -> allow"), "{e}");
        let other = stricter.replace("/tmp/tmux-*", "/tmp/x");
        let e = Policy::parse("p.toml", &other).unwrap_err().to_string();
        assert!(e.contains("another matcher"), "{e}");
    }

    #[test]
    fn include_errors_name_the_including_file_the_entry_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(dir.path(), "top.toml", "include = [\"missing.toml\"]\n");
        let e = Policy::load(&top).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:1:12: include \"missing.toml\": cannot read", top.display())), "{e}");
        write(dir.path(), "bad.toml", "[[rule]]\nname = \"x\"\naction = \"maybe\"\nmount = true\n");
        let top = write(dir.path(), "top2.toml", "include = [\"bad.toml\"]\n");
        let e = Policy::load(&top).unwrap_err().to_string();
        assert!(e.contains("include \"bad.toml\": ") && e.contains("bad.toml:3:10: unknown action"), "{e}");
        let e = Policy::parse("p.toml", "include = [\"guard:nope\"]\n").unwrap_err().to_string();
        assert!(e.starts_with("p.toml:1:12:") && e.contains("guard:baseline"), "{e}");
        // An included file holds rules only.
        write(dir.path(), "dflt.toml", "default = \"allow\"\n");
        let top = write(dir.path(), "top3.toml", "include = [\"dflt.toml\"]\n");
        let e = Policy::load(&top).unwrap_err().to_string();
        assert!(e.contains("holds rules only"), "{e}");
    }

    #[test]
    fn include_cycles_and_depth_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "include = [\"b.toml\"]\n");
        write(dir.path(), "b.toml", "include = [\"a.toml\"]\n");
        let e = Policy::load(&dir.path().join("a.toml")).unwrap_err().to_string();
        assert!(e.contains("includes itself"), "{e}");
        let s = write(dir.path(), "self.toml", "include = [\"self.toml\"]\n");
        assert!(Policy::load(&s).unwrap_err().to_string().contains("includes itself"));
        for i in 0..12 {
            write(dir.path(), &format!("d{i}.toml"), &format!("include = [\"d{}.toml\"]\n", i + 1));
        }
        write(dir.path(), "d12.toml", OWN);
        let e = Policy::load(&dir.path().join("d0.toml")).unwrap_err().to_string();
        assert!(e.contains("nest deeper than"), "{e}");
        // Relative to the including file, not the cwd.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write(dir.path(), "sub/inner.toml", OWN);
        write(dir.path(), "sub/outer.toml", "include = [\"inner.toml\"]\n");
        let p = Policy::load(&dir.path().join("sub/outer.toml")).unwrap();
        assert_eq!(p.rules[0].name, "own");
        // The included file is listed, to be protected like the policy.
        assert_eq!(p.included, vec![dir.path().join("sub/inner.toml")]);
    }

    #[test]
    fn the_hash_covers_the_included_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", OWN);
        let top = write(dir.path(), "top.toml", "include = [\"base.toml\"]\n");
        let h1 = Policy::load(&top).unwrap().hash;
        let again = Policy::load(&top).unwrap().hash;
        assert_eq!(h1, again);
        write(dir.path(), "base.toml", &OWN.replace("deny", "ask"));
        let h2 = Policy::load(&top).unwrap().hash;
        assert_ne!(h1, h2, "changing an included file must change the policy's hash");
        // And the built-in baseline: the hash depends on its text.
        let with = Policy::parse("p.toml", "include = [\"guard:baseline\"]\n").unwrap().hash;
        assert_ne!(with, text_hash("include = [\"guard:baseline\"]\n"));
        assert!(with.starts_with("sha256:") && with.len() == 71);
    }

    #[test]
    fn unix_text_prefix() {
        let p =
            Policy::parse("p.toml", "[[rule]]\nname = \"t\"\naction = \"ask\"\nconnect = { unix = \"/tmp/tmux-*\" }\n")
                .unwrap();
        let c = p.compile(0);
        assert_eq!(c.paths.len(), 1);
        let (k, bits, _) = &c.paths[0];
        assert_eq!(&k.path[..11], b"/tmp/tmux-\0");
        assert_eq!(*bits as usize, (10 + 2) * 8);
    }
}
