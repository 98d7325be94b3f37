//! asyncio's debug mode for any executor: find the futures that hold the
//! executor too long.
//!
//! A future that blocks inside `poll` — a synchronous file read, a CPU-heavy
//! loop, a `std::thread::sleep` — stalls every other task on its thread.
//! Python reports such callbacks in debug mode (`slow_callback_duration`);
//! on tokio you would reach for tokio-console. Here the tool is a wrapper
//! that works on every executor:
//!
//! * [`watch`] / [`WatchExt::watch`] wraps one future. [`Watch`] measures
//!   every poll, reports the ones longer than a threshold (10 ms unless set)
//!   through a callback, the process-wide [`set_slow_poll_hook`], and — with
//!   the `tracing` feature, whatever the hooks — as a `tracing` warning with
//!   the future's name (target `awaitkit::watch`, to filter on).
//!   It also keeps [`WatchStats`]: polls, busy time, wall time and the
//!   longest poll.
//! * [`Report`] watches the children of any combinator — [`gather`](crate::gather()),
//!   [`as_completed`](crate::as_completed), [`wait`](crate::wait),
//!   [`process_batch`](crate::process_batch), a [task group](crate::task_group)
//!   — and lists, per child, its wall time, busy time, polls and longest
//!   poll: which of 1 000 requests was slow, and which one blocked the
//!   executor.
//!
//! # Cost
//!
//! Nothing unless used. A watched future pays two clock reads and a few
//! additions per poll. The clock is the CPU's time-stamp counter where it
//! is invariant (x86-64 CPUs of the last decade and more, and virtual
//! machines that expose the bit): about 16 ns per poll on the benchmark
//! machine (`docs/benchmarks.md`, section Watch). Elsewhere it is
//! `Instant`, about 45 ns ([`uses_cpu_counter`] tells which). Either is
//! meant to be left on in production.
//!
//! # What "busy" means
//!
//! Busy time is the time spent inside the future's `poll`: the time it held
//! the thread. Wall time runs from the start of the first poll to the end of
//! the last one: to completion for a finished future, to the drop for a
//! cancelled child of a [`Report`], to now for a running one. A future that waits on
//! a timer for a second and polls twice for 10 µs is *slow* (wall 1 s) but
//! harmless; one that polls once for 30 ms *blocked the executor*.
//!
//! # Examples
//!
//! ```
//! use awaitkit::watch::Report;
//! use std::time::Duration;
//! # futures::executor::block_on(async {
//! let report = Report::new().threshold(Duration::from_millis(20));
//! let children = (0..10).map(|i| async move {
//!     if i == 7 {
//!         // A blocking call on the executor: the bug to find.
//!         std::thread::sleep(Duration::from_millis(30));
//!     }
//!     i
//! });
//! let out = awaitkit::gather(report.watch_each(children)).await;
//! assert_eq!(out, (0..10).collect::<Vec<_>>());
//!
//! let blocking = report.blocking();
//! assert_eq!(blocking.len(), 1);
//! assert_eq!(blocking[0].index, 7);
//! assert!(blocking[0].stats.longest_poll >= Duration::from_millis(30));
//! println!("{report}");
//! # });
//! ```

mod counter;
mod report;

pub use report::{ChildReport, Outcome, Report, WatchEach};

use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// The threshold above which a poll is reported, unless set otherwise:
/// 10 ms (asyncio's debug mode uses 100 ms).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// assert_eq!(awaitkit::watch::DEFAULT_THRESHOLD, Duration::from_millis(10));
/// ```
pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(10);

