//! `cargo xtask vm`: boots a cached test kernel in QEMU (TCG) with a generated
//! initramfs, streams the serial console, and returns the guest command's exit code.
use crate::initramfs::{self, Guest, EXIT_MARKER};
use crate::kernel::{self, Kernel, Series};
use crate::{compile, util};
use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct VmArgs {
    /// Kernel series to boot.
    #[arg(long, value_enum, default_value = "6.12")]
    pub kernel: Series,
    /// Guest CPUs. Default 1: TCG guests with 2 CPUs have crashed while BPF
    /// programs were attached.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Forward guest 10.0.2.100:PORT to host 127.0.0.1:PORT (repeatable); enables networking.
    #[arg(long = "forward", value_name = "PORT")]
    pub forward: Vec<u16>,
    /// Copy a host file or directory into the guest: HOST=GUEST_PATH (repeatable).
    #[arg(long = "copy", value_name = "HOST=GUEST", value_parser = parse_copy)]
    pub copy: Vec<(PathBuf, String)>,
    /// Kill the VM and fail after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Use existing binaries instead of running `build` first.
    #[arg(long)]
    pub no_build: bool,
    /// Shell command run in the guest (arguments joined with spaces).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
    /// Variables exported to the command, over the host's own `GUARD_*` ones (which the
    /// guest gets too): how the host's services tell the guest where they are.
    #[arg(skip)]
    pub env: Vec<(String, String)>,
    /// Put before each console line (`[6.1] `): when two VMs share one terminal.
    #[arg(skip)]
    pub label: Option<String>,
}

/// The guest kernel crashed (Oops, panic, lockup, BUG). Distinct so `test`
/// can retry: TCG occasionally crashes for reasons unrelated to guard.
#[derive(Debug)]
pub struct GuestCrash(pub String);

impl fmt::Display for GuestCrash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GUEST KERNEL CRASHED: {}", self.0)
    }
}

impl std::error::Error for GuestCrash {}

const CRASH_MARKERS: &[&str] = &["Oops", "Kernel panic", "soft lockup", "BUG:"];
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 lsm=lockdown,capability,landlock,bpf";

pub fn run(args: &VmArgs) -> Result<u8> {
    run_with_console(args).map(|(code, _)| code)
}

/// As [`run`], also returning the guest's console output (for reading its test summary).
pub fn run_with_console(args: &VmArgs) -> Result<(u8, String)> {
    if !args.no_build {
        compile::build()?;
    }
    let kernel = kernel::require(args.kernel)?;
    let (dir, _lock) = work_dir(args.kernel.name())?;
    let guest = Guest { cmd: &args.cmd, env: &args.env, network: !args.forward.is_empty(), copy: &args.copy };
    let initrd = initramfs::build(&dir, &kernel, &guest)?;
    let log = dir.join("serial.log");
    eprintln!("xtask: booting {} (smp {}, timeout {}s)", kernel.package, args.smp, args.timeout);
    let mut qemu = qemu_command(args, &kernel, &initrd, &log)?;
    let timeout = Duration::from_secs(args.timeout);
    let finished = stream(&mut qemu, &log, timeout, args.label.as_deref())?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    if let Some(status) = finished.filter(|s| !s.success() && text.is_empty()) {
        bail!("QEMU failed to start ({status}; see its messages above){}", forward_hint(&args.forward));
    }
    let code = verdict(&text, finished, args.timeout)?;
    Ok((code, text.replace('\r', "")))
}

fn forward_hint(ports: &[u16]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("; check the forwarded port(s) {}", ports.join(", "))
}

fn parse_copy(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once('=') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => Ok((PathBuf::from(host), guest.into())),
        _ => Err(format!("{s:?}: expected HOST_PATH=/GUEST/PATH")),
    }
}

/// A work directory of its own for this run (initramfs, serial log): the first of
/// target/vm/KERNEL, KERNEL-2, KERNEL-3 that no other run holds, else wait for the first.
fn work_dir(kernel: &str) -> Result<(PathBuf, File)> {
    let base = util::workspace_root().join("target/vm");
    for n in 1..=3 {
        let dir = if n == 1 { base.join(kernel) } else { base.join(format!("{kernel}-{n}")) };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = File::create(dir.join(".lock")).with_context(|| format!("creating {}/.lock", dir.display()))?;
        if file.try_lock().is_ok() {
            return Ok((dir, file));
        }
    }
    let dir = base.join(kernel);
    let lock = lock_dir(&dir)?;
    Ok((dir, lock))
}

