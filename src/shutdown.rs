//! Shutdown: one flag, requested once (by SIGINT, SIGTERM or a caller), that every loop
//! and every wait of the process looks at.
//!
//! Invariant: once requested it stays requested, and no wait outlives the request by more
//! than [`TICK`]. What a loop does then (finish the batch in progress, or stop at once) is
//! its own decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

/// How often a wait looks at the flag.
pub const TICK: Duration = Duration::from_millis(100);

/// A shutdown request shared by the threads of one process. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Not requested; only [`Shutdown::request`] requests it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requested on SIGINT or SIGTERM too, which a task on `runtime` listens for.
    pub fn on_signals(runtime: &Handle) -> Self {
        let shutdown = Self::new();
        let flag = shutdown.clone();
        runtime.spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                _ = ctrl_c => {},
                _ = term => {},
            }
            tracing::info!("signal received: finishing the batch in progress");
            flag.request();
        });
        shutdown
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sleeps `total`, waking every [`TICK`] to look at the flag; returns whether the
    /// whole sleep ran (false: shutdown requested).
    pub fn sleep(&self, total: Duration) -> bool {
        let until = Instant::now() + total;
        loop {
            if self.is_requested() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(TICK.min(left));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_ends_at_once_once_requested_and_clones_share_the_request() {
        let shutdown = Shutdown::new();
        assert!(shutdown.sleep(Duration::ZERO));
        let other = shutdown.clone();
        other.request();
        assert!(shutdown.is_requested());
        let started = Instant::now();
        assert!(!shutdown.sleep(Duration::from_secs(3600)));
        assert!(started.elapsed() < TICK);
    }
}