/// A callback for slow polls (see [`Watch::on_slow_poll`]).
type Hook = Arc<dyn Fn(&SlowPoll<'_>) + Send + Sync>;

/// Wraps `future` so that every poll is measured; see the [module
/// docs](self).
///
/// The output, the wakes and the cancellation behaviour are the inner
/// future's: dropping the [`Watch`] drops the inner future.
///
/// # Examples
///
/// ```
/// use awaitkit::watch::watch;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let mut fut = std::pin::pin!(watch(async { 1 + 1 }).name("sum"));
/// assert_eq!((&mut fut).await, 2);
/// let stats = fut.stats();
/// assert_eq!(stats.polls, 1);
/// assert!(stats.completed);
/// assert!(stats.busy <= stats.wall);
/// # });
/// ```
pub fn watch<F: IntoFuture>(future: F) -> Watch<F::IntoFuture> {
    Watch::new(
        future.into_future(),
        Meta::new(None, DEFAULT_THRESHOLD, None),
    )
}

/// The [`watch`] wrapper as a method on every future.
pub trait WatchExt: Future + Sized {
    /// Wraps the future in a [`Watch`] named `name`: slow polls are reported
    /// with that name. Same as `watch(self).name(name)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::WatchExt;
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = seen.clone();
    /// let out = async {
    ///     std::thread::sleep(Duration::from_millis(15)); // blocks the executor
    ///     "done"
    /// }
    /// .watch("load config")
    /// .on_slow_poll(move |slow| sink.lock().unwrap().push(slow.to_string()))
    /// .await;
    /// assert_eq!(out, "done");
    /// let seen = seen.lock().unwrap();
    /// assert_eq!(seen.len(), 1);
    /// assert!(seen[0].contains("load config"), "{}", seen[0]);
    /// # });
    /// ```
    fn watch(self, name: impl Into<Cow<'static, str>>) -> Watch<Self> {
        Watch::new(self, Meta::new(Some(name.into()), DEFAULT_THRESHOLD, None))
    }
}

impl<F: Future> WatchExt for F {}

pin_project! {
    /// Future for the [`watch`] function and [`WatchExt::watch`]: the inner
    /// future, with every poll measured.
    ///
    /// # Cancel safety
    ///
    /// As cancel-safe as the inner future: dropping the `Watch` drops it
    /// (after recording the outcome in its [`Report`], if any).
    ///
    /// # Panics
    ///
    /// Never on its own. A panic in the inner future propagates (its poll is
    /// not counted; a [`Report`] records the child as
    /// [`Outcome::Panicked`]), and so does a panic in the slow-poll hook
    /// (the poll is counted). Polling after completion polls the inner
    /// future again, with whatever that does.
    ///
    /// One exception: if the hook panics in the poll in which the inner
    /// future completed, that output is dropped (before the panic
    /// propagates; a panic of its own destructor is discarded), and
    /// polling the `Watch` again panics ("polled after a panic in its
    /// slow-poll hook") instead of polling the finished inner future: the
    /// caller never saw it complete (a fused `Watch` is not terminated
    /// then). [`stats`](Watch::stats) then says
    /// `completed`, and a [`Report`] records [`Outcome::Panicked`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{Watch, WatchExt};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let timer = async { futures_timer::Delay::new(Duration::from_millis(5)).await };
    /// let mut fut: std::pin::Pin<&mut Watch<_>> = std::pin::pin!(timer.watch("timer"));
    /// (&mut fut).await;
    /// let stats = fut.stats();
    /// // Waiting is not blocking: 5 ms of wall time, microseconds busy.
    /// assert!(stats.wall >= Duration::from_millis(5));
    /// assert!(stats.busy < stats.wall);
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Watch<F> {
        // `None` only in the drop (see `PinnedDrop`).
        #[pin]
        future: Option<F>,
        stats: Ticks,
        meta: Meta,
    }

    impl<F> PinnedDrop for Watch<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // The future, then the hook, each on its own (neither during
            // the other's unwind); then the first panic propagates, once
            // the report has the outcome.
            let mut panics = crate::unwind::Panics::default();
            panics.catch(|| this.future.set(None));
            let hook = this.meta.on_slow.take();
            panics.catch(move || drop(hook));
            if let Some(slot) = this.meta.report.take() {
                let outcome = if this.stats.in_poll {
                    Outcome::Panicked
                } else {
                    Outcome::Cancelled
                };
                // An unfinished future's wall time runs until it is dropped:
                // a request cancelled by a timeout took the whole timeout.
                if this.stats.polls > 0 {
                    this.stats.last = counter::now();
                }
                slot.deliver(*this.stats, outcome);
            }
            panics.resume();
        }
    }
}

const DROPPED: &str = "the inner future is there until the `Watch` is dropped";

