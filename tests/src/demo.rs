//! `guard-e2e demo`: the whole loop, narrated. A scripted "AI agent" does ordinary work and a
//! few dangerous things under guard; a scripted approver (or a person, with --interactive)
//! approves some held operations and denies others; the audit trail is printed at the end.

use crate::harness::{self, Agent};
use anyhow::Result;
use serde_json::Value;
use std::io::{BufRead, Write};

const POLICY: &str = r#"
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
say "done"
"#;

pub fn run(interactive: bool) -> Result<i32> {
    harness::prepare();
    harness::write_files(&[
        "/srv/app/src/main.rs",
        "/srv/secrets/db-password",
        "/srv/app/config/app.toml",
        "/srv/app/data/customers.db",
    ])?;
    std::fs::create_dir_all("/usr/local/bin")?;
    harness::copy_busybox("/usr/local/bin/deploy")?;
    println!(
        "== guard demo: an AI agent works under guard on {}",
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim()
    );
    println!("== policy:\n{POLICY}");
    let a = Agent::start("demo", POLICY, AGENT_SCRIPT)?;
    // The scripted approver: approve the config edit, deny the deploy and the deletion.
    let plan = [("file_open", true), ("bprm_check_security", false), ("path_unlink", false)];
    for (hook, approve) in plan {
        let h = a.wait_hold(hook)?;
        let id = h["id"].as_str().unwrap_or_default().to_string();
        println!(
            "\n== HELD #{id}: {} wants {} on {}",
            h["exe"].as_str().unwrap_or("?"),
            h["hook"].as_str().unwrap_or("?"),
            h["object"].as_str().unwrap_or("?")
        );
        println!("   rule: {}   argv: {}   ancestry: {}", h["rule"].as_str().unwrap_or("?"), h["argv"], h["ancestry"]);
        let yes = if interactive { ask_person()? } else { approve };
        if yes {
            println!("   approver: approve #{id}");
            a.approve(&id)?;
        } else {
            println!("   approver: deny #{id}");
            a.deny(&id)?;
        }
    }
    let out = a.finish()?;
    println!("\n== audit trail ({} records):", out.records.len());
    for r in &out.records {
        println!("{}", summary(r));
    }
    Ok(out.code)
}

fn ask_person() -> Result<bool> {
    print!("   approve? [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().eq_ignore_ascii_case("y"))
}

fn summary(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    format!(
        "  {:<5} {:<9} {:<28} {:<20} {:<30} {}",
        s("decision"),
        s("reason"),
        s("rule"),
        s("hook"),
        s("object"),
        r.get("request_id")
            .and_then(Value::as_str)
            .map(|id| format!("request #{id} by {}", s("approver")))
            .unwrap_or_default()
    )
}
