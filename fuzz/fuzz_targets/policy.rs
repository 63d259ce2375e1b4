//! The policy parser: any text either parses into a policy that compiles within the kernel's
//! limits, or is refused with an error at a place in the file. Never a panic.
#![no_main]

use guard_agent::policy::Policy;
use guard_common::{MAX_ARGV_RULES, MAX_ARGV_TOKENS, MAX_NET_RULES, PATH_LEN};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Policy::parse("fuzz.toml", text) {
        Ok(p) => {
            assert!(!p.ask_timeout.is_zero() && p.ask_timeout <= Duration::from_secs(24 * 3600));
            assert!(p.rules.iter().all(|r| !r.name.trim().is_empty()));
            let c = p.compile(3);
            assert!(c.net.len() <= MAX_NET_RULES as usize, "{} net entries", c.net.len());
            assert!(c.argv.len() <= MAX_ARGV_RULES as usize, "{} argv rules", c.argv.len());
            let rules = p.rules.len() as u32;
            for a in &c.argv {
                assert!(a.ntok as usize >= 1 && a.ntok as usize <= MAX_ARGV_TOKENS);
                assert!(a.rule >= 1 && a.rule <= rules);
            }
            for (key, bits, r) in &c.paths {
                assert_eq!(key.policy, 3);
                // The LPM prefix covers policy, class and the path bytes: never past the key.
                assert!(*bits as usize <= (PATH_LEN + 2) * 8, "prefix of {bits} bits");
                assert!(r.rule >= 1 && r.rule <= rules, "rule {} of {rules}", r.rule);
            }
            for n in &c.net {
                assert!(n.rule >= 1 && n.rule <= rules);
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml"), "{shown}");
            assert!(!e.msg.is_empty());
            assert!(e.at.line >= 1, "a parse error has a line: {shown}");
        }
    }
});
