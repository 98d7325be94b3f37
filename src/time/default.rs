//! [`DefaultTimer`]: the timer of every plain function, which picks the
//! runtime's timer where it runs.
//!
//! Without the `tokio` feature it is [`FuturesTimer`] under another name.
//! With it, every sleep is armed where it first waits: on tokio's timer
//! inside a tokio runtime that has time enabled (paused time, `advance` and
//! auto-advance then move it), on futures-timer anywhere else. A sleep that
//! is polled somewhere else later (another runtime, or outside any) is armed
//! again there for the same deadline, so a limiter or a pool created in one
//! place and used in another keeps working, and never polls a tokio sleep
//! whose runtime has shut down.

#![forbid(unsafe_code)]

use super::{FuturesSleep, FuturesTimer, Timer};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The timer of every plain function and constructor — [`timeout`](crate::timeout),
/// [`RateLimiter::new`](crate::RateLimiter::new), [`RetryPolicy`](crate::RetryPolicy),
/// pool waits, batch pacing, the deadlines of [`wait`](crate::Wait::with_timeout)
/// and [`as_completed`](crate::AsCompleted::with_timeout) — unless it is
/// given another with `with_timer`.
///
/// * **Without the `tokio` feature** it is [`FuturesTimer`]: futures-timer's
///   helper thread keeps the time, on every executor.
/// * **With the `tokio` feature** each sleep is armed where it first waits:
///   on **tokio's timer** when that wait runs inside a tokio runtime with
///   time enabled (so `#[tokio::test(start_paused = true)]`,
///   `tokio::time::pause` and `advance` move awaitkit's timeouts, limiters
///   and backoffs too), and on futures-timer everywhere else — smol,
///   `futures::executor`, a tokio runtime built without `enable_time`, no
///   runtime at all. The clock ([`now`](Timer::now)) is tokio's
///   `Instant::now()`, which is the system's monotonic clock except inside a
///   runtime whose time is paused.
///
/// The choice is made **when a sleep is armed**, not when the value that
/// owns it was created: a [`RateLimiter`](crate::RateLimiter) made in `main`
/// before the runtime, or in a `static`, honours the paused time of the
/// runtime that uses it. A sleep that is later polled somewhere else
/// (another runtime, or outside any) is armed again there for the same
/// deadline. Deadlines are instants of the clock where they were read: a
/// deadline read under paused time means little to a task on another
/// runtime.
///
/// A tokio runtime's time driver can only be detected by trying it (tokio
/// has no query for it): the first wait in each runtime creates a tokio
/// sleep inside `catch_unwind`. In a runtime **without** time enabled that
/// panics once, inside awaitkit, and tokio's panic message is printed by the
/// panic hook (once per runtime); the runtime then uses futures-timer. Under
/// `panic = "abort"` there is no probe: a tokio runtime is taken to have
/// time enabled (as `#[tokio::main]` and `#[tokio::test]` do), and one
/// without aborts like `tokio::time::sleep` would. Pass
/// [`FuturesTimer`] with `with_timer` to stay off tokio's timer.
///
/// Where tokio's timer is used, tokio's time driver wakes the waker a sleep
/// was polled with, as it does for its own sleeps (see `TokioTimer`); on
/// futures-timer a panicking waker is contained (see [`FuturesTimer`]).
///
/// # Examples
///
/// ```
/// use awaitkit::time::{DefaultTimer, Timer};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let timer = DefaultTimer;
/// let start = timer.now();
/// timer.sleep_until(start + Duration::from_millis(5)).await; // futures-timer here
/// assert!(timer.now() >= start + Duration::from_millis(5));
/// # });
/// ```
///
/// With the `tokio` feature, a one-hour timeout under tokio's paused time
/// elapses at once:
///
/// ```
/// # #[cfg(feature = "tokio")]
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// use awaitkit::TimeoutExt;
/// use std::time::Duration;
/// let slow = tokio::time::sleep(Duration::from_secs(7200));
/// assert!(slow.timeout(Duration::from_secs(3600)).await.is_err());
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DefaultTimer;

impl Timer for DefaultTimer {
    type Sleep = DefaultSleep;

    #[inline]
    fn now(&self) -> Instant {
        #[cfg(feature = "tokio")]
        {
            tokio::time::Instant::now().into_std()
        }
        #[cfg(not(feature = "tokio"))]
        {
            Instant::now()
        }
    }

