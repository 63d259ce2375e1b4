//! History: the audit trail filtered by host, decision, rule, approver, tree and time,
//! paginated by seq (`after`), exported in the SIEM formats, and the chain's status: the
//! server chain's head and every agent stream's last stored position. (Walking and verifying
//! the whole chain is `guardctl audit verify`'s job, which checks the signatures too; this page
//! shows where each chain stands, which is cheap at any size.)
use super::accounts::{Account, Role};
use super::queue::sees;
use super::render::{self, layout, respond, shown, when};
use super::web::Signed;
use super::ConsoleState;
use crate::error::GuardError;
use crate::lifecycle::{Violations, MAX_NAME_BYTES};
use crate::search::{Search, Visible};
use crate::store::AuditFilter;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use guard_api::export::Format;
use guard_api::{AuditRecord, Timestamp};
use guard_proto::v1::{AuditEvent, AuditQuery};
use maud::html;
use serde::Deserialize;

const PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
/// Most rows one export holds (the store's maximum per query); page on with `after`.
const MAX_EXPORT: u32 = 10_000;

/// The filters, as the form and the links carry them.
#[derive(Debug, Default, Deserialize, Clone)]
pub struct Filters {
    #[serde(default)]
    host: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    approver: String,
    #[serde(default)]
    tree: String,
    /// RFC 3339, or `YYYY-MM-DDTHH:MM` / `YYYY-MM-DD` in UTC (what a date input sends).
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    format: String,
}

impl Filters {
    /// The query string of these filters with `after` set (the next page's link).
    fn link(&self, path: &str, after: u64, format: Option<&str>) -> String {
        let mut q: Vec<(&str, String)> = vec![
            ("host", self.host.clone()),
            ("decision", self.decision.clone()),
            ("rule", self.rule.clone()),
            ("approver", self.approver.clone()),
            ("tree", self.tree.clone()),
            ("since", self.since.clone()),
            ("until", self.until.clone()),
        ];
        q.retain(|(_, v)| !v.is_empty());
        if after > 0 {
            q.push(("after", after.to_string()));
        }
        if let Some(f) = format {
            q.push(("format", f.to_string()));
        }
        let encoded = q.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&");
        format!("{path}?{encoded}")
    }
}

/// Percent-encoding of a query value (everything but unreserved characters).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A time filter as the store wants it (Unix ms), or what is wrong with it.
fn time_of(text: &str) -> Result<Option<i64>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let full = match t.len() {
        10 => format!("{t}T00:00:00Z"),
        16 => format!("{t}:00Z"),
        19 => format!("{t}Z"),
        _ => t.to_string(),
    };
    Timestamp::parse(&full)
        .map(|ts| Some(ts.unix_ms()))
        .map_err(|_| format!("{:?} is not a time (2026-11-30T14:00 in UTC, or RFC 3339)", shown(t)))
}

/// The store's filter for `f` as `account` may ask it, or the refusal (each bad value named).
fn filter_of(state: &ConsoleState, account: &Account, f: &Filters, limit: u32) -> Result<AuditFilter, GuardError> {
    let mut v = Violations::default();
    v.text("host", &f.host, MAX_NAME_BYTES, false);
    let since = time_of(&f.since).unwrap_or_else(|e| {
        v.add("since", e);
        None
    });
    let until = time_of(&f.until).unwrap_or_else(|e| {
        v.add("until", e);
        None
    });
    v.into_result()?;
    let query = AuditQuery {
        decision: f.decision.clone(),
        rule: f.rule.clone(),
        approver: f.approver.clone(),
        tree_id: f.tree.clone(),
        ..Default::default()
    };
    let search = Search::from_query(&query)?;
    if !f.host.is_empty() && !sees(state, account, &f.host) {
        return Err(GuardError::PermissionDenied(format!(
            "{} is not assigned to host {} (host groups in the server config)",
            account.name,
            shown(&f.host)
        )));
    }
    // An approver reads the hosts they are assigned to; auditors and admins every host.
    let visible = (account.role == Role::Approver).then(|| {
        let (policy, name) = (state.shared.policy.clone(), account.name.clone());
        Visible::new(move |host| policy.sees_host(&name, host))
    });
    Ok(AuditFilter {
        since_ms: since.unwrap_or(0),
        until_ms: until,
        host: Some(f.host.clone()).filter(|h| !h.is_empty()),
        request_id: None,
        after_seq: f.after.unwrap_or(0),
        search,
        visible,
        limit,
    })
}

