//! Time: the timer seam every timed operation in awaitkit goes through.
//!
//! Everything that waits for time — [`timeout`](crate::timeout), semaphore
//! [acquire timeouts](crate::Semaphore::acquire_timeout), the
//! [rate limiters](crate::RateLimiter), [retry backoff](crate::RetryPolicy),
//! the delays of [`staggered_race`](crate::staggered_race),
//! [pool](crate::Pool) waits, [batch](crate::process_batch) pauses, the
//! deadlines of [`wait`](crate::Wait::with_timeout) and
//! [`as_completed`](crate::AsCompleted::with_timeout) — asks a [`Timer`] for
//! the current time and for a future that completes at a deadline.
//!
//! # Which timer is used where
//!
//! Unless you pass one, it is the [`DefaultTimer`]:
//!
//! | where the wait runs | without the `tokio` feature | with the `tokio` feature |
//! |---|---|---|
//! | inside a tokio runtime with time enabled (`#[tokio::main]`, `#[tokio::test]`, `enable_time`/`enable_all`) | futures-timer | **tokio's timer**: `pause`, `advance`, `start_paused` and auto-advance apply |
//! | a tokio runtime built without time | futures-timer | futures-timer |
//! | smol, async-std, `futures::executor`, any other executor, no runtime | futures-timer | futures-timer |
//!
//! The choice is made each time a sleep is **armed** (when something first
//! waits), not when the limiter, pool or policy that owns it was created, so
//! a value built in `main` or a `static` follows the runtime that uses it;
//! a sleep polled somewhere else later is armed again there. See
//! [`DefaultTimer`] for the details (how a runtime without time is found).
//!
//! An explicit timer always wins. Every type that waits for time takes one
//! the same way, with a `with_timer(timer)` method: [`Timeout::with_timer`](crate::Timeout::with_timer)
//! (also after `.timeout(d)` from [`TimeoutExt`](crate::TimeoutExt)),
//! [`RateLimiter::with_timer`](crate::RateLimiter::with_timer),
//! [`KeyedRateLimiter::with_timer`](crate::KeyedRateLimiter::with_timer),
//! [`PoolBuilder::with_timer`](crate::pool::PoolBuilder::with_timer),
//! [`Retry::with_timer`](crate::Retry::with_timer),
//! [`StaggeredRace::with_timer`](crate::StaggeredRace::with_timer),
//! [`Batch::with_timer`](crate::Batch::with_timer),
//! [`Wait::with_timer`](crate::Wait::with_timer),
//! [`AsCompletedUntil::with_timer`](crate::AsCompletedUntil::with_timer).
//!
//! | timer | feature | use it when |
//! |---|---|---|
//! | [`DefaultTimer`] | always | the default: the runtime's timer where there is one (see above) |
//! | [`FuturesTimer`] | always | any executor; a helper thread keeps the time, and tokio's paused time never applies |
//! | `TokioTimer` | `tokio` | always tokio's timer (panics outside a tokio runtime with time) |
//! | `AsyncIoTimer` | `async-io` | on smol / async-io's reactor |
//! | `QuantaTimer` | `quanta` | any executor, with the CPU's time-stamp counter as the clock: the fastest clock reads (rate limiters check it on every call) |
//! | `ManualClock` | `test-util` | tests: time moves only when the test calls `advance`, on any executor |
//!
//! # Wakers on the timer's threads
//!
//! [`FuturesTimer`] (the [`DefaultTimer`] outside tokio runtimes with time;
//! `QuantaTimer` uses its sleeps too) keeps time on futures-timer's helper thread, which wakes — and drops —
//! the wakers of every sleep in the process. A waker that panicked there
//! would kill the thread, and every later sleep in the process would panic
//! with "timer has gone away". So that thread never gets your waker: each
//! sleep registers a waker of its own (one small allocation at its first
//! poll, reused by the next sleep on the same thread) that wakes the waker
//! the sleep was last polled with, and a panic in your waker's `wake` or
//! `drop` there is **caught and discarded** (the panic hook still reports
//! it).
//!
//! `TokioTimer`, the [`DefaultTimer`] inside a tokio runtime with time, and
//! `AsyncIoTimer` hand your waker to the runtime's driver,
//! as the runtime's own sleeps and I/O do, and a waker's panic there does
//! what it does to those (see their docs); `ManualClock` wakes sleepers on
//! the thread that calls `advance`, where the panic propagates.
//!
//! # Examples
//!
//! ```
//! use awaitkit::time::{DefaultTimer, Timer};
//! use std::time::Duration;
//! # futures::executor::block_on(async {
//! let timer = DefaultTimer;
//! let start = timer.now();
//! timer.sleep_until(start + Duration::from_millis(5)).await;
//! assert!(timer.now() >= start + Duration::from_millis(5));
//! # });
//! ```

