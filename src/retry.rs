//! The one retry policy: exponential backoff, capped, whose waits end early on shutdown.
//!
//! Invariant: no wait outlives a shutdown request by more than [`TICK`]; what a caller
//! does after a cut-short wait (one more attempt, or stop) is its own decision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a wait looks at the shutdown flag.
pub const TICK: Duration = Duration::from_millis(100);

/// `base` doubled after each failed attempt, never more than `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1 for the first failure).
    pub fn delay(&self, attempt: u32) -> Duration {
        (self.base * 2_u32.saturating_pow(attempt.min(16))).min(self.cap)
    }

    /// Waits [`Backoff::delay`] of `attempt`, or until `shutdown` is set; returns whether
    /// the whole wait ran (false: shutdown requested).
    pub fn wait(&self, attempt: u32, shutdown: &AtomicBool) -> bool {
        sleep_unless_shutdown(shutdown, self.delay(attempt))
    }
}

/// Sleeps `total`, waking every [`TICK`] to look at `shutdown`; returns whether the whole
/// sleep ran (false: shutdown requested).
pub fn sleep_unless_shutdown(shutdown: &AtomicBool, total: Duration) -> bool {
    let until = Instant::now() + total;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(TICK.min(left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Backoff { base: Duration::from_millis(250), cap: Duration::from_secs(10) };
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(50), Duration::from_secs(10));
    }

    #[test]
    fn a_wait_ends_at_once_on_shutdown() {
        let b = Backoff { base: Duration::from_secs(3600), cap: Duration::from_secs(3600) };
        let shutdown = AtomicBool::new(true);
        assert!(!b.wait(1, &shutdown));
        assert!(sleep_unless_shutdown(&AtomicBool::new(false), Duration::ZERO));
    }
}
