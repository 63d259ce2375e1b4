//! Operation <-> JSON text for the `requests.operation` column. JSON rather than protobuf
//! bytes so that an operator can read and query it with plain SQL.
use guard_proto::v1::{Operation, Process, StatedReason};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct OperationDoc {
    hook: String,
    object: String,
    access: String,
    rule: String,
    policy: String,
    ancestry: Vec<ProcessDoc>,
    cwd: String,
    user: String,
    uid: u32,
    tree_id: String,
    stated_reason: Option<StatedReasonDoc>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct ProcessDoc {
    pid: u32,
    ppid: u32,
    uid: u32,
    exe: String,
    argv: Vec<String>,
    argv_truncated: bool,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct StatedReasonDoc {
    tool: String,
    call_id: String,
    reason: String,
    session: String,
}

pub fn operation_to_json(op: &Operation) -> String {
    let doc = OperationDoc {
        hook: op.hook.clone(),
        object: op.object.clone(),
        access: op.access.clone(),
        rule: op.rule.clone(),
        policy: op.policy.clone(),
        ancestry: op
            .ancestry
            .iter()
            .map(|p| ProcessDoc {
                pid: p.pid,
                ppid: p.ppid,
                uid: p.uid,
                exe: p.exe.clone(),
                argv: p.argv.clone(),
                argv_truncated: p.argv_truncated,
            })
            .collect(),
        cwd: op.cwd.clone(),
        user: op.user.clone(),
        uid: op.uid,
        tree_id: op.tree_id.clone(),
        stated_reason: op.stated_reason.as_ref().map(|s| StatedReasonDoc {
            tool: s.tool.clone(),
            call_id: s.call_id.clone(),
            reason: s.reason.clone(),
            session: s.session.clone(),
        }),
    };
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}

pub fn operation_from_json(text: &str) -> Result<Operation, serde_json::Error> {
    let doc: OperationDoc = serde_json::from_str(text)?;
    Ok(Operation {
        hook: doc.hook,
        object: doc.object,
        access: doc.access,
        rule: doc.rule,
        policy: doc.policy,
        ancestry: doc
            .ancestry
            .into_iter()
            .map(|p| Process {
                pid: p.pid,
                ppid: p.ppid,
                uid: p.uid,
                exe: p.exe,
                argv: p.argv,
                argv_truncated: p.argv_truncated,
            })
            .collect(),
        cwd: doc.cwd,
        user: doc.user,
        uid: doc.uid,
        tree_id: doc.tree_id,
        stated_reason: doc.stated_reason.map(|s| StatedReason {
            tool: s.tool,
            call_id: s.call_id,
            reason: s.reason,
            session: s.session,
        }),
    })
}

pub fn state_label(state: guard_proto::v1::State) -> &'static str {
    state.label()
}

pub fn state_from_label(label: &str) -> Option<guard_proto::v1::State> {
    use guard_proto::v1::State;
    [State::Pending, State::Approved, State::Denied, State::Expired, State::Cancelled]
        .into_iter()
        .find(|s| s.label() == label)
}
