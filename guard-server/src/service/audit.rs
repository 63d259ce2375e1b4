//! AuditService: the server's trail, for approvers.
use super::streams::BoxStream;
use super::{Reply, Shared};
use crate::identity::{require, Role};
use crate::lifecycle::{Violations, MAX_NAME_BYTES};
use crate::search::{Search, Visible};
use crate::store::AuditFilter;
use guard_proto::v1::audit_service_server::AuditService;
use guard_proto::v1::{AuditEvent, AuditHead, AuditHeadRequest, AuditQuery};
use tonic::Response;

/// The service; its `shared` is what every service shares.
pub struct AuditApi {
    pub shared: Shared,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type QueryStream = BoxStream<AuditEvent>;

    async fn query(&self, request: tonic::Request<AuditQuery>) -> Reply<Self::QueryStream> {
        let approver = require(&request, Role::Approver)?.name;
        let q = request.into_inner();
        let mut v = Violations::default();
        v.text("host", &q.host, MAX_NAME_BYTES, false);
        v.text("request_id", &q.request_id, MAX_NAME_BYTES, false);
        v.into_result()?;
        if !q.host.is_empty() {
            super::approvals::check_sees(&self.shared, &approver, &q.host)?;
        }
        let search = Search::from_query(&q)?;
        // Only the hosts this approver is assigned to (the trail holds argv and paths).
        let policy = self.shared.policy.clone();
        let visible = Visible::new(move |host| policy.sees_host(&approver, host));
        let filter = AuditFilter {
            since_ms: q.since_ms,
            until_ms: Some(q.until_ms).filter(|u| *u != 0),
            host: Some(q.host).filter(|h| !h.is_empty()),
            request_id: Some(q.request_id).filter(|r| !r.is_empty()),
            after_seq: q.after_seq,
            search,
            visible: Some(visible),
            limit: q.limit,
        };
        let events = self.shared.store.audit(&filter).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(events.into_iter().map(Ok)))))
    }

    async fn head(&self, request: tonic::Request<AuditHeadRequest>) -> Reply<AuditHead> {
        require(&request, Role::Approver)?;
        Ok(Response::new(self.shared.store.audit_head().await?))
    }
}
