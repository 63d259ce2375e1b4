//! Live grants ("approve for N minutes"): each with what it covers exactly, who made it, until
//! when, and how often it fired; and their revocation, which ends the grant at once with an
//! audit record naming who revoked it. Approvers revoke the grants they made and those on the
//! hosts they are assigned to; admins any; auditors none.
use super::accounts::{Account, Role};
use super::queue::sees;
use super::render::{self, layout, notice, respond, short_duration, shown, when};
use super::web::{check_post, Signed, TokenForm};
use super::ConsoleState;
use crate::audit::Grant;
use crate::lifecycle::now_ms;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};

fn may_revoke(state: &ConsoleState, account: &Account, g: &Grant) -> bool {
    match account.role {
        Role::Admin => true,
        Role::Approver => g.approver == account.name || state.shared.policy.sees_host(&account.name, &g.host),
        Role::Auditor => false,
    }
}

async fn grants_page(state: &ConsoleState, account: &Account, status: StatusCode, banner: Option<Markup>) -> Response {
    let now = now_ms();
    let live = match state.shared.store.live_grants(now).await {
        Ok(live) => live,
        Err(e) => return render::error_page(&e),
    };
    // Approvers: the grants of their hosts, and the ones they made wherever that was.
    let live: Vec<_> =
        live.into_iter().filter(|l| sees(state, account, &l.grant.host) || l.grant.approver == account.name).collect();
    let body = html! {
        @if let Some(b) = banner { (b) }
        h1 { "Active grants" }
        p.small { "A grant approves the very same operation (host, tree, hook, object, access, and an exec's argv) without asking, until it ends." }
        @if live.is_empty() { p.small { "No grant is active." } }
        div.scroll { table.grants {
            thead { tr { th { "host" } th { "tree" } th { "operation" } th { "argv" } th { "made by" } th { "until" } th { "fired" } th {} } }
            tbody {
                @for l in &live {
                    @let g = &l.grant;
                    tr id=(format!("grant-{}", g.id)) {
                        td { (shown(&g.host)) }
                        td { code { (shown(&g.tree_id)) } }
                        td { code { (shown(&g.hook)) } " " (shown(&g.access)) " " (render::cut(&g.object, 500).0) }
                        td { code { (render::cut(&argv_of(g), 500).0) } }
                        td { (shown(&g.approver)) " · " (when(g.created_ms)) " · request " code { (g.request_id) } }
                        td { (when(g.expires_ms)) " (" span.countdown data-until=(g.expires_ms) { (short_duration(g.expires_ms - now)) } ")" }
                        td.fired { (l.fired) " times" }
                        td {
                            @if may_revoke(state, account, g) {
                                form method="post" action=(format!("/grants/{}/revoke", g.id)) {
                                    input type="hidden" name="csrf" value=(account.session.csrf);
                                    button.deny type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        } }
    };
    respond(status, layout("Grants", Some(account), body))
}

/// The argv a grant binds (an exec's, as JSON in the store), escaped for reading.
fn argv_of(g: &Grant) -> String {
    if g.argv.is_empty() {
        return "(any: not an exec)".into();
    }
    serde_json::from_str::<Vec<String>>(&g.argv)
        .map(|a| guard_api::screen::escape_argv(&a))
        .unwrap_or_else(|_| shown(&g.argv))
}

pub async fn page(State(state): State<ConsoleState>, Signed(account): Signed) -> Response {
    grants_page(&state, &account, StatusCode::OK, None).await
}

pub async fn revoke(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Signed(account): Signed,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Some(refused) = check_post(&state, &headers, Some(&account.session.csrf), &form.csrf) {
        return refused;
    }
    let refuse = |status: StatusCode, message: String| (status, Some(notice(false, &message)));
    let found = if crate::ids::looks_like_request_id(&id) { state.shared.store.grant(&id).await } else { Ok(None) };
    let (status, banner) = match found {
        Err(e) => return render::error_page(&e),
        Ok(None) => refuse(StatusCode::NOT_FOUND, format!("Refused: no grant {:?}. Nothing was changed.", shown(&id))),
        Ok(Some((g, _))) if !may_revoke(&state, &account, &g) => refuse(
            StatusCode::FORBIDDEN,
            format!(
                "Refused: {} ({}) may not revoke grant {id} (approvers revoke their own grants and those on their hosts; admins any). Nothing was changed.",
                account.name,
                account.role.label()
            ),
        ),
        Ok(Some((_, Some(ended)))) => refuse(
            StatusCode::CONFLICT,
            format!("Refused: grant {id} already ended at {}. Nothing was changed.", when(ended)),
        ),
        Ok(Some(_)) => match state.shared.store.revoke_grant(&id, &account.name, now_ms()).await {
            Ok(Some(g)) => (StatusCode::OK, Some(notice(true, &format!("Grant {} revoked: it covers nothing from now on.", g.id)))),
            Ok(None) => refuse(StatusCode::CONFLICT, format!("Refused: grant {id} has already ended. Nothing was changed.")),
            Err(e) => return render::error_page(&e),
        },
    };
    grants_page(&state, &account, status, banner).await
}
