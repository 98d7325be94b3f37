//! `process_batch`: run an async function over many items with a
//! concurrency limit, results in input order, with progress reporting.

#![forbid(unsafe_code)]

use crate::RateLimiter;
use crate::engine::Engine;
use crate::rate_limiter::RateAcquire;
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Runs `f` over every item with at most `limit` calls in flight, and
/// resolves to their outputs **in input order** — a batch
/// processor: `asyncio.gather` of every item, each under
/// `async with semaphore:`.
///
/// * **Sliding window** (the default): a new item starts as soon as one
///   finishes, so `limit` calls are in flight while items remain.
///   [`fixed_batches`](Batch::fixed_batches) runs groups of `limit` items
///   instead, each only after the whole previous group has finished, with
///   an optional [pause](Batch::pause_between) between groups.
/// * **Lazy**: items are pulled from the iterator, and `f` is called, only
///   when a slot is free; never more than `limit` calls are alive.
/// * **Settled or fail-fast**: the output is every child's output (a
///   `Vec<Result<T, E>>` for fallible children: every result, settled);
///   [`fail_fast`](Batch::fail_fast) stops at the first `Err` instead.
/// * **Rate limit**: [`rate_limit`](Batch::rate_limit) takes one grant of a
///   [`RateLimiter`] right before each call starts.
/// * **Progress**: [`on_progress`](Batch::on_progress) is called with a
///   [`Progress`] (done, total, elapsed, rate, ETA) after each completion;
///   with the `indicatif` feature, `progress_bar` draws it like
///   `tqdm.asyncio`.
///
/// Nothing is spawned: the calls run inside the returned [`Batch`], each
/// with its own waker, polled only when it woke. An empty input resolves to
/// an empty `Vec` on the first poll.
///
/// [`Batch::try_new`] returns an error instead of panicking for a zero
/// `limit`; `usize::MAX` means "no limit".
///
/// To see which child was slow, or which one blocked the executor, watch the
/// children with a [`watch::Report`](crate::watch::Report).
///
/// # Cancel safety
///
/// Dropping the [`Batch`] drops every call in flight, the outputs collected
/// so far and the items not yet started, and gives back a rate-limit grant
/// it was waiting for.
///
/// # Panics
///
/// If `limit` is zero (a batch that could never start anything). A panic in
/// `f`, in a call or in the progress callback propagates out of `poll`;
/// polling again after that panics, as for an `async fn` that panicked.
/// Polling after completion panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// async fn fetch(id: u32) -> String { format!("page {id}") }
///
/// // At most 10 fetches at a time; results in input order.
/// let pages = awaitkit::process_batch(1..=100, 10, fetch).await;
/// assert_eq!(pages.len(), 100);
/// assert_eq!(pages[41], "page 42");
/// # });
/// ```
#[track_caller]
pub fn process_batch<I, F, Fut>(items: I, limit: usize, f: F) -> Batch<'static, I::IntoIter, F, Fut>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    Batch::try_new(items, limit, f).unwrap_or_else(|e| panic!("process_batch: {e}"))
}

/// A batch configuration that can never run, rejected at construction.
///
/// # Examples
///
/// ```
/// use awaitkit::{Batch, BatchConfigError};
/// let err = Batch::try_new([1, 2], 0, |i: i32| async move { i }).unwrap_err();
/// assert_eq!(err, BatchConfigError::ZeroLimit);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchConfigError {
    /// The concurrency limit was zero: nothing could ever start.
    ZeroLimit,
}

impl fmt::Display for BatchConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchConfigError::ZeroLimit => f.write_str("the concurrency limit must be at least 1"),
        }
    }
}

impl std::error::Error for BatchConfigError {}

