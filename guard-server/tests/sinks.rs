//! The audit sinks against real receivers: files on disk, a real rsyslogd (Debian's package)
//! started on loopback with its own config, and a local HTTP receiver that answers as Splunk's
//! HEC and Elasticsearch's _bulk do. The server is the real one (tests/common), records come
//! in over mTLS as agents report them, and each test checks every record arrived, in order
//! where the sink promises order, and once.
//!
//! Without rsyslogd on the build machine (build.rs sets `has_rsyslog`) the syslog tests are
//! reported as ignored ("SKIPPED"), never as passed.
mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::*;
use guard_api::export::Format;
use guard_api::{AuditRecord, Decision, Hook, Reason, RecordKind, Timestamp};
use guard_proto::v1::{AuditEvent, AuditQuery, ReportRecordsRequest, State as ReqState};
use guard_server::config::ServerConfig;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;

/// How long a sink may take to catch up before a test gives up (not a speed assertion: the
/// sinks poll every 100ms here and deliver in well under a second).
const PATIENCE: Duration = Duration::from_secs(30);

/// An enforcement record as an agent reports it; `object` tells records apart.
fn record(host: &str, object: &str) -> AuditRecord {
    let mut r = AuditRecord::at(Timestamp::now(), RecordKind::Enforcement, host);
    r.decision = Some(Decision::Deny);
    r.reason = Some(Reason::Rule);
    r.rule = Some("etc-writes".into());
    r.policy = Some("test".into());
    r.hook = Some(Hook::FileOpen);
    r.object = Some(object.into());
    r.access = Some("write".into());
    r.pid = Some(4242);
    r.uid = Some(1000);
    r.exe = Some("/usr/bin/vi".into());
    r.argv = vec!["vi".into(), object.into()];
    r.tree_id = Some("4100-77".into());
    r
}

