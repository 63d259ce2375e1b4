//! The central approval service as a source of decisions: each hold becomes a request on
//! guard-server (gRPC over mTLS), and the held syscall waits for its final state.
//!
//! Failure modes, by design:
//! - server unreachable: retry with backoff until the hold's deadline, then deny with reason
//!   `unreachable`; nothing waits longer than the policy's ask_timeout;
//! - connection lost mid-wait: re-attach to the same request (`Await`), or resubmit with the
//!   same hold key, which the server treats as the same request;
//! - the server refuses the request (a bug or a misconfigured certificate): deny at once with
//!   reason `refused`, since retrying cannot help.

use crate::holds::{Decision, DecisionSource, HoldInfo};
use anyhow::{bail, Context, Result};
use guard_proto::client::{self, TlsFiles, TlsMaterial};
use guard_proto::v1::{
    agent_service_client::AgentServiceClient, AwaitRequest, Operation, Process, Record, RegisterRequest,
    ReportRecordsRequest, Request as ServerRequest, State, StatedReason, SubmitRequest, TreeExitedRequest,
    WithdrawRequest,
};
use serde::Deserialize;
use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    sync::mpsc,
    time::{sleep, timeout_at, Instant},
};
use tonic::{transport::Channel, Code, Status};

/// Records waiting to be reported while the server is away; beyond this the oldest are
/// dropped from the central copy (the local audit log keeps every one).
const RECORD_BACKLOG: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `--server` and its credentials, shared by `run` (flags) and the daemon (config file).
#[derive(clap::Args, Debug, Default)]
pub struct ServerArgs {
    /// Central approval service, e.g. https://guard.example:7443 (holds are then decided there).
    #[arg(long, env = "GUARD_SERVER")]
    pub server: Option<String>,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, env = "GUARD_SERVER_CA", requires = "server")]
    pub server_ca: Option<PathBuf>,
    /// This host's agent certificate (PEM); the server takes the host name from it.
    #[arg(long, env = "GUARD_AGENT_CERT", requires = "server")]
    pub agent_cert: Option<PathBuf>,
    /// The agent certificate's private key (PEM).
    #[arg(long, env = "GUARD_AGENT_KEY", requires = "server")]
    pub agent_key: Option<PathBuf>,
}

impl ServerArgs {
    pub fn into_config(self) -> Result<Option<ServerConfig>> {
        let Some(url) = self.server else { return Ok(None) };
        let need =
            |v: Option<PathBuf>, flag: &str| v.with_context(|| format!("--server needs {flag} (or its env var)"));
        Ok(Some(ServerConfig {
            url,
            ca: need(self.server_ca, "--server-ca FILE")?,
            cert: need(self.agent_cert, "--agent-cert FILE")?,
            key: need(self.agent_key, "--agent-key FILE")?,
        }))
    }
}

/// Where the server is and how this host proves who it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    /// A channel that connects on first use and reconnects after failures.
    fn channel(&self) -> Result<Channel> {
        if !self.url.starts_with("https://") {
            bail!("server URL {:?} must start with https:// (guard-server only speaks mTLS)", self.url);
        }
        let files = TlsFiles {
            ca: (self.ca.clone(), "--server-ca"),
            cert: (self.cert.clone(), "--agent-cert"),
            key: (self.key.clone(), "--agent-key"),
        };
        let tls = TlsMaterial::load(&files)?;
        let endpoint = client::endpoint(&self.url, &tls)?.connect_timeout(Duration::from_secs(3));
        Ok(endpoint.connect_lazy())
    }
}

pub struct RemoteDecisions {
    url: String,
    channel: Channel,
    /// Distinguishes this agent process's hold ids from an earlier one's on the same host.
    instance: String,
    registered: AtomicBool,
    records: mpsc::Sender<String>,
}

impl RemoteDecisions {
    /// Starts the background registration and record reporting; must run inside a runtime.
    pub fn start(cfg: ServerConfig, policies: Vec<String>) -> Result<Arc<Self>> {
        let channel = cfg.channel()?;
        let (tx, rx) = mpsc::channel(RECORD_BACKLOG);
        let me = Arc::new(Self {
            url: cfg.url,
            channel,
            instance: instance_id(),
            registered: AtomicBool::new(false),
            records: tx,
        });
        tokio::spawn(me.clone().register(policies));
        tokio::spawn(me.clone().report_records(rx));
        Ok(me)
    }

    fn client(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
    }

    /// Where the audit log sends a copy of each record for the central trail.
    pub fn records(&self) -> mpsc::Sender<String> {
        self.records.clone()
    }

