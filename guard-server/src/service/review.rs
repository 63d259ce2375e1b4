//! ReviewService: called by approvers (guardctl, the console) with an approver certificate.
//! The rules themselves are in `approvals.rs`, shared with the console and the chat channels.
use super::approvals::{self, Verified};
use super::streams::{watch_pending, BoxStream};
use super::{Reply, Shared};
use crate::error::GuardError;
use crate::identity::{caller, require, Role};
use guard_proto::v1::review_service_server::ReviewService;
use guard_proto::v1::{
    CancelRequestRequest, GetRequestRequest, ListRequestsRequest, ListRequestsResponse, Request, RequestEvent,
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
        let host = Some(r.host).filter(|h| !h.is_empty());
        let requests = approvals::list(&self.shared, &approver, states, host, r.limit).await?;
        Ok(Response::new(ListRequestsResponse { requests }))
    }

    async fn get_request(&self, request: tonic::Request<GetRequestRequest>) -> Reply<Request> {
        let approver = require(&request, Role::Approver)?.name;
        Ok(Response::new(approvals::get(&self.shared, &approver, &request.into_inner().id).await?))
    }

    async fn review(&self, request: tonic::Request<ReviewRequest>) -> Reply<Request> {
        let approver = require(&request, Role::Approver)?.name;
        let input = request.into_inner();
        Ok(Response::new(approvals::review(&self.shared, &approver, Verified::ClientCertificate, input).await?))
    }

    async fn cancel_request(&self, request: tonic::Request<CancelRequestRequest>) -> Reply<Request> {
        let approver = require(&request, Role::Approver)?.name;
        let CancelRequestRequest { id, comment } = request.into_inner();
        Ok(Response::new(approvals::cancel(&self.shared, &approver, &id, comment).await?))
    }

    /// Open to both roles (the answer says which one the caller has): it is how a client
    /// checks its certificate is the one it meant to use.
    async fn who_am_i(&self, request: tonic::Request<WhoAmIRequest>) -> Reply<WhoAmIResponse> {
        let me = caller(&request)?;
        Ok(Response::new(WhoAmIResponse { name: me.name, role: me.role.label().into() }))
    }
}
