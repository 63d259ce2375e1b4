//! Escape hatches (issue 10 item 5): the baseline policy (`include = ["guard:baseline"]`)
//! refuses or asks for the well-known ways to get code run outside the tree (service managers,
//! container runtimes, terminal multiplexers, schedulers, unit files, kernel helpers, ssh to
//! this machine), and a file descriptor handed to the tree over a unix socket is decided by the
//! file rules (`file_receive`). Each test asserts that the effect did not happen (nothing
//! reached the listener, no file appeared, the sysctl kept its value, no descriptor arrived)
//! and that a record names the rule (or reason) and the object.
//!
//! Asks are answered by the test through the agent's admin socket (deny), so no test waits
//! for the ask timeout.

use crate::{harness::Agent, has, is, s, Test};
use anyhow::{bail, ensure, Context, Result};
use guard_api::{AuditRecord, Decision, Hook, Reason};
use std::{
    io::Read,
    net::TcpListener,
    os::{
        fd::AsRawFd,
        unix::net::{UnixListener, UnixStream},
    },
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

pub const TESTS: &[Test] = &[
    ("escape_hatch_service_container_and_multiplexer_sockets", sockets),
    ("escape_hatch_cron_at_and_unit_files_are_not_written", spools_and_units),
    ("escape_hatch_kernel_helpers_keep_their_value", kernel_helpers),
    ("escape_hatch_ssh_to_localhost_is_asked", ssh_localhost),
    ("escape_hatch_received_descriptors_follow_the_file_rules", file_receive),
    ("escape_hatch_included_files_are_enforced_and_protected", included_files),
];

const DIR: &str = "/tmp/t/hatch";
const DENIED: &str = "RESULT errno=1 ";
/// The baseline with a long ask timeout: every ask is answered by the test.
const BASELINE: &str = "include = [\"guard:baseline\"]\ndefault = \"allow\"\nask_timeout = \"60s\"\n";

/// Counts connections that reach a listener outside every tree.
#[derive(Clone, Default)]
struct Arrivals(Arc<AtomicUsize>);

impl Arrivals {
    fn count(&self) -> usize {
        // A connection completing after the op returned gets a moment.
        std::thread::sleep(Duration::from_millis(300));
        self.0.load(Ordering::SeqCst)
    }
}

fn unix_listener(path: &str) -> Result<Arrivals> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::remove_file(path).ok();
    let l = UnixListener::bind(path).with_context(|| format!("binding {path}"))?;
    let n = Arrivals::default();
    let c = n.0.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    Ok(n)
}

fn tcp_listener(addr: &str) -> Result<Arrivals> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let n = Arrivals::default();
    let c = n.0.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
            let _ = s.read(&mut [0u8; 8]);
        }
    });
    Ok(n)
}

/// One step of a watched shell: the op, and whether it is an ask (held, then denied by the
/// test on `hook`) or refused at once; `want` is the RESULT prefix.
struct Step<'a> {
    op: String,
    ask: Option<&'a str>,
    want: &'a str,
}

fn deny(op: String) -> Step<'static> {
    Step { op, ask: None, want: DENIED }
}

fn ask(op: String, hook: &str) -> Step<'_> {
    Step { op, ask: Some(hook), want: DENIED }
}

/// Runs `steps` in one watched shell under `policy`, denying each ask as its hold appears
/// (checking that the hold is on `object`), and returns the records.
fn run_steps(name: &str, policy: &str, steps: &[Step]) -> Result<Vec<AuditRecord>> {
    let script: Vec<String> = steps
        .iter()
        .map(|st| match st.op.strip_prefix("cd ") {
            // "cd DIR OP...": the op runs with DIR as its cwd (a relative spelling).
            Some(rest) => {
                let (dir, op) = rest.split_once(' ').unwrap_or((rest, ""));
                format!("(cd {dir} && guard-e2e do {op})")
            }
            None => format!("guard-e2e do {}", st.op),
        })
        .collect();
    let a = Agent::start(name, policy, &script.join("; "))?;
    let mut bad = vec![];
    for st in steps {
        if let Some(hook) = st.ask {
            let h = a.wait_hold(hook)?;
            a.deny(s(&h, "id"))?;
        }
        let r = a.result()?;
        if !r.starts_with(st.want) {
            bad.push(format!("{}: want {}, got {r}", st.op, st.want));
        }
    }
    let out = a.finish()?;
    ensure!(bad.is_empty(), "unexpected results:\n{}", bad.join("\n"));
    out.records()
}

