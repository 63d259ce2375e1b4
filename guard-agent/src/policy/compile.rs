//! A [`Policy`] -> the kernel's map layouts for one policy slot.

use super::{Access, Matcher, Policy};
use guard_common::{
    class, fnv1a, Action, ArgvRule, NetRule, PathKey, RuleRef, MAX_ARGV_TOKENS, MAX_NET_RULES, PATH_LEN,
};
use ipnet::IpNet;
use std::collections::BTreeMap;

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
    pub userns: Option<RuleRef>,
    pub chroot: Option<RuleRef>,
    pub pivot_root: Option<RuleRef>,
    pub umount: Option<RuleRef>,
    pub exec_anonymous: Option<RuleRef>,
}

fn rule_ref(index: usize, action: Action) -> RuleRef {
    RuleRef { rule: index as u32 + 1, action: action as u8, _pad: [0; 3] }
}

/// Keys (class, bytes) for a path matcher: "/x/" is a prefix; "/x" is the path itself and,
/// for files, everything under it. A file rule "/x/" also covers the directory "/x" itself
/// (renaming, opening or removing the directory is an operation on everything below it).
fn path_keys(path: &str, classes: &[u8], dir_too: bool) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    for &c in classes {
        let mut exact = path.as_bytes().to_vec();
        if dir_too && path.len() > 1 && path.ends_with('/') {
            let mut itself = path.trim_end_matches('/').as_bytes().to_vec();
            itself.push(0);
            out.push((c, itself));
        }
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

/// How strict an action is, for the rule that stands for everything below a directory.
fn strictness(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Audit => 1,
        Action::Ask => 2,
        Action::Deny => 3,
    }
}

/// The proper ancestor directories of a rule path ("/a/b/c/" -> "/a", "/a/b"), without "/"
/// (the root cannot be renamed).
fn ancestors(path: &str) -> Vec<&str> {
    let p = path.trim_end_matches('/');
    p.match_indices('/').map(|(i, _)| &p[..i]).filter(|a| !a.is_empty()).collect()
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
                Matcher::Unix { path } => match path.strip_suffix('*') {
                    // A text prefix: the key is the bytes before the '*', without the NUL.
                    Some(prefix) => keys.push((class::UNIX, prefix.as_bytes().to_vec(), i)),
                    None => keys.extend(path_keys(path, &[class::UNIX], false).into_iter().map(|(c, k)| (c, k, i))),
                },
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
                Matcher::Userns => {
                    c.userns.get_or_insert(rr);
                }
                Matcher::Chroot => {
                    c.chroot.get_or_insert(rr);
                }
                Matcher::PivotRoot => {
                    c.pivot_root.get_or_insert(rr);
                }
                Matcher::Umount => {
                    c.umount.get_or_insert(rr);
                }
                Matcher::ExecAnonymous => {
                    c.exec_anonymous.get_or_insert(rr);
                }
            }
        }
        // Renaming a directory renames everything below it: each proper ancestor of a file rule
        // path gets an exact key (`dir\0`) in class ANCESTOR, valued with the strictest rule
        // below it (the earliest among equals). Rules that allow need no key.
        let mut below: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, r) in self.rules.iter().enumerate() {
            let Matcher::File { path, .. } = &r.matcher else { continue };
            if r.action == Action::Allow {
                continue;
            }
            for a in ancestors(path) {
                let e = below.entry(a).or_insert(i);
                if strictness(r.action) > strictness(self.rules[*e].action) {
                    *e = i;
                }
            }
        }
        for (dir, i) in below {
            let mut key = PathKey { policy: policy_id, class: class::ANCESTOR, path: [0; PATH_LEN] };
            if dir.len() + 1 > PATH_LEN {
                continue;
            }
            key.path[..dir.len()].copy_from_slice(dir.as_bytes());
            c.paths.push((key, ((dir.len() + 3) * 8) as u32, rule_ref(i, self.rules[i].action)));
        }
        // `parse` refuses a policy whose entries do not fit, with the rule's place in the file.
        assert!(c.net.len() <= MAX_NET_RULES as usize, "parse bounds the connect entries");
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

    fn key_of(c: &Compiled, class: u8, bytes: &[u8]) -> Option<RuleRef> {
        c.paths
            .iter()
            .find(|(k, len, _)| {
                k.class == class && *len as usize == (bytes.len() + 2) * 8 && &k.path[..bytes.len()] == bytes
            })
            .map(|(_, _, r)| *r)
    }

    #[test]
    fn directories_and_ancestors_of_rule_paths_have_keys() {
        let p = Policy::parse(
            "p.toml",
            r#"
default = "allow"
[[rule]]
name = "aws"
action = "audit"
file = { path = "/home/u/.aws/", access = "read" }
[[rule]]
name = "ssh"
action = "deny"
file = { path = "/home/u/.ssh/id", access = "any" }
[[rule]]
name = "tmp"
action = "allow"
file = { path = "/tmp/a/b/", access = "write" }
"#,
        )
        .unwrap();
        let c = p.compile(0);
        // "/x/" covers "/x" itself.
        assert_eq!(key_of(&c, class::READ, b"/home/u/.aws\0").unwrap().rule, 1);
        assert_eq!(key_of(&c, class::READ, b"/home/u/.aws/").unwrap().rule, 1);
        // Ancestors: the strictest rule below (deny beats the earlier audit).
        assert_eq!(key_of(&c, class::ANCESTOR, b"/home/u/.ssh\0").unwrap().rule, 2);
        assert_eq!(key_of(&c, class::ANCESTOR, b"/home/u\0").unwrap().rule, 2);
        assert_eq!(key_of(&c, class::ANCESTOR, b"/home\0").unwrap().rule, 2);
        // Not the rule paths themselves, not "/", nothing for allow rules.
        assert!(key_of(&c, class::ANCESTOR, b"/home/u/.aws\0").is_none());
        assert!(key_of(&c, class::ANCESTOR, b"/\0").is_none());
        assert!(key_of(&c, class::ANCESTOR, b"/tmp\0").is_none());
    }
}
