//! guard's audit record as an Elastic Common Schema (ECS) document.
//!
//! ECS fields where ECS has them (`@timestamp`, `event.*`, `process.*`, `user.*`, `host.name`,
//! `file.path`, `destination.*`, `rule.name`, `rule.ruleset`); everything else under `guard.*`
//! (ECS reserves no such name, and custom fields belong in their own namespace). `event.kind`
//! is `event`; `event.category` and `event.type` use only ECS's allowed values.

use super::{
    base_name, command_line, event_name, is_file, is_network, kind_name, AgentEvent, Destination, Outcome, Severity,
};
use crate::record::{AuditRecord, Hook, Reason, RecordKind};
use serde_json::{json, Map, Value};

/// The ECS version the documents follow.
pub const ECS_VERSION: &str = "8.11.0";

/// `event.category` and the `event.type` of the operation (besides allowed/denied).
fn category(r: &AuditRecord) -> (&'static str, Option<&'static str>) {
    match r.kind {
        RecordKind::Request | RecordKind::Review | RecordKind::Decision => {
            return ("iam", Some(if r.kind == RecordKind::Request { "creation" } else { "change" }))
        }
        RecordKind::Grant => return ("iam", Some(if r.decision.is_some() { "creation" } else { "deletion" })),
        RecordKind::Policy => return ("configuration", Some(if r.comment.is_some() { "change" } else { "creation" })),
        RecordKind::Checkpoint => return ("host", Some("info")),
        RecordKind::Enforcement | RecordKind::Agent => {}
    }
    let Some(h) = r.hook else {
        return match AgentEvent::of(r) {
            Some(AgentEvent::Start) => ("process", Some("start")),
            Some(AgentEvent::Stop) => ("process", Some("end")),
            Some(AgentEvent::SpoolDamaged | AgentEvent::BacklogFull) => ("host", Some("error")),
            None => ("host", Some("info")),
        };
    };
    match h {
        Hook::BprmCheckSecurity | Hook::TaskAlloc | Hook::TaskNewtask => ("process", Some("start")),
        Hook::TaskKill => ("process", Some("end")),
        Hook::PtraceAccessCheck | Hook::UringOverrideCreds => ("process", Some("access")),
        Hook::PathMknod | Hook::PathMkdir | Hook::PathSymlink | Hook::PathLink => ("file", Some("creation")),
        Hook::PathUnlink | Hook::PathRmdir => ("file", Some("deletion")),
        Hook::PathRename
        | Hook::PathTruncate
        | Hook::PathChmod
        | Hook::PathChown
        | Hook::InodeSetxattr
        | Hook::InodeRemovexattr
        | Hook::InodeSetAcl
        | Hook::InodeRemoveAcl => ("file", Some("change")),
        Hook::MmapFile => ("library", Some("start")),
        h if is_file(h) => ("file", Some("access")),
        h if is_network(h) => ("network", Some("connection")),
        Hook::KernelReadFile | Hook::KernelLoadData | Hook::KernelModuleRequest | Hook::Bpf => {
            ("driver", Some("start"))
        }
        Hook::RingBuffer => ("host", Some("info")),
        _ => ("host", Some("access")),
    }
}