#![forbid(unsafe_code)]

#[cfg(feature = "async-io")]
mod async_io;
mod counter;
#[cfg(all(test, awaitkit_loom))]
mod counter_loom;
mod default;
#[cfg(feature = "test-util")]
mod manual;
#[cfg(feature = "quanta")]
mod quanta;
mod relay;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "async-io")]
pub use async_io::{AsyncIoSleep, AsyncIoTimer};
pub use default::{DefaultSleep, DefaultTimer};
#[cfg(feature = "test-util")]
pub use manual::{ManualClock, ManualSleep};
#[cfg(feature = "quanta")]
pub use quanta::QuantaTimer;
#[cfg(feature = "tokio")]
pub use tokio::{TokioSleep, TokioTimer};

use relay::Relay;
use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A source of time: the current instant, and futures that complete at a
/// deadline.
///
/// This is the seam every timed operation in awaitkit uses. Implement it to
/// plug in another runtime's timer; awaitkit ships [`DefaultTimer`] (the
/// runtime's timer where there is one, futures-timer elsewhere),
/// [`FuturesTimer`], `TokioTimer`, `AsyncIoTimer`, `QuantaTimer` and the
/// test clock `ManualClock`.
///
/// # Contract
///
/// * [`now`](Timer::now) never goes backwards.
/// * The future from [`sleep_until`](Timer::sleep_until) completes once
///   `now() >= deadline`, waking the waker of its latest poll. A deadline that
///   has already passed may complete at once or on the timer's next tick.
///   awaitkit re-checks `now()` when a sleep completes and sleeps again if it
///   fired early, so backends that cap very long sleeps stay correct.
/// * [`reset`](Timer::reset) moves a sleep's deadline **keeping the waker it
///   was last polled with**, so the task is woken at the new deadline without
///   polling the sleep again (as tokio's `Sleep::reset` does).
/// * Any method may panic (a buggy or instrumented timer): awaitkit keeps
///   its own state consistent — a deadline is only taken once `reset`
///   returned — and lets the panic propagate.
/// * A backend that wakes or drops wakers on a helper thread shared by the
///   whole process should not hand it the waker it was polled with: a panic
///   in it there would take the thread down. [`FuturesTimer`] registers a
///   waker of its own and catches such panics (see the [module
///   docs](self#wakers-on-the-timers-threads)).
///
/// # Examples
///
/// A timer that delegates to the default one (a real implementation would
/// wrap another runtime's timer):
///
/// ```
/// use awaitkit::time::{FuturesTimer, Timer};
/// use std::pin::Pin;
/// use std::time::Instant;
///
/// #[derive(Clone, Copy, Debug, Default)]
/// struct MyTimer(FuturesTimer);
///
/// impl Timer for MyTimer {
///     type Sleep = <FuturesTimer as Timer>::Sleep;
///     fn now(&self) -> Instant {
///         self.0.now()
///     }
///     fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
///         self.0.sleep_until(deadline)
///     }
///     fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
///         self.0.reset(sleep, deadline)
///     }
/// }
///
/// # futures::executor::block_on(async {
/// let out = awaitkit::timeout(std::time::Duration::from_secs(1), async { 7 }).with_timer(MyTimer::default()).await;
/// assert_eq!(out, Ok(7));
/// # });
/// ```
pub trait Timer {
    /// The future returned by [`sleep_until`](Timer::sleep_until).
    type Sleep: Future<Output = ()>;

    /// The current time on this timer's clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{FuturesTimer, Timer};
    /// let (a, b) = (FuturesTimer.now(), FuturesTimer.now());
    /// assert!(b >= a);
    /// ```
    fn now(&self) -> Instant;

