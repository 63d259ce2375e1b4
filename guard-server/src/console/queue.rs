//! The live queue: the pending requests the signed-in user may see, one card each, and the
//! approver's review of one of them (approve once, approve for N minutes, deny with a reason),
//! which goes through `service::approvals` like every other channel's.
use super::accounts::{Account, Role};
use super::render::{self, card, layout, notice, respond};
use super::web::{check_post, Signed};
use super::ConsoleState;
use crate::error::{GuardError, GuardResult};
use crate::lifecycle::now_ms;
use crate::service::approvals::{self, Verified};
use crate::store::ListFilter;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use guard_proto::v1::{Request, ReviewRequest, State as RequestState};
use maud::{html, Markup};
use serde::Deserialize;

/// Earlier decisions shown per card.
const EARLIER: u32 = 5;
/// Grant lengths an approver can pick, in minutes (the form's select offers these).
const GRANT_MINUTES: [u64; 4] = [5, 15, 60, 240];

/// Whether `account` sees requests and records of `host`: an approver the hosts the policy
/// assigns them to, auditors and admins every host.
pub fn sees(state: &ConsoleState, account: &Account, host: &str) -> bool {
    account.role != Role::Approver || state.shared.policy.sees_host(&account.name, host)
}

/// The pending requests `account` sees, oldest first (the order they arrived in).
pub async fn pending(state: &ConsoleState, account: &Account) -> GuardResult<Vec<Request>> {
    let mut requests = match account.role {
        Role::Approver => approvals::list(&state.shared, &account.name, vec![RequestState::Pending], None, 0).await?,
        Role::Admin | Role::Auditor => {
            let filter = ListFilter { states: vec![RequestState::Pending], host: None, limit: 0 };
            state.shared.store.list(&filter).await?
        }
    };
    requests.reverse();
    Ok(requests)
}

/// One request's card, with its earlier decisions.
pub async fn card_of(state: &ConsoleState, account: &Account, r: &Request) -> GuardResult<Markup> {
    let op = r.operation.clone().unwrap_or_default();
    let earlier = state.shared.store.earlier_decisions(&r.host, &op.hook, &op.object, &r.id, EARLIER).await?;
    let needs_passkey = state.shared.policy.passkeys.needs_passkey(r, &account.name);
    Ok(card(r, &earlier, account, needs_passkey, now_ms()))
}

/// The queue page, with `banner` (the outcome of a review) above it.
async fn queue(state: &ConsoleState, account: &Account, status: StatusCode, banner: Option<Markup>) -> Response {
    let requests = match pending(state, account).await {
        Ok(r) => r,
        Err(e) => return render::error_page(&e),
    };
    let mut cards = Vec::with_capacity(requests.len());
    for r in &requests {
        match card_of(state, account, r).await {
            Ok(c) => cards.push(c),
            Err(e) => return render::error_page(&e),
        }
    }
    let body = html! {
        @if let Some(b) = banner { (b) }
        h1 { "Pending requests" span id="live" class="live" title="live updates" { "" } }
        @if account.role != Role::Approver { p.small { "Read-only: only approvers decide requests." } }
        p id="empty" class="small" hidden[!requests.is_empty()] { "Nothing is waiting for a decision." }
        div id="queue" { @for c in &cards { (c) } }
    };
    respond(status, layout("Queue", Some(account), body))
}

