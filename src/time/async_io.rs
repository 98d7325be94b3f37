//! `AsyncIoTimer`: the async-io reactor's timer (feature `async-io`).

use super::Timer;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A [`Timer`] on async-io's reactor, the one smol uses (feature
/// `async-io`). Works on any executor: async-io drives its reactor from a
/// helper thread when nobody else does.
///
/// # Panics in wakers
///
/// async-io catches a panic in the `wake` of the waker a sleep was polled
/// with, but drops the waker of a cancelled sleep under its timer lock, on
/// the reactor's thread: a panic in that `drop` kills the thread and poisons
/// the lock, as it would for `async_io::Timer` itself. awaitkit does not put
/// a waker of its own in between (that would cost every sleep an
/// allocation, freed on the reactor's thread).
///
/// # Examples
///
/// ```
/// use awaitkit::time::AsyncIoTimer;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let slow = futures::future::pending::<()>();
/// let out = awaitkit::timeout(Duration::from_millis(1), slow).with_timer(AsyncIoTimer).await;
/// assert!(out.is_err());
/// # });
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "async-io")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsyncIoTimer;

impl Timer for AsyncIoTimer {
    type Sleep = AsyncIoSleep;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> AsyncIoSleep {
        AsyncIoSleep(async_io::Timer::at(deadline))
    }

    fn reset(&self, mut sleep: Pin<&mut AsyncIoSleep>, deadline: Instant) {
        sleep.0.set_at(deadline);
    }
}

/// The sleep future of [`AsyncIoTimer`] (an `async_io::Timer`).
///
/// # Examples
///
/// ```
/// use awaitkit::time::{AsyncIoTimer, Timer};
/// # futures::executor::block_on(async {
/// let sleep: awaitkit::time::AsyncIoSleep = AsyncIoTimer.sleep_until(std::time::Instant::now());
/// sleep.await;
/// # });
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "async-io")))]
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct AsyncIoSleep(async_io::Timer);

impl Future for AsyncIoSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

impl fmt::Debug for AsyncIoSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsyncIoSleep").field(&self.0).finish()
    }
}