/// How far a [`Batch`] has got, handed to its
/// [`on_progress`](Batch::on_progress) callback after each completion.
///
/// # Examples
///
/// ```
/// use awaitkit::Progress;
/// use std::sync::Mutex;
/// # futures::executor::block_on(async {
/// let seen = Mutex::new(Vec::new());
/// awaitkit::process_batch(0..4, 2, |i| async move { i })
///     .on_progress(|p: &Progress| seen.lock().unwrap().push((p.done, p.total)))
///     .await;
/// assert_eq!(seen.into_inner().unwrap(), [(1, Some(4)), (2, Some(4)), (3, Some(4)), (4, Some(4))]);
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Items finished so far.
    pub done: usize,
    /// How many items there are, when known: from the iterator's size hint
    /// when it is exact (`Vec`, arrays, ranges, most adapters of those),
    /// otherwise once the iterator has run out. A batch that reports
    /// progress pulls the next item as soon as a slot frees, so the reports
    /// after the last item was pulled know the total.
    pub total: Option<usize>,
    /// Calls in flight right now.
    pub in_flight: usize,
    /// Time since the batch was first polled, on the batch's [`Timer`].
    pub elapsed: Duration,
    /// Items finished per second so far (`done / elapsed`); `None` while no
    /// time has passed on the batch's clock.
    pub rate: Option<f64>,
    /// Estimated time left at the rate so far
    /// (`elapsed × remaining / done`); `None` while the total is unknown.
    pub eta: Option<Duration>,
}

impl Progress {
    fn new(done: usize, total: Option<usize>, in_flight: usize, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        let rate = (secs > 0.0).then(|| done as f64 / secs);
        let eta = total.map(|total| {
            let remaining = total.saturating_sub(done);
            if remaining == 0 {
                return Duration::ZERO;
            }
            // `done >= 1`: progress is reported after a completion.
            elapsed
                .as_nanos()
                .checked_mul(remaining as u128)
                .map_or(Duration::MAX, |n| nanos(n / done.max(1) as u128))
        });
        Progress {
            done,
            total,
            in_flight,
            elapsed,
            rate,
            eta,
        }
    }
}

