//! How requests, events and audit records look: JSON for machines (one object, field names as
//! in guard.v1 through the messages' serde derives, states by their lower-case label; audit
//! events as `guard_api::AuditRecord`), text for people.

use guard_api::screen::escape;
use guard_api::{AuditRecord, Timestamp};
use guard_proto::v1::{AuditEvent, Operation, Process, Request, RequestEvent, State};
use serde_json::{json, Value};
use std::time::Duration;

/// Now, in the Unix milliseconds of guard.v1's times.
pub fn now_ms() -> i64 {
    Timestamp::now().unix_ms()
}

pub fn state_label(r: &Request) -> &'static str {
    State::try_from(r.state).unwrap_or(State::Unspecified).label()
}

/// `45s`, `3m12s`, `2h05m`, `3d04h`: short enough for a table column.
pub fn short_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => {
            let (m, r) = (s / 60, s % 60);
            if r == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{r:02}s")
            }
        }
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A Unix-milliseconds time in the records' one format (`guard_api::Timestamp`), or `-` when
/// unset.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    Timestamp::from_unix_ms(ms).to_string()
}

/// Approvals received out of approvals needed (at least one is always needed).
pub fn approvals(r: &Request) -> (usize, u32) {
    (r.reviews.iter().filter(|v| v.approve).count(), r.approvals_required.max(1))
}

/// `expires in` for a pending request, `-` otherwise.
pub fn expires_in(r: &Request, now: i64) -> String {
    if r.state != State::Pending as i32 || r.expires_ms <= 0 {
        return "-".into();
    }
    if r.expires_ms <= now {
        "now".into()
    } else {
        short_duration(r.expires_ms - now)
    }
}

pub fn stated_reason(op: &Operation) -> &str {
    op.stated_reason.as_ref().map(|s| s.reason.as_str()).unwrap_or("")
}

/// Shell-like quoting of one argument, for argv shown to people. Escaped first
/// (`guard_api::screen::escape`): no control character, escape sequence or bidi mark of the
/// tree's reaches the terminal.
pub fn quote_arg(a: &str) -> String {
    let a = escape(a);
    let a = a.as_ref();
    let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

pub fn argv_text(p: &Process) -> String {
    let mut s = p.argv.iter().map(|a| quote_arg(a)).collect::<Vec<_>>().join(" ");
    if p.argv_truncated {
        s.push_str(" …(truncated)");
    }
    if p.argv_redacted {
        s.push_str("  [redacted by the server]");
    }
    if p.argv_from_proc {
        s.push_str("  [from /proc: the process can rewrite it; unverified]");
    }
    s
}

/// The server's flags of a request, by their first word ("policy-changed argv-redacted").
pub fn flag_words(r: &Request) -> String {
    r.flags.iter().map(|f| f.split(':').next().unwrap_or_default().trim()).collect::<Vec<_>>().join(" ")
}

/// The request as guard.v1 has it (serde derive), with its state by label and the approvals
/// counted.
pub fn request_json(r: &Request) -> Value {
    let (got, need) = approvals(r);
    // A message of strings and numbers always serialises.
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("state".into(), state_label(r).into());
        map.insert("approvals".into(), got.into());
        map.insert("approvals_needed".into(), need.into());
    }
    v
}

pub fn event_json(e: &RequestEvent) -> Value {
    json!({"kind": e.kind, "request": e.request.as_ref().map(request_json)})
}

/// The audit event with its record parsed (kept as a string if it is not an `AuditRecord`).
pub fn audit_json(e: &AuditEvent) -> Value {
    let inner = AuditRecord::from_json(&e.json)
        .ok()
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or_else(|| Value::String(e.json.clone()));
    json!({"seq": e.seq, "time_ms": e.time_ms, "host": e.host, "kind": e.kind, "request_id": e.request_id,
           "event": inner})
}