/// What a [`Watch`] counts, in clock ticks.
#[derive(Clone, Copy, Default)]
struct Ticks {
    polls: u64,
    busy: u64,
    longest: u64,
    first: u64,
    last: u64,
    slow: u64,
    completed: bool,
    in_poll: bool,
    /// A slow-poll hook panicked in the poll that completed the inner
    /// future (its output was dropped).
    output_lost: bool,
}

impl Ticks {
    fn to_stats(self) -> WatchStats {
        self.to_stats_with(counter::scale())
    }

    /// One scale for all three durations, so that longest ≤ busy ≤ wall
    /// holds in time as it does in ticks.
    fn to_stats_with(self, scale: counter::Scale) -> WatchStats {
        WatchStats {
            polls: self.polls,
            busy: scale.to_duration(self.busy),
            longest_poll: scale.to_duration(self.longest),
            wall: scale.to_duration(self.last.saturating_sub(self.first)),
            slow_polls: self.slow,
            completed: self.completed,
        }
    }
}

/// The settings of a [`Watch`] (kept apart from the inner future so the
/// slow path is not generic).
struct Meta {
    name: Option<Cow<'static, str>>,
    threshold: Duration,
    /// Polls of fewer ticks are certainly shorter than `threshold`.
    cutoff: u64,
    on_slow: Option<Hook>,
    report: Option<report::Slot>,
}

impl Meta {
    fn new(name: Option<Cow<'static, str>>, threshold: Duration, on_slow: Option<Hook>) -> Self {
        Self::with_cutoff(name, threshold, counter::lower_bound(threshold), on_slow)
    }

    fn with_cutoff(
        name: Option<Cow<'static, str>>,
        threshold: Duration,
        cutoff: u64,
        on_slow: Option<Hook>,
    ) -> Self {
        Meta {
            name,
            threshold,
            cutoff,
            on_slow,
            report: None,
        }
    }

    /// A poll of `ticks` reached the cutoff: report it if it really is
    /// slow.
    #[cold]
    #[inline(never)]
    fn maybe_slow(&mut self, stats: &mut Ticks, ticks: u64, completing: bool) {
        let duration = counter::to_duration(ticks);
        if duration < self.threshold {
            return;
        }
        stats.slow += 1;
        // The hooks (and a `tracing` subscriber) are user code. If one
        // panics in the poll that completed the inner future, the output is
        // dropped before the panic propagates: the flag, cleared only after they
        // return, makes the next poll refuse instead of polling the finished
        // inner future.
        stats.completed |= completing;
        stats.output_lost = completing;
        let slow = SlowPoll {
            name: self.name.as_deref(),
            index: self.report.as_ref().map(|slot| slot.index),
            duration,
            threshold: self.threshold,
            poll: stats.polls,
        };
        if let Some(slot) = &self.report {
            slot.update(*stats);
        }
        match &self.on_slow {
            Some(hook) => hook(&slow),
            None => {
                let global = HOOK.read().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(hook) = global {
                    hook(&slow);
                }
            }
        }
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "awaitkit::watch",
            future = slow.name.unwrap_or("<unnamed>"),
            index = slow.index,
            duration_us = u64::try_from(slow.duration.as_micros()).unwrap_or(u64::MAX),
            threshold_us = u64::try_from(slow.threshold.as_micros()).unwrap_or(u64::MAX),
            poll = slow.poll,
            "{slow}"
        );
        stats.output_lost = false;
    }
}

impl<F> Watch<F> {
    fn new(future: F, meta: Meta) -> Self {
        Watch {
            future: Some(future),
            stats: Ticks::default(),
            meta,
        }
    }

