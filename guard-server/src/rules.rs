//! The server's own matching of requests: which `[[require]]`/`[[auto]]` applies (by host,
//! policy and rule, as globs), which hosts an approver sees (host groups), and what of argv
//! is redacted before a request is stored or shown.
use regex::Regex;

/// A shell-style glob over a whole name: `*` any run of characters, `?` one character,
/// everything else literal. No character classes: names are hosts, policies and rules.
#[derive(Debug, Clone)]
pub struct Glob {
    text: String,
    re: Regex,
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("empty pattern (use \"*\" for any)".into());
        }
        let mut re = String::from("^");
        for c in text.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| format!("pattern {text:?}: {e}"))?;
        Ok(Glob { text: text.to_string(), re })
    }

    pub fn any() -> Glob {
        Glob::new("*").expect("\"*\" is a glob")
    }

    pub fn matches(&self, name: &str) -> bool {
        self.re.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Glob) -> bool {
        self.text == other.text
    }
}

/// Where a `[[require]]` or `[[auto]]` applies: all three must match. The host is the agent
/// certificate's name, never a message field; policy and rule are what the host reported,
/// which is why a policy whose hash changed since registration is flagged or refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub host: Glob,
    pub policy: Glob,
    pub rule: Glob,
}

impl Scope {
    pub fn matches(&self, host: &str, policy: &str, rule: &str) -> bool {
        self.host.matches(host) && self.policy.matches(policy) && self.rule.matches(rule)
    }

    pub fn describe(&self) -> String {
        format!("host {:?} policy {:?} rule {:?}", self.host.as_str(), self.policy.as_str(), self.rule.as_str())
    }
}

/// What replaces a redacted secret.
pub const REDACTED: &str = "[REDACTED]";

/// The default patterns: values of password/token/secret/key flags (`--password=x`,
/// `--token x` is caught through the next-argument rule), mysql-style `-pSECRET`, HTTP
/// bearer and basic credentials, AWS access key ids, GitHub and Slack tokens, and userinfo
/// in URLs (`https://user:pass@host`).
pub const DEFAULT_PATTERNS: &[&str] = &[
    r"(?i)^--?[a-z0-9_.-]*(?:password|passwd|pass|pwd|token|secret|api[-_]?key|access[-_]?key|private[-_]?key|credentials?)[a-z0-9_.-]*[=:](?P<secret>.+)$",
    // mysql-style `-pSECRET`, but not find's `-print`, `-prune`, `-perm` or tar's `-pxf`:
    // only a value with something other than lowercase letters in it.
    r"^-p(?P<secret>[^-].*[^a-z].*|[^-a-z].*)$",
    r"(?i)\b(?:bearer|basic|token)\s+(?P<secret>[A-Za-z0-9._~+/=-]{8,})",
    r"\b(?P<secret>(?:AKIA|ASIA)[0-9A-Z]{16})\b",
    r"\b(?P<secret>gh[pousr]_[A-Za-z0-9]{20,})\b",
    r"\b(?P<secret>github_pat_[A-Za-z0-9_]{20,})\b",
    r"\b(?P<secret>xox[abposr]-[A-Za-z0-9-]{10,})\b",
    r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<secret>[^/\s@]+)@",
];

/// Flags whose *next* argument is a secret (`--password hunter2`, `-P`... is not one: too
/// many tools use single letters for other things).
pub const DEFAULT_SECRET_FLAGS: &str =
    r"(?i)^--?[a-z0-9_.-]*(?:password|passwd|token|secret|api[-_]?key|access[-_]?key|private[-_]?key|credentials?)$";

/// Redaction of argv. A pattern with a group named `secret` has only that group replaced
/// (so `--password=` stays and says what was hidden); one without, its whole match.
#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: Vec<Regex>,
    /// An argument matching this makes the next argument a secret.
    secret_flag: Option<Regex>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect(), Some(DEFAULT_SECRET_FLAGS.into()))
            .expect("the default patterns compile")
    }
}

impl Redactor {
    pub fn new(patterns: Vec<String>, secret_flag: Option<String>) -> Result<Redactor, String> {
        let compile = |p: &str| Regex::new(p).map_err(|e| format!("pattern {p:?}: {e}"));
        Ok(Redactor {
            patterns: patterns.iter().map(|p| compile(p)).collect::<Result<_, _>>()?,
            secret_flag: secret_flag.as_deref().map(compile).transpose()?,
        })
    }

    pub fn none() -> Redactor {
        Redactor { patterns: Vec::new(), secret_flag: None }
    }

