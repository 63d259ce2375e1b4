//! What an approver can do, whatever the channel they came through: gRPC with a client
//! certificate (`review.rs`), the web console, or a chat card. Each channel proves who the
//! approver is its own way and says how (`Verified`); every server rule (host groups,
//! eligibility, separation of duties, N-of-M, grants) is applied here, once, for all of them,
//! and every refusal is recorded.
use super::{refuse, Shared};
use crate::audit::Attempt;
use crate::error::GuardError;
use crate::ids;
use crate::lifecycle::{self, now_ms, MAX_NAME_BYTES};
use crate::store::{Decision, Finish, ListFilter};
use guard_proto::v1::{Request, Review, ReviewRequest, State};

/// How the approver proved who they are for one review; the review's audit record says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// guardctl over mTLS: the approver certificate's CN.
    ClientCertificate,
    /// The console's session, opened with a password.
    Password,
    /// The console's session, and a fresh user-verified passkey assertion for this request.
    PasswordAndPasskey,
    /// The console's session, opened through the configured OpenID provider (`[console.oidc]`).
    Oidc,
    /// That session, and a fresh user-verified passkey assertion for this request.
    OidcAndPasskey,
    /// A Slack interaction whose signature (the app's signing secret) was checked.
    Slack,
    /// A Microsoft Teams action whose token was checked.
    Teams,
    /// The generic JSON webhook's callback, whose signature was checked.
    Webhook,
}

impl Verified {
    /// Whether a fresh passkey assertion for this review is part of it.
    pub fn with_passkey(self) -> bool {
        matches!(self, Verified::PasswordAndPasskey | Verified::OidcAndPasskey)
    }

    pub fn label(self) -> &'static str {
        match self {
            Verified::ClientCertificate => "client certificate",
            Verified::Password => "password",
            Verified::PasswordAndPasskey => "password+passkey",
            Verified::Oidc => "oidc",
            Verified::OidcAndPasskey => "oidc+passkey",
            Verified::Slack => "slack",
            Verified::Teams => "teams",
            Verified::Webhook => "webhook",
        }
    }
}

/// PERMISSION_DENIED unless `approver` is assigned to `host` (host groups).
pub fn check_sees(shared: &Shared, approver: &str, host: &str) -> Result<(), GuardError> {
    if shared.policy.sees_host(approver, host) {
        Ok(())
    } else {
        Err(GuardError::PermissionDenied(format!(
            "{approver} is not assigned to host {host} (host groups in the server config)"
        )))
    }
}

/// The requests in `states` (all states when empty) on `host` (every host when None) that
/// `approver` may see, newest first, at most `limit` (0: the store's default).
pub async fn list(
    shared: &Shared,
    approver: &str,
    states: Vec<State>,
    host: Option<String>,
    limit: u32,
) -> Result<Vec<Request>, GuardError> {
    if let Some(host) = &host {
        let mut v = lifecycle::Violations::default();
        v.text("host", host, MAX_NAME_BYTES, false);
        v.into_result()?;
        check_sees(shared, approver, host)?;
    }
    let filter = ListFilter { states, host, limit };
    let mut requests = shared.store.list(&filter).await?;
    requests.retain(|req| shared.policy.sees_host(approver, &req.host));
    Ok(requests)
}

/// Request `id`, if `approver` may see it.
pub async fn get(shared: &Shared, approver: &str, id: &str) -> Result<Request, GuardError> {
    if !ids::looks_like_request_id(id) {
        return Err(not_found(id));
    }
    let found = shared.store.get(id, now_ms()).await?.ok_or_else(|| not_found(id))?;
    check_sees(shared, approver, &found.host)?;
    Ok(found)
}

/// `approver`'s review of request `input.id`, verified as `verified` says. A refusal (self
/// approval, not eligible, already decided, ...) is recorded in the audit trail and returned.
pub async fn review(
    shared: &Shared,
    approver: &str,
    verified: Verified,
    input: ReviewRequest,
) -> Result<Request, GuardError> {
    if !ids::looks_like_request_id(&input.id) {
        return Err(not_found(&input.id));
    }
    let id = input.id.clone();
    match review_unrecorded(shared, approver, verified, input).await {
        Ok(reviewed) => Ok(reviewed),
        Err(e) => Err(refuse(shared, Attempt::Review, &id, "", approver, e).await),
    }
}

async fn review_unrecorded(
    shared: &Shared,
    approver: &str,
    verified: Verified,
    input: ReviewRequest,
) -> Result<Request, GuardError> {
    crate::validate::review(&input)?;
    let now = now_ms();
    let review = Review {
        approver: approver.to_string(),
        approve: input.approve,
        comment: input.comment.clone(),
        time_ms: now,
        grant_seconds: input.grant_seconds,
        verified_by: verified.label().to_string(),
    };
    let id = input.id.clone();
    let policy = shared.policy.clone();
    let who = approver.to_string();
    let judge = move |current: &Request| {
        let effect = lifecycle::judge_review(&policy, &who, &input, current, now)?;
        // `[passkeys]`: an approval that needs one is refused unless this channel ran it.
        policy.passkeys.check(current, &who, input.approve, verified)?;
        Ok(effect)
    };
    shared.store.review(&id, review, &judge).await
}

/// `approver` cancels request `id` (ends it as a deny would); a refusal is recorded.
pub async fn cancel(shared: &Shared, approver: &str, id: &str, comment: String) -> Result<Request, GuardError> {
    if !ids::looks_like_request_id(id) {
        return Err(not_found(id));
    }
    match cancel_unrecorded(shared, approver, id, comment).await {
        Ok(cancelled) => Ok(cancelled),
        Err(e) => Err(refuse(shared, Attempt::Cancel, id, "", approver, e).await),
    }
}

async fn cancel_unrecorded(shared: &Shared, approver: &str, id: &str, comment: String) -> Result<Request, GuardError> {
    let mut v = lifecycle::Violations::default();
    v.text("comment", &comment, lifecycle::MAX_TEXT_BYTES, false);
    v.into_result()?;
    // Cancelling ends the request as a deny does: only one who may deny it may cancel it.
    // What decides that (host, eligible approvers, owner) never changes after creation.
    let current = shared.store.get(id, now_ms()).await?.ok_or_else(|| not_found(id))?;
    lifecycle::may_decide(&shared.policy, approver, &current)?;
    let decision = Decision {
        state: State::Cancelled,
        reason: "cancelled".into(),
        decided_by: approver.to_string(),
        comment,
        decided_ms: now_ms(),
    };
    match shared.store.finish(id, None, decision).await? {
        Finish::Ended(r) => Ok(r),
        Finish::AlreadyEnded(r) => {
            let state = State::try_from(r.state).unwrap_or(State::Unspecified);
            Err(GuardError::precondition(
                "STATE",
                format!("request/{id}"),
                format!("request {id} is {}, no longer pending", state.label()),
            ))
        }
    }
}

fn not_found(id: &str) -> GuardError {
    GuardError::NotFound(format!("no request {id:?}"))
}
