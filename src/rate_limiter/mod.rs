//! `RateLimiter`: at most N calls per period — strict, fair and cancel-safe,
//! on any executor.
//!
//! Two algorithms, chosen by the [`Quota`]:
//!
//! * **Strict sliding window** ([`RateLimiter::new`], [`Quota::window`]):
//!   in *every* window of length `period` — not just calendar seconds — at
//!   most `max_calls` acquisitions are granted. This is what "5 calls per
//!   second" promises to the API on the other side.
//! * **GCRA** ([`RateLimiter::gcra`], [`Quota::gcra`]): `max_calls` per
//!   `period`, evenly spaced, with bursts of up to `burst` after an idle
//!   spell — governor's quotas. Its checks are lock-free.
//!
//! Waiters are served in FIFO order by one timer per limiter (see
//! [`RateLimiter`] for the details).

// No unsafe code here but one block: the eight-byte window cell of a keyed
// limiter's key (`compact::WinCell`, a tagged box), which allows it.
#![deny(unsafe_code)]

mod compact;
mod driver;
#[cfg(all(test, awaitkit_loom))]
mod driver_loom;
mod keyed;
#[cfg(all(test, awaitkit_loom))]
mod keyed_loom;
mod shared;
mod stream;
mod window;

pub use keyed::{KeyedAcquire, KeyedAcquireN, KeyedRateLimiter, KeyedStats};
pub use stream::RateLimitedStream;

use crate::time::{DefaultTimer, Timer};
use futures_core::{FusedFuture, Stream};
use pin_project_lite::pin_project;
use shared::{Acquisition, Shared};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Quota and errors
// ---------------------------------------------------------------------------

/// How much a [`RateLimiter`] lets through: `max_calls` per `period`, either
/// as a strict sliding window or smoothed by GCRA.
///
/// # Examples
///
/// ```
/// use awaitkit::rate_limiter::Quota;
/// use std::time::Duration;
///
/// let strict = Quota::window(5, Duration::from_secs(1)).unwrap();
/// assert_eq!((strict.max_calls(), strict.burst()), (5, None));
///
/// let smooth = Quota::gcra(100, Duration::from_secs(1), 10).unwrap();
/// assert_eq!(smooth.burst(), Some(10)); // one call every 10 ms, 10 at once after a pause
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    max_calls: usize,
    period: Duration,
    mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    Window,
    Gcra { burst: usize },
}

impl Quota {
    /// A strict sliding window: in every window of length `period`, at most
    /// `max_calls` grants.
    ///
    /// Up to 1 024 calls per period every grant time is kept exactly. Above
    /// that, grants closer together than `period / 1024` are stamped with
    /// the latest of their times, so memory stays bounded at about 1 024
    /// entries and a grant may come up to `period / 1024` later than the
    /// window alone would allow — never earlier.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCalls`] or [`QuotaError::ZeroPeriod`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::rate_limiter::{Quota, QuotaError};
    /// use std::time::Duration;
    /// assert!(Quota::window(10, Duration::from_millis(250)).is_ok());
    /// assert_eq!(Quota::window(0, Duration::from_secs(1)), Err(QuotaError::ZeroCalls));
    /// ```
    pub fn window(max_calls: usize, period: Duration) -> Result<Quota, QuotaError> {
        Self::check(max_calls, period)?;
        Ok(Quota {
            max_calls,
            period,
            mode: Mode::Window,
        })
    }

    /// GCRA: one call every `period / max_calls` on average, with up to
    /// `burst` at once after an idle spell (governor's `Quota` with
    /// `allow_burst`). The spacing is rounded up to whole nanoseconds, so
    /// when `period / max_calls` is not whole the rate is a hair (under a
    /// nanosecond per call) slower than asked — never faster.
    ///
    /// Over any window of one period GCRA can grant up to
    /// `burst + max_calls - 1` calls (a full burst, then the steady rate):
    /// use [`Quota::window`] when the other side counts strictly.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCalls`], [`QuotaError::ZeroPeriod`] or
    /// [`QuotaError::ZeroBurst`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::rate_limiter::{Quota, QuotaError};
    /// use std::time::Duration;
    /// let q = Quota::gcra(50, Duration::from_secs(1), 5).unwrap(); // 50/s, bursts of 5
    /// assert_eq!(q.max_at_once(), 5);
    /// assert_eq!(Quota::gcra(50, Duration::from_secs(1), 0), Err(QuotaError::ZeroBurst));
    /// ```
    pub fn gcra(max_calls: usize, period: Duration, burst: usize) -> Result<Quota, QuotaError> {
        Self::check(max_calls, period)?;
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        Ok(Quota {
            max_calls,
            period,
            mode: Mode::Gcra { burst },
        })
    }

