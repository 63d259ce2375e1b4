//! How the console shows things. maud escapes every value it prints as HTML; on top of that
//! every string a watched tree controls (argv, paths, cwd, stated reasons, comments, host and
//! user names) goes through `shown`, which makes control characters and terminal escapes
//! visible (`\x1b`) and cuts what is too long to read, saying how long it was.
use super::accounts::{Account, Role};
use crate::error::GuardError;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use guard_api::screen::escape;
use guard_api::Timestamp;
use guard_proto::v1::{Operation, Process, Request, State};
use maud::{html, Markup, DOCTYPE};

/// Most characters of one text shown in a card; the rest is behind a link.
pub const SHOWN_CHARS: usize = 2000;

/// `text` made visible: control characters, escapes and bidi marks as `\x1b`-style escapes.
pub fn shown(text: &str) -> String {
    escape(text).into_owned()
}

/// `text` shown, cut to `max` characters: (what to show, the full length in characters when cut).
pub fn cut(text: &str, max: usize) -> (String, Option<usize>) {
    let all = shown(text);
    let n = all.chars().count();
    if n <= max {
        (all, None)
    } else {
        (all.chars().take(max).collect(), Some(n))
    }
}

/// A process's argv as one line, each argument escaped and quoted where it holds a space.
pub fn argv_line(p: &Process) -> String {
    guard_api::screen::escape_argv(&p.argv)
}

pub fn when(ms: i64) -> String {
    if ms <= 0 {
        "-".into()
    } else {
        Timestamp::from_unix_ms(ms).to_string()
    }
}

/// `45s`, `3m12s`, `2h05m`, `3d04h` (as guardctl shows them).
pub fn short_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn state_of(r: &Request) -> State {
    State::try_from(r.state).unwrap_or(State::Unspecified)
}

pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// The page around `body`; `account` adds the navigation and the sign-out button.
pub fn layout(title: &str, account: Option<&Account>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · guard" }
                link rel="stylesheet" href="/static/console.css";
                @if let Some(a) = account { meta name="csrf-token" content=(a.session.csrf); }
                script src="/static/console.js" defer {}
                script src="/static/guard-passkey.js" defer {}
            }
            body {
                header.top {
                    strong.brand { "guard" }
                    @if let Some(a) = account {
                        nav {
                            a href="/" { "Queue" }
                            a href="/history" { "History" }
                            a href="/grants" { "Grants" }
                            a href="/passkeys" { "Passkeys" }
                        }
                        span.who { (a.name) " (" (a.role.label()) ")" }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(a.session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn notice(ok: bool, text: &str) -> Markup {
    html! { p.notice.(if ok { "ok" } else { "refused" }) role="status" { (text) } }
}

pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    respond(
        status,
        layout(
            title,
            None,
            html! { h1 { (title) } (notice(false, message)) p { a href="/" { "Back to the console" } } },
        ),
    )
}

pub fn error_page(e: &GuardError) -> Response {
    if matches!(e, GuardError::Internal(_) | GuardError::Unavailable(_)) {
        tracing::error!("console: {e}");
    }
    message_page(e.http_status(), "Refused", &e.to_string())
}

/// The sign-in page; `oidc`: the label of the OpenID provider's link, when one is configured.
pub fn login(token: &str, error: Option<&str>, oidc: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { (notice(false, e)) }
            form.login method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                label { "User name" input name="username" autocomplete="username" required autofocus; }
                label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
            @if let Some(label) = oidc {
                p.oidc { a.oidc href="/oidc/start" { "Sign in with " (label) } }
            }
        },
    )
}

/// One request as a card: everything an approver needs to decide it, and (for approvers,
/// while it is pending) the buttons.
/// `needs_passkey`: `[passkeys]` requires a passkey for this approver's approval of it.
pub fn card(r: &Request, earlier: &[Request], account: &Account, needs_passkey: bool, now_ms: i64) -> Markup {
    let default_op = Operation::default();
    let op = r.operation.as_ref().unwrap_or(&default_op);
    let approvals = r.reviews.iter().filter(|v| v.approve).count();
    let needed = r.approvals_required.max(1);
    let pending = state_of(r) == State::Pending;
    html! {
        article.card id=(format!("req-{}", r.id)) data-id=(r.id) {
            header {
                span.host title="host" { (shown(&r.host)) }
                span.rule { "rule " b { (shown(&op.rule)) } " · policy " (shown(&op.policy)) }
                span.state.(state_of(r).label()) { (state_of(r).label()) }
            }
            @for flag in &r.flags { p.flag { "⚠ " (shown(flag)) } }
            h2.op {
                code { (shown(&op.hook)) }
                @if !op.access.is_empty() { " " span.access { (shown(&op.access)) } }
                " " (long_text(&op.object, r, "object"))
            }
            dl.facts {
                dt { "user" } dd { (shown(&op.user)) " (uid " (op.uid) ")" }
                dt { "tree owner" } dd { (shown(&op.owner)) " (uid " (op.owner_uid) ", by " (shown(&op.owner_source)) ")" }
                dt { "cwd" } dd { (long_text(&op.cwd, r, "cwd")) }
                dt { "tree" } dd { code { (shown(&op.tree_id)) } }
                dt { "request" } dd { code { (r.id) } }
            }
            section.ancestry {
                h3 { "Process ancestry (acting process first)" }
                ol {
                    @for (level, p) in op.ancestry.iter().enumerate() {
                        li {
                            div { code.exe { (long_text(&p.exe, r, "exe")) } " pid " (p.pid) " ppid " (p.ppid) " uid " (p.uid) }
                            div.argv { (argv(r, level, p)) }
                            @if p.argv_from_proc { div.mark.proc { "argv read from /proc: the process can rewrite it (unverified)" } }
                            @if p.argv_truncated { div.mark { "argv cut short: this is not all of it" } }
                            @if p.argv_redacted { div.mark { "argv redacted by the server" } }
                        }
                    }
                }
            }
            @if let Some(s) = op.stated_reason.as_ref().filter(|s| !s.reason.is_empty() || !s.tool.is_empty()) {
                section.claim {
                    h3 { "The agent's claim (unverified, written by the agent)" }
                    blockquote { (cut(&s.reason, SHOWN_CHARS).0) }
                    p.small { "tool " (shown(&s.tool)) " · call " (shown(&s.call_id)) " · session " (shown(&s.session)) }
                }
            }
            section.timing {
                "held for " span data-since=(r.created_ms) { (short_duration(now_ms - r.created_ms)) }
                @if pending {
                    " · expires in " span.countdown data-until=(r.expires_ms) { (short_duration(r.expires_ms - now_ms)) }
                } @else {
                    " · " (state_of(r).label()) " " (when(r.decided_ms))
                    @if !r.decided_by.is_empty() { " by " (shown(&r.decided_by)) }
                }
            }
            section.progress {
                "approvals " b.nofm { (approvals) " of " (needed) }
                @if !r.eligible_approvers.is_empty() { " · from " (r.eligible_approvers.iter().map(|a| shown(a)).collect::<Vec<_>>().join(", ")) }
                @if !r.reviews.is_empty() {
                    ul.reviews {
                        @for v in &r.reviews {
                            li {
                                (shown(&v.approver)) " " b { (if v.approve { "approved" } else { "denied" }) }
                                @if v.grant_seconds > 0 { " for " (short_duration(v.grant_seconds as i64 * 1000)) }
                                " · verified by " (v.verified_by) " · " (when(v.time_ms))
                                @if !v.comment.is_empty() { " · “" (cut(&v.comment, 500).0) "”" }
                            }
                        }
                    }
                }
            }
            section.earlier {
                h3 { "Earlier decisions on this operation" }
                @if earlier.is_empty() { p.small { "none" } }
                ul {
                    @for e in earlier {
                        li {
                            (when(e.decided_ms)) " " b { (state_of(e).label()) }
                            @if !e.decided_by.is_empty() { " by " (shown(&e.decided_by)) }
                            @if !e.comment.is_empty() { " · “" (cut(&e.comment, 300).0) "”" }
                        }
                    }
                }
            }
            @if pending && account.role == Role::Approver {
                (buttons(r, account, needs_passkey))
            }
        }
    }
}

/// The approver's three actions; every form carries the session's CSRF token.
fn buttons(r: &Request, account: &Account, needs_passkey: bool) -> Markup {
    let action = format!("/requests/{}/review", r.id);
    // An approval that needs a passkey: the script runs the ceremony on submit (see
    // passkey/guard-passkey.js) and adds its answer to the form.
    let start = needs_passkey.then(|| format!("/requests/{}/passkey/start", r.id));
    html! {
        section.actions {
            @if needs_passkey { p.small { "Approving this needs your passkey." } p data-passkey-status role="status" {} }
            form method="post" action=(action) data-passkey-approve[needs_passkey] data-start=[start.as_deref()] {
                input type="hidden" name="csrf" value=(account.session.csrf);
                input type="hidden" name="action" value="approve";
                button.approve type="submit" { "Approve once" }
            }
            form method="post" action=(action) data-passkey-approve[needs_passkey] data-start=[start.as_deref()] {
                input type="hidden" name="csrf" value=(account.session.csrf);
                input type="hidden" name="action" value="approve_for";
                select name="minutes" aria-label="grant length" {
                    option value="5" { "5 minutes" }
                    option value="15" { "15 minutes" }
                    option value="60" { "1 hour" }
                    option value="240" { "4 hours" }
                }
                button.approve type="submit" { "Approve for…" }
            }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(account.session.csrf);
                input type="hidden" name="action" value="deny";
                input name="reason" placeholder="reason (required)" required maxlength="1000";
                button.deny type="submit" { "Deny" }
            }
        }
    }
}

/// A path or name of the request, cut when too long (the full one is in the record and the
/// argv page; paths are at most 4 KiB anyway).
fn long_text(text: &str, _r: &Request, _what: &str) -> Markup {
    let (text, full) = cut(text, SHOWN_CHARS);
    html! { (text) @if let Some(n) = full { span.cut { "… (cut: " (n) " characters in all)" } } }
}

/// A process's argv, cut when long, with a link to all of it.
fn argv(r: &Request, level: usize, p: &Process) -> Markup {
    let line = argv_line(p);
    let n = line.chars().count();
    if n <= SHOWN_CHARS {
        return html! { code { (line) } };
    }
    let head: String = line.chars().take(SHOWN_CHARS).collect();
    let bytes: usize = p.argv.iter().map(|a| a.len()).sum();
    html! {
        code { (head) }
        span.cut {
            "… (cut: " (p.argv.len()) " arguments, " (bytes) " bytes in all; "
            a href=(format!("/requests/{}/argv/{level}", r.id)) target="_blank" { "see all of it" } ")"
        }
    }
}
