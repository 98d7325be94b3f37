//! `timeout` and `timeout_at`: Python's `asyncio.timeout` / `wait_for`, on
//! any executor and any [`Timer`].

#![forbid(unsafe_code)]

use crate::time::{self, DefaultTimer, Timer, When};
use crate::unwind::{self, Panics, Payload};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Runs `future` with a time limit: its output, or [`Elapsed`] if `duration`
/// passes first — Python's `asyncio.wait_for` / `asyncio.timeout`.
///
/// * The inner future is polled **first** on every poll: a future that is
///   ready wins at any deadline, zero included, and a future that becomes
///   ready exactly at the deadline wins the tie.
/// * No timer exists until the inner future first returns `Pending`: a ready
///   future costs one extra branch, and the clock is read only on the path
///   that waits. The `duration` counts from that first `Pending` poll.
/// * `Duration::MAX` (and anything past what [`Instant`] can hold) means "no
///   limit" — it never overflows or panics. A zero duration times out at the
///   first `Pending`, without waiting for any timer.
/// * The deadline can be moved while running: [`Timeout::reset`].
///
/// # Which timer
///
/// The [`DefaultTimer`]: with the `tokio` feature, tokio's timer when the
/// timeout first waits inside a tokio runtime with time enabled (so paused
/// time and `advance` apply), futures-timer anywhere else; without the
/// feature, futures-timer everywhere. [`Timeout::with_timer`] puts it on
/// any other [`Timer`] (a `ManualClock` in tests, async-io's, your own).
///
/// # Cancel safety
///
/// Dropping the [`Timeout`] drops the inner future and the timer. On
/// [`Elapsed`] the inner future is dropped before the output is returned.
///
/// # Panics
///
/// Polling after completion panics. A panic in the inner future's `poll`
/// propagates and leaves the timeout usable (whether the inner future can
/// be polled again is up to it). As it resolves, the timeout drops the inner
/// future (and on [`Elapsed`] the sleep, even if the inner future's
/// destructor panicked): a panic in those destructors, or in the wakers they
/// hold, propagates and the result is lost with it — the next poll panics,
/// saying the timeout was polled after a panic (never "after completion").
/// Panics of the timer propagate too; a waker's panic on the default
/// timer's helper thread is caught there (see
/// [`time`](crate::time#wakers-on-the-timers-threads)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let fast = awaitkit::timeout(Duration::from_secs(1), async { "done" }).await;
/// assert_eq!(fast, Ok("done"));
///
/// let slow = awaitkit::timeout(Duration::from_millis(10), futures::future::pending::<()>()).await;
/// assert_eq!(slow, Err(awaitkit::Elapsed::new()));
/// # });
/// ```
pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    Timeout::new(DefaultTimer, When::After(duration), future.into_future())
}

/// Like [`timeout`], with an absolute deadline. A deadline in the past times
/// out at the first `Pending` poll; the inner future is still polled first.
///
/// # Cancel safety
///
/// As [`timeout`].
///
/// # Panics
///
/// As [`timeout`].
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// # futures::executor::block_on(async {
/// let deadline = Instant::now() + Duration::from_millis(5);
/// let out = awaitkit::timeout_at(deadline, futures::future::pending::<()>()).await;
/// assert!(out.is_err());
/// assert!(Instant::now() >= deadline); // never early
/// # });
/// ```
pub fn timeout_at<F: IntoFuture>(deadline: Instant, future: F) -> Timeout<F::IntoFuture> {
    Timeout::new(DefaultTimer, When::At(deadline), future.into_future())
}

pin_project_lite::pin_project! {
    /// Future for [`timeout`], [`timeout_at`] and [`TimeoutExt`],
    /// resolving to `Result<F::Output, Elapsed>`.
    ///
    /// Holds the inner future and, once it has returned `Pending`, one sleep
    /// of the timer `T`. `Unpin` when the inner future and the timer's sleep
    /// are (the default timer's sleep is; tokio's is not, so pin it with
    /// `std::pin::pin!` to poll it by hand).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let call: awaitkit::Timeout<_> = awaitkit::timeout(Duration::from_secs(1), async { 5 });
    /// assert_eq!(call.deadline(), None); // not started yet
    /// assert_eq!(call.await, Ok(5));
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Timeout<F, T: Timer = DefaultTimer> {
        // `None` once finished: the inner future is dropped as soon as the
        // timeout resolves, either way (and `done` is set then), or when a
        // destructor panicked while it resolved (`done` stays clear: the
        // next poll refuses, saying so).
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<T::Sleep>,
        // `None` only while it is dropped (see `PinnedDrop`).
        timer: Option<T>,
        when: When,
        // Set by `reset`: the next pending poll compares the deadline with
        // the timer's clock itself, since a sleep moved into the past may
        // only complete at the backend's next tick (futures-timer's helper
        // thread, a timer wheel).
        moved: bool,
        done: bool,
        // Resolved with `Elapsed` (set as the timeout path starts).
        expired: bool,
        // Without a deadline no sleep holds the task's waker: the waker of
        // the latest pending poll, for `reset` to wake.
        idle: Option<std::task::Waker>,
    }

    impl<F, T: Timer> PinnedDrop for Timeout<F, T> {
        // Each part on its own: a panic of one destructor does not drop
        // the others during its unwind (where a second panic would abort
        // the process); the first panic then propagates (discarded when
        // the timeout is itself dropped during an unwind).
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_none()
                && this.sleep.is_none()
                && this.idle.is_none()
                && !std::mem::needs_drop::<T>()
            {
                return;
            }
            let mut panics = Panics::default();
            panics.catch(|| this.inner.set(None));
            panics.catch(|| this.sleep.set(None));
            panics.catch(|| drop(this.timer.take()));
            panics.catch(|| drop(this.idle.take()));
            panics.resume();
        }
    }
}

