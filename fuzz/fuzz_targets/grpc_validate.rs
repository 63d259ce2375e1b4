//! The server's checks of incoming gRPC messages, on messages decoded from arbitrary bytes
//! (what a host or an approver could send): a message the checks accept is within every
//! bound the store and the screens rely on, and what follows the checks (planning the request,
//! judging the review, the error's conversion to a gRPC status) never panics.
#![no_main]

use guard_api::AuditRecord;
use guard_proto::v1::{
    Operation, RegisterRequest, ReportRecordsRequest, Request, ReviewRequest, State, SubmitRequest, TreeExitedRequest,
    WithdrawRequest,
};
use guard_server::config::Policy;
use guard_server::lifecycle::{self, MAX_ANCESTRY, MAX_ARGV, MAX_GRANT_SECONDS, MAX_NAME_BYTES, MAX_OBJECT_BYTES};
use guard_server::validate;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::collections::HashMap;

fn clean(s: &str, max: usize) -> bool {
    s.len() <= max && !s.contains('\0')
}

fn refused<T>(r: Result<T, guard_server::error::GuardError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            // The refusal reaches the caller as a status with its details: that must not panic.
            let status = tonic::Status::from(e);
            assert_ne!(status.code(), tonic::Code::Ok);
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let policy = Policy::default();
    match which % 6 {
        0 => {
            let Ok(req) = SubmitRequest::decode(bytes) else { return };
            if refused(validate::submit(&req)).is_none() {
                return;
            }
            let op = req.operation.as_ref().expect("an accepted submission has an operation");
            assert!(clean(&req.hold_key, MAX_NAME_BYTES));
            assert!(!op.hook.is_empty() && lifecycle::operation_hook(&op.hook).is_some());
            assert!(!op.object.is_empty() && clean(&op.object, MAX_OBJECT_BYTES));
            for s in [&op.access, &op.rule, &op.policy, &op.user, &op.tree_id] {
                assert!(clean(s, MAX_NAME_BYTES));
            }
            assert!(op.ancestry.len() <= MAX_ANCESTRY);
            assert!(op.ancestry.iter().all(|p| p.argv.len() <= MAX_ARGV));
            // The host registered exactly the policy the request names: the request is planned.
            let registered = HashMap::from([(op.policy.clone(), op.policy_hash.clone())]);
            let planned =
                lifecycle::plan_submit(&policy, "host", "id".into(), req.clone(), i64::MAX - 1, Some(&registered));
            match planned {
                Ok(new) => assert!(new.expires_ms >= new.created_ms),
                // Only a request that carries no policy hash is refused.
                Err(e) => assert!(req.operation.as_ref().is_some_and(|o| o.policy_hash.is_empty()), "{e}"),
            }
        }
        1 => {
            let Ok(review) = ReviewRequest::decode(bytes) else { return };
            if refused(validate::review(&review)).is_none() {
                return;
            }
            assert!(review.grant_seconds <= MAX_GRANT_SECONDS);
            assert!(review.approve || review.grant_seconds == 0);
            let request = Request {
                id: "r1".into(),
                state: State::Pending as i32,
                operation: Some(Operation { tree_id: "1-2".into(), user: "bob".into(), ..Default::default() }),
                ..Default::default()
            };
            if let Some(effect) = refused(lifecycle::judge_review(&policy, "alice", &review, &request, i64::MAX - 1)) {
                if let Some(until) = effect.grant_until_ms {
                    assert!(until >= i64::MAX - 1);
                }
            }
        }
        2 => {
            let Ok(req) = RegisterRequest::decode(bytes) else { return };
            if refused(validate::register(&req)).is_some() {
                assert!(req.policies.len() <= validate::MAX_REGISTERED_POLICIES);
                assert!(req.policies.iter().all(|p| clean(p, MAX_NAME_BYTES)));
            }
        }
        3 => {
            let Ok(req) = ReportRecordsRequest::decode(bytes) else { return };
            if let Some((records, bad)) = refused(validate::report_records("web1", &req)) {
                // Every record up to the first bad one is kept, and only those.
                let expected = if bad.is_some() { records.len() + 1 } else { req.records.len() };
                assert!(expected <= req.records.len());
                for r in records {
                    // Kept only if chained, of this host, and hashing to its link.
                    let link = r.chain.as_ref().expect("a kept record is chained");
                    assert_eq!(r.host, "web1");
                    assert_eq!(guard_api::chain::record_hash(&r), link.hash);
                    let again = AuditRecord::from_json(&r.to_json()).expect("a record's own JSON reads back");
                    assert_eq!(again, r);
                }
            }
        }
        4 => {
            let Ok(req) = WithdrawRequest::decode(bytes) else { return };
            if let Some((state, _)) = refused(validate::withdraw(&req)) {
                assert!(lifecycle::is_final(state as i32));
            }
        }
        _ => {
            let Ok(req) = TreeExitedRequest::decode(bytes) else { return };
            if refused(validate::tree_exited(&req)).is_some() {
                assert!(!req.tree_id.is_empty() && clean(&req.tree_id, MAX_NAME_BYTES));
            }
        }
    }
});
