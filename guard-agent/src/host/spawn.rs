//! Starting a command that must be watched before its first instruction runs.
//!
//! The agent is multi-threaded (tokio) by then, so it must not fork and run code in the child
//! beyond what is async-signal-safe. It spawns a fresh copy of itself with `Command` instead
//! (`guard-agent exec-released -- CMD`, hidden): that process is single-threaded, waits on a
//! pipe until the agent has put its pid into a tree, then becomes CMD by exec (same pid). The
//! only code in the forked child is `Command`'s own and one `dup2`, which is
//! async-signal-safe.

use anyhow::{Context, Result};
use nix::{
    sys::wait::{waitpid, WaitStatus},
    unistd::Pid,
};
use std::{
    ffi::OsStr,
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::Command,
};

/// The fd on which the released process waits for its go.
const GO_FD: i32 = 3;
/// Set by [`spawn_blocked`] only: says fd 3 is the go pipe (and is removed before CMD runs).
const GO_ENV: &str = "GUARD_AGENT_GO_FD";

/// A command started and blocked: [`Blocked::release`] lets it run.
pub struct Blocked {
    pub pid: Pid,
    go: File,
}

impl Blocked {
    /// Lets the command run (it execs CMD now).
    pub fn release(mut self) -> Result<()> {
        self.go.write_all(b"g").context("releasing the command")
    }
}

/// Starts CMD blocked, with `env` added to its environment. When the returned value is
/// dropped without `release`, the process exits without running CMD.
pub fn spawn_blocked(cmd: &[String], env: &[(&str, &OsStr)]) -> Result<Blocked> {
    // Close-on-exec: neither end leaks into CMD; fd 3 (a dup2 copy) does not inherit the flag.
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let rd_fd = rd.as_raw_fd();
    let me = std::env::current_exe().context("finding guard-agent's own executable")?;
    let mut c = Command::new(me);
    c.arg("exec-released").arg("--").args(cmd).env(GO_ENV, GO_FD.to_string());
    for (k, v) in env {
        c.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and only calls dup2(2) and
    // fcntl(2), which are async-signal-safe; `rd_fd` is open in the child (inherited across
    // fork).
    unsafe {
        c.pre_exec(move || {
            let r = if rd_fd == GO_FD { libc::fcntl(GO_FD, libc::F_SETFD, 0) } else { libc::dup2(rd_fd, GO_FD) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().context("starting the command")?;
    drop(rd);
    Ok(Blocked { pid: Pid::from_raw(child.id() as i32), go: File::from(wr) })
}

/// Set by `run` when CMD runs as another user: "uid:gid" (see [`RunAs`]).
pub const RUN_AS_ENV: &str = "GUARD_AGENT_RUN_AS";

/// The user `run` runs CMD as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `--user` (a name, a uid, or `root`); without it the invoking user: SUDO_UID/SUDO_GID
    /// when run through sudo. None: keep this process's own user.
    pub fn resolve(user: Option<&str>) -> Result<Option<RunAs>> {
        use nix::unistd::{Uid, User};
        let Some(user) = user else {
            let sudo = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
            return Ok(match (sudo("SUDO_UID"), sudo("SUDO_GID")) {
                (Some(uid), Some(gid)) if uid != 0 => Some(RunAs { uid, gid }),
                (Some(uid), None) if uid != 0 => Self::resolve(Some(&uid.to_string()))?,
                _ => None,
            });
        };
        let found = match user.parse::<u32>() {
            Ok(uid) => {
                User::from_uid(Uid::from_raw(uid))?.map(|u| (u.uid.as_raw(), u.gid.as_raw())).or(Some((uid, uid)))
            }
            Err(_) => User::from_name(user)?.map(|u| (u.uid.as_raw(), u.gid.as_raw())),
        };
        let (uid, gid) = found.with_context(|| format!("--user {user}: no such user"))?;
        Ok(Some(RunAs { uid, gid }))
    }

    pub fn to_env(self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    fn from_env(v: &str) -> Option<RunAs> {
        let (u, g) = v.split_once(':')?;
        Some(RunAs { uid: u.parse().ok()?, gid: g.parse().ok()? })
    }

    /// Drops to this user: supplementary groups, gid, then uid (irreversibly).
    fn become_user(self) -> nix::Result<()> {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        setgroups(&[Gid::from_raw(self.gid)])?;
        setgid(Gid::from_raw(self.gid))?;
        setuid(Uid::from_raw(self.uid))
    }
}

/// `guard-agent exec-released -- CMD`: waits for the go byte on fd 3, then becomes CMD.
/// Returns only on failure, with the exit status to use.
pub fn exec_when_released(cmd: &[String]) -> i32 {
    if std::env::var(GO_ENV).ok() != Some(GO_FD.to_string()) {
        eprintln!("guard-agent: exec-released is internal to `guard-agent run`");
        return 126;
    }
    // Drop to the user before the tree is watched and released: CMD never runs as root
    // unless asked (`--user root`).
    if let Ok(v) = std::env::var(RUN_AS_ENV) {
        let Some(user) = RunAs::from_env(&v) else {
            eprintln!("guard-agent: bad {RUN_AS_ENV} {v:?}");
            return 126;
        };
        if let Err(e) = user.become_user() {
            eprintln!("guard-agent: cannot become uid {} gid {}: {e}", user.uid, user.gid);
            return 126;
        }
    }
    // SAFETY: GO_ENV says `spawn_blocked` set fd 3 up (dup2 before exec) for this process, and
    // nothing else in this fresh process owns it.
    let mut go = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(GO_FD) };
    let mut b = [0u8; 1];
    if go.read(&mut b).unwrap_or(0) != 1 {
        return 126;
    }
    drop(go);
    let Some((prog, args)) = cmd.split_first() else { return 127 };
    let e = Command::new(prog).args(args).env_remove(GO_ENV).env_remove(RUN_AS_ENV).exec();
    eprintln!("guard-agent: cannot execute the command: {e}");
    127
}

/// Waits for `child` and returns its exit status (128 + signal when a signal ended it).
pub fn wait_child(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_names_uids_and_root() {
        assert_eq!(RunAs::resolve(Some("root")).unwrap(), Some(RunAs { uid: 0, gid: 0 }));
        assert_eq!(RunAs::resolve(Some("0")).unwrap(), Some(RunAs { uid: 0, gid: 0 }));
        // A uid with no passwd entry runs with the same gid.
        assert_eq!(RunAs::resolve(Some("4247")).unwrap(), Some(RunAs { uid: 4247, gid: 4247 }));
        let e = RunAs::resolve(Some("no-such-user-guard")).unwrap_err().to_string();
        assert!(e.contains("--user no-such-user-guard"), "{e}");
        let r = RunAs { uid: 1000, gid: 100 };
        assert_eq!(RunAs::from_env(&r.to_env()), Some(r));
    }
}