    /// A future that completes once [`now`](Timer::now) has reached
    /// `deadline`. Creating it must be cheap; the timer may register it
    /// lazily, on its first poll.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{FuturesTimer, Timer};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let deadline = FuturesTimer.now() + Duration::from_millis(2);
    /// FuturesTimer.sleep_until(deadline).await;
    /// assert!(FuturesTimer.now() >= deadline);
    /// # });
    /// ```
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// [`sleep_until`](Timer::sleep_until), given the `now` the caller has
    /// just read from [`now`](Timer::now). Backends whose sleeps take a
    /// duration override it to skip a second clock read; the default ignores
    /// `now`.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{FuturesTimer, Timer};
    /// # futures::executor::block_on(async {
    /// let now = FuturesTimer.now();
    /// FuturesTimer.sleep_until_from(now, now).await; // already due
    /// # });
    /// ```
    fn sleep_until_from(&self, now: Instant, deadline: Instant) -> Self::Sleep {
        let _ = now;
        self.sleep_until(deadline)
    }

    /// [`sleep_until`](Timer::sleep_until) for a sleep whose wake-up other
    /// tasks wait for, tasks that may run on other runtimes or threads than
    /// the one that arms it: a [`RateLimiter`](crate::RateLimiter)'s one
    /// timer, armed by whichever caller runs its queue. A backend whose timer
    /// only runs while one thread drives it should keep such sleeps on a timer
    /// that always runs: [`DefaultTimer`] puts them on tokio's timer only in
    /// a multi-thread runtime or one whose clock is paused, and on
    /// futures-timer otherwise (a current-thread runtime's timer stops when
    /// its `block_on` returns, and a waiter on another thread would never be
    /// woken). The default is `sleep_until`.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{FuturesTimer, Timer};
    /// # futures::executor::block_on(async {
    /// FuturesTimer.sleep_until_shared(FuturesTimer.now()).await; // already due
    /// # });
    /// ```
    fn sleep_until_shared(&self, deadline: Instant) -> Self::Sleep {
        self.sleep_until(deadline)
    }

    /// Moves `sleep` to a new deadline, keeping the waker it was last polled
    /// with (see the [contract](Timer#contract)).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{FuturesTimer, Timer};
    /// use std::pin::pin;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let mut sleep = pin!(FuturesTimer.sleep_until(FuturesTimer.now() + Duration::from_secs(3600)));
    /// FuturesTimer.reset(sleep.as_mut(), FuturesTimer.now() + Duration::from_millis(1));
    /// sleep.await; // an hour became a millisecond
    /// # });
    /// ```
    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant);

    /// A cheap nanosecond counter on the same clock as [`now`](Timer::now),
    /// if the backend has one: between two readings it advances as `now()`
    /// does — never faster; it may run slower by a bounded rate, which only
    /// makes a limiter stricter — from an origin of the backend's choosing,
    /// and it never goes backwards on one thread (readings made on different
    /// threads may arrive out of order by a little, like any clock read
    /// before taking a lock). A [`RateLimiter`](crate::RateLimiter)
    /// reads the clock on every check and uses this counter when it is
    /// there. A timer returns `Some` always or never. The default is `None`.
    ///
    /// [`FuturesTimer`] and [`DefaultTimer`] read the CPU's invariant
    /// time-stamp counter here (about 7 ns against `Instant::now()`'s
    /// 15–20) where the CPU has one, and return `None` elsewhere or when
    /// the environment variable `AWAITKIT_TIMER_CLOCK=instant` is set at
    /// the first reading. The counter is calibrated against `Instant`
    /// during its first 100 ms (readings meanwhile are `Instant`'s own, at
    /// its cost), then checked against it every ~1 ms: it runs slow by
    /// about one part per million (a one-second window lasts about a
    /// microsecond longer), and when it is seen ahead of `Instant` (a
    /// virtual machine moved, a suspend it counted through) or behind its
    /// last reading (a reset), it goes on from the time `Instant` says has
    /// passed, and its rate is measured again (as it is when it runs far
    /// slow: a virtual machine moved to a host whose counter runs at another
    /// rate). Between two checks it can run fast only by its own rate
    /// error (well under a part per million once calibrated), and never
    /// keeps the gain. With the `tokio` feature, [`DefaultTimer`]'s
    /// counter inside a tokio runtime is tokio's clock (which may be
    /// paused), as its `now()` is.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{FuturesTimer, Timer};
    /// // The CPU's invariant time-stamp counter, where there is one.
    /// if let Some(a) = FuturesTimer.counter_nanos() {
    ///     let b = FuturesTimer.counter_nanos().unwrap(); // `Some` always
    ///     assert!(b >= a);
    /// }
    /// ```
    fn counter_nanos(&self) -> Option<u64> {
        None
    }
}

