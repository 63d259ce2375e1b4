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

use super::{Decision, DecisionSource, HoldInfo};
use anyhow::{bail, Result};
use backon::{BackoffBuilder, ExponentialBuilder};
use guard_api::Reason;
use guard_proto::client::{self, TlsFiles, TlsMaterial};
use guard_proto::v1::{
    agent_service_client::AgentServiceClient, AwaitRequest, Operation, Process, RegisterRequest,
    Request as ServerRequest, State, StatedReason, SubmitRequest, TreeExitedRequest, WithdrawRequest,
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
use tokio::time::{sleep, timeout_at, Instant};
use tonic::{transport::Channel, Code, Status};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The delays between attempts to reach guard-server: 100 ms doubling to 5 s, with jitter so
/// that the agents of many hosts do not retry in step after an outage. Endless; callers stop
/// at their own deadline.
pub fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_factor(2.0)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
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
}

impl RemoteDecisions {
    /// Starts the background registration; must run inside a runtime.
    /// `policies`: (name, "sha256:<hex>") of each policy in force, registered with the server;
    /// `audit_key`: the public half (hex) of the key the spool's checkpoints are signed with.
    pub fn start(cfg: ServerConfig, policies: Vec<(String, String)>, audit_key: String) -> Result<Arc<Self>> {
        let channel = cfg.channel()?;
        let me = Arc::new(Self { url: cfg.url, channel, instance: instance_id(), registered: AtomicBool::new(false) });
        tokio::spawn(me.clone().register(policies, audit_key));
        Ok(me)
    }

    /// A client on the shared channel (the audit forwarder uses one too).
    pub fn client(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
    }

    /// Whether the server has answered this agent's registration.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// For status screens: the server's URL and whether it has answered once.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"url": self.url, "registered": self.registered.load(Ordering::Relaxed)})
    }

    /// Whether the server answers this agent now (for `status`). The call reads and writes
    /// nothing: an `Await` of an id no request can have is answered NotFound by the service
    /// itself, which proves the connection, the TLS handshake, this host's certificate and the
    /// service. `Err` says what failed, naming the server.
    pub async fn probe(&self, wait: Duration) -> Result<(), String> {
        let mut client = self.client();
        let call = client.r#await(AwaitRequest { id: "status-probe".into() });
        match tokio::time::timeout(wait, call).await {
            Err(_) => Err(format!("guard-server {} did not answer within {wait:?}", self.url)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.code() == Code::NotFound => Ok(()),
            Ok(Err(e)) => Err(format!("guard-server {} is unreachable: {}", self.url, describe(&e))),
        }
    }

    async fn register(self: Arc<Self>, policies: Vec<(String, String)>, audit_key: String) {
        let req = RegisterRequest {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            policies: policies.iter().map(|(name, _)| name.clone()).collect(),
            policy_hashes: policies.into_iter().collect(),
            audit_key,
        };
        let mut delays = backoff();
        loop {
            match self.client().register(req.clone()).await {
                Ok(r) => {
                    tracing::info!("connected to guard-server {} as host {:?}", self.url, r.into_inner().host);
                    self.registered.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!("guard-server {} not reachable yet: {}", self.url, describe(&e));
                    sleep(delays.next().unwrap_or(MAX_BACKOFF)).await;
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
        let mut delays = backoff();
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
                    return refused_decision(&describe(&e));
                }
                Ok(Err(e)) => {
                    last_error = describe(&e);
                    tracing::warn!("hold {}: guard-server: {last_error}; retrying", hold.id);
                }
            }
            let delay = delays.next().unwrap_or(MAX_BACKOFF);
            if Instant::now() + delay >= deadline {
                break;
            }
            sleep(delay).await;
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
                expired_decision(id)
            }
            None => unreachable_decision(&self.url, &last_error),
        }
    }
}

