//! `TokioTimer`: tokio's own timer (feature `tokio`).

use super::Timer;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A [`Timer`] on tokio's timer wheel (feature `tokio`).
///
/// Its clock is `tokio::time::Instant`, so `tokio::time::pause` and
/// `advance` in your tokio tests move awaitkit's timeouts too. Sleeps are
/// tokio's `Sleep` (millisecond resolution, rounded up: never early), polled
/// outside tokio's cooperative budget, so a timeout still fires when the
/// future it guards has used up its task's budget.
///
/// # Panics
///
/// Polling a sleep outside a tokio runtime with time enabled panics, as
/// `tokio::time::sleep` does.
///
/// The time driver wakes the waker a sleep was polled with on the thread
/// that drives it, as it does for `tokio::time::sleep`: a panic in that
/// waker's `wake` unwinds out of the runtime's park there (in a
/// current-thread runtime, out of `block_on`, and the runtime is left
/// without its driver). Unlike [`FuturesTimer`](super::FuturesTimer), whose
/// helper thread is shared by the whole process, this is the runtime's own
/// behaviour for all of its resources; awaitkit does not put a waker of its
/// own in between (that would cost every sleep an allocation, and slow down
/// the timeouts whose future is ready at once).
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
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokioTimer;

impl Timer for TokioTimer {
    type Sleep = TokioSleep;

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> TokioSleep {
        TokioSleep {
            sleep: tokio::time::sleep_until(deadline.into()),
        }
    }

    fn reset(&self, sleep: Pin<&mut TokioSleep>, deadline: Instant) {
        sleep.project().sleep.reset(deadline.into());
    }
}

pin_project_lite::pin_project! {
    /// The sleep future of [`TokioTimer`]: a `tokio::time::Sleep` polled
    /// outside tokio's cooperative budget.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{TokioTimer, Timer};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let sleep: awaitkit::time::TokioSleep = TokioTimer.sleep_until(TokioTimer.now());
    /// sleep.await;
    /// # });
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct TokioSleep {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl Future for TokioSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Like `tokio::time::timeout`: the deadline must be seen even when
        // the guarded future spent the whole budget.
        let sleep = self.project().sleep;
        if tokio::task::coop::has_budget_remaining() {
            sleep.poll(cx)
        } else {
            Pin::new(&mut tokio::task::coop::unconstrained(sleep)).poll(cx)
        }
    }
}

impl fmt::Debug for TokioSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioSleep")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}