    fn check(max_calls: usize, period: Duration) -> Result<(), QuotaError> {
        if max_calls == 0 {
            return Err(QuotaError::ZeroCalls);
        }
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        Ok(())
    }

    /// Calls per period.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// assert_eq!(Quota::window(7, Duration::from_secs(1)).unwrap().max_calls(), 7);
    /// ```
    pub fn max_calls(&self) -> usize {
        self.max_calls
    }

    /// The period.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// let q = Quota::window(7, Duration::from_secs(60)).unwrap();
    /// assert_eq!(q.period(), Duration::from_secs(60));
    /// ```
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The GCRA burst, or `None` for a strict window.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// assert_eq!(Quota::gcra(7, Duration::from_secs(1), 3).unwrap().burst(), Some(3));
    /// ```
    pub fn burst(&self) -> Option<usize> {
        match self.mode {
            Mode::Window => None,
            Mode::Gcra { burst } => Some(burst),
        }
    }

    /// The most calls one acquisition can ask for: `max_calls` for a
    /// window, `burst` for GCRA. Asking for more is an immediate
    /// [`RateLimitError::ExceedsQuota`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// assert_eq!(Quota::window(7, Duration::from_secs(1)).unwrap().max_at_once(), 7);
    /// ```
    pub fn max_at_once(&self) -> usize {
        match self.mode {
            Mode::Window => self.max_calls,
            Mode::Gcra { burst } => burst,
        }
    }
}

/// Why a [`Quota`] could not be built or applied.
///
/// # Examples
///
/// ```
/// use awaitkit::RateLimiter;
/// use awaitkit::rate_limiter::QuotaError;
/// use std::time::Duration;
/// let err = RateLimiter::try_new(5, Duration::ZERO).unwrap_err();
/// assert_eq!(err, QuotaError::ZeroPeriod);
/// assert_eq!(err.to_string(), "a rate limit's period must be longer than zero");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaError {
    /// `max_calls` was zero: nothing could ever be granted.
    ZeroCalls,
    /// `period` was zero.
    ZeroPeriod,
    /// A GCRA `burst` of zero: nothing could ever be granted.
    ZeroBurst,
    /// [`RateLimiter::set_quota`] with the other algorithm than the
    /// limiter's (a window and GCRA keep different state).
    ModeChange,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaError::ZeroCalls => "a rate limit must allow at least one call per period",
            QuotaError::ZeroPeriod => "a rate limit's period must be longer than zero",
            QuotaError::ZeroBurst => "a GCRA rate limit must allow a burst of at least one call",
            QuotaError::ModeChange => {
                "a rate limiter's quota cannot change between a strict window and GCRA"
            }
        })
    }
}

impl std::error::Error for QuotaError {}

/// Why an acquisition was refused.
///
/// # Examples
///
/// ```
/// use awaitkit::RateLimiter;
/// use awaitkit::rate_limiter::RateLimitError;
/// use std::time::Duration;
///
/// let limiter = RateLimiter::new(1, Duration::from_secs(60));
/// limiter.try_acquire().unwrap();
/// let err = limiter.try_acquire().unwrap_err();
/// assert!(err.wait().unwrap() > Duration::from_secs(59)); // retry after this
/// assert!(matches!(limiter.try_acquire_n(2), Err(RateLimitError::ExceedsQuota { requested: 2, max: 1 })));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateLimitError {
    /// Not now. If nobody else asks first, the same request is granted
    /// after `wait` ([`Duration::MAX`]: never, under the current quota).
    RateLimited {
        /// How long until the request would be granted.
        wait: Duration,
    },
    /// More calls at once than the quota ever allows
    /// ([`Quota::max_at_once`]).
    ExceedsQuota {
        /// The calls asked for.
        requested: usize,
        /// The most the quota grants at once.
        max: usize,
    },
    /// A new key for a [`KeyedRateLimiter`] built with
    /// [`with_max_keys`](KeyedRateLimiter::with_max_keys): it already
    /// tracks that many keys and none of them is idle (each has a grant
    /// still inside its window, or a waiter), so the key is refused rather
    /// than let through untracked (fail closed). The keys already tracked
    /// are served as before; retry later, when some have gone idle.
    TooManyKeys {
        /// The limiter's bound.
        max_keys: usize,
    },
}

