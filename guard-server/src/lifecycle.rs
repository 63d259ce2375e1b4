//! The rules of a request's life, as pure functions: what a valid submission is, how a new
//! request starts (timeout, approvals, auto rule), and what a review may do. The store runs
//! `judge_review` inside its transaction, on the row as it is under the lock.
use crate::config::{AutoDecision, Policy, PolicyChanged};
use crate::error::{GuardError, GuardResult};
use crate::store::{Decision, NewRequest, ReviewEffect};
use guard_api::{Hook, Timestamp};
use guard_proto::v1::{Request, ReviewRequest, State, SubmitRequest};
use std::collections::HashMap;
use tonic_types::FieldViolation;

/// Whole gRPC message, enforced by tonic before decoding.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
pub const MAX_OBJECT_BYTES: usize = 4096;
pub const MAX_ANCESTRY: usize = 64;
pub use guard_proto::limits::{MAX_ARGV, MAX_ARG_BYTES};
/// Paths (exe, cwd) and free text (stated reason, comments).
pub const MAX_TEXT_BYTES: usize = 4096;
/// Short names: hook, rule, policy, access, user, tree id, hold key.
pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_RECORDS_PER_CALL: usize = 1000;
/// A grant longer than a day is a policy rule, not a review.
pub const MAX_GRANT_SECONDS: u64 = 24 * 60 * 60;

/// Collects every problem of a message at once, so the caller fixes them in one go.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Length and content of one string field. NUL is refused because PostgreSQL's TEXT
    /// cannot hold it (and no path or name contains one).
    pub fn text(&mut self, field: &str, value: &str, max: usize, required: bool) {
        if required && value.is_empty() {
            self.add(field, "required");
        } else if value.len() > max {
            self.add(field, format!("{} bytes, at most {max}", value.len()));
        } else if value.contains('\0') {
            self.add(field, "contains a NUL byte");
        }
    }

    pub fn into_result(self) -> GuardResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(GuardError::InvalidArgument(self.0))
        }
    }
}

pub fn validate_submit(req: &SubmitRequest) -> GuardResult<()> {
    let mut v = Violations::default();
    v.text("hold_key", &req.hold_key, MAX_NAME_BYTES, false);
    let Some(op) = &req.operation else {
        v.add("operation", "required");
        return v.into_result();
    };
    v.text("operation.hook", &op.hook, MAX_NAME_BYTES, true);
    if !op.hook.is_empty() && operation_hook(&op.hook).is_none() {
        v.add("operation.hook", format!("unknown hook {:?}: one of {}", op.hook, operation_hook_names()));
    }
    v.text("operation.object", &op.object, MAX_OBJECT_BYTES, true);
    for (field, value) in [
        ("operation.access", &op.access),
        ("operation.rule", &op.rule),
        ("operation.policy", &op.policy),
        ("operation.user", &op.user),
        ("operation.tree_id", &op.tree_id),
        ("operation.policy_hash", &op.policy_hash),
    ] {
        v.text(field, value, MAX_NAME_BYTES, false);
    }
    // Separation of duties keys on the tree's owner: without one it cannot be checked, and a
    // request nobody can be refused on is not created.
    v.text("operation.owner", &op.owner, MAX_NAME_BYTES, true);
    if !matches!(op.owner_source.as_str(), "" | OWNER_LOGINUID | OWNER_STARTER) {
        v.add(
            "operation.owner_source",
            format!("unknown source {:?}: one of {OWNER_LOGINUID}, {OWNER_STARTER}", op.owner_source),
        );
    }
    v.text("operation.cwd", &op.cwd, MAX_TEXT_BYTES, false);
    if op.ancestry.len() > MAX_ANCESTRY {
        v.add("operation.ancestry", format!("{} entries, at most {MAX_ANCESTRY}", op.ancestry.len()));
    } else {
        for (i, p) in op.ancestry.iter().enumerate() {
            v.text(&format!("operation.ancestry[{i}].exe"), &p.exe, MAX_TEXT_BYTES, false);
            if p.argv.len() > MAX_ARGV {
                v.add(format!("operation.ancestry[{i}].argv"), format!("{} entries, at most {MAX_ARGV}", p.argv.len()));
                continue;
            }
            for (j, arg) in p.argv.iter().enumerate() {
                v.text(&format!("operation.ancestry[{i}].argv[{j}]"), arg, MAX_ARG_BYTES, false);
            }
        }
    }
    if let Some(s) = &op.stated_reason {
        v.text("operation.stated_reason.tool", &s.tool, MAX_NAME_BYTES, false);
        v.text("operation.stated_reason.call_id", &s.call_id, MAX_NAME_BYTES, false);
        v.text("operation.stated_reason.session", &s.session, MAX_NAME_BYTES, false);
        v.text("operation.stated_reason.reason", &s.reason, MAX_TEXT_BYTES, false);
    }
    v.into_result()
}

