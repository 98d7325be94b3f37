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
/// Its cheap clock ([`counter_nanos`](Timer::counter_nanos), read by rate
/// limiters on every check) is the CPU's invariant time-stamp counter where
/// there is one — and, with the `tokio` feature, inside a **current-thread**
/// tokio runtime (the only flavour whose clock tokio can pause),
/// tokio's clock, as `now()` is there, so paused-time tests keep moving
/// rate limiters. A multi-thread runtime's clock is `Instant::now()`
/// itself, so the counter is read there (about 7 ns, where tokio's clock
/// costs an `Instant::now()`, tens of nanoseconds on many machines); in a
/// current-thread runtime on real time, a limiter on
/// [`FuturesTimer`](super::FuturesTimer) reads the counter too (it never
/// follows a paused clock). A limiter used both inside and outside a tokio runtime
/// reads the two on one timeline: a runtime's readings are taken less an
/// offset of its own, the counter's lag behind `Instant` at the runtime's
/// first reading plus about a millisecond. So one paused instant always
/// reads the same (a limiter advanced by exactly one period grants, on any
/// thread that reads the runtime's clock), and on real time a runtime's
/// readings are never ahead of the counter's and at most about a
/// millisecond behind. The lag grows as the counter is re-anchored
/// (microseconds a second when many threads read it); once it has passed
/// a runtime's offset, after about a minute of a busy process, the offset
/// is raised by a millisecond, and that runtime's clock reads a
/// millisecond lower from then on (a limiter then waits that much longer,
/// once).
///
/// The choice is made **when a sleep is armed**, at its first poll — not
/// when the value that owns it was created: a
/// [`RateLimiter`](crate::RateLimiter) made in `main` before the runtime, or
/// in a `static`, honours the paused time of the runtime that uses it. A
/// sleep that is later polled somewhere else (another runtime, or outside
/// any) is armed again there for the same deadline, and a tokio sleep whose
/// runtime has shut down is never polled again (tokio would panic): it is
/// armed again on futures-timer.
///
/// One exception keeps shared wake-ups safe: a rate limiter's timer
/// ([`Timer::sleep_until_shared`]) wakes tasks that may run on other
/// threads and runtimes, so it goes on tokio's timer only in a multi-thread
/// runtime (its workers always drive the timer) or a current-thread runtime
/// whose clock is paused (a test); in a current-thread runtime on real time,
/// whose timer stops when its `block_on` returns, it stays on futures-timer.
///
/// Wakers are never handed to tokio's driver: as on futures-timer, each
/// sleep registers a waker of its own that wakes yours, and a panic in your
/// waker there is caught and discarded instead of unwinding out of the
/// runtime's driver (see [`FuturesTimer`]).
///
/// Limits:
///
/// * A tokio runtime's time driver can only be detected by trying it (tokio
///   has no query for it): the first wait in each runtime creates a tokio
///   sleep inside `catch_unwind`. In a runtime **without** time enabled
///   that panics once, inside awaitkit: your panic hook sees it (tokio's
///   message is printed once per such runtime; a hook that exits the
///   process would exit it), and the runtime then uses futures-timer.
///   Under `panic = "abort"` there is no probe: a tokio runtime is taken to
///   have time enabled (as `#[tokio::main]` and `#[tokio::test]` do), and
///   one without aborts as `tokio::time::sleep` would. Inside a panic hook
///   there is no probe either. Pass [`FuturesTimer`] with `with_timer` to
///   stay off tokio's timer.
/// * [`now`](Timer::now) reads the clock of the runtime the caller is in:
///   one value used by two runtimes with paused clocks sees two clocks.
///   Keep one limiter per paused test runtime.
/// * A rate limiter's timer armed in a current-thread runtime on real time
///   stays on futures-timer if the test pauses the clock afterwards
///   (`tokio::time::pause()` while a waiter is queued): pause before the
///   limiter first waits, or build the runtime with `start_paused(true)`
///   (what `#[tokio::test(start_paused = true)]` does).
/// * A sleep first armed on a thread that is still inside the context of a
///   runtime that was shut down (a blocking task after
///   `shutdown_background`) panics as tokio's own sleeps do there.
/// * Inside a task, which runtime the task belongs to is remembered per
///   thread for the last task that read the counter there (a task belongs
///   to one runtime; another task is asked about afresh).
///   So a paused runtime entered later *within* a task of a multi-thread
///   runtime is not followed: its handle entered with `Handle::enter`, or a
///   current-thread runtime's `block_on` body run inside `block_in_place` or
///   `spawn_blocking` (tokio still reports the outer task there); the
///   counter there stays the real clock while `now()` is paused. The inner
///   runtime's own tasks are followed: read paused time in one of them. The
///   same holds for a `LocalSet` moved from a multi-thread runtime's
///   `block_on` to a paused runtime.
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

    fn sleep_until_shared(&self, deadline: Instant) -> DefaultSleep {
        #[cfg(feature = "tokio")]
        {
            DefaultSleep::shared(deadline)
        }
        #[cfg(not(feature = "tokio"))]
        {
            self.sleep_until(deadline)
        }
    }

    #[inline]
    fn reset(&self, sleep: Pin<&mut DefaultSleep>, deadline: Instant) {
        sleep.reset(deadline);
    }

    #[inline]
    fn counter_nanos(&self) -> Option<u64> {
        let cheap = super::counter::cheap()?;
        #[cfg(feature = "tokio")]
        {
            // Inside a runtime whose clock may be paused, `now()` is that
            // clock: the counter follows it there.
            if let Some(runtime) = pausable_runtime() {
                let lag = runtime_lag(runtime);
                return super::counter::instant_value(self.now(), lag);
            }
        }
        Some(cheap)
    }
}