impl RateLimitError {
    /// How long to wait before the request would be granted; `None` when it
    /// never will be ([`RateLimitError::ExceedsQuota`]), or when that is
    /// not known ([`RateLimitError::TooManyKeys`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::rate_limiter::RateLimitError;
    /// # use std::time::Duration;
    /// let err = RateLimitError::RateLimited { wait: Duration::from_millis(40) };
    /// assert_eq!(err.wait(), Some(Duration::from_millis(40)));
    /// ```
    pub fn wait(&self) -> Option<Duration> {
        match self {
            RateLimitError::RateLimited { wait } => Some(*wait),
            RateLimitError::ExceedsQuota { .. } | RateLimitError::TooManyKeys { .. } => None,
        }
    }
}

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitError::RateLimited { wait } => {
                write!(f, "rate limit reached; retry after {wait:?}")
            }
            RateLimitError::ExceedsQuota { requested, max } => write!(
                f,
                "{requested} calls at once exceed the rate limit's maximum of {max}"
            ),
            RateLimitError::TooManyKeys { max_keys } => write!(
                f,
                "new key refused: the keyed rate limiter tracks its maximum of {max_keys} keys, none of them idle"
            ),
        }
    }
}

impl std::error::Error for RateLimitError {}

// ---------------------------------------------------------------------------
// RateLimiter
// ---------------------------------------------------------------------------