const NO_TIMER: &str = "a `Timeout`'s timer is there until it is dropped";

impl<F, T: Timer> Timeout<F, T> {
    fn new(timer: T, when: When, inner: F) -> Self {
        Timeout {
            inner: Some(inner),
            sleep: None,
            timer: Some(timer),
            when,
            moved: false,
            done: false,
            expired: false,
            idle: None,
        }
    }

    /// The same timeout on another [`Timer`]: the one way, as on every type
    /// in awaitkit that waits for time, to choose the timer (a `ManualClock`
    /// in tests, `TokioTimer`, `AsyncIoTimer`, your own). Call it before the
    /// first poll: a deadline already fixed (by [`timeout_at`], or by a
    /// `Pending` poll) is kept as an instant, and the new timer's clock reads
    /// it.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::TimeoutExt;
    /// use awaitkit::time::FuturesTimer;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::timeout(Duration::ZERO, async { 1 }).with_timer(FuturesTimer).await;
    /// assert_eq!(out, Ok(1)); // a ready future wins even a zero timeout
    /// let slow = futures::future::pending::<()>();
    /// assert!(slow.timeout(Duration::from_millis(1)).with_timer(FuturesTimer).await.is_err());
    /// # });
    /// ```
    pub fn with_timer<U: Timer>(self, timer: U) -> Timeout<F, U> {
        let mut old = self;
        let new = Timeout {
            inner: old.inner.take(),
            sleep: None,
            timer: Some(timer),
            when: old.when,
            moved: old.moved,
            done: old.done,
            expired: old.expired,
            idle: old.idle.take(),
        };
        // The old timer (and a sleep a poll armed) go now: if a destructor
        // panics, the new timeout is dropped too before the panic
        // propagates, not leaked with the return value.
        unwind::after_dropping(new, |panics| panics.catch(move || drop(old)))
    }