/// `r` as one ECS document.
pub fn encode(r: &AuditRecord) -> Value {
    let outcome = Outcome::of(r);
    let (cat, ty) = category(r);
    let mut types: Vec<&str> = ty.into_iter().collect();
    match outcome.went_ahead() {
        Some(true) => types.push("allowed"),
        Some(false) => types.push("denied"),
        None => {}
    }
    let mut event = Map::new();
    event.insert("kind".into(), "event".into());
    event.insert("category".into(), json!([cat]));
    event.insert("type".into(), json!(types));
    event.insert("action".into(), event_name(r).into());
    let refused = r.reason == Some(Reason::Refused);
    event.insert(
        "outcome".into(),
        match (outcome, outcome.went_ahead()) {
            // A note happened as noted (a grant ended, the agent started); a refused attempt
            // failed.
            (Outcome::Noted, _) if refused => "failure",
            (Outcome::Noted, _) => "success",
            (_, Some(true)) => "success",
            (_, Some(false)) => "failure",
            (_, None) => "unknown",
        }
        .into(),
    );
    // ECS leaves the scale to the source; OCSF's 1..4 is kept so the two formats agree.
    event.insert("severity".into(), (Severity::of(r) as u32).into());
    event.insert("provider".into(), "guard".into());
    event.insert("module".into(), "guard".into());
    event.insert("dataset".into(), "guard.audit".into());
    put(&mut event, "reason", r.reason.map(|x| x.name()));
    put(&mut event, "duration", r.held_ms.map(|ms| ms.saturating_mul(1_000_000)));

    let mut doc = Map::new();
    doc.insert("@timestamp".into(), r.time.to_string().into());
    doc.insert("ecs".into(), json!({"version": ECS_VERSION}));
    doc.insert("event".into(), Value::Object(event));
    doc.insert("host".into(), json!({"name": r.host, "hostname": r.host}));
    doc.insert("observer".into(), json!({"vendor": "guard", "product": "guard", "type": "lsm"}));

    let mut process = Map::new();
    put(&mut process, "pid", r.pid);
    if let Some(tid) = r.tid {
        process.insert("thread".into(), json!({"id": tid}));
    }
    if let Some(ppid) = r.ppid {
        process.insert("parent".into(), json!({"pid": ppid}));
    }
    if let Some(exe) = &r.exe {
        process.insert("executable".into(), exe.as_str().into());
        process.insert("name".into(), base_name(exe).into());
    }
    if !r.argv.is_empty() {
        process.insert("args".into(), json!(r.argv));
        process.insert("args_count".into(), r.argv.len().into());
        process.insert("command_line".into(), command_line(&r.argv).into());
    }
    if !process.is_empty() {
        doc.insert("process".into(), Value::Object(process));
    }

    let mut user = Map::new();
    put(&mut user, "id", r.uid.map(|u| u.to_string()));
    put(&mut user, "name", r.user.as_deref());
    if !user.is_empty() {
        doc.insert("user".into(), Value::Object(user));
    }

    if let (Some(h), Some(o)) = (r.hook, r.object.as_deref()) {
        if is_file(h) || matches!(h, Hook::KernelReadFile) {
            doc.insert("file".into(), json!({"path": o, "name": base_name(o)}));
        }
    }
    match Destination::of(r) {
        Some(Destination::Inet { ip, port }) => {
            doc.insert("destination".into(), json!({"ip": ip, "port": port, "address": ip}));
        }
        Some(Destination::Unix(path)) => {
            doc.insert("destination".into(), json!({"address": path}));
        }
        None => {}
    }
    let mut rule = Map::new();
    put(&mut rule, "name", r.rule.as_deref());
    put(&mut rule, "ruleset", r.policy.as_deref());
    if !rule.is_empty() {
        doc.insert("rule".into(), Value::Object(rule));
    }

    let mut guard = Map::new();
    guard.insert("kind".into(), kind_name(r.kind).into());
    guard.insert("outcome".into(), outcome.name().into());
    put(&mut guard, "decision", r.decision.map(|d| format!("{d:?}").to_lowercase()));
    put(&mut guard, "reason", r.reason.map(|x| x.name()));
    put(&mut guard, "action", r.action.map(|a| format!("{a:?}").to_lowercase()));
    put(&mut guard, "hook", r.hook.map(|h| h.name()));
    put(&mut guard, "object", r.object.as_deref());
    put(&mut guard, "access", r.access.as_deref());
    put(&mut guard, "tree_id", r.tree_id.as_deref());
    put(&mut guard, "request_id", r.request_id.as_deref());
    put(&mut guard, "state", r.state.as_deref());
    put(&mut guard, "approver", r.approver.as_deref());
    put(&mut guard, "comment", r.comment.as_deref());
    put(&mut guard, "grant_seconds", r.grant_seconds);
    put(&mut guard, "verified_by", r.verified_by.as_deref());
    put(&mut guard, "held_ms", r.held_ms);
    put(&mut guard, "lost", r.lost);
    if let Some(s) = &r.stated_reason {
        guard.insert("stated_reason".into(), serde_json::to_value(s).expect("a stated reason serialises"));
    }
    if let Some(c) = &r.checkpoint {
        guard.insert("checkpoint".into(), serde_json::to_value(c).expect("a signed head serialises"));
    }
    doc.insert("guard".into(), Value::Object(guard));
    Value::Object(doc)
}

fn put<T: Into<Value>>(m: &mut Map<String, Value>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v.into());
    }
}