/// A deny record of `rule` on `object`, with `reason`.
fn refused(r: &[AuditRecord], rule: &str, object: &str, reason: Reason) -> Result<()> {
    ensure!(
        has(r, |x| x.decision == Some(Decision::Deny)
            && is(&x.rule, rule)
            && is(&x.object, object)
            && x.reason == Some(reason)),
        "no deny record of rule {rule} on {object} ({reason:?}) in {r:#?}"
    );
    Ok(())
}

/// systemd's private and varlink sockets and the system bus (ask), the container runtimes'
/// sockets (deny), tmux and screen sockets (ask): bound by the test, outside every tree. The
/// tree's connects are refused (asks denied by the approver), nothing reaches any listener,
/// and each is recorded with the baseline rule that decided it.
fn sockets() -> Result<()> {
    let asks = [
        ("/run/systemd/private", "baseline-systemd-private"),
        ("/run/systemd/io.systemd.Manager", "baseline-systemd-varlink"),
        ("/run/dbus/system_bus_socket", "baseline-dbus-system"),
        ("/var/run/dbus/system_bus_socket", "baseline-dbus-system-var"),
        ("/tmp/tmux-0/default", "baseline-tmux"),
        ("/run/screen/S-root/1.pts-0.host", "baseline-screen-run"),
    ];
    let denies = [
        ("/run/docker.sock", "baseline-docker"),
        ("/var/run/docker.sock", "baseline-docker-var"),
        ("/run/containerd/containerd.sock", "baseline-containerd"),
        ("/run/podman/podman.sock", "baseline-podman"),
        ("/run/crio/crio.sock", "baseline-crio"),
    ];
    let mut listeners = vec![];
    for (path, _) in asks.iter().chain(denies.iter()) {
        listeners.push((path, unix_listener(path)?));
    }
    // A socket the baseline does not name stays reachable (the rules are not a blanket deny).
    let ok = unix_listener(&format!("{DIR}/ok.sock"))?;
    let mut steps: Vec<Step> = denies.iter().map(|(p, _)| deny(format!("connect-unix {p}"))).collect();
    steps.extend(asks.iter().map(|(p, _)| ask(format!("connect-unix {p}"), "unix_stream_connect")));
    // Other spellings of the same sockets: a symlink to the docker socket, the containerd
    // socket through a symlinked directory, and tmux's relative to the cwd.
    std::fs::create_dir_all(DIR)?;
    for l in ["docker-link", "ctr-dir"] {
        std::fs::remove_file(format!("{DIR}/{l}")).ok();
    }
    std::os::unix::fs::symlink("/run/docker.sock", format!("{DIR}/docker-link"))?;
    std::os::unix::fs::symlink("/run/containerd", format!("{DIR}/ctr-dir"))?;
    steps.push(deny(format!("connect-unix {DIR}/docker-link")));
    steps.push(deny(format!("connect-unix {DIR}/ctr-dir/containerd.sock")));
    steps.push(ask("cd /tmp/tmux-0 connect-unix ./default".to_string(), "unix_stream_connect"));
    steps.push(Step { op: format!("connect-unix {DIR}/ok.sock"), ask: None, want: "RESULT ok" });
    let r = run_steps("hatch-sock", BASELINE, &steps)?;
    for (path, n) in &listeners {
        ensure!(n.count() == 0, "a connection reached {path}");
    }
    ensure!(ok.count() == 1, "the socket outside the baseline was not reached");
    for (path, rule) in denies {
        refused(&r, rule, path, Reason::Rule)?;
    }
    for (path, rule) in asks {
        refused(&r, rule, path, Reason::Denied)?;
    }
    let count = |rule: &str| r.iter().filter(|x| is(&x.rule, rule) && x.decision == Some(Decision::Deny)).count();
    ensure!(count("baseline-docker") == 2, "want 2 docker denials (path, symlink): {r:#?}");
    ensure!(count("baseline-containerd") == 2, "want 2 containerd denials (path, symlinked dir): {r:#?}");
    ensure!(count("baseline-tmux") == 2, "want 2 tmux denials (path, relative): {r:#?}");
    Ok(())
}