/// A timer behind a pointer is the timer it points to.
macro_rules! forward_timer {
    ($($pointer:ty),*) => {$(
        impl<T: Timer + ?Sized> Timer for $pointer {
            type Sleep = T::Sleep;
            fn now(&self) -> Instant {
                (**self).now()
            }
            fn sleep_until(&self, deadline: Instant) -> T::Sleep {
                (**self).sleep_until(deadline)
            }
            fn sleep_until_from(&self, now: Instant, deadline: Instant) -> T::Sleep {
                (**self).sleep_until_from(now, deadline)
            }
            fn sleep_until_shared(&self, deadline: Instant) -> T::Sleep {
                (**self).sleep_until_shared(deadline)
            }
            fn reset(&self, sleep: Pin<&mut T::Sleep>, deadline: Instant) {
                (**self).reset(sleep, deadline)
            }
            fn counter_nanos(&self) -> Option<u64> {
                (**self).counter_nanos()
            }
        }
    )*};
}

forward_timer!(&T, Arc<T>);

/// The default timer, built on the `futures-timer` crate: works on every
/// executor, keeping time on one helper thread shared by the whole process.
///
/// Its clock is [`std::time::Instant`]; its cheap clock
/// ([`counter_nanos`](Timer::counter_nanos), read by rate limiters on every
/// check) is the CPU's invariant time-stamp counter where there is one,
/// calibrated against `Instant` and never faster than it. Sleeps longer than 30 years are capped
/// there (awaitkit re-arms them), so [`Duration::MAX`] never overflows.
///
/// # Panics in wakers
///
/// The helper thread wakes sleepers, and drops their wakers, for every
/// timer in the process; a panic there would kill it, and every later sleep
/// would panic with "timer has gone away". So each sleep registers a waker
/// of its own with the thread instead, which wakes the waker the sleep was
/// last polled with: a panic in that waker's `wake` or `drop` on the helper
/// thread is **caught and discarded** there, and the thread goes on.
///
/// # Examples
///
/// ```
/// use awaitkit::time::FuturesTimer;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let slow = futures::future::pending::<()>();
/// let out = awaitkit::timeout(Duration::from_millis(1), slow).with_timer(FuturesTimer).await;
/// assert!(out.is_err());
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FuturesTimer;

/// The longest single sleep handed to a backend: 30 years (futures-timer and
/// tokio cap theirs there too). Longer deadlines are re-armed when it fires.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(30 * 365 * 86_400);

impl Timer for FuturesTimer {
    type Sleep = FuturesSleep;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> FuturesSleep {
        self.sleep_until_from(Instant::now(), deadline)
    }

    fn sleep_until_from(&self, now: Instant, deadline: Instant) -> FuturesSleep {
        // futures-timer takes a duration (and reads the clock once more).
        FuturesSleep::after(deadline.saturating_duration_since(now))
    }

    fn reset(&self, mut sleep: Pin<&mut FuturesSleep>, deadline: Instant) {
        sleep.reset_after(deadline.saturating_duration_since(Instant::now()));
    }

    #[inline]
    fn counter_nanos(&self) -> Option<u64> {
        counter::cheap()
    }
}

/// The sleep future of [`FuturesTimer`].
///
/// # Examples
///
/// ```
/// use awaitkit::time::{FuturesTimer, Timer};
/// # futures::executor::block_on(async {
/// let sleep: awaitkit::time::FuturesSleep = FuturesTimer.sleep_until(std::time::Instant::now());
/// sleep.await;
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct FuturesSleep {
    // futures-timer wakes its wakers on its helper thread: it gets this
    // relay's, never the user's (see `relay`). Released in `drop`.
    relay: ManuallyDrop<Relay>,
    delay: futures_timer::Delay,
}

impl FuturesSleep {
    fn after(delay: Duration) -> Self {
        FuturesSleep {
            relay: ManuallyDrop::default(),
            delay: futures_timer::Delay::new(delay.min(MAX_SLEEP)),
        }
    }

    /// Moves the sleep to `delay` from now, keeping its waker.
    fn reset_after(&mut self, delay: Duration) {
        self.delay.reset(delay.min(MAX_SLEEP));
    }
}

impl Future for FuturesSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let FuturesSleep { relay, delay } = &mut *self;
        relay.poll(cx, |cx| Pin::new(delay).poll(cx))
    }
}

impl Drop for FuturesSleep {
    #[inline]
    fn drop(&mut self) {
        release_relay(self);
    }
}

