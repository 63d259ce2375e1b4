//! Open WebAuthn ceremonies, kept on the server: the browser only ever holds an opaque id.
//!
//! Each ceremony belongs to one user, lasts `ttl`, and is taken once: the first attempt to
//! finish it uses it up, whatever its outcome, so a captured assertion or a second submit of
//! the same form cannot be replayed. Used ids are remembered (without their state) until they
//! would have expired anyway, so a replay gets "already used" rather than "unknown".
//!
//! In memory: a ceremony started on one replica must be finished on the same one (sticky
//! sessions behind a load balancer, or one console replica). A restart forgets open ceremonies;
//! the approver starts again. Nothing here needs to survive one: a ceremony lasts two minutes.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many ceremonies (open or remembered as used) at once; beyond, a start is
/// refused rather than letting anyone who can reach the start endpoint grow the server's memory.
pub const MAX_OPEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeremonyError {
    #[error("unknown passkey ceremony {0:?} (never started here, or forgotten after it expired); start again")]
    Unknown(String),
    #[error("passkey ceremony {0:?} was used already (each is single use); start again")]
    Used(String),
    #[error("passkey ceremony {id:?} expired ({ttl:?} to finish it); start again")]
    Expired { id: String, ttl: Duration },
    #[error("passkey ceremony {id:?} was started by {started_by:?}, not by {user:?}")]
    WrongUser { id: String, started_by: String, user: String },
    #[error("too many passkey ceremonies open ({MAX_OPEN}); try again in a minute")]
    Full,
}

struct Entry<T> {
    user: String,
    expires: Instant,
    /// None once taken.
    state: Option<T>,
}

pub struct Book<T> {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T> Book<T> {
    pub fn new(ttl: Duration) -> Self {
        Book { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        // A panic while holding the lock leaves a consistent map (every change is one insert
        // or one field write), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `state` for `user` under `id` (a fresh random id the caller made) until `now + ttl`.
    pub fn insert(&self, now: Instant, id: String, user: &str, state: T) -> Result<(), CeremonyError> {
        let mut entries = self.lock();
        entries.retain(|_, e| e.expires > now);
        if entries.len() >= MAX_OPEN {
            return Err(CeremonyError::Full);
        }
        entries.insert(id, Entry { user: user.to_string(), expires: now + self.ttl, state: Some(state) });
        Ok(())
    }

    /// The state of ceremony `id`, once, for the user who started it, before it expires.
    /// Any attempt uses the ceremony up, including a refused one.
    pub fn take(&self, now: Instant, id: &str, user: &str) -> Result<T, CeremonyError> {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else { return Err(CeremonyError::Unknown(id.to_string())) };
        let Some(state) = entry.state.take() else { return Err(CeremonyError::Used(id.to_string())) };
        if now >= entry.expires {
            return Err(CeremonyError::Expired { id: id.to_string(), ttl: self.ttl });
        }
        if entry.user != user {
            return Err(CeremonyError::WrongUser {
                id: id.to_string(),
                started_by: entry.user.clone(),
                user: user.to_string(),
            });
        }
        Ok(state)
    }

    /// Ceremonies held (open, or remembered as used until their expiry).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(120);

    #[test]
    fn a_ceremony_is_taken_once_by_its_user() {
        let book = Book::new(TTL);
        let t0 = Instant::now();
        book.insert(t0, "c1".into(), "alice", 7).unwrap();
        assert_eq!(book.take(t0 + Duration::from_secs(1), "c1", "alice"), Ok(7));
        assert_eq!(book.take(t0 + Duration::from_secs(2), "c1", "alice"), Err(CeremonyError::Used("c1".into())));
    }

    #[test]
    fn unknown_ids_are_refused() {
        let book: Book<u8> = Book::new(TTL);
        assert_eq!(book.take(Instant::now(), "nope", "alice"), Err(CeremonyError::Unknown("nope".into())));
    }

    #[test]
    fn an_expired_ceremony_is_refused_and_used_up() {
        let book = Book::new(TTL);
        let t0 = Instant::now();
        book.insert(t0, "c1".into(), "alice", 7).unwrap();
        let late = t0 + TTL;
        assert_eq!(book.take(late, "c1", "alice"), Err(CeremonyError::Expired { id: "c1".into(), ttl: TTL }));
        assert_eq!(book.take(late, "c1", "alice"), Err(CeremonyError::Used("c1".into())));
    }

    #[test]
    fn another_user_cannot_finish_it_and_burns_it() {
        let book = Book::new(TTL);
        let t0 = Instant::now();
        book.insert(t0, "c1".into(), "alice", 7).unwrap();
        assert_eq!(
            book.take(t0, "c1", "mallory"),
            Err(CeremonyError::WrongUser { id: "c1".into(), started_by: "alice".into(), user: "mallory".into() })
        );
        // The owner must start again: an id seen by someone else is not trusted any more.
        assert_eq!(book.take(t0, "c1", "alice"), Err(CeremonyError::Used("c1".into())));
    }

    #[test]
    fn expired_entries_are_forgotten_and_the_book_is_bounded() {
        let book = Book::new(TTL);
        let t0 = Instant::now();
        for i in 0..MAX_OPEN {
            book.insert(t0, format!("c{i}"), "alice", ()).unwrap();
        }
        assert_eq!(book.insert(t0, "one-more".into(), "alice", ()), Err(CeremonyError::Full));
        // Once they have expired, a new start forgets them all.
        book.insert(t0 + TTL, "later".into(), "alice", ()).unwrap();
        assert_eq!(book.len(), 1);
        assert_eq!(book.take(t0 + TTL, "c0", "alice"), Err(CeremonyError::Unknown("c0".into())));
    }
}
