//! Issue 10, item 6 in the VM: separation of duties keys on the tree's owner, the audit login
//! uid of its root, which neither running as root nor the tree itself changes. The server's
//! other trust rules are tested on the host (guard-server/tests/trust.rs); this is the part
//! only a real agent on a real kernel can show.
use crate::{
    server_tests::{env, field, files, policy, reads},
    Test,
};
use anyhow::{ensure, Result};

pub const TESTS: &[Test] = &[("trust_owner_is_the_login_uid_not_root_nor_what_the_tree_sets", owner_is_the_login_uid)];

/// alice (uid 1000 on this host) logs in, becomes root and runs an agent under guard: its
/// tree acts as root. The request names alice as the owner, and alice cannot approve it, also
/// after the tree, as root, rewrote its own login uid.
fn owner_is_the_login_uid() -> Result<()> {
    let e = env()?;
    let p = files(&["owned-1", "owned-2"])?;
    // The second read comes after the tree set its login uid to 2000 (allowed for root).
    let script = format!("{}; echo 2000 > /proc/self/loginuid; {}", reads(&p[..1]), reads(&p[1..]));
    let a = e.start_with_loginuid("trust-owner", &policy("secrets", "60s"), &script, 1000)?;
    for (i, path) in p.iter().enumerate() {
        let r = e.wait_request(path)?;
        let id = field(&r, "id");
        let shown = e.show(&id)?;
        ensure!(
            (field(&shown, "owner_uid").as_str(), field(&shown, "owner_source").as_str()) == ("1000", "loginuid"),
            "read {i}: the owner is not alice's login uid: {shown}"
        );
        ensure!(field(&shown, "uid") == "0", "read {i}: the tree should act as root: {shown}");
        let own = e.ctl("alice", &["approve", &id]);
        ensure!(own.is_err(), "read {i}: alice approved her own tree (acting as root)");
        let msg = format!("{own:?}");
        ensure!(msg.contains("owned by") && msg.contains("uid 1000"), "read {i}: refusal not explained: {msg}");
        ensure!(field(&e.show(&id)?, "state").contains("pending"), "read {i}: the refused approval decided");
        e.ctl("bob", &["approve", &id, "--comment", "bob reviewed it"])?;
        let got = a.result()?;
        ensure!(got.starts_with("RESULT ok"), "read {i} approved by bob: {got}");
    }
    a.finish()?;
    Ok(())
}
