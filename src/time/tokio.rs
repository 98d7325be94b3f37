//! `TokioTimer`: tokio's own timer (feature `tokio`).

use super::Timer;
use std::pin::Pin;
use std::time::Instant;

/// A [`Timer`] on tokio's timer wheel (feature `tokio`).
///
/// Its clock is `tokio::time::Instant`, so `tokio::time::pause` and
/// `advance` in your tokio tests move awaitkit's timeouts too. Sleeps are
/// tokio's `Sleep` (millisecond resolution, rounded up: never early).
///
/// # Panics
///
/// Polling a sleep outside a tokio runtime with time enabled panics, as
/// `tokio::time::sleep` does.
///
/// # Examples
///
/// ```
/// use awaitkit::time::TokioTimer;
/// use std::time::Duration;
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let slow = tokio::time::sleep(Duration::from_secs(60));
/// let out = awaitkit::timeout_with(TokioTimer, Duration::from_millis(1), slow).await;
/// assert!(out.is_err());
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokioTimer;

impl Timer for TokioTimer {
    type Sleep = tokio::time::Sleep;

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> tokio::time::Sleep {
        tokio::time::sleep_until(deadline.into())
    }

    fn reset(&self, sleep: Pin<&mut tokio::time::Sleep>, deadline: Instant) {
        sleep.reset(deadline.into());
    }
}
