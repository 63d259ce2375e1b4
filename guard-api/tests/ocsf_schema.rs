//! guard's OCSF events checked against the published schema's rules, with fixtures derived from
//! github.com/ocsf/ocsf-schema (tests/fixtures/ocsf/README.md names the commits): every required
//! attribute present, every `at_least_one` constraint met, every attribute one the class or
//! object defines (a profile's only where `metadata.profiles` applies it), every enum value in
//! its enum, every scalar of its type, `type_uid` = `class_uid` * 100 + `activity_id`, the
//! category right, and the class the one the hook calls for. Nothing is fetched at test time.

use guard_api::export::ocsf::{self, Attestation, OcsfVersion};
use guard_api::{Action, AuditRecord, Decision, Hook, Reason, RecordKind, StatedReason, Timestamp};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

struct Schema {
    version: String,
    classes: HashMap<u64, Value>,
    objects: Map<String, Value>,
    scalars: Map<String, Value>,
}

fn schema(dir: &str) -> Schema {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocsf").join(dir);
    let read = |p: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let objects = read(&dir.join("objects.json"));
    let mut classes = HashMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "objects.json" {
            let c = read(&p);
            classes.insert(c["class_uid"].as_u64().unwrap(), c);
        }
    }
    Schema {
        version: objects["schema_version"].as_str().unwrap().to_string(),
        classes,
        objects: objects["objects"].as_object().unwrap().clone(),
        scalars: objects["scalars"].as_object().unwrap().clone(),
    }
}

/// Every rule `event` breaks, each naming the attribute's path.
fn violations(s: &Schema, event: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let Some(class_uid) = event["class_uid"].as_u64() else { return vec!["class_uid missing".into()] };
    let Some(class) = s.classes.get(&class_uid) else { return vec![format!("class {class_uid} not in the schema")] };
    if event["category_uid"] != class["category_uid"] {
        errs.push(format!("category_uid {} is not {}", event["category_uid"], class["category_uid"]));
    }
    let activity = event["activity_id"].as_u64().unwrap_or(u64::MAX);
    if event["type_uid"].as_u64() != Some(class_uid * 100 + activity) {
        errs.push(format!("type_uid {} is not {class_uid} * 100 + {activity}", event["type_uid"]));
    }
    if activity != 99 && event["activity_name"] != class["activity_names"][activity.to_string()] {
        errs.push(format!("activity_name {} is not the caption of {activity}", event["activity_name"]));
    }
    if event["metadata"]["version"] != s.version.as_str() {
        errs.push(format!("metadata.version {} is not {}", event["metadata"]["version"], s.version));
    }
    let applied: BTreeSet<&str> =
        event["metadata"]["profiles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    for p in &applied {
        if !class["profiles"].as_array().unwrap().iter().any(|x| x == p) {
            errs.push(format!("metadata.profiles names {p}, which {} does not have", class["name"]));
        }
    }
    check_object(s, "", class, event, &applied, &mut errs);
    errs
}

/// `value` against a class or object definition (`required`, `constraints`, `attributes`, `enums`).
fn check_object(s: &Schema, path: &str, def: &Value, value: &Value, applied: &BTreeSet<&str>, errs: &mut Vec<String>) {
    let Some(obj) = value.as_object() else {
        errs.push(format!("{path} is not an object"));
        return;
    };
    for req in def["required"].as_array().unwrap() {
        let req = req.as_str().unwrap();
        if obj.get(req).is_none_or(Value::is_null) {
            errs.push(format!("{path}{req} is required"));
        }
    }
    if let Some(any) = def["constraints"]["at_least_one"].as_array() {
        if !any.iter().any(|a| obj.get(a.as_str().unwrap()).is_some_and(|v| !v.is_null())) {
            errs.push(format!("{} needs at least one of {any:?}", path.trim_end_matches('.')));
        }
    }
    for (k, v) in obj {
        let Some(attr) = def["attributes"].get(k) else {
            errs.push(format!("{path}{k} is not an attribute here"));
            continue;
        };
        if let Some(p) = attr["profile"].as_str() {
            if !applied.contains(p) {
                errs.push(format!("{path}{k} belongs to profile {p}, not applied"));
            }
        }
        if let Some(allowed) = def["enums"].get(k) {
            if !allowed.as_array().unwrap().iter().any(|a| a.as_i64() == v.as_i64()) {
                errs.push(format!("{path}{k} = {v} is not in its enum {allowed}"));
            }
        }
        check_value(s, &format!("{path}{k}"), attr, v, applied, errs);
    }
}