/// At most `max_calls` per `period` — Python's `RateLimiter(max_calls,
/// period)` done strictly: FIFO, cancel-safe and runtime-agnostic.
///
/// * **Strict** (the default, [`new`](RateLimiter::new)): in *every* window
///   of length `period`, at most `max_calls` acquisitions are granted. A
///   smoothed GCRA mode is [`gcra`](RateLimiter::gcra).
/// * **FIFO**: waiters are granted in arrival order, and
///   [`try_acquire`](RateLimiter::try_acquire) fails while anyone waits.
/// * **Cancel-safe**: dropping a waiting acquire hands its place to the next
///   waiter at once; dropping one that was granted but not yet polled gives
///   the grant back. An acquire that is `mem::forget`-ten never wedges the
///   limiter: its turn is granted (and wasted) like any other.
/// * **One timer per limiter**, armed for the first waiter only; waiting
///   futures hold no timer, and no thread or task is spawned. The timer is
///   [`DefaultTimer`] unless you pass another ([`with_timer`]:
///   `TokioTimer`, `AsyncIoTimer`, `ManualClock` for tests).
///
/// A grant happens when the limiter hands it out; the task sees it at its
/// next poll.
///
/// [`with_timer`]: RateLimiter::with_timer
///
/// # Panics
///
/// The limiter runs user code: the wakers of its waiters (`clone`, `wake`,
/// `drop`) and its timer. It runs none of it while holding its own lock or
/// busy state, so a waker may call back into the limiter from any of those
/// (acquire, `try_acquire`, `set_quota`, drop an acquire), and **a panic
/// never wedges the limiter**: every other waiter is still woken and served
/// in order, and `try_acquire` recovers.
///
/// * When the limiter's timer fires (on the timer's thread —
///   futures-timer's global helper thread with the default timer, tokio's
///   or async-io's driver, or the caller of `ManualClock::advance`), the
///   waiters that are due are granted and woken there. A waker that panics
///   there is caught and its panic discarded (after the panic hook has
///   printed it): the thread survives — the default timer's helper thread
///   serves every timeout in the process — and the other waiters are woken.
/// * A call of yours that lets waiters through — an acquire's poll or drop,
///   [`set_quota`](RateLimiter::set_quota) — wakes them itself; if one of
///   their wakers panics, the others are woken anyway, the limiter settles,
///   and then the first panic propagates from your call (a drop that runs
///   while the thread already unwinds discards it instead of aborting).
/// * A timer that panics (`TokioTimer` polled outside a tokio runtime)
///   propagates from the call that armed it; the limiter then wakes every
///   waiter, and the first to be polled again (or the next acquire,
///   `try_acquire` that finds waiters, or `set_quota`) re-arms the timer
///   from its own context.
///
/// The timer's clock ([`Timer::now`], [`Timer::counter_nanos`]) is read
/// before the limiter locks its state, so it may call back into the limiter
/// too. On the default timers a check reads the CPU's time-stamp counter
/// where it is invariant (see [`Timer::counter_nanos`]), which runs about
/// one part per million slow against `Instant`, never fast: a window lasts
/// that much longer (a microsecond a second), never shorter — except once
/// after a counter anomaly (a reset, a virtual machine moved), which can
/// put the clock up to about a millisecond ahead. Wake-up deadlines are
/// mapped from `now()` plus the time left on the counter, so that drift
/// never makes a waiter wake early. Its sleeps are created, moved, polled and dropped by the driver: a
/// call back into the limiter from there finds the driver busy and leaves it
/// a note for one more pass (it never waits). [`set_quota`](RateLimiter::set_quota)
/// with the quota already set changes nothing and asks for no pass; a
/// clock (or a sleep's `poll`) that sets a *different* quota at every
/// reading while calls wait keeps the driver passing forever (each change
/// asks for a pass, which reads the clock again). A sleep that completes before
/// its deadline (a coarse backend; the [`Timer`] contract allows it) is
/// replaced by one a little later, the slack doubling from a microsecond at
/// each early completion: the limiter never busy-waits for its deadline. A
/// timer whose sleeps keep completing early (40 times in a row, however
/// late) is treated like one that panics, without the panic.
///
/// A waiter whose waker panicked in `wake` is not woken again for that
/// grant: its task sees the grant whenever it is next polled, and dropping
/// the acquire unseen gives the grant back, as for any waiter.
///
/// # Rate and concurrency together
///
/// "At most R per period *and* at most C at a time": take the
/// [`Semaphore`](crate::Semaphore) permit first, then the rate grant, so the
/// call starts right after its grant.
///
/// ```
/// use awaitkit::{RateLimiter, Semaphore};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let (rate, concurrency) = (RateLimiter::new(50, Duration::from_secs(1)), Semaphore::new(3));
/// let calls = (0..6).map(|i| {
///     let (rate, concurrency) = (&rate, &concurrency);
///     concurrency.limit(rate.limit(async move { i * 10 }))
/// });
/// let out = awaitkit::gather(calls).await;
/// assert_eq!(out[5], Ok(50));
/// # });
/// ```
///
/// # Examples
///
/// ```
/// use awaitkit::RateLimiter;
/// use std::time::{Duration, Instant};
/// # futures::executor::block_on(async {
/// let limiter = RateLimiter::new(2, Duration::from_millis(50));
/// let start = Instant::now();
/// for _ in 0..4 {
///     limiter.acquire().await; // 2 at once, then 2 more 50 ms later
/// }
/// assert!(start.elapsed() >= Duration::from_millis(50));
/// # });
/// ```
pub struct RateLimiter<T: Timer = DefaultTimer> {
    shared: Arc<Shared<T>>,
}

impl RateLimiter<DefaultTimer> {
    /// A strict sliding window: at most `max_calls` grants in every window
    /// of length `period` ([`Quota::window`]).
    ///
    /// # Panics
    ///
    /// If `max_calls` or `period` is zero ([`try_new`](RateLimiter::try_new)
    /// returns the error instead).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(5, Duration::from_secs(1)); // 5 calls per second
    /// assert!(limiter.try_acquire().is_ok());
    /// ```
    #[track_caller]
    pub fn new(max_calls: usize, period: Duration) -> Self {
        Self::try_new(max_calls, period).unwrap_or_else(|e| panic!("RateLimiter::new: {e}"))
    }

    /// [`new`](RateLimiter::new), returning an error for a zero
    /// `max_calls` or `period`.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCalls`] or [`QuotaError::ZeroPeriod`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// assert!(RateLimiter::try_new(0, Duration::from_secs(1)).is_err());
    /// assert!(RateLimiter::try_new(1, Duration::from_nanos(1)).is_ok());
    /// ```
    pub fn try_new(max_calls: usize, period: Duration) -> Result<Self, QuotaError> {
        Ok(Self::with_quota(Quota::window(max_calls, period)?))
    }

