//! AgentService: called by guard-agent with a host certificate. The host of every call is
//! the certificate's CN; a host only ever sees its own requests.
use super::streams::{follow, BoxStream};
use super::{not_found, refuse, Reply, Shared};
use crate::audit::Attempt;
use crate::error::GuardError;
use crate::identity::{require, Role};
use crate::lifecycle::{self, now_ms};
use crate::ratelimit::Over;
use crate::store::{Decision, Finish, HostInfo};
use crate::{ids, validate};
use guard_proto::v1::agent_service_server::AgentService;
use guard_proto::v1::{
    AwaitRequest, RefusedRecord, RegisterRequest, RegisterResponse, ReportRecordsRequest, ReportRecordsResponse,
    Request, State, StreamPosition, SubmitRequest, TreeExitedRequest, TreeExitedResponse, WithdrawRequest,
};
use tonic::Response;

/// The service; its `shared` is what every service shares.
pub struct AgentApi {
    pub shared: Shared,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(&self, request: tonic::Request<RegisterRequest>) -> Reply<RegisterResponse> {
        let host = require(&request, Role::Agent)?.name;
        let r = request.into_inner();
        validate::register(&r)?;
        let now = now_ms();
        let info = HostInfo {
            host: host.clone(),
            agent_version: r.agent_version,
            kernel: r.kernel,
            policies: r.policies,
            policy_hashes: r.policy_hashes.clone(),
            seen_ms: now,
        };
        // A changed hash at registration is the host's word (its agent restarted with another
        // policy); it is logged and recorded, and requests carry the hash they were decided
        // under.
        let before = self.shared.store.register_host(info).await?;
        if let Some(before) = &before {
            for (name, hash) in &r.policy_hashes {
                match before.get(name) {
                    Some(old) if old != hash => {
                        tracing::warn!("host {host} re-registered policy {name:?}: {old} -> {hash}")
                    }
                    _ => {}
                }
            }
        }
        if !r.audit_key.is_empty() {
            self.shared.store.register_audit_key(&host, &r.audit_key, now).await?;
        }
        // A policy new or changed since the last registration is a record; the same policy
        // registered again (an agent reconnecting) is not.
        let loaded = crate::audit::policy_records(&host, now, &r.policy_hashes, before.as_ref());
        self.shared.store.append_server(loaded).await?;
        Ok(Response::new(RegisterResponse { host, server_time_ms: now }))
    }

    type SubmitStream = BoxStream<Request>;

    async fn submit(&self, request: tonic::Request<SubmitRequest>) -> Reply<Self::SubmitStream> {
        let host = require(&request, Role::Agent)?.name;
        let submit = request.into_inner();
        validate::submit(&submit)?;
        let tree = submit.operation.as_ref().map(|o| o.tree_id.as_str()).unwrap_or_default();
        if let Err(over) = self.shared.limiter.admit(&host, tree, std::time::Instant::now()) {
            let (what, rate, key) = match over {
                Over::Host(r) => (format!("host {host}"), r, "host"),
                Over::Tree(r) => (format!("tree {tree:?} of host {host}"), r, "tree"),
            };
            return Err(tonic::Status::resource_exhausted(format!(
                "rate limit: {what} submitted more than {} requests a minute (burst {}); \
                 [rate_limit] {key}_per_minute in the server config",
                rate.per_minute, rate.burst
            )));
        }
        let registered = self.shared.store.host_policies(&host).await?;
        let id = ids::new_request_id().map_err(|_| GuardError::Internal("system randomness failed".into()))?;
        let new = lifecycle::plan_submit(&self.shared.policy, &host, id, submit, now_ms(), registered.as_ref())?;
        // Subscribe before the request exists: a decision right after creation is not missed.
        let rx = self.shared.fanout.subscribe();
        let created = self.shared.store.submit(new).await?;
        Ok(Response::new(follow(self.shared.clone(), rx, created)))
    }

    type AwaitStream = BoxStream<Request>;