impl DecisionSource for Arc<RemoteDecisions> {
    fn decide(&self, hold: HoldInfo) -> Pin<Box<dyn Future<Output = Decision> + Send>> {
        Box::pin(self.clone().decide_remotely(hold))
    }
}

/// The hold as the server's Operation. Only the acting process's uid is known (the kernel
/// reports the uid of the task that acts); its ancestors' uids are left 0, unknown.
pub fn operation(h: &HoldInfo) -> Operation {
    Operation {
        hook: h.hook.map(|k| k.name().to_string()).unwrap_or_default(),
        object: h.object.clone(),
        access: h.access.clone().unwrap_or_default(),
        rule: h.rule.clone().unwrap_or_default(),
        policy: h.policy.clone(),
        ancestry: h
            .lineage
            .iter()
            .map(|l| {
                let acting = l.pid == h.pid;
                let (argv, cut) = fit_argv(&l.argv);
                Process {
                    pid: l.pid,
                    ppid: l.ppid,
                    uid: if acting { h.uid } else { 0 },
                    exe: l.exe.clone().unwrap_or_default(),
                    argv,
                    argv_truncated: cut || (acting && h.argv_truncated),
                    argv_from_proc: l.argv_from_proc,
                    // Set by the server.
                    argv_redacted: false,
                }
            })
            .collect(),
        cwd: h.cwd.clone().unwrap_or_default(),
        user: h.user.clone(),
        uid: h.uid,
        tree_id: h.tree_id.clone(),
        owner_uid: h.owner.as_ref().map_or(0, |o| o.uid),
        owner: h.owner.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
        owner_source: h.owner.as_ref().map(|o| o.source.to_string()).unwrap_or_default(),
        policy_hash: h.policy_hash.clone(),
        stated_reason: h.stated_reason.as_ref().map(|r| StatedReason {
            tool: r.tool.clone(),
            call_id: r.call_id.clone(),
            reason: r.reason.clone(),
            session: r.session.clone(),
        }),
    }
}

/// `argv` cut to what the server accepts (at most MAX_ARGV arguments of MAX_ARG_BYTES each, cut
/// on a character boundary), and whether anything was cut. Sending it whole would have the
/// server refuse the request, and the hold could never be approved; cut, the approver sees
/// that it was (and the server makes no grant from an argv it did not see whole).
fn fit_argv(argv: &[String]) -> (Vec<String>, bool) {
    use guard_proto::limits::{MAX_ARGV, MAX_ARG_BYTES};
    let mut cut = argv.len() > MAX_ARGV;
    let fitted = argv
        .iter()
        .take(MAX_ARGV)
        .map(|a| {
            if a.len() <= MAX_ARG_BYTES {
                return a.clone();
            }
            cut = true;
            let mut end = MAX_ARG_BYTES;
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            a[..end].to_string()
        })
        .collect();
    (fitted, cut)
}

/// The decision a request's final state carries; None while it is pending.
pub fn final_decision(r: &ServerRequest) -> Option<Decision> {
    let comment = (!r.comment.is_empty()).then(|| r.comment.clone());
    let approver = (!r.decided_by.is_empty()).then(|| r.decided_by.clone());
    let (allow, reason) = match r.state() {
        State::Pending | State::Unspecified => return None,
        State::Approved => (true, Reason::Approved),
        State::Denied => (false, Reason::Denied),
        State::Expired => (false, Reason::Expired),
        State::Cancelled => (false, Reason::Cancelled),
    };
    // A grant or an auto rule is still an approval; the comment says which.
    let comment = match r.reason.as_str() {
        "grant" | "auto" => Some(format!("{} ({})", comment.unwrap_or_default(), r.reason).trim().to_owned()),
        _ => comment,
    };
    Some(Decision { request_id: Some(r.id.clone()), allow, reason, approver, comment })
}

/// The server refused the request: retrying cannot help.
fn refused_decision(why: &str) -> Decision {
    Decision::deny(Reason::Refused, Some(format!("guard-server refused the request: {why}")))
}

