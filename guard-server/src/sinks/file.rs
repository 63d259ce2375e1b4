//! The file sink: one record a line, in the sink's format, with size-based rotation.
//!
//! Rotation happens before a batch's line would take the live file past `max_bytes`:
//! `path.(keep-1)` -> `path.keep` (the oldest is replaced, so dropped), ... `path` -> `path.1`,
//! and a new `path` is started. Each step is a rename, so a reader sees whole files, and a line
//! is never split across two files. Each batch is written and fsynced before the sink's
//! position moves on.
use super::config::FileConfig;
use super::{Deliver, Item};
use anyhow::{Context, Result};
use async_trait::async_trait;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct FileSink {
    // The file work is blocking: it runs on tokio's blocking pool, which needs the state owned.
    state: Arc<Mutex<State>>,
}

struct State {
    config: FileConfig,
    /// The live file and its size; None until the first write (or after an error).
    open: Option<(File, u64)>,
}

impl FileSink {
    pub fn new(config: FileConfig) -> FileSink {
        FileSink { state: Arc::new(Mutex::new(State { config, open: None })) }
    }
}

#[async_trait]
impl Deliver for FileSink {
    async fn deliver(&mut self, items: &[Item]) -> Result<()> {
        let lines: Vec<String> = items.iter().map(|i| i.line.clone()).collect();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = state.lock().map_err(|_| anyhow::anyhow!("file sink state poisoned"))?;
            let result = state.write(&lines);
            if result.is_err() {
                // Reopen next time: the file may have been moved or its disk filled.
                state.open = None;
            }
            result
        })
        .await
        .context("file sink task")?
    }
}

impl State {
    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.config.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }

    fn open(&mut self) -> Result<&mut (File, u64)> {
        if self.open.is_none() {
            let path = &self.config.path;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata().with_context(|| format!("{}", path.display()))?.len();
            self.open = Some((file, size));
        }
        self.open.as_mut().context("file just opened")
    }

    fn rotate(&mut self) -> Result<()> {
        if let Some((file, _)) = self.open.take() {
            file.sync_all().with_context(|| format!("fsync {}", self.config.path.display()))?;
        }
        let rename = |from: &PathBuf, to: &PathBuf| match std::fs::rename(from, to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot rename {} to {}", from.display(), to.display())),
        };
        for n in (1..self.config.keep).rev() {
            rename(&self.rotated(n), &self.rotated(n + 1))?;
        }
        rename(&self.config.path, &self.rotated(1))?;
        Ok(())
    }

    fn write(&mut self, lines: &[String]) -> Result<()> {
        let max = self.config.max_bytes;
        let mut chunk = String::new();
        let mut size = self.open()?.1;
        for line in lines {
            let len = line.len() as u64 + 1;
            if size + chunk.len() as u64 + len > max && size + chunk.len() as u64 > 0 {
                self.flush(&mut chunk)?;
                self.rotate()?;
                size = self.open()?.1;
            }
            chunk.push_str(line);
            chunk.push('\n');
        }
        self.flush(&mut chunk)?;
        let (file, _) = self.open()?;
        file.sync_data().with_context(|| format!("fsync {}", self.config.path.display()))
    }

    /// Appends `chunk` (whole lines) to the live file.
    fn flush(&mut self, chunk: &mut String) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let path = self.config.path.clone();
        let (file, size) = self.open()?;
        file.write_all(chunk.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        *size += chunk.len() as u64;
        chunk.clear();
        Ok(())
    }
}
