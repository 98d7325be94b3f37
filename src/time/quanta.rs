//! `QuantaTimer`: futures-timer's sleeps on the `quanta` crate's clock
//! (feature `quanta`).

use super::{FuturesSleep, FuturesTimer, Timer};
use std::fmt;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A [`Timer`] whose clock is the CPU's time-stamp counter, read through the
/// [`quanta`](https://docs.rs/quanta) crate (feature `quanta`); sleeps are
/// [`FuturesTimer`]'s, so it works on every executor (and a panic in a
/// waker on futures-timer's helper thread is caught and discarded there, as
/// for [`FuturesTimer`]).
///
/// Reading the counter costs about half of [`Instant::now`]. That matters
/// where the clock is read on every operation — a
/// [`RateLimiter`](crate::RateLimiter)'s checks use
/// [`counter_nanos`](Timer::counter_nanos) — and nowhere else. Where the
/// CPU has no invariant time-stamp counter, quanta falls back to the
/// monotonic clock.
///
/// Its instants start at the real [`Instant::now`] when the timer is built
/// and then follow the counter (calibrated against the monotonic clock), so
/// every deadline on one `QuantaTimer` (and its clones) is on one
/// timeline. Mixing its instants with another timer's is not meaningful
/// over long runs: the two clocks may drift apart by a few parts per
/// million.
///
/// # Examples
///
/// ```
/// use awaitkit::RateLimiter;
/// use awaitkit::rate_limiter::Quota;
/// use awaitkit::time::QuantaTimer;
/// use std::time::Duration;
/// let quota = Quota::gcra(1_000, Duration::from_secs(1), 10).unwrap();
/// let limiter = RateLimiter::with_quota(quota).with_timer(QuantaTimer::new());
/// assert!(limiter.try_acquire().is_ok());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "quanta")))]
#[derive(Clone)]
pub struct QuantaTimer {
    clock: quanta::Clock,
    base_raw: u64,
    base: Instant,
}

impl QuantaTimer {
    /// A timer whose clock starts at the current instant. (The first one
    /// in a process calibrates the counter, which takes a few milliseconds.)
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{QuantaTimer, Timer};
    /// let timer = QuantaTimer::new();
    /// let (a, b) = (timer.now(), timer.now());
    /// assert!(b >= a);
    /// ```
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        // The counter first: an instant taken after it never maps a
        // deadline early.
        let base_raw = clock.raw();
        QuantaTimer {
            clock,
            base_raw,
            base: Instant::now(),
        }
    }

    #[inline]
    fn elapsed_nanos(&self) -> u64 {
        self.clock.delta_as_nanos(self.base_raw, self.clock.raw())
    }
}

impl Default for QuantaTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for QuantaTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantaTimer")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Timer for QuantaTimer {
    type Sleep = FuturesSleep;

    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.elapsed_nanos())
    }

    fn sleep_until(&self, deadline: Instant) -> FuturesSleep {
        self.sleep_until_from(self.now(), deadline)
    }

    fn sleep_until_from(&self, now: Instant, deadline: Instant) -> FuturesSleep {
        // A duration on this clock, slept by futures-timer.
        FuturesTimer.sleep_until_from(now, deadline)
    }

    fn reset(&self, mut sleep: Pin<&mut FuturesSleep>, deadline: Instant) {
        sleep.reset_after(deadline.saturating_duration_since(self.now()));
    }

    #[inline]
    fn counter_nanos(&self) -> Option<u64> {
        Some(self.elapsed_nanos())
    }
}