/// A duration from a nanosecond count, saturating at [`Duration::MAX`].
fn nanos(n: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(n / NANOS_PER_SEC) {
        Ok(secs) => Duration::new(secs, (n % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

/// Makes sure the next item is in `next`, pulling it from `items`; `false`
/// (and the total known: `started`) once the iterator has run out.
fn peek<I: Iterator>(
    items: &mut Option<I>,
    next: &mut Option<I::Item>,
    total: &mut Option<usize>,
    started: usize,
) -> bool {
    if next.is_some() {
        return true;
    }
    let Some(iter) = items.as_mut() else {
        return false;
    };
    match iter.next() {
        Some(item) => {
            *next = Some(item);
            true
        }
        None => {
            *items = None;
            *total = Some(started);
            false
        }
    }
}

/// Fixed batches (with their pause) or a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Sliding,
    Fixed { pause: Option<Duration> },
}

/// Future for the [`process_batch`] function: configure it with the builder
/// methods, then `.await` it.
///
/// Resolves to `Vec<Fut::Output>` in input order; after
/// [`fail_fast`](Batch::fail_fast) (a [`TryBatch`]) to `Result<Vec<T>, E>`.
///
/// `Unpin` whatever the calls are (they are pinned inside), `Send`/`Sync`
/// when the iterator, items, closures, calls and outputs are. The type
/// parameters after `Fut` are set by the builder methods: `P` by
/// [`on_progress`](Batch::on_progress), `T` by
/// [`with_timer`](Batch::with_timer), `'r` and `L` by
/// [`rate_limit`](Batch::rate_limit), `FAIL_FAST` by
/// [`fail_fast`](Batch::fail_fast).
///
/// # Cancel safety
///
/// Dropping it drops every call in flight, the outputs collected so far and
/// the items not yet started, and gives back a rate-limit grant it was
/// waiting for.
///
/// # Panics
///
/// A panic in `f`, in a call or in the progress callback propagates out of
/// `poll`; polling again after that panics. Polling after completion
/// panics.
///
/// # Examples
///
/// ```
/// use awaitkit::Batch;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let batch: Batch<'_, _, _, _> = awaitkit::process_batch(vec!["a", "b", "c"], 2, |s| async move {
///     s.to_uppercase()
/// });
/// // Groups of 2, 1 ms apart.
/// let out = batch.pause_between(Duration::from_millis(1)).await;
/// assert_eq!(out, ["A", "B", "C"]);
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Batch<
    'r,
    I,
    F,
    Fut,
    P = fn(&Progress),
    T = DefaultTimer,
    L = DefaultTimer,
    const FAIL_FAST: bool = false,
> where
    I: Iterator,
    Fut: Future,
    T: Timer,
    L: Timer,
{
    /// Everything that does not name `P`, `T`, `L` or `FAIL_FAST`.
    core: Core<I, F, Fut>,
    /// The pause between fixed batches, and the batch's clock (`.timer`).
    pause: BoxedDeadline<T>,
    rate: Option<Rate<'r, L>>,
    on_progress: Option<P>,
}

/// The state of a [`Batch`] that does not name its progress callback, timer,
/// rate limiter or fail-fast mode: the builder methods that change those
/// move it over in one piece.
struct Core<I: Iterator, F, Fut: Future> {
    /// The calls in flight, keyed by input index.
    engine: Engine<Fut>,
    /// The items not yet pulled; `None` once the iterator ran out.
    items: Option<I>,
    /// An item pulled but not started yet (waiting for its rate grant, or
    /// pulled to learn whether another fixed batch follows).
    next_item: Option<I::Item>,
    f: F,
    /// One slot per item pulled and started, filled as calls finish.
    results: Vec<Option<Fut::Output>>,
    limit: usize,
    mode: Mode,
    /// Fixed batches: how many items the current batch may still start.
    batch_left: usize,
    /// Fixed batches: how many batches have started.
    batches: usize,
    /// Waiting for the pause between fixed batches.
    pausing: bool,
    #[cfg(feature = "indicatif")]
    bar: Option<bar::Bar>,
    /// When the batch was first polled (read only if progress is reported).
    started: Option<Instant>,
    done: usize,
    total: Option<usize>,
    finished: bool,
    poisoned: bool,
}

/// A [`Batch`]'s rate limit: the limiter, and the grant being waited for.
struct Rate<'r, L: Timer> {
    limiter: &'r RateLimiter<L>,
    grant: Option<RateAcquire<'r, L>>,
}

/// [`Batch`] after [`fail_fast`](Batch::fail_fast): resolves to
/// `Result<Vec<T>, E>`, stopping at the first `Err`.
///
/// # Examples
///
/// ```
/// use awaitkit::TryBatch;
/// # futures::executor::block_on(async {
/// let parse: TryBatch<'_, _, _, _> =
///     awaitkit::process_batch(["1", "2"], 2, |s| async move { s.parse::<u8>() }).fail_fast();
/// assert_eq!(parse.await, Ok(vec![1, 2]));
/// # });
/// ```
pub type TryBatch<'r, I, F, Fut, P = fn(&Progress), T = DefaultTimer, L = DefaultTimer> =
    Batch<'r, I, F, Fut, P, T, L, true>;

// Nothing inside is ever pinned through the `Batch`: the calls live in the
// engine's heap chunks, the pause's sleep and the rate grant are boxed or
// `Unpin`, and the rest is plain data.
impl<I, F, Fut, P, T, L, const FF: bool> Unpin for Batch<'_, I, F, Fut, P, T, L, FF>
where
    I: Iterator,
    Fut: Future,
    T: Timer,
    L: Timer,
{
}

impl<I, F, Fut> Batch<'static, I, F, Fut>
where
    I: Iterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    /// [`process_batch`], returning an error instead of panicking for a
    /// zero `limit`.
    ///
    /// # Errors
    ///
    /// [`BatchConfigError::ZeroLimit`] if `limit` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Batch;
    /// # futures::executor::block_on(async {
    /// let double = |i: u32| async move { i * 2 };
    /// assert!(Batch::try_new(0..3, 0, double).is_err());
    /// assert_eq!(Batch::try_new(0..3, 1, double).unwrap().await, [0, 2, 4]);
    /// # });
    /// ```
    pub fn try_new(
        items: impl IntoIterator<IntoIter = I>,
        limit: usize,
        f: F,
    ) -> Result<Self, BatchConfigError> {
        if limit == 0 {
            return Err(BatchConfigError::ZeroLimit);
        }
        let items = items.into_iter();
        let (lower, upper) = items.size_hint();
        let total = (upper == Some(lower)).then_some(lower);
        // Room for every output up front, capped at 1 MiB: an endless
        // iterator (`0..`) hints `usize::MAX` and is only partly consumed.
        let budget = (1 << 20) / size_of::<Option<Fut::Output>>().max(1);
        Ok(Batch {
            core: Core {
                engine: Engine::new(),
                items: Some(items),
                next_item: None,
                f,
                results: Vec::with_capacity(lower.min(budget)),
                limit,
                mode: Mode::Sliding,
                batch_left: 0,
                batches: 0,
                pausing: false,
                #[cfg(feature = "indicatif")]
                bar: None,
                started: None,
                done: 0,
                total,
                finished: false,
                poisoned: false,
            },
            pause: BoxedDeadline::new(DefaultTimer, None),
            rate: None,
            on_progress: None,
        })
    }
}

impl<'r, I, F, Fut, P, T, L, const FF: bool> Batch<'r, I, F, Fut, P, T, L, FF>
where
    I: Iterator,
    Fut: Future,
    T: Timer,
    L: Timer,
{
    /// Runs fixed batches instead of a sliding window: `limit` items start,
    /// and the next `limit` start only once **all** of them have finished
    /// (`asyncio.gather` per chunk, in a loop).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let log = Mutex::new(Vec::new());
    /// let log = &log;
    /// awaitkit::process_batch(0..4, 2, |i| async move {
    ///     log.lock().unwrap().push(format!("start {i}"));
    ///     futures_timer::Delay::new(Duration::from_millis(i)).await;
    ///     log.lock().unwrap().push(format!("end {i}"));
    /// })
    /// .fixed_batches()
    /// .await;
    /// // 2 and 3 start only after 0 and 1 both ended.
    /// let log = log.lock().unwrap();
    /// let (first, second) = log.split_at(4);
    /// assert!(first.iter().all(|e| e.ends_with('0') || e.ends_with('1')), "{log:?}");
    /// assert!(second.iter().all(|e| e.ends_with('2') || e.ends_with('3')), "{log:?}");
    /// # });
    /// ```
    pub fn fixed_batches(mut self) -> Self {
        if self.core.mode == Mode::Sliding {
            self.core.mode = Mode::Fixed { pause: None };
        }
        self
    }

    /// Runs fixed batches (see [`fixed_batches`](Batch::fixed_batches))
    /// and waits `pause` between the end of one batch and the start of the
    /// next (`await asyncio.sleep(delay)` between chunks), on the batch's
    /// [`Timer`]. There is no pause before the first batch or after the
    /// last.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let start = Instant::now();
    /// let out = awaitkit::process_batch(0..6, 2, |i| async move { i })
    ///     .pause_between(Duration::from_millis(5))
    ///     .await;
    /// assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    /// assert!(start.elapsed() >= Duration::from_millis(10)); // 3 batches, 2 pauses
    /// # });
    /// ```
    pub fn pause_between(mut self, pause: Duration) -> Self {
        self.core.mode = Mode::Fixed { pause: Some(pause) };
        self
    }

    /// Takes one grant of `limiter` right before each call starts: at most
    /// `limiter`'s quota of calls start per period, and at most `limit` run
    /// at a time. The item is pulled first, so no grant is taken for an
    /// item that does not exist.
    ///
    /// # Cancel safety
    ///
    /// Dropping the batch while it waits for a grant gives its place back
    /// to the limiter's next waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(2, Duration::from_millis(20));
    /// let start = Instant::now();
    /// let out = awaitkit::process_batch(0..4, 10, |i| async move { i })
    ///     .rate_limit(&limiter)
    ///     .await;
    /// assert_eq!(out, [0, 1, 2, 3]);
    /// assert!(start.elapsed() >= Duration::from_millis(20)); // 2 now, 2 a period later
    /// # });
    /// ```
    pub fn rate_limit<'a, M: Timer>(
        self,
        limiter: &'a RateLimiter<M>,
    ) -> Batch<'a, I, F, Fut, P, T, M, FF> {
        Batch {
            core: self.core,
            pause: self.pause,
            // A grant being waited for (if polled already) goes back.
            rate: Some(Rate {
                limiter,
                grant: None,
            }),
            on_progress: self.on_progress,
        }
    }

    /// Calls `callback` with a [`Progress`] after each completion (once per
    /// item, `done` counting up by one each time), from inside the batch's
    /// `poll`. Not called for an empty input.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let mut last = None;
    /// awaitkit::process_batch(0..10, 3, |i| async move { i })
    ///     .on_progress(|p| {
    ///         last = Some((p.done, p.total, p.eta));
    ///     })
    ///     .await;
    /// assert_eq!(last, Some((10, Some(10), Some(std::time::Duration::ZERO))));
    /// # });
    /// ```
    pub fn on_progress<Q: FnMut(&Progress)>(
        self,
        callback: Q,
    ) -> Batch<'r, I, F, Fut, Q, T, L, FF> {
        Batch {
            core: self.core,
            pause: self.pause,
            rate: self.rate,
            on_progress: Some(callback),
        }
    }

    /// Uses `timer` for the pause between fixed batches and for the clock
    /// behind [`Progress::elapsed`], rate and ETA (the default is
    /// [`DefaultTimer`]). A rate limiter keeps its own timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::FuturesTimer;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::process_batch([1, 2], 1, |i| async move { i })
    ///     .pause_between(Duration::from_millis(1))
    ///     .with_timer(FuturesTimer)
    ///     .await;
    /// assert_eq!(out, [1, 2]);
    /// # });
    /// ```
    pub fn with_timer<U: Timer>(mut self, timer: U) -> Batch<'r, I, F, Fut, P, U, L, FF> {
        // A pause under way, and the elapsed time, start over on the new
        // clock.
        self.core.pausing = false;
        self.core.started = None;
        Batch {
            core: self.core,
            pause: BoxedDeadline::new(timer, None),
            rate: self.rate,
            on_progress: self.on_progress,
        }
    }

    /// Draws the progress as a bar on the terminal, like `tqdm.asyncio`:
    /// `42%|████▌     | 42/100 [00:03<00:04, 12.51it/s]` (a counter when the
    /// total is unknown). Elapsed time, rate and ETA are read on the
    /// batch's [`Timer`]. Nothing is drawn when stderr is not a terminal.
    /// Works alongside [`on_progress`](Batch::on_progress).
    ///
    /// Available with the `indicatif` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::process_batch(0..50, 8, |i| async move { i * i })
    ///     .progress_bar()
    ///     .await;
    /// assert_eq!(out[7], 49);
    /// # });
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn progress_bar(mut self) -> Self {
        self.core.bar = Some(bar::Bar::styled(indicatif::ProgressBar::no_length()));
        self
    }

    /// Reports the progress into `bar`, an `indicatif` bar you styled or
    /// placed yourself (in a `MultiProgress`, hidden in tests, …): the batch
    /// sets its length (when known) and position, and finishes it at the
    /// end (abandons it on a fail-fast error). Its style is left alone, so
    /// its `{eta}` and `{per_sec}` use indicatif's own clock.
    ///
    /// Available with the `indicatif` feature. Name the bar's type through
    /// [`awaitkit::indicatif`](crate::indicatif), the version this crate
    /// uses, so a different `indicatif` in your own `Cargo.toml` cannot clash.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::indicatif::ProgressBar;
    /// # futures::executor::block_on(async {
    /// let bar = ProgressBar::hidden();
    /// awaitkit::process_batch(0..20, 4, |i| async move { i })
    ///     .with_progress_bar(bar.clone())
    ///     .await;
    /// assert_eq!((bar.position(), bar.length()), (20, Some(20)));
    /// assert!(bar.is_finished());
    /// # });
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn with_progress_bar(mut self, bar: indicatif::ProgressBar) -> Self {
        self.core.bar = Some(bar::Bar::custom(bar));
        self
    }

    /// The concurrency limit.
    ///
    /// # Examples
    ///
    /// ```
    /// let batch = awaitkit::process_batch(0..3, 2, |i| async move { i });
    /// assert_eq!(batch.limit(), 2);
    /// ```
    pub fn limit(&self) -> usize {
        self.core.limit
    }

    /// How many calls are in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    /// let mut batch = awaitkit::process_batch(0..5, 2, |_| futures::future::pending::<()>());
    /// assert_eq!(batch.in_flight(), 0); // nothing starts before the first poll
    /// assert!((&mut batch).now_or_never().is_none());
    /// assert_eq!(batch.in_flight(), 2);
    /// ```
    pub fn in_flight(&self) -> usize {
        self.core.engine.running()
    }

    /// How many items have finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    /// let mut batch = awaitkit::process_batch([true, false], 2, |ready| async move {
    ///     if !ready { futures::future::pending::<()>().await }
    /// });
    /// assert!((&mut batch).now_or_never().is_none());
    /// assert_eq!(batch.completed(), 1);
    /// ```
    pub fn completed(&self) -> usize {
        self.core.done
    }
}

