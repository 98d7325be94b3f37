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
/// costs an `Instant::now()`, tens of nanoseconds on many machines). In a
/// current-thread runtime the counter reads tokio's clock twice in a row
/// to tell its two states apart (a limiter on
/// [`FuturesTimer`](super::FuturesTimer) reads only the counter there, and
/// never follows a paused clock): on real time (two
/// different instants) it is the counter itself, as outside the runtime, so
/// a limiter used both inside and outside reads one clock; paused (the same
/// instant twice), it is the paused instant on the counter's timeline,
/// taken less a fixed offset of the runtime's own (the counter's lag behind
/// `Instant` at the runtime's first paused reading), so one paused instant
/// always reads the same on every thread that reads the runtime's clock,
/// and a limiter advanced by exactly one period grants. A runtime once
/// paused keeps that timeline: resumed, its clock goes on from its paused
/// readings by exactly tokio's elapsed time, and so does a second pause.
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
/// * Read in a thread-local destructor once tokio's own thread-local
///   context is gone, tokio's clock panics (with its `test-util` feature):
///   [`now`](Timer::now) catches that (your panic hook sees it) and reads
///   `Instant::now()`; under `panic = "abort"` the process aborts there.
/// * A sleep first armed on a thread that is still inside the context of a
///   runtime that was shut down (a blocking task after
///   `shutdown_background`) panics as tokio's own sleeps do there.
/// * A limiter counts its time from its creation: one made outside a
///   paused runtime *after* the runtime was built (its clock frozen at the
///   build, earlier) takes the paused instant for its first instant until
///   the paused clock passes its creation, so its first period comes up
///   short by the time between the build and the creation. Make the
///   limiter before the runtime, or inside it.
/// * The offsets of the last 4 096 paused runtimes are remembered: a runtime
///   forgotten while still paused (after 4 096 other paused runtimes were
///   read) gets a new offset, and its paused instant reads lower from then
///   on by the counter's lag growth since its first paused reading
///   (microseconds).
/// * A runtime once paused (a test's) reads on its own timeline for the
///   rest of its life, ahead of the counter by the counter's lag growth
///   since its first paused reading (microseconds a second of the
///   runtime's life): after `resume`, a limiter used both inside it and
///   outside it (on real time) may grant that much early once. A clock
///   paused and resumed within a few microseconds and never read while
///   paused (on any thread) reads as real time.
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
            // With tokio's `test-util`, tokio's clock asks for its
            // thread-local context and panics once that is gone (in a
            // thread-local destructor, where a panic aborts): no runtime
            // is current there, so the clock is `Instant`'s.
            match std::panic::catch_unwind(tokio::time::Instant::now) {
                Ok(now) => now.into_std(),
                Err(_) => Instant::now(),
            }
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
                return Some(in_current_thread_runtime(runtime, cheap));
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

/// How far tokio's clock, on the counter's timeline, may be from the
/// counter itself and still be taken for real time: the error of pairing a
/// counter reading with an `Instant` (under a microsecond) and the time
/// between the two readings, with room to spare.
#[cfg(feature = "tokio")]
const REAL_TIME: u64 = 4_000;

/// The most paused runtimes whose offset is remembered (the oldest is
/// forgotten first; one forgotten while still paused gets a new offset).
#[cfg(feature = "tokio")]
const REMEMBERED: usize = 4_096;