    /// GCRA: `max_calls` per `period` evenly spaced, bursts of up to `burst`
    /// ([`Quota::gcra`]).
    ///
    /// # Panics
    ///
    /// If `max_calls`, `period` or `burst` is zero
    /// ([`try_gcra`](RateLimiter::try_gcra) returns the error instead).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::gcra(10, Duration::from_secs(1), 2);
    /// assert!(limiter.try_acquire().is_ok());
    /// assert!(limiter.try_acquire().is_ok());
    /// assert!(limiter.try_acquire().is_err()); // the burst is spent: one per 100 ms now
    /// ```
    #[track_caller]
    pub fn gcra(max_calls: usize, period: Duration, burst: usize) -> Self {
        Self::try_gcra(max_calls, period, burst)
            .unwrap_or_else(|e| panic!("RateLimiter::gcra: {e}"))
    }

    /// [`gcra`](RateLimiter::gcra), returning an error for a zero argument.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCalls`], [`QuotaError::ZeroPeriod`] or
    /// [`QuotaError::ZeroBurst`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// assert!(RateLimiter::try_gcra(10, Duration::from_secs(1), 0).is_err());
    /// ```
    pub fn try_gcra(max_calls: usize, period: Duration, burst: usize) -> Result<Self, QuotaError> {
        Ok(Self::with_quota(Quota::gcra(max_calls, period, burst)?))
    }

    /// A limiter for `quota` on the default timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use awaitkit::rate_limiter::Quota;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::with_quota(Quota::window(3, Duration::from_secs(1)).unwrap());
    /// assert_eq!(limiter.quota().max_calls(), 3);
    /// ```
    pub fn with_quota(quota: Quota) -> Self {
        Self::build(quota, DefaultTimer)
    }
}

impl<T: Timer> RateLimiter<T> {
    /// The same limiter (its quota) whose clock and timer is `timer` — the
    /// one way, as on every awaitkit type that waits for time, to choose the
    /// timer (see [`time`](crate::time)). Call it as you build the limiter:
    /// the grants made through `self` are not carried over. Its one timer
    /// may fire on any thread, hence the bounds.
    ///
    /// # Panics
    ///
    /// Never here. A `timer` that panics later, when the limiter arms it,
    /// panics out of the acquire that armed it without wedging the limiter
    /// (see [Panics](RateLimiter#panics)).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use awaitkit::time::FuturesTimer;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(3, Duration::from_secs(1)).with_timer(FuturesTimer);
    /// assert!(limiter.try_acquire_n(3).is_ok());
    /// ```
    pub fn with_timer<U>(self, timer: U) -> RateLimiter<U>
    where
        U: Timer + Send + Sync + 'static,
        U::Sleep: Send + 'static,
    {
        // The old limiter goes once the new one is built: if its timer's
        // drop panics, the new one is dropped before that panic propagates,
        // not leaked.
        crate::unwind::rebuild(self, |old| RateLimiter::build(old.quota(), timer))
    }