fn check_value(s: &Schema, path: &str, attr: &Value, v: &Value, applied: &BTreeSet<&str>, errs: &mut Vec<String>) {
    if attr["array"] == true {
        match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_value(s, &format!("{path}[{i}]"), &json!({"type": attr["type"]}), item, applied, errs);
                }
            }
            None => errs.push(format!("{path} is not an array")),
        }
        return;
    }
    let ty = attr["type"].as_str().unwrap_or("");
    // `object` is OCSF's free-form object (`unmapped`): anything goes inside.
    if ty == "object" {
        if !v.is_object() {
            errs.push(format!("{path} is not an object"));
        }
        return;
    }
    if let Some(def) = s.objects.get(ty) {
        check_object(s, &format!("{path}."), def, v, applied, errs);
        return;
    }
    let ok = match s.scalars.get(ty).and_then(Value::as_str).unwrap_or(ty) {
        "string_t" => v.is_string(),
        "integer_t" | "long_t" => v.is_i64() || v.is_u64(),
        "float_t" => v.is_number(),
        "boolean_t" => v.is_boolean(),
        "object" | "json_t" => true,
        other => {
            errs.push(format!("{path}: type {other} unknown to the test"));
            true
        }
    };
    if !ok {
        errs.push(format!("{path} = {v} is not a {ty}"));
    }
}

// ---- the records ----

fn base(kind: RecordKind) -> AuditRecord {
    AuditRecord::at(Timestamp::from_unix_ms(1_796_002_226_007), kind, "web1")
}

fn object_for(h: Hook) -> &'static str {
    match h {
        Hook::SocketConnect | Hook::SocketSendmsg => "10.0.0.7:443",
        Hook::UnixStreamConnect => "/run/docker.sock",
        Hook::UnixMaySend => "@guard-admin",
        Hook::Capable => "CAP_SYS_ADMIN",
        Hook::PtraceAccessCheck => "ptrace attach pid 77",
        Hook::TaskKill => "guard-agent pid 12",
        Hook::BprmCheckSecurity => "/usr/bin/curl",
        Hook::RingBuffer => "events_lost",
        Hook::Bpf | Hook::BpfMap => "guard_policy",
        Hook::KernelReadFile | Hook::KernelLoadData | Hook::KernelModuleRequest => "/lib/modules/x.ko",
        Hook::UsernsCreate | Hook::UringSqpoll | Hook::TaskAlloc | Hook::TaskNewtask => "",
        _ => "/etc/shadow",
    }
}

/// A record with every field filled, as the agent writes one for `hook`.
fn full(hook: Hook, decision: Decision, reason: Reason, action: Action) -> AuditRecord {
    let mut r = base(if hook == Hook::RingBuffer { RecordKind::Agent } else { RecordKind::Enforcement });
    r.decision = Some(decision);
    r.reason = Some(reason);
    r.action = Some(action);
    r.rule = Some("secrets".into());
    r.policy = Some("claude-code".into());
    r.hook = Some(hook);
    r.object = Some(object_for(hook).into());
    r.access = Some("read".into());
    r.pid = Some(4242);
    r.tid = Some(4243);
    r.ppid = Some(4000);
    r.uid = Some(1000);
    r.user = Some("dev".into());
    r.exe = Some("/usr/bin/cat".into());
    r.argv = vec!["cat".into(), "/etc/shadow".into()];
    r.tree_id = Some("4000-1796002220000".into());
    r.stated_reason = Some(StatedReason {
        tool: "Bash".into(),
        call_id: "toolu_01".into(),
        reason: "read the config".into(),
        session: "sess-9".into(),
    });
    if matches!(reason, Reason::Approved | Reason::Denied | Reason::Expired) {
        r.request_id = Some("req-1".into());
        r.held_ms = Some(1500);
    }
    if reason == Reason::Approved {
        r.approver = Some("alice".into());
        r.grant_seconds = Some(600);
    }
    if reason == Reason::Denied {
        r.approver = Some("bob".into());
        r.comment = Some("no".into());
    }
    if hook == Hook::RingBuffer {
        r.lost = Some(17);
    }
    r
}