    /// Names the future: slow-poll reports and the `tracing` warning carry
    /// the name (and so does its entry in a [`Report`], for a child of
    /// one).
    ///
    /// # Examples
    ///
    /// ```
    /// let fut = awaitkit::watch::watch(async {}).name(format!("request {}", 42));
    /// assert_eq!(fut.get_name(), Some("request 42"));
    /// ```
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        if let Some(slot) = &self.meta.report {
            slot.rename(name.clone());
        }
        self.meta.name = Some(name);
        self
    }

    /// The name given by [`name`](Self::name), [`WatchExt::watch`] or
    /// [`Report::watch`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::WatchExt;
    /// assert_eq!(async {}.watch("x").get_name(), Some("x"));
    /// assert_eq!(awaitkit::watch::watch(async {}).get_name(), None);
    /// ```
    pub fn get_name(&self) -> Option<&str> {
        self.meta.name.as_deref()
    }

    /// Reports polls that take `threshold` or longer (default
    /// [`DEFAULT_THRESHOLD`], 10 ms). `Duration::ZERO` reports every poll;
    /// `Duration::MAX` none.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::watch;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let mut fut = std::pin::pin!(watch(async {}).threshold(Duration::ZERO));
    /// (&mut fut).await;
    /// assert_eq!(fut.stats().slow_polls, 1); // every poll is "slow"
    /// # });
    /// ```
    pub fn threshold(mut self, threshold: Duration) -> Self {
        self.meta.threshold = threshold;
        self.meta.cutoff = counter::lower_bound(threshold);
        self
    }

    /// Calls `hook` for every poll that takes the threshold or longer,
    /// right after that poll, on the thread that polled. Without a hook,
    /// the process-wide [`set_slow_poll_hook`] is called, if set.
    ///
    /// The hook runs inside the executor's poll: keep it short (log, count,
    /// send to a channel). Its own time is not counted in the poll.
    ///
    /// # Panics
    ///
    /// A panic in the hook propagates out of this poll, as a panic of the
    /// inner future would (a [`Report`] records [`Outcome::Panicked`]). If
    /// the inner future completed in that poll, its output is dropped and
    /// the `Watch` refuses further polls (see [`Watch`]'s `# Panics`).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::watch;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let slow = Arc::new(AtomicU32::new(0));
    /// let count = slow.clone();
    /// watch(async { std::thread::sleep(Duration::from_millis(2)) })
    ///     .threshold(Duration::from_millis(1))
    ///     .on_slow_poll(move |_| {
    ///         count.fetch_add(1, Ordering::Relaxed);
    ///     })
    ///     .await;
    /// assert_eq!(slow.load(Ordering::Relaxed), 1);
    /// # });
    /// ```
    pub fn on_slow_poll(mut self, hook: impl Fn(&SlowPoll<'_>) + Send + Sync + 'static) -> Self {
        let old = self.meta.on_slow.replace(Arc::new(hook));
        // A replaced hook's captures are user code: if their drop panics,
        // the `Watch` is dropped before that panic propagates.
        crate::unwind::after_dropping(self, move |panics| panics.catch(move || drop(old)))
    }

    /// What was measured so far (readable at any time, and after
    /// completion if the `Watch` is kept: poll it through `&mut` or
    /// `Pin<&mut>`). Wall time runs to the end of the last poll.
    ///
    /// A `Watch` that is moved away — awaited by value, spawned — takes its
    /// stats with it: watch it through a [`Report`] (one child is fine) to
    /// read them afterwards.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::watch::watch;
    /// # futures::executor::block_on(async {
    /// let mut fut = std::pin::pin!(watch(futures::future::ready(3)));
    /// assert_eq!(fut.stats().polls, 0);
    /// assert_eq!((&mut fut).await, 3);
    /// assert_eq!(fut.stats().polls, 1);
    /// # });
    /// ```
    pub fn stats(&self) -> WatchStats {
        self.stats.to_stats()
    }

    /// A shared reference to the inner future.
    ///
    /// # Examples
    ///
    /// ```
    /// let fut = awaitkit::watch::watch(futures::future::ready(1));
    /// assert!(matches!(fut.get_ref(), futures::future::Ready { .. }));
    /// ```
    pub fn get_ref(&self) -> &F {
        self.future.as_ref().expect(DROPPED)
    }

    /// A mutable reference to the inner future.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut fut = awaitkit::watch::watch(futures::future::ready(1));
    /// let _: &mut futures::future::Ready<i32> = fut.get_mut();
    /// ```
    pub fn get_mut(&mut self) -> &mut F {
        self.future.as_mut().expect(DROPPED)
    }

    /// A pinned mutable reference to the inner future.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::pin::pin;
    /// let mut fut = pin!(awaitkit::watch::watch(async { 1 }));
    /// let _inner = fut.as_mut().get_pin_mut();
    /// ```
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().future.as_pin_mut().expect(DROPPED)
    }

    pub(crate) fn attach(mut self, slot: report::Slot) -> Self {
        self.meta.report = Some(slot);
        self
    }
}

