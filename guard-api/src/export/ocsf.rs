//! guard's audit record as an OCSF event (Open Cybersecurity Schema Framework).
//!
//! Schema versions: [`OcsfVersion::V1_9`] is the newest schema stored for this project, the
//! `main` branch of github.com/ocsf/ocsf-schema at commit a5cfc68 (2026-07-23), whose
//! `version.json` reads `1.9.0-dev`: 1.9.0 is not released there yet, so `metadata.version` says
//! `1.9.0-dev`. [`OcsfVersion::V1_5`] is the 1.5.0 release, for consumers that lag: it has no
//! `ai_operation` or `record_integrity` profile, so those attributes are left out (what they
//! carry stays in `unmapped.guard`). The tests validate both against fixtures derived from those
//! two commits (guard-api/tests/fixtures/ocsf/).
//!
//! # Classes
//!
//! | guard record | OCSF class (uid) | activity |
//! |---|---|---|
//! | `bprm_check_security` (exec) | Process Activity (1007) | Launch (1) |
//! | `task_alloc`, `task_newtask` (fork, new task) | Process Activity (1007) | Launch (1) |
//! | `ptrace_access_check` | Process Activity (1007) | Open (3) |
//! | `task_kill` (a signal to guard) | Process Activity (1007) | Terminate (2) |
//! | `uring_override_creds` | Process Activity (1007) | Set User ID (5) |
//! | `file_open`, `file_receive` | File System Activity (1001) | Open (14) |
//! | `path_mknod`, `path_mkdir`, `path_symlink`, `path_link` | File System Activity (1001) | Create (1) |
//! | `path_unlink`, `path_rmdir` | File System Activity (1001) | Delete (4) |
//! | `path_rename` | File System Activity (1001) | Rename (5) |
//! | `path_truncate` | File System Activity (1001) | Update (3) |
//! | `path_chmod`, `path_chown`, `inode_set_acl`, `inode_remove_acl` | File System Activity (1001) | Set Security (7) |
//! | `inode_setxattr`, `inode_removexattr` | File System Activity (1001) | Set Attributes (6) |
//! | `sb_mount`, `move_mount` | File System Activity (1001) | Mount (12) |
//! | `sb_umount` | File System Activity (1001) | Unmount (13) |
//! | `path_chroot`, `sb_pivotroot` | File System Activity (1001) | Other (99), `activity_name` chroot / pivot_root |
//! | `socket_connect`, `socket_sendmsg`, `unix_stream_connect`, `unix_may_send` | Network Activity (4001) | Open (1) |
//! | `kernel_read_file`, `kernel_load_data`, `kernel_module_request`, `bpf` | Kernel Extension Activity (1002) | Load (1) |
//! | `capable` | Kernel Activity (1003) | Invoke (4), `kernel.type` capability |
//! | `userns_create`, `uring_sqpoll` | Kernel Activity (1003) | Create (1) |
//! | `bpf_map` (a guard map's fd) | Kernel Activity (1003) | Read (2) |
//! | `mmap_file` (executable mapping) | Module Activity (1005) | Load (1), `load_type_id` Mapped |
//! | `ring_buffer` (the agent's lost-events records) | Event Log Activity (1008) | Other (99), `count` = events lost |
//! | agent `start`, `stop` (kind agent, no hook, `object` start / stop) | Application Lifecycle (6002) | Start (3), Stop (4); `app` guard-agent |
//! | agent `spool_damaged`, `backlog_full` | Event Log Activity (1008) | Other (99), `activity_name` Spool Damaged / Backlog Full; `log_name` audit spool |
//! | `checkpoint` (a signed head of a hash chain) | Event Log Activity (1008) | Other (99), `activity_name` Checkpoint; `log_name` audit chain |
//! | `grant` made (decision allow) | Entity Management (3004) | Create (1); `entity` type grant, its scope in `entity.data` |
//! | `grant` ended (expired, tree exited; `comment` says which) | Entity Management (3004) | Delete (4) |
//! | `policy` new on its host | Entity Management (3004) | Create (1); `entity.policy` {name, uid: the sha256} |
//! | `policy` changed (`comment`: the hash before) | Entity Management (3004) | Update (3); `entity` as it was, `updated_entity` as it is (1.9; 1.5 has no `updated_entity`) |
//! | any other record without a hook | Base Event (0) | Other (99) |
//! | `request` (server: a hold asks for approval) | API Activity (6003) | Create (1) |
//! | `review`, `decision` (server: an approver's review, the request's end; a refused attempt) | API Activity (6003) | Update (3) |
//!
//! Why these classes. Application Lifecycle is the schema's class for an application starting
//! and stopping. Event Log Activity is its class for what happens to a log (cleared, rotated,
//! archived...): a checkpoint seals guard's log, and a damaged spool or a full backlog is
//! something that happened to it; none of its activities says "sealed" or "damaged", so they
//! are Other with their own `activity_name`. A grant and a policy are things the server or an
//! agent creates, changes and removes, which is Entity Management's subject (its
//! `managed_entity` has a `policy` and free-form `data`); User Access Management (3005) was the
//! other candidate for grants, but it requires a `user` to whom privileges are assigned, and a
//! grant is scoped to a watched tree, not a user. Device Config State Change (5019), the other
//! candidate for policies, describes a device's security level and states, with no place for a
//! policy's name or hash, and has no `ai_operation` profile.
//!
//! # Outcome
//!
//! | [`Outcome`] | `action_id` | `disposition_id` | `status_id` (enforcement) |
//! |---|---|---|---|
//! | allowed | Allowed (1) | Allowed (1) | Success (1) |
//! | approved (by a person) | Allowed (1) | Approved (8) | Success (1) |
//! | blocked | Denied (2) | Blocked (2) | Failure (2) |
//! | rejected (by a person) | Denied (2) | Rejected (25) | Failure (2) |
//! | pending (a hold waiting) | Other (99), `action` "Held" | Delayed (14) | Unknown (0) |
//! | noted (nothing decided: a grant ended, a policy, a checkpoint, an agent event, a refused attempt) | absent | absent | Success (1); Failure (2) for a refused attempt |
//!
//! API Activity's `status_id` is that of the API call (Success), its outcome is in
//! `disposition_id`. `severity_id`: Informational, Low for `audit` rules, Medium for denials,
//! High for tamper refusals and lost events (with `is_alert`).
//!
//! `metadata.correlation_uid` is the record's `request_id`, which the agent fills with the
//! server's request id when the server decided the hold, and with its own hold id otherwise:
//! the enforcement record of a hold, the server's request, reviews and final decision all carry
//! the same one. A decision that held nothing (a rule, the default) has none, and the attribute
//! is absent. `metadata.uid` of a sealed record is its place in its chain, `host/stream/seq`;
//! of any other record (the server's own rows, which its row chain numbers apart), the first 128
//! bits of the SHA-256 of its JSON: stable across exports of the same record.
//!
//! # Profiles, and what the schema does not have
//!
//! - `security_control` (in both versions): `action_id`, `disposition_id`, `is_alert`, `policy`
//!   (the tree's policy), `firewall_rule` (the guard rule that matched; the schema has no
//!   generic rule attribute in this profile), `authorizations` (who approved or denied, and a
//!   grant's duration).
//! - `ai_operation` (1.9 only): `ai_agent` = the watched tree's agent: `name` the tree's policy
//!   (chosen by its selector), `instance_uid` the tree id; `message_context` = the stated
//!   reason's tool call (`service.name` the tool, `uid` the call id, `name` the session,
//!   `ai_role_id` Tool). The stated reason's free text has no attribute there: it is in
//!   `unmapped.guard.stated_reason`. `ai_model` is not set: guard does not know the model.
//! - `record_integrity` (1.9 only): `attestation_list` holds the record's chain entry
//!   ([`Attestation::of`] a sealed record: chain `host/stream`, its seq and SHA-256, the previous
//!   seq and hash, and for a checkpoint the signing key's id); [`encode_attested`] takes any
//!   other entry (the server's row chain, say).
//! - A grant as a `delegation`: the stored schema has no `delegation` object or attribute (the
//!   word appears only in descriptions). A grant is an `authorizations` entry ("approved by
//!   alice for 600 s") and `unmapped.guard.grant_seconds`.
//! - Not in the record, so not in the event: the approver's network address (API Activity's
//!   required `src_endpoint` is the agent's host for requests and carries the approver's name
//!   for reviews), the device's type (`device.type_id` Unknown), file types other than what the
//!   hook implies.

