//! The one way the agent binds a unix socket (the admin socket and the reasons socket): it
//! refuses to steal a socket another agent still serves, removes a stale one, and sets who may
//! connect before anyone can.

use anyhow::{bail, Context, Result};
use std::{os::unix::fs::PermissionsExt, path::Path};
use tokio::net::{UnixListener, UnixStream};

/// Who may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Root only (mode 0600, created under a 0077 umask): the admin socket.
    RootOnly,
    /// Every local process (mode 0666); the server checks each peer itself: the reasons socket.
    Everyone,
}

impl Access {
    fn what(self) -> &'static str {
        match self {
            Access::RootOnly => "admin socket",
            Access::Everyone => "reason socket",
        }
    }
}

pub async fn bind(path: &Path, access: Access) -> Result<UnixListener> {
    check_squatted(path, access)?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            match access {
                Access::RootOnly => {
                    bail!("another guard-agent already serves {}: pass --admin-socket PATH", path.display())
                }
                Access::Everyone => bail!("another guard-agent already serves {}", path.display()),
            }
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        if access == Access::RootOnly {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).ok();
        }
    }
    let listener = match access {
        Access::RootOnly => {
            // Created under a 0077 umask so that no moment exists where others could connect.
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            let listener = UnixListener::bind(path);
            nix::sys::stat::umask(old);
            listener
        }
        Access::Everyone => UnixListener::bind(path),
    };
    let listener = listener.with_context(|| format!("binding the {} {}", access.what(), path.display()))?;
    let mode = match access {
        Access::RootOnly => 0o600,
        Access::Everyone => 0o666,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Refuses to start on a path something else holds: a file that is not a socket, a symlink,
/// or (for the admin socket) a socket owned by another user than root. Each would otherwise be
/// removed and replaced, or followed, silently; reported with what was found.
fn check_squatted(path: &Path, access: Access) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    let what = access.what();
    if meta.file_type().is_symlink() {
        bail!("the {what} path {} is a symlink: refusing to follow it (squatted? remove it)", path.display());
    }
    if !meta.file_type().is_socket() {
        bail!("the {what} path {} exists and is not a socket (squatted? remove it)", path.display());
    }
    if access == Access::RootOnly && meta.uid() != 0 && nix::unistd::geteuid().is_root() {
        bail!("the {what} {} is owned by uid {}, not root (squatted? remove it)", path.display(), meta.uid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn binds_with_its_mode_and_refuses_a_served_socket() {
        let d = tempfile::tempdir().unwrap();
        let admin = d.path().join("run/agent.sock");
        let l = bind(&admin, Access::RootOnly).await.unwrap();
        assert_eq!(std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777, 0o600);
        let e = bind(&admin, Access::RootOnly).await.unwrap_err().to_string();
        assert!(e.contains("already serves") && e.contains("--admin-socket"), "{e}");
        drop(l);
        // A stale socket (nobody serves it) is replaced.
        let _l = bind(&admin, Access::RootOnly).await.unwrap();
        let reasons = d.path().join("run/reason.sock");
        let _r = bind(&reasons, Access::Everyone).await.unwrap();
        assert_eq!(std::fs::metadata(&reasons).unwrap().permissions().mode() & 0o777, 0o666);
    }

    #[tokio::test]
    async fn a_squatted_path_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("agent.sock");
        std::fs::write(&file, b"not a socket").unwrap();
        let e = bind(&file, Access::RootOnly).await.unwrap_err().to_string();
        assert!(e.contains("not a socket") && e.contains("squatted"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"not a socket", "the squatter's file was touched");
        let link = d.path().join("link.sock");
        std::os::unix::fs::symlink(d.path().join("elsewhere"), &link).unwrap();
        let e = bind(&link, Access::RootOnly).await.unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
    }
}