/// A crontab and an at job written into the spools, a file in /etc/cron.d (created, and
/// renamed in from /tmp), /etc/crontab rewritten, and systemd units in /etc and /run: every
/// write is refused, no file appears, /etc/crontab is unchanged, each refusal is recorded.
fn spools_and_units() -> Result<()> {
    for d in ["/var/spool/cron/crontabs", "/var/spool/at", "/etc/cron.d", "/etc/systemd/system", "/run/systemd/system"]
    {
        std::fs::create_dir_all(d)?;
    }
    std::fs::create_dir_all(DIR)?;
    std::fs::write("/etc/crontab", "# the host's crontab\n")?;
    // In /etc, so that the rename is not across filesystems (EXDEV before any hook).
    std::fs::write("/etc/hatch-job", "* * * * * root /tmp/payload\n")?;
    let files = [
        ("/var/spool/cron/crontabs/root", "baseline-cron-spool"),
        ("/var/spool/at/a00001", "baseline-at-spool"),
        ("/etc/cron.d/payload", "baseline-cron-d"),
        ("/etc/systemd/system/payload.service", "baseline-units-etc"),
        ("/run/systemd/system/payload.service", "baseline-units-run"),
    ];
    for (f, _) in files {
        std::fs::remove_file(f).ok();
    }
    let mut steps: Vec<Step> =
        files.iter().map(|(f, _)| deny(format!("hatch-write {f} [Service]ExecStart=/tmp/payload"))).collect();
    steps.push(deny("rename /etc/hatch-job /etc/cron.d/job".to_string()));
    steps.push(deny("hatch-write /etc/crontab *_*_*_*_*_root_/tmp/payload".to_string()));
    let r = run_steps("hatch-spool", BASELINE, &steps)?;
    for (f, rule) in files {
        ensure!(!std::path::Path::new(f).exists(), "{f} was created");
        refused(&r, rule, f, Reason::Rule)?;
    }
    ensure!(!std::path::Path::new("/etc/cron.d/job").exists(), "the job was renamed into /etc/cron.d");
    ensure!(std::path::Path::new("/etc/hatch-job").exists(), "the job left its place");
    refused(&r, "baseline-cron-d", "/etc/cron.d/job", Reason::Rule)?;
    ensure!(std::fs::read_to_string("/etc/crontab")? == "# the host's crontab\n", "/etc/crontab changed");
    refused(&r, "baseline-crontab", "/etc/crontab", Reason::Rule)?;
    Ok(())
}

/// core_pattern ("|/tmp/payload" would run as root on the next crash), modprobe (run as root
/// on the next autoload) and binfmt_misc's register (if the kernel has it): the writes are
/// refused, the values are unchanged, each refusal is recorded.
fn kernel_helpers() -> Result<()> {
    let core = "/proc/sys/kernel/core_pattern";
    let modprobe = "/proc/sys/kernel/modprobe";
    let register = "/proc/sys/fs/binfmt_misc/register";
    if !std::path::Path::new(register).exists() {
        let _ = nix::mount::mount(
            Some("binfmt_misc"),
            "/proc/sys/fs/binfmt_misc",
            Some("binfmt_misc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let before = (std::fs::read_to_string(core)?, std::fs::read_to_string(modprobe)?);
    // The second way: through a symlink to the sysctl, and through /proc/self/root.
    std::fs::create_dir_all(DIR)?;
    std::fs::remove_file(format!("{DIR}/cp-link")).ok();
    std::os::unix::fs::symlink(core, format!("{DIR}/cp-link"))?;
    let mut steps = vec![
        deny(format!("hatch-write {core} '|/tmp/payload'")),
        deny(format!("hatch-write {DIR}/cp-link '|/tmp/payload'")),
        deny(format!("hatch-write /proc/self/root{modprobe} /tmp/payload")),
        deny(format!("hatch-write {modprobe} /tmp/payload")),
    ];
    let binfmt = std::path::Path::new(register).exists();
    if binfmt {
        steps.push(deny(format!("hatch-write {register} :payload:E::xyz::/tmp/payload:")));
    } else {
        println!("    (no binfmt_misc in this kernel: its register file is not tried)");
    }
    let r = run_steps("hatch-kernel", BASELINE, &steps)?;
    let after = (std::fs::read_to_string(core)?, std::fs::read_to_string(modprobe)?);
    ensure!(before == after, "a kernel helper changed: {before:?} -> {after:?}");
    let count = |rule: &str, object: &str| {
        r.iter().filter(|x| is(&x.rule, rule) && is(&x.object, object) && x.decision == Some(Decision::Deny)).count()
    };
    ensure!(count("baseline-core-pattern", core) == 2, "want 2 core_pattern denials (path, symlink): {r:#?}");
    ensure!(count("baseline-modprobe", modprobe) == 2, "want 2 modprobe denials (path, /proc/self/root): {r:#?}");
    if binfmt {
        ensure!(!std::path::Path::new("/proc/sys/fs/binfmt_misc/payload").exists(), "an interpreter was registered");
        refused(&r, "baseline-binfmt-misc", register, Reason::Rule)?;
    }
    Ok(())
}

/// ssh to this machine by 127.0.0.1, another address in 127/8 and ::1 (listeners opened by the
/// test on port 22, outside the tree): each connect is held, denied by the approver, nothing
/// arrives, and the records name the baseline rule.
fn ssh_localhost() -> Result<()> {
    let v4 = tcp_listener("127.0.0.1:22")?;
    let v4b = tcp_listener("127.0.0.2:22")?;
    let v6 = tcp_listener("[::1]:22")?;
    let steps = [
        ask("connect 127.0.0.1:22".to_string(), "socket_connect"),
        ask("connect 127.0.0.2:22".to_string(), "socket_connect"),
        ask("connect [::1]:22".to_string(), "socket_connect"),
        // An IPv6 socket to the IPv4-mapped address reaches the IPv4 listener.
        ask("connect [::ffff:127.0.0.1]:22".to_string(), "socket_connect"),
    ];
    let r = run_steps("hatch-ssh", BASELINE, &steps)?;
    ensure!(v4.count() + v4b.count() + v6.count() == 0, "a connection reached port 22");
    let n = r.iter().filter(|x| is(&x.rule, "baseline-ssh-localhost") && is(&x.object, "127.0.0.1:22")).count();
    ensure!(n == 2, "want 2 denials of 127.0.0.1:22 (IPv4, IPv4-mapped): {r:#?}");
    refused(&r, "baseline-ssh-localhost", "127.0.0.2:22", Reason::Denied)?;
    refused(&r, "baseline-ssh-localhost-v6", "[::1]:22", Reason::Denied)?;
    Ok(())
}

/// Serves one descriptor per connection at `sock`: `open` gives it (outside every tree).
fn fd_server(sock: &str, open: impl Fn() -> Result<std::os::fd::OwnedFd> + Send + 'static) -> Result<()> {
    std::fs::remove_file(sock).ok();
    let l = UnixListener::bind(sock).with_context(|| format!("binding {sock}"))?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if let Err(e) = send_fd(&s, &open) {
                eprintln!("    fd server: {e:#}");
            }
        }
    });
    Ok(())
}