    fn build(quota: Quota, timer: T) -> Self
    where
        T: Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        RateLimiter {
            shared: Shared::new(quota, timer),
        }
    }

    /// Waits for one call's grant, in FIFO order — `async with limiter:`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits hands its place to the next
    /// waiter at once; dropping it after a grant it has not yet returned
    /// gives the grant back. Nothing is lost either way.
    ///
    /// # Panics
    ///
    /// Polling after completion panics. A poll or a drop that lets other
    /// waiters through propagates the first panic of their wakers (or of
    /// the timer), after waking all of them; the limiter stays usable (see
    /// [Panics](RateLimiter#panics)).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(10, Duration::from_secs(1));
    /// limiter.acquire().await;
    /// # });
    /// ```
    pub fn acquire(&self) -> RateAcquire<'_, T> {
        RateAcquire {
            inner: Acquisition::new(&self.shared, 1),
        }
    }

    /// Waits for `n` calls' grants at once (a weighted request), in FIFO
    /// order: a waiting large request is not overtaken by smaller ones.
    /// `n == 0` is granted at once.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::ExceedsQuota`], at once, if `n` is more than
    /// [`Quota::max_at_once`] — also when a [`set_quota`] shrinks the quota
    /// under a waiting request.
    ///
    /// [`set_quota`]: RateLimiter::set_quota
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](RateLimiter::acquire).
    ///
    /// # Panics
    ///
    /// As for [`acquire`](RateLimiter::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(10, Duration::from_secs(1));
    /// limiter.acquire_n(4).await.unwrap();
    /// assert!(limiter.acquire_n(11).await.is_err());
    /// # });
    /// ```
    pub fn acquire_n(&self, n: usize) -> RateAcquireN<'_, T> {
        RateAcquireN {
            inner: Acquisition::new(&self.shared, n),
        }
    }

    /// Takes one call's grant if the quota allows it right now and nobody
    /// waits.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] with how long to wait.
    ///
    /// # Panics
    ///
    /// Only when calls wait and a timer panic has left the limiter's timer
    /// unarmed: this call then re-arms it, and a panic of the timer or of a
    /// waker it wakes propagates (see [Panics](RateLimiter#panics)). With
    /// nobody waiting it runs no user code but the clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// assert!(limiter.try_acquire().is_ok());
    /// let wait = limiter.try_acquire().unwrap_err().wait().unwrap();
    /// assert!(wait <= Duration::from_secs(1));
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<(), RateLimitError> {
        self.shared.try_acquire(1)
    }

    /// Takes `n` calls' grants at once if the quota allows it right now and
    /// nobody waits.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] with how long to wait (counting the
    /// waiters ahead), or [`RateLimitError::ExceedsQuota`].
    ///
    /// # Panics
    ///
    /// As for [`try_acquire`](RateLimiter::try_acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(5, Duration::from_secs(1));
    /// assert!(limiter.try_acquire_n(3).is_ok());
    /// assert!(limiter.try_acquire_n(3).is_err()); // only 2 left in this window
    /// ```
    #[inline]
    pub fn try_acquire_n(&self, n: usize) -> Result<(), RateLimitError> {
        self.shared.try_acquire(n as u64)
    }

    /// Waits for one grant, then runs `future`: `limiter.limit(call())`.
    ///
    /// It resolves to the future's output itself, because waiting for one
    /// grant cannot fail: a rate limiter cannot be closed, and every quota
    /// allows at least one call. [`Semaphore::limit`](crate::Semaphore::limit),
    /// its concurrency-limiting twin, resolves to a `Result` because a
    /// semaphore can be closed.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](RateLimiter::acquire) while waiting; once the
    /// grant is taken, dropping drops `future`.
    ///
    /// # Panics
    ///
    /// Polling after completion panics; a panic of `future` propagates, and
    /// so does one of the user code the grant's wait runs (as for
    /// [`acquire`](RateLimiter::acquire)).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(2, Duration::from_secs(1));
    /// let out = awaitkit::gather((0..2).map(|i| limiter.limit(async move { i + 1 }))).await;
    /// assert_eq!(out, [1, 2]);
    /// # });
    /// ```
    pub fn limit<F: IntoFuture>(&self, future: F) -> RateLimit<'_, F::IntoFuture, T> {
        RateLimit {
            acquire: Some(self.acquire()),
            done: false,
            future: Some(future.into_future()),
        }
    }

    /// Rate-limits a stream: each item, once the stream has produced it,
    /// waits for one grant, then is yielded — `limit` for every item of a
    /// stream.
    ///
    /// The item's grant request joins this limiter's FIFO queue like any
    /// [`acquire`](RateLimiter::acquire), so several streams and plain
    /// acquires sharing the limiter are served in the order their requests
    /// arrived. The inner stream is polled only while no item waits (at
    /// most one item is held), so no grant is spent on an item that is not
    /// there yet; the end of the stream takes no grant.
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream while an item waits drops the item and hands its
    /// place to the next waiter at once (or gives back a grant it has not
    /// yet seen): nothing is lost. See [`RateLimitedStream`].
    ///
    /// # Panics
    ///
    /// Never here. Polling it propagates a panic of the inner stream, and of
    /// the user code the grant's wait runs (as for
    /// [`acquire`](RateLimiter::acquire)); the stream stays usable.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use futures::{StreamExt, stream};
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(2, Duration::from_millis(50));
    /// let start = Instant::now();
    /// let ids: Vec<u32> = limiter.limit_stream(stream::iter(1..=4)).collect().await;
    /// assert_eq!(ids, [1, 2, 3, 4]);
    /// assert!(start.elapsed() >= Duration::from_millis(50)); // 2 at once, 2 more 50 ms later
    /// # });
    /// ```
    pub fn limit_stream<S: Stream>(&self, stream: S) -> RateLimitedStream<'_, S, T> {
        RateLimitedStream::new(self, stream)
    }

    /// The current quota.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(5, Duration::from_secs(1));
    /// assert_eq!(limiter.quota().period(), Duration::from_secs(1));
    /// ```
    pub fn quota(&self) -> Quota {
        self.shared.quota()
    }

    /// Changes the quota from now on; waiters are re-checked at once. The
    /// grants already made still count: a strict window keeps its log, GCRA
    /// its schedule. A waiter asking for more than the new quota allows at
    /// once fails with [`RateLimitError::ExceedsQuota`].
    ///
    /// # Errors
    ///
    /// [`QuotaError::ModeChange`] when `quota` uses the other algorithm.
    ///
    /// # Panics
    ///
    /// If a waker of a waiter it lets through panics (or the timer does),
    /// after the new quota is in place and every such waiter woken: the
    /// first panic propagates, and the limiter stays usable (see
    /// [Panics](RateLimiter#panics)).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use awaitkit::rate_limiter::Quota;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(1, Duration::from_secs(60));
    /// limiter.try_acquire().unwrap();
    /// limiter.set_quota(Quota::window(2, Duration::from_secs(60)).unwrap()).unwrap();
    /// assert!(limiter.try_acquire().is_ok()); // the raised quota applies at once
    /// ```
    pub fn set_quota(&self, quota: Quota) -> Result<(), QuotaError> {
        self.shared.set_quota(quota)
    }

    /// A read-only look at the limiter now, taking nothing — governor's
    /// state snapshot, for headers such as `X-RateLimit-Remaining` and
    /// `Retry-After`: how many calls would be granted at once, and how long
    /// until one more would be (after everyone already waiting).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(3, Duration::from_secs(60));
    /// limiter.try_acquire_n(2).unwrap();
    /// let now = limiter.snapshot();
    /// assert_eq!((now.remaining, now.next_in), (1, Some(Duration::ZERO)));
    /// limiter.try_acquire().unwrap();
    /// let spent = limiter.snapshot();
    /// assert_eq!(spent.remaining, 0);
    /// assert!(spent.next_in.unwrap() > Duration::from_secs(59)); // the window's end
    /// ```
    pub fn snapshot(&self) -> RateSnapshot {
        let (remaining, next, waiting) = self.shared.snapshot();
        RateSnapshot {
            remaining: usize::try_from(remaining).unwrap_or(usize::MAX),
            next_in: (next != u64::MAX).then(|| Duration::from_nanos(next)),
            waiting,
        }
    }

    /// How many acquisitions are waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// assert_eq!(limiter.waiting(), 0);
    /// ```
    pub fn waiting(&self) -> usize {
        self.shared.waiting()
    }

    /// The limiter's timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use awaitkit::time::Timer;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// let _now = limiter.timer().now();
    /// ```
    pub fn timer(&self) -> &T {
        self.shared.timer()
    }
}