/// The current-thread tokio runtime the caller runs in, if any: the one
/// flavour whose clock can be paused (`time::pause` and `start_paused`
/// require the current-thread scheduler, and a clock that was never paused
/// cannot be advanced). Anywhere else tokio's clock is `Instant::now()`
/// itself, and the counter is read instead.
///
/// Inside a task the answer is kept per thread for the last task asked
/// about: a task's id belongs to one runtime (the check is then a
/// thread-local compare); a task not seen last asks the runtime (`Handle`),
/// as any caller outside a task does.
#[cfg(feature = "tokio")]
#[inline]
fn pausable_runtime() -> Option<tokio::runtime::Id> {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<Option<(tokio::task::Id, Option<tokio::runtime::Id>)>> =
            const { Cell::new(None) };
    }
    #[inline(never)]
    fn ask_the_runtime() -> Option<tokio::runtime::Id> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        (handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
            .then(|| handle.id())
    }
    let Some(task) = tokio::task::try_id() else {
        return ask_the_runtime();
    };
    // `try_with`: a thread-local without a destructor is never destroyed,
    // but a reading during thread teardown must not panic.
    LAST.try_with(|last| match last.get() {
        Some((seen, runtime)) if seen == task => runtime,
        _ => {
            let runtime = ask_the_runtime();
            last.set(Some((task, runtime)));
            runtime
        }
    })
    .unwrap_or_else(|_| ask_the_runtime())
}

/// How far below the counter's timeline a current-thread runtime's readings
/// may be placed, at most (~1 ms): the offset of a runtime moves only when
/// the counter has drifted this far behind `Instant` since the runtime's
/// first reading (see [`runtime_lag`]).
#[cfg(feature = "tokio")]
const HEADROOM: u64 = super::counter::W;

/// The most runtimes whose offset is remembered (the oldest is forgotten
/// first; a runtime forgotten while in use gets a new offset, once).
#[cfg(feature = "tokio")]
const REMEMBERED: usize = 64;

