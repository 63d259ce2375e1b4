//! `guard-e2e demo`, the guest half of `cargo xtask demo`: a scripted "AI agent" does ordinary
//! work and a few dangerous things under guard-agent, which is connected to guard-server on
//! the host. The approver (scripted or a person) answers there with guardctl; this side
//! prints what the agent saw and the host's local audit trail.

use crate::harness;
use anyhow::Result;
use guard_api::{AuditRecord, Decision};

const POLICY: &str = r#"
include = ["guard:baseline"]
default = "allow"
ask_timeout = "120s"

[[rule]]
name = "no-cloud-metadata"
action = "deny"
connect = { cidr = "169.254.169.254/32" }

[[rule]]
name = "secrets-are-off-limits"
action = "deny"
file = { path = "/srv/secrets/", access = "read" }

[[rule]]
name = "config-changes-need-review"
action = "ask"
file = { path = "/srv/app/config/", access = "write" }

[[rule]]
name = "deploys-need-review"
action = "ask"
exec = { path = "/usr/local/bin/deploy" }

[[rule]]
name = "deleting-data-needs-review"
action = "ask"
file = { path = "/srv/app/data/", access = "delete" }

[[rule]]
name = "source-reads-are-audited"
action = "audit"
file = { path = "/srv/app/src/", access = "read" }
"#;

/// The "AI agent": ordinary work, then the dangerous operations.
const AGENT_SCRIPT: &str = r#"
say() { echo "agent> $*"; }
say "reading the code";            guard-e2e do open-read /srv/app/src/main.rs
say "running the tests";           guard-e2e do exec /bin/true
say "peeking at the secrets";      guard-e2e do open-read /srv/secrets/db-password
say "asking the cloud metadata";   guard-e2e do connect 169.254.169.254:80
say "editing the app config";      guard-e2e do open-write /srv/app/config/app.toml
say "deploying";                   guard-e2e do exec /usr/local/bin/deploy --prod
say "cleaning up old data";        guard-e2e do unlink /srv/app/data/customers.db
say "cleaning up more";            guard-e2e do unlink /srv/app/data/orders.db
say "done"
"#;

pub fn run() -> Result<i32> {
    harness::prepare();
    harness::write_files(&[
        "/srv/app/src/main.rs",
        "/srv/secrets/db-password",
        "/srv/app/config/app.toml",
        "/srv/app/data/customers.db",
        "/srv/app/data/orders.db",
    ])?;
    std::fs::create_dir_all("/usr/local/bin")?;
    harness::copy_busybox("/usr/local/bin/deploy")?;
    let server = crate::server_tests::env()?;
    println!(
        "== guard demo: an AI agent works under guard on {}, holds decided by guard-server on the host",
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim()
    );
    println!("== policy:\n{POLICY}");
    let a = server.start("demo", POLICY, AGENT_SCRIPT)?;
    let out = a.finish_within(std::time::Duration::from_secs(1500))?;
    let records = out.records()?;
    println!("\n== this host's audit log ({} records):", records.len());
    for r in &records {
        println!("{}", summary(r));
    }
    Ok(out.code)
}

fn summary(r: &AuditRecord) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    format!(
        "  {:<5} {:<9} {:<28} {:<20} {:<30} {}",
        or_dash(r.decision.map(|d| match d {
            Decision::Allow => "allow".to_owned(),
            Decision::Deny => "deny".to_owned(),
        })),
        or_dash(r.reason.map(|x| x.name().to_owned())),
        or_dash(r.rule.clone()),
        or_dash(r.hook.map(|h| h.name().to_owned())),
        or_dash(r.object.clone()),
        r.request_id
            .as_deref()
            .map(|id| format!("request #{id} by {}", r.approver.as_deref().unwrap_or("-")))
            .unwrap_or_default()
    )
}
