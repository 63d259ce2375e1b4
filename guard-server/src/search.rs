//! Searching the audit trail: `AuditQuery`'s filters on the event's record (decision, rule,
//! approver, tree) and on what the approver may see (host groups). Each value is validated
//! here, the error naming its field. The record filters become conditions on the row's JSON in
//! the database, and the host filter is applied by the store page by page, so a query's `limit`
//! counts the events that match, never the rows scanned to find them.
use crate::error::GuardResult;
use crate::lifecycle::{Violations, MAX_NAME_BYTES};
use guard_proto::v1::AuditQuery;
use std::fmt;
use std::sync::Arc;

/// `--decision`: what the record says was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionFilter {
    Allow,
    Deny,
    /// No decision, and the request was pending when the record was written: the records of
    /// requests at their creation (a request decided at once has none).
    Pending,
}

impl DecisionFilter {
    pub const NAMES: &'static str = "allow, deny or pending";

    pub fn parse(text: &str) -> Option<DecisionFilter> {
        match text {
            "allow" => Some(DecisionFilter::Allow),
            "deny" => Some(DecisionFilter::Deny),
            "pending" => Some(DecisionFilter::Pending),
            _ => None,
        }
    }
}

/// The record filters of one query; `None`: any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    pub decision: Option<DecisionFilter>,
    /// The record's `rule`, exactly.
    pub rule: Option<String>,
    /// The record's `approver` (who decided, reviewed, granted, or tried and was refused).
    pub approver: Option<String>,
    /// The record's `tree_id`, exactly.
    pub tree_id: Option<String>,
}

fn given(text: &str) -> Option<String> {
    Some(text).filter(|t| !t.is_empty()).map(str::to_string)
}

impl Search {
    /// The filters of `q`, every bad value named by its field.
    pub fn from_query(q: &AuditQuery) -> GuardResult<Search> {
        let mut v = Violations::default();
        let decision = match q.decision.as_str() {
            "" => None,
            text => {
                let parsed = DecisionFilter::parse(text);
                if parsed.is_none() {
                    v.add("decision", format!("{text:?} is not {}", DecisionFilter::NAMES));
                }
                parsed
            }
        };
        v.text("rule", &q.rule, MAX_NAME_BYTES, false);
        v.text("approver", &q.approver, MAX_NAME_BYTES, false);
        v.text("tree_id", &q.tree_id, MAX_NAME_BYTES, false);
        v.into_result()?;
        Ok(Search { decision, rule: given(&q.rule), approver: given(&q.approver), tree_id: given(&q.tree_id) })
    }

    /// The filters as SQL conditions on the `json` column, each starting with " AND ", whose
    /// placeholders are numbered from `*next` on (advanced past them), and the values to bind
    /// to them in order. The values are bound, never spliced into the SQL.
    pub fn conditions(&self, postgres: bool, next: &mut usize) -> (String, Vec<String>) {
        // The record's JSON is written by `AuditRecord::to_json`: every field at the top level,
        // JSON null where it does not apply (which both extractions read as SQL NULL).
        let field = |name: &str| {
            if postgres {
                format!("(json::jsonb ->> '{name}')")
            } else {
                format!("json_extract(json, '$.{name}')")
            }
        };
        let (mut sql, mut binds) = (String::new(), Vec::new());
        let mut equals = |sql: &mut String, name: &str, value: &str| {
            sql.push_str(&format!(" AND {} = ${}", field(name), *next));
            *next += 1;
            binds.push(value.to_string());
        };
        match self.decision {
            Some(DecisionFilter::Allow) => equals(&mut sql, "decision", "allow"),
            Some(DecisionFilter::Deny) => equals(&mut sql, "decision", "deny"),
            Some(DecisionFilter::Pending) => {
                sql.push_str(&format!(" AND {} IS NULL", field("decision")));
                equals(&mut sql, "state", "pending");
            }
            None => {}
        }
        for (name, value) in [("rule", &self.rule), ("approver", &self.approver), ("tree_id", &self.tree_id)] {
            if let Some(value) = value {
                equals(&mut sql, name, value);
            }
        }
        (sql, binds)
    }
}

/// Which hosts' events the caller may see (an approver's host groups); applied by the store
/// while it reads, so hidden events do not count against the limit.
#[derive(Clone)]
pub struct Visible(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl Visible {
    pub fn new(sees: impl Fn(&str) -> bool + Send + Sync + 'static) -> Visible {
        Visible(Arc::new(sees))
    }

    pub fn sees(&self, host: &str) -> bool {
        (self.0)(host)
    }
}

impl fmt::Debug for Visible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Visible(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GuardError;

    fn query(decision: &str, rule: &str) -> AuditQuery {
        AuditQuery { decision: decision.into(), rule: rule.into(), ..Default::default() }
    }

    #[test]
    fn bad_values_are_refused_with_their_field_named() {
        let err = Search::from_query(&AuditQuery {
            decision: "maybe".into(),
            approver: "a\0b".into(),
            tree_id: "t".repeat(MAX_NAME_BYTES + 1),
            ..Default::default()
        })
        .unwrap_err();
        let GuardError::InvalidArgument(violations) = err else { panic!("{err:?}") };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["decision", "approver", "tree_id"]);
        assert!(violations[0].description.contains("\"maybe\""), "{violations:?}");
    }

    #[test]
    fn filters_become_bound_conditions_numbered_after_the_others() {
        let search = Search::from_query(&query("pending", "r'; DROP TABLE audit; --")).unwrap();
        let mut next = 3;
        let (sql, binds) = search.conditions(false, &mut next);
        assert_eq!(
            sql,
            " AND json_extract(json, '$.decision') IS NULL AND json_extract(json, '$.state') = $3 \
             AND json_extract(json, '$.rule') = $4"
        );
        assert_eq!(binds, ["pending", "r'; DROP TABLE audit; --"]);
        assert_eq!(next, 5);
        let (sql, binds) = Search::from_query(&query("deny", "")).unwrap().conditions(true, &mut next);
        assert_eq!(
            (sql.as_str(), binds.as_slice()),
            (" AND (json::jsonb ->> 'decision') = $5", &["deny".to_string()][..])
        );
        assert_eq!(Search::from_query(&AuditQuery::default()).unwrap(), Search::default());
    }
}
