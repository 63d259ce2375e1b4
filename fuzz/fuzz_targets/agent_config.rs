//! The daemon's configuration: any text is either a configuration whose selectors, policies
//! and limits are within bounds (and make a kernel selector table), or an error at a place.
#![no_main]

use guard_agent::config::Config;
use guard_agent::limits::{MAX_POLICIES, MAX_TREE_TASKS};
use guard_common::MAX_SELECTORS;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A directory with the policy files a configuration may name (a.toml, b.toml).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("guard-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        std::fs::write(d.join("a.toml"), "default = \"allow\"\n").expect("policy");
        std::fs::write(
            d.join("b.toml"),
            "default = \"deny\"\n[[rule]]\nname = \"r\"\naction = \"ask\"\nfile = { path = \"/etc/\" }\n",
        )
        .expect("policy");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = dir().join("agent.toml");
    match Config::parse(&path, text) {
        Ok(c) => {
            assert!(!c.policies.is_empty() && c.policies.len() <= MAX_POLICIES as usize);
            assert!(c.selectors.len() <= MAX_SELECTORS as usize);
            assert!(c.max_tree_tasks >= 1 && c.max_tree_tasks <= MAX_TREE_TASKS);
            for s in &c.selectors {
                assert!(c.policies.iter().any(|p| p.name == s.policy), "selector policy {:?}", s.policy);
            }
            if let Some(r) = &c.registration_policy {
                assert!(c.policies.iter().any(|p| &p.name == r));
            }
            let (entries, _missing) = c.kernel_selectors(&|_| Some(0));
            assert!(entries.len() <= c.selectors.len());
        }
        Err(e) => {
            assert!(!e.msg.is_empty());
            assert!(!e.at.file.is_empty(), "{e}");
        }
    }
});