/// Lets a sleep's relay go, taking its waker back from the delay first (see
/// [`Relay::release`]). Out of line and `extern "C"`: LLVM knows it cannot
/// unwind (nothing in it does), so the sleep's drop glue is this call and
/// the delay's, small enough to inline — a `Timeout` whose inner future was
/// ready, and never made a sleep, costs nothing to drop.
#[inline(never)]
#[allow(improper_ctypes_definitions)] // called from Rust only
extern "C" fn release_relay(sleep: &mut FuturesSleep) {
    let relay = ManuallyDrop::into_inner(std::mem::take(&mut sleep.relay));
    let delay = &mut sleep.delay;
    relay.release(|| {
        // Re-registers the delay with a no-op waker, dropping the relay's
        // (unless it has fired: then futures-timer has dropped it already).
        let _ = Pin::new(delay).poll(&mut Context::from_waker(Waker::noop()));
    });
}

impl fmt::Debug for FuturesSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FuturesSleep").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Deadlines: the one place that turns "a duration or an instant" into a sleep
// ---------------------------------------------------------------------------

/// A deadline not yet resolved against a clock: a duration starts counting
/// when the deadline is first needed (awaitkit reads the clock only on the
/// path that waits, never on the ready path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum When {
    /// `duration` after the clock is first read.
    After(Duration),
    /// At this instant.
    At(Instant),
    /// Never (`Duration::MAX`, or an instant past what `Instant` can hold).
    Never,
}

impl When {
    /// The deadline, once resolved; `None` before the first wait and for
    /// [`When::Never`].
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            When::At(at) => Some(at),
            When::After(_) | When::Never => None,
        }
    }

    /// Fixes the deadline against `now` (a duration starts counting here).
    fn resolve(&mut self, now: Instant) {
        if let When::After(d) = *self {
            *self = now.checked_add(d).map_or(When::Never, When::At);
        }
    }

    /// What the backend sleeps until: the deadline, capped at [`MAX_SLEEP`]
    /// from `now`.
    fn sleep_target(self, now: Instant) -> Instant {
        match self {
            When::At(at) if at.saturating_duration_since(now) <= MAX_SLEEP => at,
            When::At(_) | When::After(_) | When::Never => now + MAX_SLEEP,
        }
    }
}

