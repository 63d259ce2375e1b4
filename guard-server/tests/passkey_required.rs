//! `[passkeys]` is enforced by the server for every channel: an approval of a request whose
//! rule needs a passkey, verified any other way (here guardctl's client certificate), is
//! refused with a message that says where to approve it, and changes nothing; denying it, and
//! approving requests of other rules, work as before.
mod common;

use common::*;
use guard_proto::v1::{GetRequestRequest, ReviewRequest, State};

#[tokio::test]
async fn an_approval_that_needs_a_passkey_is_refused_without_one() {
    let site = Site::with(config().extra("[passkeys]\nrequired = \"rules\"\nrules = [\"etc-*\"]\n"));
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let mut guarded =
        agent.submit(submit(op("etc-writes", "8-1", "dev", 2000, "/bin/a"), 30, "")).await.unwrap().into_inner();
    let guarded = next(&mut guarded).await;
    let mut plain =
        agent.submit(submit(op("tmp-writes", "8-2", "dev", 2000, "/bin/b"), 30, "")).await.unwrap().into_inner();
    let plain = next(&mut plain).await;
    let review =
        |id: &str, approve: bool| ReviewRequest { id: id.into(), approve, comment: "ok".into(), grant_seconds: 0 };
    let mut alice = server.approver("alice").await;

    let refused = alice.review(review(&guarded.id, true)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let message = refused.message();
    assert!(
        message.contains(&format!("approving request {} (rule \"etc-writes\") needs a passkey", guarded.id))
            && message.contains("web console")
            && message.contains("client certificate"),
        "{message}"
    );
    let now = alice.get_request(GetRequestRequest { id: guarded.id.clone() }).await.unwrap().into_inner();
    assert_eq!((state(&now), now.reviews.len()), (State::Pending, 0), "the refusal changed nothing");

    // A grant is an approval too.
    let grant = ReviewRequest { grant_seconds: 60, ..review(&guarded.id, true) };
    assert_eq!(alice.review(grant).await.unwrap_err().code(), tonic::Code::FailedPrecondition);

    // Other rules are approved as before; a deny never needs a passkey.
    assert_eq!(state(&alice.review(review(&plain.id, true)).await.unwrap().into_inner()), State::Approved);
    assert_eq!(state(&alice.review(review(&guarded.id, false)).await.unwrap().into_inner()), State::Denied);
}
