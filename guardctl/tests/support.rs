//! Test fixture: a real guard-server (built from this workspace if needed) with a fresh PKI,
//! an agent client, and guardctl run as a subprocess.

#![allow(dead_code)]

use guard_proto::v1::agent_service_client::AgentServiceClient;
use guard_proto::v1::{Operation, Process, Request, StatedReason, SubmitRequest};
use guardctl::conn::{self, TlsFiles, TlsMaterial};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Streaming;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("guardctl has a parent").to_path_buf()
}

/// guard-server's debug binary: $GUARD_SERVER_BIN, or built here once per test process
/// (`cargo build -p guard-server`; cargo releases the target lock before running tests).
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("GUARD_SERVER_BIN") {
            return PathBuf::from(bin);
        }
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "guard-server", "--bin", "guard-server"])
            .current_dir(&root)
            .status()
            .expect("running cargo build -p guard-server");
        assert!(status.success(), "cargo build -p guard-server failed: {status}");
        let bin = target.join("debug/guard-server");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "guardctl-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    dir
}

pub const HOST: &str = "host-1";
pub const APPROVER: &str = "alice";
pub const OTHER_APPROVER: &str = "bob";

/// A running guard-server on SQLite with its own PKI; killed on drop.
pub struct Server {
    pub dir: PathBuf,
    pub pki: PathBuf,
    pub url: String,
    child: Child,
    log: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start() -> Server {
        let bin = server_binary();
        let dir = temp_dir("server");
        let pki = dir.join("pki");
        let out = Command::new(&bin)
            .arg("init-pki")
            .arg("--dir")
            .arg(&pki)
            .args(["--server-name", "localhost", "--server-name", "127.0.0.1"])
            .args(["--host", HOST, "--approver", APPROVER, "--approver", OTHER_APPROVER])
            .output()
            .expect("running guard-server init-pki");
        assert!(out.status.success(), "init-pki failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg("--pki")
            .arg(&pki)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("guard.db").display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting guard-server serve");
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for (pipe, name) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, "stdout"),
            (Box::new(child.stderr.take().unwrap()), "stderr"),
        ] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(addr) = line.split("guard-server listening on ").nth(1) {
                        let _ = tx.send(addr.trim().to_string());
                    }
                    log.lock().unwrap().push(format!("{name}: {line}"));
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("guard-server did not say it listens; its output:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        let port = addr.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
        Server { url: format!("https://127.0.0.1:{port}"), dir, pki, child, log }
    }

    pub fn output_log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// guardctl as approver `as_name`.
    pub fn ctl_as(&self, as_name: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_guardctl"))
            .arg("--server")
            .arg(&self.url)
            .arg("--pki")
            .arg(&self.pki)
            .args(["--as", as_name])
            .args(args)
            .env_remove("GUARDCTL_SERVER")
            .output()
            .expect("running guardctl")
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_as(APPROVER, args)
    }

    pub async fn agent(&self) -> AgentServiceClient<Channel> {
        let tls = TlsMaterial::load(&TlsFiles::from_pki(&self.pki, "agent-", HOST, "test")).unwrap();
        AgentServiceClient::new(conn::connect(&self.url, &tls).await.unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("guard-server output:\n{}", self.output_log());
        }
    }
}

pub fn operation(object: &str, reason: &str) -> Operation {
    Operation {
        hook: "file_open".into(),
        object: object.into(),
        access: "write".into(),
        rule: "etc-writes".into(),
        policy: "test-policy".into(),
        ancestry: vec![
            Process {
                pid: 4242,
                ppid: 4200,
                uid: 1000,
                exe: "/usr/bin/tee".into(),
                argv: vec!["tee".into(), object.into()],
                ..Default::default()
            },
            Process {
                pid: 4200,
                ppid: 1,
                uid: 1000,
                exe: "/usr/bin/python3".into(),
                argv: vec!["python3".into(), "agent.py".into(), "--task".into(), "fix config".into()],
                ..Default::default()
            },
        ],
        cwd: "/home/dev/project".into(),
        user: "dev".into(),
        uid: 1000,
        owner: "dev".into(),
        owner_uid: 1000,
        owner_source: "loginuid".into(),
        // Not registered: the server shows such a request with a policy-changed flag.
        policy_hash: String::new(),
        tree_id: "4200-123456".into(),
        stated_reason: Some(StatedReason {
            tool: "shell".into(),
            call_id: "call-7".into(),
            reason: reason.into(),
            session: "sess-1".into(),
        }),
    }
}

/// Submits a held operation; returns the first streamed message (the request as created)
/// and the stream for what follows.
pub async fn submit(
    agent: &mut AgentServiceClient<Channel>,
    object: &str,
    reason: &str,
    hold_key: &str,
) -> (Request, Streaming<Request>) {
    let req =
        SubmitRequest { operation: Some(operation(object, reason)), timeout_seconds: 300, hold_key: hold_key.into() };
    let mut stream = agent.submit(req).await.expect("Submit").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("first message within 10s")
        .expect("stream error")
        .expect("stream ended before the first message");
    (first, stream)
}

/// The next state change on a Submit stream (skips repeats of the same state).
pub async fn next_state(stream: &mut Streaming<Request>, after: i32) -> Request {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .expect("no state change within 10s")
            .expect("stream error")
            .expect("stream ended without a state change");
        if msg.state != after {
            return msg;
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn assert_ok(o: &Output) -> String {
    assert!(o.status.success(), "guardctl failed ({}):\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
    stdout(o)
}

pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
