//! Rows <-> messages: a `requests` row and its `reviews` as a `Request`, the operation as JSON
//! text (serde derives of the generated message: JSON rather than protobuf bytes so that an
//! operator can read and query it with plain SQL), states by their label, and the two
//! placeholder styles the generated statements use.
use super::sql::{Backend, REQUEST_COLUMNS};
use crate::error::{GuardError, GuardResult};
use guard_proto::v1::{Operation, Request, Review, State};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};
use std::collections::HashMap;

pub fn operation_to_json(op: &Operation) -> String {
    // Plain strings and numbers: serializing cannot fail.
    serde_json::to_string(op).unwrap_or_default()
}

pub fn operation_from_json(text: &str) -> Result<Operation, serde_json::Error> {
    serde_json::from_str(text)
}

pub fn state_label(state: State) -> &'static str {
    state.label()
}

pub fn state_from_label(label: &str) -> Option<State> {
    [State::Pending, State::Approved, State::Denied, State::Expired, State::Cancelled]
        .into_iter()
        .find(|s| s.label() == label)
}

pub fn request_from_row(row: &AnyRow) -> GuardResult<Request> {
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str| GuardError::Internal(format!("request {id}: bad {what} in the database"));
    let operation: String = row.try_get("operation")?;
    let operation = operation_from_json(&operation).map_err(|_| corrupt("operation"))?;
    let state: String = row.try_get("state")?;
    let state = state_from_label(&state).ok_or_else(|| corrupt("state"))?;
    let eligible: String = row.try_get("eligible_approvers")?;
    let eligible: Vec<String> = serde_json::from_str(&eligible).map_err(|_| corrupt("eligible_approvers"))?;
    let approvals: i64 = row.try_get("approvals_required")?;
    let flags: String = row.try_get("flags")?;
    let flags: Vec<String> = serde_json::from_str(&flags).map_err(|_| corrupt("flags"))?;
    Ok(Request {
        host: row.try_get("host")?,
        operation: Some(operation),
        state: state as i32,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        decided_ms: row.try_get("decided_ms")?,
        approvals_required: u32::try_from(approvals).map_err(|_| corrupt("approvals_required"))?,
        eligible_approvers: eligible,
        reviews: Vec::new(),
        reason: row.try_get("reason")?,
        decided_by: row.try_get("decided_by")?,
        comment: row.try_get("comment")?,
        flags,
        id,
    })
}

pub fn review_from_row(row: &AnyRow) -> GuardResult<(String, Review)> {
    let approve: i64 = row.try_get("approve")?;
    let grant_seconds: i64 = row.try_get("grant_seconds")?;
    Ok((
        row.try_get("request_id")?,
        Review {
            approver: row.try_get("approver")?,
            approve: approve != 0,
            comment: row.try_get("comment")?,
            time_ms: row.try_get("time_ms")?,
            grant_seconds: u64::try_from(grant_seconds).unwrap_or(0),
            verified_by: row.try_get("verified_by")?,
        },
    ))
}

/// `$1, $2, ...` from `first` for `n` values.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Placeholders for the long generated statements (multi-row inserts): SQLite gets
/// anonymous `?`, numbered in the order they appear, because sqlx looks each named
/// parameter up by a linear scan (quadratic in their number); PostgreSQL needs `$N`.
/// A statement uses one style only, so `first` must follow the `?`s before it.
pub fn params(backend: Backend, first: usize, n: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; n].join(", "),
        Backend::Postgres => placeholders(first, n),
    }
}

pub async fn load_reviews(conn: &mut AnyConnection, requests: &mut [Request]) -> GuardResult<()> {
    if requests.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT request_id, approver, approve, comment, time_ms, grant_seconds, verified_by FROM reviews \
         WHERE request_id IN ({}) ORDER BY time_ms, approver",
        placeholders(1, requests.len())
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for r in requests.iter() {
        query = query.bind(r.id.clone());
    }
    let mut by_id: HashMap<String, Vec<Review>> = HashMap::new();
    for row in query.fetch_all(&mut *conn).await? {
        let (id, review) = review_from_row(&row)?;
        by_id.entry(id).or_default().push(review);
    }
    for r in requests.iter_mut() {
        r.reviews = by_id.remove(&r.id).unwrap_or_default();
    }
    Ok(())
}

pub async fn load_request(conn: &mut AnyConnection, id: &str) -> GuardResult<Option<Request>> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1");
    let Some(row) = sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    let mut requests = [request_from_row(&row)?];
    load_reviews(conn, &mut requests).await?;
    let [request] = requests;
    Ok(Some(request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_proto::v1::{Process, StatedReason};

    #[test]
    fn operation_json_keeps_the_proto_field_names_and_reads_back() {
        let op = Operation {
            hook: "file_open".into(),
            object: "/etc/shadow".into(),
            ancestry: vec![Process { pid: 7, argv: vec!["cat".into()], ..Default::default() }],
            stated_reason: Some(StatedReason { tool: "bash".into(), ..Default::default() }),
            ..Default::default()
        };
        let json = operation_to_json(&op);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in ["hook", "object", "access", "rule", "policy", "ancestry", "cwd", "user", "uid", "tree_id"] {
            assert!(v.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(v["ancestry"][0]["argv_truncated"], false);
        assert_eq!(v["stated_reason"]["tool"], "bash");
        assert_eq!(operation_from_json(&json).unwrap(), op);
        // Missing fields read as their proto3 defaults, as before.
        assert_eq!(operation_from_json(r#"{"hook":"bpf"}"#).unwrap().hook, "bpf");
    }
}