    /// Checks one pattern the way `new` compiles it, for the config's error message.
    pub fn check(pattern: &str) -> Result<(), String> {
        Regex::new(pattern).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Redacts `argv` in place; true when anything was replaced.
    pub fn redact(&self, argv: &mut [String]) -> bool {
        let mut changed = false;
        let mut next_is_secret = false;
        for arg in argv.iter_mut() {
            if next_is_secret {
                next_is_secret = false;
                if arg.as_str() != REDACTED {
                    *arg = REDACTED.to_string();
                    changed = true;
                }
                continue;
            }
            if self.secret_flag.as_ref().is_some_and(|f| f.is_match(arg)) {
                next_is_secret = true;
                continue;
            }
            for p in &self.patterns {
                if let Some(new) = redact_one(p, arg) {
                    *arg = new;
                    changed = true;
                }
            }
        }
        changed
    }
}

/// `text` with every match of `p` (or its `secret` group) replaced; None when nothing matched.
fn redact_one(p: &Regex, text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut any = false;
    for caps in p.captures_iter(text) {
        let Some(m) = caps.name("secret").or_else(|| caps.get(0)) else { continue };
        if m.as_str() == REDACTED || m.is_empty() {
            continue;
        }
        out.push_str(&text[last..m.start()]);
        out.push_str(REDACTED);
        last = m.end();
        any = true;
    }
    if !any {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(args: &[&str]) -> (Vec<String>, bool) {
        let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let changed = Redactor::default().redact(&mut argv);
        (argv, changed)
    }

    #[test]
    fn globs_match_whole_names() {
        let g = Glob::new("prod-*").unwrap();
        assert!(g.matches("prod-db1") && g.matches("prod-"));
        assert!(!g.matches("xprod-db1") && !g.matches("prod"));
        let g = Glob::new("db?.example.com").unwrap();
        assert!(g.matches("db1.example.com") && !g.matches("db1xexample.com") && !g.matches("db12.example.com"));
        assert!(Glob::new("").is_err());
        assert!(Glob::any().matches(""));
    }

    #[test]
    fn default_patterns_hide_the_usual_secrets() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["mysql", "-uroot", "-phunter2", "db"], &["mysql", "-uroot", "-p[REDACTED]", "db"]),
            (&["tool", "--password=hunter2"], &["tool", "--password=[REDACTED]"]),
            (&["tool", "--db-password", "hunter2", "x"], &["tool", "--db-password", "[REDACTED]", "x"]),
            (&["tool", "--api-key=abc123"], &["tool", "--api-key=[REDACTED]"]),
            (
                &["curl", "-H", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"],
                &["curl", "-H", "Authorization: Bearer [REDACTED]"],
            ),
            (&["aws", "AKIAIOSFODNN7EXAMPLE"], &["aws", "[REDACTED]"]),
            (
                &["git", "clone", "https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/x"],
                &["git", "clone", "https://[REDACTED]@github.com/x"],
            ),
            (
                &["git", "clone", "https://bob:s3cret@example.com/r"],
                &["git", "clone", "https://bob:[REDACTED]@example.com/r"],
            ),
            (&["sh", "-c", "export T=ghp_abcdefghijklmnopqrstuvwxyz0123"], &["sh", "-c", "export T=[REDACTED]"]),
        ];
        for (input, want) in cases {
            let (got, changed) = redacted(input);
            assert!(changed, "{input:?}");
            assert_eq!(got, *want, "{input:?}");
        }
    }

    #[test]
    fn ordinary_arguments_are_kept() {
        for input in [
            &["ls", "-la", "/tmp"][..],
            &["mkdir", "-p", "/x/y"],
            &["kubectl", "delete", "pod", "web-1"],
            &["find", ".", "-perm", "600", "-print"],
            &["tar", "-pxf", "a.tar"],
        ] {
            let (got, changed) = redacted(input);
            assert!(!changed, "{input:?} -> {got:?}");
        }
    }

    #[test]
    fn configured_patterns_replace_their_secret_group_or_whole_match() {
        let r = Redactor::new(vec![r"(?P<secret>sk_live_[a-z0-9]+)".into(), r"internal-\d+".into()], None).unwrap();
        let mut argv = vec!["pay".to_string(), "key=sk_live_abc123".into(), "ticket internal-42".into()];
        assert!(r.redact(&mut argv));
        assert_eq!(argv, ["pay", "key=[REDACTED]", "ticket [REDACTED]"]);
        // Redacting again changes nothing.
        assert!(!r.redact(&mut argv));
        assert!(Redactor::new(vec!["(".into()], None).is_err());
    }
}
