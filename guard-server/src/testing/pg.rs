//! A throwaway PostgreSQL cluster from Debian's `postgresql` package: for the replica tests,
//! and for `cargo xtask bench` through `guard-server dev-postgres`. It listens on a Unix
//! socket in its own directory only (no TCP), trusts local connections as user `guard`,
//! and is stopped when dropped.
//!
//! PostgreSQL refuses to run as root; as root, the cluster runs as `nobody`, which must be
//! able to reach the directory (it is chowned to nobody; its parents must be traversable).
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const USER: &str = "guard";
pub const DATABASE: &str = "postgres";

pub struct PgCluster {
    bindir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    running: bool,
}

/// The directory of `initdb` and `pg_ctl`: the newest /usr/lib/postgresql/<v>/bin, or PATH.
/// Err says why there is none (the caller skips, loudly).
pub fn find_bindir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    Err("no initdb/pg_ctl in /usr/lib/postgresql/*/bin or PATH (apt-get install postgresql)".into())
}

/// uid and gid of `nobody` (through NSS), or the customary 65534 when it has no entry.
fn nobody() -> (u32, u32) {
    match nix::unistd::User::from_name("nobody") {
        Ok(Some(user)) => (user.uid.as_raw(), user.gid.as_raw()),
        _ => (65534, 65534),
    }
}

impl PgCluster {
    /// Creates and starts a cluster in `dir` (created if missing, must not hold a cluster).
    pub fn start(dir: &Path, port: u16) -> Result<PgCluster> {
        let bindir = find_bindir().map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let (data, socket_dir) = (dir.join("data"), dir.join("sock"));
        std::fs::create_dir_all(&socket_dir)?;
        let run_as = nix::unistd::geteuid().is_root().then(nobody);
        if let Some((uid, gid)) = run_as {
            for d in [&dir, &socket_dir] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))
                    .with_context(|| format!("cannot chown {} to nobody", d.display()))?;
            }
        }
        let mut cluster = PgCluster { bindir, data, socket_dir, port, run_as, running: false };
        cluster
            .run("initdb", &["-D", &path(&cluster.data), "-U", USER, "--auth=trust", "--no-locale", "-E", "UTF8"])
            .context("initdb failed")?;
        let options = format!("-k {} -p {port} -c listen_addresses=''", path(&cluster.socket_dir));
        let log = path(&dir.join("postgres.log"));
        cluster
            .run("pg_ctl", &["-D", &path(&cluster.data), "-l", &log, "-o", &options, "-w", "-t", "60", "start"])
            .with_context(|| format!("pg_ctl start failed (see {log})"))?;
        cluster.running = true;
        Ok(cluster)
    }

    /// The sqlx URL: user `guard`, database `postgres`, over the cluster's socket.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@localhost/{DATABASE}?host={}&port={}", path(&self.socket_dir), self.port)
    }

    pub fn stop(&mut self) -> Result<()> {
        if self.running {
            self.running = false;
            self.run("pg_ctl", &["-D", &path(&self.data), "-m", "fast", "-w", "stop"])?;
        }
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            // std drops supplementary groups too when switching uid as root.
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.stderr(Stdio::piped()).output().with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            let hint = if self.run_as.is_some() {
                " (running as nobody: the directory's parents must be traversable by it)"
            } else {
                ""
            };
            bail!("{program} {}: {}{hint}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the test PostgreSQL cluster: {e:#}");
        }
    }
}