/// The kernel hook named `name`, if it is one an operation can be held at (`ring_buffer` names
/// the agent's own reading of the kernel's events, not a hook).
pub fn operation_hook(name: &str) -> Option<Hook> {
    Hook::from_name(name).filter(|h| *h != Hook::RingBuffer)
}

fn operation_hook_names() -> String {
    Hook::ALL.iter().filter(|h| **h != Hook::RingBuffer).map(|h| h.name()).collect::<Vec<_>>().join(", ")
}

/// How long the server keeps a request pending: the agent's hold time, or the default,
/// never past `max_timeout`.
pub fn timeout_ms(policy: &Policy, timeout_seconds: u64) -> i64 {
    let asked =
        if timeout_seconds == 0 { policy.default_timeout } else { std::time::Duration::from_secs(timeout_seconds) };
    i64::try_from(asked.min(policy.max_timeout).as_millis()).unwrap_or(i64::MAX)
}

/// `Operation.owner_source`: the audit login uid of the tree's root.
pub const OWNER_LOGINUID: &str = "loginuid";
/// `Operation.owner_source`: the uid that started the tree (no login uid was set).
pub const OWNER_STARTER: &str = "starter";
/// Request flag: the policy hash is not the one the host registered.
pub const FLAG_POLICY_CHANGED: &str = "policy-changed";
/// Request flag: some of argv was replaced by the redaction patterns.
pub const FLAG_ARGV_REDACTED: &str = "argv-redacted";

/// What the host registered: its policies' hashes by name; None when it never registered.
pub type Registered<'a> = Option<&'a HashMap<String, String>>;

/// Why the request's policy cannot be trusted to be the registered one, if it cannot.
fn policy_mismatch(registered: Registered<'_>, host: &str, policy: &str, hash: &str) -> Option<String> {
    let Some(hashes) = registered else {
        return Some(format!("host {host} has not registered its policies"));
    };
    match hashes.get(policy) {
        None => Some(format!("host {host} registered no policy named {policy:?}")),
        Some(_) if hash.is_empty() => Some(format!("the request carries no hash of policy {policy:?}")),
        Some(h) if h != hash => {
            Some(format!("policy {policy:?} is {} now; {} when host {host} registered", short(hash), short(h)))
        }
        Some(_) => None,
    }
}

fn short(hash: &str) -> &str {
    hash.get(..hash.len().min("sha256:".len() + 12)).unwrap_or(hash)
}