pub async fn page(State(state): State<ConsoleState>, Signed(account): Signed, Query(f): Query<Filters>) -> Response {
    let limit = f.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let (events, refusal) = match filter_of(&state, &account, &f, limit + 1) {
        Ok(filter) => match state.shared.store.audit(&filter).await {
            Ok(events) => (events, None),
            Err(e) => (Vec::new(), Some(e)),
        },
        Err(e) => (Vec::new(), Some(e)),
    };
    let more = events.len() > limit as usize;
    let events = &events[..events.len().min(limit as usize)];
    let chain = chain_status(&state, &account).await;
    let status = refusal.as_ref().map(GuardError::http_status).unwrap_or(StatusCode::OK);
    let body = html! {
        h1 { "History" }
        @if let Some(e) = &refusal { (render::notice(false, &format!("Refused: {e}"))) }
        form.filters method="get" action="/history" {
            label { "host" input name="host" value=(f.host); }
            label { "decision" select name="decision" {
                @for d in ["", "allow", "deny", "pending"] { option value=(d) selected[f.decision == d] { (if d.is_empty() { "any" } else { d }) } }
            } }
            label { "rule" input name="rule" value=(f.rule); }
            label { "approver" input name="approver" value=(f.approver); }
            label { "tree" input name="tree" value=(f.tree); }
            label { "since (UTC)" input name="since" type="datetime-local" value=(f.since); }
            label { "until (UTC)" input name="until" type="datetime-local" value=(f.until); }
            button type="submit" { "Filter" }
        }
        p.exports { "Export these records (up to " (MAX_EXPORT) " from this page on): "
            @for fmt in ["ocsf", "ecs", "cef", "jsonl"] { a href=(f.link("/export", f.after.unwrap_or(0), Some(fmt))) { (fmt) } " " }
        }
        div.scroll { table.history {
            thead { tr { th { "seq" } th { "time" } th { "host" } th { "kind" } th { "what" } th { "who" } th { "request" } } }
            tbody {
                @for e in events { (row(e)) }
            }
        } }
        @if events.is_empty() && refusal.is_none() { p.small { "No record matches." } }
        @if more { @if let Some(last) = events.last() { p { a.next href=(f.link("/history", last.seq, None)) { "Next page →" } } } }
        h2 { "Audit chains" }
        (chain)
    };
    respond(status, layout("History", Some(&account), body))
}

fn row(e: &AuditEvent) -> maud::Markup {
    let r = AuditRecord::from_json(&e.json).ok();
    let word = |v: Option<String>| v.unwrap_or_default();
    let (what, who) = match &r {
        Some(r) => {
            let decision = r
                .decision
                .as_ref()
                .and_then(|d| serde_json::to_value(d).ok())
                .and_then(|v| v.as_str().map(str::to_string));
            let mut what = vec![
                decision.unwrap_or_default(),
                word(r.state.clone()),
                r.reason.map(|x| x.name().to_string()).unwrap_or_default(),
                word(r.rule.clone()).to_string(),
                r.hook.map(|h| h.name().to_string()).unwrap_or_default(),
                word(r.access.clone()),
                word(r.object.clone()),
                r.tree_id.as_ref().map(|t| format!("tree {t}")).unwrap_or_default(),
            ];
            what.retain(|s| !s.is_empty());
            let mut what = what.join(" ");
            if let Some(c) = r.comment.as_ref().filter(|c| !c.is_empty()) {
                what.push_str(" · ");
                what.push_str(c);
            }
            let mut who = word(r.approver.clone());
            if let Some(v) = &r.verified_by {
                who.push_str(&format!(" (verified by {v})"));
            }
            (what, who)
        }
        None => ("(not an audit record)".to_string(), String::new()),
    };
    html! {
        tr {
            td { (e.seq) } td { (when(e.time_ms)) } td { (shown(&e.host)) } td { (e.kind) }
            td { (render::cut(&what, 500).0) } td { (shown(&who)) } td { code { (shown(&e.request_id)) } }
        }
    }
}

async fn chain_status(state: &ConsoleState, account: &Account) -> maud::Markup {
    let head = state.shared.store.audit_head().await;
    let streams = state.shared.store.stream_positions().await;
    let short = |h: &str| h.chars().take(16).collect::<String>();
    html! {
        @match &head {
            Ok(h) => p { "Server chain: head at seq " b { (h.seq) } ", hash " code { (short(&h.hash)) "…" } ", "
                (h.keys.len()) " checkpoint keys registered. Verify it end to end with " code { "guardctl audit verify" } "." },
            Err(e) => (render::notice(false, &format!("cannot read the chain's head: {e}"))),
        }
        @match &streams {
            Ok(list) if !list.iter().any(|s| sees(state, account, &s.host)) => p.small { "No agent has reported records yet." },
            Ok(list) => div.scroll { table.chains {
                thead { tr { th { "host" } th { "agent stream" } th { "last seq stored" } th { "hash" } } }
                tbody { @for s in list.iter().filter(|s| sees(state, account, &s.host)) {
                    tr { td { (shown(&s.host)) } td { code { (shown(&s.stream)) } } td { (s.seq) } td { code { (short(&s.hash)) "…" } } }
                } }
            } },
            Err(e) => (render::notice(false, &format!("cannot read the streams' positions: {e}"))),
        }
    }
}

/// The filtered records in one SIEM format, one per line, as a download.
pub async fn export(State(state): State<ConsoleState>, Signed(account): Signed, Query(f): Query<Filters>) -> Response {
    let format = match Format::parse(&f.format) {
        Ok(format) => format,
        Err(e) => return render::error_page(&GuardError::invalid("format", e.to_string())),
    };
    let filter = match filter_of(&state, &account, &f, MAX_EXPORT) {
        Ok(filter) => filter,
        Err(e) => return render::error_page(&e),
    };
    let events = match state.shared.store.audit(&filter).await {
        Ok(events) => events,
        Err(e) => return render::error_page(&e),
    };
    let mut body = String::new();
    for e in &events {
        if let Ok(r) = AuditRecord::from_json(&e.json) {
            body.push_str(&format.encode_line(&r));
            body.push('\n');
        }
    }
    let ext = if matches!(format, Format::Cef) { "cef" } else { "jsonl" };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"guard-audit-{}.{ext}\"", f.format)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
