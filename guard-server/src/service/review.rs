//! ReviewService: called by approvers (guardctl, the console) with an approver certificate.
use super::streams::{watch_pending, BoxStream};
use super::{check_sees, not_found, refuse, Reply, Shared};
use crate::audit::Attempt;
use crate::error::GuardError;
use crate::identity::{caller, require, Role};
use crate::ids;
use crate::lifecycle::{self, now_ms, MAX_NAME_BYTES};
use crate::store::{Decision, Finish, ListFilter};
use guard_proto::v1::review_service_server::ReviewService;
use guard_proto::v1::{
    CancelRequestRequest, GetRequestRequest, ListRequestsRequest, ListRequestsResponse, Request, RequestEvent, Review,
    ReviewRequest, State, WatchPendingRequest, WhoAmIRequest, WhoAmIResponse,
};
use tonic::Response;

/// The service; its `shared` is what every service shares.
pub struct ReviewApi {
    pub shared: Shared,
}

#[tonic::async_trait]
impl ReviewService for ReviewApi {
    type WatchPendingStream = BoxStream<RequestEvent>;

    async fn watch_pending(&self, request: tonic::Request<WatchPendingRequest>) -> Reply<Self::WatchPendingStream> {
        let approver = require(&request, Role::Approver)?.name;
        Ok(Response::new(watch_pending(self.shared.clone(), approver).await?))
    }

    async fn list_requests(&self, request: tonic::Request<ListRequestsRequest>) -> Reply<ListRequestsResponse> {
        let approver = require(&request, Role::Approver)?.name;
        let r = request.into_inner();
        let mut states = Vec::with_capacity(r.states.len());
        for (i, s) in r.states.iter().enumerate() {
            match State::try_from(*s) {
                Ok(State::Unspecified) | Err(_) => {
                    return Err(GuardError::invalid(format!("states[{i}]"), format!("unknown state {s}")).into())
                }
                Ok(state) => states.push(state),
            }
        }
        let mut v = lifecycle::Violations::default();
        v.text("host", &r.host, MAX_NAME_BYTES, false);
        v.into_result()?;
        if !r.host.is_empty() {
            check_sees(&self.shared, &approver, &r.host)?;
        }
        let filter = ListFilter { states, host: Some(r.host).filter(|h| !h.is_empty()), limit: r.limit };
        let mut requests = self.shared.store.list(&filter).await?;
        requests.retain(|req| self.shared.policy.sees_host(&approver, &req.host));
        Ok(Response::new(ListRequestsResponse { requests }))
    }

    async fn get_request(&self, request: tonic::Request<GetRequestRequest>) -> Reply<Request> {
        let approver = require(&request, Role::Approver)?.name;
        let id = request.into_inner().id;
        if !ids::looks_like_request_id(&id) {
            return Err(not_found(&id, ""));
        }
        let found = self.shared.store.get(&id, now_ms()).await?.ok_or_else(|| not_found(&id, ""))?;
        check_sees(&self.shared, &approver, &found.host)?;
        Ok(Response::new(found))
    }

    async fn review(&self, request: tonic::Request<ReviewRequest>) -> Reply<Request> {
        let approver = require(&request, Role::Approver)?.name;
        let input = request.into_inner();
        if !ids::looks_like_request_id(&input.id) {
            return Err(not_found(&input.id, ""));
        }
        let id = input.id.clone();
        match self.review_as(&approver, input).await {
            Ok(reviewed) => Ok(Response::new(reviewed)),
            Err(e) => Err(refuse(&self.shared, Attempt::Review, &id, "", &approver, e).await.into()),
        }
    }

    async fn cancel_request(&self, request: tonic::Request<CancelRequestRequest>) -> Reply<Request> {
        let approver = require(&request, Role::Approver)?.name;
        let CancelRequestRequest { id, comment } = request.into_inner();
        if !ids::looks_like_request_id(&id) {
            return Err(not_found(&id, ""));
        }
        match self.cancel_as(&approver, &id, comment).await {
            Ok(cancelled) => Ok(Response::new(cancelled)),
            Err(e) => Err(refuse(&self.shared, Attempt::Cancel, &id, "", &approver, e).await.into()),
        }
    }

    /// Open to both roles (the answer says which one the caller has): it is how a client
    /// checks its certificate is the one it meant to use.
    async fn who_am_i(&self, request: tonic::Request<WhoAmIRequest>) -> Reply<WhoAmIResponse> {
        let me = caller(&request)?;
        Ok(Response::new(WhoAmIResponse { name: me.name, role: me.role.label().into() }))
    }
}

impl ReviewApi {
    async fn review_as(&self, approver: &str, input: ReviewRequest) -> Result<Request, GuardError> {
        crate::validate::review(&input)?;
        let now = now_ms();
        let review = Review {
            approver: approver.to_string(),
            approve: input.approve,
            comment: input.comment.clone(),
            time_ms: now,
            grant_seconds: input.grant_seconds,
        };
        let id = input.id.clone();
        let policy = self.shared.policy.clone();
        let who = approver.to_string();
        let judge = move |current: &Request| lifecycle::judge_review(&policy, &who, &input, current, now);
        self.shared.store.review(&id, review, &judge).await
    }

    async fn cancel_as(&self, approver: &str, id: &str, comment: String) -> Result<Request, GuardError> {
        let mut v = lifecycle::Violations::default();
        v.text("comment", &comment, lifecycle::MAX_TEXT_BYTES, false);
        v.into_result()?;
        // Cancelling ends the request as a deny does: only one who may deny it may cancel it.
        // What decides that (host, eligible approvers, owner) never changes after creation.
        let current = self
            .shared
            .store
            .get(id, now_ms())
            .await?
            .ok_or_else(|| GuardError::NotFound(format!("no request {id:?}")))?;
        lifecycle::may_decide(&self.shared.policy, approver, &current)?;
        let decision = Decision {
            state: State::Cancelled,
            reason: "cancelled".into(),
            decided_by: approver.to_string(),
            comment,
            decided_ms: now_ms(),
        };
        match self.shared.store.finish(id, None, decision).await? {
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
}