/// A spool of its own for each call (a new stream: the server takes each from seq 1).
fn spool() -> TestSpool {
    static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    TestSpool::new(&format!("s{}", STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
}

/// Reports records `/obj/<from>..<to>` for `host` in batches of 50.
async fn report(server: &Server, host: &str, objects: std::ops::Range<usize>) {
    let mut agent = server.agent(host).await;
    let mut spool = spool();
    let all: Vec<usize> = objects.collect();
    for chunk in all.chunks(50) {
        let records: Vec<_> = chunk.iter().map(|i| spool.seal(record(host, &format!("/obj/{i}")))).collect();
        let reply =
            agent.report_records(ReportRecordsRequest { records: wire(&records) }).await.expect("report").into_inner();
        assert_eq!((reply.accepted as usize, reply.refused), (chunk.len(), None));
    }
}

async fn report_one(server: &Server, host: &str, object: &str) {
    let records = wire(&[spool().seal(record(host, object))]);
    let reply = server.agent(host).await.report_records(ReportRecordsRequest { records }).await.expect("report");
    assert_eq!(reply.into_inner().refused, None);
}

/// Every audit row, in seq order.
async fn rows(server: &Server) -> Vec<AuditEvent> {
    let events: Vec<_> =
        server.auditor("carol").await.query(AuditQuery::default()).await.unwrap().into_inner().collect().await;
    events.into_iter().map(|e| e.unwrap()).collect()
}

fn line(event: &AuditEvent, format: Format) -> String {
    format.encode_line(&AuditRecord::from_json(&event.json).expect("a record"))
}

/// Waits until `check` holds, or fails with `what` and the last value seen.
async fn eventually<T: std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let v = probe();
        if check(&v) {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not within {PATIENCE:?}; last seen: {v:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// The lines of a rotated file set, oldest first: `path.N` .. `path.1`, then `path`.
fn rotated_lines(path: &Path, upto: u32) -> Vec<String> {
    let mut all = Vec::new();
    for n in (1..=upto).rev() {
        all.extend(read_lines(&PathBuf::from(format!("{}.{n}", path.display()))));
    }
    all.extend(read_lines(path));
    all
}

// ---------------------------------------------------------------------------------------
// file
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_rotation_keeps_every_record_in_order_and_keep_is_respected() {
    // Two sinks at once over the same trail: one keeps enough files for everything, one keeps 2.
    let site = Site::with(config().extra(
        "[[sink]]\nname = \"all\"\ntype = \"file\"\nformat = \"jsonl\"\npath = \"out/all.jsonl\"\n\
         max_bytes = 8192\nkeep = 100\npoll_interval = \"100ms\"\nbatch_size = 64\n\
         [[sink]]\nname = \"short\"\ntype = \"file\"\nformat = \"ocsf\"\npath = \"out/short.json\"\n\
         max_bytes = 8192\nkeep = 2\npoll_interval = \"100ms\"\n",
    ));
    let all = site.dir.path().join("out/all.jsonl");
    let short = site.dir.path().join("out/short.json");
    let server = site.start(None).await;
    report(&server, "h1", 0..150).await;
    report(&server, "h2", 150..200).await;
    let expected: Vec<String> = rows(&server).await.iter().map(|e| line(e, Format::Jsonl)).collect();
    // 200 records and each host's policy registration.
    assert_eq!(expected.len(), 202);
    eventually("the file sink has every record", || rotated_lines(&all, 100).len(), |n| *n >= 202).await;
    let got = rotated_lines(&all, 100);
    assert_eq!(got, expected, "every record, once, in seq order across the rotated files");
    let files = (1..=100).filter(|n| Path::new(&format!("{}.{n}", all.display())).exists()).count();
    assert!(files >= 3, "200 records of ~400 bytes in 8 KiB files rotate several times ({files} rotated)");
    for n in 0..=files {
        let p = if n == 0 { all.clone() } else { PathBuf::from(format!("{}.{n}", all.display())) };
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size <= 8192, "{} is {size} bytes, over max_bytes", p.display());
    }

    // keep = 2: the live file and .1, .2; nothing older; what is kept is the newest records,
    // contiguous and in order.
    let rows_now = rows(&server).await;
    let ocsf: Vec<String> =
        rows_now.iter().map(|e| line(e, Format::Ocsf(guard_api::export::OcsfVersion::CURRENT))).collect();
    eventually(
        "the short sink reached the last record",
        || read_lines(&short).last().cloned(),
        |l| l.as_deref() == ocsf.last().map(String::as_str),
    )
    .await;
    assert!(Path::new(&format!("{}.2", short.display())).exists(), "rotated twice at least");
    assert!(!Path::new(&format!("{}.3", short.display())).exists(), "keep = 2: no third rotated file");
    let kept = rotated_lines(&short, 2);
    assert!(!kept.is_empty() && kept.len() < ocsf.len(), "older files were dropped: kept {}", kept.len());
    assert_eq!(kept, ocsf[ocsf.len() - kept.len()..], "the newest records, contiguous, in order");

    // A restart: the sink resumes after its stored position (nothing twice), and what was
    // reported while it was down arrives.
    server.stop().await;
    let server = site.start(None).await;
    report(&server, "h1", 200..260).await;
    let expected: Vec<String> = rows(&server).await.iter().map(|e| line(e, Format::Jsonl)).collect();
    assert_eq!(expected.len(), 262);
    eventually("the file sink caught up after the restart", || rotated_lines(&all, 100).len(), |n| *n >= 262).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rotated_lines(&all, 100), expected, "after a restart: each record once, in order");
    server.stop().await;
}

/// The same positions on PostgreSQL: `seq > $n` and the `sink_positions` upsert in its SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "SKIPPED: no PostgreSQL (initdb/pg_ctl) on the build machine")]
async fn file_sink_on_postgres_resumes_after_its_position() {
    if let Err(why) = guard_server::testing::pg::find_bindir() {
        panic!("PostgreSQL was installed at build time but is not now: {why}");
    }
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let cluster = guard_server::testing::pg::PgCluster::start(pg_dir.path(), 5432).expect("PostgreSQL starts");
    let site = Site::with(config().extra(
        "[[sink]]\nname = \"pg\"\ntype = \"file\"\nformat = \"cef\"\npath = \"out/pg.cef\"\npoll_interval = \"100ms\"\nbatch_size = 7\n",
    ));
    let out = site.dir.path().join("out/pg.cef");
    let server = site.start(Some(&cluster.url())).await;
    report(&server, "h1", 0..40).await;
    eventually("the sink delivered from PostgreSQL", || read_lines(&out).len(), |n| *n >= 41).await;
    server.stop().await;
    let server = site.start(Some(&cluster.url())).await;
    report(&server, "h2", 40..55).await;
    let expected: Vec<String> = rows(&server).await.iter().map(|e| line(e, Format::Cef)).collect();
    // 55 records and each host's policy registration.
    assert_eq!(expected.len(), 57);
    eventually("the sink caught up after the restart", || read_lines(&out).len(), |n| *n >= 57).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read_lines(&out), expected, "each record once, in order, across a restart, on PostgreSQL");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// syslog against a real rsyslogd
// ---------------------------------------------------------------------------------------

/// A real rsyslogd on 127.0.0.1 with its own config, pid file and work dir in a temp dir:
/// `imtcp` (octet-counted framing is on by default), optionally through the gtls driver,
/// writing each message's parsed fields, tab-separated, to `out.log`.
struct Rsyslog {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Rsyslog {
    /// `tls`: (CA, certificate, key) of the receiver; it asks clients for a certificate from
    /// that CA (x509/certvalid).
    fn start(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Rsyslog {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Rsyslog { dir: tempfile::tempdir().unwrap(), port, child: None, tls };
        r.spawn();
        r
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        std::fs::create_dir_all(d.join("work")).unwrap();
        let mut conf = format!("global(workDirectory=\"{}\" maxMessageSize=\"256k\"", d.join("work").display());
        if let Some((ca, cert, key)) = &self.tls {
            conf += &format!(
                "\n  defaultNetstreamDriverCAFile=\"{}\"\n  defaultNetstreamDriverCertFile=\"{}\"\n  \
                 defaultNetstreamDriverKeyFile=\"{}\"",
                ca.display(),
                cert.display(),
                key.display()
            );
        }
        conf += ")\n";
        if self.tls.is_some() {
            conf += "module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" \
                     streamDriver.authMode=\"x509/certvalid\")\n";
        } else {
            conf += "module(load=\"imtcp\")\n";
        }
        conf += &format!("input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\")\n", self.port);
        conf += "template(name=\"fields\" type=\"string\" \
                 string=\"%hostname%\\t%app-name%\\t%msgid%\\t%structured-data%\\t%msg%\\n\")\n";
        conf += &format!("action(type=\"omfile\" file=\"{}\" template=\"fields\")\n", self.out().display());
        std::fs::write(d.join("rsyslog.conf"), conf).unwrap();
        let child = std::process::Command::new("/usr/sbin/rsyslogd")
            .args(["-n", "-f"])
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdout(std::fs::File::create(d.join("rsyslogd.stdout")).unwrap())
            .stderr(std::fs::File::create(d.join("rsyslogd.stderr")).unwrap())
            .spawn()
            .expect("rsyslogd starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let stderr = std::fs::read_to_string(d.join("rsyslogd.stderr")).unwrap_or_default();
            assert!(std::time::Instant::now() < deadline, "rsyslogd did not listen on {}: {stderr}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by its pid: SIGTERM so it flushes its output file.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Parsed messages: (hostname, app-name, msgid, structured data, msg).
    fn messages(&self) -> Vec<[String; 5]> {
        read_lines(&self.out())
            .into_iter()
            .map(|l| {
                let f: Vec<&str> = l.splitn(5, '\t').collect();
                assert_eq!(f.len(), 5, "rsyslog output line {l:?}");
                [f[0].into(), f[1].into(), f[2].into(), f[3].into(), f[4].trim_start().into()]
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn require_rsyslogd() {
    if !Path::new("/usr/sbin/rsyslogd").exists() {
        panic!("rsyslogd was installed at build time but is not now");
    }
}

/// Checks that rsyslog parsed every row once into the right fields.
fn assert_syslog_has(messages: &[[String; 5]], rows: &[AuditEvent], app: &str) {
    let mut by_seq: BTreeMap<u64, &[String; 5]> = BTreeMap::new();
    for m in messages.iter().filter(|m| m[1] == app) {
        let seq: u64 = m[3]
            .split("seq=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no seq in the structured data {:?}", m[3]));
        assert!(by_seq.insert(seq, m).is_none(), "seq {seq} arrived twice");
    }
    let seqs: BTreeSet<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(by_seq.keys().copied().collect::<BTreeSet<_>>(), seqs, "every record arrived, once");
    for row in rows {
        let m = by_seq[&row.seq];
        let record = AuditRecord::from_json(&row.json).unwrap();
        assert_eq!(m[0], row.host, "HOSTNAME is the record's host");
        assert_eq!(m[2], guard_server::audit::row_kind(record.kind), "MSGID is the record's kind");
        assert!(m[3].starts_with("[guard@32473 ") && m[3].contains(&format!("host=\"{}\"", row.host)), "{}", m[3]);
        assert_eq!(m[4], Format::Cef.encode_line(&record), "MSG is the record in the sink's format");
    }
}

fn syslog_sink(name: &str, port: u16, tls: &str) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\ntype = \"syslog\"\nformat = \"cef\"\naddress = \"127.0.0.1:{port}\"\n\
         app_name = \"{name}\"\npoll_interval = \"100ms\"\nbatch_size = 40\n{tls}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_rsyslog), ignore = "SKIPPED: no rsyslogd (Debian's rsyslog, rsyslog-gnutls) on the build machine")]
async fn syslog_over_tcp_reaches_rsyslog_once_each_across_a_receiver_restart() {
    require_rsyslogd();
    let mut rsyslog = Rsyslog::start(None);
    let site = Site::with(config().extra(&syslog_sink("guard", rsyslog.port, "")));
    let server = site.start(None).await;
    report(&server, "h1", 0..100).await;
    let mut agent = server.agent("h2").await;
    let mut stream =
        agent.submit(submit(op("bench-auto", "1-1", "dev", 2000, "/bin/x"), 30, "k1")).await.unwrap().into_inner();
    assert_eq!(state(&next(&mut stream).await), ReqState::Approved);
    let first = rows(&server).await;
    eventually("rsyslog has every record", || rsyslog.messages().len(), |n| *n >= first.len()).await;
    assert_syslog_has(&rsyslog.messages(), &first, "guard");

    // The receiver goes away; records meanwhile; it comes back on the same port: the sink
    // reconnects (with backoff) and delivers them, none twice.
    rsyslog.stop();
    report(&server, "h2", 100..180).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rsyslog.spawn();
    let all = rows(&server).await;
    eventually("rsyslog has the records of its downtime", || rsyslog.messages().len(), |n| *n >= all.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_syslog_has(&rsyslog.messages(), &all, "guard");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_rsyslog), ignore = "SKIPPED: no rsyslogd (Debian's rsyslog, rsyslog-gnutls) on the build machine")]
async fn syslog_over_tls_checks_the_receivers_certificate_and_delivers_once_each() {
    require_rsyslogd();
    let site = Site::new();
    let pki = site.pki();
    // The receiver's certificate is the site's server certificate (localhost, 127.0.0.1);
    // it asks for a client certificate of the same CA.
    let rsyslog = Rsyslog::start(Some((pki.join("ca.crt"), pki.join("server.crt"), pki.join("server.key"))));
    // Another CA: the sink that trusts only it must not deliver anything.
    let other = tempfile::tempdir().unwrap();
    let spec = guard_server::pki::PkiSpec { server_names: vec![], hosts: vec!["h1".into()], approvers: vec![] };
    guard_server::pki::init_pki(other.path(), &spec).unwrap();
    let good = "tls = true\nca = \"pki/ca.crt\"\ncert = \"pki/agent-h1.crt\"\nkey = \"pki/agent-h1.key\"\n";
    let wrong = format!(
        "tls = true\nca = \"{}\"\ncert = \"pki/agent-h1.crt\"\nkey = \"pki/agent-h1.key\"\n",
        other.path().join("ca.crt").display()
    );
    let text = config()
        .extra(&syslog_sink("guard", rsyslog.port, good))
        .extra(&syslog_sink("wrongca", rsyslog.port, &wrong))
        .render();
    std::fs::write(site.dir.path().join("server.toml"), text).unwrap();
    let server = site.start(None).await;
    report(&server, "h1", 0..120).await;
    report_one(&server, "h2", "/with \"quotes\" and ] brackets").await;
    let all = rows(&server).await;
    eventually("rsyslog has every record over TLS", || rsyslog.messages().len(), |n| *n >= all.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = rsyslog.messages();
    assert_syslog_has(&messages, &all, "guard");
    assert!(
        messages.iter().all(|m| m[1] != "wrongca"),
        "a sink that does not trust the receiver's CA delivered nothing"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// HTTP: Splunk HEC and Elasticsearch _bulk
// ---------------------------------------------------------------------------------------

const HEC_TOKEN: &str = "11111111-2222-3333-4444-555555555555";
const ES_KEY: &str = "ZXM6a2V5";

/// What the receiver got and how it answers.
#[derive(Default)]
struct Receiver {
    /// Answer 503 to this many requests first.
    fail_next: AtomicUsize,
    requests: AtomicUsize,
    /// HEC: each event accepted, in order.
    hec: Mutex<Vec<Value>>,
    /// _bulk: documents by _id, and how many duplicates were refused with 409.
    docs: Mutex<BTreeMap<String, Value>>,
    conflicts: AtomicUsize,
    /// What a real receiver would have refused (shape errors); the test asserts none.
    problems: Mutex<Vec<String>>,
}

impl Receiver {
    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }

    fn failing(&self) -> bool {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// As Splunk's HEC: the token, JSON, one event object after another, each with time, host,
/// source, sourcetype and event; 400 "Invalid data format" for an event it cannot take.
async fn hec(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    if rx.failing() {
        return (StatusCode::SERVICE_UNAVAILABLE, "{\"text\":\"Server is busy\",\"code\":9}".into());
    }
    if header(&headers, "authorization") != format!("Splunk {HEC_TOKEN}") {
        rx.problem(format!("authorization {:?}", header(&headers, "authorization")));
        return (StatusCode::UNAUTHORIZED, "{\"text\":\"Invalid token\",\"code\":4}".into());
    }
    if header(&headers, "content-type") != "application/json" {
        rx.problem(format!("content-type {:?}", header(&headers, "content-type")));
    }
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut events = Vec::new();
    for event in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
        let Ok(e) = event else {
            rx.problem(format!("not JSON: {text:?}"));
            return (StatusCode::BAD_REQUEST, "{\"text\":\"Invalid data format\",\"code\":6}".into());
        };
        let ok = e["time"].is_number()
            && e["host"].is_string()
            && e["source"] == "guard"
            && e["sourcetype"] == "guard:jsonl"
            && e["index"] == "guard"
            && e["event"].is_object();
        if !ok {
            rx.problem(format!("event shape {e}"));
        }
        if e["event"]["object"] == "/poison" {
            return (StatusCode::BAD_REQUEST, "{\"text\":\"Invalid data format\",\"code\":6}".into());
        }
        events.push(e);
    }
    rx.hec.lock().unwrap().extend(events);
    (StatusCode::OK, "{\"text\":\"Success\",\"code\":0}".into())
}

/// As Elasticsearch's _bulk: NDJSON action and document lines; per item 201, 409 for an _id
/// it has, 400 for a document its mapping refuses; `errors` true when any item failed.
async fn bulk(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    if rx.failing() {
        return (StatusCode::SERVICE_UNAVAILABLE, "{\"error\":\"unavailable\",\"status\":503}".into());
    }
    if header(&headers, "authorization") != format!("ApiKey {ES_KEY}") {
        rx.problem(format!("authorization {:?}", header(&headers, "authorization")));
        return (StatusCode::UNAUTHORIZED, "{}".into());
    }
    if header(&headers, "content-type") != "application/x-ndjson" {
        rx.problem(format!("content-type {:?}", header(&headers, "content-type")));
    }
    let text = String::from_utf8(body.to_vec()).unwrap();
    if !text.ends_with('\n') {
        rx.problem("a _bulk body must end with a newline".into());
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let action: Value = serde_json::from_str(pair[0]).unwrap_or(Value::Null);
        let doc: Value = pair.get(1).and_then(|d| serde_json::from_str(d).ok()).unwrap_or(Value::Null);
        let create = &action["create"];
        if create["_index"] != "guard-audit" || !create["_id"].is_string() || !doc.is_object() {
            rx.problem(format!("bulk pair {pair:?}"));
        }
        let id = create["_id"].as_str().unwrap_or_default().to_string();
        let status = if doc.to_string().contains("/poison-item") {
            400
        } else {
            let mut docs = rx.docs.lock().unwrap();
            if docs.contains_key(&id) {
                rx.conflicts.fetch_add(1, Ordering::SeqCst);
                409
            } else {
                docs.insert(id.clone(), doc);
                201
            }
        };
        errors |= status >= 300;
        let mut item = json!({ "_index": "guard-audit", "_id": id, "status": status });
        if status == 400 {
            item["error"] = json!({ "type": "document_parsing_exception", "reason": "failed to parse field" });
        }
        items.push(json!({ "create": item }));
    }
    (StatusCode::OK, json!({ "took": 3, "errors": errors, "items": items }).to_string())
}

/// The receiver, serving on `port` until `stop` is sent.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(rx: Arc<Receiver>, listener: tokio::net::TcpListener) -> Serving {
    let app = Router::new().route("/services/collector/event", post(hec)).route("/_bulk", post(bulk)).with_state(rx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Serving { stop, task }
}

impl Serving {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

fn http_sinks(port: u16) -> String {
    format!(
        "[[sink]]\nname = \"splunk\"\ntype = \"http\"\nformat = \"jsonl\"\nurl = \"http://127.0.0.1:{port}\"\n\
         shape = \"splunk-hec\"\ntoken = \"{HEC_TOKEN}\"\nindex = \"guard\"\ndead_letter = \"dead/splunk.jsonl\"\n\
         poll_interval = \"100ms\"\n\
         [[sink]]\nname = \"elastic\"\ntype = \"http\"\nformat = \"ocsf\"\nurl = \"http://127.0.0.1:{port}/\"\n\
         shape = \"elastic-bulk\"\ntoken = \"{ES_KEY}\"\nindex = \"guard-audit\"\ndead_letter = \"dead/elastic.jsonl\"\n\
         poll_interval = \"100ms\"\n"
    )
}

fn dead_letters(path: &Path) -> Vec<Value> {
    read_lines(path).iter().map(|l| serde_json::from_str(l).expect("a dead letter is JSON")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sinks_retry_dead_letter_and_catch_up_without_delaying_decisions() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let rx = Arc::new(Receiver::default());
    // The first requests fail with 503: retried, nothing lost.
    rx.fail_next.store(3, Ordering::SeqCst);
    let serving = serve(rx.clone(), listener).await;
    let site = Site::with(config().extra(&http_sinks(port)));
    let (splunk_dead, elastic_dead) =
        (site.dir.path().join("dead/splunk.jsonl"), site.dir.path().join("dead/elastic.jsonl"));
    let server = site.start(None).await;

    report(&server, "h1", 0..60).await;
    let n = rows(&server).await.len();
    eventually("HEC has the first records", || rx.hec.lock().unwrap().len(), |got| *got >= n).await;
    eventually("_bulk has the first records", || rx.docs.lock().unwrap().len(), |got| *got >= n).await;
    assert!(rx.requests.load(Ordering::SeqCst) > 3, "the 503s were retried");

    // A batch HEC refuses with 400 goes to the dead-letter file, and the sink moves on. The
    // same record is one _bulk item that Elasticsearch refuses: dead-lettered alone.
    // (One after the other: HEC refuses a batch whole, and the second record must not share
    // the poisoned batch.)
    report_one(&server, "h1", "/poison").await;
    eventually("the HEC dead letter", || dead_letters(&splunk_dead), |d| !d.is_empty()).await;
    report_one(&server, "h1", "/poison-item").await;
    let poison_rows = rows(&server).await;
    let (poison, poison_item) = (poison_rows[n].seq, poison_rows[n + 1].seq);
    eventually("the _bulk dead letter", || dead_letters(&elastic_dead), |d| !d.is_empty()).await;

    // The receiver is down for a while: decisions go on, records pile up behind the sinks.
    serving.stop().await;
    report(&server, "h2", 60..100).await;
    let mut agent = server.agent("h2").await;
    let mut stream = agent
        .submit(submit(op("bench-auto", "2-2", "dev", 2000, "/bin/y"), 30, "dead-sink"))
        .await
        .unwrap()
        .into_inner();
    let decided = next(&mut stream).await;
    assert_eq!(state(&decided), ReqState::Approved, "a dead sink does not stand in the way of a decision");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the receiver's port again");
    let serving = serve(rx.clone(), listener).await;

    let all = rows(&server).await;
    let delivered: Vec<&AuditEvent> = all.iter().filter(|r| r.seq != poison).collect();
    eventually("HEC caught up", || rx.hec.lock().unwrap().len(), |got| *got >= delivered.len()).await;
    let bulk_expected: BTreeSet<String> =
        all.iter().filter(|r| r.seq != poison_item).map(|r| format!("elastic-{}", r.seq)).collect();
    eventually("_bulk caught up", || rx.docs.lock().unwrap().len(), |got| *got >= bulk_expected.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(
        *rx.problems.lock().unwrap(),
        Vec::<String>::new(),
        "requests in the shapes Splunk and Elasticsearch take"
    );
    // HEC: every record but the poisoned one, once each, in order.
    let got: Vec<String> = rx
        .hec
        .lock()
        .unwrap()
        .iter()
        .map(|e| AuditRecord::from_json(&e["event"].to_string()).unwrap().to_json())
        .collect();
    let want: Vec<String> = delivered.iter().map(|r| AuditRecord::from_json(&r.json).unwrap().to_json()).collect();
    assert_eq!(got, want, "HEC: each record once, in order, the poisoned batch excepted");
    assert!(
        got.iter().any(|j| j.contains(&decided.id)),
        "the decision made while the receiver was down arrived after it came back"
    );
    // _bulk: every record but the refused item, once (409s would show a re-sent batch).
    let ids: BTreeSet<String> = rx.docs.lock().unwrap().keys().cloned().collect();
    assert_eq!(ids, bulk_expected, "_bulk: each record once, the refused item excepted");
    let doc = rx.docs.lock().unwrap()[&format!("elastic-{}", all[0].seq)].clone();
    assert!(doc["class_uid"].is_number(), "the _bulk documents are OCSF: {doc}");

    // The dead letters: the record, the sink, the status and the error; nothing else.
    let d = dead_letters(&splunk_dead);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0]["sink"].as_str(), d[0]["seq"].as_u64(), d[0]["status"].as_u64()),
        (Some("splunk"), Some(poison), Some(400))
    );
    assert_eq!(d[0]["record"]["object"], "/poison");
    assert!(d[0]["error"].as_str().unwrap().contains("Invalid data format"), "{}", d[0]);
    let d = dead_letters(&elastic_dead);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0]["sink"].as_str(), d[0]["seq"].as_u64(), d[0]["status"].as_u64()),
        (Some("elastic"), Some(poison_item), Some(400))
    );
    assert_eq!(d[0]["record"]["object"], "/poison-item");
    assert!(d[0]["error"].as_str().unwrap().contains("document_parsing_exception"), "{}", d[0]);
    serving.stop().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// bad config
// ---------------------------------------------------------------------------------------

#[test]
fn each_sink_config_mistake_is_named_with_its_place() {
    let base = config().render();
    let line0 = base.lines().count();
    // (the [[sink]] table, the line of the mistake within it (1-based), its column, a word of the message)
    let cases: &[(&str, usize, usize, &str)] = &[
        ("[[sink]]\nname = \"a\"\ntype = \"kafka\"\n", 3, 8, "one of \"file\", \"syslog\", \"http\""),
        ("[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\nformat = \"leef\"\n", 5, 10, "format"),
        ("[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\nkeep = 0\n", 5, 8, "keep"),
        ("[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\nmax_byte = 10\n", 5, 1, "max_byte"),
        ("[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"localhost\"\n", 4, 11, "HOST:PORT"),
        ("[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h:514\"\npath = \"x\"\n", 5, 8, "not a setting of a syslog sink"),
        ("[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h:6514\"\ntls = true\n", 1, 1, "ca"),
        ("[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h:514\"\nca = \"ca.crt\"\n", 5, 6, "only for tls = true"),
        ("[[sink]]\nname = \"a\"\ntype = \"http\"\nurl = \"ftp://x\"\nshape = \"splunk-hec\"\n", 4, 7, "url"),
        ("[[sink]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://x\"\nshape = \"loki\"\n", 5, 9, "splunk-hec"),
        ("[[sink]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://x\"\nshape = \"splunk-hec\"\ndead_letter = \"d\"\n", 1, 1, "token"),
        ("[[sink]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://x\"\nshape = \"elastic-bulk\"\ndead_letter = \"d\"\n", 1, 1, "index"),
        ("[[sink]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://x\"\nshape = \"elastic-bulk\"\nindex = \"i\"\n", 1, 1, "dead_letter"),
        ("[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\nbatch_size = 0\n", 5, 14, "batch_size"),
        ("[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\npoll_interval = \"often\"\n", 5, 17, "poll_interval"),
        ("[[sink]]\nname = \"a b\"\ntype = \"file\"\npath = \"x\"\n", 2, 8, "sink name"),
        ("[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\n[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"y\"\n", 6, 8, "declared twice"),
    ];
    let file = Path::new("/etc/guard/server.toml");
    for (table, line, col, word) in cases {
        let text = format!("{base}{table}");
        let err = ServerConfig::parse(file, &text).expect_err(table);
        let at = format!("{}:{}:{}: ", file.display(), line0 + line, col);
        assert!(err.to_string().starts_with(&at), "{table:?}: want {at:?}, got {err}");
        assert!(err.message.contains(word), "{table:?}: want {word:?} in {err}");
    }
    // And a valid set of three parses.
    let text = format!(
        "{base}[[sink]]\nname = \"f\"\ntype = \"file\"\npath = \"audit/guard.json\"\n\
         [[sink]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"siem:6514\"\ntls = true\nca = \"ca.crt\"\nformat = \"cef\"\n\
         [[sink]]\nname = \"h\"\ntype = \"http\"\nurl = \"https://es:9200\"\nshape = \"elastic-bulk\"\nindex = \"guard\"\n\
         ca = \"ca.crt\"\ndead_letter = \"dead.jsonl\"\nformat = \"ecs\"\n"
    );
    let c = ServerConfig::parse(file, &text).expect("valid sinks");
    assert_eq!(c.sinks.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["f", "s", "h"]);
}