    #[inline]
    fn sleep_until(&self, deadline: Instant) -> DefaultSleep {
        self.sleep_until_from(self.now(), deadline)
    }

    #[inline]
    fn sleep_until_from(&self, now: Instant, deadline: Instant) -> DefaultSleep {
        DefaultSleep::arm(now, deadline)
    }

    #[inline]
    fn reset(&self, sleep: Pin<&mut DefaultSleep>, deadline: Instant) {
        sleep.reset(deadline);
    }
}

// ---------------------------------------------------------------------------
// Without tokio: futures-timer's sleep, under another name
// ---------------------------------------------------------------------------

#[cfg(not(feature = "tokio"))]
pin_project_lite::pin_project! {
    /// The sleep future of [`DefaultTimer`]: futures-timer's (and, with the
    /// `tokio` feature, tokio's inside a runtime with time enabled).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{DefaultSleep, DefaultTimer, Timer};
    /// # futures::executor::block_on(async {
    /// let sleep: DefaultSleep = DefaultTimer.sleep_until(DefaultTimer.now());
    /// sleep.await;
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct DefaultSleep {
        sleep: FuturesSleep,
    }
}

#[cfg(not(feature = "tokio"))]
impl DefaultSleep {
    #[inline]
    fn arm(now: Instant, deadline: Instant) -> DefaultSleep {
        DefaultSleep {
            sleep: FuturesTimer.sleep_until_from(now, deadline),
        }
    }

    #[inline]
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        FuturesTimer.reset(Pin::new(self.project().sleep), deadline);
    }
}

#[cfg(not(feature = "tokio"))]
impl Future for DefaultSleep {
    type Output = ();
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(self.project().sleep).poll(cx)
    }
}

// ---------------------------------------------------------------------------
// With tokio: the runtime's timer where there is one
// ---------------------------------------------------------------------------

#[cfg(feature = "tokio")]
use super::tokio::{Here, TokioSleep, TokioTimer, here, timer_shut_down};

#[cfg(feature = "tokio")]
/// The sleep future of [`DefaultTimer`]: tokio's, armed inside a tokio
/// runtime with time enabled, futures-timer's elsewhere (see
/// [`DefaultTimer`]). `Unpin` either way: tokio's sleep lives in a box,
/// reused by the thread's next tokio sleep.
///
/// # Examples
///
/// ```
/// use awaitkit::time::{DefaultSleep, DefaultTimer, Timer};
/// # futures::executor::block_on(async {
/// let sleep: DefaultSleep = DefaultTimer.sleep_until(DefaultTimer.now());
/// sleep.await;
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct DefaultSleep {
    armed: Armed,
    // Kept to arm the sleep again when it moves (see `poll`).
    deadline: Instant,
    // Armed since the last poll, where it is polled now: no need to check.
    fresh: bool,
}

#[cfg(feature = "tokio")]
enum Armed {
    // futures-timer, armed outside any tokio runtime (`runtime: None`) or in
    // a runtime without time.
    Futures {
        sleep: FuturesSleep,
        runtime: Option<tokio::runtime::Id>,
    },
    // tokio's timer of `runtime`, armed by `task` (if in a task).
    Tokio {
        sleep: TokioBox,
        runtime: tokio::runtime::Id,
        task: Option<tokio::task::Id>,
    },
}

#[cfg(feature = "tokio")]
type TokioSlot = Pin<Box<Option<TokioSleep>>>;

#[cfg(feature = "tokio")]
thread_local! {
    /// An emptied box of this thread's last tokio sleep, for its next one.
    static SPARE: std::cell::Cell<Option<TokioSlot>> = const { std::cell::Cell::new(None) };
}

/// A tokio sleep in a box (so that [`DefaultSleep`] is `Unpin` whichever
/// timer it is on); the box goes back to the thread's spare when the sleep
/// is dropped.
#[cfg(feature = "tokio")]
struct TokioBox(Option<TokioSlot>);

#[cfg(feature = "tokio")]
impl TokioBox {
    #[inline]
    fn new(sleep: TokioSleep) -> TokioBox {
        match SPARE.try_with(std::cell::Cell::take) {
            Ok(Some(mut slot)) => {
                slot.set(Some(sleep));
                TokioBox(Some(slot))
            }
            _ => TokioBox(Some(Box::pin(Some(sleep)))),
        }
    }

    #[inline]
    fn sleep(&mut self) -> Pin<&mut TokioSleep> {
        let slot = self
            .0
            .as_mut()
            .expect("a tokio box holds its slot until dropped");
        slot.as_mut()
            .as_pin_mut()
            .expect("a tokio box holds its sleep until dropped")
    }
}

