//! The shipped position: how far guard-server has acknowledged the spool, persisted beside it
//! as `<log>.shipped` so that a restarted agent resumes where the server's acknowledgements
//! left off (and re-sends at most what was sent but not yet acknowledged: the server skips a
//! record it already holds). Written aside and renamed into place, so a crash leaves either the
//! old position or the new one, never half a file.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// Everything up to and including `seq` of `stream` is stored on the server; the next record
/// to ship starts at byte `offset` of the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub stream: String,
    pub seq: u64,
    pub offset: u64,
}

/// `<log>.shipped`.
pub fn path_for(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".shipped");
    PathBuf::from(p)
}

impl Position {
    /// The position stored for `log`; None when there is none yet. A file that does not read
    /// as a position is an error naming it (the caller decides to start over, loudly).
    pub fn load(log: &Path) -> Result<Option<Position>> {
        let path = path_for(log);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is not a shipped position", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the position for `log`: aside, synced, renamed into place.
    pub fn store(&self, log: &Path) -> Result<()> {
        let path = path_for(log);
        let mut aside = path.as_os_str().to_owned();
        aside.push(".new");
        let aside = PathBuf::from(aside);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&aside)?;
            f.write_all(serde_json::to_string(self).expect("a position serialises").as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&aside, &path)
        };
        write().with_context(|| format!("writing the shipped position {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_replaces_the_old_one_and_names_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        assert_eq!(Position::load(&log).unwrap(), None);
        let a = Position { stream: "ab".into(), seq: 3, offset: 120 };
        a.store(&log).unwrap();
        assert_eq!(Position::load(&log).unwrap(), Some(a));
        let b = Position { stream: "ab".into(), seq: 9, offset: 999 };
        b.store(&log).unwrap();
        assert_eq!(Position::load(&log).unwrap(), Some(b));
        // Nothing is left aside.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, vec!["audit.jsonl.shipped".to_string()]);
        std::fs::write(path_for(&log), "{\"stream\":").unwrap();
        let e = format!("{:#}", Position::load(&log).unwrap_err());
        assert!(e.contains("audit.jsonl.shipped is not a shipped position"), "{e}");
    }
}