    /// The deadline, once known: `None` before the first `Pending` poll of a
    /// [`timeout`] (the duration starts counting then) and for a limit too
    /// far away to represent (`Duration::MAX`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let at = Instant::now() + Duration::from_secs(3);
    /// assert_eq!(awaitkit::timeout_at(at, async {}).deadline(), Some(at));
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.when.deadline()
    }

    /// Moves the deadline — Python's `Timeout.reschedule`. Earlier or later,
    /// past or future: a deadline that has passed by the next poll times out
    /// in that poll (the inner future is still polled first), on every
    /// [`Timer`] — the poll compares the new deadline with the timer's
    /// [`now`](Timer::now) rather than wait for the backend to fire. A
    /// running timer is moved with [`Timer::reset`], so the task is woken at
    /// the new deadline even if it does not poll this future again before
    /// then.
    ///
    /// # Panics
    ///
    /// If the timer panics in [`now`](Timer::now) or
    /// [`reset`](Timer::reset); the deadline is unchanged then (as
    /// [`deadline`](Self::deadline) reports it), and the sleep still wakes
    /// the task at it.
    ///
    /// If the task's waker panics when a timeout that waited without a
    /// deadline wakes it here: the new deadline is set first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::pin::pin;
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let mut call = pin!(awaitkit::timeout(Duration::from_secs(3600), futures::future::pending::<()>()));
    /// assert!(futures::poll!(call.as_mut()).is_pending());
    /// call.as_mut().reset(Instant::now() + Duration::from_millis(5)); // much sooner
    /// assert!(call.await.is_err());
    /// # });
    /// ```
    pub fn reset(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.project();
        *this.moved = this.sleep.is_some(); // before that, the first wait reads the clock
        let timer = this.timer.as_ref().expect(NO_TIMER);
        time::reset_deadline(timer, this.when, this.sleep, When::At(deadline));
        // A timeout that waited without a deadline has no sleep to move: its
        // task is woken so that its next poll arms one.
        if let Some(waker) = this.idle.take() {
            *this.moved = true;
            waker.wake();
        }
    }

    /// Removes the deadline: the timeout waits for the inner future however
    /// long it takes — asyncio's `Timeout.reschedule(None)`. A later
    /// [`reset`](Self::reset) sets a deadline again. Without a deadline no
    /// timer is armed, so nothing fires — not even under tokio's paused
    /// time, whose auto-advance would jump to a far-future timer: a running
    /// timer is moved to now, waking the task once, and its next poll drops
    /// it (keeping the task's waker, so that a later `reset` wakes it).
    ///
    /// # Panics
    ///
    /// As [`reset`](Self::reset).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::pin::pin;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let slow = futures_timer::Delay::new(Duration::from_millis(20));
    /// let mut call = pin!(awaitkit::timeout(Duration::from_millis(1), slow));
    /// assert!(futures::poll!(call.as_mut()).is_pending());
    /// call.as_mut().clear_deadline();
    /// assert_eq!(call.deadline(), None);
    /// assert_eq!(call.await, Ok(())); // 20 ms, well past the old 1 ms
    /// # });
    /// ```
    pub fn clear_deadline(self: Pin<&mut Self>) {
        let this = self.project();
        *this.moved = false;
        let timer = this.timer.as_ref().expect(NO_TIMER);
        time::reset_deadline(timer, this.when, this.sleep, When::Never);
    }

    /// Whether the deadline has passed — asyncio's `Timeout.expired()`:
    /// `true` once the timeout resolved with [`Elapsed`], and for a timeout
    /// still running whose deadline has passed on its timer's clock (its
    /// next poll times out, unless the inner future is ready first: a ready
    /// future always wins). `false` before the deadline is fixed, without a
    /// deadline, and once the inner future won. Reads the timer's clock only
    /// for a running timeout with a deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::pin::pin;
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let mut call = pin!(awaitkit::timeout_at(Instant::now(), futures::future::pending::<()>()));
    /// assert!(call.expired()); // the deadline has passed; the next poll says so
    /// assert!(call.as_mut().await.is_err());
    /// assert!(call.expired());
    ///
    /// let fast = awaitkit::timeout(Duration::from_secs(1), async { 1 });
    /// assert!(!fast.expired());
    /// # });
    /// ```
    pub fn expired(&self) -> bool {
        self.expired
            || (self.inner.is_some()
                && matches!(self.when, When::At(at) if self.timer.as_ref().expect(NO_TIMER).now() >= at))
    }

    /// The inner future; `None` once the timeout has resolved (the inner
    /// future is dropped then, whichever way it ended).
    ///
    /// # Examples
    ///
    /// ```
    /// let call = awaitkit::timeout(std::time::Duration::from_secs(1), std::future::ready(3));
    /// assert!(call.get_ref().is_some());
    /// ```
    pub fn get_ref(&self) -> Option<&F> {
        self.inner.as_ref()
    }

    /// The inner future, mutably (before it is pinned); `None` once the
    /// timeout has resolved.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut call = awaitkit::timeout(std::time::Duration::from_secs(1), std::future::ready(3));
    /// let _inner: Option<&mut std::future::Ready<i32>> = call.get_mut();
    /// ```
    pub fn get_mut(&mut self) -> Option<&mut F> {
        self.inner.as_mut()
    }

    /// Gives the inner future back, dropping the timer; `None` if the
    /// timeout has already resolved.
    ///
    /// # Examples
    ///
    /// ```
    /// let call = awaitkit::timeout(std::time::Duration::from_secs(1), std::future::ready(3));
    /// assert_eq!(call.into_inner().unwrap().into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> Option<F> {
        let mut this = self;
        let inner = this.inner.take();
        // As in `with_timer`: a panic of the timer's (or the sleep's)
        // destructor drops the inner future before it propagates.
        unwind::after_dropping(inner, |panics| panics.catch(move || drop(this)))
    }
}

