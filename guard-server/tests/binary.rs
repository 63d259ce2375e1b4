//! The binary's contracts: init-pki's files and re-runs, `serve`'s ready line, SIGTERM.
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const BIN: &str = env!("CARGO_BIN_EXE_guard-server");

fn subject(path: &std::path::Path) -> (String, String, Vec<String>) {
    let pem = std::fs::read_to_string(path).unwrap();
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let first = |mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_>| {
        it.next().map(|a| a.as_str().unwrap().to_string()).unwrap_or_default()
    };
    let cn = first(Box::new(cert.subject().iter_common_name()));
    let ou = first(Box::new(cert.subject().iter_organizational_unit()));
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_string(),
                    GeneralName::IPAddress(b) if b.len() == 4 => {
                        std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
                    }
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    (cn, ou, sans)
}

#[test]
fn init_pki_layout_roles_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("init-pki").arg("--dir").arg(&pki).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["--server-name", "guard.example", "--server-name", "10.0.2.100", "--host", "web1", "--approver", "alice"]);
    for f in ["ca.crt", "ca.key", "server.crt", "server.key", "agent-web1.crt", "agent-web1.key", "approver-alice.crt"]
    {
        assert!(pki.join(f).exists(), "{f}");
    }
    for key in ["ca.key", "server.key", "agent-web1.key", "approver-alice.key"] {
        let mode = std::fs::metadata(pki.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    assert_eq!(subject(&pki.join("agent-web1.crt")).0, "web1");
    assert_eq!(subject(&pki.join("agent-web1.crt")).1, "guard-agent");
    assert_eq!(subject(&pki.join("approver-alice.crt")).1, "guard-approver");
    let sans = subject(&pki.join("server.crt")).2;
    assert_eq!(sans, ["guard.example", "10.0.2.100", "localhost", "127.0.0.1"]);

    // Adding a host later keeps the CA and every existing key.
    let ca_key = std::fs::read(pki.join("ca.key")).unwrap();
    let agent_key = std::fs::read(pki.join("agent-web1.key")).unwrap();
    run(&["--host", "web2"]);
    assert_eq!(std::fs::read(pki.join("ca.key")).unwrap(), ca_key);
    assert_eq!(std::fs::read(pki.join("agent-web1.key")).unwrap(), agent_key);
    assert!(pki.join("agent-web2.crt").exists());
    let bad = Command::new(BIN).args(["init-pki", "--dir"]).arg(&pki).args(["--host", "../evil"]).output().unwrap();
    assert!(!bad.status.success());
}

#[test]
fn serve_prints_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let init = Command::new(BIN).args(["init-pki", "--dir"]).arg(&pki).output().unwrap();
    assert!(init.status.success());
    let mut child = Command::new(BIN)
        .args(["serve", "--pki"])
        .arg(&pki)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("guard-server listening on 127.0.0.1:"), "{line}");
    assert!(dir.path().join("guard.db").exists(), "SQLite next to the PKI directory");
    // SAFETY: signalling our own child by its pid.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
