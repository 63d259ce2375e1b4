//! Reading the kernel's ring buffer: one reader, which drains every ready item, hands each
//! decoded event on, and then says the batch ended (the audit log flushes once per batch).

use super::event;
use aya::maps::{MapData, RingBuf};
use guard_common::Event;
use tokio::io::unix::AsyncFd;

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
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match event::decode(&item) {
                Some(e) => on_event(e),
                None => tracing::warn!("short event of {} bytes", item.len()),
            }
        }
        guard.clear_ready();
        on_batch();
    }
}