/// The counter inside current-thread runtime `runtime` (`cheap`: the
/// counter, read just before), where tokio's clock may be paused:
///
/// * **Paused** (tokio's clock reads the same instant twice in a row: it
///   stands still between `advance`s): the paused instant on the counter's
///   timeline, taken less an offset fixed for the runtime (the counter's
///   lag behind `Instant` at the runtime's first paused reading, see
///   [`paused_offset`]). So one paused instant always reads the same, on
///   every thread that reads the runtime's clock, and a limiter advanced by
///   exactly one period grants.
/// * **Real time** (tokio's clock is `Instant::now()`): the counter itself,
///   as everywhere else — a limiter used inside and outside the runtime
///   reads one clock, never going back on one thread.
/// * **Moving, in a runtime seen paused before** (resumed, or
///   auto-advanced between the two readings by the runtime's thread while
///   another thread reads): as paused, less the runtime's fixed offset, so
///   a resumed clock goes on from its paused readings by exactly tokio's
///   elapsed time, and pausing again goes on from there (a runtime that
///   was paused is a test's: its readings stay on its own timeline, which
///   is ahead of the counter by the lag's growth since its first paused
///   reading, microseconds a second).
#[cfg(feature = "tokio")]
fn in_current_thread_runtime(runtime: tokio::runtime::Id, cheap: u64) -> u64 {
    use super::counter::{instant_value, lag};
    let at = tokio::time::Instant::now();
    let again = tokio::time::Instant::now();
    // (`instant_value` is `Some`: the counter was read.)
    if at != again {
        match Seen::get(runtime) {
            Some(Known::Offset(offset)) => {
                return instant_value(at.into_std(), offset).unwrap_or(cheap);
            }
            // Not paused when the table last changed: not paused since.
            Some(Known::NotPaused(generation)) if generation == generation_now() => {}
            _ => {
                let generation = generation_now();
                if let Some(offset) = lookup(runtime) {
                    Seen::remember(runtime, Known::Offset(offset));
                    return instant_value(at.into_std(), offset).unwrap_or(cheap);
                }
                Seen::remember(runtime, Known::NotPaused(generation));
            }
        }
        // Never paused: real time, unless tokio's clock is off it (paused
        // and resumed between two readings, never read while paused).
        let on_timeline = instant_value(at.into_std(), lag()).unwrap_or(cheap);
        if on_real_time(on_timeline, cheap) {
            return cheap;
        }
    }
    instant_value(at.into_std(), paused_offset(runtime)).unwrap_or(cheap)
}

/// Whether tokio's clock, read as `on_timeline` on the counter's timeline
/// after the counter read `cheap`, is real time: within [`REAL_TIME`] of the
/// counter, read again if need be (a thread preempted between its readings
/// sees tokio's clock ahead of `cheap`, never ahead of a later reading).
#[cfg(feature = "tokio")]
#[inline]
fn on_real_time(on_timeline: u64, cheap: u64) -> bool {
    if on_timeline.abs_diff(cheap) <= REAL_TIME {
        return true;
    }
    let after = super::counter::cheap().unwrap_or(cheap);
    on_timeline >= cheap.saturating_sub(REAL_TIME) && on_timeline <= after.saturating_add(REAL_TIME)
}

/// What a thread knows of a runtime.
#[cfg(feature = "tokio")]
#[derive(Clone, Copy, Debug)]
enum Known {
    /// Its offset: it was paused.
    Offset(u64),
    /// Not paused when the table of offsets was at this generation.
    NotPaused(u64),
}

/// This thread's copies of what it knows of the runtimes it read last.
#[cfg(feature = "tokio")]
struct Seen;

#[cfg(feature = "tokio")]
impl Seen {
    thread_local! {
        static COPIES: std::cell::Cell<[Option<(tokio::runtime::Id, Known)>; 4]> =
            const { std::cell::Cell::new([None; 4]) };
    }

    /// What this thread knows of `runtime`, if anything.
    #[inline]
    fn get(runtime: tokio::runtime::Id) -> Option<Known> {
        Self::COPIES
            .try_with(|copies| {
                copies
                    .get()
                    .iter()
                    .flatten()
                    .find(|(id, _)| *id == runtime)
                    .map(|(_, known)| *known)
            })
            .ok()
            .flatten()
    }

    /// Keeps `known` as this thread's copy for `runtime`, first (the
    /// oldest copy goes when all four are taken).
    fn remember(runtime: tokio::runtime::Id, known: Known) {
        let _ = Self::COPIES.try_with(|copies| {
            let mut kept = copies.get();
            for copy in &mut kept {
                if copy.is_some_and(|(id, _)| id == runtime) {
                    *copy = None;
                }
            }
            kept.sort_by_key(Option::is_none);
            kept.rotate_right(1);
            kept[0] = Some((runtime, known));
            copies.set(kept);
        });
    }
}

/// The offsets of the paused runtimes, oldest first (see [`offset_in`]).
#[cfg(feature = "tokio")]
static OFFSETS: std::sync::Mutex<Vec<(tokio::runtime::Id, u64)>> =
    std::sync::Mutex::new(Vec::new());

/// How many runtimes were added to [`OFFSETS`]: a thread that found a
/// runtime missing from it asks again once this has moved.
#[cfg(feature = "tokio")]
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(feature = "tokio")]
#[inline]
fn generation_now() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::Acquire)
}

#[cfg(feature = "tokio")]
fn offsets() -> std::sync::MutexGuard<'static, Vec<(tokio::runtime::Id, u64)>> {
    // Nothing under the lock panics halfway through an update.
    OFFSETS.lock().unwrap_or_else(|p| p.into_inner())
}