impl<'r, I, F, Fut, P, T, L, V, E> Batch<'r, I, F, Fut, P, T, L, false>
where
    I: Iterator,
    Fut: Future<Output = Result<V, E>>,
    T: Timer,
    L: Timer,
{
    /// Stops at the first `Err`: the batch resolves to `Ok` with every value
    /// in input order, or to the first error (in completion order), returned
    /// from the very poll in which it appeared, after every other call in
    /// flight has been dropped and without starting any more items.
    ///
    /// Without it, a batch of fallible calls is *settled*: it runs every
    /// item and resolves to every `Result`.
    ///
    /// # Errors
    ///
    /// The first `Err` a call produced.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let check = |i: u32| async move { if i == 3 { Err(format!("item {i} failed")) } else { Ok(i) } };
    ///
    /// let first_error = awaitkit::process_batch(0..100, 4, check).fail_fast().await;
    /// assert_eq!(first_error, Err("item 3 failed".to_string()));
    ///
    /// let settled = awaitkit::process_batch(0..5, 4, check).await;
    /// assert_eq!(settled.iter().filter(|r| r.is_err()).count(), 1);
    /// # });
    /// ```
    pub fn fail_fast(self) -> TryBatch<'r, I, F, Fut, P, T, L> {
        Batch {
            core: self.core,
            pause: self.pause,
            rate: self.rate,
            on_progress: self.on_progress,
        }
    }
}