/// A vocabulary value (decision, action) by the word records use for it.
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The interesting fields of an audit record, `key=value`: the decision and who took it first,
/// then what it was about; fields that are empty or null are left out.
pub fn audit_summary(r: &AuditRecord) -> String {
    let mut parts: Vec<(&str, Option<String>)> = vec![
        ("decision", r.decision.as_ref().map(word)),
        ("state", r.state.clone()),
        ("reason", r.reason.map(|v| v.name().to_string())),
        ("approver", r.approver.clone()),
        ("rule", r.rule.clone()),
        ("hook", r.hook.map(|h| h.name().to_string())),
        ("object", r.object.clone()),
        ("comment", r.comment.clone()),
        ("action", r.action.as_ref().map(word)),
        ("policy", r.policy.clone()),
        ("access", r.access.clone()),
        ("user", r.user.clone()),
        ("uid", r.uid.map(|v| v.to_string())),
        ("pid", r.pid.map(|v| v.to_string())),
        ("ppid", r.ppid.map(|v| v.to_string())),
        ("exe", r.exe.clone()),
        ("tree_id", r.tree_id.clone()),
        ("grant_seconds", r.grant_seconds.filter(|s| *s > 0).map(|v| v.to_string())),
        ("held_ms", r.held_ms.map(|v| v.to_string())),
        ("lost", r.lost.map(|v| v.to_string())),
        ("stated", r.stated_reason.as_ref().map(|s| s.reason.clone())),
    ];
    if !r.argv.is_empty() {
        parts.push(("argv", Some(r.argv.iter().map(|a| quote_arg(a)).collect::<Vec<_>>().join(" "))));
    }
    parts
        .into_iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty()).map(|v| format!("{k}={}", if k == "argv" { v } else { quote_arg(&v) }))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line about a request event, for `watch`.
pub fn event_line(e: &RequestEvent, now: i64) -> String {
    let Some(r) = e.request.as_ref() else {
        return format!("{} {:<9} (no request)", timestamp(now), e.kind);
    };
    let default_op = Operation::default();
    let op = r.operation.as_ref().unwrap_or(&default_op);
    let (got, need) = approvals(r);
    let mut line = format!(
        "{} {:<9} {} {:<9} host={} user={} {} {} rule={} approvals={got}/{need}",
        timestamp(now),
        e.kind,
        r.id,
        state_label(r),
        escape(&r.host),
        escape(&op.user),
        escape(&op.hook),
        quote_arg(&op.object),
        escape(&op.rule)
    );
    if r.state == State::Pending as i32 {
        line.push_str(&format!(" expires_in={}", expires_in(r, now)));
    }
    if let Some(v) = r.reviews.last().filter(|_| e.kind == "reviewed") {
        line.push_str(&format!(" by={} {}", v.approver, if v.approve { "approve" } else { "deny" }));
    }
    if !r.reason.is_empty() && r.state != State::Pending as i32 {
        line.push_str(&format!(" reason={}", r.reason));
    }
    if !r.decided_by.is_empty() {
        line.push_str(&format!(" decided_by={}", r.decided_by));
    }
    let stated = stated_reason(op);
    if !stated.is_empty() && e.kind != "reviewed" && e.kind != "decided" {
        line.push_str(&format!(" stated={}", quote_arg(stated)));
    }
    if !r.flags.is_empty() {
        line.push_str(&format!(" flags={}", quote_arg(&flag_words(r))));
    }
    line
}

