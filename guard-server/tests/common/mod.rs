//! Test harness: a fresh PKI in a temp dir, the real server on 127.0.0.1:0, real tonic
//! clients over mTLS.
#![allow(dead_code)]
use guard_proto::client::{self, TlsFiles, TlsMaterial};
use guard_proto::v1::agent_service_client::AgentServiceClient;
use guard_proto::v1::audit_service_client::AuditServiceClient;
use guard_proto::v1::review_service_client::ReviewServiceClient;
use guard_proto::v1::{Operation, Process, RegisterRequest, Request, State, SubmitRequest};
use guard_server::config::ServerConfig;
use guard_server::pki::{init_pki, PkiSpec};
use guard_server::server::{self, ServerHandle};
use guard_server::testing::config::ServerToml;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Streaming;

pub const HOSTS: &[&str] = &["h1", "h2"];
pub const APPROVERS: &[&str] = &["alice", "bob", "carol", "mallory"];

/// The policy every test runs under: a two-person rule, auto rules both ways, and approvers
/// whose own Unix users they may not approve.
pub fn config() -> ServerToml {
    ServerToml::new("pki")
        .default_timeout("30s")
        .approver("alice", &["alice", "1000"])
        .approver("bob", &["bob"])
        .approver("carol", &[])
        .require("prod-deploy", 2, &["alice", "bob", "carol"])
        .auto_approve("bench-auto")
        .auto_deny("auto-deny")
}

/// A directory with a PKI and a config file, shared by the replicas of one test.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        Site::with(config())
    }

    /// A site whose server runs under `config`.
    pub fn with(config: ServerToml) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = PkiSpec {
            server_names: vec![],
            hosts: HOSTS.iter().map(|s| s.to_string()).collect(),
            approvers: APPROVERS.iter().map(|s| s.to_string()).collect(),
        };
        init_pki(&dir.path().join("pki"), &spec).expect("init-pki");
        std::fs::write(dir.path().join("server.toml"), config.render()).expect("config");
        Site { dir }
    }

    /// The SQLite database the config's default puts next to it.
    pub fn db_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("guard.db").display())
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Starts a server on this site; `database_url` overrides the config's SQLite default.
    pub async fn start(&self, database_url: Option<&str>) -> Server {
        let mut config = ServerConfig::load(&self.dir.path().join("server.toml")).expect("config loads");
        if let Some(url) = database_url {
            config.database_url = url.to_string();
        }
        let handle = server::start(&config).await.expect("server starts");
        Server { handle: Some(handle), pki: self.pki() }
    }
}

pub struct Server {
    handle: Option<ServerHandle>,
    pki: PathBuf,
}

impl Server {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().expect("running").addr()
    }

    /// The web console's address and origin (the config must have a `[console]` table).
    pub fn console(&self) -> (std::net::SocketAddr, String) {
        let (addr, origin) = self.handle.as_ref().expect("running").console().expect("a [console] in the config");
        (addr, origin.to_string())
    }

    pub async fn channel(&self, stem: &str) -> Channel {
        channel_with(self.addr(), &self.pki, &self.pki, stem).await.expect("connect")
    }

    /// An agent of `host`, registered with policy `test` at [`POLICY_HASH`] (as every agent
    /// registers before it submits).
    pub async fn agent(&self, host: &str) -> AgentServiceClient<Channel> {
        let mut agent = self.unregistered_agent(host).await;
        agent.register(registration(&[("test", POLICY_HASH)])).await.expect("register");
        agent
    }

    /// An agent of `host` that has not registered.
    pub async fn unregistered_agent(&self, host: &str) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel(&format!("agent-{host}")).await)
    }

    pub async fn approver(&self, name: &str) -> ReviewServiceClient<Channel> {
        ReviewServiceClient::new(self.channel(&format!("approver-{name}")).await)
    }

    pub async fn auditor(&self, name: &str) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel(&format!("approver-{name}")).await)
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
        }
    }
}

