//! `cargo xtask test`: host tests, then the guard-e2e runner inside QEMU on each
//! test kernel, retrying a kernel once if the guest kernel itself crashed.
use crate::kernel::Series;
use crate::util::{self, sh_quote, workspace_root};
use crate::vm::{self, GuestCrash, VmArgs};
use crate::{central, compile, setup};
use anyhow::{bail, Result};
use std::process::Command;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Run only this kernel (default: all).
    #[arg(long, value_enum)]
    pub kernel: Option<Series>,
    /// Skip setup, the build and the host tests (for iterating on VM tests).
    #[arg(long)]
    pub vm_only: bool,
    /// Arguments for guard-e2e (e.g. a test name filter).
    #[arg(last = true)]
    pub e2e_args: Vec<String>,
}

const E2E: &str = "/bin/guard-e2e";

pub fn run(args: &TestArgs) -> Result<u8> {
    if !args.vm_only {
        setup::run()?;
        compile::build()?;
        util::run(Command::new("cargo").args(["test", "--workspace"]).current_dir(workspace_root()))?;
    }
    if !workspace_root().join("target/release/guard-e2e").exists() {
        bail!("target/release/guard-e2e was not built; cannot run the VM tests");
    }
    let kernels = match args.kernel {
        Some(k) => vec![k],
        None => Series::ALL.to_vec(),
    };
    // The kernels run side by side, one single-CPU VM each: the suite's wall time is the
    // slower kernel's, not the sum (CI has 2 cores).
    let label = |k: Series| (kernels.len() > 1).then(|| format!("[{}] ", k.name()));
    let results: Vec<(Series, KernelRun)> = std::thread::scope(|s| {
        let runs: Vec<_> =
            kernels.iter().map(|&k| (k, s.spawn(move || run_kernel(k, &args.e2e_args, label(k))))).collect();
        runs.into_iter().map(|(k, h)| (k, h.join().expect("a kernel's run panicked"))).collect()
    });
    Ok(summarize(&results))
}

/// The console's person (`guard-server browser-e2e`, Debian's chromium) beside the kernel's
/// services; the guest's console test makes the requests it decides. Without chromium the
/// guest's test is skipped (no GUARD_E2E_CONSOLE_* in its environment) and says so.
struct BrowserDriver {
    child: std::process::Child,
    log: std::path::PathBuf,
}

/// What the guest's console test holds, and the reason the driver gives for the deny.
const CONSOLE_APPROVE: &str = "/tmp/t/srv/console-approve-me";
const CONSOLE_DENY: &str = "/tmp/t/srv/console-deny-me";
const CONSOLE_DENY_REASON: &str = "not from the console test";

impl BrowserDriver {
    fn start(central: &mut central::Central) -> Result<Option<BrowserDriver>> {
        if !(std::path::Path::new("/usr/bin/chromium").exists()
            && std::path::Path::new("/usr/bin/chromedriver").exists())
        {
            eprintln!(
                "\n!!!!!!!! xtask: no /usr/bin/chromium or /usr/bin/chromedriver: the console browser test will be SKIPPED !!!!!!!!\n"
            );
            return Ok(None);
        }
        let log = central.dir.join("browser-e2e.log");
        let out = std::fs::File::create(&log)?;
        let c = &central.console;
        let child = Command::new(crate::services::server_binary()?)
            .arg("browser-e2e")
            .args(["--console", &c.url, "--user", c.user])
            .arg("--cert")
            .arg(&c.cert)
            .arg("--password-file")
            .arg(&c.password_file)
            .args(["--approve-object", CONSOLE_APPROVE, "--deny-object", CONSOLE_DENY])
            .args(["--deny-reason", CONSOLE_DENY_REASON])
            .arg("--screenshots")
            .arg(central.dir.join("screenshots"))
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(std::process::Stdio::null())
            .spawn()?;
        for (k, v) in [
            ("GUARD_E2E_CONSOLE_APPROVE", CONSOLE_APPROVE),
            ("GUARD_E2E_CONSOLE_DENY", CONSOLE_DENY),
            ("GUARD_E2E_CONSOLE_REASON", CONSOLE_DENY_REASON),
        ] {
            central.guest_env.push((k.to_owned(), v.to_owned()));
        }
        eprintln!("xtask: the console's browser driver is waiting in chromium (log {})", log.display());
        Ok(Some(BrowserDriver { child, log }))
    }

    /// After the guest's run: the driver must have decided both requests and exited 0. When a
    /// filter left the console test out, a driver still waiting is only stopped.
    fn finish(mut self, filtered: bool) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                _ => break None,
            }
        };
        let log = self.log.display();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("the console's browser driver failed ({s}): see {log}")),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                if filtered {
                    Ok(())
                } else {
                    Err(format!("the console's browser driver never finished: see {log}"))
                }
            }
        }
    }
}