impl<F: Future> Future for Watch<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let stats = this.stats;
        if stats.output_lost {
            // The inner future completed, then the slow-poll hook panicked:
            // the output was dropped on the way out, and the inner future
            // must not be polled again.
            refuse_after_hook_panic();
        }
        stats.in_poll = true;
        let start = counter::now();
        let mut out = this.future.as_pin_mut().expect(DROPPED).poll(cx);
        let end = counter::now();
        let ticks = end.saturating_sub(start);
        if stats.polls == 0 {
            stats.first = start;
        }
        stats.polls += 1;
        stats.busy = stats.busy.saturating_add(ticks);
        stats.longest = stats.longest.max(ticks);
        stats.last = end;
        if ticks >= this.meta.cutoff {
            // The hooks are user code: if one panics, an output this poll
            // produced is dropped before that panic propagates.
            let meta = &mut *this.meta;
            out =
                crate::unwind::keeping(out, |out| meta.maybe_slow(stats, ticks, out.is_ready())).0;
        }
        if stats.polls == 1 && out.is_pending() {
            // A report learns when its child started, so a child still
            // running shows its wall time so far.
            if let Some(slot) = &this.meta.report {
                slot.update(*stats);
            }
        }
        // Cleared only now: a panicking slow-poll hook counts as a panic in
        // this poll, too.
        stats.in_poll = false;
        if out.is_ready() {
            stats.completed = true;
            if let Some(slot) = this.meta.report.take() {
                slot.deliver(*stats, Outcome::Completed);
            }
        }
        out
    }
}

/// The refusal of a poll after the slow-poll hook panicked in the poll that
/// completed the inner future.
#[cold]
#[inline(never)]
#[track_caller]
fn refuse_after_hook_panic() -> ! {
    panic!(
        "`Watch` polled after a panic in its slow-poll hook: the inner future had completed \
         in that poll (its output was dropped), and is not polled again"
    )
}

// The hook (an `Arc<dyn Fn>`) is what would make a `Watch` `!UnwindSafe`;
// it is only called, never left half-updated by a panic, and the counts are
// plain data: the wrapper is as unwind-safe as the future it wraps.
impl<F: std::panic::UnwindSafe> std::panic::UnwindSafe for Watch<F> {}
impl<F: std::panic::RefUnwindSafe> std::panic::RefUnwindSafe for Watch<F> {}

impl<F: futures_core::FusedFuture> futures_core::FusedFuture for Watch<F> {
    fn is_terminated(&self) -> bool {
        // Not when the output was lost to a hook's panic: it was never
        // returned (polling again panics).
        !self.stats.output_lost && self.get_ref().is_terminated()
    }
}

impl<F> fmt::Debug for Watch<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("name", &self.meta.name)
            .field("threshold", &self.meta.threshold)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a [`Watch`] measured: read with [`Watch::stats`], or per child in a
/// [`Report`].
///
/// # Examples
///
/// ```
/// use awaitkit::watch::watch;
/// # futures::executor::block_on(async {
/// let mut fut = std::pin::pin!(watch(async {}));
/// (&mut fut).await;
/// let s = fut.stats();
/// assert_eq!((s.polls, s.slow_polls, s.completed), (1, 0, true));
/// assert!(s.longest_poll <= s.busy && s.busy <= s.wall);
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchStats {
    /// Polls that returned (a poll that panicked is not counted).
    pub polls: u64,
    /// Time spent inside `poll`: the time the future held its thread.
    pub busy: Duration,
    /// From the start of the first poll to the end of the last (to
    /// completion, once completed). Zero before the first poll.
    pub wall: Duration,
    /// The longest single poll.
    pub longest_poll: Duration,
    /// Polls that took the threshold or longer.
    pub slow_polls: u64,
    /// Whether the future has completed.
    pub completed: bool,
}