impl<T: Timer> fmt::Debug for RateLimiter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

// ---------------------------------------------------------------------------
// The futures
// ---------------------------------------------------------------------------

/// The future of [`RateLimiter::acquire`]: one call's grant, in FIFO order.
///
/// # Cancel safety
///
/// Dropping it while it waits hands its place to the next waiter; dropping
/// it after an unseen grant gives the grant back.
///
/// # Panics
///
/// Polling after completion panics. A poll or drop that lets other waiters
/// through propagates the first panic of their wakers after waking them all
/// (see [Panics](RateLimiter#panics)).
///
/// # Examples
///
/// ```
/// use awaitkit::{RateLimiter, RateAcquire};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let limiter = RateLimiter::new(1, Duration::from_secs(1));
/// let acquire: RateAcquire<'_> = limiter.acquire();
/// acquire.await;
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct RateAcquire<'a, T: Timer = DefaultTimer> {
    inner: Acquisition<T, &'a Shared<T>>,
}

impl<T: Timer> Future for RateAcquire<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // One call always fits a quota (every quota allows at least one).
        self.inner.poll(cx).map(|_| ())
    }
}

impl<T: Timer> fmt::Debug for RateAcquire<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateAcquire").field(&self.inner).finish()
    }
}

/// The future of [`RateLimiter::acquire_n`]: `n` calls' grants at once.
///
/// # Errors
///
/// [`RateLimitError::ExceedsQuota`] if `n` is more than the quota grants at
/// once.
///
/// # Cancel safety
///
/// As for [`RateAcquire`].
///
/// # Panics
///
/// As for [`RateAcquire`].
///
/// # Examples
///
/// ```
/// use awaitkit::{RateLimiter, RateAcquireN};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let limiter = RateLimiter::new(3, Duration::from_secs(1));
/// let acquire: RateAcquireN<'_> = limiter.acquire_n(3);
/// assert_eq!(acquire.await, Ok(()));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct RateAcquireN<'a, T: Timer = DefaultTimer> {
    inner: Acquisition<T, &'a Shared<T>>,
}