fn send_fd(s: &UnixStream, open: &impl Fn() -> Result<std::os::fd::OwnedFd>) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fd = open()?;
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"x")];
    sendmsg::<()>(s.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

fn open_flags(path: &'static str, flags: i32) -> impl Fn() -> Result<std::os::fd::OwnedFd> {
    move || {
        let c = std::ffi::CString::new(path)?;
        // SAFETY: a NUL-terminated path; the descriptor is owned once, below.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            bail!("opening {path}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by open.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }
}

/// A process outside the tree opens what the tree may not and hands the descriptor over
/// SCM_RIGHTS: a read descriptor of a read-denied file, an O_PATH descriptor of it, and a
/// write descriptor of a cron file (the baseline's write rule). None is installed (MSG_CTRUNC,
/// no descriptor, the content never printed, the cron file still empty), each recorded with
/// hook file_receive. The other way round: a descriptor of the (allowed) parent directory is
/// received, but an openat relative to it still reaches the denied file and is refused by
/// file_open. An allowed file's descriptor arrives and reads (the hook is not a blanket deny).
fn file_receive() -> Result<()> {
    std::fs::create_dir_all(format!("{DIR}/secret"))?;
    std::fs::create_dir_all("/etc/cron.d")?;
    std::fs::write(format!("{DIR}/secret/key"), "SECRET-CONTENT\n")?;
    std::fs::write(format!("{DIR}/public"), "PUBLIC-CONTENT\n")?;
    std::fs::write("/etc/cron.d/hatch", "")?;
    fd_server(&format!("{DIR}/fd-read.sock"), open_flags("/tmp/t/hatch/secret/key", libc::O_RDONLY))?;
    fd_server(&format!("{DIR}/fd-path.sock"), open_flags("/tmp/t/hatch/secret/key", libc::O_PATH))?;
    fd_server(&format!("{DIR}/fd-write.sock"), open_flags("/etc/cron.d/hatch", libc::O_WRONLY))?;
    fd_server(&format!("{DIR}/fd-dir.sock"), open_flags("/tmp/t/hatch", libc::O_RDONLY | libc::O_DIRECTORY))?;
    fd_server(&format!("{DIR}/fd-ok.sock"), open_flags("/tmp/t/hatch/public", libc::O_RDONLY))?;
    let policy = format!(
        "{BASELINE}[[rule]]\nname = \"no-secret\"\naction = \"deny\"\nfile = {{ path = \"{DIR}/secret/\", access = \"read\" }}\n"
    );
    let script = [
        format!("hatch-recv-read {DIR}/fd-read.sock"),
        format!("hatch-recv-read {DIR}/fd-path.sock"),
        format!("hatch-recv-write {DIR}/fd-write.sock"),
        format!("hatch-recv-openat {DIR}/fd-dir.sock secret/key"),
        format!("hatch-recv-read {DIR}/fd-ok.sock"),
    ];
    let cmd: Vec<String> = script.iter().map(|op| format!("guard-e2e do {op}")).collect();
    let a = Agent::start("hatch-recv", &policy, &cmd.join("; "))?;
    let mut lines = vec![];
    for _ in 0..3 {
        lines.push(a.line_starting("RECV ")?);
        lines.push(a.result()?);
    }
    lines.push(a.line_starting("RECV ")?);
    lines.push(a.result()?);
    lines.push(a.line_starting("RECV ")?);
    let content = a.line_starting("CONTENT ")?;
    lines.push(a.result()?);
    let r = a.finish()?.records()?;
    let want = [
        "RECV ctrunc=1 fds=0",
        DENIED,
        "RECV ctrunc=1 fds=0",
        DENIED,
        "RECV ctrunc=1 fds=0",
        DENIED,
        "RECV ctrunc=0 fds=1",
        DENIED,
        "RECV ctrunc=0 fds=1",
        "RESULT ok",
    ];
    for (got, want) in lines.iter().zip(want) {
        ensure!(got.starts_with(want), "want {want}, got {got} (all: {lines:#?})");
    }
    ensure!(content == "CONTENT PUBLIC-CONTENT", "the allowed file read {content:?}");
    ensure!(std::fs::read_to_string("/etc/cron.d/hatch")?.is_empty(), "the cron file was written");
    let recv = |rule: &str, object: &str| {
        has(&r, |x| {
            x.hook == Some(Hook::FileReceive)
                && x.decision == Some(Decision::Deny)
                && x.reason == Some(Reason::Rule)
                && is(&x.rule, rule)
                && is(&x.object, object)
        })
    };
    let key = format!("{DIR}/secret/key");
    let n = r.iter().filter(|x| x.hook == Some(Hook::FileReceive) && is(&x.object, &key)).count();
    ensure!(n == 2 && recv("no-secret", &key), "want 2 file_receive denials of {key}: {r:#?}");
    ensure!(recv("baseline-cron-d", "/etc/cron.d/hatch"), "no file_receive denial of the cron file: {r:#?}");
    ensure!(
        has(&r, |x| x.hook == Some(Hook::FileOpen) && x.decision == Some(Decision::Deny) && is(&x.object, &key)),
        "no file_open denial of the openat through the received directory: {r:#?}"
    );
    Ok(())
}

/// A policy that includes a file next to it (and the baseline): the included rule is enforced
/// (a read of the file it protects is refused, recorded with its name), and the included file
/// is guard's own, like the policy: the tree cannot rewrite it to change the next load (a write
/// and a rename over it are refused `tamper`, the file is unchanged).
fn included_files() -> Result<()> {
    std::fs::create_dir_all(format!("{DIR}/inc"))?;
    std::fs::write(format!("{DIR}/inc/secret"), "SECRET\n")?;
    std::fs::write(format!("{DIR}/inc/other.toml"), "")?;
    // Agent::start writes the policy as /tmp/t/<name>.toml: the include is relative to it.
    let rules = "/tmp/t/hatch-inc-rules.toml";
    let text = format!("[[rule]]\nname = \"inc-secret\"\naction = \"deny\"\nfile = {{ path = \"{DIR}/inc/secret\", access = \"read\" }}\n");
    std::fs::write(rules, &text)?;
    let policy = "include = [\"guard:baseline\", \"hatch-inc-rules.toml\"]\n";
    let steps = [
        deny(format!("open-read {DIR}/inc/secret")),
        deny(format!("hatch-write {rules} default=\"allow\"")),
        deny(format!("rename {DIR}/inc/other.toml {rules}")),
    ];
    let r = run_steps("hatch-inc", policy, &steps)?;
    ensure!(std::fs::read_to_string(rules)? == text, "the included file changed");
    refused(&r, "inc-secret", &format!("{DIR}/inc/secret"), Reason::Rule)?;
    let tamper = r.iter().filter(|x| x.reason == Some(Reason::Tamper) && x.decision == Some(Decision::Deny)).count();
    ensure!(tamper >= 2, "want the write and the rename of the included file refused as tamper: {r:#?}");
    Ok(())
}