    /// For status screens: the server's URL and whether it has answered once.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"url": self.url, "registered": self.registered.load(Ordering::Relaxed)})
    }

    async fn register(self: Arc<Self>, policies: Vec<String>) {
        let req = RegisterRequest {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            policies,
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.client().register(req.clone()).await {
                Ok(r) => {
                    tracing::info!("connected to guard-server {} as host {:?}", self.url, r.into_inner().host);
                    self.registered.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!("guard-server {} not reachable yet: {}", self.url, describe(&e));
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Sends records in batches; keeps a failed batch and retries it with backoff.
    async fn report_records(self: Arc<Self>, mut rx: mpsc::Receiver<String>) {
        let mut batch: Vec<Record> = vec![];
        let mut backoff = Duration::from_millis(200);
        loop {
            if batch.is_empty() {
                match rx.recv().await {
                    Some(json) => batch.push(Record { json }),
                    None => return,
                }
            }
            while batch.len() < 500 {
                match rx.try_recv() {
                    Ok(json) => batch.push(Record { json }),
                    Err(_) => break,
                }
            }
            match self.client().report_records(ReportRecordsRequest { records: batch.clone() }).await {
                Ok(_) => {
                    batch.clear();
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::debug!("reporting {} records failed: {}", batch.len(), describe(&e));
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Ends grants scoped to a tree that exited; best effort, a little while at most.
    pub async fn tree_exited(&self, tree_id: &str) {
        let mut client = self.client();
        let call = client.tree_exited(TreeExitedRequest { tree_id: tree_id.into() });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("could not end the grants of tree {tree_id}: {}", describe(&e)),
            Err(_) => tracing::warn!("could not end the grants of tree {tree_id}: server did not answer"),
        }
    }

    async fn decide_remotely(self: Arc<Self>, hold: HoldInfo) -> Decision {
        let deadline = Instant::now() + Duration::from_secs(hold.timeout_secs);
        let submit = SubmitRequest {
            operation: Some(operation(&hold)),
            timeout_seconds: hold.timeout_secs,
            hold_key: format!("{}-{}", self.instance, hold.id),
        };
        let mut request_id: Option<String> = None;
        let mut last_error = String::from("no answer");
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut client = self.client();
            let attempt = async {
                let mut stream = match &request_id {
                    None => client.submit(submit.clone()).await?.into_inner(),
                    Some(id) => client.r#await(AwaitRequest { id: id.clone() }).await?.into_inner(),
                };
                while let Some(r) = stream.message().await? {
                    if request_id.is_none() {
                        tracing::info!("hold {} is request {} on guard-server", hold.id, r.id);
                    }
                    request_id = Some(r.id.clone());
                    if let Some(d) = final_decision(&r) {
                        return Ok(Some(d));
                    }
                }
                Ok::<_, Status>(None)
            };
            match timeout_at(deadline, attempt).await {
                Err(_) => break,
                Ok(Ok(Some(d))) => return d,
                Ok(Ok(None)) => last_error = "the server closed the stream before a decision".into(),
                Ok(Err(e)) if refused(&e) => {
                    tracing::error!("hold {}: guard-server refused it: {}", hold.id, describe(&e));
                    return Decision {
                        request_id: None,
                        allow: false,
                        reason: "refused",
                        approver: None,
                        comment: Some(format!("guard-server refused the request: {}", describe(&e))),
                    };
                }
                Ok(Err(e)) => {
                    last_error = describe(&e);
                    tracing::warn!("hold {}: guard-server: {last_error}; retrying", hold.id);
                }
            }
            if Instant::now() + backoff >= deadline {
                break;
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        match request_id {
            // The server knew of it: it expires there too; say so now rather than wait for
            // its sweeper, so approvers stop seeing it.
            Some(id) => {
                let mut client = self.client();
                let why = WithdrawRequest { id: id.clone(), why: "timeout".into() };
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.withdraw(why)).await;
                });
                Decision {
                    allow: false,
                    reason: "expired",
                    approver: None,
                    comment: Some(format!("request {id}: nobody decided in time")),
                    request_id: Some(id),
                }
            }
            None => Decision {
                request_id: None,
                allow: false,
                reason: "unreachable",
                approver: None,
                comment: Some(format!("guard-server {} unreachable: {last_error}", self.url)),
            },
        }
    }
}

impl DecisionSource for Arc<RemoteDecisions> {
    fn decide(&self, hold: HoldInfo) -> Pin<Box<dyn Future<Output = Decision> + Send>> {
        Box::pin(self.clone().decide_remotely(hold))
    }
}

/// The hold as the server's Operation.
fn operation(h: &HoldInfo) -> Operation {
    Operation {
        hook: h.hook.into(),
        object: h.object.clone(),
        access: String::new(),
        rule: h.rule.clone().unwrap_or_default(),
        policy: h.policy.clone(),
        ancestry: h
            .lineage
            .iter()
            .map(|l| Process {
                pid: l.pid,
                ppid: l.ppid,
                uid: h.uid,
                exe: l.exe.clone().unwrap_or_default(),
                argv: l.argv.clone(),
                argv_truncated: false,
            })
            .collect(),
        cwd: h.cwd.clone().unwrap_or_default(),
        user: h.user.clone(),
        uid: h.uid,
        tree_id: h.tree_id.clone(),
        stated_reason: h.stated_reason.as_ref().map(|r| StatedReason {
            tool: r.tool.clone(),
            call_id: r.call_id.clone(),
            reason: r.reason.clone(),
            session: r.session.clone(),
        }),
    }
}

/// The decision a request's final state carries; None while it is pending.
fn final_decision(r: &ServerRequest) -> Option<Decision> {
    let comment = (!r.comment.is_empty()).then(|| r.comment.clone());
    let approver = (!r.decided_by.is_empty()).then(|| r.decided_by.clone());
    let (allow, reason) = match r.state() {
        State::Pending | State::Unspecified => return None,
        State::Approved => (true, "approved"),
        State::Denied => (false, "denied"),
        State::Expired => (false, "expired"),
        State::Cancelled => (false, "cancelled"),
    };
    // A grant or an auto rule is still an approval; the comment says which.
    let comment = match r.reason.as_str() {
        "grant" | "auto" => Some(format!("{} ({})", comment.unwrap_or_default(), r.reason).trim().to_owned()),
        _ => comment,
    };
    Some(Decision { request_id: Some(r.id.clone()), allow, reason, approver, comment })
}

/// Errors that retrying cannot fix.
fn refused(e: &Status) -> bool {
    matches!(e.code(), Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated | Code::NotFound)
}

fn describe(e: &Status) -> String {
    use std::error::Error;
    let mut s = format!("{:?}: {}", e.code(), e.message());
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(&format!(": {cause}"));
        src = cause.source();
    }
    s
}

fn instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().chars().filter(|c| *c != '-').take(12).collect())
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), crate::events::now_rfc3339()))
}