/// The server knew the request, and nobody decided before the hold's deadline.
fn expired_decision(id: String) -> Decision {
    Decision {
        comment: Some(format!("request {id}: nobody decided in time")),
        request_id: Some(id),
        ..Decision::expired()
    }
}

/// The server was never reached before the hold's deadline.
fn unreachable_decision(url: &str, last_error: &str) -> Decision {
    Decision::deny(Reason::Unreachable, Some(format!("guard-server {url} unreachable: {last_error}")))
}

/// Errors that retrying cannot fix. RESOURCE_EXHAUSTED is the server's rate limit on this
/// host or tree: waiting out the hold would only keep the thread stopped for an answer that
/// was refused.
fn refused(e: &Status) -> bool {
    matches!(
        e.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound
            | Code::ResourceExhausted
    )
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
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), guard_api::Timestamp::now().unix_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::Lineage;
    use guard_api::Hook;

    fn request(state: State, reason: &str) -> ServerRequest {
        ServerRequest {
            id: "r1".into(),
            state: state as i32,
            reason: reason.into(),
            decided_by: "bob".into(),
            comment: "ok".into(),
            ..Default::default()
        }
    }

    #[test]
    fn final_states_map_to_decisions() {
        assert_eq!(final_decision(&request(State::Pending, "")), None);
        assert_eq!(final_decision(&request(State::Unspecified, "")), None);
        let d = final_decision(&request(State::Approved, "approved")).unwrap();
        assert_eq!((d.allow, d.reason), (true, Reason::Approved));
        assert_eq!(d.request_id.as_deref(), Some("r1"));
        assert_eq!(d.approver.as_deref(), Some("bob"));
        assert_eq!(d.comment.as_deref(), Some("ok"));
        let d = final_decision(&request(State::Approved, "grant")).unwrap();
        assert_eq!((d.allow, d.reason, d.comment.as_deref()), (true, Reason::Approved, Some("ok (grant)")));
        let d = final_decision(&request(State::Denied, "denied")).unwrap();
        assert_eq!((d.allow, d.reason), (false, Reason::Denied));
        let d = final_decision(&request(State::Expired, "expired")).unwrap();
        assert_eq!((d.allow, d.reason), (false, Reason::Expired));
        let d = final_decision(&request(State::Cancelled, "cancelled")).unwrap();
        assert_eq!((d.allow, d.reason), (false, Reason::Cancelled));
    }

    #[test]
    fn failures_map_to_denials_with_their_reason() {
        let d = refused_decision("PermissionDenied: no");
        assert_eq!((d.allow, d.reason, d.request_id), (false, Reason::Refused, None));
        let d = unreachable_decision("https://s:7443", "connection refused");
        assert_eq!((d.allow, d.reason), (false, Reason::Unreachable));
        assert!(d.comment.unwrap().contains("https://s:7443 unreachable: connection refused"));
        let d = expired_decision("r7".into());
        assert_eq!((d.allow, d.reason, d.request_id.as_deref()), (false, Reason::Expired, Some("r7")));
        assert!(refused(&Status::permission_denied("x")));
        let limited = Status::resource_exhausted("rate limit: tree \"1-2\" of host h1 submitted more than 120");
        assert!(refused(&limited), "a rate-limited hold is denied at once");
        let d = refused_decision(&describe(&limited));
        assert_eq!((d.allow, d.reason), (false, Reason::Refused));
        assert!(d.comment.unwrap().contains("ResourceExhausted: rate limit: tree"));
        assert!(!refused(&Status::unavailable("x")));
    }

    #[test]
    fn backoff_grows_to_five_seconds_with_jitter() {
        let d: Vec<Duration> = backoff().take(12).collect();
        assert!(d[0] >= Duration::from_millis(100) && d[0] < Duration::from_millis(200), "{d:?}");
        assert!(d.iter().all(|x| *x <= MAX_BACKOFF * 2), "{d:?}");
        assert!(d[11] >= MAX_BACKOFF, "{d:?}");
    }

    #[test]
    fn a_hold_becomes_the_servers_operation() {
        let lineage = |pid, ppid, exe: &str| Lineage {
            pid,
            ppid,
            exe: Some(exe.into()),
            argv: vec![exe.into()],
            argv_from_proc: pid == 10,
        };
        let hold = HoldInfo {
            id: "3".into(),
            hook: Some(Hook::FileOpen),
            object: "/etc/shadow".into(),
            access: Some("read".into()),
            rule: Some("ask-shadow".into()),
            pid: 42,
            tid: 43,
            ppid: 10,
            uid: 1000,
            exe: Some("/usr/bin/cat".into()),
            argv: vec!["cat".into()],
            argv_from_proc: false,
            argv_truncated: true,
            ancestry: vec![],
            lineage: vec![lineage(42, 10, "/usr/bin/cat"), lineage(10, 1, "/bin/sh")],
            cwd: Some("/home/alice".into()),
            user: "alice".into(),
            tree_id: "10-777".into(),
            owner: Some(crate::agent::Owner { uid: 1001, name: "bob".into(), source: "loginuid" }),
            policy_hash: "sha256:00".into(),
            policy: "coding".into(),
            stated_reason: Some(guard_api::StatedReason { tool: "bash".into(), ..Default::default() }),
            held_secs: 0,
            timeout_secs: 30,
        };
        let op = operation(&hold);
        assert_eq!(op.hook, "file_open");
        assert_eq!(op.access, "read");
        assert_eq!(op.rule, "ask-shadow");
        assert_eq!(op.policy, "coding");
        assert_eq!((op.uid, op.user.as_str(), op.tree_id.as_str()), (1000, "alice", "10-777"));
        assert_eq!(op.cwd, "/home/alice");
        assert_eq!(op.ancestry.len(), 2);
        // The acting process has its uid and the kernel's argv flag; ancestors' uids are unknown.
        assert_eq!((op.ancestry[0].pid, op.ancestry[0].uid, op.ancestry[0].argv_truncated), (42, 1000, true));
        assert_eq!((op.ancestry[1].pid, op.ancestry[1].uid, op.ancestry[1].argv_truncated), (10, 0, false));
        // The tree's owner, not the acting user, and the policy's hash.
        assert_eq!((op.owner.as_str(), op.owner_uid, op.owner_source.as_str()), ("bob", 1001, "loginuid"));
        assert_eq!(op.policy_hash, "sha256:00");
        // The parent's argv was read from /proc: marked.
        assert_eq!((op.ancestry[0].argv_from_proc, op.ancestry[1].argv_from_proc), (false, true));
        assert_eq!(op.stated_reason.unwrap().tool, "bash");
        let none = HoldInfo { hook: None, access: None, ..hold };
        assert_eq!((operation(&none).hook.as_str(), operation(&none).access.as_str()), ("", ""));
    }

    #[test]
    fn argv_past_the_servers_limits_is_cut_on_a_character_boundary_and_said_so() {
        use guard_proto::limits::{MAX_ARGV, MAX_ARG_BYTES};
        let whole = vec!["ls".to_string(), "-l".to_string()];
        assert_eq!(fit_argv(&whole), (whole.clone(), false));
        // 'é' is two bytes: an odd limit would split it, so the cut steps back one byte.
        let long = format!("a{}", "é".repeat(MAX_ARG_BYTES));
        let (argv, cut) = fit_argv(&["sh".into(), long]);
        assert!(cut);
        assert_eq!(argv[1].len(), MAX_ARG_BYTES - 1);
        assert!(argv[1].starts_with("aé"));
        let many: Vec<String> = (0..MAX_ARGV + 5).map(|i| i.to_string()).collect();
        let (argv, cut) = fit_argv(&many);
        assert!(cut);
        assert_eq!(argv.len(), MAX_ARGV);
    }
}