/// A record with only what every record has: the least an encoder may be given.
fn minimal(hook: Hook, decision: Decision) -> AuditRecord {
    let mut r = base(RecordKind::Enforcement);
    r.decision = Some(decision);
    r.hook = Some(hook);
    r
}

fn server(kind: RecordKind, decision: Option<Decision>, reason: Option<Reason>) -> AuditRecord {
    let mut r = full(Hook::FileOpen, Decision::Allow, Reason::Rule, Action::Ask);
    r.kind = kind;
    r.decision = decision;
    r.reason = reason;
    r.request_id = Some("req-1".into());
    r.state = Some(if decision.is_none() { "pending" } else { "approved" }.into());
    if kind != RecordKind::Request {
        r.approver = Some("alice".into());
        r.comment = Some("ok for 10 minutes".into());
        r.grant_seconds = Some(600);
    }
    r
}

/// One record of every hook x outcome, every record kind, and the minimal forms.
fn records() -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for h in Hook::ALL {
        for (d, reason, a) in [
            (Decision::Allow, Reason::Rule, Action::Allow),
            (Decision::Allow, Reason::Rule, Action::Audit),
            (Decision::Deny, Reason::Rule, Action::Deny),
            (Decision::Deny, Reason::Default, Action::Deny),
            (Decision::Allow, Reason::Approved, Action::Ask),
            (Decision::Deny, Reason::Denied, Action::Ask),
            (Decision::Deny, Reason::Expired, Action::Ask),
            (Decision::Allow, Reason::Grant, Action::Ask),
            (Decision::Deny, Reason::Tamper, Action::Deny),
            (Decision::Deny, Reason::Unresolvable, Action::Deny),
        ] {
            out.push(full(h, d, reason, a));
        }
        out.push(minimal(h, Decision::Allow));
        out.push(minimal(h, Decision::Deny));
    }
    out.push(server(RecordKind::Request, None, None));
    out.push(server(RecordKind::Review, Some(Decision::Allow), None));
    out.push(server(RecordKind::Review, Some(Decision::Deny), None));
    out.push(server(RecordKind::Decision, Some(Decision::Allow), Some(Reason::Approved)));
    out.push(server(RecordKind::Decision, Some(Decision::Deny), Some(Reason::Expired)));
    let mut no_hook = base(RecordKind::Enforcement);
    no_hook.decision = Some(Decision::Deny);
    no_hook.reason = Some(Reason::Exited);
    out.push(no_hook);
    let mut bare_request = base(RecordKind::Request);
    bare_request.request_id = Some("req-2".into());
    out.push(bare_request);
    out.extend(guard_events());
    out
}

/// A grant made, as guard-server writes it.
fn grant_made() -> AuditRecord {
    let mut r = base(RecordKind::Grant);
    r.decision = Some(Decision::Allow);
    r.reason = Some(Reason::Approved);
    r.hook = Some(Hook::BprmCheckSecurity);
    r.object = Some("/usr/bin/make".into());
    r.argv = vec!["make".into(), "-j4".into()];
    r.tree_id = Some("4000-1796002220000".into());
    r.request_id = Some("req-1".into());
    r.approver = Some("alice".into());
    r.grant_seconds = Some(600);
    r.state = Some("active".into());
    r.comment = Some("grant G1 until 2026-11-30T01:40:26.007Z".into());
    r
}

/// A policy registered: new (`before` None) or changed from `before`.
fn policy(before: Option<&str>) -> AuditRecord {
    let mut r = base(RecordKind::Policy);
    r.policy = Some("claude-code".into());
    r.object = Some(format!("sha256:{}", "ab".repeat(32)));
    r.state = Some(if before.is_some() { "changed" } else { "loaded" }.into());
    r.comment = before.map(str::to_string);
    r
}

fn agent_event(object: &str) -> AuditRecord {
    let mut r = base(RecordKind::Agent);
    r.object = Some(object.into());
    r
}

fn checkpoint(chain: &str) -> AuditRecord {
    let mut r = base(RecordKind::Checkpoint);
    r.checkpoint = Some(guard_api::chain::SignedHead {
        chain: chain.into(),
        seq: 1000,
        hash: "cd".repeat(32),
        key_id: "web1-key-1".into(),
        signature: "ef".repeat(64),
    });
    r
}