/// The request a (validated) submission creates. The server picks the approval rules by the
/// certificate's host and the reported policy and rule, trusting the latter two only while
/// the policy's hash is the one the host registered; argv is redacted before anything is
/// stored or shown.
pub fn plan_submit(
    policy: &Policy,
    host: &str,
    id: String,
    req: SubmitRequest,
    now_ms: i64,
    registered: Registered<'_>,
) -> GuardResult<NewRequest> {
    let mut operation = req.operation.unwrap_or_default();
    let mut flags = Vec::new();
    let mismatch = policy_mismatch(registered, host, &operation.policy, &operation.policy_hash);
    if let Some(why) = &mismatch {
        match (policy.policy_changed, registered.is_some()) {
            // Not registered yet (the agent registers in the background as it starts): the
            // agent retries until it has.
            (PolicyChanged::Refuse, false) => {
                return Err(GuardError::precondition("UNREGISTERED", format!("host/{host}"), why.clone()))
            }
            (PolicyChanged::Refuse, true) => {
                return Err(GuardError::PermissionDenied(format!(
                    "{why}: refused (policy_changed = \"refuse\" in the server config)"
                )))
            }
            (PolicyChanged::Flag, _) => flags.push(format!("{FLAG_POLICY_CHANGED}: {why}")),
        }
    }
    let mut redacted = false;
    for p in &mut operation.ancestry {
        if policy.redact.redact(&mut p.argv) {
            p.argv_redacted = true;
            redacted = true;
        }
    }
    if redacted {
        flags.push(FLAG_ARGV_REDACTED.to_string());
    }
    let (approvals_required, eligible_approvers) = match policy.requirement(host, &operation.policy, &operation.rule) {
        Some(r) => (r.approvals, r.approvers.clone()),
        None => (1, Vec::new()),
    };
    // A rule name from a policy that is not the registered one decides nothing on its own.
    let auto = policy.auto(host, &operation.policy, &operation.rule).filter(|_| mismatch.is_none()).map(|a| Decision {
        state: match a.decision {
            AutoDecision::Approve => State::Approved,
            AutoDecision::Deny => State::Denied,
        },
        reason: "auto".into(),
        decided_by: format!("auto:{}", operation.rule),
        comment: String::new(),
        decided_ms: now_ms,
    });
    Ok(NewRequest {
        id,
        host: host.to_string(),
        hold_key: Some(req.hold_key).filter(|k| !k.is_empty()),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(timeout_ms(policy, req.timeout_seconds)),
        approvals_required,
        eligible_approvers,
        auto,
        operation,
        flags,
    })
}

/// Checks of a review that need no database: run before the transaction.
pub fn validate_review(req: &ReviewRequest) -> GuardResult<()> {
    let mut v = Violations::default();
    v.text("comment", &req.comment, MAX_TEXT_BYTES, false);
    if !req.approve && req.grant_seconds > 0 {
        v.add("grant_seconds", "a grant goes only with an approval");
    }
    if req.grant_seconds > MAX_GRANT_SECONDS {
        v.add("grant_seconds", format!("at most {MAX_GRANT_SECONDS}"));
    }
    v.into_result()
}