/// `runtime`'s offset, if it was ever paused (and is still remembered).
#[cfg(feature = "tokio")]
#[cold]
#[inline(never)]
fn lookup(runtime: tokio::runtime::Id) -> Option<u64> {
    offsets()
        .iter()
        .rev()
        .find(|(id, _)| *id == runtime)
        .map(|(_, offset)| *offset)
}

/// What the paused clock of `runtime` is taken less, on the counter's
/// timeline: the counter's lag behind `Instant` (see
/// [`counter`](super::counter)) at the runtime's first paused reading,
/// kept for the runtime's life and shared by every thread that reads its
/// clock.
///
/// The lag grows as the counter is re-anchored (its drift and the pairing
/// errors it never lets run ahead: microseconds a second in a busy
/// process). Taking a paused instant less the *current* lag would make it
/// read lower later, and a limiter advanced by exactly one period would
/// refuse. A paused clock is not real time, so nothing needs the offset to
/// follow the lag; taken at the first paused reading, it keeps a clock
/// paused after real-time readings going on from where they were.
#[cfg(feature = "tokio")]
fn paused_offset(runtime: tokio::runtime::Id) -> u64 {
    if let Some(Known::Offset(offset)) = Seen::get(runtime) {
        return offset;
    }
    let offset = shared_offset(runtime);
    Seen::remember(runtime, Known::Offset(offset));
    offset
}

/// [`paused_offset`] from the table every thread shares.
#[cfg(feature = "tokio")]
#[cold]
#[inline(never)]
fn shared_offset(runtime: tokio::runtime::Id) -> u64 {
    let mut offsets = offsets();
    let (offset, added) = offset_in(&mut offsets, runtime, super::counter::lag());
    if added {
        GENERATION.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
    offset
}

/// `runtime`'s offset in `offsets`, set to `lag` if the runtime is not
/// there yet (the newest runtimes are last; the oldest is forgotten beyond
/// [`REMEMBERED`]), and whether it was added.
#[cfg(feature = "tokio")]
fn offset_in(
    offsets: &mut Vec<(tokio::runtime::Id, u64)>,
    runtime: tokio::runtime::Id,
    lag: u64,
) -> (u64, bool) {
    if let Some((_, offset)) = offsets.iter().rev().find(|(id, _)| *id == runtime) {
        return (*offset, false);
    }
    if offsets.len() >= REMEMBERED {
        offsets.remove(0);
    }
    offsets.push((runtime, lag));
    (lag, true)
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
    use super::{REMEMBERED, offset_in};

    fn runtime_id() -> tokio::runtime::Id {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .handle()
            .id()
    }

    /// A runtime's offset is the lag at its first paused reading, kept
    /// however the lag moves later (a paused instant reads the same for the
    /// runtime's life), and belongs to that runtime only.
    #[test]
    fn an_offset_is_fixed_at_the_first_paused_reading() {
        let (a, b) = (runtime_id(), runtime_id());
        let mut offsets = Vec::new();
        assert_eq!(offset_in(&mut offsets, a, 1_000), (1_000, true));
        for lag in [0, 5_000, 1 << 40, u64::MAX] {
            assert_eq!(offset_in(&mut offsets, a, lag).0, 1_000, "lag {lag}");
        }
        assert_eq!(offset_in(&mut offsets, b, 50_000).0, 50_000);
        assert_eq!(offset_in(&mut offsets, a, 60_000), (1_000, false));
        assert_eq!(offset_in(&mut offsets, b, 7).0, 50_000);
    }

    /// The table keeps the last [`REMEMBERED`] runtimes: the oldest is
    /// forgotten first (a runtime read again after that starts afresh).
    #[test]
    fn the_oldest_runtime_is_forgotten_first() {
        let mut offsets = Vec::new();
        let first = runtime_id();
        assert!(offset_in(&mut offsets, first, 0).1, "added");
        let second = runtime_id();
        offset_in(&mut offsets, second, 1);
        for _ in 1..REMEMBERED {
            offset_in(&mut offsets, runtime_id(), 2);
        }
        assert_eq!(offsets.len(), REMEMBERED);
        assert!(offsets.iter().all(|(id, _)| *id != first));
        assert_eq!(offset_in(&mut offsets, second, 3).0, 1);
        assert_eq!(offset_in(&mut offsets, first, 7).0, 7);
    }
}
