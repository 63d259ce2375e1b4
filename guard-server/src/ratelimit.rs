//! Token buckets on submissions, per host and per tree: a tree that asks again and again (to
//! wear approvers down, or to fill the database) is refused with RESOURCE_EXHAUSTED, which
//! its agent turns into a denial.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// `per_minute` tokens a minute, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// None: no limit.
    pub host: Option<Rate>,
    pub tree: Option<Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { host: Some(Rate { per_minute: 600, burst: 120 }), tree: Some(Rate { per_minute: 120, burst: 30 }) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Keys idle long enough to be full again are dropped when the map grows past this.
const PRUNE_AT: usize = 10_000;

/// One set of buckets for a rate, by key.
#[derive(Debug)]
struct Buckets {
    rate: Rate,
    by_key: HashMap<String, Bucket>,
}

impl Buckets {
    fn take(&mut self, key: &str, now: Instant) -> bool {
        let per_sec = f64::from(self.rate.per_minute) / 60.0;
        let burst = f64::from(self.rate.burst.max(1));
        if self.by_key.len() >= PRUNE_AT {
            self.by_key.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let b = self.by_key.entry(key.to_string()).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which limit a submission went over.
#[derive(Debug, Clone, PartialEq)]
pub enum Over {
    Host(Rate),
    Tree(Rate),
}

/// The limiter of one server process (replicas each count their own: a host spread over N
/// replicas gets up to N times the rate, which still bounds it).
#[derive(Debug)]
pub struct Limiter {
    host: Option<Mutex<Buckets>>,
    tree: Option<Mutex<Buckets>>,
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        let buckets = |rate: Option<Rate>| rate.map(|rate| Mutex::new(Buckets { rate, by_key: HashMap::new() }));
        Limiter { host: buckets(limits.host), tree: buckets(limits.tree) }
    }

    /// Takes a token for `host` and for its tree `tree_id`. The tree's is checked first so a
    /// tree over its own limit does not use up its host's.
    pub fn admit(&self, host: &str, tree_id: &str, now: Instant) -> Result<(), Over> {
        if let Some(t) = &self.tree {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            if !t.take(&format!("{host}\0{tree_id}"), now) {
                return Err(Over::Tree(t.rate));
            }
        }
        if let Some(h) = &self.host {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            if !h.take(host, now) {
                return Err(Over::Host(h.rate));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new(Limits { host: None, tree: Some(Rate { per_minute: 60, burst: 3 }) });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit("h", "t1", t0), Ok(()));
        }
        assert!(matches!(l.admit("h", "t1", t0), Err(Over::Tree(_))));
        // Another tree has its own bucket.
        assert_eq!(l.admit("h", "t2", t0), Ok(()));
        // One a second comes back.
        assert_eq!(l.admit("h", "t1", t0 + Duration::from_millis(1010)), Ok(()));
        assert!(l.admit("h", "t1", t0 + Duration::from_millis(1020)).is_err());
    }

    #[test]
    fn the_host_limit_spans_its_trees() {
        let l = Limiter::new(Limits { host: Some(Rate { per_minute: 1, burst: 2 }), tree: None });
        let t0 = Instant::now();
        assert!(l.admit("h", "a", t0).is_ok() && l.admit("h", "b", t0).is_ok());
        assert!(matches!(l.admit("h", "c", t0), Err(Over::Host(_))));
        assert!(l.admit("other", "c", t0).is_ok());
    }
}
