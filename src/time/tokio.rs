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
/// let out = awaitkit::timeout(Duration::from_millis(1), slow).with_timer(TokioTimer).await;
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

impl TokioSleep {
    /// Whether tokio's timer has fired this sleep (its deadline passed, or
    /// its runtime shut down).
    pub(crate) fn is_elapsed(&self) -> bool {
        self.sleep.is_elapsed()
    }
}

impl fmt::Debug for TokioSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioSleep")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Where a default sleep is armed (see `DefaultTimer`)
// ---------------------------------------------------------------------------

/// Where the calling thread is, for [`DefaultTimer`](super::DefaultTimer).
#[derive(Clone, Debug)]
pub(crate) enum Here {
    /// Inside a tokio runtime with time enabled.
    Timed(tokio::runtime::Handle),
    /// Inside a tokio runtime built without time (or whose timer shut down).
    Untimed(tokio::runtime::Id),
    /// Outside any tokio runtime.
    Outside,
}

impl Here {
    /// The runtime, if inside one.
    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Id> {
        match self {
            Here::Timed(handle) => Some(handle.id()),
            Here::Untimed(id) => Some(*id),
            Here::Outside => None,
        }
    }
}

thread_local! {
    /// The runtime this thread asked about last, and whether it has time.
    static LAST: std::cell::Cell<Option<(tokio::runtime::Id, bool)>> =
        const { std::cell::Cell::new(None) };
}

/// Where the calling thread is: a tokio runtime (with or without time) or
/// outside one.
#[inline]
pub(crate) fn here() -> Here {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Here::Outside;
    };
    let id = handle.id();
    let timed = match LAST.try_with(std::cell::Cell::get) {
        Ok(Some((last, timed))) if last == id => timed,
        _ => {
            let timed = has_time(id);
            if !std::thread::panicking() {
                let _ = LAST.try_with(|last| last.set(Some((id, timed))));
            }
            timed
        }
    };
    if timed {
        Here::Timed(handle)
    } else {
        Here::Untimed(id)
    }
}

/// Whether tokio's timer of the current runtime (`handle`) keeps running
/// while no task of this thread polls: always in a multi-thread runtime
/// (its workers drive it), and in a current-thread runtime only inside its
/// `block_on`. A current-thread runtime whose clock is paused (tests) is
/// taken to be driven: paused time needs tokio's timer, and a test runs in
/// `block_on`.
pub(crate) fn keeps_running(handle: &tokio::runtime::Handle) -> bool {
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            // tokio's clock stands still while paused (it only moves by
            // `advance` and auto-advance): two readings in a row are equal.
            let _inside = handle.enter();
            tokio::time::Instant::now() == tokio::time::Instant::now()
        }
        _ => true,
    }
}

/// Remembers that runtime `id` has no usable timer any more: it is shutting
/// down (its timer fired a sleep before the deadline), and polling its
/// sleeps would panic.
#[cold]
#[inline(never)]
pub(crate) fn timer_shut_down(id: tokio::runtime::Id) {
    remember_untimed(id);
    let _ = LAST.try_with(|last| last.set(Some((id, false))));
}

/// The latest runtimes found without time, or with their timer shut down
/// (bounded: a long-running process that keeps building such runtimes only
/// probes again).
static UNTIMED: std::sync::Mutex<Vec<tokio::runtime::Id>> = std::sync::Mutex::new(Vec::new());

fn untimed() -> std::sync::MutexGuard<'static, Vec<tokio::runtime::Id>> {
    UNTIMED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remember_untimed(id: tokio::runtime::Id) {
    const KEEP: usize = 64;
    let mut untimed = untimed();
    if !untimed.contains(&id) {
        if untimed.len() == KEEP {
            untimed.remove(0);
        }
        untimed.push(id);
    }
}

/// Whether the current runtime (`id`) has its time driver. tokio has no
/// query for it (tokio-rs/tokio#8361): a sleep is created inside
/// `catch_unwind`, and the runtimes where that panicked are remembered for
/// the whole process, so each prints tokio's panic message once.
#[cold]
#[inline(never)]
fn has_time(id: tokio::runtime::Id) -> bool {
    if untimed().contains(&id) {
        return false;
    }
    // Inside a panic hook, or while unwinding, a probe that panicked would
    // abort the process: no probe, and futures-timer this time.
    if std::thread::panicking() {
        return false;
    }
    #[cfg(panic = "unwind")]
    let timed = std::panic::catch_unwind(|| {
        drop(tokio::time::sleep(std::time::Duration::ZERO));
    })
    .is_ok();
    // Nothing to catch a panic with: take the runtime to have time, as
    // `#[tokio::main]` does (one without aborts as `tokio::time::sleep`).
    #[cfg(not(panic = "unwind"))]
    let timed = true;
    if !timed {
        remember_untimed(id);
    }
    timed
}
