//! `cargo xtask demo`: the whole loop. guard-server runs here on the host; the VM runs
//! guard-agent connected to it (through a forwarded port) and a scripted "AI agent" under it;
//! a scripted approver on the host (or a person, with --interactive) answers each held
//! operation with guardctl; at the end the server's audit trail is printed.
use crate::central::{self, Central};
use crate::kernel::Series;
use crate::util::workspace_root;
use crate::vm::{self, VmArgs};
use crate::{compile, setup};
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn run(kernel: Series, interactive: bool) -> Result<u8> {
    setup::run()?;
    compile::build()?;
    let central = central::start("demo", false)?;
    println!(
        "\n== the web console: {} (user {}, password in {}); from another machine: ssh -L {port}:localhost:{port} this-host\n",
        central.console.url,
        central.console.user,
        central.console.password_file.display(),
        port = central.console.url.rsplit(':').next().unwrap_or_default(),
    );
    let ctl = Ctl::new(&central);
    let done = Arc::new(AtomicBool::new(false));
    let approver = {
        let (ctl, done) = (ctl.clone(), done.clone());
        std::thread::spawn(move || approve_loop(&ctl, interactive, &done))
    };
    let args = VmArgs {
        kernel,
        smp: 1,
        forward: central.ports.clone(),
        copy: central.copies.clone(),
        timeout: 1800,
        no_build: true,
        cmd: vec!["/bin/guard-e2e".into(), "demo".into()],
        env: central.guest_env.clone(),
        label: None,
    };
    let code = vm::run(&args);
    done.store(true, Ordering::SeqCst);
    let _ = approver.join();
    println!("\n== the server's audit trail (guardctl audit):");
    let _ = ctl.run(&["audit"]);
    code
}

#[derive(Clone)]
struct Ctl {
    bin: std::path::PathBuf,
    server: String,
    pki: std::path::PathBuf,
}

impl Ctl {
    fn new(c: &Central) -> Self {
        Ctl {
            bin: workspace_root().join("target/release/guardctl"),
            server: format!("https://127.0.0.1:{}", c.ports[0]),
            pki: c.dir.join("pki"),
        }
    }

    /// Runs guardctl as alice; output goes to the terminal.
    fn run(&self, args: &[&str]) -> Result<bool> {
        let status = self.command(args).status().context("running guardctl")?;
        Ok(status.success())
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().context("running guardctl")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--server", &self.server, "--pki"]).arg(&self.pki).args(["--as", "alice"]).args(args);
        c
    }
}

/// The scripted approver's judgement, by rule.
fn plan(rule: &str) -> (&'static str, &'static [&'static str]) {
    match rule {
        "config-changes-need-review" => ("approve once", &["--comment", "config change reviewed"]),
        "deleting-data-needs-review" => ("approve for 10 minutes", &["--for", "10m", "--comment", "cleanup is fine"]),
        _ => ("deny", &["--reason", "no production deploys from an agent"]),
    }
}

fn approve_loop(ctl: &Ctl, interactive: bool, done: &AtomicBool) {
    let mut seen = HashSet::new();
    while !done.load(Ordering::SeqCst) {
        let text = ctl.output(&["--json", "pending"]).unwrap_or_default();
        for r in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            if id.is_empty() || !seen.insert(id.clone()) {
                continue;
            }
            let op = &r["operation"];
            let rule = op["rule"].as_str().unwrap_or_default();
            println!("\napprover> request {id} from {}: {} {} (rule {rule})", r["host"], op["hook"], op["object"]);
            let _ = ctl.run(&["show", &id]);
            let (what, flags) = plan(rule);
            let verb = if interactive {
                ask_person()
            } else {
                println!("approver> {what}");
                if what.starts_with("approve") {
                    "approve"
                } else {
                    "deny"
                }
            };
            let mut args = vec![verb, id.as_str()];
            match (interactive, verb) {
                (false, _) => args.extend_from_slice(flags),
                (true, "deny") => args.extend_from_slice(&["--reason", "denied at the console"]),
                _ => {}
            }
            let _ = ctl.run(&args);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ask_person() -> &'static str {
    print!("approver> approve? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if line.trim().eq_ignore_ascii_case("y") {
        "approve"
    } else {
        "deny"
    }
}