impl Drop for BrowserDriver {
    /// A run that ends another way (a guest crash, an error) never leaves chromium behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One kernel's run: whether guard-e2e passed, and its test counts when it got to print them.
struct KernelRun {
    outcome: Result<(), String>,
    tests: Option<GuestTests>,
}

/// What guard-e2e's libtest-style summary line and its `SKIPPED:` lines said.
#[derive(Debug, PartialEq)]
struct GuestTests {
    passed: u32,
    failed: u32,
    ignored: u32,
    /// `name: reason` of each skipped test.
    skipped: Vec<String>,
}

/// Reads the last `test result: ...` line of the guest's console and the `SKIPPED:` lines.
fn parse_guest_tests(console: &str) -> Option<GuestTests> {
    let summary = console.lines().rev().find_map(|l| l.trim().strip_prefix("test result: "))?;
    let count = |what: &str| {
        summary.split(';').find_map(|part| part.trim().strip_suffix(what)?.trim().rsplit(' ').next()?.parse().ok())
    };
    let mut skipped: Vec<String> = Vec::new();
    for line in console.lines().filter_map(|l| l.trim().strip_prefix("SKIPPED: ")) {
        if !skipped.iter().any(|s| s == line) {
            skipped.push(line.to_owned());
        }
    }
    Some(GuestTests { passed: count(" passed")?, failed: count(" failed")?, ignored: count(" ignored")?, skipped })
}

/// One kernel's e2e run; a guest kernel crash earns one retry.
fn run_kernel(series: Series, e2e_args: &[String], label: Option<String>) -> KernelRun {
    let mut cmd = vec![E2E.to_owned()];
    // /cmd is shell text, so quote the filter arguments to pass them verbatim.
    cmd.extend(e2e_args.iter().map(|a| sh_quote(a)));
    let failed = |why: String| KernelRun { outcome: Err(why), tests: None };
    for attempt in 1..=2 {
        // Fresh services per boot: a retried kernel must not see the first attempt's requests.
        let mut central = match central::start(series.name(), true) {
            Ok(c) => c,
            Err(e) => return failed(format!("starting guard-server on the host: {e:#}")),
        };
        let driver = match BrowserDriver::start(&mut central) {
            Ok(d) => d,
            Err(e) => return failed(format!("starting the console's browser driver: {e:#}")),
        };
        let vm_args = VmArgs {
            kernel: series,
            smp: 1,
            forward: central.ports.clone(),
            copy: central.copies.clone(),
            // 72 tests; 6.12 verifies the programs more slowly at every agent start (about 2.5x
            // the time of 6.1 at the end of session 5): room for it, within CI's 90 minutes.
            timeout: 3000,
            no_build: true,
            cmd: cmd.clone(),
            env: central.guest_env.clone(),
            label: label.clone(),
        };
        eprintln!("xtask: e2e on kernel {} (attempt {attempt})", series.name());
        match vm::run_with_console(&vm_args) {
            Ok((code, console)) => {
                let tests = parse_guest_tests(&console);
                let mut outcome = if code == 0 { Ok(()) } else { Err(format!("guard-e2e exited with {code}")) };
                let filtered = !e2e_args.is_empty();
                if let (Err(why), Ok(())) = (driver.map(|d| d.finish(filtered)).unwrap_or(Ok(())), &outcome) {
                    outcome = Err(why);
                }
                return KernelRun { outcome, tests };
            }
            Err(err) if err.is::<GuestCrash>() && attempt == 1 => {
                eprintln!("\n!!!!!!!! WARNING: kernel {} crashed ({err:#}); retrying once !!!!!!!!\n", series.name());
            }
            Err(err) => return failed(format!("{err:#}")),
        }
    }
    unreachable!("the second attempt always returns")
}

/// Prints one line per kernel, each skipped test, and the `N passed, N failed` total over
/// all kernels' tests (`, N skipped` added when any was); returns the exit code. A kernel
/// that failed without a test summary (crash, timeout) counts as one failure.
fn summarize(results: &[(Series, KernelRun)]) -> u8 {
    println!("\n== e2e summary ==");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut skip_lines = Vec::new();
    for (series, run) in results {
        let counts = run
            .tests
            .as_ref()
            .map(|t| format!(" ({} passed, {} failed, {} skipped)", t.passed, t.failed, t.ignored))
            .unwrap_or_default();
        match &run.outcome {
            Ok(()) => println!("kernel {}: PASSED{counts}", series.name()),
            Err(why) => println!("kernel {}: FAILED ({why}){counts}", series.name()),
        }
        match &run.tests {
            Some(t) => {
                passed += t.passed;
                // A non-zero exit with no failed test (e.g. nothing ran) is still a failure.
                failed += if run.outcome.is_err() { t.failed.max(1) } else { t.failed };
                skipped += t.ignored;
                skip_lines.extend(t.skipped.iter().map(|s| format!("SKIPPED: {s} (kernel {})", series.name())));
            }
            None => failed += u32::from(run.outcome.is_err()),
        }
    }
    for line in &skip_lines {
        println!("{line}");
    }
    let skipped_part = if skipped > 0 { format!(", {skipped} skipped") } else { String::new() };
    println!("{passed} passed, {failed} failed{skipped_part}");
    u8::from(results.iter().any(|(_, r)| r.outcome.is_err()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_summary_and_skips_are_read() {
        let console = "test a ... ok\nSKIPPED: replicas: no PostgreSQL\ntest replicas ... ignored\n\n\
                       test result: ok. 27 passed; 0 failed; 1 ignored; 0 measured; 1 filtered out; finished in 3.20s\n\
                       SKIPPED: replicas: no PostgreSQL\nGUARD-VM-EXIT=0\n";
        let t = parse_guest_tests(console).unwrap();
        assert_eq!(
            t,
            GuestTests { passed: 27, failed: 0, ignored: 1, skipped: vec!["replicas: no PostgreSQL".into()] }
        );
        let failed = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s";
        assert_eq!(parse_guest_tests(failed).map(|t| (t.passed, t.failed)), Some((3, 2)));
        assert_eq!(parse_guest_tests("Kernel panic\n"), None);
    }
}
