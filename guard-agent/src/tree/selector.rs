//! Tree selectors: which running or newly executed program starts a watched tree, and under
//! which policy. The kernel evaluates them at exec; [`matches`] is their userspace twin, for
//! trees that already run and for explaining overlaps.

use super::proc::Proc;

/// What a selector matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The resolved path of the program or script executed.
    ExePath(String),
    /// The program's file name.
    ExeName(String),
    /// A cgroup v2 path relative to the cgroup root ("/agents.slice"), and its descendants.
    Cgroup(String),
    User(u32),
}

impl Match {
    /// Lower wins: registration (not a selector) > exe > cgroup > user.
    pub(crate) fn kind_rank(&self) -> u32 {
        match self {
            Match::ExePath(_) | Match::ExeName(_) => 0,
            Match::Cgroup(_) => 1,
            Match::User(_) => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SelectorConf {
    pub name: String,
    pub policy: String,
    pub matcher: Match,
    pub argv: Vec<String>,
    /// Position in the file (1-based), for messages.
    pub index: usize,
}

impl SelectorConf {
    pub fn describe(&self) -> String {
        let what = match &self.matcher {
            Match::ExePath(p) => format!("exe {p}"),
            Match::ExeName(n) => format!("exe name {n}"),
            Match::Cgroup(c) => format!("cgroup {c}"),
            Match::User(u) => format!("user {u}"),
        };
        let argv = if self.argv.is_empty() { String::new() } else { format!(" argv {:?}", self.argv) };
        format!("selector #{} {:?} ({what}{argv})", self.index, self.name)
    }
}

/// Whether `p` matches `s` (userspace twin of the kernel's checks).
pub fn matches(s: &SelectorConf, p: &Proc) -> bool {
    let args = p.argv.get(1..).unwrap_or(&[]);
    let argv_ok = s.argv.iter().all(|t| args.iter().any(|a| a == t));
    match &s.matcher {
        Match::ExePath(path) => {
            // A script: the kernel matched its path; /proc shows the interpreter.
            let script = p.argv.get(1).and_then(|a| std::fs::canonicalize(a).ok()).map(|a| a.display().to_string());
            let script_args = p.argv.get(2..).unwrap_or(&[]);
            (p.exe.as_deref() == Some(path.as_str()) && argv_ok)
                || (script.as_deref() == Some(path.as_str())
                    && s.argv.iter().all(|t| script_args.iter().any(|a| a == t)))
        }
        Match::ExeName(name) => {
            let base = |x: &str| x.rsplit('/').next().unwrap_or(x).to_string();
            p.exe.as_deref().map(base).as_deref() == Some(name.as_str()) && argv_ok
        }
        Match::Cgroup(c) => p.cgroup.as_deref().is_some_and(|pc| pc == c || pc.starts_with(&format!("{c}/"))),
        Match::User(u) => p.uid == *u,
    }
}

/// The selectors `p` matches besides the one of rank `except` (the winner), described: what
/// logs and `status` show as "also matched".
pub fn also_matched(selectors: &[SelectorConf], p: Option<&Proc>, except: Option<usize>) -> Vec<String> {
    p.map(|p| matching(selectors, p))
        .unwrap_or_default()
        .into_iter()
        .filter(|(r, _)| Some(*r) != except)
        .map(|(_, s)| s.describe())
        .collect()
}

/// Every selector `p` matches, winner first (selectors are in winning order).
pub fn matching<'a>(selectors: &'a [SelectorConf], p: &Proc) -> Vec<(usize, &'a SelectorConf)> {
    selectors.iter().enumerate().filter(|(_, s)| matches(s, p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(m: Match, argv: &[&str]) -> SelectorConf {
        SelectorConf {
            name: "s".into(),
            policy: "p".into(),
            matcher: m,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            index: 1,
        }
    }

    #[test]
    fn proc_matching_mirrors_the_kernel() {
        let p = Proc {
            pid: 10,
            ppid: 1,
            uid: 1001,
            exe: Some("/opt/agent/bin/claude".into()),
            argv: vec!["claude".into(), "--agent".into(), "x".into()],
            cgroup: Some("/agents.slice/a.service".into()),
        };
        assert!(matches(&sel(Match::ExeName("claude".into()), &[]), &p));
        assert!(matches(&sel(Match::ExeName("claude".into()), &["--agent"]), &p));
        assert!(!matches(&sel(Match::ExeName("claude".into()), &["--other"]), &p));
        assert!(matches(&sel(Match::ExePath("/opt/agent/bin/claude".into()), &[]), &p));
        assert!(!matches(&sel(Match::ExePath("/opt/agent/bin".into()), &[]), &p));
        assert!(matches(&sel(Match::Cgroup("/agents.slice".into()), &[]), &p));
        assert!(!matches(&sel(Match::Cgroup("/agents".into()), &[]), &p), "a prefix of a name is not a parent");
        assert!(matches(&sel(Match::User(1001), &[]), &p));
        assert!(!matches(&sel(Match::User(0), &[]), &p));
        let list = [sel(Match::ExeName("claude".into()), &[]), sel(Match::User(1001), &[])];
        assert_eq!(matching(&list, &p).iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![0, 1]);
    }
}