/// A channel trusting `ca_dir`'s CA, presenting `cert_dir/<stem>.crt`, set up the way every
/// client does it (`guard_proto::client`).
pub async fn channel_with(
    addr: std::net::SocketAddr,
    ca_dir: &Path,
    cert_dir: &Path,
    stem: &str,
) -> anyhow::Result<Channel> {
    let files = TlsFiles {
        ca: (ca_dir.join("ca.crt"), "--ca"),
        cert: (cert_dir.join(format!("{stem}.crt")), "--cert"),
        key: (cert_dir.join(format!("{stem}.key")), "--key"),
    };
    client::connect(&format!("https://{addr}"), &TlsMaterial::load(&files)?).await
}

/// The hash of policy `test` as every test agent registers it.
pub const POLICY_HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A registration with these (policy, hash) pairs.
pub fn registration(policies: &[(&str, &str)]) -> RegisterRequest {
    RegisterRequest {
        agent_version: "test".into(),
        kernel: "6.1".into(),
        policies: policies.iter().map(|(p, _)| p.to_string()).collect(),
        policy_hashes: policies.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect(),
        audit_key: String::new(),
    }
}

/// An operation as an agent would send it: the tree belongs to `user` too.
pub fn op(rule: &str, tree: &str, user: &str, uid: u32, object: &str) -> Operation {
    Operation {
        hook: "bprm_check_security".into(),
        object: object.into(),
        rule: rule.into(),
        policy: "test".into(),
        policy_hash: POLICY_HASH.into(),
        user: user.into(),
        uid,
        owner: user.into(),
        owner_uid: uid,
        owner_source: "loginuid".into(),
        tree_id: tree.into(),
        ancestry: vec![Process {
            pid: 4242,
            ppid: 4200,
            uid,
            exe: object.into(),
            argv: vec![object.into(), "--now".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn submit(operation: Operation, timeout_seconds: u64, hold_key: &str) -> SubmitRequest {
    SubmitRequest { operation: Some(operation), timeout_seconds, hold_key: hold_key.into() }
}

/// The next message of a request stream, within a few seconds.
pub async fn next(stream: &mut Streaming<Request>) -> Request {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10s")
        .expect("stream not ended")
        .expect("not an error")
}

/// The stream ends (after its final state).
pub async fn ends(stream: &mut Streaming<Request>) {
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("ends within 10s");
    assert!(end.is_none(), "stream should end after the final state, got {end:?}");
}

pub fn state(r: &Request) -> State {
    State::try_from(r.state).expect("known state")
}

/// An agent's spool as the tests play it: records sealed into one stream, in order.
pub struct TestSpool {
    pub stream: String,
    pub seq: u64,
    pub hash: String,
}

impl TestSpool {
    pub fn new(stream: &str) -> Self {
        TestSpool { stream: stream.into(), seq: 0, hash: String::new() }
    }

    /// `r` sealed as the stream's next record.
    pub fn seal(&mut self, mut r: guard_api::AuditRecord) -> guard_api::AuditRecord {
        self.seq += 1;
        guard_api::chain::seal(&mut r, &self.stream, self.seq, &self.hash);
        self.hash = r.chain.as_ref().expect("sealed").hash.clone();
        r
    }

    /// A checkpoint signed with `key`, sealed as the stream's next record.
    pub fn checkpoint(&mut self, host: &str, key: &guard_api::chain::keys::SigningKey) -> guard_api::AuditRecord {
        let mut r = guard_api::AuditRecord::new(guard_api::RecordKind::Checkpoint, host);
        let chain = guard_api::chain::stream_chain(host, &self.stream);
        r.checkpoint = Some(key.sign_head(&chain, self.seq, &self.hash));
        self.seal(r)
    }
}

/// The message of each record, for `ReportRecords`.
pub fn wire(records: &[guard_api::AuditRecord]) -> Vec<guard_proto::v1::Record> {
    records.iter().map(|r| guard_proto::v1::Record { json: r.to_json() }).collect()
}