/// One poll that took the threshold or longer: what a slow-poll hook
/// receives. Its `Display` is a one-line warning.
///
/// # Examples
///
/// ```
/// use awaitkit::WatchExt;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// async { std::thread::sleep(Duration::from_millis(12)) }
///     .watch("resize image")
///     .on_slow_poll(|slow| {
///         assert_eq!(slow.name, Some("resize image"));
///         assert_eq!(slow.poll, 1);
///         assert!(slow.duration >= Duration::from_millis(12));
///         assert!(slow.to_string().starts_with("slow poll: `resize image` held the executor for"));
///     })
///     .await;
/// # });
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SlowPoll<'a> {
    /// The future's name, if it has one.
    pub name: Option<&'a str>,
    /// The child's index in its [`Report`], for a child watched by one.
    pub index: Option<usize>,
    /// How long the poll took.
    pub duration: Duration,
    /// The threshold it reached.
    pub threshold: Duration,
    /// Which poll it was (1 for the first).
    pub poll: u64,
}

impl fmt::Display for SlowPoll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("slow poll: ")?;
        match (self.name, self.index) {
            (Some(name), _) => write!(f, "`{name}`")?,
            (None, Some(index)) => write!(f, "child #{index}")?,
            (None, None) => f.write_str("a future")?,
        }
        write!(
            f,
            " held the executor for {:.1?} in poll {} (threshold {:?})",
            self.duration, self.poll, self.threshold
        )
    }
}

static HOOK: RwLock<Option<Hook>> = RwLock::new(None);

/// Replaces the process-wide hook; the old one is dropped after the lock
/// is released (its captures' destructors may do anything).
fn replace_hook(hook: Option<Hook>) {
    let old = std::mem::replace(&mut *HOOK.write().unwrap_or_else(|e| e.into_inner()), hook);
    drop(old);
}

/// Sets the process-wide slow-poll hook: called for every slow poll of a
/// [`Watch`] (or [`Report`]) that has no hook of its own. This is the
/// "debug mode" switch: set it once at start-up (to a log line, a metric),
/// then wrap the futures to watch. It replaces any earlier hook.
///
/// The hook runs inside the executor's poll, on the thread that polled;
/// keep it short.
///
/// # Panics
///
/// A panic in the hook propagates out of the watched future's poll.
///
/// # Examples
///
/// ```
/// use awaitkit::WatchExt;
/// use std::time::Duration;
/// awaitkit::watch::set_slow_poll_hook(|slow| eprintln!("warning: {slow}"));
/// # futures::executor::block_on(async {
/// // Prints "warning: slow poll: `startup` held the executor for 11.0ms in poll 1 (threshold 10ms)".
/// async { std::thread::sleep(Duration::from_millis(11)) }.watch("startup").await;
/// # });
/// awaitkit::watch::clear_slow_poll_hook();
/// ```
pub fn set_slow_poll_hook(hook: impl Fn(&SlowPoll<'_>) + Send + Sync + 'static) {
    replace_hook(Some(Arc::new(hook)));
}

/// Removes the process-wide slow-poll hook set by [`set_slow_poll_hook`].
///
/// # Examples
///
/// ```
/// awaitkit::watch::set_slow_poll_hook(|_| {});
/// awaitkit::watch::clear_slow_poll_hook();
/// ```
pub fn clear_slow_poll_hook() {
    replace_hook(None);
}

/// Whether the watch's clock is the CPU's invariant time-stamp counter
/// (about 16 ns per watched poll on the benchmark machine); `false`: it is
/// [`Instant`](std::time::Instant) (about 45 ns). Setting the environment
/// variable `AWAITKIT_WATCH_CLOCK=instant` before the first watched poll
/// forces `Instant`.
///
/// # Examples
///
/// ```
/// if !awaitkit::watch::uses_cpu_counter() {
///     eprintln!("watch: no invariant time-stamp counter; timing polls with Instant");
/// }
/// ```
pub fn uses_cpu_counter() -> bool {
    counter::is_tsc()
}