    async fn r#await(&self, request: tonic::Request<AwaitRequest>) -> Reply<Self::AwaitStream> {
        let host = require(&request, Role::Agent)?.name;
        let id = request.into_inner().id;
        if !ids::looks_like_request_id(&id) {
            return Err(not_found(&id, " from this host"));
        }
        let rx = self.shared.fanout.subscribe();
        let current = self.shared.store.get(&id, now_ms()).await?.filter(|r| r.host == host);
        let current = current.ok_or_else(|| not_found(&id, " from this host"))?;
        Ok(Response::new(follow(self.shared.clone(), rx, current)))
    }

    async fn withdraw(&self, request: tonic::Request<WithdrawRequest>) -> Reply<Request> {
        let host = require(&request, Role::Agent)?.name;
        let withdraw = request.into_inner();
        let (state, reason) = match validate::withdraw(&withdraw) {
            Ok(valid) => valid,
            Err(e) if ids::looks_like_request_id(&withdraw.id) => {
                let who = format!("agent:{host}");
                return Err(refuse(&self.shared, Attempt::Withdraw, &withdraw.id, &host, &who, e).await.into());
            }
            Err(e) => return Err(e.into()),
        };
        let WithdrawRequest { id, why } = withdraw;
        if !ids::looks_like_request_id(&id) {
            return Err(not_found(&id, " from this host"));
        }
        let decision = Decision {
            state,
            reason: reason.into(),
            decided_by: format!("agent:{host}"),
            comment: why,
            decided_ms: now_ms(),
        };
        // Already decided (e.g. approved just before the agent gave up): the agent gets the
        // request as it is and can act on the real outcome; that its withdraw changed nothing
        // is recorded.
        let who = format!("agent:{host}");
        match self.shared.store.finish(&id, Some(&host), decision).await {
            Ok(Finish::Ended(r)) => Ok(Response::new(r)),
            Ok(Finish::AlreadyEnded(r)) => {
                let state = State::try_from(r.state).unwrap_or(State::Unspecified);
                let message = format!("request {id} is {}, no longer pending", state.label());
                super::record_refusal(&self.shared, Attempt::Withdraw, &id, &host, &who, &message, false).await;
                Ok(Response::new(r))
            }
            Err(e) => Err(refuse(&self.shared, Attempt::Withdraw, &id, &host, &who, e).await.into()),
        }
    }

    async fn tree_exited(&self, request: tonic::Request<TreeExitedRequest>) -> Reply<TreeExitedResponse> {
        let host = require(&request, Role::Agent)?.name;
        let exited = request.into_inner();
        validate::tree_exited(&exited)?;
        let tree_id = exited.tree_id;
        let grants_ended = self.shared.store.end_grants(&host, &tree_id, now_ms()).await?;
        Ok(Response::new(TreeExitedResponse { grants_ended }))
    }

    async fn report_records(&self, request: tonic::Request<ReportRecordsRequest>) -> Reply<ReportRecordsResponse> {
        let host = require(&request, Role::Agent)?.name;
        let (mut records, bad) = validate::report_records(&host, &request.into_inner())?;
        for record in &mut records {
            // Redacted before it is stored, like a request's argv, after its hash was checked;
            // the link says so (the content no longer hashes to it, the chain still holds).
            if self.shared.policy.redact.redact(&mut record.argv) {
                let note = crate::audit::REDACTED_NOTE;
                record.comment = Some(match record.comment.take().filter(|c| !c.is_empty()) {
                    Some(c) => format!("{c} ({note})"),
                    None => note.to_string(),
                });
                if let Some(link) = &mut record.chain {
                    link.redacted = true;
                }
            }
        }
        let done = self.shared.store.append_records(&host, records, now_ms()).await?;
        // A refusal from the store comes first in the chain; else the service's own.
        let refused = done.refused.or(bad).map(|r| {
            tracing::warn!("host {host}: record {} of stream {} refused: {}", r.seq, r.stream, r.message);
            RefusedRecord { stream: r.stream, seq: r.seq, message: r.message }
        });
        Ok(Response::new(ReportRecordsResponse {
            accepted: done.accepted,
            stored: done.stored.into_iter().map(|(stream, seq)| StreamPosition { stream, seq }).collect(),
            refused,
        }))
    }
}
