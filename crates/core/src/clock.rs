//! The wall clock, as a seam: replicas stamp epochs with it and clients judge freshness by
//! it, and a deterministic simulation runs a whole realm on a clock it moves itself.
//!
//! Only decisions read it. Measuring how long something took uses `Instant` directly: a
//! simulation has no reason to fake a log line's duration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as far as the caller's decisions are concerned.
pub trait Clock: std::fmt::Debug + Send + Sync {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The host's clock: the production choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A host clock set before 1970 reads as 1970: every head would look stale, which is
        // the safe direction to err in.
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// The system clock behind the trait object every seam takes.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to: for simulations and tests. Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self { now_ms: Arc::new(AtomicU64::new(now_ms)) }
    }

    /// Moves the clock forward by `by_ms` (saturating at the end of time).
    pub fn advance(&self, by_ms: u64) {
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self.now_ms.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_add(by_ms)));
    }

    /// Sets the clock to `now_ms`, forward or back (a host clock can be stepped back too).
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::new(1_000);
        let shared = clock.clone();
        assert_eq!(shared.now_ms(), 1_000);
        clock.advance(250);
        assert_eq!(shared.now_ms(), 1_250);
        clock.advance(u64::MAX);
        assert_eq!(shared.now_ms(), u64::MAX);
        clock.set(7);
        assert_eq!(shared.now_ms(), 7);
    }

    #[test]
    fn system_clock_reads_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