/// Everything about one request, for `show`.
pub fn request_details(r: &Request, now: i64) -> String {
    let default_op = Operation::default();
    let op = r.operation.as_ref().unwrap_or(&default_op);
    let mut out = String::new();
    // Every value escaped: most come from the watched tree.
    let mut field = |k: &str, v: &str| {
        if !v.is_empty() {
            out.push_str(&format!("{:<10} {}\n", format!("{k}:"), escape(v)));
        }
    };
    field("id", &r.id);
    field("state", state_label(r));
    field("host", &r.host);
    let user = if op.user.is_empty() { String::new() } else { format!("{} (uid {})", op.user, op.uid) };
    field("user", &user);
    let owner = if op.owner.is_empty() {
        "unknown".to_string()
    } else {
        format!(
            "{} (uid {}, by {})",
            op.owner,
            op.owner_uid,
            if op.owner_source.is_empty() { "?" } else { &op.owner_source }
        )
    };
    field("owner", &owner);
    field("cwd", &op.cwd);
    field("hook", &op.hook);
    field("object", &op.object);
    field("access", &op.access);
    field("rule", &op.rule);
    field("policy", &op.policy);
    field("policy hash", &op.policy_hash);
    field("tree", &op.tree_id);
    let (got, need) = approvals(r);
    let eligible =
        if r.eligible_approvers.is_empty() { "any approver".to_string() } else { r.eligible_approvers.join(", ") };
    field("approvals", &format!("{got}/{need} ({eligible})"));
    if r.state != State::Pending as i32 {
        field("reason", &r.reason);
        field("decided by", &r.decided_by);
    }
    field("comment", &r.comment);
    for flag in &r.flags {
        field("FLAG", flag);
    }

    if let Some(s) = op.stated_reason.as_ref() {
        out.push_str("stated reason (from the AI agent; never decides):\n");
        if !s.reason.is_empty() {
            out.push_str(&format!("  {}\n", escape(&s.reason)));
        }
        for (k, v) in [("tool", &s.tool), ("call", &s.call_id), ("session", &s.session)] {
            if !v.is_empty() {
                out.push_str(&format!("  {k}: {}\n", escape(v)));
            }
        }
    }

    if !op.ancestry.is_empty() {
        out.push_str("ancestry (root of the watched tree first; * acts):\n");
        for (depth, p) in op.ancestry.iter().rev().enumerate() {
            let indent = "   ".repeat(depth);
            let branch = if depth == 0 { "" } else { "└─ " };
            let acting = if depth + 1 == op.ancestry.len() { " *" } else { "" };
            let cont = if depth == 0 { "" } else { "   " };
            out.push_str(&format!("  {indent}{branch}pid {} uid {} {}{acting}\n", p.pid, p.uid, escape(&p.exe)));
            out.push_str(&format!("  {indent}{cont}  argv: {}\n", argv_text(p)));
        }
    }

    if !r.reviews.is_empty() {
        out.push_str("reviews:\n");
        for v in &r.reviews {
            let verdict = if v.approve { "approve" } else { "deny" };
            let mut line = format!("  {} {verdict} at {}", escape(&v.approver), timestamp(v.time_ms));
            if v.grant_seconds > 0 {
                line.push_str(&format!(" grant {}", short_duration(v.grant_seconds as i64 * 1000)));
            }
            if !v.comment.is_empty() {
                line.push_str(&format!(": {}", escape(&v.comment)));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }

    out.push_str("timing:\n");
    out.push_str(&format!("  created  {} ({} ago)\n", timestamp(r.created_ms), short_duration(now - r.created_ms)));
    if r.state == State::Pending as i32 {
        out.push_str(&format!("  expires  {} (in {})\n", timestamp(r.expires_ms), expires_in(r, now)));
    } else if r.decided_ms > 0 {
        let after = Duration::from_millis((r.decided_ms - r.created_ms).max(0) as u64);
        out.push_str(&format!(
            "  decided  {} ({} after creation)\n",
            timestamp(r.decided_ms),
            humantime::format_duration(after)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(45_000), "45s");
        assert_eq!(short_duration(192_000), "3m12s");
        assert_eq!(short_duration(600_000), "10m");
        assert_eq!(short_duration(2 * 3_600_000 + 5 * 60_000), "2h05m");
        assert_eq!(short_duration(-5), "0s");
    }

    #[test]
    fn ancestry_tree_runs_from_root_to_actor() {
        let proc = |pid, exe: &str, argv: &[&str]| Process {
            pid,
            exe: exe.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let r = Request {
            id: "r1".into(),
            state: State::Pending as i32,
            operation: Some(Operation {
                ancestry: vec![
                    proc(30, "/usr/bin/rm", &["rm", "-rf", "/etc/my file"]),
                    proc(20, "/usr/bin/python3", &["python3", "agent.py"]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = request_details(&r, 0);
        let root = text.find("pid 20 uid 0 /usr/bin/python3\n").expect(&text);
        let actor = text.find("└─ pid 30 uid 0 /usr/bin/rm *\n").expect(&text);
        assert!(root < actor, "{text}");
        assert!(text.contains("argv: rm -rf '/etc/my file'"), "{text}");
    }

    /// The security review's attack (18): escapes in argv that redraw the object line, a
    /// newline in cwd that forges a field, a bidi override in exe, OSC 52 in the stated reason.
    #[test]
    fn nothing_the_tree_sends_drives_the_approvers_terminal() {
        let hostile = Process {
            pid: 30,
            exe: "/tmp/evil\u{202e}txt.sh".into(),
            argv: vec!["tee".into(), "\x1b[6A\r\x1b[2Kobject:    /home/u/README.md\x1b[6B".into()],
            argv_from_proc: true,
            ..Default::default()
        };
        let r = Request {
            id: "r1".into(),
            state: State::Pending as i32,
            flags: vec!["policy-changed: policy \"p\" is sha256:1 now".into()],
            reviews: vec![guard_proto::v1::Review {
                approver: "bob".into(),
                comment: "fine\x1b]52;c;ZXZpbA==\x07".into(),
                ..Default::default()
            }],
            operation: Some(Operation {
                object: "/home/u/.ssh/authorized_keys".into(),
                cwd: "/tmp\nobject:     /home/u/README.md".into(),
                owner: "alice".into(),
                owner_uid: 1000,
                owner_source: "loginuid".into(),
                stated_reason: Some(guard_proto::v1::StatedReason {
                    reason: "tidy up\u{9b}2J\u{2066}".into(),
                    ..Default::default()
                }),
                ancestry: vec![hostile],
                ..Default::default()
            }),
            ..Default::default()
        };
        let shown = request_details(&r, 0);
        for bad in ['\x1b', '\r', '\x07', '\u{202e}', '\u{9b}', '\u{2066}'] {
            assert!(!shown.contains(bad), "{bad:?} reached the screen:\n{shown}");
        }
        // The only object line is the real one; the forged ones are visibly inside other fields.
        let objects: Vec<&str> = shown.lines().filter(|l| l.starts_with("object:")).collect();
        assert_eq!(objects, ["object:    /home/u/.ssh/authorized_keys"], "{shown}");
        assert!(shown.contains("cwd:       /tmp\\nobject:"), "{shown}");
        assert!(shown.contains("[from /proc: the process can rewrite it; unverified]"), "{shown}");
        assert!(shown.contains("owner:     alice (uid 1000, by loginuid)"), "{shown}");
        assert!(shown.contains("FLAG:      policy-changed: "), "{shown}");
        let line = event_line(&RequestEvent { kind: "created".into(), request: Some(r) }, 0);
        assert!(line.contains("flags=policy-changed") && !line.contains('\n'), "{line}");
    }

    #[test]
    fn request_json_has_the_proto_names_the_state_label_and_approvals() {
        let r = Request {
            id: "r1".into(),
            state: State::Approved as i32,
            approvals_required: 2,
            reviews: vec![guard_proto::v1::Review { approver: "alice".into(), approve: true, ..Default::default() }],
            operation: Some(Operation { hook: "file_open".into(), ..Default::default() }),
            ..Default::default()
        };
        let v = request_json(&r);
        assert_eq!(v["state"], "approved");
        assert_eq!((v["approvals"].as_u64(), v["approvals_needed"].as_u64()), (Some(1), Some(2)));
        assert_eq!(v["operation"]["hook"], "file_open");
        assert!(v["operation"]["stated_reason"].is_null());
        assert_eq!(v["reviews"][0]["approver"], "alice");
        for key in
            ["id", "host", "created_ms", "expires_ms", "decided_ms", "eligible_approvers", "reason", "decided_by"]
        {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
    }

    #[test]
    fn audit_summary_reads_the_typed_record() {
        let mut r = AuditRecord::new(guard_api::RecordKind::Decision, "h1");
        r.decision = Some(guard_api::Decision::Deny);
        r.reason = Some(guard_api::Reason::Expired);
        r.hook = Some(guard_api::Hook::FileOpen);
        r.object = Some("/etc/my file".into());
        r.comment = Some(String::new());
        r.argv = vec!["cat".into(), "/etc/my file".into()];
        assert_eq!(
            audit_summary(&r),
            "decision=deny reason=expired hook=file_open object='/etc/my file' argv=cat '/etc/my file'"
        );
        assert_eq!(timestamp(1_796_002_226_007), "2026-11-30T01:30:26.007Z");
        assert_eq!(timestamp(0), "-");
    }
}
