//! Reading the kernel's ring buffer: one reader, which drains every ready item, hands each
//! decoded event on, and then says the batch ended (the audit log flushes once per batch).
//!
//! The reader also beats a heartbeat (at least once a [`BEAT`], events or not), so `status`
//! can tell a reader that runs from one that stopped or is stuck in an event's handling.

use super::event;
use aya::maps::{MapData, RingBuf};
use guard_common::Event;
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};
use tokio::io::unix::AsyncFd;

/// How often an idle reader beats.
pub const BEAT: Duration = Duration::from_secs(1);

/// One reader per agent process, so the heartbeat is the process's.
static RUNNING: AtomicBool = AtomicBool::new(false);
static LAST_BEAT_MS: AtomicU64 = AtomicU64::new(0);
static EVENTS_READ: AtomicU64 = AtomicU64::new(0);

fn beat() {
    LAST_BEAT_MS.store(guard_api::Timestamp::now().unix_ms().max(0) as u64, Ordering::Relaxed);
}

/// The reader as `status` sees it: running or not, ms since its last beat, events read.
pub fn health() -> (bool, Option<u64>, u64) {
    let last = LAST_BEAT_MS.load(Ordering::Relaxed);
    let now = guard_api::Timestamp::now().unix_ms().max(0) as u64;
    let since = (last != 0).then(|| now.saturating_sub(last));
    (RUNNING.load(Ordering::Relaxed), since, EVENTS_READ.load(Ordering::Relaxed))
}

/// Reads events until the ring buffer's fd fails. `on_event` sees each event in order,
/// `on_batch` runs after each drained batch.
pub async fn read_events(ring: RingBuf<MapData>, mut on_event: impl FnMut(Event), mut on_batch: impl FnMut()) {
    // SAFETY: `register` needs the fd to stay open while it is registered: the AsyncFd owns
    // the ring buffer, which owns the fd, so both go together.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot poll the ring buffer: {e}");
            return;
        }
    };
    RUNNING.store(true, Ordering::Relaxed);
    beat();
    loop {
        let ready = match tokio::time::timeout(BEAT, fd.readable_mut()).await {
            Err(_) => {
                beat();
                continue;
            }
            Ok(r) => r,
        };
        let Ok(mut guard) = ready else {
            break;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            EVENTS_READ.fetch_add(1, Ordering::Relaxed);
            match event::decode(&item) {
                Some(e) => on_event(e),
                None => tracing::warn!("short event of {} bytes", item.len()),
            }
        }
        guard.clear_ready();
        on_batch();
        beat();
    }
    tracing::error!("the ring buffer reader stopped: no more events are read");
    RUNNING.store(false, Ordering::Relaxed);
}
