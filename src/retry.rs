//! The one retry driver: an operation is attempted until it succeeds, its caller's
//! classification of an error says stop, or shutdown cuts a wait short.
//!
//! Each caller keeps its own [`Policy`] (a backoff and how many failures it accepts) and
//! classifies each error into a [`Step`]: try again after a wait, or stop; it logs the
//! failure with its own context. The driver alone waits, and only through
//! [`Shutdown::sleep`].
//!
//! Invariant: no wait outlives a shutdown request by more than [`crate::shutdown::TICK`];
//! whether a cut-short wait is followed by one more attempt or by a stop is the caller's
//! [`OnShutdown`].

use std::time::Duration;

use crate::shutdown::Shutdown;

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
}

/// A backoff, and how many failures an operation accepts before it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub backoff: Backoff,
    /// `None`: for as long as it takes.
    pub max_failures: Option<u32>,
}

impl Policy {
    /// After failure number `failures` (1 for the first): the wait before the next
    /// attempt, or `None` when that was one failure too many.
    pub fn after(&self, failures: u32) -> Option<Duration> {
        match self.max_failures {
            Some(max) if failures >= max => None,
            _ => Some(self.backoff.delay(failures)),
        }
    }

    /// The caller's [`Step`] for an error that waiting may mend: wait and try again, or,
    /// past the policy's limit, stop with `error`.
    pub fn step<T, E>(&self, failures: u32, error: E) -> Step<T, E> {
        match self.after(failures) {
            Some(wait) => Step::Retry(error, wait),
            None => Step::Stop(error),
        }
    }
}

/// One attempt's outcome, as its caller classifies it.
#[derive(Debug)]
pub enum Step<T, E> {
    Done(T),
    /// Failed; try again after this wait.
    Retry(E, Duration),
    /// Failed; no retry mends it (or the attempts are spent).
    Stop(E),
}

/// What a shutdown request does to a pending retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// Stop: the driver returns [`Stopped::Shutdown`] instead of waiting or trying again.
    Stop,
    /// Cut the wait short and try again: work in progress is finished (a batch already
    /// sent must still be committed or given up).
    Finish,
}

/// Why the driver returned without a result.
#[derive(Debug)]
pub enum Stopped<E> {
    /// The caller's classification said stop: its error.
    Failed(E),
    /// Shutdown came while the operation was failing: the last error.
    Shutdown(E),
}

impl<E> Stopped<E> {
    pub fn into_error(self) -> E {
        match self {
            Stopped::Failed(e) | Stopped::Shutdown(e) => e,
        }
    }
}

/// Attempts `attempt` (given the attempt number, from 1) until it is [`Step::Done`] or
/// [`Step::Stop`], waiting as each [`Step::Retry`] says.
pub fn retry<T, E>(
    shutdown: &Shutdown,
    on_shutdown: OnShutdown,
    mut attempt: impl FnMut(u32) -> Step<T, E>,
) -> Result<T, Stopped<E>> {
    let mut number = 0_u32;
    loop {
        number += 1;
        match attempt(number) {
            Step::Done(value) => return Ok(value),
            Step::Stop(error) => return Err(Stopped::Failed(error)),
            Step::Retry(error, wait) => {
                if on_shutdown == OnShutdown::Stop && shutdown.is_requested() {
                    return Err(Stopped::Shutdown(error));
                }
                if !shutdown.sleep(wait) && on_shutdown == OnShutdown::Stop {
                    return Err(Stopped::Shutdown(error));
                }
            }
        }
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
    fn a_policy_gives_up_after_its_failures() {
        let policy = Policy { backoff: Backoff { base: Duration::ZERO, cap: Duration::ZERO }, max_failures: Some(3) };
        assert_eq!(policy.after(2), Some(Duration::ZERO));
        assert_eq!(policy.after(3), None);
        let forever = Policy { max_failures: None, ..policy };
        assert_eq!(forever.after(1_000), Some(Duration::ZERO));
    }

    #[test]
    fn the_driver_retries_until_done_or_stopped() {
        let shutdown = Shutdown::new();
        let got =
            retry(&shutdown, OnShutdown::Stop, |n| if n < 3 { Step::Retry(n, Duration::ZERO) } else { Step::Done(n) });
        assert_eq!(got.ok(), Some(3));
        let got: Result<(), _> = retry(&shutdown, OnShutdown::Stop, Step::Stop);
        assert!(matches!(got, Err(Stopped::Failed(1))));
    }

    #[test]
    fn shutdown_stops_a_retry_or_lets_it_finish() {
        let shutdown = Shutdown::new();
        shutdown.request();
        let got: Result<(), _> = retry(&shutdown, OnShutdown::Stop, |n| Step::Retry(n, Duration::from_secs(3600)));
        assert!(matches!(got, Err(Stopped::Shutdown(1))));
        // Finish: waits are cut short, the attempts go on until the operation is done.
        let got = retry(&shutdown, OnShutdown::Finish, |n| {
            if n < 4 { Step::Retry(n, Duration::from_secs(3600)) } else { Step::Done(n) }
        });
        assert_eq!(got.ok(), Some(4));
    }
}