impl<T: Timer> Future for RateAcquireN<'_, T> {
    type Output = Result<(), RateLimitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll(cx)
    }
}

impl<T: Timer> fmt::Debug for RateAcquireN<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateAcquireN").field(&self.inner).finish()
    }
}

pin_project! {
    /// The future of [`RateLimiter::limit`]: waits for one grant, then runs
    /// the inner future.
    ///
    /// # Cancel safety
    ///
    /// Before the grant, as for [`RateAcquire`]; after it, dropping drops
    /// the inner future.
    ///
    /// # Panics
    ///
    /// Polling after completion panics; a panic of the inner future
    /// propagates, and so does one of the user code the grant's wait runs
    /// (as for [`RateAcquire`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{RateLimiter, RateLimit};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// let call: RateLimit<'_, _> = limiter.limit(async { "response" });
    /// assert_eq!(call.await, "response");
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct RateLimit<'a, F, T: Timer = DefaultTimer> {
        acquire: Option<RateAcquire<'a, T>>,
        done: bool,
        // `None` only while it is dropped.
        #[pin]
        future: Option<F>,
    }

    impl<'a, F, T: Timer> PinnedDrop for RateLimit<'a, F, T> {
        // The wait (a cancel drops the timer's sleep: user code), then the
        // future, each on its own: a panic of one does not drop the other
        // during its unwind; the first then propagates.
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let mut panics = crate::unwind::Panics::default();
            let acquire = this.acquire.take();
            panics.catch(move || drop(acquire));
            panics.catch(|| this.future.set(None));
            panics.resume();
        }
    }
}

impl<F: Future, T: Timer> Future for RateLimit<'_, F, T> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        assert!(!*this.done, "`RateLimit` polled after completion");
        if let Some(acquire) = this.acquire.as_mut() {
            ready!(Pin::new(acquire).poll(cx));
            *this.acquire = None;
        }
        let Some(future) = this.future.as_pin_mut() else {
            unreachable!("dropped only with the `RateLimit`")
        };
        let output = ready!(future.poll(cx));
        *this.done = true;
        Poll::Ready(output)
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: Future, T: Timer> FusedFuture for RateLimit<'_, F, T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<T: Timer> FusedFuture for RateAcquire<'_, T> {
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<T: Timer> FusedFuture for RateAcquireN<'_, T> {
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<F, T: Timer> fmt::Debug for RateLimit<'_, F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("granted", &self.acquire.is_none())
            .finish_non_exhaustive()
    }
}

/// What [`RateLimiter::snapshot`] saw: the limiter's state at one moment,
/// with nothing taken.
///
/// # Examples
///
/// ```
/// use awaitkit::RateLimiter;
/// use std::time::Duration;
/// let limiter = RateLimiter::gcra(10, Duration::from_secs(1), 2);
/// let s = limiter.snapshot();
/// assert_eq!((s.remaining, s.waiting), (2, 0)); // the burst
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateSnapshot {
    /// Calls that would be granted at once now (`try_acquire_n(remaining)`
    /// would succeed); 0 while anyone waits, since waiters come first.
    pub remaining: usize,
    /// How long until one more call would be granted, after everyone
    /// already waiting: zero when `remaining > 0`; `None` for never (a
    /// quota that cannot come round again within what the clock can hold).
    pub next_in: Option<Duration>,
    /// Acquisitions waiting in the queue.
    pub waiting: usize,
}