/// What `approver`'s review does to `request` (as it is under the store's lock).
pub fn judge_review(
    policy: &Policy,
    approver: &str,
    review: &ReviewRequest,
    request: &Request,
    now_ms: i64,
) -> GuardResult<ReviewEffect> {
    let state = State::try_from(request.state).unwrap_or(State::Unspecified);
    let subject = format!("request/{}", request.id);
    if state != State::Pending {
        return Err(GuardError::precondition(
            "STATE",
            subject,
            format!("request {} is {}, no longer pending", request.id, state.label()),
        ));
    }
    if request.reviews.iter().any(|r| r.approver == approver) {
        return Err(GuardError::precondition(
            "ALREADY_REVIEWED",
            subject,
            format!("{approver} already reviewed request {}", request.id),
        ));
    }
    may_decide(policy, approver, request)?;
    let op = request.operation.clone().unwrap_or_default();

    if !review.approve {
        return Ok(ReviewEffect {
            decision: Some(decided(State::Denied, "denied", approver, review, now_ms)),
            grant_until_ms: None,
        });
    }
    let mut approvers: Vec<&str> = request.reviews.iter().filter(|r| r.approve).map(|r| r.approver.as_str()).collect();
    approvers.push(approver);
    approvers.sort_unstable();
    approvers.dedup();
    let needed = request.approvals_required.max(1) as usize;
    if approvers.len() < needed {
        return Ok(ReviewEffect { decision: None, grant_until_ms: None });
    }
    // Every approver consented to at most what they granted: the grant is the smallest of
    // theirs (one who approved this request only grants nothing beyond it).
    let grant_seconds = request
        .reviews
        .iter()
        .filter(|r| r.approve)
        .map(|r| r.grant_seconds)
        .chain([review.grant_seconds])
        .min()
        .unwrap_or(0);
    let grant_until_ms = if grant_seconds > 0 {
        if op.tree_id.is_empty() {
            return Err(GuardError::invalid("grant_seconds", "the request has no tree_id to scope a grant to"));
        }
        let ms = i64::try_from(grant_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        Some(now_ms.saturating_add(ms))
    } else {
        None
    };
    Ok(ReviewEffect { decision: Some(decided(State::Approved, "approved", approver, review, now_ms)), grant_until_ms })
}

/// Whether `approver` may decide `request` at all (approve, deny or cancel): they see its
/// host, they are among the eligible approvers of its rule, and the tree is not their own.
/// The tree's owner is the login uid of its root (or whoever started it), so neither sudo in
/// the tree nor the acting uid changes whose it is; the acting user is refused too.
pub fn may_decide(policy: &Policy, approver: &str, request: &Request) -> GuardResult<()> {
    if !policy.sees_host(approver, &request.host) {
        return Err(GuardError::PermissionDenied(format!(
            "{approver} is not assigned to host {} (host groups in the server config)",
            request.host
        )));
    }
    if !request.eligible_approvers.is_empty() && !request.eligible_approvers.iter().any(|a| a == approver) {
        return Err(GuardError::PermissionDenied(format!(
            "{approver} is not among the approvers of rule {:?}: {}",
            request.operation.as_ref().map(|o| o.rule.as_str()).unwrap_or_default(),
            request.eligible_approvers.join(", ")
        )));
    }
    let op = request.operation.clone().unwrap_or_default();
    if op.owner.is_empty() {
        return Err(GuardError::PermissionDenied(format!(
            "request {} names no tree owner, so separation of duties cannot be checked",
            request.id
        )));
    }
    let (owner_uid, uid) = (op.owner_uid.to_string(), op.uid.to_string());
    let own_users = policy.approvers.get(approver).map(|a| a.unix_users.as_slice()).unwrap_or_default();
    let is_own =
        |u: &str| !u.is_empty() && [op.owner.as_str(), owner_uid.as_str(), op.user.as_str(), uid.as_str()].contains(&u);
    let own =
        op.owner == approver || (!op.user.is_empty() && op.user == approver) || own_users.iter().any(|u| is_own(u));
    if own {
        return Err(GuardError::PermissionDenied(format!(
            "request {} comes from a tree owned by {} (uid {}, by {}), acting as {} (uid {}), which is {approver}'s own: \
             another approver must decide it",
            request.id,
            op.owner,
            op.owner_uid,
            if op.owner_source.is_empty() { "?" } else { &op.owner_source },
            op.user,
            op.uid
        )));
    }
    Ok(())
}

fn decided(state: State, reason: &str, approver: &str, review: &ReviewRequest, now_ms: i64) -> Decision {
    Decision {
        state,
        reason: reason.into(),
        decided_by: approver.into(),
        comment: review.comment.clone(),
        decided_ms: now_ms,
    }
}

pub fn is_final(state: i32) -> bool {
    !matches!(State::try_from(state), Ok(State::Pending) | Ok(State::Unspecified) | Err(_))
}

/// Now, in the Unix milliseconds of every time column and message.
pub fn now_ms() -> i64 {
    Timestamp::now().unix_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApproverConfig, AutoRule, Requirement};
    use crate::rules::{Glob, Scope};
    use guard_proto::v1::{Operation, Review};
    use std::time::Duration;

    const NOW: i64 = 1_000_000;
    const HASH_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// alice's own Unix users are `alice` and uid 1000; `prod` needs two of alice, bob, carol.
    fn scope(rule: &str) -> Scope {
        Scope { host: Glob::any(), policy: Glob::any(), rule: Glob::new(rule).unwrap() }
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.approvers.insert(
            "alice".into(),
            ApproverConfig { unix_users: vec!["alice".into(), "1000".into()], host_groups: vec![] },
        );
        p.requires.push(Requirement {
            scope: scope("prod"),
            approvals: 2,
            approvers: vec!["alice".into(), "bob".into(), "carol".into()],
        });
        p.autos.push(AutoRule { scope: scope("auto-ok"), decision: AutoDecision::Approve });
        p
    }

    fn pending(rule: &str, user: &str, uid: u32) -> Request {
        let operation = Operation {
            hook: "bprm_check_security".into(),
            object: "/bin/x".into(),
            rule: rule.into(),
            user: user.into(),
            uid,
            owner: user.into(),
            owner_uid: uid,
            owner_source: OWNER_LOGINUID.into(),
            tree_id: "10-1".into(),
            ..Default::default()
        };
        let submit = SubmitRequest { operation: Some(operation), timeout_seconds: 30, hold_key: String::new() };
        plan_submit(&policy(), "h1", "r1".into(), submit, NOW, None).unwrap().pending()
    }

    fn approve(grant_seconds: u64) -> ReviewRequest {
        ReviewRequest { id: "r1".into(), approve: true, comment: "ok".into(), grant_seconds }
    }

    fn deny() -> ReviewRequest {
        ReviewRequest { id: "r1".into(), approve: false, comment: "no".into(), grant_seconds: 0 }
    }

    fn reviewed_by(request: &mut Request, approver: &str, approve: bool) {
        request.reviews.push(Review { approver: approver.into(), approve, time_ms: NOW, ..Default::default() });
    }

    fn judge(approver: &str, review: &ReviewRequest, request: &Request) -> GuardResult<ReviewEffect> {
        judge_review(&policy(), approver, review, request, NOW + 10)
    }

    fn precondition_kind(result: GuardResult<ReviewEffect>) -> &'static str {
        match result {
            Err(GuardError::FailedPrecondition { kind, .. }) => kind,
            other => panic!("want FAILED_PRECONDITION, got {other:?}"),
        }
    }

    #[test]
    fn one_approval_decides_an_ordinary_request() {
        let effect = judge("bob", &approve(0), &pending("r", "dev", 2000)).unwrap();
        let decision = effect.decision.expect("decided");
        assert_eq!((decision.state, decision.reason.as_str()), (State::Approved, "approved"));
        assert_eq!((decision.decided_by.as_str(), decision.comment.as_str()), ("bob", "ok"));
        assert_eq!(decision.decided_ms, NOW + 10);
        assert_eq!(effect.grant_until_ms, None);
    }

    #[test]
    fn nobody_approves_a_tree_running_as_their_own_user() {
        // By the approver's name as the Unix user, by a listed user name, by a listed uid.
        for (user, uid) in [("bob", 2000), ("alice", 2000), ("someone", 1000)] {
            let approver = if user == "bob" { "bob" } else { "alice" };
            let result = judge(approver, &approve(0), &pending("r", user, uid));
            assert!(matches!(result, Err(GuardError::PermissionDenied(_))), "{approver} on {user}/{uid}: {result:?}");
        }
        // Someone else may.
        assert!(judge("carol", &approve(0), &pending("r", "alice", 1000)).unwrap().decision.is_some());
    }

    #[test]
    fn n_of_m_waits_for_distinct_eligible_approvers() {
        let mut request = pending("prod", "dev", 2000);
        assert_eq!(request.approvals_required, 2);
        let first = judge("alice", &approve(0), &request).unwrap();
        assert!(first.decision.is_none(), "one of two approvals decides nothing");
        reviewed_by(&mut request, "alice", true);
        let second = judge("bob", &approve(0), &request).unwrap();
        assert_eq!(second.decision.unwrap().state, State::Approved);
        // Outside the rule's approvers.
        let result = judge("mallory", &approve(0), &request);
        assert!(matches!(result, Err(GuardError::PermissionDenied(_))), "{result:?}");
    }

    #[test]
    fn a_deny_decides_at_once_even_under_n_of_m() {
        let mut request = pending("prod", "dev", 2000);
        reviewed_by(&mut request, "alice", true);
        let decision = judge("bob", &deny(), &request).unwrap().decision.expect("decided");
        assert_eq!((decision.state, decision.reason.as_str()), (State::Denied, "denied"));
    }

    #[test]
    fn a_decided_request_takes_no_review() {
        for state in [State::Approved, State::Denied, State::Expired, State::Cancelled] {
            let mut request = pending("r", "dev", 2000);
            request.state = state as i32;
            assert_eq!(precondition_kind(judge("bob", &approve(0), &request)), "STATE", "{state:?}");
        }
    }

    #[test]
    fn an_approver_reviews_once() {
        let mut request = pending("prod", "dev", 2000);
        reviewed_by(&mut request, "alice", true);
        assert_eq!(precondition_kind(judge("alice", &approve(0), &request)), "ALREADY_REVIEWED");
    }

    #[test]
    fn a_grant_runs_from_the_decision_and_needs_a_tree() {
        let effect = judge("bob", &approve(60), &pending("r", "dev", 2000)).unwrap();
        assert_eq!(effect.grant_until_ms, Some(NOW + 10 + 60_000));
        let mut no_tree = pending("r", "dev", 2000);
        if let Some(op) = no_tree.operation.as_mut() {
            op.tree_id.clear();
        }
        assert!(matches!(judge("bob", &approve(60), &no_tree), Err(GuardError::InvalidArgument(_))));
        // A grant goes only with an approval, and lasts at most a day.
        assert!(validate_review(&ReviewRequest { grant_seconds: 60, ..deny() }).is_err());
        assert!(validate_review(&approve(MAX_GRANT_SECONDS + 1)).is_err());
        assert!(validate_review(&approve(MAX_GRANT_SECONDS)).is_ok());
    }

    #[test]
    fn expiry_is_the_agents_hold_time_within_the_servers_bounds() {
        let mut p = policy();
        p.default_timeout = Duration::from_secs(300);
        p.max_timeout = Duration::from_secs(3600);
        assert_eq!(timeout_ms(&p, 30), 30_000);
        assert_eq!(timeout_ms(&p, 0), 300_000, "0: the default");
        assert_eq!(timeout_ms(&p, 86_400), 3_600_000, "never past max_timeout");
        let request = pending("r", "dev", 2000);
        assert_eq!(request.expires_ms - request.created_ms, 30_000);
        assert!(!is_final(request.state));
        assert!(is_final(State::Expired as i32));
    }

    #[test]
    fn auto_rules_decide_at_creation() {
        let submit = SubmitRequest {
            operation: Some(Operation {
                hook: "file_open".into(),
                rule: "auto-ok".into(),
                policy: "p".into(),
                policy_hash: HASH_A.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let hashes = HashMap::from([("p".to_string(), HASH_A.to_string())]);
        let auto =
            plan_submit(&policy(), "h1", "r2".into(), submit, NOW, Some(&hashes)).unwrap().auto.expect("auto decision");
        assert_eq!(
            (auto.state, auto.reason.as_str(), auto.decided_by.as_str()),
            (State::Approved, "auto", "auto:auto-ok")
        );
    }

    #[test]
    fn the_hook_is_a_kernel_hook_name() {
        let submit = |hook: &str| SubmitRequest {
            operation: Some(Operation {
                hook: hook.into(),
                object: "/x".into(),
                owner: "dev".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_submit(&submit("file_open")).is_ok());
        for bad in ["exec", "open", "ring_buffer"] {
            match validate_submit(&submit(bad)) {
                Err(GuardError::InvalidArgument(v)) => {
                    assert_eq!(v[0].field, "operation.hook");
                    assert!(v[0].description.contains("bprm_check_security"), "{:?}", v[0]);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_owner_decides_whose_tree_it_is_not_the_acting_uid() {
        // The tree runs as root (acting uid 0), but alice logged in and started it: hers.
        let mut request = pending("r", "root", 0);
        if let Some(op) = request.operation.as_mut() {
            (op.owner, op.owner_uid) = ("alice".into(), 1000);
        }
        assert!(matches!(judge("alice", &approve(0), &request), Err(GuardError::PermissionDenied(_))));
        // Listed by uid only: the owner's uid is enough.
        if let Some(op) = request.operation.as_mut() {
            op.owner = "someone-else-on-this-host".into();
        }
        assert!(matches!(judge("alice", &approve(0), &request), Err(GuardError::PermissionDenied(_))));
        // bob may.
        assert!(judge("bob", &approve(0), &request).unwrap().decision.is_some());
        // No owner: nobody may decide, as separation of duties cannot be checked.
        if let Some(op) = request.operation.as_mut() {
            op.owner.clear();
        }
        assert!(matches!(judge("bob", &approve(0), &request), Err(GuardError::PermissionDenied(_))));
        let submit = SubmitRequest {
            operation: Some(Operation { hook: "file_open".into(), object: "/x".into(), ..Default::default() }),
            ..Default::default()
        };
        match validate_submit(&submit) {
            Err(GuardError::InvalidArgument(v)) => assert_eq!(v[0].field, "operation.owner"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn n_of_m_grants_the_smallest_any_approver_granted() {
        let mut request = pending("prod", "dev", 2000);
        request.reviews.push(Review { approver: "bob".into(), approve: true, grant_seconds: 60, ..Default::default() });
        let effect = judge("carol", &approve(3600), &request).unwrap();
        assert_eq!(effect.grant_until_ms, Some(NOW + 10 + 60_000), "bob's minute, not carol's hour");
        // One approver who approved this request only: no grant at all.
        request.reviews[0].grant_seconds = 0;
        assert_eq!(judge("carol", &approve(3600), &request).unwrap().grant_until_ms, None);
    }

    #[test]
    fn rules_match_host_policy_and_rule_in_file_order() {
        let mut p = Policy::default();
        p.requires.push(Requirement {
            scope: Scope {
                host: Glob::new("prod-*").unwrap(),
                policy: Glob::new("coding").unwrap(),
                rule: Glob::new("*").unwrap(),
            },
            approvals: 2,
            approvers: vec!["a".into(), "b".into()],
        });
        p.autos.push(AutoRule { scope: scope("bench-*"), decision: AutoDecision::Approve });
        assert_eq!(p.requirement("prod-db", "coding", "anything").map(|r| r.approvals), Some(2));
        assert!(p.requirement("dev-1", "coding", "anything").is_none());
        assert!(p.requirement("prod-db", "other", "anything").is_none());
        // [[require]] wins over [[auto]] wherever both match.
        assert!(p.auto("prod-db", "coding", "bench-x").is_none());
        assert!(p.auto("dev-1", "coding", "bench-x").is_some());
    }

    #[test]
    fn a_changed_policy_is_flagged_or_refused_and_never_auto_decided() {
        let submit = |hash: &str| SubmitRequest {
            operation: Some(Operation {
                hook: "file_open".into(),
                object: "/x".into(),
                rule: "auto-ok".into(),
                policy: "p".into(),
                policy_hash: hash.into(),
                owner: "dev".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let hashes = HashMap::from([("p".to_string(), HASH_A.to_string())]);
        let same = plan_submit(&policy(), "h1", "r".into(), submit(HASH_A), NOW, Some(&hashes)).unwrap();
        assert!(same.flags.is_empty() && same.auto.is_some());
        let changed = plan_submit(&policy(), "h1", "r".into(), submit(HASH_B), NOW, Some(&hashes)).unwrap();
        assert!(changed.auto.is_none(), "a renamed rule must not reach an [[auto]] approve");
        assert!(changed.flags[0].starts_with("policy-changed: "), "{:?}", changed.flags);
        let mut strict = policy();
        strict.policy_changed = PolicyChanged::Refuse;
        assert!(matches!(
            plan_submit(&strict, "h1", "r".into(), submit(HASH_B), NOW, Some(&hashes)),
            Err(GuardError::PermissionDenied(_))
        ));
        assert!(matches!(
            plan_submit(&strict, "h1", "r".into(), submit(HASH_A), NOW, None),
            Err(GuardError::FailedPrecondition { .. })
        ));
    }
}
