//! What /proc says about processes, read through the `procfs` crate. Every reader returns
//! None (or nothing) for a process that is gone: the caller decides what that means.

use procfs::process::Process;

/// What /proc says about one process.
#[derive(Debug, Clone, Default)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// The real uid.
    pub uid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// cgroup v2 path relative to the root ("/agents.slice/x.service").
    pub cgroup: Option<String>,
}

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// The process `pid`, or None when it is gone.
pub fn read_proc(pid: u32) -> Option<Proc> {
    let p = process(pid)?;
    let status = p.status().ok()?;
    let ppid = u32::try_from(status.ppid).unwrap_or(0);
    let exe = p.exe().ok().map(|e| e.display().to_string());
    let argv = p.cmdline().map(|a| a.into_iter().filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let cgroup = p
        .cgroups()
        .ok()
        .and_then(|cgs| cgs.into_iter().find(|c| c.hierarchy == 0 && c.controllers.is_empty()).map(|c| c.pathname));
    Some(Proc { pid, ppid, uid: status.ruid, exe, argv, cgroup })
}

/// The parent of `pid`.
pub fn ppid(pid: u32) -> Option<u32> {
    u32::try_from(process(pid)?.stat().ok()?.ppid).ok()
}

/// When `pid` started, in clock ticks after boot.
/// The audit login uid of `pid` (`/proc/PID/loginuid`); None when it is unset (u32::MAX:
/// no login, e.g. a service) or unreadable.
pub fn loginuid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok()?;
    text.trim().parse::<u32>().ok().filter(|uid| *uid != u32::MAX)
}

pub fn start_time(pid: u32) -> Option<u64> {
    Some(process(pid)?.stat().ok()?.starttime)
}

/// The working directory of `pid`.
pub fn cwd(pid: u32) -> Option<String> {
    process(pid)?.cwd().ok().map(|p| p.display().to_string())
}

/// The scheduler state letter of one thread ('R', 'S', 'T', 't', ...).
pub fn thread_state(tgid: u32, tid: u32) -> Option<char> {
    let task = process(tgid)?.task_from_tid(i32::try_from(tid).ok()?).ok()?;
    Some(task.stat().ok()?.state)
}

/// Every process id now.
pub fn all_pids() -> Vec<u32> {
    procfs::process::all_processes()
        .map(|it| it.flatten().filter_map(|p| u32::try_from(p.pid()).ok()).collect())
        .unwrap_or_default()
}

/// Every thread id of `pid`.
pub fn tids(pid: u32) -> Vec<u32> {
    process(pid)
        .and_then(|p| p.tasks().ok())
        .map(|it| it.flatten().filter_map(|t| u32::try_from(t.tid).ok()).collect())
        .unwrap_or_default()
}

/// Whether thread `tid` of `pid` still exists.
pub fn task_exists(pid: u32, tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let p = read_proc(me).expect("this process is in /proc");
        assert_eq!(p.pid, me);
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(Some(p.ppid), ppid(me));
        assert_eq!(p.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(p.exe.is_some());
        assert!(!p.argv.is_empty());
        assert!(tids(me).contains(&me));
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert!(all_pids().contains(&me));
        // This thread runs; the main thread waits for the tests.
        let tid = nix::unistd::gettid().as_raw() as u32;
        assert_eq!(thread_state(me, tid), Some('R'));
        assert!(tids(me).contains(&tid));
        assert_eq!(cwd(me), std::env::current_dir().ok().map(|d| d.display().to_string()));
        assert!(read_proc(u32::MAX - 1).is_none());
    }
}