/// Concurrent runs for the same kernel would overwrite each other's initramfs
/// and serial log, so they take turns (held until the VM exits).
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(".lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if let Err(TryLockError::WouldBlock) = file.try_lock() {
        eprintln!("xtask: waiting for another `xtask vm` using {}", dir.display());
        file.lock().with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

fn qemu_command(args: &VmArgs, kernel: &Kernel, initrd: &Path, log: &Path) -> Result<Child> {
    // Remove the previous run's log so streaming starts from this boot.
    let _ = fs::remove_file(log);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024"])
        .args(["-smp", &args.smp.to_string()])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", CMDLINE])
        .args(network_args(&args.forward)?)
        // QEMU must not touch our stdin (closed in CI, a terminal otherwise).
        .stdin(Stdio::null());
    cmd.spawn().with_context(|| format!("could not start `{}`", util::describe(&cmd)))
}

/// User-mode networking restricted to the forwarded ports, or no NIC at all.
///
/// Each guest connection to 10.0.2.100:PORT runs `xtask relay PORT`, which joins it to a new
/// host connection to 127.0.0.1:PORT. (The `-tcp:` form of guestfwd is one chardev connected
/// once at QEMU start: a second guest connection, or a reconnection, would not work.)
fn network_args(ports: &[u16]) -> Result<Vec<String>> {
    if ports.is_empty() {
        return Ok(vec!["-nic".into(), "none".into()]);
    }
    let me = std::env::current_exe().context("locating the xtask binary for the port relay")?;
    let mut netdev = String::from("user,id=n0,restrict=on");
    for port in ports {
        netdev.push_str(&format!(",guestfwd=tcp:10.0.2.100:{port}-cmd:{} relay {port}", me.display()));
    }
    Ok(vec!["-netdev".into(), netdev, "-device".into(), "virtio-net-pci,netdev=n0,romfile=".into()])
}

/// `xtask relay PORT`: stdin/stdout (one guest connection, from QEMU) <-> 127.0.0.1:PORT.
pub fn relay(port: u16) -> Result<u8> {
    use std::net::{Shutdown, TcpStream};
    let sock =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("relay: connecting to 127.0.0.1:{port}"))?;
    let mut up = sock.try_clone()?;
    let writer = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(Shutdown::Write);
    });
    let mut down = sock;
    // Raw fd 1, not io::stdout(): its line buffering would hold binary data (TLS) back.
    // SAFETY: fd 1 is open for the life of this process and nothing else writes to it.
    let mut out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(1) };
    let _ = std::io::copy(&mut down, &mut out);
    let _ = writer.join();
    Ok(0)
}

/// Copies the serial log to stdout as it grows until QEMU exits (Some(status))
/// or the timeout passes (None; QEMU is killed).
fn stream(qemu: &mut Child, log: &Path, timeout: Duration, label: Option<&str>) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut tail = Tail::new(log.to_path_buf(), label);
    loop {
        tail.pump()?;
        if let Some(status) = qemu.try_wait()? {
            tail.pump()?;
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            tail.pump()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Follows a file that may not exist yet. With a label, whole lines only, each labelled, so
/// two VMs' consoles can share stdout.
struct Tail<'a> {
    path: PathBuf,
    file: Option<File>,
    pos: u64,
    label: Option<&'a str>,
    partial: Vec<u8>,
}

impl<'a> Tail<'a> {
    fn new(path: PathBuf, label: Option<&'a str>) -> Self {
        Tail { path, file: None, pos: 0, label, partial: Vec::new() }
    }

    fn pump(&mut self) -> Result<()> {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        self.pos += file.read_to_end(&mut buf)? as u64;
        // The serial console emits CRLF; CI logs read better without the CRs.
        buf.retain(|&b| b != b'\r');
        let mut out = std::io::stdout().lock();
        match self.label {
            None => out.write_all(&buf)?,
            Some(label) => {
                self.partial.extend_from_slice(&buf);
                let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Ok(()) };
                let whole: Vec<u8> = self.partial.drain(..=end).collect();
                for line in whole.split_inclusive(|&b| b == b'\n') {
                    out.write_all(label.as_bytes())?;
                    out.write_all(line)?;
                }
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Turns the console log and QEMU's fate into the guest's exit code or an error.
fn verdict(log: &str, finished: Option<ExitStatus>, timeout: u64) -> Result<u8> {
    let crash = crash_marker(log);
    if let Some(marker) = crash {
        eprintln!("\n!!!!!!!! xtask: guest kernel log contains {marker:?} !!!!!!!!\n");
    }
    let code = exit_code(log);
    match (code, crash, finished) {
        (Some(0), _, _) => Ok(0),
        // A failure alongside a kernel crash is blamed on the crash (retryable).
        (_, Some(marker), _) => Err(GuestCrash(format!("console shows {marker:?}")).into()),
        (Some(code), None, _) => Ok(code),
        (None, None, None) => bail!("VM timed out after {timeout}s without reporting an exit code"),
        (None, None, Some(status)) => {
            bail!("VM did not come up or crashed: QEMU exited ({status}) without a {EXIT_MARKER} line")
        }
    }
}

fn crash_marker(log: &str) -> Option<&'static str> {
    CRASH_MARKERS.iter().copied().find(|m| log.contains(m))
}

/// The code from the last `GUARD-VM-EXIT=<n>` in the log.
fn exit_code(log: &str) -> Option<u8> {
    let rest = &log[log.rfind(EXIT_MARKER)? + EXIT_MARKER.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u32>().ok().map(|c| c.min(255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_parsed_from_last_marker() {
        assert_eq!(exit_code("x\nGUARD-VM-EXIT=1\nGUARD-VM-EXIT=3\n"), Some(3));
        assert_eq!(exit_code("no marker"), None);
    }

    #[test]
    fn crash_is_retryable_error() {
        let err = verdict("Oops: 0003\n", None, 1).unwrap_err();
        assert!(err.is::<GuestCrash>());
        assert_eq!(verdict("Oops\nGUARD-VM-EXIT=0\n", None, 1).unwrap(), 0);
    }
}