pub async fn page(State(state): State<ConsoleState>, Signed(account): Signed) -> Response {
    queue(&state, &account, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub struct ReviewForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    minutes: Option<String>,
    #[serde(default)]
    reason: String,
    /// The passkey step-up's ceremony id and assertion (JSON), when the script ran one.
    #[serde(default)]
    passkey_ceremony: String,
    #[serde(default)]
    passkey_credential: String,
}

/// The review the form asks for, or what is wrong with the form.
fn review_of(id: &str, form: &ReviewForm) -> Result<ReviewRequest, String> {
    let reason = form.reason.trim().to_string();
    let (approve, grant_seconds) = match form.action.as_str() {
        "approve" => (true, 0),
        "approve_for" => {
            let minutes = form.minutes.as_deref().unwrap_or_default();
            let minutes: u64 =
                minutes.parse().map_err(|_| format!("minutes {:?} is not a number", render::shown(minutes)))?;
            if !GRANT_MINUTES.contains(&minutes) {
                return Err(format!("minutes must be one of {GRANT_MINUTES:?}"));
            }
            (true, minutes * 60)
        }
        "deny" if reason.is_empty() => return Err("a denial needs a reason".into()),
        "deny" => (false, 0),
        other => return Err(format!("unknown action {:?}: approve, approve_for or deny", render::shown(other))),
    };
    Ok(ReviewRequest { id: id.to_string(), approve, comment: reason, grant_seconds })
}

/// How the approver was verified for this review: the session's password (or OpenID sign-in),
/// and the passkey
/// when the form carries a step-up, which must be this approver's, for this request and for
/// exactly this decision (the ceremony remembers what it was started for). Whether one was
/// needed is the server's to check (`service::approvals` refuses an approval that needed one
/// and lacks it).
async fn verification(
    state: &ConsoleState,
    account: &Account,
    request_id: &str,
    form: &ReviewForm,
) -> Result<Verified, GuardError> {
    // The session's own sign-in: a password, or the OpenID provider (`[console.oidc]`).
    let oidc = account.session.method == super::accounts::OIDC;
    if form.passkey_ceremony.is_empty() && form.passkey_credential.is_empty() {
        return Ok(if oidc { Verified::Oidc } else { Verified::Password });
    }
    let refused = |m: String| GuardError::precondition("PASSKEY", format!("request/{request_id}"), m);
    let Some(passkeys) = &state.passkeys else {
        return Err(refused("passkeys are not available on this console".into()));
    };
    let approval = passkeys
        .finish_approval(&account.name, &form.passkey_ceremony, request_id, &form.passkey_credential)
        .await
        .map_err(|e| refused(format!("the passkey confirmation was refused: {e}")))?;
    let asked = super::passkeys::decision_summary(&form.action, form.minutes.as_deref());
    if approval.decision != asked {
        return Err(refused(format!("the passkey confirmed {:?}, but the form asks {:?}", approval.decision, asked)));
    }
    Ok(if oidc { Verified::OidcAndPasskey } else { Verified::PasswordAndPasskey })
}

pub async fn review(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Signed(account): Signed,
    Form(form): Form<ReviewForm>,
) -> Response {
    if let Some(refused) = check_post(&state, &headers, Some(&account.session.csrf), &form.csrf) {
        return refused;
    }
    if account.role != Role::Approver {
        let message = format!(
            "Refused: {} is an {} and does not decide requests (only approvers do). Nothing was changed.",
            account.name,
            account.role.label()
        );
        return queue(&state, &account, StatusCode::FORBIDDEN, Some(notice(false, &message))).await;
    }
    let input = match review_of(&id, &form) {
        Ok(input) => input,
        Err(problem) => {
            let message = format!("Refused: {problem}. Nothing was changed.");
            return queue(&state, &account, StatusCode::BAD_REQUEST, Some(notice(false, &message))).await;
        }
    };
    let verified = match verification(&state, &account, &id, &form).await {
        Ok(v) => v,
        Err(e) => return queue(&state, &account, e.http_status(), Some(notice(false, &e.to_string()))).await,
    };
    let no_grant = input.grant_seconds > 0
        && approvals::get(&state.shared, &account.name, &id)
            .await
            .ok()
            .and_then(|r| r.operation)
            .is_some_and(|op| crate::store::grant_argv(&op).is_none());
    let what = match (input.approve, input.grant_seconds) {
        (false, _) => "denied".to_string(),
        (true, 0) => "approved".to_string(),
        (true, s) => format!("approved for {}", render::short_duration(s as i64 * 1000)),
    };
    match approvals::review(&state.shared, &account.name, verified, input).await {
        Ok(r) => {
            let (got, need) = (r.reviews.iter().filter(|v| v.approve).count(), r.approvals_required.max(1));
            let mut message = match render::state_of(&r) {
                RequestState::Pending => {
                    format!("You {what} request {}: {got} of {need} approvals, it waits for more.", r.id)
                }
                s => format!("You {what} request {}: it is {}.", r.id, s.label()),
            };
            if no_grant {
                message.push_str(" No grant was made: the exec's argv was cut short, so nobody saw all of it.");
            }
            queue(&state, &account, StatusCode::OK, Some(notice(true, &message))).await
        }
        Err(e) => {
            let message = format!("Refused: {e}. Nothing was changed.");
            queue(&state, &account, e.http_status(), Some(notice(false, &message))).await
        }
    }
}

/// All of one process's argv (the card cuts long ones), one argument per line, escaped, as
/// plain text.
pub async fn argv(
    State(state): State<ConsoleState>,
    Path((id, level)): Path<(String, usize)>,
    Signed(account): Signed,
) -> Response {
    let found = match account.role {
        Role::Approver => approvals::get(&state.shared, &account.name, &id).await,
        Role::Admin | Role::Auditor => match crate::ids::looks_like_request_id(&id) {
            true => state.shared.store.get(&id, now_ms()).await.and_then(|r| r.ok_or_else(|| not_found(&id))),
            false => Err(not_found(&id)),
        },
    };
    let r = match found {
        Ok(r) => r,
        Err(e) => return render::error_page(&e),
    };
    let Some(p) = r.operation.as_ref().and_then(|op| op.ancestry.get(level)) else {
        return render::error_page(&GuardError::NotFound(format!("request {id} has no process at level {level}")));
    };
    let mut text =
        format!("argv of level {level} of request {id} ({} arguments), one per line, escaped:\n", p.argv.len());
    for a in &p.argv {
        text.push_str(&render::shown(a));
        text.push('\n');
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

fn not_found(id: &str) -> GuardError {
    GuardError::NotFound(format!("no request {id:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(action: &str, minutes: Option<&str>, reason: &str) -> ReviewForm {
        ReviewForm {
            csrf: String::new(),
            action: action.into(),
            minutes: minutes.map(str::to_string),
            reason: reason.into(),
            passkey_ceremony: String::new(),
            passkey_credential: String::new(),
        }
    }

    #[test]
    fn the_form_becomes_a_review_or_a_named_problem() {
        let once = review_of("abc", &form("approve", None, "")).unwrap();
        assert_eq!((once.approve, once.grant_seconds), (true, 0));
        let grant = review_of("abc", &form("approve_for", Some("15"), "")).unwrap();
        assert_eq!((grant.approve, grant.grant_seconds), (true, 900));
        let deny = review_of("abc", &form("deny", None, "  not now ")).unwrap();
        assert_eq!((deny.approve, deny.comment.as_str()), (false, "not now"));
        assert!(review_of("abc", &form("approve_for", Some("7"), "")).unwrap_err().contains("one of"));
        assert!(review_of("abc", &form("approve_for", Some("\u{1b}[2J"), "")).unwrap_err().contains("\\x1b"));
        assert!(review_of("abc", &form("deny", None, " ")).unwrap_err().contains("needs a reason"));
        assert!(review_of("abc", &form("<b>", None, "")).unwrap_err().contains("unknown action"));
    }
}