impl<F: Future, T: Timer> Future for Timeout<F, T> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            refuse(*this.done)
        };
        // Inner first: a ready future always wins, at any deadline.
        if let Poll::Ready(mut output) = inner.poll(cx) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| this.inner.set(None))) {
                output = output_lost(payload, output);
            }
            *this.done = true;
            return Poll::Ready(Ok(output));
        }
        // The first poll after `reset`: the moved sleep may not have seen
        // a deadline that has already passed (one clock read, only here).
        let timer = this.timer.as_ref().expect(NO_TIMER);
        if *this.when == When::Never {
            // Kept before the deadline's poll, which drops a sleep left from
            // a cleared deadline (user code: if that panics, a later `reset`
            // still wakes this task).
            keep_waker(this.idle, cx);
        }
        let passed = *this.moved && {
            *this.moved = false;
            matches!(*this.when, When::At(at) if timer.now() >= at)
        };
        if passed || time::poll_deadline(timer, this.when, this.sleep.as_mut(), cx).is_ready() {
            *this.expired = true;
            // Cancel the inner future and release the timer now, not when
            // the `Timeout` is dropped: both, even if one destructor panics
            // (the first panic propagates, and the next poll refuses).
            let mut panics = Panics::default();
            panics.catch(|| this.inner.set(None));
            panics.catch(|| this.sleep.set(None));
            panics.resume();
            *this.done = true;
            return Poll::Ready(Err(Elapsed(())));
        }
        if *this.when == When::Never {
            // No deadline (also one too far away to represent, found by
            // this poll): no sleep holds the waker; keep it for `reset`.
            keep_waker(this.idle, cx);
        }
        Poll::Pending
    }
}

/// Keeps the task's waker for [`Timeout::reset`] to wake (a timeout without
/// a deadline has no sleep that holds it).
fn keep_waker(idle: &mut Option<std::task::Waker>, cx: &Context<'_>) {
    if !idle.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        let old = idle.replace(cx.waker().clone());
        drop(old);
    }
}

/// A poll after the timeout resolved, or after a destructor panicked while
/// it resolved (the result was lost with that panic).
#[cold]
#[track_caller]
fn refuse(done: bool) -> ! {
    if done {
        panic!("`Timeout` polled after completion")
    }
    panic!("`Timeout` polled after a panic in one of its futures")
}

/// The inner future was ready but its destructor panicked: the output is
/// dropped (a panic there is discarded) and the panic propagates, so the
/// poll that lost the output does not return. While the thread is already
/// unwinding (a poll from a destructor) a second panic would abort: then
/// the panic is discarded and the output delivered, the inner future gone.
#[cold]
fn output_lost<O>(payload: Payload, output: O) -> O {
    if std::thread::panicking() {
        unwind::discard(payload);
        return output;
    }
    unwind::contain(|| drop(output));
    resume_unwind(payload)
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: Future, T: Timer> futures_core::FusedFuture for Timeout<F, T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<F, T: Timer> fmt::Debug for Timeout<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("deadline", &self.when.deadline())
            .field("timer_started", &self.sleep.is_some())
            .field("finished", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

/// The error of a [`timeout`]: the deadline passed before the future
/// finished.
///
/// Converts into [`std::io::Error`] of kind `TimedOut`.
///
/// # Examples
///
/// ```
/// let e = awaitkit::Elapsed::new();
/// assert_eq!(e.to_string(), "deadline has elapsed");
/// let io: std::io::Error = e.into();
/// assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Elapsed(());

impl Elapsed {
    /// An `Elapsed` error (for tests and for code that produces its own
    /// timeouts).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(awaitkit::Elapsed::new(), awaitkit::Elapsed::default());
    /// ```
    pub const fn new() -> Self {
        Elapsed(())
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(e: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// `.timeout(d)` and `.timeout_at(t)` on any future.
///
/// Named `TimeoutExt` so it never clashes with `futures::FutureExt` or
/// tokio's and smol's extension traits in the same scope.
///
/// # Examples
///
/// ```
/// use awaitkit::TimeoutExt;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// assert_eq!(async { 1 }.timeout(Duration::from_secs(1)).await, Ok(1));
/// # });
/// ```
///
/// On a timer of your choice, `.timeout(d).with_timer(timer)`
/// ([`Timeout::with_timer`], the way every awaitkit type takes a timer):
///
/// ```
/// use awaitkit::TimeoutExt;
/// use awaitkit::time::FuturesTimer;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let slow = futures::future::pending::<()>();
/// assert!(slow.timeout(Duration::from_millis(1)).with_timer(FuturesTimer).await.is_err());
/// # });
/// ```
pub trait TimeoutExt: Future + Sized {
    /// [`timeout`]`(duration, self)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::TimeoutExt;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let out = futures::future::pending::<()>().timeout(Duration::from_millis(1)).await;
    /// assert!(out.is_err());
    /// # });
    /// ```
    fn timeout(self, duration: Duration) -> Timeout<Self> {
        timeout(duration, self)
    }

    /// [`timeout_at`]`(deadline, self)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::TimeoutExt;
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let out = async { 2 }.timeout_at(Instant::now() + Duration::from_secs(1)).await;
    /// assert_eq!(out, Ok(2));
    /// # });
    /// ```
    fn timeout_at(self, deadline: Instant) -> Timeout<Self> {
        timeout_at(deadline, self)
    }
}

impl<F: Future> TimeoutExt for F {}