#[cfg(feature = "tokio")]
impl Drop for TokioBox {
    #[inline]
    fn drop(&mut self) {
        // Drops the sleep in place (deregistering it; its waker's drop may
        // panic, and then the box is simply freed), then keeps the box.
        if let Some(mut slot) = self.0.take() {
            slot.set(None);
            let _ = SPARE.try_with(|spare| spare.set(Some(slot)));
        }
    }
}

#[cfg(feature = "tokio")]
impl Armed {
    /// A sleep until `deadline` for where this thread is now.
    fn new(now: Instant, deadline: Instant) -> Armed {
        match here() {
            Here::Timed(runtime) => Armed::Tokio {
                sleep: TokioBox::new(TokioTimer.sleep_until(deadline)),
                runtime,
                task: tokio::task::try_id(),
            },
            Here::Untimed(runtime) => Armed::Futures {
                sleep: FuturesTimer.sleep_until_from(now, deadline),
                runtime: Some(runtime),
            },
            Here::Outside => Armed::Futures {
                sleep: FuturesTimer.sleep_until_from(now, deadline),
                runtime: None,
            },
        }
    }

    /// Whether this sleep was armed where the thread is now (the task that
    /// armed it is the cheapest check: a task id belongs to one runtime).
    #[inline]
    fn is_here(&self) -> bool {
        match self {
            Armed::Tokio { runtime, task, .. } => {
                (task.is_some() && *task == tokio::task::try_id())
                    || matches!(here(), Here::Timed(now) if now == *runtime)
            }
            Armed::Futures { runtime, .. } => match tokio::runtime::Handle::try_current() {
                Err(_) => runtime.is_none(),
                Ok(handle) => *runtime == Some(handle.id()),
            },
        }
    }
}

#[cfg(feature = "tokio")]
impl DefaultSleep {
    #[inline]
    fn arm(now: Instant, deadline: Instant) -> DefaultSleep {
        DefaultSleep {
            armed: Armed::new(now, deadline),
            deadline,
            fresh: true,
        }
    }

    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.get_mut();
        this.deadline = deadline;
        // The backend moves the sleep keeping its waker (a tokio sleep of a
        // runtime that has shut down fires, waking it: its next poll arms it
        // again where it is).
        match &mut this.armed {
            Armed::Tokio { sleep, .. } => TokioTimer.reset(sleep.sleep(), deadline),
            Armed::Futures { sleep, .. } => {
                sleep.reset_after(deadline.saturating_duration_since(DefaultTimer.now()));
            }
        }
    }
}

#[cfg(feature = "tokio")]
impl DefaultSleep {
    /// Arms the sleep again, for the same deadline, if it has moved since
    /// it was armed, or if its tokio runtime has shut down.
    #[inline(never)]
    fn follow(&mut self) {
        if !self.armed.is_here() {
            // Moved: arm it here (the poll that follows registers the waker
            // with the new sleep).
            let now = DefaultTimer.now();
            self.armed = Armed::new(now, self.deadline);
        }
        if let Armed::Tokio { sleep, runtime, .. } = &mut self.armed {
            // tokio fires every sleep of a runtime that shuts down, early,
            // and panics if one is polled then: that runtime's timer is
            // forgotten, and the sleep armed again where the thread is.
            if sleep.sleep().is_elapsed() {
                let now = DefaultTimer.now();
                if now < self.deadline {
                    timer_shut_down(*runtime);
                    self.armed = Armed::new(now, self.deadline);
                }
            }
        }
    }
}

#[cfg(feature = "tokio")]
impl Future for DefaultSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // A sleep armed since its last poll is polled where it was armed.
        if !std::mem::take(&mut this.fresh) {
            this.follow();
        }
        match &mut this.armed {
            Armed::Tokio { sleep, .. } => sleep.sleep().poll(cx),
            Armed::Futures { sleep, .. } => Pin::new(sleep).poll(cx),
        }
    }
}

impl fmt::Debug for DefaultSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DefaultSleep");
        #[cfg(feature = "tokio")]
        {
            let on = match self.armed {
                Armed::Tokio { .. } => "tokio",
                Armed::Futures { .. } => "futures-timer",
            };
            d.field("deadline", &self.deadline).field("timer", &on);
        }
        d.finish_non_exhaustive()
    }
}