/// What a reading of `runtime`'s clock is taken less, on the counter's
/// timeline: the counter's lag behind `Instant` (see
/// [`counter`](super::counter)) plus up to [`HEADROOM`], fixed per runtime.
///
/// The lag grows as the counter is re-anchored (by its drift and the
/// pairing errors it never lets run ahead, microseconds a second in a busy
/// process). Subtracting the current lag would make one paused instant read
/// lower later, and a limiter advanced by exactly one period would refuse.
/// So each runtime keeps the lag of its first reading plus [`HEADROOM`]
/// (shared by every thread that reads its clock), raised only once the lag
/// has passed it: a runtime's readings are a function of its clock alone
/// for the first ~[`HEADROOM`] of drift (about a minute of a busy process,
/// far longer than a test), and never ahead of the counter (a limiter used
/// inside and outside the runtime is never lenient).
#[cfg(feature = "tokio")]
fn runtime_lag(runtime: tokio::runtime::Id) -> u64 {
    use std::cell::Cell;
    type Seen = [Option<(tokio::runtime::Id, u64)>; 4];
    thread_local! {
        // This thread's copies of the shared offsets it used last.
        static SEEN: Cell<Seen> = const { Cell::new([None; 4]) };
    }
    let lag = super::counter::lag();
    // Whether `offset` still keeps readings at or below the counter's.
    let holds = |offset: u64| offset.wrapping_sub(lag) as i64 >= 0;
    SEEN.try_with(|seen| {
        let mut copies = seen.get();
        if let Some((_, offset)) = copies.iter().flatten().find(|(id, _)| *id == runtime) {
            if holds(*offset) {
                return *offset;
            }
        }
        let offset = shared_lag(runtime, lag);
        copies.rotate_right(1);
        copies[0] = Some((runtime, offset));
        // A runtime appears once in the copies.
        for copy in &mut copies[1..] {
            if copy.is_some_and(|(id, _)| id == runtime) {
                *copy = None;
            }
        }
        seen.set(copies);
        offset
    })
    .unwrap_or_else(|_| shared_lag(runtime, lag))
}

/// [`runtime_lag`] from the table every thread shares: the runtime's offset,
/// set (to `lag` plus [`HEADROOM`]) at its first reading or once `lag` has
/// passed it.
#[cfg(feature = "tokio")]
#[cold]
#[inline(never)]
fn shared_lag(runtime: tokio::runtime::Id, lag: u64) -> u64 {
    use std::sync::Mutex;
    static OFFSETS: Mutex<Vec<(tokio::runtime::Id, u64)>> = Mutex::new(Vec::new());
    // Nothing under the lock panics halfway through an update.
    let mut offsets = OFFSETS.lock().unwrap_or_else(|p| p.into_inner());
    offset_in(&mut offsets, runtime, lag)
}