use super::{base_name, command_line, event_name, kind_name, AgentEvent, Destination, Outcome, Severity};
use crate::record::{AuditRecord, Hook, Reason, RecordKind};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The OCSF schema version an event is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcsfVersion {
    /// The newest stored schema, `1.9.0-dev` (see the module documentation).
    V1_9,
    /// 1.5.0, for consumers that lag: no `ai_operation`, no `record_integrity`.
    V1_5,
}

impl OcsfVersion {
    pub const CURRENT: OcsfVersion = OcsfVersion::V1_9;

    /// What `metadata.version` says.
    pub fn schema_version(self) -> &'static str {
        match self {
            OcsfVersion::V1_9 => "1.9.0-dev",
            OcsfVersion::V1_5 => "1.5.0",
        }
    }

    /// `1.9`, `1.9.0`, `1.9.0-dev`, `1.5`, `1.5.0`.
    pub fn parse(text: &str) -> Option<OcsfVersion> {
        match text {
            "1.9" | "1.9.0" | "1.9.0-dev" => Some(OcsfVersion::V1_9),
            "1.5" | "1.5.0" => Some(OcsfVersion::V1_5),
            _ => None,
        }
    }

    /// Whether Entity Management has `updated_entity` (added after 1.5).
    fn has_updated_entity(self) -> bool {
        self == OcsfVersion::V1_9
    }

    /// Whether the `ai_operation` and `record_integrity` profiles exist in this version.
    fn has_ai_and_integrity(self) -> bool {
        self == OcsfVersion::V1_9
    }
}