/// The records about guard itself and its trail (kinds grant, policy, checkpoint, agent
/// events without a hook, refused attempts), each with the (class, activity) it must land in.
fn guard_events() -> Vec<AuditRecord> {
    guard_events_expected().into_iter().map(|(r, _)| r).collect()
}

fn guard_events_expected() -> Vec<(AuditRecord, (u64, u64))> {
    let mut ended = grant_made();
    ended.decision = None;
    ended.reason = Some(Reason::Expired);
    ended.state = Some("ended".into());
    ended.comment = Some("grant G1 ended: expired".into());
    let mut refused = server(RecordKind::Review, None, Some(Reason::Refused));
    refused.comment = Some("review refused: alice may not approve her own tree".into());
    let mut unknown = agent_event("something new");
    unknown.comment = Some("an agent event this version does not know".into());
    vec![
        (grant_made(), (3004, 1)),
        (ended, (3004, 4)),
        (policy(None), (3004, 1)),
        (policy(Some(&format!("sha256:{}", "00".repeat(32)))), (3004, 3)),
        (agent_event("start"), (6002, 3)),
        (agent_event("stop"), (6002, 4)),
        (agent_event("spool_damaged"), (1008, 99)),
        (agent_event("backlog_full"), (1008, 99)),
        (checkpoint("web1/s1"), (1008, 99)),
        (checkpoint(guard_api::chain::SERVER_CHAIN), (1008, 99)),
        (refused, (6003, 3)),
        (unknown, (0, 99)),
    ]
}

/// The class and activity each hook must land in, written out independently of the encoder.
fn expected(h: Hook) -> (u64, u64) {
    use Hook::*;
    match h {
        BprmCheckSecurity | TaskAlloc | TaskNewtask => (1007, 1),
        PtraceAccessCheck => (1007, 3),
        TaskKill => (1007, 2),
        UringOverrideCreds => (1007, 5),
        FileOpen | FileReceive => (1001, 14),
        PathMknod | PathMkdir | PathSymlink | PathLink => (1001, 1),
        PathUnlink | PathRmdir => (1001, 4),
        PathRename => (1001, 5),
        PathTruncate => (1001, 3),
        PathChmod | PathChown | InodeSetAcl | InodeRemoveAcl => (1001, 7),
        InodeSetxattr | InodeRemovexattr => (1001, 6),
        SbMount | MoveMount => (1001, 12),
        SbUmount => (1001, 13),
        PathChroot | SbPivotroot => (1001, 99),
        SocketConnect | SocketSendmsg | UnixStreamConnect | UnixMaySend => (4001, 1),
        KernelReadFile | KernelLoadData | KernelModuleRequest | Bpf => (1002, 1),
        Capable => (1003, 4),
        UsernsCreate | UringSqpoll => (1003, 1),
        BpfMap => (1003, 2),
        MmapFile => (1005, 1),
        RingBuffer => (1008, 99),
    }
}

