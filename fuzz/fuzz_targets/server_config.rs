//! guard-server's configuration: any text is either a configuration whose approval rules are
//! consistent, or an error at a place in the file.
#![no_main]

use guard_server::config::ServerConfig;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ServerConfig::parse(Path::new("/etc/guard/server.toml"), text) {
        Ok(c) => {
            let p = &c.policy;
            assert!(!p.default_timeout.is_zero() && p.default_timeout <= p.max_timeout);
            for r in &p.requires {
                let distinct = r.approvers.iter().collect::<BTreeSet<_>>().len();
                assert!(r.approvals >= 1 && r.approvals as usize <= distinct);
                assert!(r.approvers.iter().all(|a| !a.is_empty()));
            }
            assert!(p.approvers.keys().all(|a| !a.is_empty()));
            assert!(c.database_url.starts_with("sqlite:") || c.database_url.starts_with("postgres"));
            for t in [&c.tls.ca, &c.tls.cert, &c.tls.key] {
                assert!(t.starts_with("/etc/guard") || t.is_absolute(), "{}", t.display());
            }
            // The timeout of a request never overflows, whatever the agent asks.
            for asked in [0, 1, u64::MAX] {
                assert!(guard_server::lifecycle::timeout_ms(p, asked) >= 0);
            }
        }
        Err(e) => {
            assert!(e.to_string().starts_with("/etc/guard/server.toml"), "{e}");
            assert!(!e.message.is_empty());
        }
    }
});