impl<I: Iterator, F, Fut: Future> Core<I, F, Fut> {
    /// Makes sure the next item is in `next_item`; `false` once the
    /// iterator has run out.
    fn peek(&mut self) -> bool {
        peek(
            &mut self.items,
            &mut self.next_item,
            &mut self.total,
            self.results.len(),
        )
    }

    /// The outputs, in input order.
    fn take_results(&mut self) -> std::vec::IntoIter<Option<Fut::Output>> {
        std::mem::take(&mut self.results).into_iter()
    }
}

impl<I, F, Fut, P, T, L, const FF: bool> Batch<'_, I, F, Fut, P, T, L, FF>
where
    I: Iterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    /// Whether anything reports progress (and so needs the clock).
    fn reports(&self) -> bool {
        #[cfg(feature = "indicatif")]
        if self.core.bar.is_some() {
            return true;
        }
        self.on_progress.is_some()
    }

    /// Starts calls while the mode allows, a grant is at hand and items
    /// remain. Returns how many started. When it stops for a grant or a
    /// pause, `cx` is registered to be woken.
    fn start(&mut self, cx: &mut Context<'_>) -> usize {
        let Batch {
            core,
            pause: deadline,
            rate,
            ..
        } = self;
        let mut started = 0;
        loop {
            match core.mode {
                Mode::Sliding => {
                    if core.engine.running() >= core.limit {
                        break;
                    }
                }
                Mode::Fixed { pause } => {
                    if core.batch_left == 0 {
                        // The next batch starts when the whole previous one
                        // has finished, an item exists, and the pause is over.
                        if core.engine.running() > 0 || !core.peek() {
                            break;
                        }
                        if let (Some(pause), true) = (pause, core.batches > 0) {
                            if !core.pausing {
                                deadline.restart(Some(When::After(pause)));
                                core.pausing = true;
                            }
                            if deadline.poll(cx).is_pending() {
                                break;
                            }
                            core.pausing = false;
                        }
                        core.batches += 1;
                        core.batch_left = core.limit;
                    }
                }
            }
            if !core.peek() {
                break;
            }
            if let Some(rate) = rate.as_mut() {
                let limiter = rate.limiter;
                let grant = rate.grant.get_or_insert_with(|| limiter.acquire());
                if Pin::new(grant).poll(cx).is_pending() {
                    break;
                }
                rate.grant = None;
            }
            let item = core.next_item.take().expect("peeked above");
            let call = (core.f)(item);
            let key = core.results.len();
            core.results.push(None);
            core.engine.push(call, key);
            if let Mode::Fixed { .. } = core.mode {
                core.batch_left -= 1;
            }
            started += 1;
        }
        started
    }

    /// One poll: start what may start, poll the woken calls once each,
    /// start more in the freed slots. `Ready(None)` when every item is done;
    /// `Ready(Some(output))` for an output `failed` picked (fail-fast), after
    /// everything else was dropped.
    fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
        failed: fn(&Fut::Output) -> bool,
    ) -> Poll<Option<Fut::Output>> {
        if self.core.started.is_none() && self.reports() {
            self.core.started = Some(self.pause.timer.now());
            #[cfg(feature = "indicatif")]
            if let Some(bar) = self.core.bar.as_mut() {
                bar.begin(self.core.total);
            }
        }
        self.start(cx);
        let reports = self.reports();
        let Batch {
            core,
            pause,
            rate,
            on_progress,
        } = self;
        let mut finished_any = false;
        let mut pass = core.engine.pass(cx);
        while let Some(done) = pass.next() {
            pass.engine().release_slot(done.slot);
            if failed(&done.output) {
                // Fail fast: drop everything else first (finished first: a
                // destructor may panic).
                core.finished = true;
                pass.engine().clear();
                if let Some(rate) = rate.as_mut() {
                    rate.grant = None;
                }
                core.items = None;
                core.next_item = None;
                core.results = Vec::new();
                #[cfg(feature = "indicatif")]
                if let Some(bar) = core.bar.as_ref() {
                    bar.abandon();
                }
                return Poll::Ready(Some(done.output));
            }
            core.results[done.key] = Some(done.output);
            core.done += 1;
            finished_any = true;
            if reports {
                // A slot is free: learn whether items remain, so that the
                // last reports know the total of an iterator without an
                // exact size.
                let in_flight = pass.engine().running();
                if core.total.is_none() && (core.mode == Mode::Sliding || in_flight == 0) {
                    peek(
                        &mut core.items,
                        &mut core.next_item,
                        &mut core.total,
                        core.results.len(),
                    );
                }
                let elapsed = match core.started {
                    Some(start) => pause.timer.now().saturating_duration_since(start),
                    None => Duration::ZERO,
                };
                let progress = Progress::new(core.done, core.total, in_flight, elapsed);
                #[cfg(feature = "indicatif")]
                if let Some(bar) = core.bar.as_mut() {
                    bar.update(&progress);
                }
                if let Some(callback) = on_progress.as_mut() {
                    callback(&progress);
                }
            }
        }
        // (The pass ends here.) Calls started now are first polled on the
        // next poll, this one has polled its share: ask for it.
        if finished_any && self.start(cx) > 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let core = &mut self.core;
        if core.engine.running() == 0 && core.next_item.is_none() && core.items.is_none() {
            core.finished = true;
            #[cfg(feature = "indicatif")]
            if let Some(bar) = core.bar.as_ref() {
                bar.finish();
            }
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Runs [`poll_batch`](Self::poll_batch) under the completion and
    /// poison checks.
    fn poll_guarded(
        &mut self,
        cx: &mut Context<'_>,
        failed: fn(&Fut::Output) -> bool,
    ) -> Poll<Option<Fut::Output>> {
        // The panic check first: a destructor run after completion was
        // recorded (fail-fast) may be what unwound.
        assert!(
            !self.core.poisoned,
            "`Batch` polled after a panic in one of its futures or callbacks"
        );
        assert!(!self.core.finished, "`Batch` polled after completion");
        self.core.poisoned = true;
        let out = self.poll_batch(cx, failed);
        self.core.poisoned = false;
        out
    }
}

impl<I, F, Fut, P, T, L> Future for Batch<'_, I, F, Fut, P, T, L, false>
where
    I: Iterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    type Output = Vec<Fut::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.poll_guarded(cx, |_| false) {
            Poll::Ready(_) => Poll::Ready(
                this.core
                    .take_results()
                    .map(|o| o.expect("every item finished"))
                    .collect(),
            ),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I, F, Fut, P, T, L, V, E> Future for Batch<'_, I, F, Fut, P, T, L, true>
where
    I: Iterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<V, E>>,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    type Output = Result<Vec<V>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.poll_guarded(cx, Result::is_err) {
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(_) => Poll::Ready(Ok(this
                .core
                .take_results()
                .map(|o| match o {
                    Some(Ok(v)) => v,
                    _ => unreachable!("every item finished, and errors stop the batch"),
                })
                .collect())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<I, F, Fut, P, T, L> futures_core::FusedFuture for Batch<'_, I, F, Fut, P, T, L, false>
where
    I: Iterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    fn is_terminated(&self) -> bool {
        self.core.finished && !self.core.poisoned
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<I, F, Fut, P, T, L, V, E> futures_core::FusedFuture for Batch<'_, I, F, Fut, P, T, L, true>
where
    I: Iterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<V, E>>,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    fn is_terminated(&self) -> bool {
        self.core.finished && !self.core.poisoned
    }
}

impl<I, F, Fut, P, T, L, const FF: bool> fmt::Debug for Batch<'_, I, F, Fut, P, T, L, FF>
where
    I: Iterator,
    Fut: Future,
    T: Timer,
    L: Timer,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(if FF { "TryBatch" } else { "Batch" })
            .field("limit", &self.core.limit)
            .field("in_flight", &self.core.engine.running())
            .field("done", &self.core.done)
            .field("total", &self.core.total)
            .field(
                "fixed_batches",
                &matches!(self.core.mode, Mode::Fixed { .. }),
            )
            .field("rate_limited", &self.rate.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "indicatif")]
mod bar {
    //! The `indicatif` progress bar of a [`Batch`](super::Batch).

    use super::Progress;
    use indicatif::{ProgressBar, ProgressStyle};
    use std::fmt::Write as _;
    use std::time::Duration;

    /// tqdm's layout; `{msg}` carries elapsed, ETA and rate on the batch's
    /// clock.
    const BAR: &str = "{percent:>3}%|{wide_bar}| {pos}/{len} [{msg}]";
    /// For an unknown total.
    const COUNTER: &str = "{spinner} {pos} [{msg}]";

    pub(super) struct Bar {
        bar: ProgressBar,
        /// Ours to style (and to write the message of).
        styled: bool,
    }

    impl Bar {
        pub(super) fn styled(bar: ProgressBar) -> Self {
            Bar { bar, styled: true }
        }

        pub(super) fn custom(bar: ProgressBar) -> Self {
            Bar { bar, styled: false }
        }

        /// At the first poll.
        pub(super) fn begin(&mut self, total: Option<usize>) {
            if let Some(total) = total {
                self.bar.set_length(total as u64);
            }
            if self.styled {
                let template = if total.is_some() { BAR } else { COUNTER };
                let style = ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("█▉▊▋▌▍▎▏ ");
                self.bar.set_style(style);
                self.bar
                    .set_message(message(&Progress::new(0, total, 0, Duration::ZERO)));
            }
        }

        pub(super) fn update(&mut self, progress: &Progress) {
            if let Some(total) = progress.total {
                if self.bar.length() != Some(total as u64) {
                    self.bar.set_length(total as u64);
                }
            }
            if self.styled {
                self.bar.set_message(message(progress));
            }
            self.bar.set_position(progress.done as u64);
        }

        pub(super) fn finish(&self) {
            self.bar.finish();
        }

        pub(super) fn abandon(&self) {
            self.bar.abandon();
        }
    }

    /// `00:03<00:04, 12.51it/s`, as tqdm writes it.
    fn message(progress: &Progress) -> String {
        let mut out = String::new();
        clock(&mut out, Some(progress.elapsed));
        out.push('<');
        clock(&mut out, progress.eta);
        match progress.rate {
            Some(rate) => {
                let _ = write!(out, ", {rate:.2}it/s");
            }
            None => out.push_str(", ?it/s"),
        }
        out
    }

    /// `mm:ss`, or `h:mm:ss` past an hour; `?` when unknown.
    fn clock(out: &mut String, duration: Option<Duration>) {
        let Some(duration) = duration else {
            out.push('?');
            return;
        };
        let secs = duration.as_secs();
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let _ = if h > 0 {
            write!(out, "{h}:{m:02}:{s:02}")
        } else {
            write!(out, "{m:02}:{s:02}")
        };
    }

    #[cfg(test)]
    mod tests {
        use super::{Progress, message};
        use std::time::Duration;

        #[test]
        fn the_message_reads_like_tqdm() {
            let p = Progress::new(42, Some(100), 8, Duration::from_secs(3));
            assert_eq!(message(&p), "00:03<00:04, 14.00it/s");
            let p = Progress::new(1, None, 0, Duration::ZERO);
            assert_eq!(message(&p), "00:00<?, ?it/s");
            let p = Progress::new(1, Some(2), 0, Duration::from_secs(3 * 3600 + 61));
            assert_eq!(message(&p), "3:01:01<3:01:01, 0.00it/s");
        }
    }
}