/// The OCSF class and activity of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub uid: u32,
    pub name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
    pub activity_id: u32,
    pub activity_name: &'static str,
}

const SYSTEM: (u32, &str) = (1, "System Activity");
const IAM: (u32, &str) = (3, "Identity & Access Management");
const APPLICATION: (u32, &str) = (6, "Application Activity");

fn class(uid: u32, name: &'static str, category: (u32, &'static str), activity: (u32, &'static str)) -> Class {
    Class {
        uid,
        name,
        category_uid: category.0,
        category_name: category.1,
        activity_id: activity.0,
        activity_name: activity.1,
    }
}

fn process(activity: (u32, &'static str)) -> Class {
    class(1007, "Process Activity", SYSTEM, activity)
}

fn file(activity: (u32, &'static str)) -> Class {
    class(1001, "File System Activity", SYSTEM, activity)
}

fn kernel(activity: (u32, &'static str)) -> Class {
    class(1003, "Kernel Activity", SYSTEM, activity)
}

/// The class of `r` (the table in the module documentation).
pub fn class_of(r: &AuditRecord) -> Class {
    match r.kind {
        RecordKind::Request => return class(6003, "API Activity", (6, "Application Activity"), (1, "Create")),
        RecordKind::Review | RecordKind::Decision => {
            return class(6003, "API Activity", (6, "Application Activity"), (3, "Update"))
        }
        RecordKind::Grant => {
            let activity = if r.decision.is_some() { (1, "Create") } else { (4, "Delete") };
            return class(3004, "Entity Management", IAM, activity);
        }
        RecordKind::Policy => {
            let activity = if r.comment.is_some() { (3, "Update") } else { (1, "Create") };
            return class(3004, "Entity Management", IAM, activity);
        }
        RecordKind::Checkpoint => return class(1008, "Event Log Activity", SYSTEM, (99, "Checkpoint")),
        RecordKind::Enforcement | RecordKind::Agent => {}
    }
    let Some(hook) = r.hook else {
        return match AgentEvent::of(r) {
            Some(AgentEvent::Start) => class(6002, "Application Lifecycle", APPLICATION, (3, "Start")),
            Some(AgentEvent::Stop) => class(6002, "Application Lifecycle", APPLICATION, (4, "Stop")),
            Some(AgentEvent::SpoolDamaged) => class(1008, "Event Log Activity", SYSTEM, (99, "Spool Damaged")),
            Some(AgentEvent::BacklogFull) => class(1008, "Event Log Activity", SYSTEM, (99, "Backlog Full")),
            None => class(0, "Base Event", (0, "Uncategorized"), (99, "Other")),
        };
    };
    match hook {
        Hook::BprmCheckSecurity | Hook::TaskAlloc | Hook::TaskNewtask => process((1, "Launch")),
        Hook::PtraceAccessCheck => process((3, "Open")),
        Hook::TaskKill => process((2, "Terminate")),
        Hook::UringOverrideCreds => process((5, "Set User ID")),
        Hook::FileOpen | Hook::FileReceive => file((14, "Open")),
        Hook::PathMknod | Hook::PathMkdir | Hook::PathSymlink | Hook::PathLink => file((1, "Create")),
        Hook::PathUnlink | Hook::PathRmdir => file((4, "Delete")),
        Hook::PathRename => file((5, "Rename")),
        Hook::PathTruncate => file((3, "Update")),
        Hook::PathChmod | Hook::PathChown | Hook::InodeSetAcl | Hook::InodeRemoveAcl => file((7, "Set Security")),
        Hook::InodeSetxattr | Hook::InodeRemovexattr => file((6, "Set Attributes")),
        Hook::SbMount | Hook::MoveMount => file((12, "Mount")),
        Hook::SbUmount => file((13, "Unmount")),
        Hook::PathChroot => file((99, "chroot")),
        Hook::SbPivotroot => file((99, "pivot_root")),
        Hook::SocketConnect | Hook::SocketSendmsg | Hook::UnixStreamConnect | Hook::UnixMaySend => {
            class(4001, "Network Activity", (4, "Network Activity"), (1, "Open"))
        }
        Hook::KernelReadFile | Hook::KernelLoadData | Hook::KernelModuleRequest | Hook::Bpf => {
            class(1002, "Kernel Extension Activity", SYSTEM, (1, "Load"))
        }
        Hook::Capable => kernel((4, "Invoke")),
        Hook::UsernsCreate | Hook::UringSqpoll => kernel((1, "Create")),
        Hook::BpfMap => kernel((2, "Read")),
        Hook::MmapFile => class(1005, "Module Activity", SYSTEM, (1, "Load")),
        Hook::RingBuffer => class(1008, "Event Log Activity", SYSTEM, (99, "Events Lost")),
    }
}

/// One entry of the record's hash chain, for the `record_integrity` profile. guard's records do
/// not carry one yet (issue 11 item 3); the chain's writer fills this in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The chain: the host's audit log.
    pub chain_uid: String,
    /// This record's place in it (the host's sequence number).
    pub uid: String,
    /// SHA-256 of the record's canonical encoding, hex.
    pub sha256: String,
    /// The previous record's sequence number and SHA-256; None for the chain's first record.
    pub prev: Option<(String, String)>,
    /// Who attests: the host key's id.
    pub authority_uid: Option<String>,
}

/// `r` as an OCSF event of version `v`.
pub fn encode(r: &AuditRecord, v: OcsfVersion) -> Value {
    encode_attested(r, v, Attestation::of(r).as_ref())
}

impl Attestation {
    /// The chain entry a sealed record carries (an agent's stream); None for a record that is
    /// not chained by its writer.
    pub fn of(r: &AuditRecord) -> Option<Attestation> {
        let link = r.chain.as_ref()?;
        Some(Attestation {
            chain_uid: crate::chain::stream_chain(&r.host, &link.stream),
            uid: link.seq.to_string(),
            sha256: link.hash.clone(),
            prev: (link.seq > 1).then(|| ((link.seq - 1).to_string(), link.prev_hash.clone())),
            authority_uid: r.checkpoint.as_ref().map(|h| h.key_id.clone()),
        })
    }
}

/// `r` as an OCSF event of version `v`, with its hash-chain entry when there is one (written
/// only where the version has the `record_integrity` profile).
pub fn encode_attested(r: &AuditRecord, v: OcsfVersion, attestation: Option<&Attestation>) -> Value {
    let c = class_of(r);
    let outcome = Outcome::of(r);
    let severity = Severity::of(r);
    let api = c.uid == 6003;
    let mut e = Obj::default();
    e.put("class_uid", c.uid);
    e.put("class_name", c.name);
    e.put("category_uid", c.category_uid);
    e.put("category_name", c.category_name);
    e.put("activity_id", c.activity_id);
    e.put("activity_name", c.activity_name);
    e.put("type_uid", u64::from(c.uid) * 100 + u64::from(c.activity_id));
    e.put("type_name", format!("{}: {}", c.name, c.activity_name));
    e.put("time", r.time.unix_ms());
    e.put("severity_id", severity as u32);
    e.put("severity", format!("{severity:?}"));
    let refused = outcome == Outcome::Noted && r.reason == Some(Reason::Refused);
    let (status_id, status) = match (api, outcome) {
        // A refused attempt: the call failed, and changed nothing.
        _ if refused => (2, "Failure"),
        // What a record about guard itself notes did happen (the agent started, a grant ended).
        (true, _) | (false, Outcome::Allowed | Outcome::Approved | Outcome::Noted) => (1, "Success"),
        (false, Outcome::Blocked | Outcome::Rejected) => (2, "Failure"),
        (false, Outcome::Pending) => (0, "Unknown"),
    };
    e.put("status_id", status_id);
    e.put("status", status);
    e.put_opt("status_detail", r.reason.map(|x| x.name()));
    let control = match outcome {
        Outcome::Allowed => Some((1, "Allowed", 1, "Allowed")),
        Outcome::Approved => Some((1, "Allowed", 8, "Approved")),
        Outcome::Blocked => Some((2, "Denied", 2, "Blocked")),
        Outcome::Rejected => Some((2, "Denied", 25, "Rejected")),
        Outcome::Pending => Some((99, "Held", 14, "Delayed")),
        // No operation was allowed or denied: no action, no disposition (both optional).
        Outcome::Noted => None,
    };
    if let Some((action_id, action, disposition_id, disposition)) = control {
        e.put("action_id", action_id);
        e.put("action", action);
        e.put("disposition_id", disposition_id);
        e.put("disposition", disposition);
    }
    e.put("is_alert", severity >= Severity::High);
    e.put("message", message(r, outcome));
    e.put_opt("duration", r.held_ms);

    let mut profiles = vec!["host", "security_control"];
    // The base event has no ai_operation profile; every class guard maps to does (in 1.9).
    let ai_ok = v.has_ai_and_integrity() && c.uid != 0;
    let ai = ai_ok.then(|| ai_agent(r)).flatten();
    let context = ai_ok.then(|| message_context(r)).flatten();
    let attested = attestation.filter(|_| v.has_ai_and_integrity());
    if ai.is_some() || context.is_some() {
        profiles.push("ai_operation");
    }
    if attested.is_some() {
        profiles.push("record_integrity");
    }
    e.put("metadata", metadata(r, v, &profiles));
    e.put("device", json!({"hostname": r.host, "type_id": 0, "type": "Unknown"}));

    let actor_process = actor_process(r, c);
    if api {
        let approver = r.approver.as_deref().filter(|_| r.kind != RecordKind::Request);
        let actor = match approver {
            Some(a) => json!({"user": {"name": a}}),
            None => json!({"app_name": if r.kind == RecordKind::Request { "guard-agent" } else { "guard-server" }}),
        };
        e.put("actor", actor);
        let operation = match r.kind {
            RecordKind::Request => "request.create",
            RecordKind::Review => "request.review",
            _ => "request.decide",
        };
        e.put("api", json!({"operation": operation, "service": {"name": "guard-server"}}));
        e.put(
            "src_endpoint",
            match approver {
                Some(a) => json!({"name": a}),
                None => json!({"hostname": r.host}),
            },
        );
    } else {
        let mut actor = Obj::default();
        match r.kind {
            // A grant is made by its approver, and ended by guard-server.
            RecordKind::Grant => match r.approver.as_deref().filter(|_| outcome != Outcome::Noted) {
                Some(a) => actor.put("user", json!({"name": a})),
                None => actor.put("app_name", "guard-server"),
            },
            _ => {
                actor.put_opt("process", actor_process);
                actor.put_opt("user", user(r));
            }
        }
        if actor.0.is_empty() {
            actor.put("app_name", "guard-agent");
        }
        e.put("actor", Value::Object(actor.0));
        object(&mut e, r, c, v);
    }

    if let Some(p) = &r.policy {
        e.put("policy", json!({"name": p}));
    }
    if let Some(rule) = &r.rule {
        let mut fr = Obj::default();
        fr.put("name", rule.as_str());
        fr.put_opt("type", r.action.map(|a| format!("{a:?}").to_lowercase()));
        e.put("firewall_rule", Value::Object(fr.0));
    }
    if let Some(a) = authorization(r, outcome) {
        e.put("authorizations", json!([a]));
    }
    e.put_opt("ai_agent", ai);
    e.put_opt("message_context", context);
    if let Some(a) = attested {
        e.put("attestation_list", json!([attestation_object(a)]));
    }
    e.put("unmapped", json!({"guard": guard_fields(r)}));
    Value::Object(e.0)
}

/// The class-specific object: the file, the peer, the program, the kernel object.
fn object(e: &mut Obj, r: &AuditRecord, c: Class, v: OcsfVersion) {
    let object = r.object.as_deref().unwrap_or("");
    match c.uid {
        1007 => {
            let target = match r.hook {
                Some(Hook::BprmCheckSecurity) => {
                    // The record's exe/argv are the program being executed.
                    let program = r.exe.as_deref().unwrap_or(object);
                    let mut p = Obj::default();
                    p.put_opt("pid", r.pid);
                    p.put_opt("tid", r.tid);
                    if r.pid.is_none() {
                        // OCSF needs a pid, uid or cpid; a record without a pid has only the
                        // program to name the process by.
                        p.put("uid", program);
                    }
                    p.put("file", file_object(program, 1));
                    p.put("name", base_name(program));
                    if !r.argv.is_empty() {
                        p.put("cmd_line", command_line(&r.argv));
                    }
                    p.put_opt("user", user(r));
                    Value::Object(p.0)
                }
                Some(Hook::UringOverrideCreds) => actor_process(r, c).unwrap_or_else(|| json!({"uid": object})),
                _ => target_process(object),
            };
            e.put("process", target);
        }
        1001 => {
            let type_id = match r.hook {
                Some(
                    Hook::PathMkdir
                    | Hook::PathRmdir
                    | Hook::PathChroot
                    | Hook::SbPivotroot
                    | Hook::SbMount
                    | Hook::MoveMount
                    | Hook::SbUmount,
                ) => 2,
                Some(Hook::PathSymlink) => 7,
                _ => 0,
            };
            e.put("file", file_object(object, type_id));
        }
        4001 => {
            let dst = match Destination::of(r) {
                Some(Destination::Inet { ip, port }) => json!({"ip": ip, "port": port}),
                Some(Destination::Unix(path)) => json!({"name": path}),
                None => json!({"name": object}),
            };
            e.put("dst_endpoint", dst);
        }
        1002 => e.put("driver", json!({"file": file_object(object, 1)})),
        1003 => {
            let kind = match r.hook {
                Some(Hook::Capable) => "capability",
                Some(Hook::UsernsCreate) => "user namespace",
                Some(Hook::UringSqpoll) => "io_uring sqpoll thread",
                _ => "bpf map",
            };
            e.put("kernel", json!({"name": object, "type_id": 99, "type": kind}));
        }
        1005 => e.put("module", json!({"file": file_object(object, 1), "load_type_id": 4, "load_type": "Mapped"})),
        1008 => {
            let (provider, log) = match (r.kind, r.hook) {
                (RecordKind::Checkpoint, _) => {
                    let server = r.checkpoint.as_ref().is_some_and(|c| c.chain == crate::chain::SERVER_CHAIN);
                    (if server { "guard-server" } else { "guard-agent" }, "audit chain")
                }
                (_, Some(Hook::RingBuffer)) => ("guard-agent", "kernel ring buffer"),
                _ => ("guard-agent", "audit spool"),
            };
            e.put("log_provider", provider);
            e.put("log_name", log);
            e.put_opt("count", r.lost);
        }
        3004 => {
            let mut entity = Obj::default();
            if r.kind == RecordKind::Policy {
                // `comment` holds the hash a changed policy had: the entity as it was, and
                // `updated_entity` as it is now.
                let name = r.policy.as_deref().unwrap_or("unknown");
                let policy = |hash: &str| json!({"name": name, "uid": hash});
                entity.put("type", "policy");
                entity.put("name", name);
                match &r.comment {
                    Some(before) => {
                        entity.put("uid", before.as_str());
                        entity.put("policy", policy(before));
                        // 1.5 has no `updated_entity`: the new hash is in `unmapped.guard.object`.
                        if v.has_updated_entity() {
                            e.put(
                                "updated_entity",
                                json!({"type": "policy", "name": name, "uid": object, "policy": policy(object)}),
                            );
                        }
                    }
                    None => {
                        entity.put("uid", object);
                        entity.put("policy", policy(object));
                    }
                }
            } else {
                // A grant: what it lets the tree do again without asking.
                entity.put("type", "grant");
                entity.put("name", format!("{} {object}", r.hook.map(|h| h.name()).unwrap_or("operation")));
                entity.put_opt("uid", r.request_id.as_deref());
                let mut scope = Obj::default();
                scope.put_opt("tree_id", r.tree_id.as_deref());
                scope.put_opt("hook", r.hook.map(|h| h.name()));
                scope.put("object", object);
                scope.put_opt("access", r.access.as_deref());
                if !r.argv.is_empty() {
                    scope.put("argv", json!(r.argv));
                }
                scope.put_opt("seconds", r.grant_seconds);
                entity.put("data", Value::Object(scope.0));
                e.put_opt("comment", r.comment.as_deref());
            }
            e.put("entity", Value::Object(entity.0));
        }
        6002 => {
            e.put("app", json!({"name": "guard-agent", "vendor_name": "guard"}));
        }
        _ => {}
    }
}

/// The acting process. For an exec the record's exe/argv are the new program, so the actor
/// has only its ids.
fn actor_process(r: &AuditRecord, c: Class) -> Option<Value> {
    let mut p = Obj::default();
    p.put_opt("pid", r.pid);
    p.put_opt("tid", r.tid);
    if let Some(ppid) = r.ppid {
        p.put("parent_process", json!({"pid": ppid}));
    }
    let exec = c.uid == 1007 && r.hook == Some(Hook::BprmCheckSecurity);
    if !exec {
        if let Some(exe) = &r.exe {
            p.put("file", file_object(exe, 1));
            p.put("name", base_name(exe));
        }
        if !r.argv.is_empty() {
            p.put("cmd_line", command_line(&r.argv));
        }
    }
    p.put_opt("user", user(r));
    // OCSF requires a pid (or uid/cpid) in a process; without one there is no process to name.
    r.pid.is_some().then_some(Value::Object(p.0))
}

/// The process a ptrace, a signal or a fork is aimed at: the object names it "... pid N".
fn target_process(object: &str) -> Value {
    let pid = object.rsplit_once("pid ").and_then(|(_, n)| n.trim().parse::<u32>().ok());
    match pid {
        Some(pid) => json!({"pid": pid, "name": object}),
        None => json!({"uid": object, "name": object}),
    }
}

fn user(r: &AuditRecord) -> Option<Value> {
    let mut u = Obj::default();
    u.put_opt("uid", r.uid.map(|u| u.to_string()));
    u.put_opt("name", r.user.as_deref());
    (!u.0.is_empty()).then_some(Value::Object(u.0))
}

fn file_object(path: &str, type_id: u32) -> Value {
    let type_name = match type_id {
        1 => "Regular File",
        2 => "Folder",
        7 => "Symbolic Link",
        _ => "Unknown",
    };
    json!({"path": path, "name": base_name(path), "type_id": type_id, "type": type_name})
}

fn metadata(r: &AuditRecord, v: OcsfVersion, profiles: &[&str]) -> Value {
    let mut m = Obj::default();
    m.put("version", v.schema_version());
    m.put("product", json!({"name": "guard", "vendor_name": "guard", "version": env!("CARGO_PKG_VERSION")}));
    // A sealed record is named by its place in its chain (host/stream/seq), which is unique
    // and stable; any other by the first 128 bits of the SHA-256 of its JSON.
    match &r.chain {
        Some(link) => m.put("uid", format!("{}/{}", crate::chain::stream_chain(&r.host, &link.stream), link.seq)),
        None => {
            let digest = Sha256::digest(r.to_json().as_bytes());
            m.put("uid", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>());
        }
    }
    m.put_opt("correlation_uid", r.request_id.as_deref());
    m.put("event_code", event_name(r));
    m.put("log_name", "guard audit");
    m.put("profiles", profiles);
    Value::Object(m.0)
}

/// The watched tree's AI agent: named by the policy its selector chose, one instance per tree.
fn ai_agent(r: &AuditRecord) -> Option<Value> {
    if r.policy.is_none() && r.tree_id.is_none() {
        return None;
    }
    let mut a = Obj::default();
    a.put("name", r.policy.as_deref().unwrap_or("unknown"));
    a.put_opt("instance_uid", r.tree_id.as_deref());
    Some(Value::Object(a.0))
}

/// The tool call the agent said it was making.
fn message_context(r: &AuditRecord) -> Option<Value> {
    let s = r.stated_reason.as_ref().filter(|s| !s.tool.is_empty())?;
    let mut m = Obj::default();
    m.put("service", json!({"name": s.tool}));
    if !s.call_id.is_empty() {
        m.put("uid", s.call_id.as_str());
    }
    if !s.session.is_empty() {
        m.put("name", s.session.as_str());
    }
    m.put("ai_role_id", 3);
    m.put("ai_role", "Tool");
    Some(Value::Object(m.0))
}

fn authorization(r: &AuditRecord, outcome: Outcome) -> Option<Value> {
    // A note (a grant ending, a refused attempt) authorizes nothing.
    let approver = r.approver.as_deref().filter(|_| outcome != Outcome::Noted)?;
    let mut decision = format!("{} by {approver}", outcome.name());
    if let Some(s) = r.grant_seconds.filter(|s| *s > 0) {
        decision.push_str(&format!(" for {s} s"));
    }
    let mut a = Obj::default();
    a.put("decision", decision);
    if let Some(p) = &r.policy {
        a.put("policy", json!({"name": p}));
    }
    Some(Value::Object(a.0))
}

fn attestation_object(a: &Attestation) -> Value {
    let fingerprint = |hex: &str| json!({"algorithm_id": 3, "algorithm": "SHA-256", "value": hex});
    let mut o = Obj::default();
    o.put("uid", a.uid.as_str());
    o.put("chain_uid", a.chain_uid.as_str());
    o.put("fingerprint", fingerprint(&a.sha256));
    o.put_opt("authority_uid", a.authority_uid.as_deref());
    if let Some((uid, sha)) = &a.prev {
        o.put("prev_event", json!({"uid": uid, "fingerprint": fingerprint(sha)}));
    }
    Value::Object(o.0)
}

/// What OCSF has no attribute for, under guard's own names.
fn guard_fields(r: &AuditRecord) -> Value {
    let mut g = Obj::default();
    g.put("kind", kind_name(r.kind));
    g.put_opt("decision", r.decision.map(|d| format!("{d:?}").to_lowercase()));
    g.put_opt("reason", r.reason.map(|x| x.name()));
    g.put_opt("action", r.action.map(|a| format!("{a:?}").to_lowercase()));
    g.put_opt("hook", r.hook.map(|h| h.name()));
    g.put_opt("object", r.object.as_deref());
    g.put_opt("access", r.access.as_deref());
    g.put_opt("tree_id", r.tree_id.as_deref());
    g.put_opt("request_id", r.request_id.as_deref());
    g.put_opt("state", r.state.as_deref());
    g.put_opt("approver", r.approver.as_deref());
    g.put_opt("comment", r.comment.as_deref());
    g.put_opt("grant_seconds", r.grant_seconds);
    g.put_opt("verified_by", r.verified_by.as_deref());
    g.put_opt("held_ms", r.held_ms);
    g.put_opt("lost", r.lost);
    if let Some(s) = &r.stated_reason {
        g.put("stated_reason", serde_json::to_value(s).expect("a stated reason serialises"));
    }
    if let Some(c) = &r.checkpoint {
        g.put("checkpoint", serde_json::to_value(c).expect("a signed head serialises"));
    }
    Value::Object(g.0)
}

/// One line a person can read: what, on what, and why.
fn message(r: &AuditRecord, outcome: Outcome) -> String {
    if outcome == Outcome::Noted {
        // What is noted, on what, and the note itself: "grant file_open /etc/x: grant G ended:
        // expired", "policy sha256:...: sha256:<before>", "agent.start".
        let mut m = kind_name(r.kind).to_string();
        if let Some(h) = r.hook {
            m.push_str(&format!(" {h}"));
        }
        if let Some(o) = &r.object {
            m.push(' ');
            m.push_str(o);
        }
        if let Some(c) = r.comment.as_deref().filter(|c| !c.is_empty()) {
            m.push_str(&format!(": {c}"));
        }
        return m;
    }
    let what = r.hook.map(|h| h.name()).unwrap_or(kind_name(r.kind));
    let mut m = format!("{} {what}", outcome.name());
    if let Some(o) = &r.object {
        m.push(' ');
        m.push_str(o);
    }
    if let Some(reason) = r.reason {
        m.push_str(&format!(" ({reason}"));
        if let Some(rule) = &r.rule {
            m.push_str(&format!(", rule {rule:?}"));
        }
        m.push(')');
    }
    m
}

/// A JSON object that leaves out what is None.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn put(&mut self, k: &str, v: impl Into<Value>) {
        self.0.insert(k.to_string(), v.into());
    }

    fn put_opt<T: Into<Value>>(&mut self, k: &str, v: Option<T>) {
        if let Some(v) = v {
            self.put(k, v);
        }
    }
}
