//! The web console end to end (issue 12): a held syscall in this VM is decided by a person in
//! a real browser on the host. `cargo xtask test` starts, beside the host's guard-server, a
//! driver (`guard-server browser-e2e`) that runs Debian's chromium headless: it signs in as
//! alice, registers a passkey on a virtual authenticator, waits on the live queue for the
//! requests this test makes to appear without a reload, approves the first with the passkey
//! and denies the second with a reason. This side checks what the kernel did and what the
//! audit trail says. The argv is hostile (HTML, script, a terminal escape, 60 KB): the driver
//! checks the page shows it as text; this side only needs the decisions to land.
use crate::harness::{self, Skip};
use crate::server_tests::{env, policy};
use crate::Test;
use anyhow::{ensure, Result};
use guard_api::{Decision, RecordKind};
use std::time::Duration;

pub const TESTS: &[Test] = &[("console_browser_approves_with_a_passkey_and_denies_with_a_reason", approve_and_deny)];

/// Long enough for the driver to have signed in and registered its passkey before it sees
/// the request; it acts within seconds once the card is there.
const WAIT: Duration = Duration::from_secs(300);

fn approve_and_deny() -> Result<()> {
    let e = env()?;
    // What the host's driver approves, denies, and the reason it gives (xtask sets them when
    // the driver runs).
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(approve), Some(deny), Some(deny_reason)) =
        (var("GUARD_E2E_CONSOLE_APPROVE"), var("GUARD_E2E_CONSOLE_DENY"), var("GUARD_E2E_CONSOLE_REASON"))
    else {
        return Err(Skip("no console browser driver on the host (xtask said why above)".into()).into());
    };
    let p = [approve, deny];
    harness::write_files(&[p[0].as_str(), p[1].as_str()])?;
    // Extra arguments are ignored by `guard-e2e do`, and shown on the card.
    let hostile = r#"'<script>alert("argv")</script>' '"><img src=x onerror=alert(2)>' "$(printf '\033]52;c;ZXZpbA==\007')" "$(head -c 60000 /dev/zero | tr '\0' A)""#;
    let script = format!("guard-e2e do open-read {} {hostile}; guard-e2e do open-read {} {hostile}", p[0], p[1]);
    let a = e.start("console", &policy("console", "600s"), &script)?;
    let got = a.result_within(WAIT)?;
    ensure!(got.starts_with("RESULT ok"), "the read approved in the browser: {got}");
    let got = a.result_within(WAIT)?;
    ensure!(got.starts_with("RESULT errno=1 "), "the read denied in the browser: {got}");
    // The tree's exit code is the denied read's (1): what matters is each RESULT above.
    a.finish()?;

    let records = e.audit_records()?;
    let review = |object: &str| {
        records.iter().find(|r| r.kind == RecordKind::Review && r.object.as_deref() == Some(object)).cloned()
    };
    let approved = review(&p[0]).ok_or_else(|| anyhow::anyhow!("no review record for {}", p[0]))?;
    ensure!(approved.approver.as_deref() == Some("alice"), "approved by {:?}", approved.approver);
    ensure!(approved.decision == Some(Decision::Allow), "{approved:?}");
    ensure!(
        approved.verified_by.as_deref() == Some("password+passkey"),
        "the approval must say the passkey verified it: {:?}",
        approved.verified_by
    );
    let denied = review(&p[1]).ok_or_else(|| anyhow::anyhow!("no review record for {}", p[1]))?;
    ensure!(denied.decision == Some(Decision::Deny), "{denied:?}");
    ensure!(denied.comment.as_deref() == Some(deny_reason.as_str()), "deny reason: {:?}", denied.comment);
    Ok(())
}