fn assert_valid(s: &Schema, v: OcsfVersion) -> BTreeSet<u64> {
    let mut classes = BTreeSet::new();
    let mut failures = Vec::new();
    for r in records() {
        let e = ocsf::encode(&r, v);
        classes.insert(e["class_uid"].as_u64().unwrap());
        let errs = violations(s, &e);
        if !errs.is_empty() {
            failures.push(format!(
                "{:?} {:?} {:?} {:?}:\n  {}",
                r.kind,
                r.hook,
                r.decision,
                r.reason,
                errs.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{} events break OCSF {}:\n{}", failures.len(), s.version, failures.join("\n"));
    classes
}

#[test]
fn every_record_is_a_valid_ocsf_1_9_event_and_every_derived_class_is_emitted() {
    let s = schema("1.9");
    let emitted = assert_valid(&s, OcsfVersion::V1_9);
    let derived: BTreeSet<u64> = s.classes.keys().copied().collect();
    assert_eq!(emitted, derived, "the fixtures hold the classes guard emits, no more, no less");
}

#[test]
fn every_record_is_a_valid_ocsf_1_5_event_without_what_1_5_lacks() {
    let s = schema("1.5");
    assert_valid(&s, OcsfVersion::V1_5);
    for r in records() {
        let e = ocsf::encode(&r, OcsfVersion::V1_5);
        for gone in ["ai_agent", "ai_model", "message_context", "attestation_list"] {
            assert!(e.get(gone).is_none(), "{gone} in a 1.5 event: {e}");
        }
        let profiles = e["metadata"]["profiles"].as_array().unwrap();
        assert!(!profiles.iter().any(|p| p == "ai_operation" || p == "record_integrity"), "{e}");
        // What the AI profile carried in 1.9 is still there, under guard's own names.
        if let Some(s) = &r.stated_reason {
            assert_eq!(e["unmapped"]["guard"]["stated_reason"]["tool"], s.tool.as_str());
            assert_eq!(e["unmapped"]["guard"]["tree_id"], r.tree_id.as_deref().unwrap());
        }
    }
}

#[test]
fn the_class_and_activity_follow_the_hook_and_the_record_kind() {
    for r in records() {
        let e = ocsf::encode(&r, OcsfVersion::V1_9);
        let got = (e["class_uid"].as_u64().unwrap(), e["activity_id"].as_u64().unwrap());
        if let Some((_, want)) = guard_events_expected().into_iter().find(|(g, _)| *g == r) {
            assert_eq!(got, want, "{:?} {:?}", r.kind, r.object);
            continue;
        }
        let want = match (r.kind, r.hook) {
            (RecordKind::Request, _) => (6003, 1),
            (RecordKind::Review | RecordKind::Decision, _) => (6003, 3),
            (_, Some(h)) => expected(h),
            (_, None) => (0, 99),
        };
        assert_eq!(got, want, "{:?} {:?}", r.kind, r.hook);
        assert_eq!(e["type_uid"].as_u64().unwrap(), want.0 * 100 + want.1);
    }
}

#[test]
fn action_disposition_status_and_severity_say_what_happened() {
    let case = |r: AuditRecord| {
        let e = ocsf::encode(&r, OcsfVersion::V1_9);
        (e["action_id"].as_u64().unwrap(), e["disposition_id"].as_u64().unwrap(), e["status_id"].as_u64().unwrap())
    };
    let f = |d, reason, a| full(Hook::FileOpen, d, reason, a);
    assert_eq!(case(f(Decision::Allow, Reason::Rule, Action::Allow)), (1, 1, 1), "allowed");
    assert_eq!(case(f(Decision::Allow, Reason::Approved, Action::Ask)), (1, 8, 1), "approved");
    assert_eq!(case(f(Decision::Deny, Reason::Rule, Action::Deny)), (2, 2, 2), "blocked");
    assert_eq!(case(f(Decision::Deny, Reason::Denied, Action::Ask)), (2, 25, 2), "rejected");
    assert_eq!(
        case(f(Decision::Deny, Reason::Expired, Action::Ask)),
        (2, 2, 2),
        "expired: blocked, nobody rejected it"
    );
    assert_eq!(
        case(server(RecordKind::Request, None, None)),
        (99, 14, 1),
        "a request: held, delayed; the API call succeeded"
    );
    assert_eq!(case(server(RecordKind::Review, Some(Decision::Deny), None)), (2, 25, 1), "a review that denies");
    let sev = |r: AuditRecord| {
        let e = ocsf::encode(&r, OcsfVersion::V1_9);
        (e["severity_id"].as_u64().unwrap(), e["is_alert"].as_bool().unwrap())
    };
    assert_eq!(sev(f(Decision::Allow, Reason::Rule, Action::Allow)), (1, false));
    assert_eq!(sev(f(Decision::Allow, Reason::Rule, Action::Audit)), (2, false));
    assert_eq!(sev(f(Decision::Deny, Reason::Rule, Action::Deny)), (3, false));
    assert_eq!(sev(f(Decision::Deny, Reason::Tamper, Action::Deny)), (4, true));
    assert_eq!(sev(full(Hook::RingBuffer, Decision::Deny, Reason::EventsLost, Action::Deny)), (4, true));
}

#[test]
fn enforcement_and_its_review_share_a_correlation_uid_and_each_has_its_own_uid() {
    let held = full(Hook::FileOpen, Decision::Allow, Reason::Approved, Action::Ask);
    let review = server(RecordKind::Review, Some(Decision::Allow), None);
    let (a, b) = (ocsf::encode(&held, OcsfVersion::V1_9), ocsf::encode(&review, OcsfVersion::V1_9));
    assert_eq!(a["metadata"]["correlation_uid"], "req-1");
    assert_eq!(a["metadata"]["correlation_uid"], b["metadata"]["correlation_uid"]);
    assert_ne!(a["metadata"]["uid"], b["metadata"]["uid"]);
    assert_eq!(
        a["metadata"]["uid"],
        ocsf::encode(&held, OcsfVersion::V1_5)["metadata"]["uid"],
        "stable across versions"
    );
    assert_eq!(a["metadata"]["uid"].as_str().unwrap().len(), 32);
    let rule = ocsf::encode(&full(Hook::FileOpen, Decision::Deny, Reason::Rule, Action::Deny), OcsfVersion::V1_9);
    assert!(rule["metadata"].get("correlation_uid").is_none(), "no request, nothing to correlate: {rule}");
}

#[test]
fn the_acting_agent_process_and_object_are_where_ocsf_puts_them() {
    let r = full(Hook::FileOpen, Decision::Deny, Reason::Rule, Action::Deny);
    let e = ocsf::encode(&r, OcsfVersion::V1_9);
    assert_eq!(e["ai_agent"], json!({"name": "claude-code", "instance_uid": "4000-1796002220000"}));
    assert_eq!(e["message_context"]["service"]["name"], "Bash");
    assert_eq!(e["message_context"]["uid"], "toolu_01");
    assert_eq!(e["message_context"]["name"], "sess-9");
    assert_eq!(e["actor"]["process"]["pid"], 4242);
    assert_eq!(e["actor"]["process"]["tid"], 4243);
    assert_eq!(e["actor"]["process"]["parent_process"]["pid"], 4000);
    assert_eq!(e["actor"]["process"]["cmd_line"], "cat /etc/shadow");
    assert_eq!(e["actor"]["process"]["file"]["path"], "/usr/bin/cat");
    assert_eq!(e["actor"]["process"]["user"], json!({"uid": "1000", "name": "dev"}));
    assert_eq!(e["device"]["hostname"], "web1");
    assert_eq!(e["file"]["path"], "/etc/shadow");
    assert_eq!(e["time"], 1_796_002_226_007u64);
    assert_eq!(e["policy"]["name"], "claude-code");
    assert_eq!(e["firewall_rule"]["name"], "secrets");
    assert_eq!(e["metadata"]["product"]["name"], "guard");

    let net = ocsf::encode(&full(Hook::SocketConnect, Decision::Deny, Reason::Rule, Action::Deny), OcsfVersion::V1_9);
    assert_eq!(net["dst_endpoint"], json!({"ip": "10.0.0.7", "port": 443}));
    let unix =
        ocsf::encode(&full(Hook::UnixStreamConnect, Decision::Deny, Reason::Rule, Action::Deny), OcsfVersion::V1_9);
    assert_eq!(unix["dst_endpoint"], json!({"name": "/run/docker.sock"}));
    let exec =
        ocsf::encode(&full(Hook::BprmCheckSecurity, Decision::Allow, Reason::Rule, Action::Allow), OcsfVersion::V1_9);
    assert_eq!(exec["process"]["file"]["path"], "/usr/bin/cat", "an exec's exe is the program executed");
    assert_eq!(exec["process"]["cmd_line"], "cat /etc/shadow");
    assert!(exec["actor"]["process"].get("cmd_line").is_none(), "the old image's argv is not known: {exec}");
    let ptrace =
        ocsf::encode(&full(Hook::PtraceAccessCheck, Decision::Deny, Reason::Rule, Action::Deny), OcsfVersion::V1_9);
    assert_eq!(ptrace["process"]["pid"], 77);
    let lost =
        ocsf::encode(&full(Hook::RingBuffer, Decision::Deny, Reason::EventsLost, Action::Deny), OcsfVersion::V1_9);
    assert_eq!(lost["count"], 17);
    let grant = ocsf::encode(&full(Hook::FileOpen, Decision::Allow, Reason::Approved, Action::Ask), OcsfVersion::V1_9);
    assert_eq!(grant["authorizations"][0]["decision"], "approved by alice for 600 s");
    assert_eq!(grant["duration"], 1500);
}

#[test]
fn a_chain_entry_is_a_valid_record_integrity_attestation_in_1_9_and_absent_in_1_5() {
    let r = full(Hook::FileOpen, Decision::Deny, Reason::Rule, Action::Deny);
    let a = Attestation {
        chain_uid: "web1".into(),
        uid: "42".into(),
        sha256: "ab".repeat(32),
        prev: Some(("41".into(), "cd".repeat(32))),
        authority_uid: Some("web1-key-1".into()),
    };
    let e = ocsf::encode_attested(&r, OcsfVersion::V1_9, Some(&a));
    assert_eq!(violations(&schema("1.9"), &e), Vec::<String>::new());
    assert_eq!(e["attestation_list"][0]["fingerprint"]["value"], "ab".repeat(32));
    assert_eq!(e["attestation_list"][0]["prev_event"]["uid"], "41");
    assert!(e["metadata"]["profiles"].as_array().unwrap().iter().any(|p| p == "record_integrity"));
    let old = ocsf::encode_attested(&r, OcsfVersion::V1_5, Some(&a));
    assert!(old.get("attestation_list").is_none());
    assert_eq!(violations(&schema("1.5"), &old), Vec::<String>::new());
}

/// The validator itself: each kind of broken event is caught, so a passing run means something.
#[test]
fn the_validator_catches_each_kind_of_broken_event() {
    let s = schema("1.9");
    let good = ocsf::encode(&full(Hook::FileOpen, Decision::Deny, Reason::Rule, Action::Deny), OcsfVersion::V1_9);
    assert_eq!(violations(&s, &good), Vec::<String>::new());
    let broken = |f: &dyn Fn(&mut Value), needle: &str| {
        let mut e = good.clone();
        f(&mut e);
        let errs = violations(&s, &e);
        assert!(errs.iter().any(|x| x.contains(needle)), "expected {needle:?} in {errs:?}");
    };
    broken(&|e| drop(e.as_object_mut().unwrap().remove("file")), "file is required");
    broken(&|e| drop(e["file"].as_object_mut().unwrap().remove("type_id")), "file.type_id is required");
    broken(&|e| e["disposition_id"] = json!(42), "disposition_id = 42");
    broken(&|e| e["action_id"] = json!(7), "action_id = 7");
    broken(&|e| e["activity_id"] = json!(15), "activity_id = 15");
    broken(&|e| e["type_uid"] = json!(100102), "type_uid");
    broken(&|e| e["category_uid"] = json!(4), "category_uid");
    broken(&|e| e["class_uid"] = json!(1009), "class 1009 not in the schema");
    broken(&|e| e["delegation"] = json!({}), "delegation is not an attribute");
    broken(&|e| e["actor"]["process"]["pid"] = json!("4242"), "actor.process.pid");
    broken(&|e| e["actor"] = json!({}), "actor needs at least one");
    broken(&|e| e["metadata"]["profiles"] = json!(["security_control"]), "ai_agent belongs to profile ai_operation");
    let old = schema("1.5");
    let errs = violations(&old, &good);
    assert!(errs.iter().any(|x| x.contains("ai_agent is not an attribute")), "{errs:?}");
    assert!(errs.iter().any(|x| x.contains("metadata.version")), "{errs:?}");
}

#[test]
fn grants_policies_checkpoints_and_agent_events_say_what_they_are_about() {
    let e = ocsf::encode(&grant_made(), OcsfVersion::V1_9);
    assert_eq!((e["class_uid"].as_u64(), e["category_uid"].as_u64()), (Some(3004), Some(3)));
    assert_eq!(e["entity"]["type"], "grant");
    assert_eq!(e["entity"]["name"], "bprm_check_security /usr/bin/make");
    assert_eq!(e["entity"]["data"]["tree_id"], "4000-1796002220000");
    assert_eq!(e["entity"]["data"]["argv"], json!(["make", "-j4"]));
    assert_eq!(e["entity"]["data"]["seconds"], 600);
    assert_eq!(e["actor"]["user"]["name"], "alice", "a grant is made by its approver");
    assert_eq!((e["action_id"].as_u64(), e["disposition_id"].as_u64()), (Some(1), Some(8)));
    assert_eq!(e["authorizations"][0]["decision"], "approved by alice for 600 s");
    assert_eq!(e["metadata"]["correlation_uid"], "req-1", "linked to the request it came from");

    let mut ended = grant_made();
    ended.decision = None;
    ended.reason = Some(Reason::Exited);
    ended.comment = Some("grant G1 ended: tree exited".into());
    let e = ocsf::encode(&ended, OcsfVersion::V1_9);
    assert_eq!((e["activity_id"].as_u64(), e["status_id"].as_u64()), (Some(4), Some(1)));
    assert_eq!(e["comment"], "grant G1 ended: tree exited");
    assert_eq!(e["actor"]["app_name"], "guard-server", "guard-server ends it");
    for absent in ["action_id", "disposition_id", "authorizations"] {
        assert!(e.get(absent).is_none(), "an ended grant decides nothing, so no {absent}: {e}");
    }

    let before = format!("sha256:{}", "00".repeat(32));
    let e = ocsf::encode(&policy(Some(&before)), OcsfVersion::V1_9);
    assert_eq!(e["entity"]["policy"], json!({"name": "claude-code", "uid": before}));
    assert_eq!(e["updated_entity"]["uid"], format!("sha256:{}", "ab".repeat(32)));
    let e = ocsf::encode(&policy(None), OcsfVersion::V1_9);
    assert_eq!(
        (e["activity_name"].as_str(), e["entity"]["uid"].as_str()),
        (Some("Create"), Some(&*format!("sha256:{}", "ab".repeat(32))))
    );
    assert!(e.get("updated_entity").is_none());

    let e = ocsf::encode(&agent_event("start"), OcsfVersion::V1_9);
    assert_eq!(e["app"]["name"], "guard-agent");
    assert_eq!(e["metadata"]["event_code"], "agent.start");
    let e = ocsf::encode(&agent_event("spool_damaged"), OcsfVersion::V1_9);
    assert_eq!((e["activity_name"].as_str(), e["log_name"].as_str()), (Some("Spool Damaged"), Some("audit spool")));
    assert_eq!((e["severity_id"].as_u64(), e["is_alert"].as_bool()), (Some(4), Some(true)));
    let e = ocsf::encode(&checkpoint(guard_api::chain::SERVER_CHAIN), OcsfVersion::V1_9);
    assert_eq!((e["log_provider"].as_str(), e["log_name"].as_str()), (Some("guard-server"), Some("audit chain")));
    assert_eq!(e["unmapped"]["guard"]["checkpoint"]["seq"], 1000);
    assert_eq!(ocsf::encode(&checkpoint("web1/s1"), OcsfVersion::V1_9)["log_provider"], "guard-agent");

    let mut refused = server(RecordKind::Review, None, Some(Reason::Refused));
    refused.comment = Some("review refused: already decided".into());
    let e = ocsf::encode(&refused, OcsfVersion::V1_9);
    assert_eq!((e["status_id"].as_u64(), e["status_detail"].as_str()), (Some(2), Some("refused")));
    assert!(e.get("disposition_id").is_none() && e.get("authorizations").is_none(), "{e}");
    assert_eq!(e["severity_id"], 2);
}

/// The validator on the new classes: each required attribute and constraint is enforced.
#[test]
fn the_validator_catches_broken_grant_policy_and_lifecycle_events() {
    for s in [schema("1.9"), schema("1.5")] {
        let v = if s.version == "1.5.0" { OcsfVersion::V1_5 } else { OcsfVersion::V1_9 };
        let broken = |r: &AuditRecord, f: &dyn Fn(&mut Value), needle: &str| {
            let mut e = ocsf::encode(r, v);
            assert_eq!(violations(&s, &e), Vec::<String>::new(), "valid before the change");
            f(&mut e);
            let errs = violations(&s, &e);
            assert!(errs.iter().any(|x| x.contains(needle)), "{}: expected {needle:?} in {errs:?}", s.version);
        };
        broken(&grant_made(), &|e| drop(e.as_object_mut().unwrap().remove("entity")), "entity is required");
        broken(&grant_made(), &|e| e["entity"] = json!({"type": "grant"}), "entity needs at least one");
        broken(&grant_made(), &|e| e["activity_id"] = json!(14), "activity_id = 14");
        broken(&policy(None), &|e| e["entity"]["policy"] = json!({"desc": "x"}), "entity.policy needs at least one");
        broken(&agent_event("start"), &|e| drop(e.as_object_mut().unwrap().remove("app")), "app is required");
        broken(&agent_event("stop"), &|e| e["app"] = json!({"vendor_name": "guard"}), "app needs at least one");
        broken(&agent_event("stop"), &|e| e["type_uid"] = json!(600203), "type_uid");
        let unlogged = |e: &mut Value| {
            let o = e.as_object_mut().unwrap();
            o.remove("log_name");
            o.remove("log_provider");
        };
        broken(&checkpoint("web1/s1"), &unlogged, "log_name");
    }
}