/// `runtime`'s offset in `offsets` at the counter's lag `lag` (set, to
/// `lag` plus [`HEADROOM`], at its first reading or once `lag` has passed
/// it; the oldest runtime is forgotten beyond [`REMEMBERED`]).
#[cfg(feature = "tokio")]
fn offset_in(
    offsets: &mut Vec<(tokio::runtime::Id, u64)>,
    runtime: tokio::runtime::Id,
    lag: u64,
) -> u64 {
    let fresh = lag.wrapping_add(HEADROOM);
    match offsets.iter_mut().find(|(id, _)| *id == runtime) {
        Some((_, offset)) => {
            if (offset.wrapping_sub(lag) as i64) < 0 {
                *offset = fresh;
            }
            *offset
        }
        None => {
            if offsets.len() >= REMEMBERED {
                offsets.remove(0);
            }
            offsets.push((runtime, fresh));
            fresh
        }
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
use super::relay::Relay;
#[cfg(feature = "tokio")]
use super::tokio::{Here, TokioSleep, TokioTimer, here, keeps_running, timer_shut_down};

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
    // `None` until the first poll: a sleep is armed where it is polled.
    armed: Option<Armed>,
    deadline: Instant,
    // Woken for tasks that may run elsewhere (a rate limiter's driver): kept
    // off a tokio timer that stops when its runtime's `block_on` returns.
    shared: bool,
}

#[cfg(feature = "tokio")]
enum Armed {
    // futures-timer, armed outside any tokio runtime (`runtime: None`), in
    // a runtime without time, or (shared) in one that may stop driving it.
    Futures {
        sleep: FuturesSleep,
        runtime: Option<tokio::runtime::Id>,
    },
    // tokio's timer of `runtime`, armed by `task` (if in a task).
    Tokio {
        sleep: TokioBox,
        runtime: tokio::runtime::Handle,
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
/// timer it is on; the box goes back to the thread's spare when the sleep
/// is dropped), registered with the waker of a [`Relay`]: tokio's driver
/// never holds the user's waker, so a panic in it is contained there as on
/// futures-timer's thread (SPEC §1.13), instead of unwinding out of the
/// runtime's driver.
#[cfg(feature = "tokio")]
struct TokioBox {
    slot: Option<TokioSlot>,
    relay: Relay,
}

#[cfg(feature = "tokio")]
impl TokioBox {
    #[inline]
    fn new(sleep: TokioSleep) -> TokioBox {
        let slot = match SPARE.try_with(std::cell::Cell::take) {
            Ok(Some(mut slot)) => {
                slot.set(Some(sleep));
                slot
            }
            _ => Box::pin(Some(sleep)),
        };
        TokioBox {
            slot: Some(slot),
            relay: Relay::default(),
        }
    }

    #[inline]
    fn sleep(&mut self) -> Pin<&mut TokioSleep> {
        let slot = self
            .slot
            .as_mut()
            .expect("a tokio box holds its slot until dropped");
        slot.as_mut()
            .as_pin_mut()
            .expect("a tokio box holds its sleep until dropped")
    }

    #[inline]
    fn is_elapsed(&self) -> bool {
        match &self.slot {
            Some(slot) => Option::as_ref(slot).is_some_and(TokioSleep::is_elapsed),
            None => false,
        }
    }

    #[inline]
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let TokioBox { slot, relay } = self;
        let slot = slot
            .as_mut()
            .expect("a tokio box holds its slot until dropped");
        let sleep = slot
            .as_mut()
            .as_pin_mut()
            .expect("a tokio box holds its sleep until dropped");
        relay.poll(cx, |cx| sleep.poll(cx))
    }
}

#[cfg(feature = "tokio")]
impl Drop for TokioBox {
    fn drop(&mut self) {
        // tokio's sleep first, in place (deregistering drops its clone of
        // the relay's waker: no user code), then the relay, normally the
        // last handle now, which drops the user's waker with its panic
        // contained; then the box goes back to the spare.
        let slot = self.slot.take();
        let slot = slot.map(|mut slot| {
            slot.set(None);
            slot
        });
        std::mem::take(&mut self.relay).release(|| {});
        if let Some(slot) = slot {
            let _ = SPARE.try_with(|spare| spare.set(Some(slot)));
        }
    }
}

#[cfg(feature = "tokio")]
impl Armed {
    /// A sleep until `deadline` for where this thread is now (the clock is
    /// read only for futures-timer, which takes a duration).
    fn new(deadline: Instant, shared: bool) -> Armed {
        match here() {
            Here::Timed(runtime) if !shared || keeps_running(&runtime) => Armed::Tokio {
                sleep: TokioBox::new(TokioTimer.sleep_until(deadline)),
                runtime,
                task: tokio::task::try_id(),
            },
            here => Armed::Futures {
                sleep: FuturesTimer.sleep_until_from(DefaultTimer.now(), deadline),
                runtime: here.runtime(),
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
                    || tokio::runtime::Handle::try_current()
                        .is_ok_and(|now| now.id() == runtime.id())
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
        let _ = now;
        DefaultSleep {
            armed: None,
            deadline,
            shared: false,
        }
    }

    /// A sleep whose wake-up other tasks may wait for (see
    /// [`Timer::sleep_until_shared`]).
    pub(crate) fn shared(deadline: Instant) -> DefaultSleep {
        DefaultSleep {
            armed: None,
            deadline,
            shared: true,
        }
    }

    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.get_mut();
        this.deadline = deadline;
        // The backend moves the sleep keeping its waker (a tokio sleep of a
        // runtime that has shut down fires, waking it: its next poll arms it
        // again where it is).
        match &mut this.armed {
            None => {}
            Some(Armed::Tokio { sleep, .. }) => TokioTimer.reset(sleep.sleep(), deadline),
            Some(Armed::Futures { sleep, .. }) => {
                sleep.reset_after(deadline.saturating_duration_since(DefaultTimer.now()));
            }
        }
    }

    /// Checks a sleep armed at an earlier poll: armed again here if it has
    /// moved (another runtime, or none), or if its tokio runtime's timer
    /// shut down; `Ready` if tokio fired it at its deadline (a fired tokio
    /// sleep is never polled again: its runtime may be gone).
    #[inline(never)]
    fn follow(&mut self) -> Option<Poll<()>> {
        let armed = self.armed.as_mut()?;
        if !armed.is_here() {
            // Moved: arm it here (the poll that follows registers the waker
            // with the new sleep).
            self.armed = Some(Armed::new(self.deadline, self.shared));
            return None;
        }
        if let Armed::Tokio { sleep, runtime, .. } = armed {
            if sleep.is_elapsed() {
                // Read on the runtime's own clock (paused or not): tokio
                // fires a sleep early only when its timer shuts down.
                let now = {
                    let _inside = runtime.enter();
                    DefaultTimer.now()
                };
                if now >= self.deadline {
                    return Some(Poll::Ready(()));
                }
                timer_shut_down(runtime.id());
                self.armed = Some(Armed::new(self.deadline, self.shared));
            }
        }
        None
    }
}

#[cfg(feature = "tokio")]
impl Future for DefaultSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.armed.is_none() {
            // The first poll arms it, here.
            this.armed = Some(Armed::new(this.deadline, this.shared));
        } else if let Some(ready) = this.follow() {
            return ready;
        }
        match this.armed.as_mut().expect("armed above") {
            Armed::Tokio { sleep, .. } => sleep.poll(cx),
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
                None => "not armed yet",
                Some(Armed::Tokio { .. }) => "tokio",
                Some(Armed::Futures { .. }) => "futures-timer",
            };
            d.field("deadline", &self.deadline).field("timer", &on);
        }
        d.finish_non_exhaustive()
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use super::{HEADROOM, REMEMBERED, offset_in};

    fn runtime_id() -> tokio::runtime::Id {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .handle()
            .id()
    }

    /// A runtime's offset is fixed while the counter's lag grows by less
    /// than the headroom (its readings are a function of its clock alone),
    /// is raised once the lag passes it (its readings never get ahead of
    /// the counter's), and belongs to that runtime only.
    #[test]
    fn an_offset_holds_until_the_lag_passes_it() {
        let (a, b) = (runtime_id(), runtime_id());
        let mut offsets = Vec::new();
        let first = offset_in(&mut offsets, a, 1_000);
        assert_eq!(first, 1_000 + HEADROOM);
        for lag in [1_000, 5_000, 1_000 + HEADROOM / 2, first] {
            assert_eq!(offset_in(&mut offsets, a, lag), first, "lag {lag}");
        }
        // Another runtime first read later starts from the lag then.
        assert_eq!(offset_in(&mut offsets, b, 50_000), 50_000 + HEADROOM);
        // A lag that shrank (an anomaly) leaves the offset: readings only
        // fall further behind the counter.
        assert_eq!(offset_in(&mut offsets, a, 10), first);
        // Passed: raised above the lag again, by the headroom.
        assert_eq!(offset_in(&mut offsets, a, first + 1), first + 1 + HEADROOM);
        assert_eq!(offset_in(&mut offsets, b, 60_000), 50_000 + HEADROOM);
        // Wrapping lags (a counter ahead of `Instant` after an anomaly)
        // compare as signed.
        let c = runtime_id();
        let ahead = 0u64.wrapping_sub(500);
        let offset = offset_in(&mut offsets, c, ahead);
        assert_eq!(offset, ahead.wrapping_add(HEADROOM));
        assert_eq!(offset_in(&mut offsets, c, 0), offset);
    }

    /// The table keeps the last [`REMEMBERED`] runtimes: the oldest is
    /// forgotten first (a runtime read again after that starts afresh).
    #[test]
    fn the_oldest_runtime_is_forgotten_first() {
        let mut offsets = Vec::new();
        let first = runtime_id();
        offset_in(&mut offsets, first, 0);
        for _ in 0..REMEMBERED {
            offset_in(&mut offsets, runtime_id(), 0);
        }
        assert_eq!(offsets.len(), REMEMBERED);
        assert!(offsets.iter().all(|(id, _)| *id != first));
        assert_eq!(offset_in(&mut offsets, first, 7), 7 + HEADROOM);
    }
}
