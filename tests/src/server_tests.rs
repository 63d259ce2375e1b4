//! End-to-end tests of holds decided by the central guard-server (issue 3). The servers run
//! on the host (`cargo xtask test` starts one on SQLite and two replicas on PostgreSQL); the
//! VM reaches them through QEMU's forwarded ports, with the PKI copied in. Approvals come
//! from `guardctl` inside the VM, with approver certificates.

use crate::{
    harness::{self, Agent, Skip},
    Test,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use guard_api::{AuditRecord, Decision, Reason, RecordKind};
use serde_json::Value;
use std::{
    process::Command,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[
    ("server_holds_approved_and_denied_with_guardctl", approve_and_deny),
    ("server_request_shows_host_ancestry_and_rule", request_contents),
    ("server_expiry_and_agent_timeout_deny", expiry),
    ("server_unreachable_denies_with_reason_unreachable", unreachable),
    ("server_refuses_self_approval_and_agent_reviewers", separation_of_duties),
    ("server_two_person_rule_needs_two_approvers", two_person),
    ("server_grant_for_minutes_covers_the_same_tree_only", grant),
    ("server_replicas_on_postgres_share_decisions", replicas),
];

const WAIT: Duration = Duration::from_secs(120);

pub struct Env {
    server: String,
    pki: String,
    host: String,
}

pub fn env() -> Result<Env> {
    let get = |k: &str| std::env::var(k).map_err(|_| anyhow!("{k} is not set: run under `cargo xtask test`"));
    Ok(Env { server: get("GUARD_E2E_SERVER")?, pki: get("GUARD_E2E_PKI")?, host: get("GUARD_E2E_HOST")? })
}

/// The `guard-agent` flags that point it at `server` with `host`'s certificate from `pki`.
pub fn agent_server_flags(server: &str, pki: &str, host: &str) -> Vec<String> {
    vec![
        "--server".into(),
        server.into(),
        "--server-ca".into(),
        format!("{pki}/ca.crt"),
        "--agent-cert".into(),
        format!("{pki}/agent-{host}.crt"),
        "--agent-key".into(),
        format!("{pki}/agent-{host}.key"),
    ]
}

impl Env {
    fn agent_flags(&self, server: &str) -> Vec<String> {
        agent_server_flags(server, &self.pki, &self.host)
    }

    /// As `start`, from a session with audit login uid `loginuid`.
    pub fn start_with_loginuid(&self, name: &str, policy: &str, script: &str, loginuid: u32) -> Result<Agent> {
        let flags = self.agent_flags(&self.server.clone());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Agent::start_with_loginuid(name, policy, script, &flags, loginuid)
    }

    pub fn start(&self, name: &str, policy: &str, script: &str) -> Result<Agent> {
        self.start_on(&self.server.clone(), name, policy, script)
    }

    fn start_on(&self, server: &str, name: &str, policy: &str, script: &str) -> Result<Agent> {
        let flags = self.agent_flags(server);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Agent::start_with(name, policy, script, &flags)
    }

    /// Runs guardctl as approver `who` against `server`; Err carries its stderr.
    fn ctl_on(&self, server: &str, who: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("guardctl")
            .args(["--server", server, "--pki", &self.pki, "--as", who])
            .args(args)
            .output()
            .context("running guardctl")?;
        if !out.status.success() {
            bail!(
                "guardctl {args:?} as {who} exited {:?}: {}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into())
    }

    pub(crate) fn ctl(&self, who: &str, args: &[&str]) -> Result<String> {
        self.ctl_on(&self.server.clone(), who, args)
    }

    /// Pending requests as JSON objects (guardctl prints an array or one object per line).
    fn pending_on(&self, server: &str) -> Result<Vec<Value>> {
        let text = self.ctl_on(server, "alice", &["pending", "--json"])?;
        json_list(&text)
    }

    /// Waits for a pending request whose object is `object`.
    fn wait_request_on(&self, server: &str, object: &str) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.pending_on(server)?.into_iter().find(|r| field(r, "object") == object) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("no pending request for {object} appeared on {server}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn wait_request(&self, object: &str) -> Result<Value> {
        self.wait_request_on(&self.server.clone(), object)
    }

    /// The server's audit trail (`guardctl audit --json`): each row's record.
    pub(crate) fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        let rows = json_list(&self.ctl("alice", &["audit", "--json"])?)?;
        rows.into_iter()
            .map(|row| {
                let event = row.get("event").cloned().ok_or_else(|| anyhow!("audit row without its record: {row}"))?;
                serde_json::from_value(event)
                    .with_context(|| format!("audit row's record is not an AuditRecord: {row}"))
            })
            .collect()
    }

    pub(crate) fn show(&self, id: &str) -> Result<Value> {
        let text = self.ctl("alice", &["show", id, "--json"])?;
        serde_json::from_str(text.trim()).with_context(|| format!("guardctl show --json: {text}"))
    }
}

fn json_list(text: &str) -> Result<Vec<Value>> {
    let t = text.trim();
    if t.starts_with('[') {
        let v: Value = serde_json::from_str(t).with_context(|| format!("guardctl output: {t}"))?;
        return Ok(v.as_array().cloned().unwrap_or_default());
    }
    t.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// A request's field, at the top level or inside its operation.
pub(crate) fn field(r: &Value, k: &str) -> String {
    let v = r.get(k).or_else(|| r.get("operation").and_then(|o| o.get(k)));
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

pub(crate) fn policy(rule: &str, timeout: &str) -> String {
    format!(
        r#"default = "allow"
ask_timeout = "{timeout}"
[[rule]]
name = "{rule}"
action = "ask"
file = {{ path = "/tmp/t/srv/", access = "read" }}
"#
    )
}

pub(crate) fn files(names: &[&str]) -> Result<Vec<String>> {
    let paths: Vec<String> = names.iter().map(|n| format!("/tmp/t/srv/{n}")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    harness::write_files(&refs)?;
    Ok(paths)
}

pub(crate) fn reads(paths: &[String]) -> String {
    paths.iter().map(|p| format!("guard-e2e do open-read {p}")).collect::<Vec<_>>().join("; ")
}

fn approve_and_deny() -> Result<()> {
    let e = env()?;
    let p = files(&["ok-1", "no-1"])?;
    let a = e.start("srv-approve", &policy("secrets", "60s"), &reads(&p))?;
    let r = e.wait_request(&p[0])?;
    e.ctl("alice", &["approve", &field(&r, "id"), "--comment", "looks fine"])?;
    let got = a.result()?;
    ensure!(got.starts_with("RESULT ok"), "approved read: {got}");
    let r2 = e.wait_request(&p[1])?;
    e.ctl("bob", &["deny", &field(&r2, "id"), "--reason", "not today"])?;
    let got = a.result()?;
    ensure!(got.starts_with("RESULT errno=1 "), "denied read: {got}");
    // A second review of a decided request is refused and changes nothing.
    let again = e.ctl("alice", &["approve", &field(&r2, "id")]);
    ensure!(again.is_err(), "approving a denied request was accepted");
    ensure!(field(&e.show(&field(&r2, "id"))?, "state").to_lowercase().contains("denied"), "state changed");
    let out = a.finish()?;
    let records = out.records()?;
    let find = |reason: Reason, obj: &str| {
        records.iter().find(|x| x.reason == Some(reason) && x.object.as_deref() == Some(obj) && x.request_id.is_some())
    };
    let ok = find(Reason::Approved, &p[0]).ok_or_else(|| anyhow!("no approved record: {:#?}", records))?;
    ensure!(ok.approver.as_deref() == Some("alice") && ok.decision == Some(Decision::Allow), "approved record: {ok:?}");
    // The host's record names the server's request, so the two trails join.
    let id = field(&r, "id");
    ensure!(ok.request_id.as_deref() == Some(id.as_str()), "record's request_id is not the server's: {ok:?}");
    let no = find(Reason::Denied, &p[1]).ok_or_else(|| anyhow!("no denied record: {:#?}", records))?;
    ensure!(no.approver.as_deref() == Some("bob") && no.decision == Some(Decision::Deny), "denied record: {no:?}");
    ensure!(
        no.comment.as_deref().is_some_and(|c| c.contains("not today")),
        "the deny reason is not in the record: {no:?}"
    );
    // The agent reports its records to the server's audit trail, and the approved decision
    // reads the same in the agent's JSONL, in what it reported, and in the server's own row.
    let deadline = Instant::now() + WAIT;
    let (reported, decided) = loop {
        let audit = e.audit_records()?;
        let reported = audit.iter().find(|x| {
            x.kind == RecordKind::Enforcement && x.request_id == ok.request_id && x.reason == Some(Reason::Approved)
        });
        let decided = audit.iter().find(|x| x.kind == RecordKind::Decision && x.request_id == ok.request_id);
        let denial_reported = audit.iter().any(|x| {
            x.kind == RecordKind::Enforcement && x.host == e.host && x.object.as_deref() == Some(p[1].as_str())
        });
        if let (Some(rep), Some(dec), true) = (reported, decided, denial_reported) {
            break (rep.clone(), dec.clone());
        }
        ensure!(Instant::now() < deadline, "the server's audit trail never showed both decisions: {audit:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    for (what, row) in [("the record the agent reported", &reported), ("the server's decision row", &decided)] {
        let differ = harness::differing_decision_fields(ok, row);
        ensure!(differ.is_empty(), "{what} differs from the JSONL record in {differ:?}:\n{ok:#?}\n{row:#?}");
    }
    Ok(())
}

fn request_contents() -> Result<()> {
    let e = env()?;
    let p = files(&["contents"])?;
    let a = e.start("srv-contents", &policy("secrets", "60s"), &format!("cd /tmp && sh -c '{}; true'", reads(&p)))?;
    let r = e.wait_request(&p[0])?;
    let id = field(&r, "id");
    let full = e.show(&id)?;
    let text = full.to_string();
    // The host comes from the agent's certificate.
    ensure!(field(&full, "host") == e.host, "host: {full}");
    ensure!(field(&full, "rule") == "secrets", "rule: {full}");
    ensure!(field(&full, "user") == "root", "user: {full}");
    ensure!(field(&full, "cwd") == "/tmp", "cwd: {full}");
    // Ancestry: the reader, then the shell that forked it (the tree's root: the outer shell
    // exec'd the inner one).
    let ancestry = full
        .get("ancestry")
        .or_else(|| full.get("operation").and_then(|o| o.get("ancestry")))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ensure!(ancestry.len() >= 2, "ancestry too short: {full}");
    ensure!(ancestry[0].to_string().contains("guard-e2e"), "acting process: {}", ancestry[0]);
    ensure!(ancestry[0].to_string().contains("open-read"), "argv of the acting process: {}", ancestry[0]);
    ensure!(text.contains("sh"), "parent shell missing: {full}");
    e.ctl("alice", &["approve", &id])?;
    ensure!(a.result()?.starts_with("RESULT ok"), "approved read failed");
    a.finish()?;
    Ok(())
}

fn expiry() -> Result<()> {
    let e = env()?;
    let p = files(&["expire"])?;
    let started = Instant::now();
    let a = e.start("srv-expire", &policy("secrets", "3s"), &reads(&p))?;
    let r = e.wait_request(&p[0])?;
    let got = a.result()?;
    ensure!(got.starts_with("RESULT errno=1 "), "unanswered read: {got}");
    ensure!(started.elapsed() < Duration::from_secs(60), "the hold outlived its timeout by far");
    let out = a.finish()?;
    let records = out.records()?;
    ensure!(
        records.iter().any(|x| x.reason == Some(Reason::Expired) && x.object.as_deref() == Some(p[0].as_str())),
        "no expired record: {:#?}",
        records
    );
    // The server ends the request too; a review after that is refused.
    let id = field(&r, "id");
    let deadline = Instant::now() + WAIT;
    while !field(&e.show(&id)?, "state").to_lowercase().contains("expired") {
        ensure!(Instant::now() < deadline, "request {id} never expired on the server: {}", e.show(&id)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let late = e.ctl("alice", &["approve", &id]);
    ensure!(late.is_err(), "approving an expired request was accepted");
    Ok(())
}

fn unreachable() -> Result<()> {
    let e = env()?;
    let p = files(&["unreachable"])?;
    // Nothing listens on port 1 in the VM: every connection attempt is refused.
    let a = e.start_on("https://127.0.0.1:1", "srv-unreachable", &policy("secrets", "3s"), &reads(&p))?;
    let got = a.result()?;
    ensure!(got.starts_with("RESULT errno=1 "), "read with the server down: {got}");
    let out = a.finish()?;
    let records = out.records()?;
    ensure!(
        records.iter().any(|x| x.reason == Some(Reason::Unreachable) && x.object.as_deref() == Some(p[0].as_str())),
        "no unreachable record: {:#?}",
        records
    );
    Ok(())
}

fn separation_of_duties() -> Result<()> {
    let e = env()?;
    let p = files(&["sod"])?;
    let a = e.start("srv-sod", &policy("secrets", "60s"), &reads(&p))?;
    let id = field(&e.wait_request(&p[0])?, "id");
    // rooty owns the root account this tree runs as: rooty's approval is refused.
    let own = e.ctl("rooty", &["approve", &id]);
    let msg = format!("{own:?}");
    ensure!(own.is_err(), "an approver approved a tree running as their own user");
    ensure!(msg.to_lowercase().contains("permission") || msg.contains("own"), "refusal not explained: {msg}");
    // An agent's certificate cannot review at all.
    let agent_review = Command::new("guardctl")
        .args(["--server", &e.server, "--ca", &format!("{}/ca.crt", e.pki)])
        .args(["--cert", &format!("{}/agent-{}.crt", e.pki, e.host)])
        .args(["--key", &format!("{}/agent-{}.key", e.pki, e.host)])
        .args(["approve", &id])
        .output()?;
    ensure!(!agent_review.status.success(), "an agent certificate approved a request");
    ensure!(field(&e.show(&id)?, "state").to_lowercase().contains("pending"), "a refused review changed the request");
    e.ctl("alice", &["deny", &id, "--reason", "end of test"])?;
    ensure!(a.result()?.starts_with("RESULT errno=1 "), "denied read");
    a.finish()?;
    Ok(())
}

fn two_person() -> Result<()> {
    let e = env()?;
    let p = files(&["two-person"])?;
    let a = e.start("srv-two", &policy("two-person", "60s"), &reads(&p))?;
    let id = field(&e.wait_request(&p[0])?, "id");
    e.ctl("alice", &["approve", &id])?;
    ensure!(e.ctl("alice", &["approve", &id]).is_err(), "alice counted twice");
    // One approval of two: still held.
    ensure!(a.result_within(Duration::from_secs(3)).is_err(), "released after one of two approvals");
    ensure!(field(&e.show(&id)?, "state").to_lowercase().contains("pending"), "not pending after one approval");
    e.ctl("bob", &["approve", &id])?;
    ensure!(a.result()?.starts_with("RESULT ok"), "not released after two approvals");
    a.finish()?;
    Ok(())
}

fn grant() -> Result<()> {
    let e = env()?;
    let p = files(&["granted"])?;
    // The same read three times in one tree: one request, then the grant covers the rest.
    let script = format!("{r}; {r}; {r}", r = reads(&p));
    let a = e.start("srv-grant", &policy("secrets", "60s"), &script)?;
    let id = field(&e.wait_request(&p[0])?, "id");
    e.ctl("alice", &["approve", &id, "--for", "10m"])?;
    for i in 0..3 {
        let got = a.result()?;
        ensure!(got.starts_with("RESULT ok"), "read {i} under the grant: {got}");
    }
    a.finish()?;
    // A new tree is not covered: it asks again.
    let b = e.start("srv-grant-2", &policy("secrets", "60s"), &reads(&p))?;
    let again = e.wait_request(&p[0])?;
    ensure!(field(&again, "id") != id, "the new tree reused the old request");
    e.ctl("alice", &["deny", &field(&again, "id"), "--reason", "new tree"])?;
    ensure!(b.result()?.starts_with("RESULT errno=1 "), "the grant leaked to another tree");
    b.finish()?;
    Ok(())
}

fn replicas() -> Result<()> {
    let e = env()?;
    // xtask sets it empty when PostgreSQL could not be started on the host.
    let Some(list) = std::env::var("GUARD_E2E_REPLICAS").ok().filter(|l| !l.is_empty()) else {
        return Err(Skip("no PostgreSQL replicas on the host (xtask said why above)".into()).into());
    };
    let urls: Vec<&str> = list.split(',').collect();
    ensure!(urls.len() == 2, "GUARD_E2E_REPLICAS: {list}");
    let p = files(&["replica-ok", "replica-no"])?;
    // The agent talks to replica 1; the approver to replica 2.
    let a = e.start_on(urls[0], "srv-replicas", &policy("secrets", "60s"), &reads(&p))?;
    let r = e.wait_request_on(urls[1], &p[0])?;
    e.ctl_on(urls[1], "alice", &["approve", &field(&r, "id")])?;
    ensure!(a.result()?.starts_with("RESULT ok"), "approval on replica 2 did not reach replica 1's agent");
    let r = e.wait_request_on(urls[1], &p[1])?;
    e.ctl_on(urls[1], "bob", &["deny", &field(&r, "id"), "--reason", "replica says no"])?;
    ensure!(a.result()?.starts_with("RESULT errno=1 "), "deny on replica 2 did not reach the agent");
    a.finish()?;
    Ok(())
}