/// Polls a deadline whose sleep lives in `sleep` (created here on the first
/// call, so a deadline costs nothing until something actually waits).
///
/// Ready when the deadline has passed: at once for zero and past deadlines,
/// without any wake-up. A sleep that completes early is re-armed. No
/// deadline ([`When::Never`]: `Duration::MAX`, a cleared deadline) arms no
/// sleep at all: `Pending`, and nothing will wake it (a far-future sleep
/// would be fired by tokio's auto-advance under paused time, over and over).
pub(crate) fn poll_deadline<T: Timer + ?Sized>(
    timer: &T,
    when: &mut When,
    mut sleep: Pin<&mut Option<T::Sleep>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if *when == When::Never {
        // A sleep left from a deadline since cleared (see `reset_deadline`)
        // has done its job: it woke this poll.
        sleep.set(None);
        return Poll::Pending;
    }
    if sleep.is_none() {
        let now = timer.now();
        // The first wait: fix the deadline and pick what the backend sleeps
        // until (a duration needs no instant arithmetic beyond one add).
        let target = match *when {
            When::After(d) => match now.checked_add(d) {
                Some(at) => {
                    *when = When::At(at);
                    if d.is_zero() {
                        return Poll::Ready(());
                    }
                    if d <= MAX_SLEEP { at } else { now + MAX_SLEEP }
                }
                None => {
                    *when = When::Never;
                    return Poll::Pending;
                }
            },
            When::At(at) if now >= at => return Poll::Ready(()),
            other => other.sleep_target(now),
        };
        sleep.set(Some(timer.sleep_until_from(now, target)));
    }
    // A sleep that fires early (a capped long sleep, a coarse backend) is
    // re-armed; twice in one poll and we yield instead of spinning.
    for _ in 0..2 {
        let pinned = sleep.as_mut().as_pin_mut().expect("created above");
        if pinned.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = timer.now();
        if matches!(*when, When::At(at) if now >= at) {
            return Poll::Ready(());
        }
        sleep.set(Some(timer.sleep_until_from(now, when.sleep_target(now))));
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Moves a deadline. A sleep already registered is moved with
/// [`Timer::reset`], so the waker it holds fires at the new deadline.
///
/// `when` takes the new deadline only once the timer has moved the sleep:
/// if [`Timer::now`] or [`Timer::reset`] panics, the deadline and the sleep
/// both stay as they were.
pub(crate) fn reset_deadline<T: Timer + ?Sized>(
    timer: &T,
    when: &mut When,
    sleep: Pin<&mut Option<T::Sleep>>,
    mut deadline: When,
) {
    if deadline == When::Never {
        // No deadline, no sleep (see `poll_deadline`). A running sleep holds
        // the task's waker: it is moved to now, so the task polls once more,
        // and that poll drops it and keeps the waker for a later deadline
        // (the deadline changes only once the timer has moved the sleep).
        if let Some(sleep) = sleep.as_pin_mut() {
            let now = timer.now();
            timer.reset(sleep, now);
        }
        *when = deadline;
        return;
    }
    if let Some(sleep) = sleep.as_pin_mut() {
        let now = timer.now();
        deadline.resolve(now);
        timer.reset(sleep, deadline.sleep_target(now));
    }
    *when = deadline;
}

/// An optional deadline with its sleep on the heap, for the combinators that
/// must stay `Unpin` whatever the timer's sleep is ([`Wait`](crate::Wait),
/// [`AsCompletedUntil`](crate::AsCompletedUntil), [retry](crate::Retry)).
/// The box is allocated on the first poll that waits.
pub(crate) struct BoxedDeadline<T: Timer> {
    /// `None` only once [`release`](Self::release)d or
    /// [`take`](Self::take)n, by the owner's drop or builder.
    timer: Option<T>,
    when: Option<When>,
    sleep: Option<Pin<Box<Option<T::Sleep>>>>,
}

const RELEASED: &str = "a deadline's timer is there until its owner is dropped";

impl<T: Timer> BoxedDeadline<T> {
    pub(crate) fn new(timer: T, when: Option<When>) -> Self {
        BoxedDeadline {
            timer: Some(timer),
            when,
            sleep: None,
        }
    }

    /// The timer.
    #[inline]
    pub(crate) fn timer(&self) -> &T {
        self.timer.as_ref().expect(RELEASED)
    }

    /// Moves the deadline out (for a builder of a type whose own drop
    /// [`release`](Self::release)s it), leaving one without a timer.
    pub(crate) fn take(&mut self) -> Self {
        BoxedDeadline {
            timer: self.timer.take(),
            when: self.when.take(),
            sleep: self.sleep.take(),
        }
    }

    /// Drops the sleep, then the timer, each on its own (user code: the
    /// first panic is kept in `panics`).
    pub(crate) fn release(&mut self, panics: &mut crate::unwind::Panics) {
        let sleep = self.sleep.take();
        panics.catch(move || drop(sleep));
        let timer = self.timer.take();
        panics.catch(move || drop(timer));
    }

    /// The resolved deadline, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.when.and_then(When::deadline)
    }

    /// Ready once the deadline has passed (see [`poll_deadline`]); pending
    /// forever, without a timer, when no deadline is set.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(when) = self.when.as_mut() else {
            return Poll::Pending;
        };
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(None));
        let timer = self.timer.as_ref().expect(RELEASED);
        poll_deadline(timer, when, sleep.as_mut(), cx)
    }

    /// Starts over with a new deadline, dropping the current sleep (the next
    /// [`poll`](Self::poll) creates one; the allocation is reused).
    pub(crate) fn restart(&mut self, when: Option<When>) {
        self.when = when;
        if let Some(sleep) = self.sleep.as_mut() {
            sleep.set(None);
        }
    }

    /// The same deadline on another timer (before any wait started).
    pub(crate) fn with_timer<U: Timer>(&self, timer: U) -> BoxedDeadline<U> {
        BoxedDeadline::new(timer, self.when)
    }
}

impl<T: Timer> Drop for BoxedDeadline<T> {
    fn drop(&mut self) {
        // The sleep, then the timer, each on its own (a panic of one does
        // not drop the other during its unwind); the first panic then
        // propagates. Dropped during an unwind (a child of the combinator
        // that owns it panicked as it was dropped), it is discarded: a
        // second panic would abort the process.
        let mut panics = crate::unwind::Panics::default();
        self.release(&mut panics);
        panics.resume();
    }
}

impl<T: Timer> fmt::Debug for BoxedDeadline<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}
